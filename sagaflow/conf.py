"""sagaflow's settings: one ``SAGAFLOW`` dict in Django settings, read live.

Defaults live here and are never written into ``django.conf.settings``; a test that
overrides ``SAGAFLOW`` with ``override_settings`` is seen on the next attribute read.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from django.conf import settings as django_settings

from .exceptions import ConfigurationError


@dataclass(frozen=True)
class Defaults:
    #: Seconds a step may run when its definition names no ``timeout``.
    DEFAULT_STEP_TIMEOUT: float = 60.0
    #: Tries in all (first included) for a step or compensation with no ``retry``.
    DEFAULT_RETRY_ATTEMPTS: int = 3
    DEFAULT_RETRY_BACKOFF: float = 1.0
    DEFAULT_RETRY_MAX_BACKOFF: float = 60.0
    #: Extra seconds on top of a step's timeout before its lease counts as lost.
    LEASE_GRACE: float = 10.0
    #: A step that is due but was not picked up this many seconds after its
    #: message was sent is sent again (its message was lost, e.g. Redis flushed).
    REDISPATCH_AFTER: float = 60.0
    #: Retry delays up to this many seconds go to the broker as a countdown;
    #: longer ones wait in PostgreSQL for the sweeper (broker ETAs longer than
    #: the visibility timeout are redelivered again and again).
    MAX_COUNTDOWN: float = 30.0
    #: How many rows one sweep handles per kind of work, so a sweep stays short.
    SWEEP_BATCH_SIZE: int = 500
    #: Celery queue for sagaflow's messages (None: the default queue).
    QUEUE: str | None = None
    #: Longest ``key`` accepted by ``start``.
    KEY_MAX_LENGTH: int = 200


class Settings:
    """Typed, live view of ``settings.SAGAFLOW`` over :class:`Defaults`."""

    _names = frozenset(f.name for f in fields(Defaults))

    def _user(self) -> dict[str, Any]:
        value = getattr(django_settings, "SAGAFLOW", {}) or {}
        if not isinstance(value, dict):
            raise ConfigurationError(
                f"settings.SAGAFLOW must be a dict, got {type(value).__name__}."
            )
        unknown = sorted(set(value) - self._names)
        if unknown:
            raise ConfigurationError(
                f"Unknown key(s) in settings.SAGAFLOW: {', '.join(unknown)}. "
                f"Known keys: {', '.join(sorted(self._names))}."
            )
        return value

    def __getattr__(self, name: str) -> Any:
        if name not in self._names:
            raise AttributeError(name)
        return self._user().get(name, getattr(Defaults, name))


conf = Settings()
