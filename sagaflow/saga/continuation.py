"""Local steps: the next attempt, claimed in the record's transaction, runs in the same task.

For a saga defined with ``local_steps=True`` the engine, while recording an outcome,
offers the attempt that follows (the next step, or the next compensation) here
instead of sending it to the broker. It is claimed in the same transaction as the
record: a lease with a fresh token and a counted attempt, exactly what a claim in a
new task would write. So the one commit that records step *n* also claims step
*n+1*, and a worker that dies after that commit leaves a leased step behind that
the sweeper recovers like any other. Only the engine's own execute loop accepts an
offer; the sweeper and operators, which have no step running, always send.
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


_slot: ContextVar[list[LocalAttempt] | None] = ContextVar("sagaflow_local_slot", default=None)


@contextlib.contextmanager
def accepting() -> Iterator[list[LocalAttempt]]:
    """Accept at most one offered attempt while the block runs; read it after commit."""
    slot: list[LocalAttempt] = []
    token = _slot.set(slot)
    try:
        yield slot
    finally:
        _slot.reset(token)


def offer(step: SagaStep, state: str, phase: str, lease_seconds: float) -> bool:
    """Claim ``step`` for the running task if one is accepting; False: send it instead."""
    slot = _slot.get()
    if slot is None or slot:
        return False
    token = uuid.uuid4()
    attempt = store.claim(step, phase, token, lease_seconds, state=state)
    slot.append(LocalAttempt(step, phase, token, attempt))
    return True
