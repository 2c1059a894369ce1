"""Supported helpers for testing code that uses sagaflow.

- ``run_inline`` runs a saga to its end in the current process and
  transaction, skipping retry waits, so user sagas can be unit-tested with
  ``pytest-django``'s ordinary ``db`` fixture and no Celery worker.
- ``armed_fault`` crashes the engine at a named commit boundary
  (see ``sagaflow.faults``) to test what happens after a crash.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from django.db.models.functions import Now

from . import faults
from .models import Saga, SagaState, SagaStep, StepState
from .saga import dispatch, engine, store, sweeper
from .saga.definition import SagaDefinition
from .saga.store import now_minus

__all__ = ["armed_fault", "captured_dispatches", "drive", "expire_leases", "run_inline"]


@contextlib.contextmanager
def captured_dispatches() -> Iterator[list[tuple[int, str]]]:
    """Collect step messages instead of sending them to Celery."""
    sent: list[tuple[int, str]] = []
    previous = dispatch._interceptor
    dispatch._interceptor = lambda step_id, phase: sent.append((step_id, phase))
    try:
        yield sent
    finally:
        dispatch._interceptor = previous


@contextlib.contextmanager
def armed_fault(point: str, action: str = "raise") -> Iterator[None]:
    """Arm ``point`` in this process for the duration of the block."""
    faults.arm(point, action)
    try:
        yield
    finally:
        faults.disarm(point)


def _waiting(saga: Saga) -> SagaStep | None:
    return (
        SagaStep.objects.filter(
            saga=saga,
            saga__state__in=[SagaState.RUNNING, SagaState.COMPENSATING],
            due_at__isnull=False,
            lease_token__isnull=True,
        )
        .order_by("-index")
        .first()
    )


def drive(saga: Saga, *, limit: int | None = None, max_attempts: int = 1000) -> Saga:
    """Run ``saga``'s waiting work in this process until nothing is left to do.

    Retry waits are skipped (the due time is moved to now). A step whose lease is
    held (a crash left it running) is left alone: call ``expire_leases`` first.
    A run that waits for the code of its version stops there (``needs_code_since``).
    With ``limit``, stop after that many attempts (to look at a run mid-way).
    """
    budget = limit if limit is not None else max_attempts
    with captured_dispatches():
        for _ in range(budget):
            step = _waiting(saga)
            if step is None:
                break
            SagaStep.objects.filter(pk=step.pk).update(due_at=Now())
            phase = store.FORWARD if step.state == StepState.PENDING else store.COMPENSATE
            engine.execute(step.pk, phase)
            if Saga.objects.filter(pk=saga.pk, needs_code_since__isnull=False).exists():
                break  # waiting for its code: nothing more happens until it is back
        else:
            if limit is None:
                raise AssertionError(
                    f"saga {saga.id} did not settle within {max_attempts} attempts"
                )
    saga.refresh_from_db()
    return saga


def run_inline(
    definition: SagaDefinition,
    data: Any = None,
    *,
    key: str | None = None,
    correlation_id: str | None = None,
) -> Saga:
    """Start ``definition`` and run it to its end in this process."""
    with captured_dispatches():
        saga = definition.start(data, key=key, correlation_id=correlation_id)
    return drive(saga)


def expire_leases(saga: Saga) -> int:
    """Pretend the workers holding ``saga``'s leases died, and let the sweeper act."""
    SagaStep.objects.filter(saga=saga, lease_token__isnull=False).update(
        lease_expires_at=now_minus(1)
    )
    with captured_dispatches():
        return sweeper.sweep().expired_leases
