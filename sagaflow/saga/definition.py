"""The definition API: ``@saga.step``, ``@step.compensation`` and ``ctx``.

Definitions are plain data built at import time (``sagaflow.define`` creates and
registers one: see ``registry``). Everything that can be checked
without a database is checked here, so a malformed saga fails when its module is
imported, not in a worker at three in the morning.
"""

from __future__ import annotations

import inspect
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol, overload

from ..exceptions import ConfigurationError, DefinitionError
from ..retry import Retry

if TYPE_CHECKING:
    from ..models import Saga

NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,99}$")

StepFunction = Callable[["Context"], Any]


@dataclass(frozen=True)
class Context:
    """What a step or compensation receives.

    ``idempotency_key`` is the same on every try and every redelivery of this step
    of this run, and different for each step and for its compensation: hand it to
    the service you call so that a repeated call has no second effect.
    """

    saga_id: uuid.UUID
    saga_name: str
    step: str
    data: Any
    results: Mapping[str, Any]
    idempotency_key: str
    attempt: int
    correlation_id: str
    compensating: bool = False
    #: The key the forward step uses (in a compensation: the step being undone),
    #: to cancel "whatever was done under that key" when no result was recorded.
    step_key: str = ""


def _check_name(kind: str, name: object) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise DefinitionError(
            f"{kind} name {name!r} is invalid: use 1-100 characters from letters, digits "
            f"and _ . : -, starting with a letter or _."
        )
    return name


def _check_function(what: str, fn: object) -> StepFunction:
    if not callable(fn):
        raise DefinitionError(f"{what} must be a function taking ctx, got {fn!r}.")
    if inspect.iscoroutinefunction(fn):
        raise DefinitionError(
            f"{what} {getattr(fn, '__qualname__', fn)} is async; sagaflow runs steps in "
            f"Celery workers, so define it with plain 'def'."
        )
    try:
        inspect.signature(fn).bind(None)
    except TypeError:
        raise DefinitionError(
            f"{what} {getattr(fn, '__qualname__', fn)} must accept exactly one "
            f"positional argument, ctx."
        ) from None
    except ValueError:  # builtins without a signature: trust them
        pass
    return fn  # type: ignore[return-value]


def _check_timeout(timeout: object, where: str) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, timedelta):
        timeout = timeout.total_seconds()
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
        raise DefinitionError(f"{where}: timeout={timeout!r} must be a number of seconds > 0.")
    return float(timeout)


def _check_retry(retry: object, where: str) -> Retry | None:
    if retry is not None and not isinstance(retry, Retry):
        raise DefinitionError(
            f"{where}: retry={retry!r} must be a sagaflow.Retry(attempts=..., backoff=...)."
        )
    return retry


@dataclass
class Compensation:
    fn: StepFunction
    retry: Retry | None
    timeout: float | None


@dataclass
class StepDefinition:
    """One step of a saga; the object ``@saga.step`` returns."""

    saga: SagaDefinition
    index: int
    name: str
    fn: StepFunction
    retry: Retry | None
    timeout: float | None
    atomic: bool
    #: Compensate this step too when it fails for good with an error (not Abort):
    #: it may have acted before failing, like a charge that timed out after the
    #: money moved. Its compensation must then cope with "nothing to undo".
    compensate_on_failure: bool = False
    compensation_def: Compensation | None = field(default=None, repr=False)

    def __call__(self, ctx: Context) -> Any:
        """Call the step's function directly, e.g. from a unit test."""
        return self.fn(ctx)

    @overload
    def compensation(self, fn: StepFunction) -> StepFunction: ...
    @overload
    def compensation(
        self, *, retry: Retry | None = None, timeout: float | timedelta | None = None
    ) -> Callable[[StepFunction], StepFunction]: ...

    def compensation(
        self,
        fn: StepFunction | None = None,
        *,
        retry: Retry | None = None,
        timeout: float | timedelta | None = None,
    ) -> Any:
        """Register the function that undoes this step; it runs in reverse order."""
        where = f"compensation of step {self.name!r} of saga {self.saga.name!r}"

        def register(func: StepFunction) -> StepFunction:
            if self.compensation_def is not None:
                raise DefinitionError(f"{where} is defined twice; keep one.")
            self.compensation_def = Compensation(
                fn=_check_function(where, func),
                retry=_check_retry(retry, where),
                timeout=_check_timeout(timeout, where),
            )
            return func

        return register(fn) if fn is not None else register

    @property
    def has_compensation(self) -> bool:
        return self.compensation_def is not None


class SagaDefinition:
    """A named sequence of steps; create it with ``sagaflow.define``."""

    def __init__(
        self, name: str, *, deadline: timedelta | None, module: str, local_steps: bool = False
    ) -> None:
        self.name = _check_name("Saga", name)
        if not isinstance(local_steps, bool):
            raise DefinitionError(
                f"Saga {name!r}: local_steps={local_steps!r} must be True or False."
            )
        if deadline is not None and (
            not isinstance(deadline, timedelta) or deadline <= timedelta(0)
        ):
            raise DefinitionError(
                f"Saga {name!r}: deadline={deadline!r} must be a positive datetime.timedelta."
            )
        self.deadline = deadline
        self.module = module
        self.local_steps = local_steps
        self.steps: list[StepDefinition] = []

    def __repr__(self) -> str:
        return f"<SagaDefinition {self.name!r}: {', '.join(s.name for s in self.steps)}>"

    @overload
    def step(self, fn: StepFunction) -> StepDefinition: ...
    @overload
    def step(
        self,
        *,
        name: str | None = None,
        retry: Retry | None = None,
        timeout: float | timedelta | None = None,
        atomic: bool = False,
        compensate_on_failure: bool = False,
    ) -> Callable[[StepFunction], StepDefinition]: ...

    def step(
        self,
        fn: StepFunction | None = None,
        *,
        name: str | None = None,
        retry: Retry | None = None,
        timeout: float | timedelta | None = None,
        atomic: bool = False,
        compensate_on_failure: bool = False,
    ) -> Any:
        """Append a step; steps run in the order they are defined."""

        def register(func: StepFunction) -> StepDefinition:
            step_name = _check_name("Step", name or getattr(func, "__name__", None))
            where = f"step {step_name!r} of saga {self.name!r}"
            if any(s.name == step_name for s in self.steps):
                raise DefinitionError(
                    f"Saga {self.name!r} already has a step named {step_name!r}; "
                    f"step names must be unique within a saga (pass name=... to rename)."
                )
            for option, value in (
                ("atomic", atomic),
                ("compensate_on_failure", compensate_on_failure),
            ):
                if not isinstance(value, bool):
                    raise DefinitionError(f"{where}: {option}={value!r} must be True or False.")
            step = StepDefinition(
                saga=self,
                index=len(self.steps),
                name=step_name,
                fn=_check_function(where, func),
                retry=_check_retry(retry, where),
                timeout=_check_timeout(timeout, where),
                atomic=atomic,
                compensate_on_failure=compensate_on_failure,
            )
            self.steps.append(step)
            return step

        return register(fn) if fn is not None else register

    def step_named(self, name: str) -> StepDefinition | None:
        return next((s for s in self.steps if s.name == name), None)

    def start(
        self,
        data: Any = None,
        *,
        key: str | None = None,
        correlation_id: str | None = None,
    ) -> Saga:
        """Record a new run in the caller's transaction; its first step is sent on commit.

        With a ``key`` already used for this saga, the existing run is returned and
        nothing new is started.
        """
        if _starter is None:
            raise ConfigurationError(
                f"Cannot start saga {self.name!r}: sagaflow is not set up in this process. "
                f"Add 'sagaflow' to INSTALLED_APPS and call django.setup() (manage.py and "
                f"Celery's Django fixup do) before starting sagas."
            )
        return _starter(self, data, key=key, correlation_id=correlation_id)


class Starter(Protocol):
    def __call__(
        self,
        definition: SagaDefinition,
        data: Any,
        *,
        key: str | None,
        correlation_id: str | None,
    ) -> Saga: ...


#: The engine's ``start``, installed by ``SagaflowConfig.ready()``. A definition is
#: plain data built at import time, before Django's models can be imported, so it
#: is handed the engine instead of importing it (the engine imports definitions).
_starter: Starter | None = None


def install_starter(starter: Starter) -> None:
    global _starter
    _starter = starter
