"""Consumers the outbox tests deliver to (autodiscovered like any app's sagas.py)."""

import os
import signal

import sagaflow
from sagaflow import Retry
from sagaflow.outbox.consumers import Event

from .models import Receipt

TOPIC = "outbox.test"
FLAKY = "outbox.flaky"
CHAINED = "outbox.chained"


@sagaflow.consumer(TOPIC, name="outboxapp.record")
def record(event: Event) -> None:
    Receipt.objects.create(
        consumer="outboxapp.record", event_id=event.id, key=event.key, headers=event.headers
    )


@sagaflow.consumer(FLAKY, name="outboxapp.flaky", retry=Retry(attempts=3, backoff=0, max_backoff=0))
def flaky(event: Event) -> None:
    """Writes, then fails while ``payload["fail"]`` says so: the write must roll back."""
    Receipt.objects.create(consumer="outboxapp.flaky", event_id=event.id, key=event.key)
    if event.payload.get("fail"):
        raise RuntimeError(f"flaky handler refuses event {event.id}")


@sagaflow.consumer(TOPIC, name="outboxapp.chain")
def chain(event: Event) -> None:
    """Publishes a follow-up event from inside a handler (correlation chaining)."""
    if event.payload and event.payload.get("chain"):
        sagaflow.publish(CHAINED, {"after": event.id}, key=event.key)


POISON = "outbox.poison"


@sagaflow.consumer(
    POISON, name="outboxapp.poison", retry=Retry(attempts=2, backoff=0, max_backoff=0)
)
def poison(event: Event) -> None:
    """Kills its own worker process on a poisoned event, like a segfault or the OOM killer."""
    if event.payload.get("poison"):
        os.kill(os.getpid(), signal.SIGKILL)
    Receipt.objects.create(consumer="outboxapp.poison", event_id=event.id, key=event.key)
