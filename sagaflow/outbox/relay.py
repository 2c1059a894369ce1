"""The relay: moves committed outbox events to the broker, batch by batch.

One batch is one short database transaction::

    claim and mark published (or delete), ONE statement  ->  fault point relay.after_claim
    publish the whole batch in ONE broker message         ->  fault point relay.after_publish
    commit (a failed publish rolls back: the rows are pending again)

Why the row locks may be held across the publish (P4): the publish is bounded.
The broker transport's socket timeouts end a publish to a down or paused broker
within seconds (C8), Celery's own publish retries are off (``ONE_ATTEMPT``), and
``idle_in_transaction_session_timeout`` (``OUTBOX_PUBLISH_TIMEOUT``, the hold
limit) ends the session if a publish takes longer anyway, freeing the rows for
another relay. The alternative, a lease committed before publishing, costs a
second write of every row and a third round trip per batch.

Failure handling: every way a batch can fail to be marked counts one attempt per
event, in a fresh short transaction, with exponential backoff and jitter through
``available_at``; after ``OUTBOX_MAX_ATTEMPTS`` the event is ``dead`` until
``store.requeue_dead`` (``failures.py``):

- the publish raises: the transaction rolls back and the failure is counted;
- the publish outlasts the hold limit (a slow broker): PostgreSQL ends the
  session, the commit fails although the message may have reached the broker.
  The relay reconnects and counts the failure, so an event that is always slow to
  publish is dead-lettered instead of being sent again forever;
- the relay dies after publishing but before the commit (``relay.after_publish``):
  the transaction rolls back, the rows are pending again and the next relay
  publishes them again (not counted: nobody is left to count it). Consumers dedupe.

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
  or with different keys, in no particular order and concurrently (relays own
  keys per batch, so several relays share even a few hot keys);
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

from django.db import DatabaseError, InterfaceError, connection, transaction

from ..conf import conf
from ..faults import fault_point
from . import failures, store
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
    #: The claim's window was full: there may be more to relay although this batch
    #: was short (other relays own some of the keys at the head).
    window_full: bool = False


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

#: Empty claims from a full window in a row after which a drain stops.
EMPTY_CLAIMS = 3


class _PublishFailed(Exception):
    """Rolls the relay's transaction back, putting the claimed rows back."""

    def __init__(self, exc: Exception) -> None:
        super().__init__(str(exc))
        self.exc = exc


def relay_batch(limit: int, publisher: Publisher | None = None) -> BatchResult:
    """Claim, publish and mark one batch in one transaction.

    The claim marks the rows published (or deletes them) in the same statement;
    the commit after the publish makes that stick. If the publish fails, or the
    transaction ends before its commit (the hold limit), the rows are pending
    again and the failed attempt is counted in a second, short transaction.
    """
    publisher = publisher or get_publisher()
    outermost = not connection.in_atomic_block
    events: list[store.ClaimedEvent] = []
    publish_took: float | None = None
    try:
        with transaction.atomic():
            now = time.monotonic()
            claimed = store.claim(
                limit,
                keep_published=bool(conf.OUTBOX_KEEP_PUBLISHED),
                hold_limit=float(conf.OUTBOX_PUBLISH_TIMEOUT),
                floor=_floor.get(now),
            )
            _floor.saw(now, claimed.first_id)
            events = claimed.events
            if not events:
                return BatchResult(0, 0, 0, 0, claimed.window_full)
            fault_point("relay.after_claim")
            started = time.monotonic()
            try:
                publisher.publish([e.message() for e in events])
            except Exception as exc:
                raise _PublishFailed(exc) from exc
            publish_took = time.monotonic() - started
            fault_point("relay.after_publish")
    except _PublishFailed as failure:
        exc = failure.exc
        retrying, dead = _count_failure(events, f"{type(exc).__name__}: {exc}")
        logger.warning(
            "publishing %d outbox events failed (%s: %s); %d will be retried, %d are dead",
            len(events),
            type(exc).__name__,
            exc,
            retrying,
            dead,
        )
        return BatchResult(len(events), 0, retrying, dead)
    except (DatabaseError, InterfaceError) as exc:
        if publish_took is None or not outermost:
            raise
        # Published, but the commit failed: the session was ended (the publish
        # outlasted the hold limit, or the database went away). The rows are
        # pending again; count it, or a broker that is always this slow gets the
        # batch again on every pass and it is never dead-lettered.
        _reconnect()
        hold = float(conf.OUTBOX_PUBLISH_TIMEOUT)
        reason = (
            f"the relay's transaction ended before its commit ({type(exc).__name__}: "
            f"{exc}); the publish took {publish_took:.1f}s against a hold limit of "
            f"OUTBOX_PUBLISH_TIMEOUT = {hold:g}s, and the batch may have reached the broker"
        )
        retrying, dead = _count_failure(events, reason)
        logger.warning(
            "a published batch of %d outbox events did not commit (%s); counted as a "
            "failed attempt: %d will be retried, %d are dead",
            len(events),
            reason,
            retrying,
            dead,
        )
        return BatchResult(len(events), 0, retrying, dead)
    return BatchResult(len(events), len(events), 0, 0, claimed.window_full)


def _count_failure(events: list[store.ClaimedEvent], error: str) -> tuple[int, int]:
    return failures.mark_failed(
        [e.id for e in events],
        error=error,
        max_attempts=int(conf.OUTBOX_MAX_ATTEMPTS),
        backoff=float(conf.OUTBOX_RETRY_BACKOFF),
        max_backoff=float(conf.OUTBOX_RETRY_MAX_BACKOFF),
    )


def _reconnect() -> None:
    """Drop a connection the server has closed, so the next query opens a new one."""
    if connection.connection is not None and not connection.is_usable():
        connection.close()


def drain(
    *,
    batch_size: int | None = None,
    max_seconds: float | None = None,
    should_stop: Callable[[], bool] | None = None,
    publisher: Publisher | None = None,
) -> DrainReport:
    """Relay batches until there is nothing left to claim (or a publish fails, or
    time is up).

    A short batch whose window was not full ends the drain: everything publishable
    was in it. A short or empty batch from a full window means other relays own the
    head of the backlog, or published it since this claim's snapshot; the drain
    goes on with what lies after it, and ends after ``EMPTY_CLAIMS`` empty ones in a
    row (the others are draining it). A failed publish stops the drain: the broker
    is likely down, and the failed rows already wait for their retry time.
    """
    limit = int(batch_size or conf.OUTBOX_BATCH_SIZE)
    publisher = publisher or get_publisher()
    report = DrainReport()
    started = time.monotonic()
    empty = 0
    while True:
        result = relay_batch(limit, publisher)
        if result.claimed:
            report.batches += 1
        report.published += result.published
        report.failed += result.failed
        report.dead += result.dead
        if result.failed or result.dead:
            break
        if result.claimed < limit and not result.window_full:
            break
        empty = 0 if result.claimed else empty + 1
        if empty >= EMPTY_CLAIMS:
            break
        if should_stop is not None and should_stop():
            break
        if max_seconds is not None and time.monotonic() - started > max_seconds:
            break
    return report
