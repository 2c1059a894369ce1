"""Every query on ``OutboxEvent`` but the counting of failed publishes
(``failures.py``); the consumers' inbox is ``inbox.py``.

**Claiming** (``claim``) runs inside the relay's transaction as one statement
(one round trip):

1. look at a *window* of the first pending, available rows in id order, so a claim
   costs the same with 10⁴ or 10⁶ rows waiting;
2. walk it key by key (each key's rows together, keys in the order of their first
   row) and take *key ownership* on the way: a transaction-level advisory lock per
   ordering key (``pg_try_advisory_xact_lock``, never a session lock: P7), only for
   the keys whose rows fill this batch. Other relays skip owned keys and take the
   next ones, so the events of different keys are relayed in parallel;
3. lock the rows with ``FOR UPDATE SKIP LOCKED``, mark them ``published`` (or
   delete them, ``OUTBOX_KEEP_PUBLISHED = False``) and return the batch as one
   JSON array.

Ownership keeps per-key order with several relays (P1): only the owner of a key
publishes its events, in id order. There is no high-water mark (P2): the claim
selects pending rows, so a row that commits late is still found (a claim with a
``floor`` may find it up to a second later: ``relay.FULL_SCAN_EVERY``).

**A key waits behind its retrying head**, and the wait is written into the rows:
``failures.mark_failed`` gives a key's failed events one retry time and moves every
later pending event of the key to it; ``insert_event`` gives a new event of a
waiting key that time too. So a waiting key's events are not in the window at all
(one hot key behind a failed head cannot crowd the others out), and ``FOR UPDATE``
re-reads the latest ``available_at`` of every row it locks: a failure counted after
a claim's snapshot but before its key lock still stops the claim (the rows changed).

Times are the database's clock (``now()``, C11).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

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
ROW_LOCK_NS = 0x5AF1_0003  # the relay that owns a keyless event (hashint8 of its id)


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

#: A new event's ``available_at``: now, or the retry time of its key's failed events
#: if that is later (the key waits behind them). Reads ``sagaflow_outbox_retrying``,
#: which holds only failed events, so it is one probe of an (almost always) empty range.
_KEY_CLOCK = (
    f"greatest(now(), (SELECT max(r.available_at) FROM {OUTBOX} r"
    " WHERE r.key = %s AND r.state = 'pending' AND r.attempts > 0))"
)


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
            f" created_at, available_at) VALUES (%s, %s, %s, %s, 'pending', 0, '', now(),"
            f" {_KEY_CLOCK % '%s'}) RETURNING id",
            [topic, key, Jsonb(payload), Jsonb(headers), key],
        )
        (event_id,) = cursor.fetchone()
        if notify:
            # Delivered at commit, once per transaction however many events.
            cursor.execute("SELECT pg_notify(%s, '')", [CHANNEL])
    return event_id


def insert_events(rows: Iterable[tuple[str, str | None, Any]], *, notify: bool = True) -> int:
    """Bulk insert ``(topic, key, payload)`` rows (tests and benchmarks); returns the count.

    No per-key writer lock: the caller is one transaction, whose ids are in order; it
    must not run while a relay counts a failure of one of its keys (``mark_failed``).
    """
    rows = list(rows)
    if not rows:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {OUTBOX} (topic, key, payload, headers, state, attempts, last_error,"
            " created_at, available_at)"
            f" SELECT t, k, p, '{{}}'::jsonb, 'pending', 0, '', now(), {_KEY_CLOCK % 'k'}"
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

#: A claimed batch as one JSON array built by PostgreSQL (one value to decode instead
#: of two JSON columns per row), the window's first id and whether it was full.
_BATCH_JSON = (
    "SELECT json_agg(json_build_object('id', d.id, 'topic', d.topic, 'key', d.key,"
    " 'payload', d.payload, 'headers', d.headers, 'attempts', d.attempts, 'created_at',"
    " to_char(d.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))"
    " ORDER BY d.id)::text, (SELECT min(id) FROM w), (SELECT count(*) FROM w) FROM d"
)


class Claim(NamedTuple):
    """What one claim took: the events (id order), the first id of the window it
    looked at (the floor of a later claim) and whether that window was full (there
    may be more to claim even if this batch came back short)."""

    events: list[ClaimedEvent]
    first_id: int | None
    window_full: bool


def claim(
    limit: int,
    *,
    window: int | None = None,
    keep_published: bool = True,
    hold_limit: float = 10.0,
    floor: int = 0,
) -> Claim:
    """Claim up to ``limit`` publishable events and take them out of the pending set.

    One statement, one round trip: bound the transaction (``_RELAY_SETTINGS``),
    take the window, own the keys that fill the batch, lock the rows
    (``FOR UPDATE SKIP LOCKED``) and mark them ``published`` (``keep_published``)
    or delete them, returning them in id order. Run it inside the relay's
    transaction: if the publish then fails, rolling the transaction back puts
    the rows back, pending and unlocked.

    The window is read on the statement's snapshot, the key locks are taken after
    it. That is safe in READ COMMITTED because ``FOR UPDATE`` re-reads each row it
    locks: a row another relay published since our snapshot is skipped (deleted, or
    no longer ``pending``); a row whose key's failure was counted since is skipped
    (``mark_failed`` moved its ``available_at``); a row committed after our
    snapshot waits for the next batch. Per key, writers commit in id order
    (``OUTBOX_SERIALIZE_KEYS``), so an owned key's rows are all there.

    Head-of-line per key: a key is passed over while an earlier pending event of it
    is not yet due (usually such a key's rows are not in the window at all: see the
    module docstring; the check covers rows written otherwise, e.g. by
    ``insert_events``, or a new event whose inherited time is later than a
    successor's) or lies below the floor. Each key is checked and owned once per
    claim, whatever plan PostgreSQL picks: a key whose lock was tried twice could
    be refused for its first rows and granted for its later ones.

    ``floor``: look only at pending rows with ``id >= floor`` (0: all). Under a
    long-lived snapshot elsewhere (P3) the rows relayed since cannot be vacuumed,
    and an index scan from the first pending id walks all of them on every
    claim; a floor skips them. Rows below the floor are found by the next claim
    without one, and an event below the floor blocks the later events of its
    key, so a floor may delay an event, never reorder a key.
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
            # The first pending, available rows: the only ones this batch looks at.
            f" w AS MATERIALIZED (SELECT id, key FROM {OUTBOX}, s"
            "   WHERE state = 'pending' AND available_at <= now() AND id >= %(floor)s"
            "   ORDER BY id LIMIT %(window)s),"
            # One entry per key (its window rows, in id order) and per keyless row,
            # in the order of their first row. (Keys grouped by their hash first:
            # integer compares, no collation.)
            " k AS MATERIALIZED (SELECT * FROM ("
            "   SELECT key, min(id) AS first, max(id) AS last, array_agg(id ORDER BY id) AS ids"
            "   FROM w WHERE key IS NOT NULL GROUP BY hashtext(key), key"
            "   UNION ALL SELECT NULL, id, id, ARRAY[id] FROM w WHERE key IS NULL) AS x"
            "   ORDER BY first),"
            # Ownership, decided once per entry (a MATERIALIZED CTE computes each of
            # its rows once, whatever plan reads it) and lazily (only for the entries
            # that ``q`` reads before its LIMIT): a transaction-level advisory lock on
            # the key, or on the keyless row, so a batch owns as few keys as fill it
            # and other relays take the next ones. A key that waits (an earlier event
            # of it not yet due, or below the floor: head-of-line) is not owned.
            " o AS MATERIALIZED (SELECT ids, CASE WHEN key IS NULL"
            "   THEN pg_try_advisory_xact_lock(%(row_ns)s, hashint8(first))"
            "   ELSE NOT EXISTS ("
            f"    SELECT 1 FROM {OUTBOX} p WHERE p.key = k.key AND p.state = 'pending'"
            "       AND p.id < k.last AND p.available_at > now())"
            "     AND NOT EXISTS ("
            f"    SELECT 1 FROM {OUTBOX} p WHERE p.key = k.key AND p.state = 'pending'"
            "       AND p.id < least(k.first, %(floor)s))"
            "     AND pg_try_advisory_xact_lock(%(ns)s, hashtext(k.key)) END AS mine FROM k),"
            # The batch: owned entries' rows in that order (so per key a prefix, in id
            # order), up to the limit. LATERAL keeps ``o`` the outer, lazily read side.
            " q AS MATERIALIZED (SELECT r.id FROM o CROSS JOIN LATERAL unnest(o.ids) AS r(id)"
            "   WHERE o.mine LIMIT %(limit)s),"
            # Row locks; FOR UPDATE re-reads each row, skipping what changed since the
            # snapshot (published by another relay, or its key's failure counted).
            f" c AS MATERIALIZED (SELECT e.id FROM {OUTBOX} e WHERE e.id IN (SELECT id FROM q)"
            "   AND e.state = 'pending' AND e.available_at <= now() FOR UPDATE OF e SKIP LOCKED),"
            f" d AS ({take} WHERE d.id = c.id RETURNING d.*)"
            f" {_BATCH_JSON}",
            {
                "idle_ms": idle_ms,
                "window": window,
                "ns": OWNER_LOCK_NS,
                "row_ns": ROW_LOCK_NS,
                "limit": limit,
                "floor": floor,
            },
        )
        batch, first, seen = cursor.fetchone()
    full = seen >= window
    if batch is None:
        return Claim([], first, full)
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
    return Claim(events, first, full)


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
    """Pending and dead counts and the age in seconds of the oldest pending event.

    Read through the partial indexes of pending and dead rows, so it touches the
    rows it counts, never the published history (status, metrics scrapes and the
    admin call it). The oldest pending event is the one with the smallest id: ids
    follow insertion, so that is the oldest but for transactions still open when
    it was written.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT (SELECT count(*) FROM {OUTBOX} WHERE state = 'pending'),"
            f" (SELECT count(*) FROM {OUTBOX} WHERE state = 'dead'),"
            " (SELECT extract(epoch FROM now() - created_at)"
            f"   FROM {OUTBOX} WHERE state = 'pending' ORDER BY id LIMIT 1)"
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
