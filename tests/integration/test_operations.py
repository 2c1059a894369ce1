"""Operator actions (retry, compensate) on real PostgreSQL."""

import threading

import pytest
from django.db import connection

from sagaflow.exceptions import ActionRefused
from sagaflow.models import Saga, SagaState, SagaStep
from sagaflow.ops import operations
from sagaflow.testing import armed_fault, captured_dispatches, drive, run_inline
from tests.sagaapp import sagas
from tests.sagaapp.models import Call

pytestmark = pytest.mark.django_db


def failed_in_compensation() -> Saga:
    saga = run_inline(sagas.chain, {"fail": {"s2": "abort"}, "comp_fail": {"s1": "always"}})
    assert saga.state == SagaState.FAILED
    return saga


def test_retry_of_a_failed_compensation_gives_it_new_tries(django_capture_on_commit_callbacks):
    saga = failed_in_compensation()
    Saga.objects.filter(pk=saga.pk).update(data={"fail": {"s2": "abort"}})  # downstream fixed
    with captured_dispatches() as sent, django_capture_on_commit_callbacks(execute=True):
        assert operations.retry(saga.pk) == "compensation of step 's1' retried"
    s1 = SagaStep.objects.get(saga=saga, name="s1")
    assert sent == [(s1.pk, "compensate")]
    saga = drive(saga)
    assert saga.state == SagaState.COMPENSATED
    comps = Call.objects.filter(saga_id=saga.id, kind="compensation").order_by("id")
    assert list(comps.values_list("step", "attempt")) == [
        ("s1", 1),
        ("s1", 2),
        ("s1", 3),
        ("s1", 1),
        ("s0", 1),
    ]


@pytest.mark.parametrize("data", [{}, {"fail": {"s0": "abort"}}])
def test_retry_of_a_finished_run_is_refused(data):
    saga = run_inline(sagas.chain, data)
    with pytest.raises(ActionRefused, match=f"Saga {saga.id} is {saga.state}: a finished run"):
        operations.retry(saga.pk)


def test_retry_of_a_running_step_with_a_live_lease_is_refused():
    with captured_dispatches():
        saga = sagas.chain.start({})
    with armed_fault("step.after_claim"), pytest.raises(Exception, match="fault point"):
        drive(saga)
    with pytest.raises(ActionRefused, match="step 's0' is running now"):
        operations.retry(saga.pk)


def test_retry_of_a_stalled_step_counts_the_lost_attempt_and_resumes():
    with captured_dispatches():
        saga = sagas.chain.start({})
    with armed_fault("step.after_claim"), pytest.raises(Exception, match="fault point"):
        drive(saga)
    SagaStep.objects.filter(saga=saga, index=0).update(lease_expires_at="2000-01-01T00:00Z")
    with captured_dispatches():
        assert operations.retry(saga.pk) == "step 's0' sent now"
    saga = drive(saga)
    assert saga.state == SagaState.COMPLETED
    s0 = SagaStep.objects.get(saga=saga, index=0)
    assert s0.attempts == 2 and saga.results["s0"]["attempt"] == 2


def test_retry_sends_a_waiting_step_once_even_if_clicked_twice(
    django_capture_on_commit_callbacks,
):
    with captured_dispatches():
        saga = sagas.chain.start({})
    # s0 waits out a long backoff: retry sends it now; a second click is refused.
    SagaStep.objects.filter(saga=saga, index=0).update(due_at="2999-01-01T00:00Z")
    with captured_dispatches() as sent, django_capture_on_commit_callbacks(execute=True):
        operations.retry(saga.pk)
        with pytest.raises(ActionRefused, match="was sent to a worker 0 s ago"):
            operations.retry(saga.pk)
    assert len(sent) == 1


def test_compensate_now_abandons_a_running_saga():
    with captured_dispatches():
        saga = sagas.chain.start({})
    saga = drive(saga, limit=2)  # s0 and s1 done, s2 waiting
    assert saga.state == SagaState.RUNNING
    with captured_dispatches():
        operations.compensate(saga.pk)
    saga = drive(saga)
    assert saga.state == SagaState.COMPENSATED
    assert saga.error == "compensation requested by an operator"
    undone = Call.objects.filter(saga_id=saga.id, kind="compensation").order_by("id")
    assert list(undone.values_list("step", flat=True)) == ["s1", "s0"]
    assert not Call.objects.filter(saga_id=saga.id, step="s2").exists()
    with pytest.raises(ActionRefused, match="only a running saga can be compensated"):
        operations.compensate(saga.pk)


def test_unknown_saga_id_is_refused():
    with pytest.raises(ActionRefused, match="no saga with id 00000000"):
        operations.retry("00000000-0000-0000-0000-000000000000")


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_retries_resume_the_run_once():
    saga = failed_in_compensation()
    Saga.objects.filter(pk=saga.pk).update(data={"fail": {"s2": "abort"}})
    barrier = threading.Barrier(2)
    outcomes = []

    def click():
        try:
            barrier.wait(timeout=10)
            try:
                outcomes.append(("done", operations.retry(saga.pk)))
            except ActionRefused as refused:
                outcomes.append(("refused", str(refused)))
        finally:
            connection.close()

    with captured_dispatches() as sent:  # one interceptor for both threads
        threads = [threading.Thread(target=click) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    assert sorted(o[0] for o in outcomes) == ["done", "refused"], outcomes
    assert len(sent) == 1
    assert drive(saga).state == SagaState.COMPENSATED
    assert Call.objects.filter(saga_id=saga.id, kind="compensation", step="s1").count() == 4
