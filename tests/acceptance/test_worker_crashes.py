"""Crashes and lost messages with real worker processes: every saga still ends,
and each step's effect happens once.

Each test starts its own workers, so it can kill them.
"""

import os
import signal

import pytest

from sagaflow.models import SagaState, SagaStep, StepState
from sagaflow.saga import sweeper
from sagaflow.testing import captured_dispatches
from tests.processes import Worker
from tests.sagaapp import sagas
from tests.sagaapp.models import AtomicWrite, Call, Effect
from tests.waiting import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

TERMINAL = (SagaState.COMPLETED, SagaState.COMPENSATED, SagaState.FAILED)


def settle(*runs, timeout=60):
    def done():
        for saga in runs:
            saga.refresh_from_db()
        return all(s.state in TERMINAL for s in runs)

    wait_until(done, timeout=timeout, tick=sweeper.sweep, what="sagas to end")


@pytest.fixture
def workers(broker):
    started = []

    def start(**kwargs):
        started.append(Worker(**kwargs))
        return started[-1]

    yield start
    for w in started:
        w.stop()


def first_call(saga, step):
    return wait_until(
        lambda: Call.objects.filter(saga_id=saga.id, step=step).first(),
        what=f"step {step} to start",
    )


def test_worker_child_sigkilled_mid_step(workers):
    workers(concurrency=1)
    saga = sagas.crashable.start({"sleep": {"charge": 60}})
    call = first_call(saga, "charge")
    os.kill(call.pid, signal.SIGKILL)  # the pool child running the step, after its effect

    settle(saga)
    assert saga.state == SagaState.COMPLETED
    charge = SagaStep.objects.get(saga=saga, name="charge")
    assert charge.attempts == 2
    assert "lease of attempt 1 expired" in charge.error or charge.error == ""
    effect = Effect.objects.get(saga_id=saga.id, step="charge")
    assert effect.requests == 2  # called twice with the same key, applied once
    assert Call.objects.filter(saga_id=saga.id, kind="compensation").count() == 0


def test_local_steps_worker_child_sigkilled_mid_run(workers):
    """The task that carries a local run dies in its third step: the step's lease
    (claimed by the second step's record) expires, and the run goes on elsewhere."""
    workers(concurrency=1)
    saga = sagas.local_chain.start({"sleep": {"l2": 60}})
    call = first_call(saga, "l2")
    os.kill(call.pid, signal.SIGKILL)

    settle(saga)
    assert saga.state == SagaState.COMPLETED
    steps = {s.name: s for s in SagaStep.objects.filter(saga=saga)}
    assert {name: s.attempts for name, s in steps.items()} == {"l0": 1, "l1": 1, "l2": 2, "l3": 1}
    assert [h["outcome"] for h in steps["l2"].history] == ["lost", "succeeded"]
    assert Call.objects.filter(saga_id=saga.id, step="l0").count() == 1  # not redone
    assert all(e.requests == 1 for e in Effect.objects.filter(saga_id=saga.id))


def test_whole_worker_killed_mid_step_is_recovered_by_another(workers):
    doomed = workers(concurrency=1)
    saga = sagas.crashable.start({"sleep": {"charge": 60}})
    first_call(saga, "charge")
    doomed.kill()  # main process and children: the message sits unacked in Redis
    workers(concurrency=1)

    settle(saga)
    assert saga.state == SagaState.COMPLETED
    assert Effect.objects.get(saga_id=saga.id, step="charge").requests == 2
    assert SagaStep.objects.get(saga=saga, name="charge").attempts == 2


def test_crash_after_the_side_effect_before_it_is_recorded(workers, tmp_path):
    workers(
        concurrency=1,
        env={
            "SAGAFLOW_FAULTS": "step.after_action=kill",
            "SAGAFLOW_FAULTS_ONCE_DIR": str(tmp_path),
        },
    )
    saga = sagas.chain.start({})
    settle(saga)
    assert (tmp_path / "step.after_action.fired").exists()
    assert saga.state == SagaState.COMPLETED
    assert Call.objects.filter(saga_id=saga.id, step="s0").count() == 2
    assert Effect.objects.get(saga_id=saga.id, step="s0").requests == 2
    assert Effect.objects.filter(saga_id=saga.id, kind="step").count() == 4


def test_atomic_step_crash_before_commit_rolls_its_write_back(workers, tmp_path):
    workers(
        concurrency=1,
        env={
            "SAGAFLOW_FAULTS": "step.after_action=kill",
            "SAGAFLOW_FAULTS_ONCE_DIR": str(tmp_path),
        },
    )
    saga = sagas.atomic_saga.start({})
    settle(saga)
    assert saga.state == SagaState.COMPLETED
    assert SagaStep.objects.get(saga=saga, name="write_locally").attempts == 2
    # Everything the crashed attempt wrote (its Call row included) was rolled back.
    assert Call.objects.filter(saga_id=saga.id, step="write_locally").count() == 1
    assert AtomicWrite.objects.filter(saga_id=saga.id).count() == 1


def test_duplicated_atomic_step_message_writes_once(workers):
    workers(concurrency=2)
    with captured_dispatches() as sent:
        saga = sagas.atomic_saga.start({"hold": 1.0})
    ((step_id, phase),) = sent
    from sagaflow.tasks import execute_step

    execute_step.delay(step_id, phase)
    execute_step.delay(step_id, phase)  # the same message twice, in parallel
    settle(saga)
    execute_step.delay(step_id, phase)  # and once more after the run ended
    wait_until(lambda: not SagaStep.objects.filter(saga=saga, lease_token__isnull=False).exists())
    assert saga.state == SagaState.COMPLETED
    assert AtomicWrite.objects.filter(saga_id=saga.id).count() == 1
    assert SagaStep.objects.get(pk=step_id).attempts == 1


def test_redis_flushed_mid_run(workers, broker):
    workers(concurrency=2)
    runs = [sagas.chain.start({"sleep": {"s1": 0.5}, "n": i}) for i in range(10)]
    first_call(runs[0], "s1")
    # Queued messages, unacked ones and kombu's bindings are all gone.
    broker.flushdb()
    settle(*runs, timeout=120)
    assert {s.state for s in runs} == {SagaState.COMPLETED}
    for saga in runs:
        assert Effect.objects.filter(saga_id=saga.id, kind="step").count() == 4
        assert (
            list(Effect.objects.filter(saga_id=saga.id).values_list("requests", flat=True))
            == [1] * 4
        )


def test_saga_past_its_deadline_is_compensated(workers):
    workers(concurrency=1)
    saga = sagas.deadline_chain.start({"sleep": {"d1": 4.5}})
    settle(saga)
    assert saga.state == SagaState.COMPENSATED
    assert "deadline" in saga.error
    d1 = SagaStep.objects.get(saga=saga, name="d1")
    assert d1.state == StepState.COMPENSATED
    # d1 was running when the deadline passed: it may act, so it is undone too, but
    # only once its attempt settled (here: it recorded), never while it still runs.
    undone = Call.objects.filter(saga_id=saga.id, kind="compensation").order_by("id")
    assert list(undone.values_list("step", flat=True)) == ["d1", "d0"]
    assert not Call.objects.filter(saga_id=saga.id, step="d2").exists()
    assert d1.finished_at is not None and d1.compensated_at > d1.finished_at
    assert [entry["phase"] for entry in d1.history] == ["forward", "compensate"]
    # Its late result is kept, for the compensation to undo by it.
    assert "d1" in saga.results
    # Ended by the deadline path, not by d1 finishing: well before d1's 4.5 s sleep
    # would have let the saga complete (a generous bound, not a speed test).
    assert (saga.finished_at - saga.deadline_at).total_seconds() < 30
