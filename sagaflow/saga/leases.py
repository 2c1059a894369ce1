"""What a run's rows, read under its lock, say about an attempt: whose lease holds,
whether a step may be claimed now, is due soon (an early message), or stalled.

Pure reads of rows ``store`` fetched, compared on the database clock (``db_now``,
the statement's time), never a worker's.
"""

from __future__ import annotations

import uuid

from ..conf import conf
from ..models import SagaState, SagaStep, StepState
from .store import FORWARD


def holds_lease(step: SagaStep, token: uuid.UUID, phase: str) -> bool:
    """The attempt with lease ``token`` is still the step's current one.

    A forward attempt keeps its lease when its saga is abandoned meanwhile (the
    saga is then compensating): its outcome is recorded, then compensated.
    """
    saga_states: tuple[SagaState, ...]
    if phase == FORWARD:
        expected_state, saga_states = StepState.RUNNING, LEASED_FORWARD_SAGA_STATES
    else:
        expected_state, saga_states = StepState.COMPENSATING, (SagaState.COMPENSATING,)
    return (
        step.lease_token == token
        and step.state == expected_state
        and step.saga.state in saga_states
    )


LEASED_FORWARD_SAGA_STATES = (SagaState.RUNNING, SagaState.COMPENSATING)


def is_claimable(step: SagaStep, phase: str) -> bool:
    """Waiting, due by the database clock, and its saga in the matching state."""
    waiting_state = StepState.PENDING if phase == FORWARD else StepState.COMPENSATING
    saga_state = SagaState.RUNNING if phase == FORWARD else SagaState.COMPENSATING
    return (
        step.saga.state == saga_state
        and step.state == waiting_state
        and step.lease_token is None
        and step.due_at is not None
        and step.due_at <= step.db_now  # type: ignore[attr-defined]
    )


def due_in(step: SagaStep, phase: str) -> float | None:
    """Seconds until a waiting step is due, if it is waiting in ``phase`` and due
    within ``MAX_COUNTDOWN`` (a message that arrived early); otherwise ``None``."""
    waiting_state = StepState.PENDING if phase == FORWARD else StepState.COMPENSATING
    saga_state = SagaState.RUNNING if phase == FORWARD else SagaState.COMPENSATING
    if (
        step.saga.state != saga_state
        or step.state != waiting_state
        or step.lease_token is not None
        or step.due_at is None
    ):
        return None
    remaining = (step.due_at - step.db_now).total_seconds()  # type: ignore[attr-defined]
    return remaining if 0 < remaining <= conf.MAX_COUNTDOWN else None


def stalled(step: SagaStep) -> bool:
    """Leased and past its lease by the database clock."""
    return (
        step.lease_token is not None
        and step.lease_expires_at is not None
        and step.lease_expires_at < step.db_now  # type: ignore[attr-defined]
    )
