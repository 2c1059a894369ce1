"""Every query on ``Saga`` and ``SagaStep``.

The engine decides; this module reads and writes. Rows of one run are only
changed while its ``Saga`` row is locked (``SELECT … FOR UPDATE``), so a worker, a
late zombie worker and the sweeper acting on the same run are serialised and no
read-modify-write is lost. (The one exception, the sweeper stamping a lost message
as sent again, touches only ``dispatched_at`` under the step's own row lock.)
Times are the database's clock (``now()``), never a worker's, so drifting clocks
cannot make a lease look alive or dead.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from django.db.models import (
    DateTimeField,
    ExpressionWrapper,
    Subquery,
)
from django.db.models.functions import Now

from ..conf import conf
from ..models import Saga, SagaStep, StepState
from . import rows

FORWARD = "forward"
COMPENSATE = "compensate"


def now_plus(seconds: float) -> ExpressionWrapper:
    return ExpressionWrapper(Now() + timedelta(seconds=seconds), output_field=DateTimeField())


def now_minus(seconds: float) -> ExpressionWrapper:
    return ExpressionWrapper(Now() - timedelta(seconds=seconds), output_field=DateTimeField())


def relax_durability() -> None:
    """Make the current transaction's commit asynchronous (PostgreSQL only).

    Used for claims: a claim lost in a database crash only costs a repeated
    attempt (the recorded outcome is fenced by the lease token and the action is
    idempotent), so it need not wait for a WAL flush.
    """
    if rows.native():
        rows.execute("SET LOCAL synchronous_commit TO OFF")


# --- locking and reading one run ----------------------------------------------------


def lock_step(
    step_id: int,
    *,
    with_next: bool = False,
    skip_locked: bool = False,
    hold_for: float | None = None,
) -> SagaStep | None:
    """The step with its saga, the saga row locked until the transaction ends.

    Two statements on purpose: the step is read *after* the lock is granted. Read
    in the same statement (a join with ``FOR UPDATE OF saga``), a waiter would get
    the step row as it was before the lock holder's commit (READ COMMITTED re-checks
    only the locked row), and two workers could claim the same attempt. With
    ``with_next``, the step after it is read too (for :func:`next_step`).

    The transaction's waits are bounded in the same round trip (:func:`_limits`).
    ``hold_for`` is how long the caller may keep the lock (an atomic step runs its
    action under it): then the bounds are set in a statement of their own after
    the lock, because PostgreSQL arms its idle-in-transaction timer only when the
    last message it read was a Sync, and psycopg's pipeline ends with a Flush. A
    worker frozen in its action is so ended by PostgreSQL; one frozen in the
    milliseconds between a record's statements and its commit keeps its lock
    until its process ends (the sweeper skips that run meanwhile).
    With ``skip_locked`` a run whose lock someone else holds gives ``None`` at once:
    the sweeper must never wait behind one frozen lock holder.
    """
    lock = FOR_UPDATE_SKIP_LOCKED if skip_locked else FOR_UPDATE
    if rows.native():
        of_step = "(SELECT saga_id FROM sagaflow_sagastep WHERE id = %s)"
        queries: list[rows.Query] = [
            (Saga, f"id = {of_step}", [step_id], lock),
            (SagaStep, "id = %s", [step_id], ""),
        ]
        if with_next:
            after = '"index" = (SELECT "index" + 1 FROM sagaflow_sagastep WHERE id = %s)'
            queries.append((SagaStep, f"saga_id = {of_step} AND {after}", [step_id, step_id], ""))
        prelude = [_limits(None)] if hold_for is None else []
        found = rows.select_many(queries, prelude=prelude)
        if not found[0]:
            return None
        if hold_for is not None:
            rows.execute(*_limits(hold_for))
        saga = found[0][0]
        step = found[1][0] if found[1] else None
        if step is not None and with_next:
            successor = found[2][0] if found[2] else None
            if successor is not None:
                successor.saga = saga
            step._successor = successor
    else:
        saga_id = SagaStep.objects.filter(pk=step_id).values("saga_id")
        saga = lock_saga(Subquery(saga_id), skip_locked=skip_locked)
        if saga is None:
            return None
        step = SagaStep.objects.annotate(db_now=Now()).filter(pk=step_id).order_by().first()
    if step is not None:
        step.saga = saga
    return step


FOR_UPDATE = "FOR UPDATE"
FOR_UPDATE_SKIP_LOCKED = "FOR UPDATE SKIP LOCKED"


def _limits(hold_for: float | None) -> tuple[str, list]:
    if hold_for is None:
        return rows.transaction_limits(
            lock_timeout=conf.LOCK_TIMEOUT,
            statement_timeout=conf.STATEMENT_TIMEOUT,
            idle_timeout=conf.IDLE_IN_TRANSACTION_TIMEOUT,
        )
    bound = hold_for + conf.LEASE_GRACE
    return rows.transaction_limits(
        lock_timeout=conf.LOCK_TIMEOUT, statement_timeout=bound, idle_timeout=bound
    )


def lock_saga(saga_id: uuid.UUID | str | Subquery, *, skip_locked: bool = False) -> Saga | None:
    if rows.native() and not isinstance(saga_id, Subquery):
        lock = FOR_UPDATE_SKIP_LOCKED if skip_locked else FOR_UPDATE
        found = rows.select_many([(Saga, "id = %s", [saga_id], lock)], prelude=[_limits(None)])[0]
        return found[0] if found else None
    return (
        Saga.objects.select_for_update(skip_locked=skip_locked)
        .annotate(db_now=Now())
        .filter(pk=saga_id)
        .order_by()
        .first()
    )


def steps_of(saga: Saga) -> list[SagaStep]:
    """The run's steps, read after its lock (``db_now``: this statement's time)."""
    if rows.native():
        found = rows.select(SagaStep, "saga_id = %s", [saga.pk], 'ORDER BY "index"')
    else:
        found = list(SagaStep.objects.filter(saga=saga).annotate(db_now=Now()).order_by("index"))
    for step in found:
        step.saga = saga
    return found


# --- step transitions (caller holds the saga lock) ----------------------------------


def claim(
    step: SagaStep, phase: str, token: uuid.UUID, lease_seconds: float, state: str | None = None
) -> int:
    """Start an attempt (moving the step to ``state`` first); returns its number (1-based)."""
    step.lease_token = token
    # rows.update writes a NowPlus as now() + n s; it is not an ORM value.
    step.lease_expires_at = rows.NowPlus(lease_seconds)  # type: ignore[assignment]
    step.due_at = None
    step.dispatched_at = None
    fields = ["lease_token", "lease_expires_at", "due_at", "dispatched_at"]
    if state is not None:
        step.state = state
        fields.append("state")
    if phase == FORWARD:
        step.state = StepState.RUNNING
        step.attempts += 1
        step.started_at = Now()
        fields += ["attempts", "started_at", *(["state"] if state is None else [])]
        attempt = step.attempts
    else:
        step.compensation_attempts += 1
        fields += ["compensation_attempts"]
        attempt = step.compensation_attempts
    rows.update(step, fields)
    return attempt


def _release(step: SagaStep) -> list[str]:
    """Drop the lease; the fields every outcome writes (``history`` included)."""
    step.lease_token = None
    step.lease_expires_at = None
    return ["lease_token", "lease_expires_at", "history"]


def step_succeeded(step: SagaStep, result: Any) -> None:
    fields = _release(step)
    step.state = StepState.SUCCEEDED
    step.result = result
    step.error = ""
    step.finished_at = Now()
    rows.update(step, [*fields, "state", "result", "error", "finished_at"])


def step_compensated(step: SagaStep) -> None:
    fields = _release(step)
    step.state = StepState.COMPENSATED
    step.error = ""
    step.compensated_at = Now()
    rows.update(step, [*fields, "state", "error", "compensated_at"])


def step_wait(step: SagaStep, *, delay: float, error: str, dispatched: bool) -> None:
    """Back to waiting: the next attempt is due in ``delay`` seconds."""
    fields = _release(step)
    if step.state == StepState.RUNNING:
        step.state = StepState.PENDING
    step.error = error
    # rows.update writes a NowPlus as now() + n s; it is not an ORM value.
    step.due_at = rows.NowPlus(delay)  # type: ignore[assignment]
    step.dispatched_at = rows.NowPlus(delay) if dispatched else None  # type: ignore[assignment]
    rows.update(step, [*fields, "state", "error", "due_at", "dispatched_at"])


def step_gave_up(step: SagaStep, *, error: str, interrupted: bool | None = None) -> None:
    """A forward step failed for good (or a compensation did: its state stays)."""
    fields = _release(step)
    if step.state in (StepState.RUNNING, StepState.PENDING):
        step.state = StepState.FAILED
        step.finished_at = Now()
        fields += ["state", "finished_at"]
    if interrupted is not None:
        step.interrupted = interrupted
        fields.append("interrupted")
    step.error = error
    step.due_at = None
    step.dispatched_at = None
    rows.update(step, [*fields, "error", "due_at", "dispatched_at"])


def mark_interrupted(step: SagaStep) -> None:
    step.interrupted = True
    rows.update(step, ["interrupted"])


def schedule_now(step: SagaStep, state: str) -> None:
    """Make ``step`` due now in ``state`` (pending: run it; compensating: undo it)."""
    step.state = state
    step.due_at = Now()
    step.dispatched_at = Now()
    rows.update(step, ["state", "due_at", "dispatched_at"])


def next_step(step: SagaStep) -> SagaStep | None:
    if hasattr(step, "_successor"):  # read with the step, under the same lock
        return step._successor
    return _step_at(step.saga, step.index + 1)


def step_at(saga: Saga, index: int) -> SagaStep:
    step = _step_at(saga, index)
    if step is None:
        raise SagaStep.DoesNotExist(f"saga {saga.pk} has no step {index}")
    return step


def _step_at(saga: Saga, index: int) -> SagaStep | None:
    if rows.native():
        found = rows.select(SagaStep, 'saga_id = %s AND "index" = %s', [saga.pk, index])
        step = found[0] if found else None
    else:
        step = SagaStep.objects.filter(saga_id=saga.pk, index=index).first()
    if step is not None:
        step.saga = saga  # the locked row, not a fresh read
    return step


def save_saga(saga: Saga, *fields: str) -> None:
    rows.update(saga, [*fields, "updated_at"])


def finish_saga(saga: Saga, state: str, error: str = "", also: Sequence[str] = ()) -> None:
    saga.state = state
    saga.finished_at = Now()
    fields = ["state", "finished_at", *also, *_unflag(saga)]
    if error:
        saga.error = error
        fields.append("error")
    save_saga(saga, *fields)


# --- waiting for the code of a run's version (caller holds the saga lock) ------------

#: Longest extra wait between two looks at a run that waits for its code: the
#: sweeper resends its step's message after ``REDISPATCH_AFTER`` plus as long as the
#: run has been waiting, up to this many seconds. A deploy that brings the code back
#: is picked up within that time; ``sagaflow retry`` does it at once.
NEEDS_CODE_RECHECK = 300.0


def wait_for_code(saga: Saga, reason: str, step: SagaStep | None = None) -> bool:
    """The code of ``saga``'s version is missing: flag the run, and leave ``step``
    as it is, to be looked at again later. Returns whether the run was newly flagged.

    Nothing is counted, recorded or compensated: a waiting step stays due (its
    message is sent again by the sweeper, and each claim looks for the code
    again); a leased step whose worker was lost keeps its lease a while longer (the
    sweeper's lease recovery looks again when it expires). ``error`` says why, on
    its first line, above the error the run had before.
    """
    newly = saga.needs_code_since is None
    if step is not None:
        now = step.db_now  # type: ignore[attr-defined]
        waited = 0.0 if newly else max(0.0, (now - saga.needs_code_since).total_seconds())
        later = min(waited, NEEDS_CODE_RECHECK)
        if step.lease_token is not None:
            # rows.update writes a NowPlus as now() + n s; it is not an ORM value.
            step.lease_expires_at = rows.NowPlus(later + conf.REDISPATCH_AFTER)  # type: ignore[assignment]
            rows.update(step, ["lease_expires_at"])
        else:
            # Still due; the sweeper resends it REDISPATCH_AFTER after ``dispatched_at``.
            step.due_at = Now()
            # rows.update writes a NowPlus as now() + n s; it is not an ORM value.
            step.dispatched_at = rows.NowPlus(later)  # type: ignore[assignment]
            rows.update(step, ["due_at", "dispatched_at"])
    reason = reason.replace("\n", " ")
    if newly:
        saga.needs_code_since = Now()
        saga.error = f"{reason}\n{saga.error}" if saga.error else reason
        save_saga(saga, "needs_code_since", "error")
    elif saga.error.partition("\n")[0] != reason:  # another reason now (another deploy)
        saga.error = "\n".join([reason, *saga.error.split("\n")[1:]])
        rows.update(saga, ["error"])
    return newly


def code_is_back(saga: Saga) -> bool:
    """The run's code is here again: drop its flag and the reason from ``error``.
    Returns whether the run had been waiting."""
    fields = _unflag(saga)
    if fields:
        save_saga(saga, *fields)
    return bool(fields)


def _unflag(saga: Saga) -> list[str]:
    if saga.needs_code_since is None:
        return []
    saga.needs_code_since = None
    saga.error = saga.error.partition("\n")[2]
    return ["needs_code_since", "error"]
