"""Read-only queries across runs: the sweeper's work lists and the monitoring figures.

The engine's own reads and writes of one run are in ``store``; these look at many
runs at once, so each is bounded (a ``limit``) or served by an index
(``tests/integration/test_query_plans.py`` guards the plans).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.db.models import (
    Count,
    DateTimeField,
    DurationField,
    ExpressionWrapper,
    F,
    Q,
    QuerySet,
    Value,
)
from django.db.models.functions import Least, Now

from ..models import Saga, SagaState, SagaStep, StepState
from .store import COMPENSATE, FORWARD, now_minus


def expired_leases(limit: int) -> list[int]:
    return list(
        SagaStep.objects.filter(lease_token__isnull=False, lease_expires_at__lt=Now())
        .order_by("lease_expires_at")
        .values_list("pk", flat=True)[:limit]
    )


def overdue_sagas(limit: int) -> list[uuid.UUID]:
    """Running runs past their deadline, but not those waiting for their code: they
    cannot be compensated yet, and must not fill every batch."""
    return list(
        Saga.objects.filter(
            state=SagaState.RUNNING, deadline_at__lt=Now(), needs_code_since__isnull=True
        )
        .order_by("deadline_at")
        .values_list("pk", flat=True)[:limit]
    )


@dataclass(frozen=True)
class Redispatch:
    step_id: int
    phase: str
    saga_name: str
    index: int
    version: int = 1


def take_lost_dispatches(limit: int, redispatch_after: float) -> list[Redispatch]:
    """Waiting steps that are due and whose message should have run by now.

    Each is stamped as sent again in the same statement, under SKIP LOCKED, so two
    sweepers running at once (two beats) send one message, not two. The stamp is
    set in the future by as long as the step has been due (at most an hour): a
    message that is only late, behind a queue backlog older than
    ``redispatch_after``, is resent after waits that double, so the sweeper adds a
    handful of messages to a backlog, not one per sweep.
    """
    due = Q(lease_token__isnull=True, due_at__lte=Now()) & (
        Q(dispatched_at__isnull=True) | Q(dispatched_at__lte=now_minus(redispatch_after))
    )
    forward = Q(state=StepState.PENDING, saga__state=SagaState.RUNNING)
    backward = Q(state=StepState.COMPENSATING, saga__state=SagaState.COMPENSATING)
    with transaction.atomic():
        rows = list(
            SagaStep.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(due & (forward | backward))
            .values_list("pk", "state", "saga__name", "index", "saga__version")
            .order_by("due_at")[:limit]
        )
        waited = Least(Now() - F("due_at"), Value(MAX_RESEND_SPACING))
        SagaStep.objects.filter(pk__in=[r[0] for r in rows]).update(
            dispatched_at=ExpressionWrapper(Now() + waited, output_field=DateTimeField())
        )
    return [
        Redispatch(pk, FORWARD if state == StepState.PENDING else COMPENSATE, name, index, version)
        for pk, state, name, index, version in rows
    ]


#: Longest extra wait between two resends of one step's message.
MAX_RESEND_SPACING = timedelta(hours=1)


LIVE_STATES = (SagaState.RUNNING, SagaState.COMPENSATING)


def counts_by_state() -> dict[str, int]:
    rows = Saga.objects.values_list("state").annotate(n=Count("pk")).order_by()
    return {state: n for state, n in rows}


def stuck(after: float) -> QuerySet[Saga]:
    """Live runs with no progress (no write to their row) for ``after`` seconds."""
    return Saga.objects.filter(state__in=LIVE_STATES, updated_at__lt=now_minus(after))


def oldest_live_age() -> float | None:
    """Seconds since the oldest live run started, on the database clock."""
    row = (
        Saga.objects.filter(state__in=LIVE_STATES)
        .annotate(age=ExpressionWrapper(Now() - F("created_at"), output_field=DurationField()))
        .order_by("created_at")
        .values_list("age", flat=True)
        .first()
    )
    return row.total_seconds() if row is not None else None


def failed_unresolved() -> int:
    """Failed runs nobody resolved yet: each needs a person."""
    return Saga.objects.filter(state=SagaState.FAILED, resolved_at__isnull=True).count()


@dataclass(frozen=True)
class LiveVersion:
    """Live runs of one version of one saga, started with one set of steps."""

    name: str
    version: int
    steps_fingerprint: str
    runs: int
    #: How many of them a worker found waiting for their code.
    waiting: int


def live_versions() -> list[LiveVersion]:
    """Live runs grouped by saga, version and step fingerprint (a handful of rows)."""
    rows = (
        Saga.objects.filter(state__in=LIVE_STATES)
        .values_list("name", "version", "steps_fingerprint")
        .annotate(runs=Count("pk"), waiting=Count("pk", filter=Q(needs_code_since__isnull=False)))
        .order_by("name", "version", "steps_fingerprint")
    )
    return [LiveVersion(*row) for row in rows]


def step_names_of_a_run(name: str, version: int, steps_fingerprint: str) -> list[str]:
    """The stored step names of one live run of that group, to show what it expects."""
    saga_id = (
        Saga.objects.filter(
            state__in=LIVE_STATES, name=name, version=version, steps_fingerprint=steps_fingerprint
        )
        .values_list("pk", flat=True)
        .first()
    )
    # saga_id is None when no run is live any more: that filter matches no step.
    steps = SagaStep.objects.filter(saga_id=saga_id)  # type: ignore[misc]
    return list(steps.order_by("index").values_list("name", flat=True))
