"""The chaos suite's own sagas.

``chaos.poison``: a step that kills the worker process running it. Celery returns the
message every time its process dies (``reject_on_worker_lost``); the engine counts the
attempt at claim time, so the run must still end after ``attempts``.

``chaos.slow``: a step that sleeps, so a worker can be frozen in the middle of it.
"""

import os
import signal
import time
from pathlib import Path

import sagaflow
from sagaflow import Retry

poison = sagaflow.define("chaos.poison")


@poison.step(retry=Retry(attempts=2, backoff=0.1, max_backoff=0.2), timeout=3)
def crash_the_worker(ctx):
    os.kill(os.getpid(), signal.SIGKILL)


slow = sagaflow.define("chaos.slow")


@slow.step(retry=Retry(attempts=3, backoff=0.1, max_backoff=0.2), timeout=10)
def sleep_then_answer(ctx):
    """Sleeps mid-step so the harness can freeze the worker running it past its lease.

    The first attempt leaves its pid in ``CHAOS_PID_DIR``; the harness SIGSTOPs that
    worker, the sweeper hands the step to another one, and the frozen attempt's late
    result must then be rejected (the stored result says which attempt won).
    """
    directory = os.environ.get("CHAOS_PID_DIR")
    if directory and ctx.attempt == 1:
        Path(directory, f"{ctx.saga_id}.pid").write_text(str(os.getpid()))
    time.sleep(float(ctx.data.get("sleep", 3.0)))
    return {"attempt": ctx.attempt, "pid": os.getpid()}
