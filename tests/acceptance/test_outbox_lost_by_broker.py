"""Events the broker lost after the relay published them are delivered anyway."""

import pytest
from django.db import transaction
from django.test import override_settings

import sagaflow
from sagaflow.models import InboxMessage
from sagaflow.outbox import consumers, relay
from tests.outboxapp import sagas
from tests.outboxapp.broker import BrokerQueue
from tests.outboxapp.models import Receipt
from tests.processes import Worker
from tests.waiting import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def test_published_events_lost_in_a_redis_flush_are_sent_again(settings):
    queue = BrokerQueue(settings.CELERY_BROKER_URL)
    quick = {
        "OUTBOX_KICK_ON_COMMIT": False,
        "OUTBOX_QUEUE": queue.name,
        "CONSUMER_REDELIVER_AFTER": 1.0,
    }
    with override_settings(SAGAFLOW={**settings.SAGAFLOW, **quick}):
        with transaction.atomic():
            ids = [sagaflow.publish(sagas.TOPIC, {"n": i}) for i in range(40)]
        assert relay.drain().published == 40
        assert queue.length() > 0
        queue.client.delete(queue.name)  # the broker loses everything it held
        worker = Worker(
            concurrency=1,
            env={
                "DJANGO_SETTINGS_MODULE": "tests.outboxapp.relay_settings",
                "OUTBOX_TEST_QUEUE": queue.name,
            },
        )
        try:
            received = Receipt.objects.filter(consumer="outboxapp.record")
            inbox = InboxMessage.objects.filter(message_id__in=ids)  # two consumers of TOPIC
            wait_until(
                lambda: inbox.count() == 80,
                tick=consumers.redeliver_unconsumed,
                every=0.3,
                timeout=60,
                what=f"the lost events to be sent again\n{worker.output()}",
            )
            # Nothing is sent again once every consumer has its inbox row.
            assert consumers.redeliver_unconsumed() == 0
        finally:
            worker.stop()
    assert sorted(received.values_list("event_id", flat=True)) == sorted(ids)
    assert received.count() == 40  # each applied once
