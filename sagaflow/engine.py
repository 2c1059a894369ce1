"""The engine: runs one step (or compensation) attempt and records what follows.

An attempt is two transactions:

1. **claim** (asynchronous commit): under the run's row lock, check the step is
   waiting and due, take a lease with a fresh token and count the attempt. A
   worker killed mid-step therefore still used up an attempt, so a step that
   crashes its process cannot loop forever (Celery redelivers such messages).
2. **record**: under the lock again, and only if the lease token is still ours,
   store the outcome *and* the intent to run what comes next (the next step, a
   retry, a compensation) in one commit; the message for it is sent after commit.
   ``atomic=True`` steps run inside this transaction, so their writes commit with
   their record or not at all.

A late result from a worker whose lease was taken over (or revoked at a deadline)
no longer holds the token and is dropped. The engine's own step messages do not go
through the outbox: the row that records the intent *is* the durable intent, and
``sweeper.py`` re-sends any message lost between commit and broker.
"""

from __future__ import annotations

import logging
import traceback
import uuid
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from . import dispatch, machine, signals, store
from .conf import conf
from .context import Execution, current_execution, executing
from .definition import Context, SagaDefinition, StepDefinition, StepFunction
from .exceptions import (
    Abort,
    DefinitionError,
    DefinitionMismatchError,
    FaultInjected,
    InvalidInputError,
    NotSerializableError,
    UnknownSagaError,
)
from .faults import fault_point
from .jsonvalue import ensure_json
from .models import Saga, SagaState, SagaStep, StepState
from .registry import get_definition
from .retry import Retry

logger = logging.getLogger("sagaflow.engine")

FORWARD, COMPENSATE = store.FORWARD, store.COMPENSATE


# --- starting ----------------------------------------------------------------------


def start(
    definition: SagaDefinition,
    data: Any = None,
    *,
    key: str | None = None,
    correlation_id: str | None = None,
) -> Saga:
    if not definition.steps:
        raise DefinitionError(
            f"Saga {definition.name!r} has no steps; add one with @{definition.name}.step."
        )
    if key is not None:
        if not isinstance(key, str) or not key:
            raise InvalidInputError(f"key={key!r} must be a non-empty str or None.")
        if len(key) > conf.KEY_MAX_LENGTH:
            raise InvalidInputError(
                f"key is {len(key)} characters long; the limit is {conf.KEY_MAX_LENGTH} "
                f"(SAGAFLOW['KEY_MAX_LENGTH']). Hash long natural keys first."
            )
    if correlation_id is not None and (
        not isinstance(correlation_id, str) or not 0 < len(correlation_id) <= 200
    ):
        raise InvalidInputError(
            f"correlation_id={correlation_id!r} must be a str of 1 to 200 characters."
        )
    data = ensure_json(data, "data")
    if correlation_id is None and (outer := current_execution()) is not None:
        correlation_id = outer.correlation_id

    with transaction.atomic():
        saga, created = store.insert_run(
            name=definition.name,
            key=key,
            data=data,
            correlation_id=correlation_id,
            deadline=definition.deadline,
            step_names=[s.name for s in definition.steps],
        )
        if created:
            first = definition.steps[0]
            step_id = SagaStep.objects.values_list("pk", flat=True).get(saga=saga, index=0)
            dispatch.send_on_commit(step_id, FORWARD, timeout=_timeout(first, FORWARD))
            _signal_on_commit(signals.saga_started, saga)
            logger.info("saga started", extra=_log(saga))
    return saga


# --- running one attempt -----------------------------------------------------------------


@dataclass
class Claim:
    step_id: int
    phase: str
    token: uuid.UUID
    attempt: int
    definition: SagaDefinition
    step_def: StepDefinition
    context: Context


@dataclass
class Outcome:
    result: Any = None
    error: str = ""
    aborted: bool = False
    retryable: bool = True

    @property
    def succeeded(self) -> bool:
        return not self.error


def execute(step_id: int, phase: str) -> None:
    """Run one attempt of step ``step_id`` in ``phase`` if it is still due.

    Safe to call any number of times for the same message: a duplicate finds the
    step leased or finished and does nothing.
    """
    claim = _claim(step_id, phase, uuid.uuid4())
    if claim is None:
        return
    fault_point("step.after_claim")
    if phase == FORWARD and claim.step_def.atomic:
        with transaction.atomic():
            step = store.lock_step(step_id)
            if step is None or not store.holds_lease(step, claim.token, phase):
                _reject_stale(claim)
                return
            outcome = _run(claim, _function(claim), savepoint=True)
            fault_point("step.after_action")  # a crash here rolls the step's writes back
            _record(step, claim, outcome)
        fault_point("step.after_record")
        return
    outcome = _run(claim, _function(claim), savepoint=False)
    fault_point("step.after_action" if phase == FORWARD else "compensation.after_action")
    if _record_if_current(claim, outcome):
        fault_point("step.after_record")


def _record_if_current(claim: Claim, outcome: Outcome) -> bool:
    """Record the outcome of a non-atomic attempt unless its lease was lost meanwhile."""
    with transaction.atomic():
        step = store.lock_step(claim.step_id)
        if step is None or not store.holds_lease(step, claim.token, claim.phase):
            _reject_stale(claim)
            return False
        _record(step, claim, outcome)
    return True


def _function(claim: Claim) -> StepFunction:
    if claim.phase == FORWARD:
        return claim.step_def.fn
    assert claim.step_def.compensation_def is not None
    return claim.step_def.compensation_def.fn


def _claim(step_id: int, phase: str, token: uuid.UUID) -> Claim | None:
    with transaction.atomic():
        store.relax_durability()
        step = store.lock_step(step_id)
        if step is None or not store.is_claimable(step, phase):
            logger.debug("step %s (%s): nothing to do", step_id, phase)
            return None
        saga = step.saga
        try:
            definition, step_def = _resolve(saga, step)
        except (UnknownSagaError, DefinitionMismatchError) as exc:
            store.step_gave_up(step, error=str(exc))
            _fail_saga(saga, str(exc))
            return None
        if phase == COMPENSATE and step_def.compensation_def is None:
            error = (
                f"step {step.name!r} of saga {saga.name!r} is due for compensation but "
                f"the code no longer defines one (the definition changed mid-run)."
            )
            store.step_gave_up(step, error=error)
            _fail_saga(saga, error)
            return None
        lease = _timeout(step_def, phase) + conf.LEASE_GRACE
        attempt = store.claim(step, phase, token, lease)
    context = Context(
        saga_id=saga.id,
        saga_name=saga.name,
        step=step.name,
        data=saga.data,
        results=dict(saga.results),
        idempotency_key=idempotency_key(saga.id, step.index, step.name, phase),
        attempt=attempt,
        correlation_id=saga.correlation_id,
        compensating=phase == COMPENSATE,
    )
    return Claim(step_id, phase, token, attempt, definition, step_def, context)


def idempotency_key(saga_id: uuid.UUID, index: int, name: str, phase: str) -> str:
    """Stable for one step of one run; different per step and for its compensation."""
    suffix = ":compensation" if phase == COMPENSATE else ""
    return f"sagaflow:{saga_id}:{index}:{name}{suffix}"


def _resolve(saga: Saga, step: SagaStep) -> tuple[SagaDefinition, StepDefinition]:
    definition = get_definition(saga.name)
    code_names = [s.name for s in definition.steps]
    if step.index >= len(code_names) or code_names[step.index] != step.name:
        found = code_names[step.index] if step.index < len(code_names) else "nothing"
        raise DefinitionMismatchError(
            f"Saga {saga.name!r} run {saga.id}: stored step {step.index} is {step.name!r} "
            f"but the code's step {step.index} is {found!r} (code steps: {code_names}). "
            f"The definition changed while this run was in flight; the run was stopped "
            f"rather than run the wrong step. Keep old step names until in-flight runs end."
        )
    return definition, definition.steps[step.index]


def _run(claim: Claim, fn: StepFunction, *, savepoint: bool) -> Outcome:
    ctx = claim.context
    execution = Execution(
        saga_id=str(ctx.saga_id),
        step=ctx.step,
        attempt=ctx.attempt,
        correlation_id=ctx.correlation_id,
        idempotency_key=ctx.idempotency_key,
    )
    try:
        with executing(execution):
            if savepoint:
                with transaction.atomic():
                    value = fn(ctx)
                    result = ensure_json(value, f"result of step {ctx.step!r}")
            else:
                value = fn(ctx)
                result = ensure_json(value, f"result of step {ctx.step!r}")
    except FaultInjected:
        raise  # a simulated crash, not an outcome
    except Abort as exc:
        return Outcome(error=f"Abort: {exc.reason}", aborted=True)
    except NotSerializableError as exc:
        return Outcome(error=str(exc), retryable=False)
    except Exception as exc:  # any failure of user code is an outcome to record
        return Outcome(error=_describe(exc))
    if claim.phase == COMPENSATE:
        result = None
    return Outcome(result=result)


def _describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).strip()[-4000:]


def _reject_stale(claim: Claim) -> None:
    logger.warning(
        "stale result rejected: the lease of attempt %s was taken over or revoked",
        claim.attempt,
        extra=_log_ctx(claim.context),
    )


# --- recording outcomes (caller holds the run's lock) -----------------------------------


def _record(step: SagaStep, claim: Claim, outcome: Outcome) -> None:
    saga = step.saga
    if claim.phase == FORWARD:
        if outcome.succeeded:
            _forward_succeeded(saga, step, claim, outcome.result)
        else:
            _forward_failed(saga, step, claim.step_def, outcome)
    elif outcome.succeeded:
        store.step_compensated(step)
        logger.info("step compensated", extra=_log(saga, step, step.compensation_attempts))
        _continue_compensation(saga, claim.definition, below=step.index)
    else:
        _compensation_failed(saga, step, claim.step_def, outcome)


def _forward_succeeded(saga: Saga, step: SagaStep, claim: Claim, result: Any) -> None:
    store.step_succeeded(step, result)
    saga.results = {**saga.results, step.name: result}
    logger.info("step succeeded", extra=_log(saga, step, step.attempts))
    _signal_on_commit(signals.step_succeeded, saga, step=step.name, attempt=step.attempts)
    following = store.next_step(step)
    if following is None:
        saga.current_step = step.index + 1
        store.finish_saga(saga, SagaState.COMPLETED, also=("results", "current_step"))
        logger.info("saga completed", extra=_log(saga))
        _signal_on_commit(signals.saga_completed, saga)
        return
    store.schedule_now(following, StepState.PENDING)
    saga.current_step = following.index
    store.save_saga(saga, "results", "current_step")
    steps = claim.definition.steps
    # A stored step the code no longer has is stopped with a clear error at its claim.
    timeout = (
        _timeout(steps[following.index], FORWARD)
        if following.index < len(steps)
        else float(conf.DEFAULT_STEP_TIMEOUT)
    )
    dispatch.send_on_commit(following.pk, FORWARD, timeout=timeout)


def _forward_failed(
    saga: Saga,
    step: SagaStep,
    step_def: StepDefinition,
    outcome: Outcome,
    *,
    interrupted: bool | None = None,
) -> None:
    retry = _retry(step_def, FORWARD)
    decision = machine.after_step_failure(
        index=step.index,
        attempts=step.attempts,
        retry=retry,
        aborted=outcome.aborted,
        retryable=outcome.retryable,
    )
    _signal_on_commit(
        signals.step_failed, saga, step=step.name, attempt=step.attempts, error=outcome.error
    )
    if isinstance(decision, machine.RetryLater):
        if interrupted:
            store.mark_interrupted(step)
        _wait(step, decision.delay, outcome.error, FORWARD, step_def)
        logger.warning(
            "step failed, retrying in %.2fs", decision.delay, extra=_log(saga, step, step.attempts)
        )
        return
    store.step_gave_up(step, error=outcome.error, interrupted=interrupted)
    logger.warning("step failed for good; compensating", extra=_log(saga, step, step.attempts))
    saga.state = SagaState.COMPENSATING
    saga.error = f"step {step.name!r} failed: {outcome.error.splitlines()[-1][:500]}"
    store.save_saga(saga, "state", "error")
    _continue_compensation(saga, step_def.saga, below=decision.below)


def _compensation_failed(
    saga: Saga, step: SagaStep, step_def: StepDefinition, outcome: Outcome
) -> None:
    decision = machine.after_compensation_failure(
        attempts=step.compensation_attempts,
        retry=_retry(step_def, COMPENSATE),
        aborted=outcome.aborted,
        step=step.name,
        error=outcome.error.splitlines()[-1][:500] if outcome.error else "",
    )
    if isinstance(decision, machine.RetryLater):
        _wait(step, decision.delay, outcome.error, COMPENSATE, step_def)
        logger.warning(
            "compensation failed, retrying in %.2fs",
            decision.delay,
            extra=_log(saga, step, step.compensation_attempts),
        )
        return
    store.step_gave_up(step, error=outcome.error)
    _fail_saga(saga, decision.reason)


def _continue_compensation(saga: Saga, definition: SagaDefinition, *, below: int) -> None:
    views = [
        machine.StepView(
            index=s.index,
            state=s.state,
            has_compensation=_has_compensation(definition, s),
            interrupted=s.interrupted,
        )
        for s in store.steps_of(saga)
    ]
    index = machine.next_to_compensate(views, below)
    if index is None:
        store.finish_saga(saga, SagaState.COMPENSATED)
        logger.info("saga compensated", extra=_log(saga))
        _signal_on_commit(signals.saga_compensated, saga)
        return
    step = SagaStep.objects.get(saga=saga, index=index)
    store.schedule_now(step, StepState.COMPENSATING)
    saga.current_step = index
    store.save_saga(saga, "current_step")
    step_def = definition.steps[index]
    dispatch.send_on_commit(step.pk, COMPENSATE, timeout=_timeout(step_def, COMPENSATE))


def _has_compensation(definition: SagaDefinition, step: SagaStep) -> bool:
    if step.index >= len(definition.steps):
        return False
    step_def = definition.steps[step.index]
    return step_def.name == step.name and step_def.has_compensation


def _wait(step: SagaStep, delay: float, error: str, phase: str, step_def: StepDefinition) -> None:
    """Schedule the next attempt. Short waits ride on a broker countdown; long ones
    wait in PostgreSQL for the sweeper, since broker ETAs beyond the visibility
    timeout are redelivered again and again."""
    via_broker = delay <= conf.MAX_COUNTDOWN
    store.step_wait(step, delay=delay, error=error, dispatched=via_broker)
    if via_broker:
        dispatch.send_on_commit(step.pk, phase, countdown=delay, timeout=_timeout(step_def, phase))


def _fail_saga(saga: Saga, reason: str) -> None:
    store.finish_saga(saga, SagaState.FAILED, error=reason)
    logger.error("saga failed and needs a person: %s", reason, extra=_log(saga))
    _signal_on_commit(signals.saga_failed, saga, error=reason)


# --- recovery (called by the sweeper) ------------------------------------------------------


def recover_expired_lease(step_id: int) -> bool:
    """The worker holding this step's lease is gone (or overran): count it as a failed
    attempt that may have had its effect. Returns whether anything changed."""
    with transaction.atomic():
        step = store.lock_step(step_id)
        if step is None or not store.stalled(step):
            return False
        saga = step.saga
        phase = FORWARD if step.state == StepState.RUNNING else COMPENSATE
        try:
            _, step_def = _resolve(saga, step)
        except (UnknownSagaError, DefinitionMismatchError) as exc:
            store.step_gave_up(step, error=str(exc))
            _fail_saga(saga, str(exc))
            return True
        attempt = step.attempts if phase == FORWARD else step.compensation_attempts
        error = (
            f"lease of attempt {attempt} expired: the worker was lost or the step ran past "
            f"its timeout of {_timeout(step_def, phase):g}s"
        )
        if phase == FORWARD:
            _forward_failed(saga, step, step_def, Outcome(error=error), interrupted=True)
        else:
            _compensation_failed(saga, step, step_def, Outcome(error=error))
    return True


def enforce_deadline(saga_id: uuid.UUID) -> bool:
    """Compensate a run that is past its deadline; the step in flight counts as
    possibly done and its late result will be rejected."""
    with transaction.atomic():
        saga = store.lock_saga(saga_id)
        if saga is None or saga.state != SagaState.RUNNING or saga.deadline_at is None:
            return False
        if saga.deadline_at >= saga.db_now:  # type: ignore[attr-defined]
            return False
        try:
            definition = get_definition(saga.name)
        except UnknownSagaError as exc:
            _fail_saga(saga, str(exc))
            return True
        error = f"deadline {saga.deadline_at.isoformat()} passed"
        below = saga.current_step
        for step in store.steps_of(saga):
            if step.state == StepState.RUNNING:
                store.step_gave_up(step, error=f"{error} while it ran", interrupted=True)
                below = step.index + 1
            elif step.state == StepState.PENDING and step.due_at is not None:
                store.step_gave_up(step, error=f"{error} before it ran")
        saga.state = SagaState.COMPENSATING
        saga.error = error
        store.save_saga(saga, "state", "error")
        logger.warning("saga past its deadline; compensating", extra=_log(saga))
        _continue_compensation(saga, definition, below=below)
    return True


def redispatch(item: store.Redispatch) -> None:
    try:
        step_def = get_definition(item.saga_name).steps[item.index]
        timeout = _timeout(step_def, item.phase)
    except (UnknownSagaError, IndexError):
        timeout = conf.DEFAULT_STEP_TIMEOUT  # the claim will stop the run with a clear error
    dispatch.send(item.step_id, item.phase, timeout=timeout)


# --- helpers -----------------------------------------------------------------------------------


def _timeout(step_def: StepDefinition, phase: str) -> float:
    if phase == COMPENSATE and step_def.compensation_def and step_def.compensation_def.timeout:
        return step_def.compensation_def.timeout
    return step_def.timeout or float(conf.DEFAULT_STEP_TIMEOUT)


def _retry(step_def: StepDefinition, phase: str) -> Retry:
    if phase == COMPENSATE and step_def.compensation_def and step_def.compensation_def.retry:
        return step_def.compensation_def.retry
    return step_def.retry or Retry(
        attempts=conf.DEFAULT_RETRY_ATTEMPTS,
        backoff=conf.DEFAULT_RETRY_BACKOFF,
        max_backoff=conf.DEFAULT_RETRY_MAX_BACKOFF,
    )


def _signal_on_commit(signal: Any, saga: Saga, **kwargs: Any) -> None:
    def send() -> None:
        signal.send_robust(sender=Saga, saga=saga, **kwargs)

    transaction.on_commit(send, robust=True)


def _log(saga: Saga, step: SagaStep | None = None, attempt: int | None = None) -> dict:
    extra: dict[str, Any] = {
        "saga_id": str(saga.id),
        "saga_name": saga.name,
        "correlation_id": saga.correlation_id,
    }
    if step is not None:
        extra["step"] = step.name
        extra["attempt"] = attempt
    return extra


def _log_ctx(ctx: Context) -> dict:
    return {
        "saga_id": str(ctx.saga_id),
        "saga_name": ctx.saga_name,
        "step": ctx.step,
        "attempt": ctx.attempt,
        "correlation_id": ctx.correlation_id,
    }
