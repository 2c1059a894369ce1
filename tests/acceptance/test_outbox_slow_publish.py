"""A broker slower than the relay's hold limit, against a real relay process.

The relay publishes inside its claim's transaction, bounded by
``idle_in_transaction_session_timeout`` (``OUTBOX_PUBLISH_TIMEOUT``). A publish that
takes longer ends the session: the message reached the broker, the commit cannot
happen. That must count as a failed attempt (so the event is dead-lettered if it
keeps happening), and the relay process must reconnect and keep relaying.
"""

from __future__ import annotations

import pytest
from django.db import transaction
from django.test import override_settings

import sagaflow
from sagaflow.models import OutboxEvent, OutboxState
from tests.outboxapp.broker import BrokerQueue
from tests.processes import Relay, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

SLOW = "outbox.slow"
PARENT = {"OUTBOX_KICK_ON_COMMIT": False}


@pytest.fixture
def queue(settings):
    q = BrokerQueue(settings.CELERY_BROKER_URL)
    yield q
    q.close()


def test_publish_slower_than_the_hold_limit_is_counted_dead_lettered_and_the_relay_survives(
    queue,
):
    relay = Relay(
        env={
            "OUTBOX_TEST_QUEUE": queue.name,
            "OUTBOX_TEST_PUBLISHER": "tests.outboxapp.publishers.SlowPublisher",
            "OUTBOX_TEST_SLOW_TOPIC": SLOW,
            "OUTBOX_TEST_PUBLISH_DELAY": "2.5",
            "OUTBOX_TEST_PUBLISH_TIMEOUT": "1",  # the hold limit: 1 s idle in transaction
            "OUTBOX_TEST_MAX_ATTEMPTS": "3",
        }
    )
    try:
        wait_until(relay.ready, timeout=60, what="the relay to start")
        with override_settings(SAGAFLOW=PARENT), transaction.atomic():
            slow = sagaflow.publish(SLOW, {"n": 1}, key="k")

        def dead() -> bool:
            relay.exited_early("relay")
            return OutboxEvent.objects.get(pk=slow).state == OutboxState.DEAD

        wait_until(dead, timeout=60, every=0.2, what=f"the slow event to die\n{relay.output()}")
        event = OutboxEvent.objects.get(pk=slow)
        assert event.attempts == 3, (event.attempts, event.last_error)
        assert "OUTBOX_PUBLISH_TIMEOUT" in event.last_error, event.last_error
        # Each try reached the broker (a slow broker is not a down one): at most 3
        # copies, not one per relay pass forever.
        copies = sum(1 for batch in queue.read() for e in batch if e["id"] == slow)
        assert 1 <= copies <= 3, copies

        # The same relay process carries on with the next event.
        with override_settings(SAGAFLOW=PARENT), transaction.atomic():
            fast = sagaflow.publish("outbox.fast", {"n": 2}, key="k")

        def published() -> bool:
            relay.exited_early("relay")
            return OutboxEvent.objects.get(pk=fast).state == OutboxState.PUBLISHED

        wait_until(published, timeout=30, what=f"the next event\n{relay.output()}")
        assert relay.process.poll() is None, relay.output()
        assert "did not commit" in relay.output()  # logged, with the reason
    finally:
        relay.close()
