"""The relay: moves committed outbox events to the broker, batch by batch.

One batch is one short database transaction::

    claim and mark published (or delete), ONE statement  ->  fault point relay.after_claim
    publish the whole batch in ONE broker message         ->  fault point relay.after_publish
    commit (a failed publish rolls back: the rows are pending again)

Why the row locks may be held across the publish (P4): the publish is bounded.
The broker transport's socket timeouts end a publish to a down or paused broker
within seconds (C8), Celery's own publish retries are off (``ONE_ATTEMPT``), and
``idle_in_transaction_session_timeout`` (``OUTBOX_PUBLISH_TIMEOUT``) ends the
session if a publish hangs anyway, freeing the rows for another relay. The
alternative, a lease committed before publishing, costs a third commit per batch
and a lease sweeper, for no better guarantee.

Failure handling:

- the publish raises: the transaction rolls back, then (in a second short
  transaction) every event of the batch counts a failed attempt and waits
  (exponential backoff with jitter, through ``available_at``); after
  ``OUTBOX_MAX_ATTEMPTS`` it is ``dead`` until ``store.requeue_dead``;
- the relay dies after publishing but before the commit (``relay.after_publish``):
  the transaction rolls back, the rows are pending again and the next relay
  publishes them again. That is the one source of duplicates; consumers dedupe.

**One broker round trip per batch.** A batch goes out as one Celery message
(``sagaflow.deliver_events`` with the list of events), i.e. a single ``LPUSH``
on Redis, instead of one ``apply_async`` per event (about 1k/s). The worker that
receives it runs each event's consumers in their own transaction
(``consumers.py``). Set ``OUTBOX_PUBLISHER`` to publish elsewhere (Kafka, SNS): any
class with ``publish(events: list[dict]) -> None`` that raises on failure
(``publishers.py``).

**What consumers may assume** (docs/outbox.md has the long form):

- every committed event is delivered at least once; an event from a rolled-back
  transaction never is;
- per ``key``, events are *published* in commit order; events without a key,
  or with different keys, in no particular order and concurrently;
- delivery order is not processing order: several workers run batches in
  parallel, and a failed handler is retried later. A consumer that needs order
  compares ``event.id`` (increasing per key) with the last id it applied.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

from django.db import transaction

from ..conf import conf
from ..faults import fault_point
from . import store
from .publishers import Publisher, get_publisher

logger = logging.getLogger("sagaflow.relay")


@dataclass
class DrainReport:
    batches: int = 0
    published: int = 0
    failed: int = 0
    dead: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class BatchResult:
    claimed: int
    published: int
    failed: int
    dead: int


#: Every claim at least this many seconds after the last one without a floor
#: looks at the whole pending set (``store.claim``'s ``floor``): what a
#: floor passed over (a late commit, a retry that became due) waits at most this.
FULL_SCAN_EVERY = 1.0
#: A floor is the first pending id a claim saw at least this long ago, so a
#: transaction that took its id earlier but committed within this time is not
#: passed over.
FLOOR_LAG = 0.5


class _ScanFloor:
    """Per process: where this relay's claims may start (P3, a pinned snapshot)."""

    def __init__(self) -> None:
        self.full_at = -FULL_SCAN_EVERY
        #: (when, first pending id a claim saw), ids never decreasing
        self.seen: deque[tuple[float, int]] = deque()
        self.lock = threading.Lock()

    def get(self, now: float) -> int:
        with self.lock:
            if now - self.full_at >= FULL_SCAN_EVERY:
                self.full_at = now
                return 0
            while len(self.seen) > 1 and now - self.seen[1][0] >= FLOOR_LAG:
                self.seen.popleft()
            if self.seen and now - self.seen[0][0] >= FLOOR_LAG:
                return self.seen[0][1]
            return 0

    def saw(self, now: float, first: int | None) -> None:
        if first is None:
            return
        with self.lock:
            # A lower first id (a late commit, a rolled-back batch, ids reset)
            # lowers every later floor.
            while self.seen and self.seen[-1][1] > first:
                self.seen.pop()
            self.seen.append((now, first))


_floor = _ScanFloor()


class _PublishFailed(Exception):
    """Rolls the relay's transaction back, putting the claimed rows back."""

    def __init__(self, exc: Exception) -> None:
        super().__init__(str(exc))
        self.exc = exc


def relay_batch(limit: int, publisher: Publisher | None = None) -> BatchResult:
    """Claim, publish and mark one batch in one transaction.

    The claim marks the rows published (or deletes them) in the same statement;
    the commit after the publish makes that stick. If the publish fails, the
    transaction rolls back (the rows are pending and unlocked again) and the
    failed attempt is counted in a second, short transaction.
    """
    publisher = publisher or get_publisher()
    try:
        with transaction.atomic():
            now = time.monotonic()
            events, first = store.claim(
                limit,
                keep_published=bool(conf.OUTBOX_KEEP_PUBLISHED),
                hold_limit=float(conf.OUTBOX_PUBLISH_TIMEOUT),
                floor=_floor.get(now),
            )
            _floor.saw(now, first)
            if not events:
                return BatchResult(0, 0, 0, 0)
            fault_point("relay.after_claim")
            try:
                publisher.publish([e.message() for e in events])
            except Exception as exc:
                raise _PublishFailed(exc) from exc
            fault_point("relay.after_publish")
    except _PublishFailed as failure:
        exc = failure.exc
        ids = [e.id for e in events]
        with transaction.atomic():
            retrying, dead = store.mark_failed(
                ids,
                error=f"{type(exc).__name__}: {exc}",
                max_attempts=int(conf.OUTBOX_MAX_ATTEMPTS),
                backoff=float(conf.OUTBOX_RETRY_BACKOFF),
                max_backoff=float(conf.OUTBOX_RETRY_MAX_BACKOFF),
            )
        logger.warning(
            "publishing %d outbox events failed (%s: %s); %d will be retried, %d are dead",
            len(ids),
            type(exc).__name__,
            exc,
            retrying,
            dead,
        )
        return BatchResult(len(ids), 0, retrying, dead)
    return BatchResult(len(events), len(events), 0, 0)


def drain(
    *,
    batch_size: int | None = None,
    max_seconds: float | None = None,
    should_stop: Callable[[], bool] | None = None,
    publisher: Publisher | None = None,
) -> DrainReport:
    """Relay batches until one comes back short (or a publish fails, or time is up).

    A failed publish stops the drain: the broker is likely down, and the failed
    rows already wait for their retry time.
    """
    limit = int(batch_size or conf.OUTBOX_BATCH_SIZE)
    publisher = publisher or get_publisher()
    report = DrainReport()
    started = time.monotonic()
    while True:
        result = relay_batch(limit, publisher)
        if result.claimed:
            report.batches += 1
        report.published += result.published
        report.failed += result.failed
        report.dead += result.dead
        if result.claimed < limit or result.failed or result.dead:
            break
        if should_stop is not None and should_stop():
            break
        if max_seconds is not None and time.monotonic() - started > max_seconds:
            break
    return report
