"""The engine holes a review found (issue 13), each a scenario on real PostgreSQL.

Every test here failed before its fix. Step functions log what they did to
``LOG`` (they run in this process through ``sagaflow.testing``), so the tests can
assert what acted and in which order its compensations ran.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid

import psycopg
import pytest
from django.db import DatabaseError, connection, transaction

import sagaflow
from sagaflow import Abort, Retry
from sagaflow.exceptions import FaultInjected
from sagaflow.models import Saga, SagaState, SagaStep, StepState
from sagaflow.ops import operations
from sagaflow.saga import engine, registry, store, sweeper
from sagaflow.saga.store import now_minus, now_plus
from sagaflow.testing import armed_fault, captured_dispatches, drive, expire_leases

LOG: list[str] = []
_names = itertools.count()


@pytest.fixture(autouse=True)
def _fresh_log():
    LOG.clear()
    yield
    for name in list(registry.all_definitions()):
        if name.startswith("hole."):
            registry.unregister(name)


def _define(**options) -> sagaflow.SagaDefinition:
    return sagaflow.define(f"hole.{next(_names)}", **options)


def _logged(name: str, result=None, fail: str | None = None):
    """A step (or compensation) that logs its call, then fails as asked."""

    def fn(ctx):
        LOG.append(f"{name}:{ctx.attempt}" if not ctx.compensating else f"undo {name}")
        if fail == "abort":
            raise Abort(f"{name} refused")
        if fail == "error":
            raise RuntimeError(f"{name} broke")
        return result

    fn.__name__ = name.replace(" ", "_")
    return fn


def _two_step(*, charge_retry=None, compensate_on_failure=False, charge_fail=None):
    saga = _define()
    reserve = saga.step(name="reserve")(_logged("reserve"))
    reserve.compensation(_logged("reserve"))
    charge = saga.step(
        name="charge",
        retry=charge_retry or Retry(attempts=3, backoff=0.05, max_backoff=0.1),
        compensate_on_failure=compensate_on_failure,
    )(_logged("charge", result={"charge_id": "c1"}, fail=charge_fail))
    charge.compensation(_logged("charge"))
    return saga


def _start(definition, data=None) -> Saga:
    with captured_dispatches():
        return definition.start(data or {})


def _step(saga: Saga, index: int) -> SagaStep:
    return SagaStep.objects.get(saga=saga, index=index)


def _pass_deadline(saga: Saga) -> None:
    Saga.objects.filter(pk=saga.pk).update(deadline_at=now_minus(1))
    with captured_dispatches():
        assert sweeper.sweep().deadlines == 1


def _wait_in_the_future(step: SagaStep) -> None:
    """Push a waiting step's retry far enough out that the deadline comes first."""
    SagaStep.objects.filter(pk=step.pk).update(due_at=now_plus(60))


# --- hole 2: a deadline during a retry wait must not skip a step that may have acted ---


@pytest.mark.django_db
def test_deadline_during_the_retry_wait_of_a_lost_attempt_compensates_that_step():
    definition = _two_step()
    saga = _start(definition)
    drive(saga, limit=1)  # reserve succeeded
    with armed_fault("step.after_action"), pytest.raises(FaultInjected):
        drive(saga, limit=1)  # charge acted, then its worker died before the record
    assert expire_leases(saga) == 1  # the sweeper counts the lost attempt: retry later
    charge = _step(saga, 1)
    assert charge.state == StepState.PENDING and charge.interrupted
    _wait_in_the_future(charge)
    _pass_deadline(saga)
    saga = drive(saga)
    assert saga.state == SagaState.COMPENSATED
    assert LOG == ["reserve:1", "charge:1", "undo charge", "undo reserve"]


@pytest.mark.django_db
def test_deadline_during_the_retry_wait_of_a_compensate_on_failure_step_compensates_it():
    definition = _two_step(compensate_on_failure=True, charge_fail="error")
    saga = _start(definition)
    drive(saga, limit=2)  # reserve, then charge's first attempt fails (it may have acted)
    charge = _step(saga, 1)
    assert charge.state == StepState.PENDING and charge.attempts == 1
    _wait_in_the_future(charge)
    _pass_deadline(saga)
    saga = drive(saga)
    assert saga.state == SagaState.COMPENSATED
    assert LOG == ["reserve:1", "charge:1", "undo charge", "undo reserve"]


@pytest.mark.django_db
def test_operator_compensate_during_a_retry_wait_compensates_the_lost_attempt():
    definition = _two_step()
    saga = _start(definition)
    drive(saga, limit=1)
    with armed_fault("step.after_action"), pytest.raises(FaultInjected):
        drive(saga, limit=1)
    expire_leases(saga)
    _wait_in_the_future(_step(saga, 1))
    with captured_dispatches():
        operations.compensate(saga.pk)
    saga = drive(saga)
    assert saga.state == SagaState.COMPENSATED
    assert LOG == ["reserve:1", "charge:1", "undo charge", "undo reserve"]


@pytest.mark.django_db
def test_a_plain_failure_waiting_for_its_retry_is_still_not_compensated():
    """The other side of the rule: a step that raised (without compensate_on_failure)
    did not act, as for any step (DESIGN §4)."""
    definition = _two_step(charge_fail="error")
    saga = _start(definition)
    drive(saga, limit=2)
    _wait_in_the_future(_step(saga, 1))
    _pass_deadline(saga)
    saga = drive(saga)
    assert saga.state == SagaState.COMPENSATED
    assert LOG == ["reserve:1", "charge:1", "undo reserve"]


# --- hole 3: a compensation runs only once its step's attempt has settled -------------


@pytest.mark.django_db
@pytest.mark.parametrize("how", ["deadline", "operator"])
def test_the_in_flight_step_is_compensated_only_after_its_attempt_records(how):
    definition = _two_step()
    saga = _start(definition)
    drive(saga, limit=1)
    charge = _step(saga, 1)
    in_flight = engine._claim(charge.pk, "forward", uuid.uuid4())  # the slow provider call
    assert in_flight is not None
    if how == "deadline":
        _pass_deadline(saga)
    else:
        with captured_dispatches():
            operations.compensate(saga.pk)
    saga = drive(saga)  # whatever is due now runs: nothing of charge's may be undone yet
    assert saga.state == SagaState.COMPENSATING
    assert LOG == ["reserve:1"]
    with captured_dispatches():
        engine._attempt(in_flight)  # the charge completes and records
    saga = drive(saga)
    assert saga.state == SagaState.COMPENSATED
    assert LOG == ["reserve:1", "charge:1", "undo charge", "undo reserve"]
    # The compensation saw the late result, to refund by its id.
    assert saga.results["charge"] == {"charge_id": "c1"}
    assert _step(saga, 1).state == StepState.COMPENSATED


@pytest.mark.django_db
def test_the_in_flight_step_whose_worker_dies_after_the_deadline_is_compensated():
    definition = _two_step()
    saga = _start(definition)
    drive(saga, limit=1)
    engine._claim(_step(saga, 1).pk, "forward", uuid.uuid4())
    _pass_deadline(saga)
    assert drive(saga).state == SagaState.COMPENSATING and LOG == ["reserve:1"]
    assert expire_leases(saga) == 1  # its worker never came back: it may have acted
    saga = drive(saga)
    assert saga.state == SagaState.COMPENSATED
    assert LOG == ["reserve:1", "undo charge", "undo reserve"]


@pytest.mark.django_db
def test_an_abandoned_in_flight_step_that_fails_is_not_retried():
    definition = _two_step(charge_fail="error")
    saga = _start(definition)
    drive(saga, limit=1)
    in_flight = engine._claim(_step(saga, 1).pk, "forward", uuid.uuid4())
    _pass_deadline(saga)
    with captured_dispatches():
        engine._attempt(in_flight)
    saga = drive(saga)
    assert saga.state == SagaState.COMPENSATED
    assert LOG == ["reserve:1", "charge:1", "undo reserve"]
    assert _step(saga, 1).attempts == 1


# --- hole 6: a step renamed mid-run is never silently left uncompensated -------------
# Under versions (DESIGN 4.1) the run waits for the code of its version rather than fail:
# its compensation is neither skipped nor run with code it was not started with.


@pytest.mark.django_db
def test_renaming_a_step_in_flight_does_not_skip_its_compensation():
    definition = _define()
    name = definition.name
    definition.step(name="reserve")(_logged("reserve")).compensation(_logged("reserve"))
    definition.step(name="charge")(_logged("charge", fail="abort"))
    saga = _start(definition)
    drive(saga, limit=1)  # reserve succeeded
    # "charge" is claimed by a worker that still runs the old code...
    in_flight = engine._claim(_step(saga, 1).pk, "forward", uuid.uuid4())
    # ...while a deploy renames "reserve" in place, without a new version.
    registry.unregister(name)
    renamed = sagaflow.define(name)
    renamed.step(name="hold")(_logged("hold")).compensation(_logged("hold"))
    renamed.step(name="charge")(_logged("charge", fail="abort"))
    with captured_dispatches():
        engine._attempt(in_flight)  # charge refuses: "reserve" must be undone
    saga = drive(saga)
    # The stock is still reserved: the run waits for its code, never "compensated".
    assert saga.state == SagaState.COMPENSATING and saga.needs_code_since is not None
    assert saga.error.startswith(f"needs the code of version 1 of {name}: ")
    assert "started with the steps ['reserve', 'charge']" in saga.error
    assert _step(saga, 0).state == StepState.COMPENSATING
    assert LOG == ["reserve:1", "charge:1"]
    # The code comes back: the compensation runs, with the code the run started with.
    registry.unregister(name)
    registry.register(definition)
    saga = drive(saga)
    assert saga.state == SagaState.COMPENSATED and saga.needs_code_since is None
    assert saga.error.startswith("step 'charge' failed: Abort: charge refused")
    assert LOG == ["reserve:1", "charge:1", "undo reserve"]


# --- hole 10: a retry message delivered early is sent again, not dropped -------------


@pytest.mark.django_db
def test_a_retry_delivered_early_is_sent_again_for_the_rest_of_its_wait(
    django_capture_on_commit_callbacks,
):
    definition = _define()
    flaky = {"left": 1}

    def charge(ctx):
        LOG.append(f"charge:{ctx.attempt}")
        if flaky["left"]:
            flaky["left"] -= 1
            raise RuntimeError("provider hiccup")

    definition.step(name="charge", retry=Retry(attempts=3, backoff=5, max_backoff=5))(charge)
    saga = _start(definition)
    drive(saga, limit=1)  # the first attempt fails; the retry waits ~5 s on a countdown
    step = _step(saga, 0)
    assert step.state == StepState.PENDING and step.dispatched_at is not None
    with captured_dispatches() as sent, django_capture_on_commit_callbacks(execute=True):
        engine.execute(step.pk, "forward")  # the countdown ran out early on this worker
    assert sent == [(step.pk, "forward")]  # sent again, not left for REDISPATCH_AFTER
    assert LOG == ["charge:1"] and _step(saga, 0).attempts == 1


# --- hole 1: one frozen lock holder never stops the sweeper --------------------------


def _dsn() -> str:
    settings = connection.settings_dict
    return (
        f"host={settings['HOST'] or 'localhost'} port={settings['PORT'] or 5432} "
        f"dbname={settings['NAME']} user={settings['USER']}"
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
def test_a_frozen_lock_holder_does_not_stop_the_sweeper_recovering_other_runs():
    definition = _two_step()
    frozen, other = _start(definition), _start(definition)
    for saga in (frozen, other):
        drive(saga, limit=1)
        engine._claim(_step(saga, 1).pk, "forward", uuid.uuid4())  # then the worker dies
    # The frozen run's lease expired first, so a sweep reaches it first.
    SagaStep.objects.filter(saga=frozen, index=1).update(lease_expires_at=now_minus(20))
    SagaStep.objects.filter(saga=other, index=1).update(lease_expires_at=now_minus(10))
    holder = psycopg.connect(_dsn(), autocommit=False)  # a worker frozen inside a record
    try:
        holder.execute("SELECT 1 FROM sagaflow_saga WHERE id = %s FOR UPDATE", [frozen.pk])
        done = threading.Event()

        def sweep():
            with captured_dispatches():
                sweeper.sweep()
            connection.close()
            done.set()

        thread = threading.Thread(target=sweep, daemon=True)
        started = time.monotonic()
        thread.start()
        assert done.wait(timeout=15), "the sweep is stuck behind the frozen lock holder"
        assert time.monotonic() - started < 5
        assert _step(other, 1).state == StepState.PENDING  # recovered: retry scheduled
        assert _step(frozen, 1).state == StepState.RUNNING  # left for a later sweep
    finally:
        holder.close()
    with captured_dispatches():
        assert sweeper.sweep().expired_leases == 1  # the lock is gone: now it is handled
    assert _step(frozen, 1).state == StepState.PENDING


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
def test_postgresql_ends_an_engine_session_frozen_inside_its_transaction(settings):
    settings.SAGAFLOW = {**settings.SAGAFLOW, "LEASE_GRACE": 0.4}
    definition = _two_step()
    saga = _start(definition)
    step = _step(saga, 0)
    with pytest.raises(DatabaseError), transaction.atomic():
        # As an atomic step's action holds it: a worker frozen inside its action.
        assert store.lock_step(step.pk, hold_for=0.1) is not None
        pid = connection.connection.info.backend_pid
        deadline = time.monotonic() + 20
        with psycopg.connect(_dsn(), autocommit=True) as watcher:
            while watcher.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]
            ).fetchone():
                assert time.monotonic() < deadline, "the frozen session was never ended"
                time.sleep(0.05)
        Saga.objects.count()  # the session is gone: its transaction and lock with it
    connection.close()
    with captured_dispatches(), transaction.atomic():
        assert store.lock_saga(saga.pk, skip_locked=True) is not None  # the lock was freed


# --- at scale: resends under a backlog back off; times are the database's ----------


@pytest.mark.django_db
def test_resends_of_a_late_message_back_off_instead_of_one_per_sweep(settings):
    settings.SAGAFLOW = {**settings.SAGAFLOW, "REDISPATCH_AFTER": 2.0}
    definition = _two_step()
    saga = _start(definition)
    step = _step(saga, 0)
    # Its message sits behind a 10-second queue backlog: due and sent 10 s ago.
    SagaStep.objects.filter(pk=step.pk).update(due_at=now_minus(10), dispatched_at=now_minus(10))
    with captured_dispatches() as sent:
        assert sweeper.sweep().redispatched == 1
    assert sent == [(step.pk, "forward")]
    # The next resend waits as long again as the step had waited, not REDISPATCH_AFTER.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXTRACT(EPOCH FROM dispatched_at - now()) FROM sagaflow_sagastep WHERE id = %s",
            [step.pk],
        )
        (ahead,) = cursor.fetchone()
    assert 9 <= float(ahead) <= 11
    SagaStep.objects.filter(pk=step.pk).update(dispatched_at=now_minus(0))  # time passes...
    with captured_dispatches() as sent:
        assert sweeper.sweep().redispatched == 0  # ...less than REDISPATCH_AFTER: not yet


@pytest.mark.django_db
def test_a_worker_clock_behind_the_database_does_not_make_a_run_look_stuck(settings, monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    from sagaflow.saga import scans

    settings.SAGAFLOW = {**settings.SAGAFLOW, "STUCK_AFTER": 300.0}
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() - timedelta(hours=1))
    definition = _two_step()
    saga = _start(definition)
    drive(saga, limit=1)  # recorded by a worker whose clock is an hour behind
    assert not scans.stuck(300.0).filter(pk=saga.pk).exists()
