"""Random saga definitions for the model, as plain data, and the settings they run under.

Every duration is large (hundreds of seconds) and the model moves the run's clock by
rewriting its timestamps, so the real seconds a test takes never decide an outcome:
an example replays the same way on a slow machine, which shrinking relies on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from hypothesis import strategies as st

import sagaflow
from sagaflow import Retry
from sagaflow.saga import registry
from sagaflow.saga.definition import SagaDefinition, StepFunction

#: ``SAGAFLOW`` while the model runs: the test settings' timings scaled up (see above).
MODEL_SETTINGS = {
    "LEASE_GRACE": 60.0,
    "REDISPATCH_AFTER": 3600.0,
    "MAX_COUNTDOWN": 1000.0,  # retry waits up to this ride on a countdown; longer, the sweeper
    "DEFAULT_RETRY_ATTEMPTS": 3,
    "DEFAULT_RETRY_BACKOFF": 100.0,
    "DEFAULT_RETRY_MAX_BACKOFF": 400.0,
    "DEFAULT_STEP_TIMEOUT": 100.0,
}
DEFAULT_RETRY = Retry(attempts=3, backoff=100.0, max_backoff=400.0)


@dataclass(frozen=True)
class StepSpec:
    atomic: bool = False
    compensation: bool = True
    compensate_on_failure: bool = False
    retry: Retry | None = None
    compensation_retry: Retry | None = None
    timeout: float = 100.0

    def tries(self) -> int:
        return (self.retry or DEFAULT_RETRY).attempts

    def compensation_tries(self) -> int:
        # As the engine does: the compensation's own policy, else the step's, else the default.
        return (self.compensation_retry or self.retry or DEFAULT_RETRY).attempts


@dataclass(frozen=True)
class SagaSpec:
    steps: tuple[StepSpec, ...]
    deadline: float | None = None


def _retry(attempts: int, backoff: float) -> Retry:
    return Retry(attempts=attempts, backoff=backoff, max_backoff=backoff * 4)


retries = st.one_of(
    st.none(),
    st.builds(
        _retry,
        attempts=st.integers(1, 4),
        # 0: due at once; 100/400: a broker countdown; 2000: waits in PostgreSQL.
        backoff=st.sampled_from([0.0, 100.0, 400.0, 2000.0]),
    ),
)
step_specs = st.builds(
    StepSpec,
    atomic=st.booleans(),
    compensation=st.sampled_from([True, True, False]),
    compensate_on_failure=st.booleans(),
    retry=retries,
    compensation_retry=retries,
    timeout=st.sampled_from([100.0, 600.0]),
)
saga_specs = st.builds(
    SagaSpec,
    steps=st.lists(step_specs, min_size=1, max_size=6).map(tuple),
    deadline=st.sampled_from([None, 500.0, 5000.0, 50000.0]),
)


def step_name(index: int) -> str:
    return f"s{index}"


def build(
    name: str,
    spec: SagaSpec,
    forward: list[StepFunction],
    undo: list[StepFunction],
    *,
    names: list[str | None] | None = None,
) -> SagaDefinition:
    """Register ``spec`` as saga ``name`` with the model's step functions.

    ``names`` is what a deploy changed: per original step, its name in this code
    (``None``: the step was removed). Functions stay those of the original step, as
    when a step is renamed or dropped but its code is kept.
    """
    registry.unregister(name)
    deadline = timedelta(seconds=spec.deadline) if spec.deadline else None
    definition = sagaflow.define(name, deadline=deadline)
    for index, step in enumerate(spec.steps):
        label = step_name(index) if names is None else names[index]
        if label is None:
            continue
        registered = definition.step(
            name=label,
            retry=step.retry,
            timeout=step.timeout,
            atomic=step.atomic,
            compensate_on_failure=step.compensate_on_failure,
        )(forward[index])
        if step.compensation:
            registered.compensation(retry=step.compensation_retry, timeout=step.timeout)(
                undo[index]
            )
    return definition
