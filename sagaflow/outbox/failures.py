"""Counting a failed publish: one retry time per key, and the locks that make it safe.

Every batch that was claimed but not marked (the broker refused it, or the relay's
transaction ended before its commit) is counted here, in short transactions of
its own, after the claim rolled back. Each event counts one attempt and waits
(``backoff * 2**(attempts-1)``, capped, with equal jitter) through ``available_at``,
on the database clock: long waits live in PostgreSQL, never as a broker ETA (C5).
After ``max_attempts`` it is ``dead``.

Per key, the failed events (a prefix of the key's pending events: the claim takes
keys in id order) get one retry time, the longest, and every later pending event
of the key is moved to it. So the key keeps its order and stays out of the claim's
window until then, and a claim whose snapshot predates this update but whose key
lock follows it re-reads the moved rows (``FOR UPDATE``) and leaves them.

The locks, and why they cannot deadlock with an application:

- the key's *ownership* (waiting): no relay holds the key's events while they
  change here, or its ``SKIP LOCKED`` claim would pass over a locked first event
  and publish a later one. Relays only ever *try* ownership, and this module takes
  it in one order (key text, bytewise), so waiting for it closes no cycle;
- the key's *writer* lock (``publish`` holds it until its transaction ends): no
  event of the key is being inserted that the update would miss and that would
  then go out before the retry. Writers wait for each other on it, so this module
  never waits for one while it holds anything: it *tries* them all, and if one is
  busy it lets everything go, waits for that one alone, and starts again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from django.db import connection, transaction

from .store import OUTBOX, OWNER_LOCK_NS, WRITER_LOCK_NS

#: Seconds counting a failure may wait for the keys' locks in all: the relays that
#: own them (a publish at most) and the transactions writing events of them.
LOCK_WAIT = 30.0


class KeysBusy(Exception):
    """The keys' locks were not free within ``LOCK_WAIT``; nothing was counted."""


def mark_failed(
    ids: Sequence[int], *, error: str, max_attempts: int, backoff: float, max_backoff: float
) -> tuple[int, int]:
    """Count a failed publish of the events ``ids``; returns (retrying, dead).

    Runs its own transactions; call it outside one (inside one, the locks it takes
    are held until that transaction ends). Events no longer pending (another relay
    published them meanwhile) are not counted.
    """
    ids = sorted(set(ids))
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        with transaction.atomic():
            busy = _lock_keys(ids, deadline)
            if busy is None:
                return _count(ids, error[:2000], max_attempts, backoff, max_backoff)
        _wait_for_writer(busy, deadline)


def _lock_timeout(deadline: float) -> str:
    left = deadline - time.monotonic()
    if left <= 0:
        raise KeysBusy(
            f"counting a failed publish waited {LOCK_WAIT:g}s for its keys' locks (a relay "
            f"or a transaction publishing one of those keys held them); the events stay "
            f"pending and are published again without this attempt counted"
        )
    return f"{max(1, int(left * 1000))}ms"


def _lock_keys(ids: list[int], deadline: float) -> str | None:
    """Own the keys (waiting) and try their writer locks; the first busy key, or None."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('lock_timeout', %s, true)", [_lock_timeout(deadline)])
        cursor.execute(
            "SELECT k, pg_advisory_xact_lock(%s, hashtext(k))"
            f' FROM (SELECT DISTINCT key COLLATE "C" AS k FROM {OUTBOX}'
            "  WHERE id = ANY(%s) AND key IS NOT NULL ORDER BY 1) AS keys",
            [OWNER_LOCK_NS, ids],
        )
        keys = [row[0] for row in cursor.fetchall()]
        if not keys:
            return None
        cursor.execute(
            "SELECT k FROM unnest(%s::text[]) WITH ORDINALITY AS u(k, n)"
            " WHERE NOT pg_try_advisory_xact_lock(%s, hashtext(k)) ORDER BY n LIMIT 1",
            [keys, WRITER_LOCK_NS],
        )
        row = cursor.fetchone()
    return row[0] if row else None


def _wait_for_writer(key: str, deadline: float) -> None:
    """Wait, holding nothing else, until the transaction writing ``key`` has ended."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT set_config('lock_timeout', %s, true)", [_lock_timeout(deadline)])
        cursor.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [WRITER_LOCK_NS, key])


def _count(
    ids: list[int], error: str, max_attempts: int, backoff: float, max_backoff: float
) -> tuple[int, int]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH f AS MATERIALIZED (SELECT id, key, attempts FROM {OUTBOX}"
            "   WHERE id = ANY(%(ids)s) AND state = 'pending' FOR UPDATE),"
            # One retry time per key: the longest backoff among its failed events.
            " t AS MATERIALIZED (SELECT key, now() + make_interval(secs =>"
            "   least(%(cap)s, %(base)s * power(2, least(max(attempts), 60)))"
            "   * (0.5 + random() / 2)) AS until"
            "   FROM f WHERE key IS NOT NULL AND attempts + 1 < %(max)s GROUP BY key)"
            f" UPDATE {OUTBOX} o SET attempts = o.attempts + 1, last_error = %(error)s,"
            "  state = CASE WHEN o.attempts + 1 >= %(max)s THEN 'dead' ELSE 'pending' END,"
            "  available_at = coalesce(t.until, now() + make_interval(secs =>"
            "    least(%(cap)s, %(base)s * power(2, least(o.attempts, 60)))"
            "    * (0.5 + random() / 2)))"
            " FROM f LEFT JOIN t ON t.key = f.key WHERE o.id = f.id RETURNING o.state",
            {"ids": ids, "error": error, "max": max_attempts, "cap": max_backoff, "base": backoff},
        )
        states = [row[0] for row in cursor.fetchall()]
        # The later events of each key wait for its retry too.
        cursor.execute(
            f"UPDATE {OUTBOX} o SET available_at = h.until FROM ("
            f" SELECT key, min(id) AS first, max(available_at) AS until FROM {OUTBOX}"
            "  WHERE id = ANY(%s) AND state = 'pending' AND key IS NOT NULL GROUP BY key) h"
            " WHERE o.key = h.key AND o.state = 'pending' AND o.id > h.first"
            "   AND o.available_at < h.until",
            [ids],
        )
    dead = states.count("dead")
    return len(states) - dead, dead
