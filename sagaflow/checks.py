"""System checks (``manage.py check``) for mistakes that silently break guarantees.

Stable ids, so a project can silence one deliberately:

- ``sagaflow.W001`` to ``W003``: a Celery setting that at-least-once execution needs.
- ``sagaflow.E001``: ``@idempotent`` views are routed but the middleware is missing.
- ``sagaflow.W004``: the middleware sits before authentication (keys would be
  scoped to anonymous users).
- ``sagaflow.E002``: the broker's visibility timeout is shorter than a step's
  timeout plus lease grace: Redis would hand a running step to a second worker.
- ``sagaflow.W005``: SQLite outside DEBUG (no row locks, no SKIP LOCKED).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.db import connections
from django.urls import URLPattern, URLResolver, get_resolver

from .conf import conf
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
    lease, where = _longest_lease()
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


@register(Tags.database)
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
