"""System checks (``manage.py check``) for mistakes that silently break guarantees.

Stable ids, so a project can silence one deliberately:

- ``sagaflow.W001`` to ``W003``: a Celery setting that at-least-once execution needs.
- ``sagaflow.E001``: ``@idempotent`` views are routed but the middleware is missing.
- ``sagaflow.W004``: the middleware sits before authentication (keys would be
  scoped to anonymous users).
- ``sagaflow.E002``: the broker's visibility timeout is shorter than a step's
  timeout plus lease grace: Redis would hand a running step to a second worker.
- ``sagaflow.E003``: the default database is not PostgreSQL: the outbox, its relay,
  the consumers' inboxes, ``sagaflow status`` and the outbox admin use its SQL.
- ``sagaflow.E004``: ``settings.SAGAFLOW`` is not a dict, or has a key that names no
  setting (a typo: the default would be used silently).
- ``sagaflow.W005``: SQLite outside DEBUG (no row locks, no SKIP LOCKED).
- ``sagaflow.W006``: two versions of one saga are identical (a new version was
  defined, but its steps, their options and their code are the old one's).
- ``sagaflow.W007``: a version's steps were changed in place: live runs of it were
  started with other steps (a database check: ``migrate`` and
  ``check --database default`` run it). Those runs wait for their code.
- ``sagaflow.W008``: live runs of a version this code does not define (a database
  check too); they wait until it is deployed again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.db import DatabaseError, connections, router
from django.urls import URLPattern, URLResolver, get_resolver

from .conf import conf, unknown_keys
from .exceptions import ConfigurationError
from .models import Saga
from .saga import scans
from .saga.definition import SagaDefinition, StepFunction
from .saga.registry import all_versions, versions_of

MIDDLEWARE = "sagaflow.middleware.IdempotencyMiddleware"
AUTH_MIDDLEWARE = "django.contrib.auth.middleware.AuthenticationMiddleware"
#: kombu's Redis transport default, used when no visibility_timeout is set.
REDIS_DEFAULT_VISIBILITY = 3600.0


@register(Tags.compatibility)
def check_celery_settings(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    expected = [
        ("CELERY_TASK_ACKS_LATE", True, "a worker crash mid-step would lose the message"),
        (
            "CELERY_TASK_REJECT_ON_WORKER_LOST",
            True,
            "a killed worker child would ack its message instead of returning it",
        ),
        (
            "CELERY_WORKER_PREFETCH_MULTIPLIER",
            1,
            "messages reserved by a worker die with it and wait for the visibility timeout",
        ),
    ]
    return [
        Warning(
            f"{name} should be {value!r} for sagaflow: otherwise {why}.",
            hint=f"Set {name} = {value!r} in your settings (see the sagaflow README).",
            id=f"sagaflow.W00{i}",
        )
        for i, (name, value, why) in enumerate(expected, start=1)
        if getattr(settings, name, None) != value
    ]


def _views(patterns: list[Any]) -> Iterator[Any]:
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _views(pattern.url_patterns)
        elif isinstance(pattern, URLPattern):
            callback = pattern.callback
            yield callback
            view_class = getattr(callback, "view_class", None) or getattr(callback, "cls", None)
            for name in ("post", "put", "patch", "delete"):
                handler = getattr(view_class, name, None)
                if handler is not None:
                    yield handler


@register(Tags.compatibility)
def check_middleware(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    middleware = list(getattr(settings, "MIDDLEWARE", []) or [])
    problems: list[Any] = []
    if MIDDLEWARE not in middleware:
        try:
            decorated = [
                v for v in _views(get_resolver().url_patterns) if hasattr(v, "sagaflow_idempotent")
            ]
        except Exception:  # a broken URLconf is reported by Django's own checks
            decorated = []
        if decorated:
            names = ", ".join(sorted({getattr(v, "__qualname__", repr(v)) for v in decorated}))
            problems.append(
                Error(
                    f"@idempotent views are routed ({names}) but {MIDDLEWARE} is not in "
                    f"MIDDLEWARE: they raise ConfigurationError on every keyed request.",
                    hint=f"Add {MIDDLEWARE!r} to MIDDLEWARE, after {AUTH_MIDDLEWARE!r}.",
                    id="sagaflow.E001",
                )
            )
    elif AUTH_MIDDLEWARE in middleware and middleware.index(MIDDLEWARE) < middleware.index(
        AUTH_MIDDLEWARE
    ):
        problems.append(
            Warning(
                f"{MIDDLEWARE} comes before {AUTH_MIDDLEWARE}.",
                hint="Move it after the authentication middleware.",
                id="sagaflow.W004",
            )
        )
    return problems


def _longest_lease() -> tuple[float, str]:
    longest, where = 0.0, ""
    default = float(conf.DEFAULT_STEP_TIMEOUT)
    for definition in all_versions():
        for step in definition.steps:
            timeouts = [step.timeout or default]
            if step.compensation_def is not None:
                timeouts.append(step.compensation_def.timeout or step.timeout or default)
            for timeout in timeouts:
                if timeout > longest:
                    longest, where = timeout, f"{definition.name}.{step.name}"
    return longest + float(conf.LEASE_GRACE), where


@register(Tags.compatibility)
def check_visibility_timeout(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    broker = str(getattr(settings, "CELERY_BROKER_URL", "") or "")
    if not broker.startswith(("redis://", "rediss://", "sqs://")):
        return []
    options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {}) or {}
    visibility = float(options.get("visibility_timeout", REDIS_DEFAULT_VISIBILITY))
    try:
        lease, where = _longest_lease()
    except ConfigurationError:  # an invalid SAGAFLOW: sagaflow.E004 says what is wrong
        return []
    if lease <= visibility:
        return []
    return [
        Error(
            f"The broker's visibility_timeout ({visibility:g}s) is shorter than step "
            f"{where}'s timeout plus LEASE_GRACE ({lease:g}s): the broker would hand a "
            f"running step to a second worker.",
            hint="Raise CELERY_BROKER_TRANSPORT_OPTIONS['visibility_timeout'] above it.",
            id="sagaflow.E002",
        )
    ]


@register(Tags.compatibility)
def check_settings_dict(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """A typo in ``SAGAFLOW`` is an error here, not a traceback from the first read."""
    value = getattr(settings, "SAGAFLOW", {}) or {}
    if not isinstance(value, dict):
        return [
            Error(
                f"settings.SAGAFLOW must be a dict, got {type(value).__name__}.",
                hint="Set SAGAFLOW = {...} with the keys listed in sagaflow/conf.py, or remove it.",
                id="sagaflow.E004",
            )
        ]
    return [
        Error(
            f"Unknown key {key!r} in settings.SAGAFLOW"
            + (f"; did you mean {close!r}?" if close else "."),
            hint=f"Rename it to {close!r}."
            if close
            else "Remove it; the known keys are the fields of sagaflow.conf.Defaults.",
            obj="settings.SAGAFLOW",
            id="sagaflow.E004",
        )
        for key, close in unknown_keys(value).items()
    ]


#: What needs PostgreSQL, for the error below (their SQL: SKIP LOCKED, now(),
#: make_interval, advisory locks, LISTEN/NOTIFY).
NEEDS_POSTGRESQL = (
    "sagaflow.publish",
    "the outbox relay (the sagaflow.relay_outbox task, manage.py sagaflow_relay)",
    "@sagaflow.consumer inboxes",
    "manage.py sagaflow status",
    "the outbox admin",
)


@register(Tags.compatibility)
def check_postgresql(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """Refuse at start-up rather than fail with a raw SQL error in a request or a task.

    Sagas and idempotency keys also run on other databases (the demo runs them on
    SQLite), so a project that uses nothing in ``NEEDS_POSTGRESQL`` may silence this
    error deliberately. No connection is opened: the vendor comes from the backend.
    """
    vendor = connections["default"].vendor
    if vendor == "postgresql":
        return []
    return [
        Error(
            f"sagaflow needs PostgreSQL, and the default database is {vendor}. These use "
            f"PostgreSQL's SQL and would fail on {vendor}: {'; '.join(NEEDS_POSTGRESQL)}.",
            hint="Point DATABASES['default'] at PostgreSQL (ENGINE "
            "'django.db.backends.postgresql'). A development project that only runs sagas "
            f"and idempotency keys on {vendor} may add 'sagaflow.E003' to "
            "SILENCED_SYSTEM_CHECKS.",
            id="sagaflow.E003",
        )
    ]


# Not tagged `database`: it reads the backend's vendor and opens no connection, so it
# runs in `check` and `runserver` too (Django 6.1 runs database checks only on request).
@register(Tags.compatibility)
def check_database(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    if settings.DEBUG or connections["default"].vendor != "sqlite":
        return []
    return [
        Warning(
            "sagaflow runs on SQLite outside DEBUG: SQLite has no row locks or SKIP "
            "LOCKED, so concurrent workers and relays are not safe.",
            hint="Use PostgreSQL in production; SQLite is for the demo only.",
            id="sagaflow.W005",
        )
    ]


def _code(fn: StepFunction) -> Any:
    """What a function does, without where it is written: its bytecode, names and
    constants (nested functions alike), so a copy of a function is the same code."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return fn
    return _code_object(code)


def _code_object(code: Any) -> tuple:
    consts = tuple(_code_object(c) if hasattr(c, "co_code") else c for c in code.co_consts)
    return (code.co_code, code.co_names, code.co_varnames, consts)


def _shape(definition: SagaDefinition) -> tuple:
    """Everything a version of a saga is made of except its number."""
    steps = []
    for step in definition.steps:
        compensation = step.compensation_def
        steps.append(
            (
                step.name,
                _code(step.fn),
                step.retry,
                step.timeout,
                step.atomic,
                step.compensate_on_failure,
                step.queue,
                None
                if compensation is None
                else (
                    _code(compensation.fn),
                    compensation.retry,
                    compensation.timeout,
                    compensation.queue,
                ),
            )
        )
    return (definition.deadline, definition.local_steps, tuple(steps))


@register(Tags.compatibility)
def check_versions(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """Two versions of one saga that are the same: a new version was probably
    meant to change something (or the old one was copied and never edited)."""
    by_name: dict[str, list[SagaDefinition]] = defaultdict(list)
    for definition in all_versions():
        by_name[definition.name].append(definition)
    problems = []
    for name, definitions in by_name.items():
        seen: dict[tuple, int] = {}
        for definition in definitions:
            shape = _shape(definition)
            earlier = seen.setdefault(shape, definition.version)
            if earlier != definition.version:
                problems.append(
                    Warning(
                        f"Versions {earlier} and {definition.version} of saga {name!r} are "
                        f"identical: same steps, options and code.",
                        hint=f"Change version {definition.version}'s steps, or remove it "
                        f"(new runs start on the highest version; keep an old version "
                        f"only while its runs are in flight).",
                        obj=definition.module,
                        id="sagaflow.W006",
                    )
                )
    return problems


@register(Tags.database)
def check_live_versions(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[Warning]:
    """Live runs whose version's code is gone, or whose version's steps were
    changed in place since they started (their stored fingerprint differs)."""
    alias = router.db_for_read(Saga)
    if not databases or alias not in databases:
        return []
    try:
        live = scans.live_versions()
    except DatabaseError:  # not migrated yet (``migrate`` runs the checks first)
        return []
    problems = []
    for group in live:
        versions = versions_of(group.name)
        definition = versions.get(group.version)
        if definition is None:
            have = ", ".join(str(v) for v in versions) or "none"
            problems.append(
                Warning(
                    f"{group.runs} live run(s) of saga {group.name!r} are version "
                    f"{group.version}, which this code does not define (versions: {have}). "
                    f"They wait: needs the code of version {group.version} of {group.name}.",
                    hint=f"Keep sagaflow.define({group.name!r}, version={group.version}) and "
                    f"its steps deployed until its runs have ended.",
                    id="sagaflow.W008",
                )
            )
        elif group.steps_fingerprint and group.steps_fingerprint != definition.fingerprint:
            stored = scans.step_names_of_a_run(group.name, group.version, group.steps_fingerprint)
            problems.append(
                Warning(
                    f"Version {group.version} of saga {group.name!r} was changed in place: "
                    f"{group.runs} live run(s) of it started with the steps {stored}, the "
                    f"code now has {[s.name for s in definition.steps]}. They wait: needs "
                    f"the code of version {group.version} of {group.name}.",
                    hint=f"Restore version {group.version}'s steps, and define the new steps "
                    f"as version {max(versions) + 1}.",
                    obj=definition.module,
                    id="sagaflow.W007",
                )
            )
    return problems
