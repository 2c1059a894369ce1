"""Every query on ``OutboxEvent``: all the relay's PostgreSQL SQL (the consumers'
inbox is ``inbox_store``).

**Claiming** (``claim_batch``) runs inside the relay's transaction and takes two
statements:

1. take *key ownership*: a transaction-level advisory lock per ordering key
   (``pg_try_advisory_xact_lock``, never a session lock: P7) for the keys of the
   first pending rows that no other relay owns;
2. with a snapshot taken *after* those locks, lock the rows to publish with
   ``FOR UPDATE SKIP LOCKED``: rows without a key, and rows of owned keys that have
   no earlier pending event still waiting for a retry (head-of-line per key).

Ownership is what keeps per-key order with several relays (P1): only the owner of
a key publishes its events, in id order, and a relay that takes a key over sees
everything the previous owner committed. There is no high-water mark (P2): the
claim selects pending rows, so a row that commits late is still found. Both
statements look only at a window of the first pending rows (``window``), so a
claim costs the same with 10⁴ or 10⁶ rows waiting, even when other relays own
most of the keys at the head.

Times are the database's clock (``now()``, C11).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connection
from psycopg.types.json import Jsonb

# The tables of ``OutboxEvent`` and ``InboxMessage``, spelt out so that this module
# (imported by ``sagaflow/__init__`` through ``publish``) needs no model import.
OUTBOX = "sagaflow_outboxevent"
INBOX = "sagaflow_inboxmessage"

#: ``NOTIFY`` channel the long-lived relay listens on.
CHANNEL = "sagaflow_outbox"
#: Advisory-lock namespaces (first argument of the two-int form), so ours never
#: collide with an application's own advisory locks on the same hash.
WRITER_LOCK_NS = 0x5AF1_0001  # publishers of one key, until their commit
OWNER_LOCK_NS = 0x5AF1_0002  # the relay that owns a key, until its commit


@dataclass(frozen=True)
class ClaimedEvent:
    id: int
    topic: str
    key: str | None
    payload: Any
    headers: dict[str, Any]
    attempts: int
    created_at: str

    def message(self) -> dict[str, Any]:
        """The JSON form put on the broker and handed to consumers."""
        return {
            "id": self.id,
            "topic": self.topic,
            "key": self.key,
            "payload": self.payload,
            "headers": self.headers,
            "created_at": self.created_at,
        }


# --- writing events ------------------------------------------------------------------


def insert_event(
    *,
    topic: str,
    key: str | None,
    payload: Any,
    headers: dict[str, Any],
    serialize_key: bool,
    notify: bool,
) -> int:
    """Insert one pending event on the caller's connection and transaction."""
    with connection.cursor() as cursor:
        if key is not None and serialize_key:
            # Held until this transaction ends: a second writer of the same key
            # gets its id only after this one committed, so id order is commit order.
            cursor.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [WRITER_LOCK_NS, key])
        cursor.execute(
            f"INSERT INTO {OUTBOX} (topic, key, payload, headers, state, attempts, last_error,"
            " created_at, available_at) VALUES (%s, %s, %s, %s, 'pending', 0, '', now(), now())"
            " RETURNING id",
            [topic, key, Jsonb(payload), Jsonb(headers)],
        )
        (event_id,) = cursor.fetchone()
        if notify:
            # Delivered at commit, once per transaction however many events.
            cursor.execute("SELECT pg_notify(%s, '')", [CHANNEL])
    return event_id


def insert_events(rows: Iterable[tuple[str, str | None, Any]], *, notify: bool = True) -> int:
    """Bulk insert ``(topic, key, payload)`` rows (tests and benchmarks); returns the count.

    No per-key writer lock: the caller is one transaction, whose ids are in order.
    """
    rows = list(rows)
    if not rows:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {OUTBOX} (topic, key, payload, headers, state, attempts, last_error,"
            " created_at, available_at)"
            " SELECT t, k, p, '{}'::jsonb, 'pending', 0, '', now(), now()"
            " FROM unnest(%s::text[], %s::text[], %s::jsonb[]) WITH ORDINALITY AS r(t, k, p, n)"
            " ORDER BY n",
            [[r[0] for r in rows], [r[1] for r in rows], [Jsonb(r[2]) for r in rows]],
        )
        if notify:
            cursor.execute("SELECT pg_notify(%s, '')", [CHANNEL])
    return len(rows)


# --- the relay -------------------------------------------------------------------------


def begin_relay_transaction(*, hold_limit: float) -> None:
    """Bound what the current (relay) transaction can hold and cost.

    ``idle_in_transaction_session_timeout`` is the backstop of P4: if a publish
    hangs past ``hold_limit`` seconds, PostgreSQL ends the session and frees the
    rows for another relay. Commits are asynchronous: a "published" mark lost in
    a database crash only means the batch is published again (at-least-once).
    """
    idle_ms = max(1000, int(hold_limit * 1000))
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT set_config('idle_in_transaction_session_timeout', %s, true),"
            " set_config('lock_timeout', '5s', true),"
            " set_config('statement_timeout', '30s', true),"
            " set_config('synchronous_commit', 'off', true)",
            [str(idle_ms)],
        )


def claim_batch(limit: int, *, window: int | None = None) -> list[ClaimedEvent]:
    """Lock up to ``limit`` publishable events for the current transaction, in id order."""
    window = window or limit * 4
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT c.key FROM (SELECT key FROM {OUTBOX}"
            "   WHERE state = 'pending' AND available_at <= now() ORDER BY id LIMIT %s) c"
            " WHERE c.key IS NOT NULL AND pg_try_advisory_xact_lock(%s, hashtext(c.key))"
            " LIMIT %s",
            [window, OWNER_LOCK_NS, limit],
        )
        keys = list({row[0] for row in cursor.fetchall()})
        cursor.execute(
            f"SELECT e.id, e.topic, e.key, e.payload::text, e.headers::text, e.attempts,"
            f"  to_char(e.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
            f" FROM {OUTBOX} e"
            f" WHERE e.id IN (SELECT id FROM {OUTBOX}"
            "     WHERE state = 'pending' AND available_at <= now() ORDER BY id LIMIT %s)"
            "   AND e.state = 'pending' AND e.available_at <= now()"
            "   AND (e.key IS NULL OR (e.key = ANY(%s) AND NOT EXISTS ("
            f"     SELECT 1 FROM {OUTBOX} p WHERE p.key = e.key AND p.state = 'pending'"
            "       AND p.id < e.id AND p.available_at > now())))"
            " ORDER BY e.id LIMIT %s"
            " FOR UPDATE OF e SKIP LOCKED",
            [window, keys, limit],
        )
        rows = cursor.fetchall()
    return [_event(row) for row in rows]


def mark_published(ids: Sequence[int]) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {OUTBOX} SET state = 'published', published_at = now()"
            " WHERE id = ANY(%s) AND state = 'pending'",
            [list(ids)],
        )
        return cursor.rowcount


def mark_failed(
    ids: Sequence[int], *, error: str, max_attempts: int, backoff: float, max_backoff: float
) -> tuple[int, int]:
    """Count a failed publish; returns (retrying, dead).

    The next try waits ``backoff * 2**(attempts-1)`` capped at ``max_backoff``,
    with equal jitter, through ``available_at``: long waits live in PostgreSQL,
    never as a broker ETA (C5).
    """
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {OUTBOX} SET attempts = attempts + 1, last_error = %s,"
            "  state = CASE WHEN attempts + 1 >= %s THEN 'dead' ELSE 'pending' END,"
            "  available_at = now() + make_interval(secs =>"
            "    least(%s, %s * power(2, least(attempts, 60))) * (0.5 + random() / 2))"
            " WHERE id = ANY(%s) AND state = 'pending' RETURNING state",
            [error[:2000], max_attempts, max_backoff, backoff, list(ids)],
        )
        states = [row[0] for row in cursor.fetchall()]
    dead = states.count("dead")
    return len(states) - dead, dead


def requeue_dead(ids: Sequence[int] | None = None) -> int:
    """Put ``dead`` events (all of them, or those in ``ids``) back to pending, now.

    Their attempts restart from zero. A re-queued event is published after events
    of its key that were published while it was dead: order across a dead event
    is not kept (see docs/outbox.md).
    """
    count = requeue_where(
        f"UPDATE {OUTBOX} SET state = 'pending', attempts = 0, available_at = now()"
        " WHERE state = 'dead'",
        ids,
    )
    if count:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", [CHANNEL])
    return count


def requeue_where(sql: str, ids: Sequence[int] | None) -> int:
    """Run a dead-to-live ``UPDATE``, limited to ``ids`` when given."""
    params: list[Any] = []
    if ids is not None:
        sql += " AND id = ANY(%s)"
        params.append(list(ids))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def backlog() -> dict[str, Any]:
    """Pending and dead counts and the age in seconds of the oldest pending event."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FILTER (WHERE state = 'pending'),"
            f" count(*) FILTER (WHERE state = 'dead'),"
            f" extract(epoch FROM now() - min(created_at) FILTER (WHERE state = 'pending'))"
            f" FROM {OUTBOX} WHERE state IN ('pending', 'dead')"
        )
        pending, dead, age = cursor.fetchone()
    return {"pending": pending, "dead": dead, "oldest_pending_seconds": float(age or 0)}


def events_by_ids(ids: Sequence[int]) -> dict[int, ClaimedEvent]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, topic, key, payload::text, headers::text, attempts,"
            f"  to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
            f" FROM {OUTBOX} WHERE id = ANY(%s)",
            [list(ids)],
        )
        return {row[0]: _event(row) for row in cursor.fetchall()}


def _event(row: Sequence[Any]) -> ClaimedEvent:
    # JSON is read as text and decoded here: Django's psycopg loaders leave jsonb
    # undecoded for raw cursors (the ORM field decodes it), so be explicit.
    event_id, topic, key, payload, headers, attempts, created_at = row
    return ClaimedEvent(
        event_id, topic, key, json.loads(payload), json.loads(headers), attempts, created_at
    )


# --- retention -----------------------------------------------------------------------------


def purge_published(batch_size: int, older_than: float) -> int:
    """Delete published events older than ``older_than`` seconds, batch by batch.

    Each statement deletes at most ``batch_size`` rows (short locks, short WAL
    bursts); rows another session holds are skipped, so two janitors can run.
    """
    return purge_in_batches(
        f"DELETE FROM {OUTBOX} WHERE id IN (SELECT id FROM {OUTBOX}"
        " WHERE state = 'published' AND published_at < now() - make_interval(secs => %s)"
        " LIMIT %s FOR UPDATE SKIP LOCKED)",
        older_than,
        batch_size,
    )


def purge_in_batches(sql: str, older_than: float, batch_size: int, max_batches: int = 100) -> int:
    total = 0
    with connection.cursor() as cursor:
        for _ in range(max_batches):
            cursor.execute(sql, [older_than, batch_size])
            total += cursor.rowcount
            if cursor.rowcount < batch_size:
                break
    return total
