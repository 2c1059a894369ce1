"""Retention: deletes rows sagaflow no longer needs, in bounded batches.

Run periodically by the ``sagaflow.janitor`` Celery task (schedule it with beat).
Each kind of row is cleaned by the store module that owns its table; this module
only sequences them and reports counts, so adding a kind is one line.
"""

from __future__ import annotations

from ..conf import conf
from ..idempotency import store as idempotency_store
from ..outbox import inbox as inbox_store
from ..outbox import store as outbox_store
from ..saga import retention


def clean() -> dict[str, int]:
    """Delete expired rows; returns how many of each kind were deleted.

    Idempotency keys: expired ones, never one still held under a live lease.
    Outbox events: published ones older than ``OUTBOX_RETENTION``; inbox rows:
    processed or dead ones older than ``INBOX_RETENTION``. Runs: completed and
    compensated ones, and failed ones a person resolved, older than
    ``SAGA_RETENTION``, with their steps; failed runs nobody resolved are kept.
    Safe to run concurrently (two beats): each batch skips rows another holds.
    """
    batch_size = int(conf.JANITOR_BATCH_SIZE)
    return {
        "idempotency_keys": idempotency_store.delete_expired(batch_size),
        # Published events and processed/dead inbox rows past their retention;
        # pending and dead events and failed inbox rows are never deleted.
        "outbox_events": outbox_store.purge_published(batch_size, float(conf.OUTBOX_RETENTION)),
        "inbox_messages": inbox_store.purge_inbox(batch_size, float(conf.INBOX_RETENTION)),
        "sagas": retention.purge_finished(batch_size, float(conf.SAGA_RETENTION)),
    }
