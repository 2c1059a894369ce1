"""What each control run reverts, applied in every process when ``CHAOS_UNSAFE`` names it.

Each patch puts back the behaviour a fix removed (issue 13) or a mistake the engine is
designed against, so that a control run proves its check can fail:

- ``publish``: step messages sent inside the transaction that writes the step,
  instead of after it commits (PITFALLS C7).
- ``lock-wait``: the sweeper waits for a run's row lock (no SKIP LOCKED) and no
  engine transaction bounds its waits or idle time (hole 1): one frozen lock holder
  stops every sweep (``stop_lock_holder``).
- ``deadline``: a deadline revokes the running step at once and compensates it
  before it settled, and cancels a waiting step without asking whether an earlier
  attempt acted (holes 2 and 3; ``deadline_passes``).
- ``rename``: a stored step the code no longer matches counts as "no
  compensation" (hole 6; ``definition_renamed``).
- ``clock``: leases, due times and the sweeper's lease scan read the worker's
  clock instead of the database's (PITFALLS C11; ``clock_skew``).
"""

from __future__ import annotations

from collections.abc import Callable


def publish() -> None:
    from sagaflow.saga import dispatch

    def send_now(step_id, phase, *, countdown=None, timeout=None):
        dispatch.send(step_id, phase, countdown=countdown, timeout=timeout)

    dispatch.send_on_commit = send_now


def lock_wait() -> None:
    from sagaflow.saga import rows, store

    lock_step, lock_saga = store.lock_step, store.lock_saga

    def waiting_lock_step(step_id, *, with_next=False, skip_locked=False, hold_for=None):
        return lock_step(step_id, with_next=with_next, skip_locked=False, hold_for=hold_for)

    def waiting_lock_saga(saga_id, *, skip_locked=False):
        return lock_saga(saga_id, skip_locked=False)

    def no_limits(*, lock_timeout, statement_timeout, idle_timeout):
        return (
            "SELECT set_config('lock_timeout', '0', true),"
            " set_config('statement_timeout', '0', true),"
            " set_config('idle_in_transaction_session_timeout', '0', true)",
            [],
        )

    store.lock_step = waiting_lock_step
    store.lock_saga = waiting_lock_saga
    rows.transaction_limits = no_limits


def deadline() -> None:
    from sagaflow.models import SagaState, StepState
    from sagaflow.ops import operations
    from sagaflow.saga import recovery, store, transitions
    from sagaflow.saga.transitions import FORWARD, Outcome

    def abandon_at_once(saga, definition, reason):
        """``transitions.abandon`` as it was before the fix of holes 2 and 3."""
        below = saga.current_step
        for step in store.steps_of(saga):
            if step.state == StepState.RUNNING:
                error = f"{reason} while it ran"
                transitions.note_attempt(step, FORWARD, "revoked", Outcome(error=error))
                store.step_gave_up(step, error=error, interrupted=True)
                below = step.index + 1
            elif step.state == StepState.PENDING and step.due_at is not None:
                store.step_gave_up(step, error=f"{reason} before it ran")
        saga.state = SagaState.COMPENSATING
        saga.error = reason
        store.save_saga(saga, "state", "error")
        transitions.continue_compensation(saga, definition, below=below)

    transitions.abandon = abandon_at_once
    recovery.abandon = abandon_at_once  # imported by name: the deadline's caller
    operations.abandon = abandon_at_once  # and the operator's compensate


def rename() -> None:
    from sagaflow.saga import transitions

    def matching_compensation(definition, step):
        """``transitions.has_compensation`` as it was before the fix of hole 6."""
        if step.index >= len(definition.steps):
            return False
        step_def = definition.steps[step.index]
        return step_def.name == step.name and step_def.has_compensation

    transitions.has_compensation = matching_compensation


def clock() -> None:
    from django.utils import timezone

    from sagaflow.models import SagaStep
    from sagaflow.saga import leases, scans

    def on_worker_clock(check):
        def checked(step, *args):
            step.db_now = timezone.now()  # the worker's clock, not the statement's
            return check(step, *args)

        return checked

    def expired_leases(limit):
        return list(
            SagaStep.objects.filter(lease_token__isnull=False, lease_expires_at__lt=timezone.now())
            .order_by("lease_expires_at")
            .values_list("pk", flat=True)[:limit]
        )

    leases.is_claimable = on_worker_clock(leases.is_claimable)
    leases.due_in = on_worker_clock(leases.due_in)
    leases.stalled = on_worker_clock(leases.stalled)
    scans.expired_leases = expired_leases


PATCHES: dict[str, Callable[[], None]] = {
    "publish": publish,
    "lock-wait": lock_wait,
    "deadline": deadline,
    "rename": rename,
    "clock": clock,
}
