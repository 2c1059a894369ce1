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
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from .. import signals
from ..conf import conf
from ..context import Execution, current_execution, executing
from ..exceptions import (
    Abort,
    DefinitionError,
    DefinitionMismatchError,
    FaultInjected,
    InvalidInputError,
    NotSerializableError,
    UnknownSagaError,
)
from ..faults import fault_point
from ..jsonvalue import ensure_json
from ..models import Saga, SagaState, SagaStep
from . import continuation, creation, dispatch, leases, registry, rows, store
from .attempts import (
    COMPENSATE,
    FORWARD,
    Outcome,
    log_extra,
    queue_for,
    queue_of,
    resolve,
    signal_on_commit,
    task_time_limit,
    timeout_of,
)
from .definition import Context, SagaDefinition, StepDefinition, StepFunction
from .registry import needs_code
from .transitions import record

logger = logging.getLogger("sagaflow.engine")


# --- starting ----------------------------------------------------------------------


def start(
    definition: SagaDefinition,
    data: Any = None,
    *,
    key: str | None = None,
    correlation_id: str | None = None,
) -> Saga:
    # New runs start on the highest version of the name, whichever version's
    # object was asked; the run then keeps to it (version and step fingerprint).
    definition = registry.highest(definition)
    if not definition.steps:
        raise DefinitionError(
            f"Saga {definition.name!r} has no steps; add one with @{definition.name}.step."
        )
    if key is not None:
        if not isinstance(key, str) or not key or "\x00" in key:
            raise InvalidInputError(
                f"key={key!r:.80} must be a non-empty str without NUL characters, or None."
            )
        if len(key) > conf.KEY_MAX_LENGTH:
            raise InvalidInputError(
                f"key is {len(key)} characters long; the limit is {conf.KEY_MAX_LENGTH} "
                f"(SAGAFLOW['KEY_MAX_LENGTH']). Hash long natural keys first."
            )
    if correlation_id is not None and (
        not isinstance(correlation_id, str)
        or not 0 < len(correlation_id) <= 200
        or "\x00" in correlation_id
    ):
        raise InvalidInputError(
            f"correlation_id={correlation_id!r:.80} must be a str of 1 to 200 characters "
            f"without NUL characters."
        )
    data = ensure_json(data, "data")
    if correlation_id is None and (outer := current_execution()) is not None:
        correlation_id = outer.correlation_id

    with transaction.atomic():
        saga, first_step_id = creation.insert_run(
            name=definition.name,
            key=key,
            data=data,
            correlation_id=correlation_id,
            deadline=definition.deadline,
            step_names=[s.name for s in definition.steps],
            version=definition.version,
            steps_fingerprint=definition.fingerprint,
        )
        if first_step_id is not None:
            first = definition.steps[0]
            dispatch.send_on_commit(
                first_step_id,
                FORWARD,
                timeout=task_time_limit(first, FORWARD),
                queue=queue_of(first, FORWARD),
            )
            signal_on_commit(signals.saga_started, saga)
            logger.info("saga started", extra=log_extra(saga))
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


def execute(step_id: int, phase: str) -> None:
    """Run one attempt of step ``step_id`` in ``phase`` if it is still due.

    Safe to call any number of times for the same message: a duplicate finds the
    step leased or finished and does nothing. For a saga with local steps, the
    attempts that follow run here too, each claimed by its predecessor's record.
    """
    claim = _claim(step_id, phase, uuid.uuid4())
    while claim is not None:
        claim = _attempt(claim)


def _attempt(claim: Claim) -> Claim | None:
    """Run and record one claimed attempt; returns the local attempt it claimed, if any."""
    fault_point("step.after_claim")
    with continuation.accepting(queue_of(claim.step_def, claim.phase)) as following:
        if claim.phase == FORWARD and claim.step_def.atomic:
            with transaction.atomic():
                step = store.lock_step(
                    claim.step_id,
                    with_next=True,
                    hold_for=timeout_of(claim.step_def, claim.phase),
                )
                if step is None or not leases.holds_lease(step, claim.token, claim.phase):
                    _reject_stale(claim)
                    return None
                if step.saga.state != SagaState.RUNNING:
                    # Abandoned (deadline, operator) between claim and lock: the
                    # action has not run, so nothing of it is left to undo.
                    with rows.batched_writes():
                        record(step, claim.phase, claim.step_def, _REVOKED_BEFORE_RUN)
                    return None
                outcome = _run(claim, _function(claim), savepoint=True)
                fault_point("step.after_action")  # a crash here rolls the step's writes back
                with rows.batched_writes():
                    record(step, claim.phase, claim.step_def, outcome)
        else:
            outcome = _run(claim, _function(claim), savepoint=False)
            fault_point(
                "step.after_action" if claim.phase == FORWARD else "compensation.after_action"
            )
            if not _record_if_current(claim, outcome):
                return None
    fault_point("step.after_record")
    if not following:
        return None
    local = following[0]
    step_def = claim.definition.steps[local.step.index]
    context = _context(local.step.saga, local.step, local.phase, local.attempt)
    return Claim(
        local.step.pk, local.phase, local.token, local.attempt, claim.definition, step_def, context
    )


#: The outcome of an atomic step whose run was abandoned before its action ran.
_REVOKED_BEFORE_RUN = Outcome(error="the run was abandoned before the step ran", aborted=True)


def _record_if_current(claim: Claim, outcome: Outcome) -> bool:
    """Record the outcome of a non-atomic attempt unless its lease was lost meanwhile."""
    with transaction.atomic():
        step = store.lock_step(claim.step_id, with_next=True)
        if step is None or not leases.holds_lease(step, claim.token, claim.phase):
            _reject_stale(claim)
            return False
        with rows.batched_writes():
            record(step, claim.phase, claim.step_def, outcome)
    return True


def _function(claim: Claim) -> StepFunction:
    if claim.phase == FORWARD:
        return claim.step_def.fn
    assert claim.step_def.compensation_def is not None
    return claim.step_def.compensation_def.fn


def _claim(step_id: int, phase: str, token: uuid.UUID) -> Claim | None:
    with transaction.atomic(), rows.batched_writes():
        store.relax_durability()
        step = store.lock_step(step_id)
        if step is None or not leases.is_claimable(step, phase):
            if step is not None and (early := leases.due_in(step, phase)) is not None:
                # Delivered before its countdown ran out (the sender's clock is
                # behind this worker's): send it again for the rest of the wait,
                # rather than leave the step to the sweeper's REDISPATCH_AFTER.
                dispatch.send_on_commit(
                    step_id,
                    phase,
                    countdown=early + _EARLY_MARGIN,
                    queue=queue_for(step.saga, step, phase),
                )
                return None
            logger.debug("step %s (%s): nothing to do", step_id, phase)
            return None
        saga = step.saga
        try:
            definition, step_def = resolve(saga, step)
        except (UnknownSagaError, DefinitionMismatchError) as exc:
            _wait_for_code(saga, step, str(exc))
            return None
        if phase == COMPENSATE and step_def.compensation_def is None:
            _wait_for_code(
                saga,
                step,
                f"{needs_code(saga.name, saga.version)}: step {step.name!r} is due for "
                f"compensation but this code's version {saga.version} defines no "
                f"compensation for it (it was removed in place). Restore it.",
            )
            return None
        if store.code_is_back(saga):
            logger.warning("the code of the run's version is back; going on", extra=log_extra(saga))
            if phase == FORWARD and _past_deadline(saga):
                # It waited past its deadline: the sweeper's deadline scan, which
                # skipped it while it waited, compensates it now; no step starts.
                return None
        lease = timeout_of(step_def, phase) + conf.LEASE_GRACE
        attempt = store.claim(step, phase, token, lease)
    context = _context(saga, step, phase, attempt)
    return Claim(step_id, phase, token, attempt, definition, step_def, context)


def _past_deadline(saga: Saga) -> bool:
    return saga.deadline_at is not None and saga.deadline_at < saga.db_now  # type: ignore[attr-defined]


def _wait_for_code(saga: Saga, step: SagaStep, reason: str) -> None:
    """Neither run, fail nor compensate a run whose code is missing: leave the step
    due, to be claimed again once a deploy brings the code back (the sweeper
    resends its message). A deploy must never change what a run in flight does."""
    if store.wait_for_code(saga, reason, step):
        logger.error("saga waits for its code: %s", reason, extra=log_extra(saga, step))


#: Added to the rest of an early message's wait, so the resent one is not early too.
_EARLY_MARGIN = 0.05


def _context(saga: Saga, step: SagaStep, phase: str, attempt: int) -> Context:
    return Context(
        saga_id=saga.id,
        saga_name=saga.name,
        step=step.name,
        data=saga.data,
        results=dict(saga.results),
        idempotency_key=idempotency_key(saga.id, step.index, step.name, phase),
        step_key=idempotency_key(saga.id, step.index, step.name, FORWARD),
        attempt=attempt,
        correlation_id=saga.correlation_id,
        compensating=phase == COMPENSATE,
    )


def idempotency_key(saga_id: uuid.UUID, index: int, name: str, phase: str) -> str:
    """Stable for one step of one run; different per step and for its compensation."""
    suffix = ":compensation" if phase == COMPENSATE else ""
    return f"sagaflow:{saga_id}:{index}:{name}{suffix}"


def _run(claim: Claim, fn: StepFunction, *, savepoint: bool) -> Outcome:
    ctx = claim.context
    execution = Execution(
        saga_id=str(ctx.saga_id),
        step=ctx.step,
        attempt=ctx.attempt,
        correlation_id=ctx.correlation_id,
        idempotency_key=ctx.idempotency_key,
    )
    started = time.monotonic()
    outcome = _outcome(claim, fn, execution, savepoint=savepoint)
    outcome.duration = time.monotonic() - started
    return outcome


def _outcome(claim: Claim, fn: StepFunction, execution: Execution, *, savepoint: bool) -> Outcome:
    ctx = claim.context
    # A compensation's return value is thrown away, so it is never checked; a
    # step's must be JSON, and one that is not was returned by a step that ran:
    # it acted, so it counts as possibly done and is compensated (not retried).
    check = claim.phase == FORWARD
    try:
        with executing(execution):
            if savepoint:
                with transaction.atomic():
                    result = _result(fn(ctx), ctx, check)
            else:
                result = _result(fn(ctx), ctx, check)
    except FaultInjected:
        raise  # a simulated crash, not an outcome
    except Abort as exc:
        return Outcome(error=f"Abort: {exc.reason}", aborted=True)
    except _ResultNotJSON as exc:
        return Outcome(error=str(exc.__cause__), retryable=False, acted=True)
    except Exception as exc:  # any failure of user code is an outcome to record
        return Outcome(error=_describe(exc))
    return Outcome(result=result)


class _ResultNotJSON(Exception):
    """The step ran and returned a value that cannot be stored (the cause says why)."""


def _result(value: Any, ctx: Context, check: bool) -> Any:
    if not check:
        return None
    try:
        return ensure_json(value, f"result of step {ctx.step!r}")
    except NotSerializableError as exc:
        raise _ResultNotJSON from exc


def _describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).strip()[-4000:]


def _reject_stale(claim: Claim) -> None:
    logger.warning(
        "stale result rejected: the lease of attempt %s was taken over or revoked",
        claim.attempt,
        extra=_log_context(claim.context),
    )


def _log_context(ctx: Context) -> dict:
    return {
        "saga_id": str(ctx.saga_id),
        "saga_name": ctx.saga_name,
        "step": ctx.step,
        "attempt": ctx.attempt,
        "correlation_id": ctx.correlation_id,
    }
