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
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.db import connections
from django.urls import URLPattern, URLResolver, get_resolver

from .conf import conf, unknown_keys
from .exceptions import ConfigurationError
from .saga.registry import all_definitions

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
    for definition in all_definitions().values():
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
