"""A handler that kills its worker is dead-lettered; the rest of its batch still runs."""

import pytest
from django.db import transaction
from django.test import override_settings

import sagaflow
from sagaflow.models import InboxMessage
from sagaflow.outbox import relay
from tests.outboxapp import sagas
from tests.outboxapp.broker import BrokerQueue
from tests.outboxapp.models import Receipt
from tests.processes import Worker
from tests.waiting import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def test_poison_event_is_dead_lettered_after_its_tries_and_its_batch_goes_on(settings):
    queue = BrokerQueue(settings.CELERY_BROKER_URL)
    with override_settings(
        SAGAFLOW={**settings.SAGAFLOW, "OUTBOX_KICK_ON_COMMIT": False, "OUTBOX_QUEUE": queue.name}
    ):
        with transaction.atomic():
            before = sagaflow.publish(sagas.POISON, {"n": 1})
            poisoned = sagaflow.publish(sagas.POISON, {"poison": True})
            after = sagaflow.publish(sagas.POISON, {"n": 2})
        assert relay.drain().published == 3  # one batch, one message
    worker = Worker(
        concurrency=1,
        env={
            "DJANGO_SETTINGS_MODULE": "tests.outboxapp.relay_settings",
            "OUTBOX_TEST_QUEUE": queue.name,
        },
    )
    try:
        inbox = InboxMessage.objects.filter(consumer="outboxapp.poison")
        wait_until(
            lambda: (
                inbox.filter(state="processed").count() == 2 and inbox.filter(state="dead").exists()
            ),
            timeout=90,
            what=f"the poison event to be dead-lettered\n{worker.output()}",
        )
    finally:
        worker.stop()
    dead = inbox.get(state="dead")
    assert dead.message_id == poisoned and dead.attempts == 2
    assert "the worker died while this handler ran" in dead.last_error
    receipts = Receipt.objects.filter(consumer="outboxapp.poison")
    assert sorted(receipts.values_list("event_id", flat=True)) == [before, after]
