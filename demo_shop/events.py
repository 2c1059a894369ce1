"""``emit``: publish a checkout event in the current transaction.

On PostgreSQL this is ``sagaflow.publish`` (the transactional outbox, the relay
and ``@sagaflow.consumer`` inboxes). sagaflow's outbox is PostgreSQL-only, so on
the SQLite of ``make demo`` without services the same handlers are fed by a small
stand-in: the event is a ``LocalEvent`` row written in the same transaction, and
``deliver_local`` (a task kicked on commit) hands it to the registered consumers
one at a time, marking it delivered. It is not a second outbox: one process, one
delivering thread, just enough to run the same choreography without services.

The kick sends that task by its name (``DELIVER_LOCAL_EVENTS``): ``tasks.py`` is
the top layer and imports this module, so this module never imports it back.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import current_app
from django.db import connection, transaction
from django.utils import timezone

import sagaflow
from sagaflow.outbox.consumers import Event, consumers_of

from .models import LocalEvent

logger = logging.getLogger("demo_shop.events")

#: The Celery name of ``tasks.deliver_local_events`` (the wire protocol: never renamed).
DELIVER_LOCAL_EVENTS = "demo_shop.deliver_local_events"


def uses_outbox() -> bool:
    return connection.vendor == "postgresql"


def emit(topic: str, order_id: int, **payload: Any) -> int:
    """Record ``topic`` for order ``order_id``; call it inside ``transaction.atomic()``."""
    body = {"order_id": order_id, **payload}
    key = f"order-{order_id}"
    if uses_outbox():
        return sagaflow.publish(topic, body, key=key)
    if not connection.in_atomic_block:
        raise sagaflow.NotInTransactionError(f"emit({topic!r}) must run in transaction.atomic()")
    event = LocalEvent.objects.create(topic=topic, key=key, payload=body)
    transaction.on_commit(_kick, robust=True)
    return event.pk


def _kick() -> None:
    current_app.send_task(DELIVER_LOCAL_EVENTS)


_delivering = threading.Lock()


def deliver_local(limit: int = 200) -> int:
    """Run the consumers of undelivered ``LocalEvent`` rows (SQLite stand-in only)."""
    if not _delivering.acquire(blocking=False):
        return 0  # another thread is delivering; it takes what this one would have
    try:
        done = 0
        for event in LocalEvent.objects.filter(delivered_at=None).order_by("id")[:limit]:
            message = Event(
                id=event.pk,
                topic=event.topic,
                key=event.key,
                payload=event.payload,
                headers={"correlation_id": event.key},
            )
            for entry in consumers_of(event.topic):
                try:
                    entry.handler(message)
                except Exception:
                    logger.exception(
                        "consumer %s failed on event %s; will retry", entry.name, event.pk
                    )
                    return done
            LocalEvent.objects.filter(pk=event.pk).update(delivered_at=timezone.now())
            done += 1
        return done
    finally:
        _delivering.release()
