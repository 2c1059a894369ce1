"""The definition API: ``@saga.step``, ``@step.compensation`` and ``ctx``.

Definitions are plain data built at import time (``sagaflow.define`` creates and
registers one: see ``registry``). Everything that can be checked
without a database is checked here, so a malformed saga fails when its module is
imported, not in a worker at three in the morning.
"""

from __future__ import annotations

import hashlib
import inspect
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
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
    return fn


def _check_timeout(timeout: object, where: str) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, timedelta):
        timeout = timeout.total_seconds()
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
        raise DefinitionError(f"{where}: timeout={timeout!r} must be a number of seconds > 0.")
    return float(timeout)


def _check_queue(queue: object, where: str) -> str | None:
    if queue is None:
        return None
    if not isinstance(queue, str) or not 0 < len(queue) <= 200 or queue != queue.strip():
        raise DefinitionError(
            f"{where}: queue={queue!r} must be a Celery queue name (1 to 200 characters, "
            f"no surrounding spaces), or None for SAGAFLOW['QUEUE'] / Celery's default."
        )
    return queue


#: Largest version number (it is stored in a PostgreSQL integer column).
MAX_VERSION = 2**31 - 1


def _check_version(version: object, name: str) -> int:
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= MAX_VERSION:
        raise DefinitionError(
            f"Saga {name!r}: version={version!r} must be a whole number from 1 to "
            f"{MAX_VERSION}; start at 1 and add 1 for each change of its steps."
        )
    return version


def steps_fingerprint(step_names: Sequence[str]) -> str:
    """A digest of a version's step names, in order; stored with each run.

    Two deploys of one version must have the same steps: a run compares this with
    the code's before it goes on, and the system checks compare it for live runs.
    """
    return hashlib.sha256("\n".join(step_names).encode()).hexdigest()


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
    #: Celery queue of the compensation's messages; None: its step's queue.
    queue: str | None = None


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
    #: Celery queue of this step's messages (first send, retries, the sweeper's
    #: resends); None: ``SAGAFLOW["QUEUE"]``, then Celery's default queue.
    queue: str | None = None
    compensation_def: Compensation | None = field(default=None, repr=False)

    def __call__(self, ctx: Context) -> Any:
        """Call the step's function directly, e.g. from a unit test."""
        return self.fn(ctx)

    @overload
    def compensation(self, fn: StepFunction) -> StepFunction: ...
    @overload
    def compensation(
        self,
        *,
        retry: Retry | None = None,
        timeout: float | timedelta | None = None,
        queue: str | None = None,
    ) -> Callable[[StepFunction], StepFunction]: ...

    def compensation(
        self,
        fn: StepFunction | None = None,
        *,
        retry: Retry | None = None,
        timeout: float | timedelta | None = None,
        queue: str | None = None,
    ) -> Any:
        """Register the function that undoes this step; it runs in reverse order.

        Its messages go to ``queue``, or to its step's queue when it names none.
        """
        where = f"compensation of step {self.name!r} of saga {self.saga.name!r}"

        def register(func: StepFunction) -> StepFunction:
            if self.compensation_def is not None:
                raise DefinitionError(f"{where} is defined twice; keep one.")
            self.compensation_def = Compensation(
                fn=_check_function(where, func),
                retry=_check_retry(retry, where),
                timeout=_check_timeout(timeout, where),
                queue=_check_queue(queue, where),
            )
            return func

        return register(fn) if fn is not None else register

    @property
    def has_compensation(self) -> bool:
        return self.compensation_def is not None


class SagaDefinition:
    """A named, versioned sequence of steps; create it with ``sagaflow.define``.

    A run records the version it was started with and only ever runs that
    version's steps, so several versions of one name live side by side while the
    runs of the older ones finish.
    """

    def __init__(
        self,
        name: str,
        *,
        deadline: timedelta | None,
        module: str,
        local_steps: bool = False,
        version: int = 1,
    ) -> None:
        self.name = _check_name("Saga", name)
        self.version = _check_version(version, name)
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
        self._fingerprint: tuple[int, str] = (-1, "")

    def __repr__(self) -> str:
        steps = ", ".join(s.name for s in self.steps)
        return f"<SagaDefinition {self.name!r} version {self.version}: {steps}>"

    @property
    def fingerprint(self) -> str:
        """:func:`steps_fingerprint` of this version's steps (see ``Saga.steps_fingerprint``).

        Every claim compares it, so it is computed once per set of steps (steps are
        only ever appended, and a step's name never changes).
        """
        count, digest = self._fingerprint
        if count != len(self.steps):
            digest = steps_fingerprint([s.name for s in self.steps])
            self._fingerprint = (len(self.steps), digest)
        return digest

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
        queue: str | None = None,
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
        queue: str | None = None,
    ) -> Any:
        """Append a step; steps run in the order they are defined.

        ``queue`` routes the step's messages to that Celery queue, so a pool of
        workers consuming it (``celery worker -Q payments``) runs it.
        """

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
                queue=_check_queue(queue, where),
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
