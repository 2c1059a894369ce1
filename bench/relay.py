"""Outbox relay throughput against its ceiling, measured side by side in one run.

Standalone: ``DATABASE_URL=postgres://… CELERY_BROKER_URL=redis://… python bench/relay.py``
(defaults: ``bench.settings``). ``--big`` adds the 10⁶-row backlog (about a minute
more). No assertions: this measures, it does not test.

- relay: ``relay.relay_batch`` (claim with key ownership, one ``deliver_events``
  message per batch on Redis, mark published), 1 and 4 processes;
- ceiling: a raw-SQL loop that only claims the same rows with ``SKIP LOCKED`` and
  marks them published (no broker, no key ownership), 1 and 4 processes;
- backlog: the 1-relay rate over the first 20,000 rows with 10⁴, 10⁵ (and 10⁶)
  pending rows in the table.

Events carry keys like a shop's (four per order, ``order-<n>``). Each figure is
the median of 3 repetitions; rows per second are wall-clock from the moment all
processes are released together until the last one is done.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import setup_django

QUEUE = "sagaflow-bench-relay"
BATCH = 500
RAW_CLAIM = """
WITH c AS (
    SELECT id FROM sagaflow_outboxevent
    WHERE state = 'pending' AND available_at <= now()
    ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED
)
UPDATE sagaflow_outboxevent e SET state = 'published', published_at = now()
FROM c WHERE e.id = c.id
"""


def fill(rows: int) -> None:
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


def _child(mode: str, barrier, limit, done) -> None:
    from django.db import connection

    from sagaflow import relay

    connection.close()
    publisher = relay.get_publisher()
    barrier.wait()
    while limit.value <= 0 or done.value < limit.value:
        if mode == "relay":
            n = relay.relay_batch(BATCH, publisher).claimed
        else:
            with connection.cursor() as cursor:
                cursor.execute(RAW_CLAIM, [BATCH])
                n = cursor.rowcount
        with done.get_lock():
            done.value += n
        if n == 0:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT EXISTS (SELECT 1 FROM sagaflow_outboxevent WHERE state = 'pending')"
                )
                if not cursor.fetchone()[0]:
                    break
    connection.close()


def run(mode: str, processes: int, rows: int, relay_only: int = 0) -> float:
    """Rows per second for ``processes`` children of ``mode`` over a fresh table."""
    import redis
    from django.conf import settings
    from django.db import connection

    fill(rows)
    connection.close()
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(processes + 1)
    limit = ctx.Value("q", relay_only)
    done = ctx.Value("q", 0)
    children = [
        ctx.Process(target=_child, args=(mode, barrier, limit, done)) for _ in range(processes)
    ]
    for child in children:
        child.start()
    barrier.wait()
    started = time.perf_counter()
    for child in children:
        child.join()
    elapsed = time.perf_counter() - started
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(QUEUE)
    return done.value / elapsed


def median(mode: str, processes: int, rows: int, relay_only: int = 0) -> float:
    return statistics.median(run(mode, processes, rows, relay_only) for _ in range(3))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--big", action="store_true", help="also a 10^6-row backlog")
    args = parser.parse_args()
    setup_django()
    from django.test.utils import override_settings

    with override_settings(SAGAFLOW={"OUTBOX_QUEUE": QUEUE, "OUTBOX_BATCH_SIZE": BATCH}):
        print(f"relay vs ceiling, {args.rows} rows, batch {BATCH}, medians of 3 (rows/s)")
        for processes in (1, 4):
            relay_rate = median("relay", processes, args.rows)
            ceiling = median("raw", processes, args.rows)
            print(
                f"  {processes} process(es): relay {relay_rate:9.0f}  ceiling {ceiling:9.0f}"
                f"  ratio {relay_rate / ceiling:.2f}"
            )
        print("1 relay over the first 20000 rows, by backlog (rows/s)")
        sizes = [10_000, 100_000] + ([1_000_000] if args.big else [])
        for size in sizes:
            rate = median("relay", 1, size, relay_only=min(size, 20_000))
            print(f"  backlog {size:>9}: {rate:9.0f}")


if __name__ == "__main__":
    main()
