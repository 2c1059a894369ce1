"""Local steps: the next attempt, claimed in the record's transaction, runs in the same task.

For a saga defined with ``local_steps=True`` the engine, while recording an outcome,
offers the attempt that follows (the next step, or the next compensation) here
instead of sending it to the broker. It is claimed in the same transaction as the
record: a lease with a fresh token and a counted attempt, exactly what a claim in a
new task would write. So the one commit that records step *n* also claims step
*n+1*, and a worker that dies after that commit leaves a leased step behind that
the sweeper recovers like any other. Only the engine's own execute loop accepts an
offer; the sweeper and operators, which have no step running, always send. An
attempt whose messages go to another queue than the running one's is sent too:
its queue names the workers that must run it.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from ..models import SagaStep
from . import store


@dataclass(frozen=True)
class LocalAttempt:
    step: SagaStep
    phase: str
    token: uuid.UUID
    attempt: int


_slot: ContextVar[tuple[str | None, list[LocalAttempt]] | None] = ContextVar(
    "sagaflow_local_slot", default=None
)


@contextlib.contextmanager
def accepting(queue: str | None = None) -> Iterator[list[LocalAttempt]]:
    """Accept at most one offered attempt for ``queue`` (the running attempt's) while
    the block runs; read it after commit."""
    slot: list[LocalAttempt] = []
    token = _slot.set((queue, slot))
    try:
        yield slot
    finally:
        _slot.reset(token)


def offer(
    step: SagaStep, state: str, phase: str, lease_seconds: float, queue: str | None = None
) -> bool:
    """Claim ``step`` for the running task if one is accepting attempts of ``queue``;
    False: send it instead."""
    accepted = _slot.get()
    if accepted is None or accepted[0] != queue or accepted[1]:
        return False
    slot = accepted[1]
    token = uuid.uuid4()
    attempt = store.claim(step, phase, token, lease_seconds, state=state)
    slot.append(LocalAttempt(step, phase, token, attempt))
    return True
