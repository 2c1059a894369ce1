"""The saga state machine: pure decisions over plain values.

Nothing here touches the ORM or Celery, so every rule of "what happens next" is
tested in microseconds (``tests/unit/test_machine.py``); ``engine.py`` turns the
decisions into writes and messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..retry import Retry


@dataclass(frozen=True)
class StepView:
    index: int
    state: str
    has_compensation: bool
    interrupted: bool = False


# --- decisions ---------------------------------------------------------------


@dataclass(frozen=True)
class RetryLater:
    delay: float


@dataclass(frozen=True)
class Compensate:
    """Start (or go on) compensating the steps below ``below``, highest first."""

    below: int


@dataclass(frozen=True)
class Fail:
    reason: str


Decision = RetryLater | Compensate | Fail


def after_step_failure(
    *, index: int, attempts: int, retry: Retry, aborted: bool, retryable: bool = True
) -> RetryLater | Compensate:
    """Step ``index`` failed on try number ``attempts``.

    When it gives up, compensation starts at the step itself: ``next_to_compensate``
    includes it only if it was interrupted (it may have had its effect).
    """
    if aborted or not retryable or retry.exhausted(attempts):
        return Compensate(below=index + 1)
    return RetryLater(retry.delay(attempts))


def after_compensation_failure(
    *, attempts: int, retry: Retry, aborted: bool, step: str, error: str
) -> RetryLater | Fail:
    if aborted or retry.exhausted(attempts):
        return Fail(f"compensation of step {step!r} failed after {attempts} attempt(s): {error}")
    return RetryLater(retry.delay(attempts))


def next_to_compensate(steps: Sequence[StepView], below: int) -> int | None:
    """The highest step under ``below`` whose effect happened or may have happened.

    A step counts when it succeeded, or when it was interrupted (its worker was
    lost or the deadline passed while it ran), and it has a compensation. Steps
    without one are skipped: nothing can undo them.
    """
    for view in sorted(steps, key=lambda s: s.index, reverse=True):
        if view.index >= below or not view.has_compensation:
            continue
        if view.state == "succeeded" or (view.state == "failed" and view.interrupted):
            return view.index
    return None
