"""Sagas executed by a real ``celery worker`` process over Redis and PostgreSQL.

The test process plays celery beat: it runs the sweeper while it waits.
"""

import pytest

from sagaflow.models import Saga, SagaState, SagaStep, StepState
from sagaflow.saga import sweeper
from sagaflow.testing import captured_dispatches
from tests.processes import Beat
from tests.sagaapp import sagas
from tests.sagaapp.models import Call, Effect
from tests.waiting import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

TERMINAL = (SagaState.COMPLETED, SagaState.COMPENSATED, SagaState.FAILED)


def settle(saga: Saga, timeout: float = 60) -> Saga:
    def done():
        saga.refresh_from_db()
        return saga.state in TERMINAL

    wait_until(done, timeout=timeout, tick=sweeper.sweep, what=f"saga {saga.id} to end")
    return saga


def calls(saga, kind):
    return list(
        Call.objects.filter(saga_id=saga.id, kind=kind)
        .order_by("id")
        .values_list("step", "attempt")
    )


def test_happy_path(worker):
    saga = settle(sagas.chain.start({"order": 7}))
    assert saga.state == SagaState.COMPLETED
    assert saga.results == {f"s{i}": {"step": f"s{i}", "attempt": 1} for i in range(4)}
    assert calls(saga, "step") == [("s0", 1), ("s1", 1), ("s2", 1), ("s3", 1)]
    assert calls(saga, "compensation") == []
    steps = saga.steps.order_by("index")
    assert all(s.lease_token is None and s.due_at is None for s in steps)
    assert saga.finished_at is not None


@pytest.mark.parametrize("position", [0, 1, 2, 3])
def test_failure_at_each_position_compensates_earlier_steps_in_reverse(worker, position):
    failing = f"s{position}"
    saga = settle(sagas.chain.start({"fail": {failing: "always"}}))
    assert saga.state == SagaState.COMPENSATED
    # The failing step was tried exactly Retry.attempts times, nothing after it ran.
    assert calls(saga, "step") == [(f"s{i}", 1) for i in range(position)] + [
        (failing, a) for a in (1, 2, 3)
    ]
    assert calls(saga, "compensation") == [(f"s{i}", 1) for i in reversed(range(position))]
    failed = SagaStep.objects.get(saga=saga, index=position)
    assert failed.state == StepState.FAILED and "Boom" in failed.error
    assert failing in saga.error


def test_retry_waits_follow_the_backoff_bounds(worker):
    # s1 fails twice then succeeds: the wait after try k is drawn from
    # [ceiling/2, ceiling] with ceiling = 0.2 * 2**(k-1), capped at 0.8.
    saga = settle(sagas.chain.start({"fail": {"s1": 2}}))
    assert saga.state == SagaState.COMPLETED
    s1 = SagaStep.objects.get(saga=saga, name="s1")
    assert [(e["attempt"], e["outcome"]) for e in s1.history] == [
        (1, "failed"),
        (2, "failed"),
        (3, "succeeded"),
    ]
    tries = list(Call.objects.filter(saga_id=saga.id, step="s1").order_by("attempt"))
    for k, entry in enumerate(s1.history[:2], start=1):
        ceiling = sagas.FAST_RETRY.ceiling(k)
        assert ceiling / 2 <= entry["retry_in"] <= ceiling, (k, entry)
        # ...and the next try really waited at least that long (no upper bound:
        # a busy worker may start it later).
        gap = (tries[k].at - tries[k - 1].at).total_seconds()
        assert gap >= entry["retry_in"] - 0.05, (k, gap, entry)
    assert saga.results["s1"] == {"step": "s1", "attempt": 3}


def test_abort_is_not_retried(worker):
    saga = settle(sagas.chain.start({"fail": {"s2": "abort"}}))
    assert saga.state == SagaState.COMPENSATED
    assert calls(saga, "step") == [("s0", 1), ("s1", 1), ("s2", 1)]
    assert "Abort: s2 refused" in SagaStep.objects.get(saga=saga, index=2).error


def test_compensation_failing_transiently_is_retried(worker):
    saga = settle(sagas.chain.start({"fail": {"s2": "abort"}, "comp_fail": {"s1": 2}}))
    assert saga.state == SagaState.COMPENSATED
    assert calls(saga, "compensation") == [("s1", 1), ("s1", 2), ("s1", 3), ("s0", 1)]


def test_compensation_that_never_succeeds_ends_failed(worker):
    saga = settle(sagas.chain.start({"fail": {"s2": "abort"}, "comp_fail": {"s1": "always"}}))
    assert saga.state == SagaState.FAILED
    assert calls(saga, "compensation") == [("s1", 1), ("s1", 2), ("s1", 3)]
    assert "compensation of step 's1' failed after 3 attempt(s)" in saga.error
    # s0 was not compensated: a person decides (the run is visible as failed).
    assert SagaStep.objects.get(saga=saga, index=0).state == StepState.SUCCEEDED


def test_start_with_the_same_key_twice_makes_one_saga(worker):
    first = sagas.chain.start({"n": 1}, key="order-42")
    second = sagas.chain.start({"n": 2}, key="order-42")
    assert first.pk == second.pk
    settle(first)
    assert Saga.objects.filter(name="chain", key="order-42").count() == 1
    assert Call.objects.filter(saga_id=first.id, step="s0").count() == 1


def test_non_json_step_result_compensates_with_a_clear_error(worker):
    saga = settle(sagas.bad_result.start())
    assert saga.state == SagaState.COMPENSATED
    step = SagaStep.objects.get(saga=saga, name="returns_object")
    assert step.attempts == 1  # not retried: retrying cannot make it serialisable
    assert "result of step 'returns_object'['when']: object" in step.error
    assert Effect.objects.filter(saga_id=saga.id, kind="compensation", step="first").count() == 1


def test_celery_beat_runs_the_sweeper_that_resends_a_lost_message(worker):
    """No ticking here: django-celery-beat's schedule (from the settings) does it."""
    with captured_dispatches():  # the first step's message never reaches the broker
        saga = sagas.chain.start({})
    beat = Beat()
    try:

        def done():
            beat.exited_early("beat")
            saga.refresh_from_db()
            return saga.state == SagaState.COMPLETED

        wait_until(done, timeout=60, every=0.2, what=f"beat's sweep\n{beat.output()}")
        log = beat.output()
    finally:
        beat.close()
    assert "Sending due task sagaflow-sweep (sagaflow.sweep)" in log
    assert SagaStep.objects.get(saga=saga, index=0).attempts == 1
