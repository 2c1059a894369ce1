"""Retention of runs: deleting finished runs, with their steps, in bounded batches.

A run is finished for good when it ``completed`` or was ``compensated``, or when it
``failed`` and a person resolved it. Those older than the retention (by
``finished_at``, or ``resolved_at`` for a resolved one) are deleted; a failed run
nobody resolved is kept however old, since it still needs a person. Live runs are
never touched.
"""

from __future__ import annotations

from django.db import connection, transaction
from django.db.models import Q

from ..models import Saga, SagaState, SagaStep
from . import rows
from .store import now_minus

#: Each batch locks its runs (``SKIP LOCKED``: one an operator holds is left for the
#: next time) and deletes their steps and them in one statement; the steps'
#: foreign key is checked at commit, when both are gone.
_PURGE = """
WITH doomed AS (
    SELECT id FROM sagaflow_saga
    WHERE (state IN ('completed', 'compensated')
           AND finished_at < now() - make_interval(secs => %(older_than)s))
       OR (state = 'failed' AND resolved_at < now() - make_interval(secs => %(older_than)s))
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), steps AS (
    DELETE FROM sagaflow_sagastep WHERE saga_id IN (SELECT id FROM doomed)
)
DELETE FROM sagaflow_saga WHERE id IN (SELECT id FROM doomed)
"""


def purge_finished(batch_size: int, older_than: float, max_batches: int = 100) -> int:
    """Delete finished runs older than ``older_than`` seconds; returns how many.

    At most ``batch_size`` runs per statement (short locks, short bursts of WAL),
    each batch its own transaction, and at most ``max_batches`` batches per call:
    the janitor's next run goes on where this one stopped.
    """
    total = 0
    for _ in range(max_batches):
        deleted = _purge_batch(batch_size, older_than)
        total += deleted
        if deleted < batch_size:
            break
    return total


def _purge_batch(batch_size: int, older_than: float) -> int:
    with transaction.atomic():
        if rows.native():
            with connection.cursor() as cursor:
                cursor.execute(_PURGE, {"older_than": older_than, "batch": batch_size})
                return cursor.rowcount
        cutoff = now_minus(older_than)
        doomed = list(
            Saga.objects.select_for_update(skip_locked=True)
            .filter(
                Q(state__in=[SagaState.COMPLETED, SagaState.COMPENSATED], finished_at__lt=cutoff)
                | Q(state=SagaState.FAILED, resolved_at__lt=cutoff)
            )
            .order_by()
            .values_list("pk", flat=True)[:batch_size]
        )
        SagaStep.objects.filter(saga_id__in=doomed).delete()
        Saga.objects.filter(pk__in=doomed).delete()
        return len(doomed)
