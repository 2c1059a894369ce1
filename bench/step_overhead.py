"""What a saga step costs over a bare Celery task, measured side by side.

N sagas of K no-op steps go through one worker process; so do N*K bare no-op
Celery tasks. Each figure is the median of 3 runs in the same process, against
the same PostgreSQL and Redis. Prints the ratio and the commits per step
(``xact_commit`` from ``pg_stat_database``). Not a test: nothing is asserted.

    python bench/step_overhead.py [--sagas 100] [--steps 10] [--runs 3]
"""

from __future__ import annotations

import argparse
import time
import uuid

from common import median_of, setup_django, start_worker, wait_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sagas", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    setup_django()
    import redis
    from django.conf import settings
    from django.db import connection

    from bench.benchapp.sagas import STEPS, mark_done, noop, noop_saga
    from sagaflow.models import Saga, SagaState

    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.flushdb()
    Saga.objects.filter(name="bench_noop").delete()
    worker = start_worker(concurrency=1)
    total = args.sagas * STEPS

    def commits() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            )
            return cursor.fetchone()[0]

    def bare() -> float:
        key = f"bench-done-{uuid.uuid4()}"
        start = time.perf_counter()
        for _ in range(total):
            noop.delay()
        mark_done.delay(key)
        wait_for(lambda: broker.get(key) is not None)
        return time.perf_counter() - start

    per_step_commits: list[float] = []

    def sagas() -> float:
        polls = 0
        before = commits()
        start = time.perf_counter()
        runs = [noop_saga.start({"n": i}).pk for i in range(args.sagas)]

        def done() -> bool:
            nonlocal polls
            polls += 1
            return not Saga.objects.filter(pk__in=runs).exclude(state=SagaState.COMPLETED).exists()

        wait_for(done, every=0.2)
        elapsed = time.perf_counter() - start
        # Subtract this process's own transactions: one per start, one per poll, one here.
        per_step_commits.append((commits() - before - args.sagas - polls - 1) / total)
        return elapsed

    try:
        bare_s, bare_all = median_of(args.runs, bare)
        saga_s, saga_all = median_of(args.runs, sagas)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    print(
        f"step overhead: {args.sagas} sagas x {STEPS} no-op steps vs {total} bare Celery "
        f"no-op tasks, 1 worker process, medians of {args.runs}"
    )
    print(f"{'figure':<34}{'seconds':>10}{'per item':>12}{'ratio':>8}")
    print(
        f"{'bare celery tasks (reference)':<34}{bare_s:>10.3f}{bare_s / total * 1e3:>9.3f} ms"
        f"{1.0:>8.2f}"
    )
    print(
        f"{'saga steps':<34}{saga_s:>10.3f}{saga_s / total * 1e3:>9.3f} ms{saga_s / bare_s:>8.2f}"
    )
    print(
        f"commits per saga step (pg_stat_database, median): "
        f"{sorted(per_step_commits)[len(per_step_commits) // 2]:.2f}"
    )
    print(
        f"raw runs: bare {[f'{v:.3f}' for v in bare_all]}, sagas {[f'{v:.3f}' for v in saga_all]}"
    )


if __name__ == "__main__":
    main()
