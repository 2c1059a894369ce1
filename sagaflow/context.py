"""What is running right now, for code that needs it without being passed it.

``sagaflow.publish`` reads the correlation id of the step it is called from, and
log records carry the saga id; both come from here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class Execution:
    saga_id: str
    step: str
    attempt: int
    correlation_id: str
    idempotency_key: str


_current: ContextVar[Execution | None] = ContextVar("sagaflow_execution", default=None)


def current_execution() -> Execution | None:
    return _current.get()


@contextlib.contextmanager
def executing(execution: Execution) -> Iterator[None]:
    token = _current.set(execution)
    try:
        yield
    finally:
        _current.reset(token)
