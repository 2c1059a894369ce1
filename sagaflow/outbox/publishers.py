"""Where the relay sends a batch: the ``Publisher`` protocol and the Celery publisher.

``SAGAFLOW["OUTBOX_PUBLISHER"]`` names the class (default ``CeleryPublisher``); any
class with ``publish(events) -> None`` that sends the batch in one round trip and
raises if it may not have arrived will do (Kafka, SNS). The relay (``relay.py``)
owns when to publish and what a failure means; this module only sends.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Protocol

from django.utils.module_loading import import_string

from .. import sending
from ..conf import conf
from ..exceptions import ConfigurationError


class Publisher(Protocol):
    def publish(self, events: Sequence[dict[str, Any]]) -> None:
        """Send the batch in one round trip; raise if it may not have arrived."""


class CeleryPublisher:
    """Sends a batch as one ``sagaflow.deliver_events`` task message (one ``LPUSH`` on
    Redis), by task name: the outbox sits below the task layer."""

    def publish(self, events: Sequence[dict[str, Any]]) -> None:
        sending.send_task(
            sending.DELIVER_EVENTS,
            (list(events),),
            queue=conf.OUTBOX_QUEUE or conf.QUEUE or None,
            # Celery otherwise builds a repr of the whole batch for the message
            # headers (a third of the publish's CPU); the ids say enough.
            argsrepr=argsrepr(events),
            kwargsrepr="{}",
            # One attempt: a failure is retried by the relay through available_at,
            # with the rows unlocked meanwhile; Celery's retry would hold them.
            **sending.ONE_ATTEMPT,
        )


def argsrepr(events: Sequence[dict[str, Any]]) -> str:
    """The short form of a batch for Celery's message headers and logs."""
    if not events:
        return "([],)"
    return f"([{len(events)} events, ids {events[0].get('id')}..{events[-1].get('id')}],)"


@lru_cache(maxsize=8)
def _publisher_class(path: str) -> type:
    try:
        return import_string(path)
    except ImportError as exc:
        raise ConfigurationError(
            f"SAGAFLOW['OUTBOX_PUBLISHER'] = {path!r} cannot be imported ({exc}); "
            f"use a dotted path to a class with publish(events), e.g. "
            f"'sagaflow.outbox.publishers.CeleryPublisher'."
        ) from exc


def get_publisher() -> Publisher:
    """A new instance of the configured publisher class."""
    return _publisher_class(conf.OUTBOX_PUBLISHER)()
