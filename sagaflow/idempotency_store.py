"""Every query on ``IdempotencyKey``.

The policy (``idempotency.py``) decides; this module reads and writes. On
PostgreSQL the claim is one ``INSERT … ON CONFLICT … DO UPDATE … WHERE`` statement over
the unique (scope, method, route, key) constraint, never a check-then-insert, so
two requests with the same key cannot both win (PITFALLS P6).

A transaction-scoped advisory lock on the key is tried first, in the same
statement. It does not decide who wins (the constraint does); it keeps a loser
from *waiting*: without it, a second request would block on the first one's
uncommitted INSERT until that whole view finished (atomic mode). With it, the
loser learns at once that the key is busy and answers 409. Being transaction
scoped, it is safe behind PgBouncer transaction pooling (P7).

Times are the database clock (``statement_timestamp()``), so web servers with
drifting clocks agree on when a lease or a key has expired (C11).

Other databases (SQLite, for the demo) are served by ``idempotency_portable``:
the same rules through the ORM, without the no-wait lock.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from django.db import connections, router

from . import idempotency_portable as portable
from .exceptions import ConfigurationError
from .models import IdempotencyKey

IN_FLIGHT = "in_flight"
COMPLETED = "completed"


@dataclass(frozen=True)
class Identity:
    """What makes two keys the same key."""

    scope: str
    method: str
    route: str
    key: str


@dataclass(frozen=True)
class Claimed:
    """We hold the key: run the view, then ``complete`` or ``release``."""

    id: int
    token: uuid.UUID
    attempt: int
    alias: str


@dataclass(frozen=True)
class Busy:
    """Another transaction is claiming or (atomic mode) running this key now."""


@dataclass(frozen=True)
class Existing:
    """The key is taken: in flight with a live lease, or completed."""

    state: str
    fingerprint: str
    status: int | None
    headers: list[list[str]]
    body: bytes | None


@dataclass(frozen=True)
class Vanished:
    """The row was deleted between the claim attempt and the read; try again."""


ClaimOutcome = Claimed | Busy | Existing | Vanished


def alias() -> str:
    return router.db_for_write(IdempotencyKey)


def _is_postgresql(using: str) -> bool:
    """Other databases (SQLite for the demo) take ``idempotency_portable``'s path."""
    return connections[using].vendor == "postgresql"


def _cursor(using: str):
    return connections[using].cursor()


def _table(using: str) -> str:
    return connections[using].ops.quote_name(IdempotencyKey._meta.db_table)


# A row may be (re)claimed when it expired and nobody holds a live lease on it, or
# when it is in flight, its holder's lease lapsed (the process presumably died) and
# the retry is the same request. A live in-flight claim is never taken, even past
# its expiry: that would run the view twice at once.
_CLAIM = """
WITH lock AS (
    -- A key that is completed, or in flight under a live lease, needs no lock:
    -- the answer (replay, 409 or 422) is read below, so concurrent replays of a
    -- finished key never queue behind each other.
    SELECT pg_try_advisory_xact_lock(hashtextextended(%(lock)s, 0)) AS got
    WHERE NOT EXISTS (
        SELECT 1 FROM {table} AS live
        WHERE live."scope" = %(scope)s AND live."method" = %(method)s
          AND live."route" = %(route)s AND live."key" = %(key)s
          AND ((live."state" = 'completed' AND live."expires_at" > statement_timestamp())
               OR (live."state" = 'in_flight' AND live."locked_until" > statement_timestamp()))
    )
), claim AS (
    INSERT INTO {table} AS k
        ("scope", "method", "route", "key", "fingerprint", "state", "lock_token",
         "attempts", "locked_until", "expires_at", "created_at", "completed_at",
         "response_status", "response_headers", "response_body")
    SELECT %(scope)s, %(method)s, %(route)s, %(key)s, %(fingerprint)s, 'in_flight',
           %(token)s, 1,
           statement_timestamp() + make_interval(secs => %(lease)s),
           statement_timestamp() + make_interval(secs => %(ttl)s),
           statement_timestamp(), NULL, NULL, '[]'::jsonb, NULL
    FROM lock WHERE lock.got
    ON CONFLICT ("scope", "method", "route", "key") DO UPDATE SET
        "fingerprint" = EXCLUDED."fingerprint",
        "state" = 'in_flight',
        "lock_token" = EXCLUDED."lock_token",
        "attempts" = CASE WHEN k."expires_at" <= statement_timestamp()
                          THEN 1 ELSE k."attempts" + 1 END,
        "locked_until" = EXCLUDED."locked_until",
        "expires_at" = CASE WHEN k."expires_at" <= statement_timestamp()
                            THEN EXCLUDED."expires_at" ELSE k."expires_at" END,
        "created_at" = CASE WHEN k."expires_at" <= statement_timestamp()
                            THEN EXCLUDED."created_at" ELSE k."created_at" END,
        "completed_at" = NULL,
        "response_status" = NULL,
        "response_headers" = '[]'::jsonb,
        "response_body" = NULL
    WHERE (k."expires_at" <= statement_timestamp()
           AND (k."state" = 'completed' OR k."locked_until" <= statement_timestamp()))
       OR (k."state" = 'in_flight' AND k."locked_until" <= statement_timestamp()
           AND k."fingerprint" = EXCLUDED."fingerprint")
    RETURNING k."id", k."attempts"
)
SELECT lock.got, claim."id", claim."attempts",
       e."state", e."fingerprint", e."response_status", e."response_headers",
       e."response_body", e."id"
FROM (SELECT 1) AS one
LEFT JOIN lock ON TRUE
LEFT JOIN claim ON TRUE
LEFT JOIN {table} AS e
       ON claim."id" IS NULL AND lock.got IS NOT FALSE
      AND e."scope" = %(scope)s AND e."method" = %(method)s
      AND e."route" = %(route)s AND e."key" = %(key)s
"""


def claim(
    identity: Identity, fingerprint: str, *, lease: float, ttl: float, using: str
) -> ClaimOutcome:
    """Try to take ``identity`` for this request, in the caller's transaction.

    The caller must be inside ``transaction.atomic(using=...)``: the advisory lock
    and, in atomic mode, the claim itself last until that transaction ends.
    """
    if not connections[using].in_atomic_block:
        raise ConfigurationError("idempotency_store.claim() must run inside transaction.atomic().")
    if not _is_postgresql(using):
        return portable.claim(identity, fingerprint, lease=lease, ttl=ttl, using=using)
    token = uuid.uuid4()
    params = {
        "lock": json.dumps([identity.scope, identity.method, identity.route, identity.key]),
        "scope": identity.scope,
        "method": identity.method,
        "route": identity.route,
        "key": identity.key,
        "fingerprint": fingerprint,
        "token": token,
        "lease": float(lease),
        "ttl": float(ttl),
    }
    with _cursor(using) as cursor:
        cursor.execute(_CLAIM.format(table=_table(using)), params)
        got, claimed_id, attempts, state, existing_fp, status, headers, body, existing_id = (
            cursor.fetchone()
        )
    if got is False:
        return Busy()
    if claimed_id is not None:
        return Claimed(id=claimed_id, token=token, attempt=attempts, alias=using)
    if existing_id is None:
        return Vanished()
    if isinstance(headers, str):  # Django leaves jsonb undecoded on psycopg 3
        headers = json.loads(headers)
    return Existing(
        state=state,
        fingerprint=existing_fp,
        status=status,
        headers=headers or [],
        body=None if body is None else bytes(body),
    )


def complete(
    claimed: Claimed, *, status: int, headers: list[list[str]], body: bytes | None
) -> bool:
    """Store the response; False if our claim was taken over meanwhile (fenced)."""
    if not _is_postgresql(claimed.alias):
        return portable.complete(claimed, status=status, headers=headers, body=body)
    with _cursor(claimed.alias) as cursor:
        cursor.execute(
            f"""UPDATE {_table(claimed.alias)} SET
                   "state" = 'completed', "lock_token" = NULL, "locked_until" = NULL,
                   "completed_at" = statement_timestamp(), "response_status" = %s,
                   "response_headers" = %s::jsonb, "response_body" = %s
                 WHERE "id" = %s AND "lock_token" = %s AND "state" = 'in_flight'""",
            [status, json.dumps(headers), body, claimed.id, claimed.token],
        )
        return cursor.rowcount == 1


def release(claimed: Claimed) -> bool:
    """Forget the claim so the client may retry the key; False if no longer ours."""
    if not _is_postgresql(claimed.alias):
        return portable.release(claimed)
    with _cursor(claimed.alias) as cursor:
        cursor.execute(
            f'DELETE FROM {_table(claimed.alias)} WHERE "id" = %s AND "lock_token" = %s',
            [claimed.id, claimed.token],
        )
        return cursor.rowcount == 1


def delete_expired(batch_size: int, using: str | None = None) -> int:
    """Delete expired keys in batches of ``batch_size``; returns how many.

    A key still held under a live lease is never deleted, even past its expiry.
    An in-flight key whose lease lapsed *and* which expired is deleted: its
    holder is gone and the claim would hand the row to any new request anyway.
    Each batch is its own short statement (autocommit) with SKIP LOCKED, so two
    janitors (two beats) never wait on each other and no delete holds locks long.
    """
    if batch_size < 1:
        raise ConfigurationError(
            f"SAGAFLOW['JANITOR_BATCH_SIZE'] is {batch_size!r}; it must be a positive int."
        )
    using = using or alias()
    if not _is_postgresql(using):
        return portable.delete_expired(batch_size, using)
    table = _table(using)
    total = 0
    while True:
        with _cursor(using) as cursor:
            cursor.execute(
                f"""DELETE FROM {table} WHERE "id" IN (
                        SELECT "id" FROM {table}
                        WHERE "expires_at" < statement_timestamp()
                          AND ("state" = 'completed'
                               OR "locked_until" < statement_timestamp())
                        ORDER BY "expires_at"
                        LIMIT %s
                        FOR UPDATE SKIP LOCKED)""",
                [batch_size],
            )
            deleted = cursor.rowcount
        total += deleted
        if deleted < batch_size:
            return total
