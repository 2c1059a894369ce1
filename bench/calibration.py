"""What this machine does in the units the figures are made of, printed first.

A durable single-row commit, a raw ``SKIP LOCKED`` claim of 100 rows, a variadic
Redis ``LPUSH`` of 100 values, and (measured by ``saga_engine``) a bare Celery
no-op drain and a 10-task chain's time per hop. With these, a figure from another
machine can be read against its own.
"""

from __future__ import annotations

import statistics
import time

from bench.common import stat_connection

CLAIM_TABLE = "bench_calibration_claim"


def _timed(repeat: int, action) -> float:
    """Median milliseconds per call over 3 runs of ``repeat`` calls."""
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(repeat):
            action()
        runs.append((time.perf_counter() - started) / repeat * 1e3)
    return statistics.median(runs)


def durable_commit_ms() -> float:
    with stat_connection() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_calibration_commit (v int)")
        conn.execute("SET synchronous_commit TO on")
        conn.autocommit = False

        def commit() -> None:
            conn.execute("INSERT INTO bench_calibration_commit VALUES (1)")
            conn.commit()

        value = _timed(300, commit)
        conn.autocommit = True
        conn.execute("DROP TABLE bench_calibration_commit")
    return value


def skip_locked_claim_ms(rows: int = 30_000) -> float:
    with stat_connection() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {CLAIM_TABLE}")
        conn.execute(
            f"CREATE TABLE {CLAIM_TABLE} (id bigserial PRIMARY KEY, payload jsonb NOT NULL)"
        )
        conn.execute(
            f"INSERT INTO {CLAIM_TABLE} (payload)"
            " SELECT jsonb_build_object('n', i) FROM generate_series(1, %s) i",
            [rows],
        )
        conn.execute(f"VACUUM ANALYZE {CLAIM_TABLE}")
        claim = (
            f"WITH c AS (SELECT id FROM {CLAIM_TABLE} ORDER BY id LIMIT 100"
            f" FOR UPDATE SKIP LOCKED) DELETE FROM {CLAIM_TABLE} t USING c"
            " WHERE t.id = c.id RETURNING t.payload"
        )
        value = _timed(rows // 100 // 3, lambda: conn.execute(claim).fetchall())
        conn.execute(f"DROP TABLE {CLAIM_TABLE}")
    return value


def lpush_ms() -> float:
    from bench.benchapp.sagas import broker

    values = [f'{{"n": {i}, "payload": "{"x" * 64}"}}' for i in range(100)]
    key = "bench:calibration"

    def push() -> None:
        broker().lpush(key, *values)

    value = _timed(300, push)
    broker().delete(key)
    return value


def measure() -> dict[str, float]:
    return {
        "durable_commit_ms": durable_commit_ms(),
        "skip_locked_claim_100_ms": skip_locked_claim_ms(),
        "lpush_100_values_ms": lpush_ms(),
    }
