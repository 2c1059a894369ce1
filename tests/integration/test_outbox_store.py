"""The outbox on real PostgreSQL, in one process: publish, claim, retry, order, inbox."""

from __future__ import annotations

import json

import pytest
from django.db import transaction
from django.test import override_settings

import sagaflow
from sagaflow.context import Execution, executing
from sagaflow.models import InboxMessage, InboxState, OutboxEvent, OutboxState
from sagaflow.ops import janitor
from sagaflow.outbox import consumers, relay
from sagaflow.outbox import inbox as inbox_store
from sagaflow.outbox import store as outbox_store
from sagaflow.testing import armed_fault
from tests.outboxapp import sagas
from tests.outboxapp.broker import BrokerQueue
from tests.outboxapp.models import Receipt

OUTBOX_SETTINGS = {
    "OUTBOX_KICK_ON_COMMIT": False,
    "OUTBOX_RETRY_BACKOFF": 0,
    "OUTBOX_RETRY_MAX_BACKOFF": 0,
    "OUTBOX_MAX_ATTEMPTS": 3,
}


class Capture:
    """A publisher that keeps batches in memory, failing the first ``fail`` calls."""

    def __init__(self, fail: int = 0) -> None:
        self.batches: list[list[dict]] = []
        self.fail = fail

    def publish(self, events):
        if self.fail:
            self.fail -= 1
            raise ConnectionError("broker down")
        self.batches.append([json.loads(json.dumps(e)) for e in events])

    @property
    def ids(self) -> list[int]:
        return [e["id"] for batch in self.batches for e in batch]


@pytest.fixture
def broker_queue(settings):
    queue = BrokerQueue(settings.CELERY_BROKER_URL)
    yield queue
    queue.close()


@pytest.fixture(autouse=True)
def _settings():
    with override_settings(SAGAFLOW=OUTBOX_SETTINGS):
        yield


def states() -> dict[int, str]:
    return dict(OutboxEvent.objects.values_list("id", "state"))


# --- publish -----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_publish_outside_a_transaction_is_refused_and_writes_nothing():
    with pytest.raises(sagaflow.NotInTransactionError, match=r"transaction\.atomic\(\)"):
        sagaflow.publish("order.placed", {"id": 1})
    assert OutboxEvent.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_rolled_back_transaction_publishes_nothing():
    with pytest.raises(RuntimeError), transaction.atomic():
        sagaflow.publish("order.placed", {"id": 1}, key="o-1")
        raise RuntimeError("business write failed")
    with transaction.atomic():
        kept = sagaflow.publish("order.placed", {"id": 2}, key="o-2")
    capture = Capture()
    relay.drain(publisher=capture)
    assert capture.ids == [kept]
    assert states() == {kept: OutboxState.PUBLISHED}


@pytest.mark.django_db
def test_publish_refuses_non_json_and_bad_names_writing_nothing():
    with pytest.raises(sagaflow.NotSerializableError, match=r"payload\['at'\]"):
        sagaflow.publish("t", {"at": object()})
    with pytest.raises(sagaflow.NotSerializableError, match="headers"):
        sagaflow.publish("t", {}, headers={"x": {1, 2}})
    with pytest.raises(sagaflow.InvalidInputError, match="topic"):
        sagaflow.publish("", {})
    with pytest.raises(sagaflow.InvalidInputError, match="key"):
        sagaflow.publish("t", {}, key="k" * 201)
    assert OutboxEvent.objects.count() == 0


@pytest.mark.django_db
def test_headers_carry_correlation_and_causation():
    plain = sagaflow.publish("t", {"n": 1}, headers={"tenant": "acme"})
    execution = Execution("saga-1", "charge", 1, "corr-42", "saga-1:charge:forward")
    with executing(execution):
        in_step = sagaflow.publish("t", {"n": 2})
    incoming = consumers.Event(7, "t", None, {}, {"correlation_id": "corr-7"})
    with consumers._handling(incoming):
        in_handler = sagaflow.publish("t", {"n": 3}, headers={"causation_id": "mine"})
    headers = dict(OutboxEvent.objects.values_list("id", "headers"))
    assert headers[plain]["tenant"] == "acme" and len(headers[plain]["correlation_id"]) == 32
    assert headers[plain]["causation_id"] is None
    assert headers[in_step] == {
        "correlation_id": "corr-42",
        "causation_id": "step:saga-1:charge:forward",
    }
    assert headers[in_handler] == {"correlation_id": "corr-7", "causation_id": "mine"}


# --- the relay ------------------------------------------------------------------------


@pytest.mark.django_db
def test_drain_publishes_everything_in_batches_until_a_short_one():
    ids = [sagaflow.publish("t", {"n": i}, key=f"k{i % 3}") for i in range(25)]
    capture = Capture()
    report = relay.drain(batch_size=10, publisher=capture)
    assert report.as_dict() == {"batches": 3, "published": 25, "failed": 0, "dead": 0}
    assert [len(b) for b in capture.batches] == [10, 10, 5]
    assert sorted(capture.ids) == ids
    for key in ("k0", "k1", "k2"):  # per key in order; keys are not ordered among them
        of_key = [e["id"] for b in capture.batches for e in b if e["key"] == key]
        assert of_key == sorted(of_key)
    assert set(states().values()) == {OutboxState.PUBLISHED}
    assert relay.drain(publisher=capture).published == 0


@pytest.mark.django_db
def test_failed_publish_backs_off_then_dies_and_is_requeued():
    (event_id,) = [sagaflow.publish("t", {})]
    capture = Capture(fail=3)
    for attempt in (1, 2):
        assert relay.drain(publisher=capture).failed == 1
        event = OutboxEvent.objects.get()
        assert (event.state, event.attempts) == (OutboxState.PENDING, attempt)
        assert "ConnectionError: broker down" in event.last_error
    assert relay.drain(publisher=capture).dead == 1
    assert states() == {event_id: OutboxState.DEAD}
    assert relay.drain(publisher=capture).published == 0  # dead stays dead
    assert outbox_store.backlog()["dead"] == 1
    assert outbox_store.requeue_dead() == 1
    assert relay.drain(publisher=capture).published == 1
    assert capture.ids == [event_id]


@pytest.mark.django_db
def test_retry_waits_in_the_database_until_available_at():
    sagaflow.publish("t", {})
    with override_settings(
        SAGAFLOW={**OUTBOX_SETTINGS, "OUTBOX_RETRY_BACKOFF": 60, "OUTBOX_RETRY_MAX_BACKOFF": 60}
    ):
        assert relay.drain(publisher=Capture(fail=1)).failed == 1
    capture = Capture()
    assert relay.drain(publisher=capture).published == 0
    assert capture.ids == []
    OutboxEvent.objects.update(available_at=OutboxEvent.objects.get().created_at)
    assert relay.drain(publisher=capture).published == 1


@pytest.mark.django_db
def test_a_key_waits_behind_its_retrying_head_other_keys_do_not():
    first = sagaflow.publish("t", {}, key="a")
    with override_settings(
        SAGAFLOW={**OUTBOX_SETTINGS, "OUTBOX_RETRY_BACKOFF": 60, "OUTBOX_RETRY_MAX_BACKOFF": 60}
    ):
        assert relay.drain(publisher=Capture(fail=1)).failed == 1
    second = sagaflow.publish("t", {}, key="a")
    other = sagaflow.publish("t", {}, key="b")
    unkeyed = sagaflow.publish("t", {})
    capture = Capture()
    relay.drain(publisher=capture)
    assert capture.ids == [other, unkeyed]
    # The one behind the head waits with it: it was given the head's retry time.
    head = OutboxEvent.objects.get(pk=first)
    assert OutboxEvent.objects.get(pk=second).available_at == head.available_at
    # The head's retry comes due: it goes first, then the one behind it.
    OutboxEvent.objects.filter(key="a").update(
        available_at=OutboxEvent.objects.get(pk=other).created_at
    )
    relay.drain(publisher=capture)
    assert capture.ids == [other, unkeyed, first, second]


@pytest.mark.django_db
def test_fault_after_publish_rolls_the_batch_back_to_pending():
    event_id = sagaflow.publish("t", {})
    capture = Capture()
    with armed_fault("relay.after_publish"), pytest.raises(sagaflow.SagaflowError):
        relay.drain(publisher=capture)
    assert states() == {event_id: OutboxState.PENDING}
    relay.drain(publisher=capture)
    assert capture.ids == [event_id, event_id]  # published again, never lost


@pytest.mark.django_db(transaction=True)
def test_celery_publisher_sends_one_message_per_batch(broker_queue):
    with transaction.atomic():
        ids = [sagaflow.publish("t", {"n": i}) for i in range(7)]
    with override_settings(SAGAFLOW={**OUTBOX_SETTINGS, "OUTBOX_QUEUE": broker_queue.name}):
        relay.drain(batch_size=5)
    messages = broker_queue.read()
    assert [len(m) for m in messages] == [5, 2]
    assert [e["id"] for m in messages for e in m] == ids
    assert messages[0][1]["payload"] == {"n": 1}
    assert set(messages[0][1]["headers"]) == {"correlation_id", "causation_id"}
    # Sent by task name, with the short argsrepr (not a repr of the whole batch).
    raw = [json.loads(m) for m in reversed(broker_queue.client.lrange(broker_queue.name, 0, -1))]
    assert [m["headers"]["task"] for m in raw] == ["sagaflow.deliver_events"] * 2
    assert raw[0]["headers"]["argsrepr"] == f"([5 events, ids {ids[0]}..{ids[4]}],)"
    assert raw[0]["headers"]["kwargsrepr"] == "{}"


# --- consumers -----------------------------------------------------------------------


def _message(event_id: int, topic: str = sagas.TOPIC, payload=None, key="k") -> dict:
    return {"id": event_id, "topic": topic, "key": key, "payload": payload or {}, "headers": {}}


@pytest.mark.django_db
def test_each_event_applied_once_however_often_delivered():
    batch = [_message(i) for i in range(1, 6)]
    first = consumers.deliver(batch, only="outboxapp.record")
    again = consumers.deliver(batch + batch, only="outboxapp.record")
    assert first.applied == 5 and again.applied == 0 and again.duplicates == 10
    assert Receipt.objects.filter(consumer="outboxapp.record").count() == 5
    assert InboxMessage.objects.filter(state=InboxState.PROCESSED).count() == 5


@pytest.mark.django_db
def test_failing_handler_rolls_back_retries_then_dead_letters():
    message = _message(99, topic=sagas.FLAKY, payload={"fail": True})
    outcomes = [consumers.deliver([message], retry=True).as_dict() for _ in range(4)]
    assert [o["failed"] for o in outcomes] == [1, 1, 0, 0]
    assert [o["dead"] for o in outcomes] == [0, 0, 1, 0]
    assert outcomes[3]["duplicates"] == 1
    row = InboxMessage.objects.get(consumer="outboxapp.flaky")
    assert (row.state, row.attempts) == (InboxState.DEAD, 3)
    assert "refuses event 99" in row.last_error
    assert not Receipt.objects.filter(consumer="outboxapp.flaky").exists()  # rolled back
    assert inbox_store.requeue_dead_inbox() == 1
    ok = _message(99, topic=sagas.FLAKY, payload={"fail": False})
    assert consumers.deliver([ok], retry=True).applied == 1
    row.refresh_from_db()
    assert (row.state, row.attempts) == (InboxState.PROCESSED, 1)
    assert Receipt.objects.filter(consumer="outboxapp.flaky").count() == 1


@pytest.mark.django_db
def test_failed_handler_waits_for_its_retry_time_unless_it_is_the_retry():
    slow = {**OUTBOX_SETTINGS}
    message = _message(5, topic=sagas.FLAKY, payload={"fail": True})
    with override_settings(SAGAFLOW=slow):
        consumers.deliver([message])
        InboxMessage.objects.update(
            available_at=InboxMessage.objects.get().created_at.replace(year=2999)
        )
        assert consumers.deliver([message]).deferred == 1
        assert inbox_store.take_due_retries(10, 60) == []
        InboxMessage.objects.update(available_at=InboxMessage.objects.get().created_at)
        assert inbox_store.take_due_retries(10, 60) == [("outboxapp.flaky", 5)]
        assert inbox_store.take_due_retries(10, 60) == []  # stamped as sent


@pytest.mark.django_db
def test_handler_publishing_chains_correlation():
    consumers.deliver(
        [{**_message(3, payload={"chain": True}), "headers": {"correlation_id": "c-1"}}]
    )
    follow_up = OutboxEvent.objects.get(topic=sagas.CHAINED)
    assert follow_up.headers == {"correlation_id": "c-1", "causation_id": "event:3"}
    assert follow_up.payload == {"after": 3}


# --- retention ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_janitor_deletes_only_old_published_events_and_old_inbox_rows():
    old, recent, pending = (sagaflow.publish("t", {}) for _ in range(3))
    relay.relay_batch(2, Capture())  # old and recent published, pending not
    OutboxEvent.objects.filter(pk=old).update(
        published_at=OutboxEvent.objects.get(pk=old).created_at.replace(year=2000)
    )
    consumers.deliver([_message(1), _message(2)], only="outboxapp.record")
    InboxMessage.objects.filter(message_id=1).update(
        updated_at=OutboxEvent.objects.get(pk=old).created_at.replace(year=2000)
    )
    with override_settings(
        SAGAFLOW={**OUTBOX_SETTINGS, "OUTBOX_RETENTION": 3600, "INBOX_RETENTION": 3600}
    ):
        report = janitor.clean()
    assert report["outbox_events"] == 1 and report["inbox_messages"] == 1
    assert set(OutboxEvent.objects.values_list("pk", flat=True)) == {recent, pending}
    assert list(InboxMessage.objects.values_list("message_id", flat=True)) == [2]
