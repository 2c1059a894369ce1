"""What an operator may do to a run: retry it, compensate it now, or resolve it.

Admin actions and management commands call these; each one locks the run's row,
re-checks its state and either acts or raises :class:`ActionRefused` with the
reason. Two people clicking *retry* at once, or a click racing the sweeper, are
serialised by that lock: the second finds the work already scheduled and is
refused, so the step runs once.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.db import transaction
from django.db.models.functions import Now

from ..conf import conf
from ..exceptions import ActionRefused, DefinitionMismatchError, UnknownSagaError
from ..models import Saga, SagaState, SagaStep, StepState
from ..saga import leases, store
from ..saga.attempts import (
    COMPENSATE,
    FORWARD,
    Outcome,
    definition_of,
    log_extra,
)
from ..saga.attempts import (
    resolve as resolve_step,
)
from ..saga.definition import StepDefinition
from ..saga.transitions import (
    abandon,
    compensation_failed,
    forward_failed,
    schedule_attempt,
    settle_abandoned,
)

__all__ = ["ActionRefused", "compensate", "resolve", "retry"]

logger = logging.getLogger("sagaflow.ops")

#: Longest note kept with a resolved run.
NOTE_MAX_LENGTH = 4000


def _locked(saga_id: uuid.UUID | str) -> Saga:
    saga = store.lock_saga(saga_id)
    if saga is None:
        raise ActionRefused(f"There is no saga with id {saga_id}.")
    return saga


def _step_definition(saga: Saga, step: SagaStep) -> StepDefinition:
    try:
        return resolve_step(saga, step)[1]
    except (UnknownSagaError, DefinitionMismatchError) as exc:
        raise ActionRefused(f"Cannot retry saga {saga.id}: {exc}") from None


def retry(saga_id: uuid.UUID | str) -> str:
    """Resume a failed or stalled run from the step where it stopped.

    A ``failed`` run (its compensation ran out of tries, or its code no longer
    matched) gets a fresh set of tries for that step. A live run whose step is
    waiting out a backoff, or whose message was lost, has that step sent now; one
    whose worker died has the lost attempt counted and is resumed. Returns what
    was done, for the admin's message and the audit log.
    """
    with transaction.atomic():
        saga = _locked(saga_id)
        if saga.state in (SagaState.COMPLETED, SagaState.COMPENSATED):
            raise ActionRefused(f"Saga {saga.id} is {saga.state}: a finished run is not retried.")
        if saga.resolved_at is not None:
            raise ActionRefused(
                f"Saga {saga.id} was resolved by {saga.resolved_by or 'a script'} on "
                f"{saga.resolved_at:%Y-%m-%d %H:%M:%S} UTC ({saga.resolution_note}); a "
                f"resolved run is not retried."
            )
        waited_for_code = _code_is_back(saga, "retry")
        steps = store.steps_of(saga)
        if saga.state == SagaState.FAILED:
            return _retry_failed(saga, steps)
        leased = next((s for s in steps if s.lease_token is not None), None)
        if leased is not None:
            if not leases.stalled(leased):
                raise ActionRefused(
                    f"Saga {saga.id}: step {leased.name!r} is running now (its lease runs "
                    f"until {leased.lease_expires_at:%Y-%m-%d %H:%M:%S} UTC). Wait for it, "
                    f"or compensate the saga."
                )
            return _retry_stalled(saga, leased)
        waiting = next((s for s in steps if s.due_at is not None), None)
        if waiting is None:
            raise ActionRefused(f"Saga {saga.id} is {saga.state} with nothing to resume.")
        return _send_now(saga, waiting, turned_away=waited_for_code)


def _code_is_back(saga: Saga, what: str) -> bool:
    """For a run that waited for its code: refuse while it is still missing; once it
    is back, drop the flag (the operator's action goes on). Returns whether it waited."""
    if saga.needs_code_since is None:
        return False
    try:
        definition_of(saga)
    except (UnknownSagaError, DefinitionMismatchError) as exc:
        raise ActionRefused(f"Cannot {what} saga {saga.id}: {exc}") from None
    store.code_is_back(saga)
    return True


def _retry_failed(saga: Saga, steps: list[SagaStep]) -> str:
    stuck = [s for s in steps if s.state == StepState.COMPENSATING]
    if stuck:
        step = stuck[-1]
        _step_definition(saga, step)
        step.compensation_attempts = 0
        step.save(update_fields=["compensation_attempts"])
        saga.state = SagaState.COMPENSATING
        phase, state = COMPENSATE, StepState.COMPENSATING
    else:
        failed = [s for s in steps if s.state == StepState.FAILED and not s.interrupted]
        if not failed:
            raise ActionRefused(f"Saga {saga.id} is failed but no step is left to retry.")
        step = failed[-1]
        _step_definition(saga, step)
        step.attempts = 0
        step.save(update_fields=["attempts"])
        saga.state = SagaState.RUNNING
        phase, state = FORWARD, StepState.PENDING
    saga.finished_at = None
    saga.current_step = step.index
    saga.error = f"retried by an operator after: {saga.error}"[:4000]
    store.save_saga(saga, "state", "finished_at", "current_step", "error")
    schedule_attempt(step, state, phase)
    return f"{'compensation of ' if phase == COMPENSATE else ''}step {step.name!r} retried"


def _retry_stalled(saga: Saga, step: SagaStep) -> str:
    step_def = _step_definition(saga, step)
    error = "retried by an operator after its lease expired: the worker was lost"
    if step.state == StepState.RUNNING and saga.state == SagaState.COMPENSATING:
        # The attempt that was running when the run was abandoned: it settles as lost
        # (it may have acted), and the compensation goes on from it; no new attempt.
        settle_abandoned(saga, step, step_def, Outcome(error=error), lost=True)
        return f"step {step.name!r} had lost its worker; compensating it ({saga.state})"
    if step.state == StepState.RUNNING:
        forward_failed(saga, step, step_def, Outcome(error=error), interrupted=True)
    else:
        compensation_failed(saga, step, step_def, Outcome(error=error), lost=True)
    step.refresh_from_db()
    if step.due_at is not None:  # a retry was scheduled: do not wait out its backoff
        return _send_now(saga, step)
    return f"step {step.name!r} had lost its worker; its attempts are used up, so {saga.state}"


def _send_now(saga: Saga, step: SagaStep, *, turned_away: bool = False) -> str:
    now = step.db_now  # type: ignore[attr-defined]
    # A run that waited for its code had its message turned away: the code being
    # back (checked by the caller), it is sent now, not at the sweeper's next look.
    sent = step.dispatched_at is not None and not turned_away
    if sent and step.due_at is not None and step.due_at <= now:
        age = max(0.0, (now - step.dispatched_at).total_seconds())
        if age < conf.REDISPATCH_AFTER:
            raise ActionRefused(
                f"Saga {saga.id}: step {step.name!r} was sent to a worker {age:.0f} s ago and "
                f"has not started yet; it is not sent twice."
            )
    phase = COMPENSATE if step.state == StepState.COMPENSATING else FORWARD
    schedule_attempt(step, step.state, phase)
    return f"step {step.name!r} sent now"


def compensate(saga_id: uuid.UUID | str) -> str:
    """Abandon a running or stalled run and compensate what it did."""
    with transaction.atomic():
        saga = _locked(saga_id)
        if saga.state != SagaState.RUNNING:
            raise ActionRefused(
                f"Saga {saga.id} is {saga.state}: only a running saga can be compensated."
            )
        try:
            definition = definition_of(saga)
        except (UnknownSagaError, DefinitionMismatchError) as exc:
            raise ActionRefused(f"Cannot compensate saga {saga.id}: {exc}") from None
        store.code_is_back(saga)
        abandon(saga, definition, "compensation requested by an operator")
        return f"compensating ({saga.state})"


def resolve(saga_id: uuid.UUID | str, note: str, user: Any = None) -> str:
    """Record that a person dealt with a ``failed`` run, and why.

    ``note`` says what was done (required); ``user`` is the Django user who did it,
    or None from a script. The run stays ``failed``, with its steps as they were;
    it no longer counts as needing attention (``sagaflow status``, the metrics),
    is not retried any more, and is deleted after ``SAGA_RETENTION`` like the runs
    that finished. Refused for a run that is not failed or is resolved already.
    """
    if not isinstance(note, str) or not note.strip():
        raise ActionRefused(
            "A note saying why the run is resolved is required (what was done by hand)."
        )
    note = note.strip()
    if len(note) > NOTE_MAX_LENGTH:
        raise ActionRefused(
            f"The note is {len(note)} characters long; keep it under {NOTE_MAX_LENGTH}."
        )
    by = user.get_username() if user is not None and user.is_authenticated else ""
    with transaction.atomic():
        saga = _locked(saga_id)
        if saga.state != SagaState.FAILED:
            raise ActionRefused(
                f"Saga {saga.id} is {saga.state}: only a failed run can be resolved."
            )
        if saga.resolved_at is not None:
            raise ActionRefused(
                f"Saga {saga.id} was resolved already, by {saga.resolved_by or 'a script'} "
                f"on {saga.resolved_at:%Y-%m-%d %H:%M:%S} UTC: {saga.resolution_note}"
            )
        saga.resolved_at = Now()
        saga.resolved_by = by
        saga.resolution_note = note
        store.save_saga(saga, "resolved_at", "resolved_by", "resolution_note")
        logger.warning(
            "failed saga resolved by %s: %s", by or "a script", note, extra=log_extra(saga)
        )
    return f"resolved by {by or 'a script'}: {note}"
