"""Per-step queues with real workers: a step's messages reach only the workers of its
queue, on the first send, on retries and on the sweeper's resends.

Two workers: one consumes Celery's default queue only, the other only the payments
and refunds queues. Every call records its process id; a worker's children share its
process group, so each call is traced to the worker that ran it. A message sent to
the wrong queue is run by the wrong worker (or by none), and the test fails.
"""

import os

import pytest

from sagaflow.models import Saga, SagaState
from sagaflow.saga import sweeper
from sagaflow.saga.store import now_minus
from sagaflow.testing import captured_dispatches
from tests.processes import Worker
from tests.sagaapp import sagas
from tests.sagaapp.models import Call
from tests.waiting import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


@pytest.fixture(scope="module")
def workers(django_db_setup, django_db_blocker, broker):
    with django_db_blocker.unblock():
        default = Worker(concurrency=1)
        try:
            payments = Worker(concurrency=1, queues=(sagas.PAYMENTS_QUEUE, sagas.REFUNDS_QUEUE))
        except BaseException:
            default.stop()
            raise
    yield {default.pid: "default", payments.pid: "payments"}
    payments.stop()
    default.stop()


def settle(saga: Saga, timeout: float = 60) -> Saga:
    def done():
        saga.refresh_from_db()
        return saga.state in (SagaState.COMPLETED, SagaState.COMPENSATED, SagaState.FAILED)

    wait_until(done, timeout=timeout, tick=sweeper.sweep, what=f"saga {saga.id} to end")
    return saga


def ran_on(saga: Saga, workers: dict[int, str]) -> list[tuple[str, str, int, str]]:
    """(kind, step, attempt, worker) of every call of ``saga``, in order."""
    return [
        (call.kind, call.step, call.attempt, workers.get(os.getpgid(call.pid), "?"))
        for call in Call.objects.filter(saga_id=saga.id).order_by("id")
    ]


def test_each_step_and_compensation_runs_on_the_workers_of_its_queue(workers):
    # authorise fails once (its retry must go to the payments queue too), capture
    # refuses: release (own queue: refunds) and void_authorisation (none of its own:
    # authorise's) undo what was done.
    saga = settle(sagas.queued.start({"fail": {"authorise": 1, "capture": "abort"}}))
    assert saga.state == SagaState.COMPENSATED
    assert ran_on(saga, workers) == [
        ("step", "authorise", 1, "payments"),  # the first send: start's message
        ("step", "authorise", 2, "payments"),  # the retry, on a broker countdown
        ("step", "reserve", 1, "default"),
        ("step", "capture", 1, "payments"),
        ("compensation", "reserve", 1, "payments"),  # release, on the refunds queue
        ("compensation", "authorise", 1, "payments"),
    ]


def test_the_sweeper_resends_a_lost_message_to_its_steps_queue(workers):
    with captured_dispatches():  # the first message never reaches the broker
        saga = sagas.queued.start({})
    saga.steps.filter(index=0).update(dispatched_at=now_minus(3600))
    saga = settle(saga)  # this process sweeps: its resend goes through Redis
    assert saga.state == SagaState.COMPLETED
    assert ran_on(saga, workers) == [
        ("step", "authorise", 1, "payments"),
        ("step", "reserve", 1, "default"),
        ("step", "capture", 1, "payments"),
    ]
