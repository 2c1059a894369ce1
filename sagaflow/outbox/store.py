"""Every query on ``OutboxEvent``: all the relay's PostgreSQL SQL (the consumers'
inbox is ``inbox.py``).

**Claiming** (``claim``) runs inside the relay's transaction as one statement
(one round trip, see its docstring for why one snapshot is enough):

1. take *key ownership*: a transaction-level advisory lock per ordering key
   (``pg_try_advisory_xact_lock``, never a session lock: P7) for the keys of the
   first pending rows that no other relay owns;
2. lock the rows to publish with ``FOR UPDATE SKIP LOCKED``: rows without a key,
   and rows of owned keys that have no earlier pending event still waiting for a
   retry (head-of-line per key);
3. mark them ``published`` (or delete them, ``OUTBOX_KEEP_PUBLISHED = False``)
   and return the batch as one JSON array.

Ownership is what keeps per-key order with several relays (P1): only the owner of
a key publishes its events, in id order, and a relay that takes a key over sees
everything the previous owner committed. There is no high-water mark (P2): the
claim selects pending rows, so a row that commits late is still found (a claim
with a ``floor`` may find it up to a second later: ``relay.FULL_SCAN_EVERY``). The
claim looks only at a window of the first pending rows (``window``), so a
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


#: What one relay transaction may hold and cost, set (``SET LOCAL``) by the claim
#: statement itself, so it costs no extra round trip. ``idle_in_transaction_session_timeout``
#: is the backstop of P4: if a publish hangs past the hold limit, PostgreSQL ends the
#: session and frees the rows for another relay. Commits are asynchronous: a
#: "published" mark (or delete) lost in a database crash only means the batch is
#: published again (at-least-once).
_RELAY_SETTINGS = (
    "SELECT set_config('idle_in_transaction_session_timeout', %(idle_ms)s, true),"
    " set_config('lock_timeout', '5s', true),"
    " set_config('statement_timeout', '30s', true),"
    " set_config('synchronous_commit', 'off', true)"
)

#: A claimed batch as one JSON array built by PostgreSQL: one value to decode
#: instead of two JSON columns per row.
_BATCH_JSON = (
    "SELECT json_agg(json_build_object('id', d.id, 'topic', d.topic, 'key', d.key,"
    " 'payload', d.payload, 'headers', d.headers, 'attempts', d.attempts, 'created_at',"
    " to_char(d.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))"
    " ORDER BY d.id)::text, (SELECT min(id) FROM w) FROM d"
)


def claim(
    limit: int,
    *,
    window: int | None = None,
    keep_published: bool = True,
    hold_limit: float = 10.0,
    floor: int = 0,
) -> tuple[list[ClaimedEvent], int | None]:
    """Claim up to ``limit`` publishable events and take them out of the pending set.

    One statement, one round trip: bound the transaction (``_RELAY_SETTINGS``),
    take key ownership, lock the rows (``FOR UPDATE SKIP LOCKED``) and mark them
    ``published`` (``keep_published``) or delete them, returning them in id order.
    Run it inside the relay's transaction: if the publish then fails, rolling
    the transaction back puts the rows back, pending and unlocked.

    Ownership (``k``) and the row locks (``c``) share one snapshot. That is safe in
    READ COMMITTED: a row another relay published after our snapshot but before we
    got its key is either deleted (``FOR UPDATE`` skips it) or updated to
    ``published`` (``FOR UPDATE`` re-checks the new version, which no longer
    matches ``state = 'pending'``); a row committed after our snapshot waits for
    the next batch. Per key, writers commit in id order (``OUTBOX_SERIALIZE_KEYS``),
    so the head-of-line rule sees every earlier event of an owned key.

    ``floor``: look only at pending rows with ``id >= floor`` (0: all). Under a
    long-lived snapshot elsewhere (P3) the rows relayed since cannot be vacuumed,
    and an index scan from the first pending id walks all of them on every
    claim; a floor skips them. Rows below the floor are found by the next claim
    without one, and an event below the floor blocks the later events of its
    key (head-of-line), so a floor may delay an event, never reorder a key.
    Returns the events and the window's first id (the floor of a later claim).
    """
    window = window or limit * 4
    take = (
        f"UPDATE {OUTBOX} d SET state = 'published', published_at = now() FROM c"
        if keep_published
        else f"DELETE FROM {OUTBOX} d USING c"
    )
    idle_ms = str(max(1000, int(hold_limit * 1000)))
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH s AS MATERIALIZED ({_RELAY_SETTINGS}),"
            # The first pending rows: the only ones this batch looks at, so a
            # claim costs the same with 10^4 or 10^6 rows waiting.
            f" w AS MATERIALIZED (SELECT id, key FROM {OUTBOX}, s"
            "   WHERE state = 'pending' AND available_at <= now() AND id >= %(floor)s"
            "   ORDER BY id LIMIT %(window)s),"
            # Key ownership: a transaction-level advisory lock (P7) per key, in id
            # order, for the keys of at most ``limit`` rows that no other relay owns.
            " k AS MATERIALIZED (SELECT w.key FROM w"
            "   WHERE w.key IS NOT NULL AND pg_try_advisory_xact_lock(%(ns)s, hashtext(w.key))"
            "   LIMIT %(limit)s),"
            # The rows to publish: keyless ones and those of owned keys, unless an
            # earlier event of the key waits for a retry or lies below the floor
            # (head-of-line).
            f" c AS MATERIALIZED (SELECT e.id FROM {OUTBOX} e"
            "   WHERE e.id IN (SELECT w.id FROM w WHERE w.key IS NULL"
            "       OR w.key IN (SELECT key FROM k))"
            "     AND e.state = 'pending' AND e.available_at <= now()"
            "     AND (e.key IS NULL OR (NOT EXISTS ("
            f"      SELECT 1 FROM {OUTBOX} p WHERE p.key = e.key AND p.state = 'pending'"
            "         AND p.id < e.id AND p.available_at > now())"
            "       AND NOT EXISTS ("
            f"      SELECT 1 FROM {OUTBOX} p WHERE p.key = e.key AND p.state = 'pending'"
            "         AND p.id < least(e.id, %(floor)s))))"
            "   ORDER BY e.id LIMIT %(limit)s"
            "   FOR UPDATE OF e SKIP LOCKED),"
            f" d AS ({take} WHERE d.id = c.id RETURNING d.*)"
            f" {_BATCH_JSON}",
            {
                "idle_ms": idle_ms,
                "window": window,
                "ns": OWNER_LOCK_NS,
                "limit": limit,
                "floor": floor,
            },
        )
        batch, first = cursor.fetchone()
    if batch is None:
        return [], first
    events = [
        ClaimedEvent(
            e["id"],
            e["topic"],
            e["key"],
            e["payload"],
            e["headers"],
            e["attempts"],
            e["created_at"],
        )
        for e in json.loads(batch)
    ]
    return events, first


def mark_failed(
    ids: Sequence[int], *, error: str, max_attempts: int, backoff: float, max_backoff: float
) -> tuple[int, int]:
    """Count a failed publish; returns (retrying, dead).

    The next try waits ``backoff * 2**(attempts-1)`` capped at ``max_backoff``,
    with equal jitter, through ``available_at``: long waits live in PostgreSQL,
    never as a broker ETA (C5).

    The relay calls this after rolling its claim back, so it first takes (waiting)
    the ownership of the events' keys. Without it, another relay could own a key
    while this update holds the key's first event locked: its ``SKIP LOCKED`` claim
    would pass over that event and publish a later one of the key first.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_advisory_xact_lock(%s, hashtext(k))) FROM ("
            f" SELECT DISTINCT key AS k FROM {OUTBOX}"
            " WHERE id = ANY(%s) AND key IS NOT NULL ORDER BY 1) AS keys",
            [OWNER_LOCK_NS, list(ids)],
        )
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
