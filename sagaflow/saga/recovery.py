"""Recovery of runs whose worker, message or deadline was lost (called by the sweeper).

Every function re-checks its condition under the run's row lock, so two sweeps at
once (two beat processes) or a sweep racing a late worker act once. A run whose
code is missing (its version, or its steps, are not in this deploy) is left as it
is, flagged, and looked at again later: recovery never fails or compensates a run
because of a deploy.
"""

from __future__ import annotations

import logging
import uuid

from django.db import transaction

from ..conf import conf
from ..exceptions import DefinitionMismatchError, UnknownSagaError
from ..models import Saga, SagaState, SagaStep, StepState
from . import dispatch, leases, scans, store
from .attempts import (
    COMPENSATE,
    FORWARD,
    Outcome,
    definition_of,
    log_extra,
    queue_of,
    resolve,
    task_time_limit,
    timeout_of,
)
from .registry import get_definition
from .transitions import (
    abandon,
    compensation_failed,
    forward_failed,
    settle_abandoned,
)

logger = logging.getLogger("sagaflow.engine")


def recover_expired_lease(step_id: int) -> bool:
    """The worker holding this step's lease is gone (or overran): count it as a failed
    attempt that may have had its effect. Returns whether anything changed."""
    with transaction.atomic():
        # SKIP LOCKED: a run whose lock a frozen worker holds is left for a later
        # sweep (PostgreSQL ends that session: IDLE_IN_TRANSACTION_TIMEOUT), so it
        # never delays the recovery of the others.
        step = store.lock_step(step_id, skip_locked=True)
        if step is None or not leases.stalled(step):
            return False
        saga = step.saga
        phase = FORWARD if step.state == StepState.RUNNING else COMPENSATE
        try:
            _, step_def = resolve(saga, step)
        except (UnknownSagaError, DefinitionMismatchError) as exc:
            # What follows a lost attempt (a retry? compensation?) is the code's to
            # say: keep the lease a while longer and ask again then.
            _wait_for_code(saga, str(exc), step)
            return True
        if store.code_is_back(saga):
            logger.warning("the code of the run's version is back; going on", extra=log_extra(saga))
        attempt = step.attempts if phase == FORWARD else step.compensation_attempts
        error = (
            f"lease of attempt {attempt} expired: the worker was lost or the step ran past "
            f"its timeout of {timeout_of(step_def, phase):g}s"
        )
        if phase == FORWARD and saga.state == SagaState.COMPENSATING:
            settle_abandoned(saga, step, step_def, Outcome(error=error), lost=True)
        elif phase == FORWARD:
            forward_failed(saga, step, step_def, Outcome(error=error), interrupted=True)
        else:
            compensation_failed(saga, step, step_def, Outcome(error=error), lost=True)
    return True


def enforce_deadline(saga_id: uuid.UUID) -> bool:
    """Compensate a run that is past its deadline; the step in flight counts as
    possibly done and its late result will be rejected."""
    with transaction.atomic():
        saga = store.lock_saga(saga_id, skip_locked=True)
        if saga is None or saga.state != SagaState.RUNNING or saga.deadline_at is None:
            return False
        if saga.deadline_at >= saga.db_now:  # type: ignore[attr-defined]
            return False
        try:
            definition = definition_of(saga)
        except (UnknownSagaError, DefinitionMismatchError) as exc:
            # Compensating needs the code too. The deadline scan skips flagged runs;
            # the claim that finds the code back clears the flag, and the next
            # sweep compensates the run.
            return _wait_for_code(saga, str(exc))
        abandon(saga, definition, f"deadline {saga.deadline_at.isoformat()} passed")
        logger.warning("saga past its deadline; compensating", extra=log_extra(saga))
    return True


def redispatch(item: scans.Redispatch) -> None:
    """Send a lost step message again, to the step's own queue."""
    try:
        step_def = get_definition(item.saga_name, item.version).steps[item.index]
        timeout, queue = task_time_limit(step_def, item.phase), queue_of(step_def, item.phase)
    except (UnknownSagaError, IndexError):
        # The claim makes the run wait for its code (and looks again each resend).
        timeout, queue = conf.DEFAULT_STEP_TIMEOUT, None
    dispatch.send(item.step_id, item.phase, timeout=timeout, queue=queue)


def _wait_for_code(saga: Saga, reason: str, step: SagaStep | None = None) -> bool:
    newly = store.wait_for_code(saga, reason, step)
    if newly:
        logger.error("saga waits for its code: %s", reason, extra=log_extra(saga, step))
    return newly
