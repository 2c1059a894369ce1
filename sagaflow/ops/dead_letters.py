"""Giving dead letters another chance: events the relay gave up on, and consumer
runs whose handler ran out of retries.

Both are rows, so re-queueing is an update; the outbox owns the SQL
(``sagaflow.outbox.store`` / ``inbox``) and this is its operator's door, the one the
admin actions use.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..outbox import inbox, store


def requeue_dead_events(ids: Sequence[int] | None = None) -> int:
    """Put ``dead`` outbox events (all, or those in ``ids``) back to pending, due now;
    returns how many. Their attempts restart from zero. A re-queued event is
    published after the events of its key that were published while it was dead."""
    return store.requeue_dead(ids)


def requeue_dead_inbox(ids: Sequence[int] | None = None) -> int:
    """Give dead consumer runs (all, or the inbox rows in ``ids``) a fresh set of
    retries, due now; returns how many."""
    return inbox.requeue_dead_inbox(ids)
