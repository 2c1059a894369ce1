"""``sagaflow.publish``: write an event in the transaction of the change it announces.

The event is a row (``OutboxEvent``) inserted on the caller's connection, so it
commits or rolls back with the business write (DESIGN §1.2): an event from a
rolled-back transaction is never published, and a committed one is never lost,
whatever happens to the broker afterwards. Publishing to the broker is the
relay's job (``relay.py``); on commit, ``publish`` only wakes it:

- ``NOTIFY sagaflow_outbox`` (PostgreSQL, delivered at commit) wakes a running
  ``manage.py sagaflow_relay``;
- a ``sagaflow.relay_outbox`` task is sent to Celery after commit
  (``OUTBOX_KICK_ON_COMMIT``); if the broker is down that send fails quickly and
  beat's periodic relay run picks the events up later.

So commit-to-publish latency is one wake-up, not the beat interval.

Headers: ``correlation_id`` ties everything one business operation caused
together (a saga's correlation id inside a step, the incoming event's inside a
consumer, a fresh one otherwise); ``causation_id`` names what directly caused
this event (``step:<idempotency key>`` or ``event:<id>``). Headers the caller
passes win over both.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from django.db import connection, transaction

from .. import sending
from ..conf import conf
from ..context import current_execution
from ..exceptions import InvalidInputError, NotInTransactionError
from ..jsonvalue import ensure_json
from . import store
from .consumers import current_event

logger = logging.getLogger("sagaflow.outbox")

_NAME_LIMIT = 200


def publish(
    topic: str,
    payload: Any,
    key: str | None = None,
    headers: Mapping[str, Any] | None = None,
) -> int:
    """Record an event to publish once the current transaction commits; returns its id.

    Must be called inside ``transaction.atomic()``. ``payload`` and ``headers``
    must be JSON (dict, list, str, int, float, bool, None). Events with the same
    ``key`` are published in commit order; ``key=None`` means no order.
    """
    if not isinstance(topic, str) or not 0 < len(topic) <= _NAME_LIMIT:
        raise InvalidInputError(f"topic={topic!r} must be a str of 1 to {_NAME_LIMIT} characters.")
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= _NAME_LIMIT):
        raise InvalidInputError(
            f"key={key!r} must be None or a str of 1 to {_NAME_LIMIT} characters "
            f"(hash longer natural keys first)."
        )
    if headers is not None and not isinstance(headers, Mapping):
        raise InvalidInputError(
            f"headers must be a dict of str to JSON values or None, got {type(headers).__name__}."
        )
    payload = ensure_json(payload, "payload")
    all_headers = _headers(ensure_json(dict(headers or {}), "headers"))
    if not connection.in_atomic_block:
        raise NotInTransactionError(
            f"sagaflow.publish({topic!r}, ...) was called outside a transaction, so the "
            f"event could not commit or roll back with your change. Call it inside "
            f"`with transaction.atomic():` next to the write it announces."
        )
    event_id = store.insert_event(
        topic=topic,
        key=key,
        payload=payload,
        headers=all_headers,
        serialize_key=bool(conf.OUTBOX_SERIALIZE_KEYS) and connection.vendor == "postgresql",
        notify=bool(conf.OUTBOX_NOTIFY),
    )
    if conf.OUTBOX_KICK_ON_COMMIT:
        _kick_on_commit()
    return event_id


def _headers(given: dict[str, Any]) -> dict[str, Any]:
    execution = current_execution()
    event = current_event()
    if execution is not None:
        correlation = execution.correlation_id
        causation: str | None = f"step:{execution.idempotency_key}"
    elif event is not None:
        correlation = str(event.headers.get("correlation_id") or f"event:{event.id}")
        causation = f"event:{event.id}"
    else:
        correlation = uuid.uuid4().hex
        causation = None
    headers = {"correlation_id": correlation, "causation_id": causation}
    headers.update(given)
    return headers


def _kick() -> None:
    try:
        sending.send_task(sending.RELAY_OUTBOX, queue=conf.QUEUE or None, **sending.ONE_ATTEMPT)
    except Exception:  # the broker is down: beat's relay run publishes the events
        logger.warning("could not wake the outbox relay; beat will relay", exc_info=True)


def _kick_on_commit() -> None:
    """One wake-up per transaction, however many events it publishes."""
    if any(entry[1] is _kick for entry in connection.run_on_commit):
        return
    transaction.on_commit(_kick, robust=True)
