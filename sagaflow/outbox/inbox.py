"""Every query on ``InboxMessage``: what each consumer has done with each event.

The inbox row is what makes a consumer idempotent: it is inserted in the handler's
transaction, so the row and the handler's writes commit together (P6: the unique
(consumer, message_id) pair, never check-then-insert). Times are the database's
clock (``now()``, C11).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.db import connection

from .store import INBOX, OUTBOX, purge_in_batches, requeue_where


@dataclass(frozen=True)
class InboxEntry:
    """What the inbox says about (consumer, message) when a delivery arrives."""

    new: bool
    state: str  # "processed" | "failed" | "dead"; for a new entry, "processed" tentatively
    attempts: int
    due: bool


#: The error recorded for a try whose worker died (see ``inbox_count_crash``).
CRASHED = "the worker died while this handler ran (its message was redelivered)"


def inbox_enter(consumer: str, message_id: int, topic: str) -> InboxEntry:
    """Insert the inbox row as processed, or lock the existing one.

    The row is inserted *before* the handler runs, in the handler's transaction:
    a concurrent duplicate delivery waits on the unique index until this
    transaction ends, then finds the row (P6). If the handler fails, the caller
    turns the row into a failed one in the same transaction.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {INBOX} (consumer, message_id, topic, state, attempts, last_error,"
            " created_at, updated_at) VALUES (%s, %s, %s, 'processed', 1, '', now(), now())"
            " ON CONFLICT (consumer, message_id) DO NOTHING RETURNING id",
            [consumer, message_id, topic],
        )
        if cursor.fetchone() is not None:
            return InboxEntry(new=True, state="processed", attempts=0, due=True)
        cursor.execute(
            f"SELECT state, attempts, coalesce(available_at <= now(), true) FROM {INBOX}"
            " WHERE consumer = %s AND message_id = %s FOR UPDATE",
            [consumer, message_id],
        )
        state, attempts, due = cursor.fetchone()
    return InboxEntry(new=False, state=state, attempts=attempts, due=due)


def inbox_count_crash(consumer: str, message_id: int, topic: str) -> int | None:
    """Count a try that may have killed its worker; committed on its own.

    Called before a handler runs on an event of a *redelivered* message (its
    worker died mid-batch), so a handler that kills its process uses up its tries
    and is dead-lettered instead of being redelivered forever (C2). Returns the
    count, or None when the event is already processed or dead (nothing to run).
    """
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {INBOX} AS i (consumer, message_id, topic, state, attempts,"
            " last_error, created_at, updated_at, available_at)"
            " VALUES (%s, %s, %s, 'failed', 1, %s, now(), now(), now())"
            " ON CONFLICT (consumer, message_id) DO UPDATE SET attempts = i.attempts + 1,"
            " last_error = EXCLUDED.last_error, updated_at = now(), available_at = now()"
            " WHERE i.state = 'failed' RETURNING i.attempts",
            [consumer, message_id, topic, CRASHED],
        )
        row = cursor.fetchone()
    return row[0] if row else None


def inbox_processed(consumer: str, message_id: int) -> None:
    """A retried handler succeeded (a new entry is already ``processed``)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {INBOX} SET state = 'processed', attempts = attempts + 1, last_error = '',"
            " available_at = NULL, updated_at = now() WHERE consumer = %s AND message_id = %s",
            [consumer, message_id],
        )


def inbox_failed(
    consumer: str, message_id: int, *, attempts: int, dead: bool, delay: float, error: str
) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {INBOX} SET state = %s, attempts = %s, last_error = %s, updated_at = now(),"
            " available_at = CASE WHEN %s THEN NULL ELSE now() + make_interval(secs => %s) END"
            " WHERE consumer = %s AND message_id = %s",
            [
                "dead" if dead else "failed",
                attempts,
                error[:2000],
                dead,
                delay,
                consumer,
                message_id,
            ],
        )


def take_due_retries(limit: int, redeliver_after: float) -> list[tuple[str, int]]:
    """Failed handler runs whose retry is due, stamped as sent again in one statement.

    SKIP LOCKED and the stamp make two concurrent sweeps send each retry once.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH due AS (SELECT id FROM {INBOX} WHERE state = 'failed' AND available_at <= now()"
            "   ORDER BY available_at LIMIT %s FOR UPDATE SKIP LOCKED)"
            f" UPDATE {INBOX} i SET available_at = now() + make_interval(secs => %s)"
            " FROM due WHERE i.id = due.id RETURNING i.consumer, i.message_id",
            [limit, redeliver_after],
        )
        return [(row[0], row[1]) for row in cursor.fetchall()]


def take_unconsumed(
    consumer: str, topic: str, *, settle: float, window: float, limit: int
) -> list[int]:
    """Events of ``topic`` published between ``window`` and ``settle`` seconds ago
    that ``consumer`` has no inbox row for and that are *provably lost*: the consumer
    has received a later event (a greater id) at least ``settle`` seconds ago, so the
    broker message of this one should have reached it by now (Redis flushed, or
    restarted without persistence). An event the workers simply have not reached yet
    (a backlog older than ``settle``) is not sent again: resending a backlog would
    only grow it.

    When nothing later has been received (the consumer is idle, or its workers are
    down), only the newest such event is sent, as a probe: once it arrives, the
    older ones are provably lost and go on the next sweeps. So a sweep adds at most
    one message per consumer to a backlog that is merely slow.

    Each is stamped ``published_at = now()`` in the same statement (SKIP LOCKED), so
    two sweeps send it once, and it is looked at again only after ``settle`` more
    seconds. The window must stay shorter than the inbox retention, or an event
    whose inbox row was purged would be applied again.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            # The newest event this consumer received at least ``settle`` seconds ago.
            f"WITH m AS (SELECT coalesce(max(message_id), 0) AS id FROM {INBOX}"
            "   WHERE consumer = %(consumer)s"
            "     AND created_at < now() - make_interval(secs => %(settle)s)),"
            f" unconsumed AS (SELECT e.id FROM {OUTBOX} e"
            "   WHERE e.state = 'published' AND e.topic = %(topic)s"
            "     AND e.published_at < now() - make_interval(secs => %(settle)s)"
            "     AND e.published_at > now() - make_interval(secs => %(window)s)"
            f"    AND NOT EXISTS (SELECT 1 FROM {INBOX} i"
            "                     WHERE i.consumer = %(consumer)s AND i.message_id = e.id)),"
            " lost AS (SELECT u.id FROM unconsumed u, m WHERE u.id < m.id"
            "   ORDER BY u.id LIMIT %(limit)s),"
            " probe AS (SELECT u.id FROM unconsumed u, m WHERE u.id > m.id"
            "   AND NOT EXISTS (SELECT 1 FROM lost) ORDER BY u.id DESC LIMIT 1),"
            f" take AS (SELECT e.id FROM {OUTBOX} e WHERE e.id IN (SELECT id FROM lost"
            "   UNION ALL SELECT id FROM probe) AND e.state = 'published'"
            "   FOR UPDATE OF e SKIP LOCKED)"
            f" UPDATE {OUTBOX} o SET published_at = now() FROM take WHERE o.id = take.id"
            " RETURNING o.id",
            {
                "consumer": consumer,
                "topic": topic,
                "settle": settle,
                "window": window,
                "limit": limit,
            },
        )
        return sorted(row[0] for row in cursor.fetchall())


def requeue_dead_inbox(ids: Sequence[int] | None = None) -> int:
    """Give dead handler runs a fresh set of retries, due now."""
    return requeue_where(
        f"UPDATE {INBOX} SET state = 'failed', attempts = 0, available_at = now(),"
        " updated_at = now() WHERE state = 'dead'",
        ids,
    )


def purge_inbox(batch_size: int, older_than: float) -> int:
    """Delete processed and dead inbox rows older than ``older_than`` seconds.

    A duplicate of an event arriving after its inbox row is gone would run again,
    so keep this longer than any redelivery can take (the broker's visibility
    timeout, the relay's retries).
    """
    return purge_in_batches(
        f"DELETE FROM {INBOX} WHERE id IN (SELECT id FROM {INBOX}"
        " WHERE state IN ('processed', 'dead') AND updated_at < now() - make_interval(secs => %s)"
        " LIMIT %s FOR UPDATE SKIP LOCKED)",
        older_than,
        batch_size,
    )
