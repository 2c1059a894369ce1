"""Consumers: ``@sagaflow.consumer("topic")`` handlers, run at most once per event.

Exactly-once effects on top of at-least-once delivery: for each (consumer, event)
the handler runs in a transaction that first inserts the consumer's inbox row.
The row and the handler's writes commit together, or neither does. A duplicate
(relay republished after a crash, broker redelivered after a worker died, the
same message twice) finds the row and is acknowledged without running the
handler; a concurrent duplicate waits on the row's unique index, then skips.

A handler that raises is rolled back (its savepoint), and the failure is recorded
on the inbox row with the time of its next try (exponential backoff with jitter,
in PostgreSQL: C5). The relay's periodic run sends due retries; after the
consumer's ``Retry.attempts`` tries the row is ``dead`` (dead-lettered: kept,
visible, re-queueable with ``inbox.requeue_dead_inbox``).

What a handler may assume:

- it runs at most once *successfully* per event id (its writes to *this* database
  commit at most once); effects outside the database need their own idempotency
  (``event.id`` is a stable key for them);
- events of one key were *published* in commit order, but handlers run in
  parallel on several workers and a failed one is retried later, so a handler
  must not assume it sees them in that order: compare ``event.id`` (increasing
  per key) with the last one applied if order matters;
- a worker killed mid-handler makes Celery redeliver the message (``acks_late``),
  so a handler that always crashes its process is redelivered until someone
  fixes it (C2); a handler that raises is retried and dead-lettered instead.
"""

from __future__ import annotations

import logging
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import Any

from django.db import transaction

from .. import sending
from ..conf import conf
from ..exceptions import DefinitionError
from ..retry import Retry
from . import inbox, store

logger = logging.getLogger("sagaflow.consumers")


@dataclass(frozen=True)
class Event:
    """One event as a handler receives it."""

    id: int
    topic: str
    key: str | None
    payload: Any
    headers: dict[str, Any] = field(default_factory=dict)
    created_at: str | None = None

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Event:
        return cls(
            id=int(message["id"]),
            topic=message["topic"],
            key=message.get("key"),
            payload=message.get("payload"),
            headers=dict(message.get("headers") or {}),
            created_at=message.get("created_at"),
        )


Handler = Callable[[Event], Any]


@dataclass(frozen=True)
class Consumer:
    name: str
    topic: str
    handler: Handler
    retry: Retry | None

    def policy(self) -> Retry:
        return self.retry or Retry(
            attempts=int(conf.CONSUMER_RETRY_ATTEMPTS),
            backoff=float(conf.CONSUMER_RETRY_BACKOFF),
            max_backoff=float(conf.CONSUMER_RETRY_MAX_BACKOFF),
        )


_by_topic: dict[str, list[Consumer]] = defaultdict(list)
_by_name: dict[str, Consumer] = {}
_current: ContextVar[Event | None] = ContextVar("sagaflow_event", default=None)


def consumer(
    topic: str, *, name: str | None = None, retry: Retry | None = None
) -> Callable[[Handler], Handler]:
    """Register ``handler(event)`` for ``topic``; it runs at most once per event id.

    ``name`` identifies the consumer in its inbox rows (default: the function's
    dotted path). Renaming it makes every past event look new to it, so give an
    explicit ``name`` before moving a handler between modules.
    """
    if not isinstance(topic, str) or not topic:
        raise DefinitionError(f"@consumer(topic={topic!r}): topic must be a non-empty str.")
    if retry is not None and not isinstance(retry, Retry):
        raise DefinitionError(f"@consumer(retry={retry!r}) must be a sagaflow.Retry or None.")

    def register(handler: Handler) -> Handler:
        consumer_name = name or f"{handler.__module__}.{handler.__qualname__}"
        if len(consumer_name) > 200:
            raise DefinitionError(
                f"Consumer name {consumer_name!r} is longer than 200 characters; "
                f"pass a shorter name= to @consumer."
            )
        existing = _by_name.get(consumer_name)
        if existing is not None and existing.handler is not handler:
            if (existing.handler.__module__, existing.handler.__qualname__) != (
                handler.__module__,
                handler.__qualname__,
            ):
                raise DefinitionError(
                    f"Consumer name {consumer_name!r} is registered twice; its inbox rows "
                    f"would be shared. Give one of them another name=."
                )
            unregister(consumer_name)  # the same module imported again (reload)
        entry = Consumer(consumer_name, topic, handler, retry)
        _by_name[consumer_name] = entry
        _by_topic[topic].append(entry)
        return handler

    return register


def unregister(name: str) -> None:
    """Forget a consumer (tests that register handlers on the fly clean up with this)."""
    entry = _by_name.pop(name, None)
    if entry is not None:
        _by_topic[entry.topic] = [c for c in _by_topic[entry.topic] if c.name != name]


def consumers_of(topic: str) -> list[Consumer]:
    return list(_by_topic.get(topic, ()))


def current_event() -> Event | None:
    """The event whose handler is running (``publish`` chains its headers)."""
    return _current.get()


@contextmanager
def _handling(event: Event) -> Iterator[None]:
    token = _current.set(event)
    try:
        yield
    finally:
        _current.reset(token)


# --- delivery ----------------------------------------------------------------------------


@dataclass
class DeliveryReport:
    applied: int = 0
    duplicates: int = 0
    failed: int = 0
    dead: int = 0
    deferred: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def deliver(
    messages: Sequence[dict[str, Any]],
    *,
    only: str | None = None,
    retry: bool = False,
    redelivered: bool = False,
) -> DeliveryReport:
    """Run every registered consumer of each message's topic (or only ``only``).

    ``redelivered``: the broker returned this batch because the worker running it
    died; each try is then counted before it runs (``inbox_count_crash``), so a
    handler that kills its process is dead-lettered after its tries, and the
    events after it in the batch still run.
    """
    report = DeliveryReport()
    for message in messages:
        event = Event.from_message(message)
        for entry in consumers_of(event.topic):
            if only is not None and entry.name != only:
                continue
            if redelivered and _crashed_too_often(entry, event):
                report.dead += 1
                continue
            outcome = apply(entry, event, retry=retry)
            setattr(report, outcome, getattr(report, outcome) + 1)
    return report


def _crashed_too_often(entry: Consumer, event: Event) -> bool:
    crashes = inbox.inbox_count_crash(entry.name, event.id, event.topic)
    policy = entry.policy()
    if crashes is None or not policy.exhausted(crashes):
        return False
    inbox.inbox_failed(
        entry.name, event.id, attempts=crashes, dead=True, delay=0, error=inbox.CRASHED
    )
    logger.error(
        "consumer %s: event %s killed its worker %d time(s); dead-lettered",
        entry.name,
        event.id,
        crashes,
    )
    return True


def apply(entry: Consumer, event: Event, *, retry: bool = False) -> str:
    """Run ``entry`` on ``event`` unless its inbox says not to; returns the outcome.

    Outcomes: ``applied``, ``duplicates`` (already processed or dead), ``failed``
    (a retry is scheduled), ``dead``, ``deferred`` (failed earlier; its retry is
    not due and this is not the retry's message).
    """
    with transaction.atomic():
        seen = inbox.inbox_enter(entry.name, event.id, event.topic)
        if not seen.new:
            if seen.state != "failed":
                return "duplicates"
            if not (retry or seen.due):
                return "deferred"
        try:
            with transaction.atomic(), _handling(event):
                entry.handler(event)
        except Exception as exc:
            attempts = seen.attempts + 1
            policy = entry.policy()
            dead = policy.exhausted(attempts)
            inbox.inbox_failed(
                entry.name,
                event.id,
                attempts=attempts,
                dead=dead,
                delay=0 if dead else policy.delay(attempts),
                error="".join(traceback.format_exception_only(exc)).strip(),
            )
            log = logger.error if dead else logger.warning
            log(
                "consumer %s failed on event %s (attempt %d/%d)%s",
                entry.name,
                event.id,
                attempts,
                policy.attempts,
                "; dead-lettered" if dead else "; will retry",
                exc_info=True,
            )
            return "dead" if dead else "failed"
        if not seen.new:
            inbox.inbox_processed(entry.name, event.id)
    return "applied"


def redeliver_due(limit: int | None = None) -> int:
    """Send the due retries of failed handlers to the workers; returns how many.

    Each is stamped as sent (``CONSUMER_REDELIVER_AFTER``), so if the message is
    lost the next sweep sends it again instead of never.
    """
    with transaction.atomic():
        due = inbox.take_due_retries(
            int(limit or conf.SWEEP_BATCH_SIZE), float(conf.CONSUMER_REDELIVER_AFTER)
        )
    if not due:
        return 0
    events = store.events_by_ids([message_id for _, message_id in due])
    by_consumer: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for name, message_id in due:
        event = events.get(message_id)
        if event is None:
            logger.error(
                "consumer %s: event %s is gone from the outbox (retention); cannot retry it",
                name,
                message_id,
            )
            continue
        by_consumer[name].append(event.message())
    sent = 0
    for name, messages in by_consumer.items():
        try:
            sending.send_task(
                sending.DELIVER_EVENTS,
                (messages,),
                {"consumer": name, "retry": True},
                queue=conf.OUTBOX_QUEUE or conf.QUEUE or None,
                **sending.ONE_ATTEMPT,
            )
            sent += len(messages)
        except Exception:
            logger.warning("could not send consumer retries for %s", name, exc_info=True)
    return sent


def redeliver_unconsumed(limit: int | None = None) -> int:
    """Send again the published events some local consumer provably never received.

    The relay marks an event published once the broker took it; if Redis then
    loses it (flushed, restarted without persistence), only the missing inbox
    row shows it. Missing is not lost while the workers are behind, so only events
    older than one the consumer already received are sent again, plus at most one
    probe per consumer (``inbox.take_unconsumed``): a backlog is never resent.
    Run by the periodic ``sagaflow.outbox_sweep``; returns how many (consumer,
    event) deliveries were sent. Consumers already done skip (inbox).
    """
    sent = 0
    for entry in list(_by_name.values()):
        with transaction.atomic():
            ids = inbox.take_unconsumed(
                entry.name,
                entry.topic,
                settle=float(conf.CONSUMER_REDELIVER_AFTER),
                window=float(conf.CONSUMER_REDELIVERY_WINDOW),
                limit=int(limit or conf.SWEEP_BATCH_SIZE),
            )
        if not ids:
            continue
        events = store.events_by_ids(ids)
        messages = [events[i].message() for i in ids if i in events]
        logger.warning(
            "consumer %s never received %d published event(s) (lost by the broker?); "
            "sending them again",
            entry.name,
            len(messages),
        )
        try:
            sending.send_task(
                sending.DELIVER_EVENTS,
                (messages,),
                {"consumer": entry.name},
                queue=conf.OUTBOX_QUEUE or conf.QUEUE or None,
                **sending.ONE_ATTEMPT,
            )
            sent += len(messages)
        except Exception:
            logger.warning("could not resend events to %s", entry.name, exc_info=True)
    return sent
