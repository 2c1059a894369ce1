"""The key store's PostgreSQL statements: every query on ``IdempotencyKey`` there.

A key is never taken by check-then-insert: the unique (scope, method, route, key)
constraint decides, through ``INSERT … ON CONFLICT … DO UPDATE … WHERE``, so two
requests with the same key cannot both win (PITFALLS P6).

A transaction-scoped advisory lock on the key keeps a loser from *waiting*:
without it, a second request would block on the first one's uncommitted row
until that whole view finished (atomic mode). With it, the loser learns at once
that the key is busy and answers 409. Being transaction scoped, it is safe
behind PgBouncer transaction pooling (P7).

- ``reserve`` (atomic mode: the view runs in a transaction). One ``SELECT`` reads
  the key's row and takes the advisory lock; a live row (replay, 422 or 409)
  answers whatever the lock says. Nothing is written before the view runs: no
  other transaction could see an in-flight row of ours before commit anyway, and
  the lock already answers 409 to concurrent requests. ``complete`` then writes the
  row, completed, with one ``INSERT … ON CONFLICT … DO UPDATE … WHERE``, in the
  view's transaction: two statements per first request, a read and a write.
- ``claim`` (claim-first mode): one statement writes an in-flight row with a
  lease and a fencing token, committed before the view runs; ``complete`` is an
  ``UPDATE`` of that row, fenced by the token.
- ``lookup`` reads a key without locking or writing (no transaction needed): a
  replay is one indexed ``SELECT``.

Times are the database clock (``statement_timestamp()``), so web servers with
drifting clocks agree on when a lease or a key has expired (C11).
"""

from __future__ import annotations

import functools
import json
import uuid

from django.db import connections

from ..models import IdempotencyKey
from .outcomes import (
    COMPLETED,
    IN_FLIGHT,
    Busy,
    Claimed,
    ClaimOutcome,
    Existing,
    Identity,
    Reserved,
    Vanished,
)


def _cursor(using: str):
    return connections[using].cursor()


def _table(using: str) -> str:
    return connections[using].ops.quote_name(IdempotencyKey._meta.db_table)


# The in-flight claim row, as both claim statements insert it (each adds its own
# FROM/WHERE and ON CONFLICT).
_INSERT_CLAIM = """
INSERT INTO {table} AS k
    ("scope", "method", "route", "key", "fingerprint", "state", "lock_token",
     "attempts", "locked_until", "expires_at", "created_at", "completed_at",
     "response_status", "response_headers", "response_body")
SELECT %(scope)s, %(method)s, %(route)s, %(key)s, %(fingerprint)s, 'in_flight',
       %(token)s, 1,
       statement_timestamp() + make_interval(secs => %(lease)s),
       statement_timestamp() + make_interval(secs => %(ttl)s),
       statement_timestamp(), NULL, NULL, '[]'::jsonb, NULL
"""

# A row may be (re)claimed when it expired and nobody holds a live lease on it, or
# when it is in flight, its holder's lease lapsed (the process presumably died) and
# the retry is the same request. A live in-flight claim is never taken, even past
# its expiry: that would run the view twice at once.
_CLAIM = (
    """
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
), claim AS ("""
    + _INSERT_CLAIM
    + """    FROM lock WHERE lock.got
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
)


# The key's row, and whether it answers by itself: completed and not expired
# (replay or 422), or in flight under a live lease (409 or 422). A plain indexed
# read, so ``lookup`` costs one round trip and no transaction.
_LOOKUP = """
SELECT "state", "fingerprint", "response_status", "response_headers", "response_body",
       ("state" = 'completed' AND "expires_at" > statement_timestamp())
       OR ("state" = 'in_flight' AND "locked_until" > statement_timestamp())
FROM {table}
WHERE "scope" = %(scope)s AND "method" = %(method)s AND "route" = %(route)s
  AND "key" = %(key)s
"""

# The same read, plus the no-wait lock, in one statement. The lock is taken even
# when the row answers by itself (a replay): that costs nothing, as the answer
# does not depend on it, and keeps this a plain join.
_RESERVE = """
SELECT l."got", e."id", e."state", e."fingerprint", e."response_status",
       e."response_headers", e."response_body", e."attempts",
       e."expires_at" <= statement_timestamp(),
       e."state" = 'in_flight' AND e."locked_until" <= statement_timestamp(),
       statement_timestamp()
FROM (SELECT pg_try_advisory_xact_lock(hashtextextended(%(lock)s, 0)) AS "got") AS l
LEFT JOIN {table} AS e
       ON e."scope" = %(scope)s AND e."method" = %(method)s
      AND e."route" = %(route)s AND e."key" = %(key)s
"""

# Write the completed row of a reserved key. The WHERE takes over a row only
# under the same rules as ``_CLAIM``; if it no longer holds (a claim-first holder
# recorded its response meanwhile), no row is written and the caller rolls back.
_INSERT_COMPLETED = """
INSERT INTO {table} AS k
    ("scope", "method", "route", "key", "fingerprint", "state", "lock_token",
     "attempts", "locked_until", "expires_at", "created_at", "completed_at",
     "response_status", "response_headers", "response_body")
VALUES (%(scope)s, %(method)s, %(route)s, %(key)s, %(fingerprint)s, 'completed', NULL,
        1, NULL, %(claimed_at)s + make_interval(secs => %(ttl)s), %(claimed_at)s,
        statement_timestamp(), %(status)s, %(headers)s::jsonb, %(body)s)
ON CONFLICT ("scope", "method", "route", "key") DO UPDATE SET
    "fingerprint" = EXCLUDED."fingerprint",
    "state" = 'completed',
    "lock_token" = NULL,
    "attempts" = CASE WHEN k."expires_at" <= statement_timestamp()
                      THEN 1 ELSE k."attempts" + 1 END,
    "locked_until" = NULL,
    "expires_at" = CASE WHEN k."expires_at" <= statement_timestamp()
                        THEN EXCLUDED."expires_at" ELSE k."expires_at" END,
    "created_at" = CASE WHEN k."expires_at" <= statement_timestamp()
                        THEN EXCLUDED."created_at" ELSE k."created_at" END,
    "completed_at" = EXCLUDED."completed_at",
    "response_status" = EXCLUDED."response_status",
    "response_headers" = EXCLUDED."response_headers",
    "response_body" = EXCLUDED."response_body"
WHERE (k."expires_at" <= statement_timestamp()
       AND (k."state" = 'completed' OR k."locked_until" <= statement_timestamp()))
   OR (k."state" = 'in_flight' AND k."locked_until" <= statement_timestamp()
       AND k."fingerprint" = EXCLUDED."fingerprint")
"""

# The common case, no row at ``reserve``: nothing to take over, and the cheaper
# statement to plan. A row inserted meanwhile (none can be: inserting takes the
# lock we hold) would make it write nothing, like a lost takeover.
_INSERT_FRESH = _INSERT_COMPLETED[: _INSERT_COMPLETED.index("ON CONFLICT")] + (
    'ON CONFLICT ("scope", "method", "route", "key") DO NOTHING\n'
)


@functools.lru_cache(maxsize=32)
def _sql(template: str, table: str) -> str:
    return template.replace("{table}", table)


def _where(identity: Identity) -> dict[str, str]:
    return {
        "scope": identity.scope,
        "method": identity.method,
        "route": identity.route,
        "key": identity.key,
    }


def _lock_key(identity: Identity) -> str:
    return json.dumps([identity.scope, identity.method, identity.route, identity.key])


def _existing(state, fingerprint, status, headers, body) -> Existing:
    if isinstance(headers, str):  # Django leaves jsonb undecoded on psycopg 3
        headers = json.loads(headers)
    return Existing(
        state=state,
        fingerprint=fingerprint,
        status=status,
        headers=headers or [],
        body=None if body is None else bytes(body),
    )


def lookup(identity: Identity, *, using: str) -> Existing | None:
    """The key's row if it answers by itself (completed, or in flight under a live
    lease), else None. One indexed read, no lock, no write: no transaction needed.
    """
    with _cursor(using) as cursor:
        cursor.execute(_sql(_LOOKUP, _table(using)), _where(identity))
        row = cursor.fetchone()
    if row is None or not row[5]:
        return None
    return _existing(*row[:5])


def reserve(identity: Identity, fingerprint: str, *, ttl: float, using: str) -> ClaimOutcome:
    """Atomic mode: take ``identity`` until the caller's transaction ends.

    One ``SELECT``; nothing is written until ``complete``.
    """
    params = _where(identity)
    params["lock"] = _lock_key(identity)
    with _cursor(using) as cursor:
        cursor.execute(_sql(_RESERVE, _table(using)), params)
        got, row_id, state, existing_fp, status, headers, body, attempts, expired, lapsed, now = (
            cursor.fetchone()
        )
    attempt = 1
    if row_id is not None and not expired:
        if state == COMPLETED or not lapsed or existing_fp != fingerprint:
            # Live, or in flight with a lapsed lease but another request: it answers.
            return _existing(state, existing_fp, status, headers, body)
        attempt = attempts + 1  # its holder died: the same request takes over
    elif row_id is not None and state == IN_FLIGHT and not lapsed:
        # Expired but still held under a live lease: never taken (it would run twice).
        return _existing(state, existing_fp, status, headers, body)
    if not got:
        return Busy()
    return Reserved(
        identity=identity,
        fingerprint=fingerprint,
        attempt=attempt,
        ttl=float(ttl),
        alias=using,
        claimed_at=now,
        fresh=row_id is None,
    )


# A key without a row: insert the claim if we get the lock and nobody inserted it
# first. Returns nothing otherwise, and ``_CLAIM`` decides.
_CLAIM_FRESH = (
    _INSERT_CLAIM
    + """WHERE pg_try_advisory_xact_lock(hashtextextended(%(lock)s, 0))
ON CONFLICT ("scope", "method", "route", "key") DO NOTHING
RETURNING k."id"
"""
)


def claim(
    identity: Identity, fingerprint: str, *, lease: float, ttl: float, using: str
) -> ClaimOutcome:
    """Write an in-flight claim on ``identity`` (claim-first mode).

    Inside ``transaction.atomic(using=...)`` the claim and the advisory lock last
    until that transaction ends; outside one, the claim is committed at once
    (each statement is its own transaction), which is what claim-first mode
    wants, without a BEGIN and a COMMIT around it.

    A new key, the common case, is one short ``INSERT … ON CONFLICT DO NOTHING``;
    when the key has a row (or is busy) the full statement decides.
    """
    token = uuid.uuid4()
    params = {
        **_where(identity),
        "lock": _lock_key(identity),
        "fingerprint": fingerprint,
        "token": token,
        "lease": float(lease),
        "ttl": float(ttl),
    }
    with _cursor(using) as cursor:
        cursor.execute(_sql(_CLAIM_FRESH, _table(using)), params)
        row = cursor.fetchone()
        if row is not None:
            return Claimed(id=row[0], token=token, attempt=1, alias=using)
        cursor.execute(_sql(_CLAIM, _table(using)), params)
        got, claimed_id, attempts, state, existing_fp, status, headers, body, existing_id = (
            cursor.fetchone()
        )
    if got is False:
        return Busy()
    if claimed_id is not None:
        return Claimed(id=claimed_id, token=token, attempt=attempts, alias=using)
    if existing_id is None:
        return Vanished()
    return _existing(state, existing_fp, status, headers, body)


def complete(
    claimed: Claimed | Reserved, *, status: int, headers: list[list[str]], body: bytes | None
) -> bool:
    """Store the response; False if our claim was taken over meanwhile (fenced), or
    (reserved) the row changed since ``reserve`` read it."""
    if isinstance(claimed, Reserved):
        with _cursor(claimed.alias) as cursor:
            cursor.execute(
                _sql(_INSERT_FRESH if claimed.fresh else _INSERT_COMPLETED, _table(claimed.alias)),
                {
                    **_where(claimed.identity),
                    "fingerprint": claimed.fingerprint,
                    "claimed_at": claimed.claimed_at,
                    "ttl": claimed.ttl,
                    "status": status,
                    "headers": json.dumps(headers),
                    "body": body,
                },
            )
            return cursor.rowcount == 1
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
    """Delete our in-flight claim (fenced by its token); False if no longer ours."""
    with _cursor(claimed.alias) as cursor:
        cursor.execute(
            f'DELETE FROM {_table(claimed.alias)} WHERE "id" = %s AND "lock_token" = %s',
            [claimed.id, claimed.token],
        )
        return cursor.rowcount == 1


def delete_expired(batch_size: int, using: str) -> int:
    """Each batch is its own short statement (autocommit) with SKIP LOCKED, so two
    janitors (two beats) never wait on each other and no delete holds locks long."""
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
