"""A backlog in the relay bench's outbox, and draining it one batch at a time.

The benchmark owns the outbox table of the bench database and the queue ``QUEUE`` of
its Redis database: ``fill`` replaces every row of the table, and each drain empties
the queue after itself. ``relay_rate`` (sagaflow's relay) and ``raw_rate`` (a raw
``SKIP LOCKED`` claim-and-``DELETE`` loop that publishes nothing: the database's
ceiling for this shape) are the measured runs of the backlog and table-size figures;
``bench.relay_peers`` drains the same backlog with other relays.
"""

from __future__ import annotations

import time
from collections.abc import Callable

QUEUE = "sagaflow-bench-relay"
BATCH = 100
RAW_DELETE = """
WITH c AS (
    SELECT id FROM sagaflow_outboxevent
    WHERE state = 'pending' AND available_at <= now()
    ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED
)
DELETE FROM sagaflow_outboxevent e USING c WHERE e.id = c.id
"""


def sagaflow_settings() -> dict:
    """The ``SAGAFLOW`` settings of every relay run: the bench queue, batch ``BATCH``,
    and no kick on commit (the runs drain, or wait for ``NOTIFY``, by themselves)."""
    return {"OUTBOX_QUEUE": QUEUE, "OUTBOX_BATCH_SIZE": BATCH, "OUTBOX_KICK_ON_COMMIT": False}


def redis_client():
    import redis
    from django.conf import settings

    return redis.Redis.from_url(settings.CELERY_BROKER_URL)


def clear_queue() -> None:
    redis_client().delete(QUEUE)


def fill(rows: int) -> None:
    """A fresh outbox with ``rows`` pending events, four per key (like a shop's orders)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE sagaflow_outboxevent")
        cursor.execute(
            "INSERT INTO sagaflow_outboxevent (topic, key, payload, headers, state, attempts,"
            " last_error, created_at, available_at)"
            " SELECT 'order.event', 'order-' || (i / 4), jsonb_build_object('n', i),"
            "  '{\"correlation_id\": \"bench\"}'::jsonb, 'pending', 0, '', now(), now()"
            " FROM generate_series(0, %s - 1) AS i",
            [rows],
        )
        cursor.execute("VACUUM ANALYZE sagaflow_outboxevent")


def drain(step: Callable[[], int], rows: int | None = None) -> float:
    """Rows per second of ``step`` (one batch, returns its size) until the backlog
    (or ``rows`` of it) is drained."""
    done = 0
    started = time.perf_counter()
    while rows is None or done < rows:
        n = step()
        done += n
        if n < BATCH:
            break
    elapsed = time.perf_counter() - started
    clear_queue()
    return done / elapsed


def relay_rate(rows: int | None = None) -> float:
    """sagaflow's relay (``relay.relay_batch``: claim with key ownership, one
    ``deliver_events`` message per batch, mark published), in this process."""
    from sagaflow.outbox import relay

    publisher = relay.get_publisher()
    return drain(lambda: relay.relay_batch(BATCH, publisher).claimed, rows)


def raw_rate() -> float:
    from django.db import connection

    def step() -> int:
        with connection.cursor() as cursor:
            cursor.execute(RAW_DELETE, [BATCH])
            return cursor.rowcount

    return drain(step)
