"""What follows an outcome: the transitions of a run, under its row lock.

The engine (an attempt's outcome), the sweeper (a lost lease, a deadline) and
operators (retry, compensate) all end up here, so each rule of "what happens next"
is written once. Decisions come from the pure ``machine``; this module writes them
through ``store`` and sends the resulting messages after commit.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import signals
from ..conf import conf
from ..exceptions import DefinitionMismatchError, UnknownSagaError
from ..models import Saga, SagaState, SagaStep, StepState
from . import continuation, dispatch, leases, machine, store
from .attempts import (
    COMPENSATE,
    FORWARD,
    Outcome,
    definition_of,
    label,
    log_extra,
    note_attempt,
    queue_of,
    retry_of,
    signal_on_commit,
    task_time_limit,
    timeout_of,
)
from .definition import SagaDefinition, StepDefinition

logger = logging.getLogger("sagaflow.engine")


def record(step: SagaStep, phase: str, step_def: StepDefinition, outcome: Outcome) -> None:
    """Store ``outcome`` of the attempt on ``step`` and schedule what follows."""
    saga = step.saga
    if phase == FORWARD and saga.state == SagaState.COMPENSATING:
        settle_abandoned(saga, step, step_def, outcome)
    elif phase == FORWARD:
        if outcome.succeeded:
            forward_succeeded(saga, step, step_def.saga, outcome.result, outcome.duration)
        else:
            forward_failed(saga, step, step_def, outcome)
    elif outcome.succeeded:
        note_attempt(step, COMPENSATE, "succeeded", outcome)
        store.step_compensated(step)
        logger.info("step compensated", extra=log_extra(saga, step, step.compensation_attempts))
        signal_on_commit(
            signals.step_succeeded,
            saga,
            step=step.name,
            phase=COMPENSATE,
            attempt=step.compensation_attempts,
            duration=outcome.duration,
        )
        continue_compensation(saga, step_def.saga, below=step.index)
    else:
        compensation_failed(saga, step, step_def, outcome)


def forward_succeeded(
    saga: Saga, step: SagaStep, definition: SagaDefinition, result: Any, duration: float = 0.0
) -> None:
    note_attempt(step, FORWARD, "succeeded", Outcome(result=result, duration=duration))
    store.step_succeeded(step, result)
    saga.results = {**saga.results, step.name: result}
    logger.info("step succeeded", extra=log_extra(saga, step, step.attempts))
    signal_on_commit(
        signals.step_succeeded,
        saga,
        step=step.name,
        phase=FORWARD,
        attempt=step.attempts,
        duration=duration,
    )
    following = store.next_step(step)
    if following is None:
        saga.current_step = step.index + 1
        store.finish_saga(saga, SagaState.COMPLETED, also=("results", "current_step"))
        logger.info("saga completed", extra=log_extra(saga))
        signal_on_commit(signals.saga_completed, saga)
        return
    saga.current_step = following.index
    store.save_saga(saga, "results", "current_step")
    schedule_attempt(following, StepState.PENDING, FORWARD, definition)


def forward_failed(
    saga: Saga,
    step: SagaStep,
    step_def: StepDefinition,
    outcome: Outcome,
    *,
    interrupted: bool | None = None,
) -> None:
    note_attempt(step, FORWARD, label(outcome, interrupted), outcome)
    retry = retry_of(step_def, FORWARD)
    decision = machine.after_step_failure(
        index=step.index,
        attempts=step.attempts,
        retry=retry,
        aborted=outcome.aborted,
        retryable=outcome.retryable,
    )
    _announce_failure(saga, step, FORWARD, step.attempts, outcome)
    if isinstance(decision, machine.RetryLater):
        if interrupted:
            store.mark_interrupted(step)
        wait(step, decision.delay, outcome.error, FORWARD, step_def)
        return
    if (step_def.compensate_on_failure and not outcome.aborted) or outcome.acted:
        interrupted = True  # it may have acted before failing: undo it too
    store.step_gave_up(step, error=outcome.error, interrupted=interrupted)
    logger.warning("step failed for good; compensating", extra=log_extra(saga, step, step.attempts))
    saga.state = SagaState.COMPENSATING
    saga.error = f"step {step.name!r} failed: {outcome.error.splitlines()[-1][:500]}"
    store.save_saga(saga, "state", "error")
    continue_compensation(saga, step_def.saga, below=decision.below)


def _announce_failure(
    saga: Saga, step: SagaStep, phase: str, attempt: int, outcome: Outcome
) -> None:
    signal_on_commit(
        signals.step_failed,
        saga,
        step=step.name,
        phase=phase,
        attempt=attempt,
        duration=outcome.duration,
        error=outcome.error,
    )


def compensation_failed(
    saga: Saga,
    step: SagaStep,
    step_def: StepDefinition,
    outcome: Outcome,
    *,
    lost: bool = False,
) -> None:
    note_attempt(step, COMPENSATE, label(outcome, lost), outcome)
    decision = machine.after_compensation_failure(
        attempts=step.compensation_attempts,
        retry=retry_of(step_def, COMPENSATE),
        aborted=outcome.aborted,
        step=step.name,
        error=outcome.error.splitlines()[-1][:500] if outcome.error else "",
    )
    _announce_failure(saga, step, COMPENSATE, step.compensation_attempts, outcome)
    if isinstance(decision, machine.RetryLater):
        wait(step, decision.delay, outcome.error, COMPENSATE, step_def)
        return
    store.step_gave_up(step, error=outcome.error)
    fail_saga(saga, decision.reason)


def continue_compensation(saga: Saga, definition: SagaDefinition, *, below: int) -> None:
    views = [
        machine.StepView(
            index=s.index,
            state=s.state,
            has_compensation=has_compensation(definition, s),
            interrupted=s.interrupted,
        )
        for s in store.steps_of(saga)
    ]
    index = machine.next_to_compensate(views, below)
    if index is None:
        store.finish_saga(saga, SagaState.COMPENSATED)
        logger.info("saga compensated", extra=log_extra(saga))
        signal_on_commit(signals.saga_compensated, saga)
        return
    step = store.step_at(saga, index)
    saga.current_step = index
    store.save_saga(saga, "current_step")
    schedule_attempt(step, StepState.COMPENSATING, COMPENSATE, definition)


def schedule_attempt(
    step: SagaStep, state: str, phase: str, definition: SagaDefinition | None = None
) -> None:
    """Make ``step`` due now in ``state`` and send its message after commit.

    For a saga with local steps, the running task claims it instead (see
    ``continuation``): it runs right after this transaction commits.
    """
    if definition is None:
        try:
            definition = definition_of(step.saga)
        except (UnknownSagaError, DefinitionMismatchError):
            definition = None
    steps = definition.steps if definition is not None else []
    # A stored step the code no longer has is sent anyway: its claim makes the run
    # wait for the code of its version.
    step_def = steps[step.index] if step.index < len(steps) else None
    if step_def is not None and step_def.name != step.name:
        step_def = None
    queue = queue_of(step_def, phase) if step_def is not None else None
    if step_def is not None and step_def.saga.local_steps:
        lease = timeout_of(step_def, phase) + conf.LEASE_GRACE
        if continuation.offer(step, state, phase, lease, queue):
            return
    store.schedule_now(step, state)
    timeout = (
        task_time_limit(step_def, phase)
        if step_def is not None
        else float(conf.DEFAULT_STEP_TIMEOUT)
    )
    dispatch.send_on_commit(step.pk, phase, timeout=timeout, queue=queue)


def abandon(saga: Saga, definition: SagaDefinition, reason: str) -> None:
    """Stop a running saga and compensate it (deadline passed, or an operator said so).

    A step waiting to run is cancelled; if an earlier attempt of it may have acted
    (its worker was lost, or it is ``compensate_on_failure``), it is compensated
    too. A step whose attempt is still running is left to settle first: its
    compensation must not run before the action it undoes has ended (a refund
    before the charge). Its record, or the expiry of its lease, goes on with the
    compensation (:func:`settle_abandoned`); no further attempt of it starts.
    """
    below = saga.current_step
    settling: SagaStep | None = None
    for step in store.steps_of(saga):
        if step.state == StepState.RUNNING and not leases.stalled(step):
            settling = step
        elif step.state == StepState.RUNNING:  # its worker is gone: it may have acted
            error = f"{reason} while it ran"
            note_attempt(step, FORWARD, "revoked", Outcome(error=error))
            store.step_gave_up(step, error=error, interrupted=True)
            below = step.index + 1
        elif step.state == StepState.PENDING and step.due_at is not None:
            maybe_acted = step.interrupted or (
                step.attempts > 0 and _step_def(definition, step, "compensate_on_failure")
            )
            store.step_gave_up(
                step,
                error=f"{reason} before its attempt {step.attempts + 1} ran",
                interrupted=True if maybe_acted else None,
            )
            if maybe_acted:
                below = step.index + 1
    saga.state = SagaState.COMPENSATING
    saga.error = reason
    if settling is not None:
        saga.current_step = settling.index
        store.save_saga(saga, "state", "error", "current_step")
        return
    store.save_saga(saga, "state", "error")
    continue_compensation(saga, definition, below=below)


def settle_abandoned(
    saga: Saga, step: SagaStep, step_def: StepDefinition, outcome: Outcome, *, lost: bool = False
) -> None:
    """The attempt that was running when its saga was abandoned has ended: record
    it (a result is kept for the compensation to use), then compensate from it."""
    if outcome.succeeded:
        note_attempt(step, FORWARD, "succeeded", outcome)
        store.step_succeeded(step, outcome.result)
        saga.results = {**saga.results, step.name: outcome.result}
        store.save_saga(saga, "results")
    else:
        note_attempt(step, FORWARD, label(outcome, lost), outcome)
        maybe_acted = (
            lost or outcome.acted or (step_def.compensate_on_failure and not outcome.aborted)
        )
        store.step_gave_up(step, error=outcome.error, interrupted=maybe_acted)
    logger.info(
        "step of an abandoned saga settled; compensating",
        extra=log_extra(saga, step, step.attempts),
    )
    continue_compensation(saga, step_def.saga, below=step.index + 1)


def _step_def(definition: SagaDefinition, step: SagaStep, option: str) -> bool:
    """``option`` of the code's definition of ``step`` (False if the code changed)."""
    if step.index >= len(definition.steps) or definition.steps[step.index].name != step.name:
        return False
    return bool(getattr(definition.steps[step.index], option))


def has_compensation(definition: SagaDefinition, step: SagaStep) -> bool:
    """Whether ``step`` has a compensation to run.

    A stored step the code no longer matches (renamed, reordered, removed while
    the run was in flight) counts as having one: skipping it would leave its
    effect in place and still call the saga ``compensated``. Its compensation's
    claim then makes the run wait for the code of its version, as a forward claim
    of a mismatched step does.
    """
    if step.index >= len(definition.steps):
        return True
    step_def = definition.steps[step.index]
    return step_def.name != step.name or step_def.has_compensation


def wait(step: SagaStep, delay: float, error: str, phase: str, step_def: StepDefinition) -> None:
    """Schedule the next attempt. Short waits ride on a broker countdown; long ones
    wait in PostgreSQL for the sweeper, since broker ETAs beyond the visibility
    timeout are redelivered again and again."""
    via_broker = delay <= conf.MAX_COUNTDOWN
    if step.history:  # the attempt just noted: say when the next one is due
        step.history[-1]["retry_in"] = round(delay, 6)
    store.step_wait(step, delay=delay, error=error, dispatched=via_broker)
    attempt = step.attempts if phase == FORWARD else step.compensation_attempts
    what = "step" if phase == FORWARD else "compensation"
    logger.warning(
        "%s failed, retrying in %.2fs", what, delay, extra=log_extra(step.saga, step, attempt)
    )
    if via_broker:
        dispatch.send_on_commit(
            step.pk,
            phase,
            countdown=delay,
            timeout=task_time_limit(step_def, phase),
            queue=queue_of(step_def, phase),
        )


def fail_saga(saga: Saga, reason: str) -> None:
    store.finish_saga(saga, SagaState.FAILED, error=reason)
    logger.error("saga failed and needs a person: %s", reason, extra=log_extra(saga))
    signal_on_commit(signals.saga_failed, saga, error=reason)
