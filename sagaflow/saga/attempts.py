"""One attempt of a step: its outcome, its line in the step's history, and the
options that bound it (timeout, retries), plus the log and signal helpers every
transition uses.

``transitions`` decides what follows an outcome; this module only describes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from ..conf import conf
from ..exceptions import DefinitionMismatchError, UnknownSagaError
from ..models import Saga, SagaStep
from ..retry import Retry
from . import store
from .definition import SagaDefinition, StepDefinition
from .registry import get_definition, needs_code, versions_of

FORWARD, COMPENSATE = store.FORWARD, store.COMPENSATE


@dataclass
class Outcome:
    result: Any = None
    error: str = ""
    aborted: bool = False
    retryable: bool = True
    #: The action ran to its end (it returned a value that cannot be stored): it
    #: may have had its effect, so giving up compensates it.
    acted: bool = False
    #: Seconds the action ran (0 for an attempt whose worker was lost).
    duration: float = 0.0

    @property
    def succeeded(self) -> bool:
        return not self.error


def definition_of(saga: Saga) -> SagaDefinition:
    """The code of the run's own version, provided it still has the run's steps.

    Raises :class:`UnknownSagaError` when this process lacks that version, and
    :class:`DefinitionMismatchError` when its steps were changed in place since the
    run started (the fingerprint stored with the run differs). Both messages start
    with "needs the code of version N of <name>": the run waits for that code.
    """
    definition = get_definition(saga.name, saga.version)
    if saga.steps_fingerprint and saga.steps_fingerprint != definition.fingerprint:
        stored = list(
            SagaStep.objects.filter(saga_id=saga.pk)
            .order_by("index")
            .values_list("name", flat=True)
        )
        raise DefinitionMismatchError(
            f"{needs_code(saga.name, saga.version)}: run {saga.id} started with the steps "
            f"{stored}, but this code's version {saga.version} has "
            f"{[s.name for s in definition.steps]}. A version's steps must not change "
            f"while its runs are in flight: restore them, and define the new steps as "
            f"version {max(versions_of(saga.name)) + 1}."
        )
    return definition


def resolve(saga: Saga, step: SagaStep) -> tuple[SagaDefinition, StepDefinition]:
    """The definition and step definition that run ``step`` of ``saga``.

    Raises as :func:`definition_of` does, and also when the stored step is not the
    code's step at its index (a run from before fingerprints were stored).
    """
    definition = definition_of(saga)
    code_names = [s.name for s in definition.steps]
    if step.index >= len(code_names) or code_names[step.index] != step.name:
        found = code_names[step.index] if step.index < len(code_names) else "nothing"
        raise DefinitionMismatchError(
            f"{needs_code(saga.name, saga.version)}: run {saga.id}'s step {step.index} is "
            f"{step.name!r} but this code's step {step.index} is {found!r} (code steps: "
            f"{code_names}). Restore the steps of version {saga.version} until its runs end."
        )
    return definition, definition.steps[step.index]


def queue_of(step_def: StepDefinition, phase: str) -> str | None:
    """The Celery queue named for this attempt: the compensation's own, else its
    step's; None leaves it to ``SAGAFLOW["QUEUE"]``, then Celery's default."""
    compensation = step_def.compensation_def
    if phase == COMPENSATE and compensation is not None and compensation.queue:
        return compensation.queue
    return step_def.queue


def queue_for(saga: Saga, step: SagaStep, phase: str) -> str | None:
    """:func:`queue_of` for a stored step, or None when its code is missing (the
    claim then makes the run wait, wherever the message went)."""
    try:
        return queue_of(resolve(saga, step)[1], phase)
    except (UnknownSagaError, DefinitionMismatchError):
        return None


#: Longest error kept per attempt in ``SagaStep.history`` (the last one is in ``error``).
HISTORY_ERROR_CHARS = 2000
#: Attempts kept in ``SagaStep.history``: the first and the latest ones. Every record
#: rewrites the list, so it must not grow with operator retries without end.
HISTORY_MAX_ENTRIES = 50


def note_attempt(step: SagaStep, phase: str, label: str, outcome: Outcome) -> None:
    """Append this attempt to the step's history; saved with the outcome's write."""
    attempt = step.attempts if phase == FORWARD else step.compensation_attempts
    kept = step.history
    if len(kept) >= HISTORY_MAX_ENTRIES:
        kept = [kept[0], *kept[-(HISTORY_MAX_ENTRIES - 2) :]]
    step.history = [
        *kept,
        {
            "phase": phase,
            "attempt": attempt,
            "outcome": label,
            "finished_at": timezone.now().isoformat(),
            "duration": round(outcome.duration, 6),
            "error": outcome.error[-HISTORY_ERROR_CHARS:],
        },
    ]


def label(outcome: Outcome, interrupted: bool | None) -> str:
    if outcome.succeeded:
        return "succeeded"
    if interrupted:
        return "lost"
    return "aborted" if outcome.aborted else "failed"


def timeout_of(step_def: StepDefinition, phase: str) -> float:
    if phase == COMPENSATE and step_def.compensation_def and step_def.compensation_def.timeout:
        return step_def.compensation_def.timeout
    return step_def.timeout or float(conf.DEFAULT_STEP_TIMEOUT)


def task_time_limit(step_def: StepDefinition, phase: str) -> float:
    """The soft time limit of the task that starts this attempt.

    The step's own timeout; but a task of a saga with local steps may go on to run
    every later step and compensation, so it gets the sum of their timeouts. There
    a step that overruns is taken over when its lease (timeout + grace) expires.
    """
    definition = step_def.saga
    if not definition.local_steps:
        return timeout_of(step_def, phase)
    return sum(
        timeout_of(s, FORWARD) + (timeout_of(s, COMPENSATE) if s.has_compensation else 0.0)
        for s in definition.steps
    )


def retry_of(step_def: StepDefinition, phase: str) -> Retry:
    if phase == COMPENSATE and step_def.compensation_def and step_def.compensation_def.retry:
        return step_def.compensation_def.retry
    return step_def.retry or Retry(
        attempts=conf.DEFAULT_RETRY_ATTEMPTS,
        backoff=conf.DEFAULT_RETRY_BACKOFF,
        max_backoff=conf.DEFAULT_RETRY_MAX_BACKOFF,
    )


def signal_on_commit(signal: Any, saga: Saga, **kwargs: Any) -> None:
    def send() -> None:
        signal.send_robust(sender=Saga, saga=saga, **kwargs)

    transaction.on_commit(send, robust=True)


def log_extra(saga: Saga, step: SagaStep | None = None, attempt: int | None = None) -> dict:
    extra: dict[str, Any] = {
        "saga_id": str(saga.id),
        "saga_name": saga.name,
        "correlation_id": saga.correlation_id,
    }
    if step is not None:
        extra["step"] = step.name
        extra["attempt"] = attempt
    return extra
