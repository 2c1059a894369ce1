"""What the saga engine costs over bare Celery, measured side by side in one run.

Figures (each the median of 3 repetitions, with its reference from the same run):

- a 10-step no-op saga end to end, one saga at a time, against a bare Celery
  chain of 10 no-op tasks on the same worker (one message per step, and
  ``local_steps=True``), with the transactions per step counted in
  ``pg_stat_database``;
- steps per second of many 5-step sagas at once, against bare no-op tasks per
  second, with 1 and 2 worker processes;
- a compensating step against a forward step (5 steps, then one that aborts).

Standalone: ``python bench/saga_engine.py [--quick]``. Not a test: nothing is asserted.
It empties the Redis database of ``CELERY_BROKER_URL`` (``make bench`` gives it its own).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Figure, setup_django, start_worker, stat_connection

RUNS = 3


def _wait_done(count: int, timeout: float = 300) -> None:
    """Block on the done list until ``count`` runs have said they finished."""
    from bench.benchapp.sagas import DONE_LIST, broker

    deadline = time.monotonic() + timeout
    for _ in range(count):
        # Short blocking reads: redis-py's default socket timeout is 5 s.
        while broker().brpop([DONE_LIST], timeout=2) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the bench runs did not finish within {timeout:.0f} s")


def _reset() -> None:
    """Start clean: no bench runs, and an empty broker database (the bench has its own
    Redis index), so messages left by an interrupted run cannot skew the counts."""
    from bench.benchapp.sagas import PREFIX, broker
    from sagaflow.models import Saga

    broker().flushdb()
    Saga.objects.filter(name__startswith=PREFIX).delete()


# --- transactions, from pg_stat_database ------------------------------------------------


def _commits() -> int:
    """Committed transactions in this database so far, every session's counts flushed.

    Sessions report their counts lazily (seconds later) unless told to flush: the
    worker's is told by a task, this process's own ends, and the read comes from a
    fresh session. Each call adds two transactions of its own to the count: the
    flushing task's and the read's (reported when its session ends).
    """
    from django.db import connection

    from bench.benchapp.sagas import flush_stats

    flush_stats.delay()
    _wait_done(1)
    connection.close()  # this process's session reports as it ends
    time.sleep(0.05)
    with stat_connection() as conn:
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0])


# --- measurements -------------------------------------------------------------------


def one_at_a_time(start: Callable[[], None], runs: int) -> float:
    """Seconds per run, starting the next only when the last said it was done."""
    started = time.perf_counter()
    for _ in range(runs):
        start()
        _wait_done(1)
    return (time.perf_counter() - started) / runs


def chain_of(length: int) -> Callable[[], None]:
    from celery import chain

    from bench.benchapp.sagas import noop, noop_done

    def start() -> None:
        chain(*[noop.si() for _ in range(length - 1)], noop_done.si()).apply_async()

    return start


def saga_of(definition) -> Callable[[], None]:
    def start() -> None:
        definition.start({"run": uuid.uuid4().hex})

    return start


def drain_bare(tasks: int, processes: int) -> float:
    """Bare no-op tasks per second: ``tasks`` queued at once, then one marker per process."""
    from bench.benchapp.sagas import noop, noop_done

    started = time.perf_counter()
    for _ in range(tasks):
        noop.delay()
    for _ in range(processes):
        noop_done.delay()
    _wait_done(processes)
    return tasks / (time.perf_counter() - started)


def drain_sagas(definition, sagas: int, steps: int) -> float:
    """Saga steps per second: ``sagas`` started at once, until every one is done."""
    from django.db import transaction

    started = time.perf_counter()
    with transaction.atomic():  # one commit for the starts; the messages go on commit
        for _ in range(sagas):
            definition.start({"run": uuid.uuid4().hex})
    _wait_done(sagas)
    return sagas * steps / (time.perf_counter() - started)


def _median(measure: Callable[[], float], runs: int = RUNS) -> tuple[float, list[float]]:
    values = [measure() for _ in range(runs)]
    return statistics.median(values), values


def end_to_end(quick: bool) -> tuple[list[Figure], dict[str, float]]:
    from bench.benchapp import sagas

    per_run = 5 if quick else 20
    bare_start = chain_of(10)
    one_at_a_time(bare_start, 3)  # warm up the worker and its connections
    one_at_a_time(saga_of(sagas.ten), 2)
    one_at_a_time(saga_of(sagas.ten_local), 2)
    figures = []
    chain_values: list[float] = []
    variants = [("one message per step", sagas.ten), ("local steps", sagas.ten_local)]
    saga_values: dict[str, list[float]] = {name: [] for name, _ in variants}
    commits: dict[str, list[float]] = {name: [] for name, _ in variants}
    for _ in range(RUNS):  # interleaved, so drift hits every variant alike
        chain_values.append(one_at_a_time(bare_start, per_run))
        for name, definition in variants:
            saga_values[name].append(one_at_a_time(saga_of(definition), per_run))
    # Counted apart from the timed runs, which the flushes would slow down.
    for _ in range(RUNS):
        for name, definition in variants:
            before = _commits()
            one_at_a_time(saga_of(definition), per_run)
            # Less this process's own: one per start, and two for the counting.
            spent = _commits() - before - per_run - 2
            commits[name].append(spent / (per_run * 10))
    chain_s = statistics.median(chain_values)
    for name, _ in variants:
        value = statistics.median(saga_values[name])
        per_step = statistics.median(commits[name])
        figures.append(
            Figure(
                section="saga",
                name=f"10-step no-op saga end to end, {name}",
                value=value * 1e3,
                unit="ms",
                reference="bare Celery chain of 10 no-op tasks",
                reference_value=chain_s * 1e3,
                goal="≤ 1.15x",
                met=value / chain_s <= 1.15,
                runs=[v * 1e3 for v in saga_values[name]],
                reference_runs=[v * 1e3 for v in chain_values],
                note=f"{per_run} runs one after another per repetition",
            )
        )
        figures.append(
            Figure(
                section="saga",
                name=f"transactions per step, {name}",
                value=per_step,
                unit="commits",
                reference="one commit per step",
                reference_value=1.0,
                goal="≤ 1.05 commits per step",
                met=per_step <= 1.05,
                runs=commits[name],
                reference_runs=[1.0] * RUNS,
                note="xact_commit of pg_stat_database over the runs, less the starts;"
                " includes Django's connection health check (CONN_HEALTH_CHECKS, one"
                " SELECT 1 per task)",
            )
        )
    calibration = {"chain_hop_ms": chain_s * 1e3 / 10}
    return figures, calibration


def throughput(processes: int, quick: bool) -> list[Figure]:
    from bench.benchapp import sagas

    count = 40 if quick else 200
    tasks = count * 5
    drain_bare(tasks // 5, processes)  # warm up every process
    drain_sagas(sagas.five_local, processes * 2, 5)
    drain_sagas(sagas.five, processes * 2, 5)
    bare_values: list[float] = []
    variants = [("one message per step", sagas.five), ("local steps", sagas.five_local)]
    values: dict[str, list[float]] = {name: [] for name, _ in variants}
    for _ in range(RUNS):
        bare_values.append(drain_bare(tasks, processes))
        for name, definition in variants:
            values[name].append(drain_sagas(definition, count, 5))
    bare = statistics.median(bare_values)
    return [
        Figure(
            section="saga",
            name=f"5-step sagas, steps/s, {processes} worker process(es), {name}",
            value=statistics.median(values[name]),
            unit="steps/s",
            reference=f"bare Celery no-op tasks/s, {processes} process(es)",
            reference_value=bare,
            goal="≥ 0.85x",
            met=statistics.median(values[name]) / bare >= 0.85,
            runs=values[name],
            reference_runs=bare_values,
            note=f"{count} sagas started in one transaction; {tasks} bare tasks",
        )
        for name, _ in variants
    ]


def compensation(quick: bool) -> list[Figure]:
    """A compensating step's cost from two runs of the same 5 steps: one that ends
    there, one whose 6th step aborts, so that 5 compensations follow."""
    from bench.benchapp import sagas

    per_run = 5 if quick else 20
    figures = []
    for name, forward, backward in (
        ("one message per step", sagas.five, sagas.five_then_abort),
        ("local steps", sagas.five_local, sagas.five_then_abort_local),
    ):
        one_at_a_time(saga_of(backward), 2)
        forward_values, backward_values = [], []
        for _ in range(RUNS):
            forward_s = one_at_a_time(saga_of(forward), per_run)
            aborted_s = one_at_a_time(saga_of(backward), per_run)
            step_s = forward_s / 5
            forward_values.append(step_s * 1e3)
            # 5 forward steps, the aborting one (costed as a forward step), 5 undone.
            backward_values.append((aborted_s - 6 * step_s) / 5 * 1e3)
        value, reference = statistics.median(backward_values), statistics.median(forward_values)
        figures.append(
            Figure(
                section="saga",
                name=f"compensating step, {name}",
                value=value,
                unit="ms",
                reference="forward step (same saga, same run)",
                reference_value=reference,
                goal="≤ 1.1x",
                met=value / reference <= 1.1,
                runs=backward_values,
                reference_runs=forward_values,
                note="(aborted run - 6 forward steps) / 5",
            )
        )
    return figures


def figures(quick: bool = False) -> tuple[list[Figure], dict[str, float]]:
    """The engine's figures, and the calibration entries measured on the way."""
    _reset()
    results: list[Figure] = []
    worker = start_worker(concurrency=1)
    try:
        latency, calibration = end_to_end(quick)
        results += latency
        results += compensation(quick)
        single = throughput(1, quick)
        results += single
        calibration["bare_drain_tasks_per_s"] = single[0].reference_value
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    worker = start_worker(concurrency=2)
    try:
        results += throughput(2, quick)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    _reset()
    return results, calibration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    setup_django()
    from bench.report import print_table

    results, calibration = figures(args.quick)
    print(calibration)
    print_table(results)


if __name__ == "__main__":
    main()
