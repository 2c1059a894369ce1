"""Which Celery queue each step message goes to (``step(queue=...)``), on real
PostgreSQL, with the broker replaced by a recorder of ``send_task``'s options.

The acceptance test ``tests/acceptance/test_step_queues.py`` shows the same with real
workers; this one covers every path that sends, local steps and the defaults.
"""

import itertools

import pytest

import sagaflow
from sagaflow import Abort, Retry, sending
from sagaflow.models import SagaStep
from sagaflow.saga import engine, registry, sweeper
from sagaflow.saga.store import now_minus

pytestmark = pytest.mark.django_db

_names = itertools.count()


@pytest.fixture(autouse=True)
def _forget_definitions():
    yield
    for name in list(registry.all_definitions()):
        if name.startswith("queues."):
            registry.unregister(name)


@pytest.fixture
def sent(monkeypatch):
    """Every message sent, as (step id, phase, queue or None)."""
    messages: list[tuple[int, str, str | None]] = []

    def send_task(name, args=(), kwargs=None, **options):
        assert name == sending.EXECUTE_STEP
        messages.append((*args, options.get("queue")))

    monkeypatch.setattr(sending, "send_task", send_task)
    return messages


@pytest.fixture
def start(django_capture_on_commit_callbacks):
    """Start a run and send its first message (after the on-commit callbacks)."""

    def start(definition):
        with django_capture_on_commit_callbacks(execute=True):
            return definition.start({})

    return start


def _define(**options) -> sagaflow.SagaDefinition:
    return sagaflow.define(f"queues.{next(_names)}", **options)


def _run(sent: list, django_capture_on_commit_callbacks) -> None:
    """Deliver the messages sent so far, and those they send, one by one."""
    delivered = 0
    while delivered < len(sent):
        step_id, phase, _ = sent[delivered]
        delivered += 1
        SagaStep.objects.filter(pk=step_id).update(due_at=now_minus(0))
        with django_capture_on_commit_callbacks(execute=True):
            engine.execute(step_id, phase)


def _step(saga, index: int) -> SagaStep:
    return SagaStep.objects.get(saga=saga, index=index)


def test_first_send_retries_and_compensations_go_to_their_queues(
    sent, start, django_capture_on_commit_callbacks
):
    definition = _define()
    tries = {"authorise": 0}

    @definition.step(queue="payments", retry=Retry(attempts=2, backoff=0.01))
    def authorise(ctx):
        tries["authorise"] += 1
        if tries["authorise"] == 1:
            raise RuntimeError("provider hiccup")

    authorise.compensation(lambda ctx: None)  # none of its own: authorise's queue

    @definition.step
    def reserve(ctx):
        return None

    reserve.compensation(queue="refunds")(lambda ctx: None)

    @definition.step(queue="payments")
    def capture(ctx):
        raise Abort("card declined")

    saga = start(definition)
    _run(sent, django_capture_on_commit_callbacks)
    ids = [_step(saga, i).pk for i in range(3)]
    assert sent == [
        (ids[0], "forward", "payments"),  # the first send
        (ids[0], "forward", "payments"),  # the retry (a broker countdown)
        (ids[1], "forward", None),  # no queue: SAGAFLOW["QUEUE"], then Celery's default
        (ids[2], "forward", "payments"),
        (ids[1], "compensate", "refunds"),  # the compensation's own queue
        (ids[0], "compensate", "payments"),  # none of its own: its step's
    ]


def test_the_sweepers_resend_goes_to_the_steps_queue(sent):
    definition = _define()
    definition.step(name="charge", queue="payments")(lambda ctx: None)
    saga = definition.start({})  # its message is never sent: lost
    SagaStep.objects.filter(saga=saga).update(dispatched_at=now_minus(3600))
    assert sweeper.sweep().redispatched == 1
    assert sent == [(_step(saga, 0).pk, "forward", "payments")]


def test_without_a_queue_messages_go_to_the_configured_default(sent, start, settings):
    definition = _define()
    definition.step(name="plain")(lambda ctx: None)
    start(definition)
    assert sent[-1][2] is None
    settings.SAGAFLOW = {**settings.SAGAFLOW, "QUEUE": "sagas"}
    start(definition)
    assert sent[-1][2] == "sagas"


def test_local_steps_continue_only_on_the_same_queue(
    sent, start, django_capture_on_commit_callbacks
):
    definition = _define(local_steps=True)
    definition.step(name="a")(lambda ctx: None)
    definition.step(name="b")(lambda ctx: None)  # the same queue: runs in a's task
    definition.step(name="c", queue="payments")(lambda ctx: None)  # sent to its workers
    definition.step(name="d", queue="payments")(lambda ctx: None)  # runs in c's task
    saga = start(definition)
    _run(sent, django_capture_on_commit_callbacks)
    saga.refresh_from_db()
    assert saga.state == "completed"
    assert sent == [
        (_step(saga, 0).pk, "forward", None),
        (_step(saga, 2).pk, "forward", "payments"),
    ]


def test_a_retry_delivered_early_is_sent_again_to_its_queue(
    sent, start, django_capture_on_commit_callbacks
):
    definition = _define()
    tries = {"n": 0}

    def charge(ctx):
        tries["n"] += 1
        if tries["n"] == 1:
            raise RuntimeError("provider hiccup")

    definition.step(name="charge", queue="payments", retry=Retry(attempts=3, backoff=5))(charge)
    saga = start(definition)
    step_id = _step(saga, 0).pk
    with django_capture_on_commit_callbacks(execute=True):
        engine.execute(step_id, "forward")  # fails; the retry waits ~5 s on a countdown
    with django_capture_on_commit_callbacks(execute=True):
        engine.execute(step_id, "forward")  # delivered before its countdown ran out
    assert sent == [(step_id, "forward", "payments")] * 3 and tries["n"] == 1
