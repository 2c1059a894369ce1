"""sagaflow's settings: one ``SAGAFLOW`` dict in Django settings, read live.

Defaults live here and are never written into ``django.conf.settings``; a test that
overrides ``SAGAFLOW`` with ``override_settings`` is seen on the next attribute read.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
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
    #: Bounds on the engine's own transactions (PostgreSQL; seconds, set with
    #: ``SET LOCAL`` in the statement batch that takes the run's lock, so they cost
    #: no round trip). A lock wait longer than ``LOCK_TIMEOUT`` fails the task, which
    #: Celery retries; a session idle inside a transaction for longer than
    #: ``IDLE_IN_TRANSACTION_TIMEOUT`` (a frozen or partitioned worker holding a
    #: run's lock) is ended by PostgreSQL, which releases the lock. An atomic step's
    #: transaction gets its step's timeout plus ``LEASE_GRACE`` for both instead.
    LOCK_TIMEOUT: float = 10.0
    STATEMENT_TIMEOUT: float = 30.0
    IDLE_IN_TRANSACTION_TIMEOUT: float = 30.0
    #: How many rows one sweep handles per kind of work, so a sweep stays short.
    SWEEP_BATCH_SIZE: int = 500
    #: Celery queue for sagaflow's messages (None: the default queue).
    QUEUE: str | None = None
    #: Longest ``key`` accepted by ``start``.
    KEY_MAX_LENGTH: int = 200
    #: A live saga whose row has not changed for this many seconds is "stuck":
    #: shown in the admin's filter and in ``manage.py sagaflow status``.
    STUCK_AFTER: float = 300.0
    #: Outbox lag (age of the oldest unpublished event) that ``status`` reports
    #: as needing attention.
    OUTBOX_LAG_ALERT: float = 60.0
    # --- idempotency keys (docs/idempotency.md) ---
    #: Seconds a completed key is replayed before it may be reused (24 h).
    IDEMPOTENCY_TTL: float = 86400.0
    #: Seconds an in-flight claim is held; after that a retry takes it over (the
    #: first request's process is presumed dead). Keep it above the request timeout.
    IDEMPOTENCY_LEASE: float = 60.0
    #: ``Retry-After`` seconds sent with 409 while the same key is in flight.
    IDEMPOTENCY_RETRY_AFTER: int = 1
    #: ``Retry-After`` seconds sent with 503 when the keys' database cannot be
    #: reached while a key is claimed (nothing was done; the same key may be retried).
    IDEMPOTENCY_UNAVAILABLE_RETRY_AFTER: int = 5
    #: Bounds of the published key format (printable ASCII, no spaces).
    IDEMPOTENCY_KEY_MIN_LENGTH: int = 1
    IDEMPOTENCY_KEY_MAX_LENGTH: int = 255
    #: Methods that ``@idempotent`` applies to; safe methods pass through.
    IDEMPOTENCY_METHODS: tuple[str, ...] = ("POST", "PUT", "PATCH", "DELETE")
    #: Dotted path of ``scope(request) -> str | None``: whose keys these are.
    IDEMPOTENCY_SCOPE: str = "sagaflow.idempotency.user_scope"
    #: Response headers stored and replayed (cookies and auth headers never are).
    #: ``Cache-Control`` is among them so that a replay of a ``no-store`` response
    #: is ``no-store`` too.
    IDEMPOTENCY_REPLAY_HEADERS: tuple[str, ...] = (
        "Content-Type",
        "Cache-Control",
        "Content-Language",
        "Content-Location",
        "Location",
        "ETag",
        "Last-Modified",
        "Link",
    )
    #: Responses with a longer body are not stored: a 4xx releases its key (it
    #: changed nothing; a retry runs again), a success keeps it without a body
    #: (replays answer 409: it never runs twice). None: no limit.
    IDEMPOTENCY_MAX_RESPONSE_BYTES: int | None = 1024 * 1024
    #: Store 4xx responses of the view and replay them, as Stripe does (False:
    #: a 4xx releases the key, so a corrected retry may reuse it).
    IDEMPOTENCY_STORE_CLIENT_ERRORS: bool = True
    #: Store responses marked ``Cache-Control: no-store`` too (the key's record is
    #: not an HTTP cache). False: such a response keeps its key without a body.
    IDEMPOTENCY_STORE_NO_STORE_RESPONSES: bool = True
    #: A ``CACHES`` alias to keep completed responses in, so that replays skip the
    #: database (``sagaflow.idempotency.cache``); None: every replay reads its row.
    IDEMPOTENCY_REPLAY_CACHE: str | None = None
    #: Seconds a cached response is served: also how long, at most, a replay may
    #: outlive its key's expiry or deletion.
    IDEMPOTENCY_REPLAY_CACHE_SECONDS: float = 30.0
    #: Rows the janitor deletes per statement, so no delete holds locks for long.
    JANITOR_BATCH_SIZE: int = 1000
    # --- transactional outbox (docs/outbox.md) ---
    #: Events one relay transaction claims and publishes as one broker message.
    OUTBOX_BATCH_SIZE: int = 500
    #: Failed publishes (broker down) before an event is ``dead``; with the
    #: backoff below this is about an hour and a half of outage.
    OUTBOX_MAX_ATTEMPTS: int = 25
    OUTBOX_RETRY_BACKOFF: float = 0.5
    OUTBOX_RETRY_MAX_BACKOFF: float = 300.0
    #: Upper bound on one broker publish; the claim's row locks are held across
    #: it, so a hung broker cannot make the relay a long transaction. The broker
    #: transport's own ``socket_timeout``/``socket_connect_timeout`` must be lower.
    OUTBOX_PUBLISH_TIMEOUT: float = 10.0
    #: Dotted path of the publisher class (``publish(events)``, one round trip).
    OUTBOX_PUBLISHER: str = "sagaflow.outbox.publishers.CeleryPublisher"
    #: Keep relayed events as ``published`` rows until ``OUTBOX_RETENTION`` (the
    #: admin shows them, consumer retries and the broker-loss redelivery read them);
    #: ``False`` deletes each event in the statement that claims it.
    OUTBOX_KEEP_PUBLISHED: bool = True
    #: Celery queue for delivered events (None: ``QUEUE``).
    OUTBOX_QUEUE: str | None = None
    #: Send ``sagaflow.relay_outbox`` to Celery when a transaction that published
    #: commits (turn off when ``manage.py sagaflow_relay`` runs: NOTIFY wakes it).
    OUTBOX_KICK_ON_COMMIT: bool = True
    #: ``NOTIFY`` the long-lived relay from publishing transactions (PostgreSQL).
    OUTBOX_NOTIFY: bool = True
    #: Serialise transactions that publish the same key (a transaction-level
    #: advisory lock), so per key, id order is commit order.
    OUTBOX_SERIALIZE_KEYS: bool = True
    #: Seconds the long-lived relay sleeps without a NOTIFY before looking anyway
    #: (retries that became due, a missed notification).
    OUTBOX_POLL_INTERVAL: float = 1.0
    #: Seconds one ``sagaflow.relay_outbox`` task drains before handing over to a
    #: fresh task, so a worker slot is not held forever under sustained load.
    OUTBOX_TASK_TIME_BUDGET: float = 20.0
    #: Finished runs (completed, compensated, and failed ones a person resolved)
    #: are deleted with their steps this many seconds after they ended or were
    #: resolved (30 days). Failed runs nobody resolved are kept.
    SAGA_RETENTION: float = 30 * 86400.0
    #: Published events and processed inbox rows are kept this long (7 days).
    OUTBOX_RETENTION: float = 7 * 86400.0
    INBOX_RETENTION: float = 7 * 86400.0
    #: Consumer handler retries when its ``@consumer`` names no ``retry``.
    CONSUMER_RETRY_ATTEMPTS: int = 5
    CONSUMER_RETRY_BACKOFF: float = 1.0
    CONSUMER_RETRY_MAX_BACKOFF: float = 300.0
    #: A retry sent to the broker but not run after this many seconds is sent again.
    CONSUMER_REDELIVER_AFTER: float = 60.0
    #: Published events a local consumer never received are sent again while they
    #: are younger than this (seconds); keep it well under ``INBOX_RETENTION``.
    CONSUMER_REDELIVERY_WINDOW: float = 3600.0


NAMES = frozenset(f.name for f in fields(Defaults))


def unknown_keys(value: Mapping[Any, Any]) -> dict[str, str | None]:
    """The keys of ``value`` that name no setting, each with the closest known name.

    Shared by the live reads below and the system check ``sagaflow.E004``, so that
    ``manage.py check`` reports a typo with the same "did you mean" as a worker.
    """
    return {
        str(key): next(iter(difflib.get_close_matches(str(key).upper(), NAMES, n=1)), None)
        for key in sorted(value, key=str)
        if key not in NAMES
    }


class Settings:
    """Typed, live view of ``settings.SAGAFLOW`` over ``Defaults``."""

    _names = NAMES

    def _user(self) -> dict[str, Any]:
        value = getattr(django_settings, "SAGAFLOW", {}) or {}
        if not isinstance(value, dict):
            raise ConfigurationError(
                f"settings.SAGAFLOW must be a dict, got {type(value).__name__}."
            )
        unknown = unknown_keys(value)
        if unknown:
            guesses = [
                f"{key} (did you mean {close}?)" if close else key for key, close in unknown.items()
            ]
            raise ConfigurationError(
                f"Unknown key(s) in settings.SAGAFLOW: {', '.join(guesses)}. "
                f"Known keys: {', '.join(sorted(self._names))}."
            )
        return value

    def __getattr__(self, name: str) -> Any:
        if name not in self._names:
            raise AttributeError(name)
        return self._user().get(name, getattr(Defaults, name))


conf = Settings()
