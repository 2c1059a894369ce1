"""The chaos suite's own sagas: each a probe that one fault kind aims at.

``chaos.poison``: a step that kills the worker process running it. Celery returns the
message every time its process dies (``reject_on_worker_lost``); the engine counts the
attempt at claim time, so the run must still end after ``attempts``.

``chaos.slow``: a step that sleeps, so a worker can be frozen in the middle of it.

``chaos.locked``: an ``atomic=True`` step that freezes its own process (SIGSTOP) on
its first attempt, inside the transaction that holds the run's row lock; its short
deadline passes while the lock is held, so a sweeper that waits for that lock stops
recovering every other run (``stop_lock_holder``).

``chaos.deadline_wait``, ``chaos.deadline_lost``, ``chaos.deadline_running``: a
deadline that passes during a retry wait (after an attempt that acted and failed, or
whose worker died) and during a running step (``deadline_passes``; the harness makes
the deadline pass at that moment).

``chaos.deploy``: three slow steps; ``CHAOS_SAGA_VARIANT=renamed`` is the next
release of it, whose second step is renamed, so a worker pool started with it while
runs are in flight finds stored steps its code no longer has (``definition_renamed``).

``chaos.clock``: a step that must keep its lease and a retry that must wait its
backoff, run by workers whose clock is off (``clock_skew``).

``chaos.undo``: a run that compensates at once, for an armed
``compensation.after_action`` to fire in without waiting for the load to fail.

Every step and compensation writes an ``Effect`` row when it acts: the checker's
ground truth of what ran (``tests/chaos/fault_checks.py``).
"""

import os
import signal
import time
from datetime import timedelta
from pathlib import Path

from django.utils import timezone

import sagaflow
from sagaflow import Abort, Retry

from .models import Effect

#: ``renamed``: the next release of ``chaos.deploy`` (see ``definition_renamed``).
VARIANT = os.environ.get("CHAOS_SAGA_VARIANT", "")


def effect(ctx, kind: str = "") -> None:
    """Record that this step (or its compensation) acted, on the database's clock."""
    Effect.objects.create(
        saga_id=ctx.saga_id,
        saga_name=ctx.saga_name,
        step=ctx.step,
        kind=kind or ("undo" if ctx.compensating else "action"),
        attempt=ctx.attempt,
        pid=os.getpid(),
        py_at=timezone.now(),
        variant=VARIANT,
    )


def _undo(ctx):
    effect(ctx)


def _leave_pid(ctx) -> None:
    directory = os.environ.get("CHAOS_PID_DIR")
    if directory:
        Path(directory, f"{ctx.saga_id}.pid").write_text(str(os.getpid()))


QUICK = Retry(attempts=3, backoff=0.1, max_backoff=0.2)
UNDO = Retry(attempts=10, backoff=0.2, max_backoff=1.0)

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
    if ctx.attempt == 1:
        _leave_pid(ctx)
    time.sleep(float(ctx.data.get("sleep", 3.0)))
    return {"attempt": ctx.attempt, "pid": os.getpid()}


# --- a frozen lock holder (stop_lock_holder) -----------------------------------------

#: The atomic step's timeout: PostgreSQL ends its frozen session (and so releases
#: the run's lock) this long plus LEASE_GRACE after the lock was taken.
LOCK_STEP_TIMEOUT = 18
#: Passes while the lock is held if a worker takes the step within this long (the
#: lock is held for LOCK_STEP_TIMEOUT + LEASE_GRACE from then on).
LOCKED_DEADLINE = timedelta(seconds=5)

locked = sagaflow.define("chaos.locked", deadline=LOCKED_DEADLINE)


@locked.step(atomic=True, timeout=LOCK_STEP_TIMEOUT, retry=QUICK)
def hold_the_lock(ctx):
    """Acts inside the run's lock, then freezes its own process there (first attempt).

    The ``Effect`` is written in the step's transaction: when PostgreSQL ends the
    frozen session, it is rolled back with the rest.
    """
    effect(ctx)
    if ctx.attempt == 1:
        _leave_pid(ctx)
        os.kill(os.getpid(), signal.SIGSTOP)
    return {"attempt": ctx.attempt}


hold_the_lock.compensation(retry=UNDO)(_undo)


# --- deadlines (deadline_passes) -----------------------------------------------------

#: Never reached by itself: the harness makes the deadline pass (``deadline_at`` set
#: to now, as time would) once the probe's step waits for its retry or runs, so how
#: long the probe waited in a queue backlog does not matter.
PROBE_DEADLINE = timedelta(minutes=10)
#: A retry wait longer than any probe (and than MAX_COUNTDOWN: it waits in
#: PostgreSQL, not as a broker countdown).
LONG_WAIT = Retry(attempts=3, backoff=60, max_backoff=60)


def _reserve(ctx):
    effect(ctx)
    return {"reserved": True}


def _acts_then_fails(ctx):
    """Acts, then fails: with ``compensate_on_failure`` it must be undone."""
    effect(ctx)
    if ctx.attempt == 1:
        raise RuntimeError("charged, then the provider answered 500")
    return {"charged": ctx.attempt}


def _acts_then_dies(ctx):
    """Acts, then its worker dies before the outcome is recorded (first attempt)."""
    effect(ctx)
    if ctx.attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"charged": ctx.attempt}


def _slow_charge(ctx):
    """Acts at the end of a call that outlives the run's deadline."""
    time.sleep(float(ctx.data.get("sleep", 5.0)))
    effect(ctx)
    return {"charged": ctx.attempt}


def _two_step(name: str, charge, *, deadline: timedelta, **charge_options):
    definition = sagaflow.define(name, deadline=deadline)
    definition.step(name="reserve", retry=QUICK, timeout=5)(_reserve).compensation(retry=UNDO)(
        _undo
    )
    definition.step(name="charge", **charge_options)(charge).compensation(retry=UNDO)(_undo)
    return definition


deadline_wait = _two_step(
    "chaos.deadline_wait",
    _acts_then_fails,
    deadline=PROBE_DEADLINE,
    retry=LONG_WAIT,
    timeout=5,
    compensate_on_failure=True,
)
#: The lost attempt's lease (timeout 2 s + LEASE_GRACE) expires soon.
deadline_lost = _two_step(
    "chaos.deadline_lost",
    _acts_then_dies,
    deadline=PROBE_DEADLINE,
    retry=LONG_WAIT,
    timeout=2,
)
deadline_running = _two_step(
    "chaos.deadline_running", _slow_charge, deadline=PROBE_DEADLINE, retry=QUICK, timeout=10
)


# --- a deploy mid-run (definition_renamed) -------------------------------------------

#: Each step of ``chaos.deploy`` takes this long, so runs are in flight for seconds.
DEPLOY_STEP_SECONDS = 1.0

deploy = sagaflow.define("chaos.deploy", deadline=timedelta(minutes=5))


def _deploy_step(ctx):
    time.sleep(DEPLOY_STEP_SECONDS)
    if ctx.step == "ship" and ctx.data.get("fail"):
        raise Abort("the carrier refused the parcel")
    effect(ctx)
    return {"variant": VARIANT or "v1"}


deploy.step(name="reserve", retry=QUICK, timeout=5)(_deploy_step).compensation(retry=UNDO)(_undo)
# The next release renames the second step: stored runs still say "charge".
deploy.step(name="take_payment" if VARIANT == "renamed" else "charge", retry=QUICK, timeout=5)(
    _deploy_step
).compensation(retry=UNDO)(_undo)
deploy.step(name="ship", retry=QUICK, timeout=5)(_deploy_step).compensation(retry=UNDO)(_undo)


# --- clocks (clock_skew) --------------------------------------------------------------

#: The held step's lease is its timeout + LEASE_GRACE: a worker clock off by more
#: than that would expire (or prolong) it, if a lease were ever read on that clock.
CLOCK_HOLD_TIMEOUT = 4
CLOCK_HOLD_SECONDS = 1.5
#: A retry short enough to go to the broker as a countdown (MAX_COUNTDOWN).
CLOCK_RETRY = Retry(attempts=3, backoff=2.0, max_backoff=2.0)

clock = sagaflow.define("chaos.clock", deadline=timedelta(minutes=5))


def _hold(ctx):
    """Runs well within its timeout: its lease must never be taken over. ``begin``
    and ``action`` say, on the database clock, how long the attempt really ran."""
    effect(ctx, "begin")
    time.sleep(CLOCK_HOLD_SECONDS)
    effect(ctx)
    return {"attempt": ctx.attempt}


def _retry_once(ctx):
    effect(ctx)
    if ctx.attempt == 1:
        raise RuntimeError("fails once, so the next attempt waits for its backoff")
    return {"attempt": ctx.attempt}


clock.step(name="hold", retry=QUICK, timeout=CLOCK_HOLD_TIMEOUT)(_hold).compensation(retry=UNDO)(
    _undo
)
clock.step(name="retry", retry=CLOCK_RETRY, timeout=5)(_retry_once).compensation(retry=UNDO)(_undo)


# --- a compensation on demand (point:compensation.after_action) ----------------------

undo = sagaflow.define("chaos.undo")


def _refuse(ctx):
    raise Abort("refused, so the step before it is compensated at once")


undo.step(name="act", retry=QUICK, timeout=5)(_reserve).compensation(retry=UNDO)(_undo)
undo.step(name="refuse", retry=QUICK, timeout=5)(_refuse)
