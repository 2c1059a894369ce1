"""The policy of ``@idempotent``: its options, whose key it is, and what a request asks.

The policy follows the IETF ``Idempotency-Key`` draft (see docs/idempotency.md).
It runs when the *view* is called, not in the middleware, for two reasons:

- only there is the view's transaction open (``ATOMIC_REQUESTS`` or an outer
  ``@transaction.atomic``), so the key's record can commit together with the
  view's writes, and
- only there has Django REST framework authenticated the caller, so the key is
  scoped to the right principal.

It follows that a request refused before the view ran (CSRF, authentication,
permissions, throttling, a body too large) never touches the key.

``prepare`` decides everything that needs no database: whether the request is
under the policy at all, its key, its scope, its route and its fingerprint. A
request it refuses (a malformed key, an anonymous client, a body that cannot be
read) gets its problem response before any row is read or written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any, cast

from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string

from ..conf import conf
from ..exceptions import (
    ConfigurationError,
    IdempotencyError,
    IdempotencyKeyMissing,
    IdempotencyScopeMissing,
)
from .http import HEADER, fingerprint, parse_key, problem_response
from .outcomes import Identity

ScopeFunction = Callable[[Any], "str | None"]

#: ``IdempotencyInfo.mode``: the key commits with the view's transaction.
ATOMIC = "atomic"
#: ``IdempotencyInfo.mode``: the claim is committed before the view runs.
CLAIM_FIRST = "claim-first"

_META_HEADER = "HTTP_" + HEADER.upper().replace("-", "_")


def user_scope(request: Any) -> str | None:
    """Default scope: the authenticated user's primary key; None if anonymous.

    There is no shared anonymous bucket: one anonymous client could otherwise
    block or read another's responses by guessing its key.
    """
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    return f"user:{user.pk}"


@lru_cache(maxsize=8)
def import_scope(path: str) -> ScopeFunction:
    """The scope function named by ``SAGAFLOW['IDEMPOTENCY_SCOPE']``."""
    try:
        # import_string returns Any; the setting names a scope(request) function.
        return cast(ScopeFunction, import_string(path))
    except ImportError as exc:
        raise ConfigurationError(
            f"SAGAFLOW['IDEMPOTENCY_SCOPE'] = {path!r} cannot be imported ({exc}); "
            f"give the dotted path of a function scope(request) -> str | None."
        ) from exc


@dataclass(frozen=True)
class IdempotencyInfo:
    """Set as ``request.idempotency`` while an ``@idempotent`` view runs with a key.

    ``attempt`` is 2 or more when the view runs again after the process that
    first claimed the key died: a view with external side effects should pass
    ``key`` on (e.g. as the payment provider's idempotency key) or check them.
    """

    key: str
    scope: str
    attempt: int
    mode: str


@dataclass(frozen=True)
class Policy:
    """The options of one ``@idempotent(...)``; None means "the setting's value"."""

    required: bool
    ttl: float | None
    scope: ScopeFunction | None

    @classmethod
    def of(
        cls,
        *,
        required: bool,
        ttl: timedelta | float | None,
        scope: ScopeFunction | None,
    ) -> Policy:
        """Validate the decorator's arguments once, at import time of the view."""
        if scope is not None and not callable(scope):
            raise ConfigurationError(f"@idempotent(scope={scope!r}): give a function(request).")
        return cls(required=bool(required), ttl=_seconds(ttl), scope=scope)


def _seconds(ttl: timedelta | float | None) -> float | None:
    if ttl is None:
        return None
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
        raise ConfigurationError(
            f"@idempotent(ttl={ttl!r}): give a positive number of seconds or a timedelta."
        )
    return float(seconds)


@dataclass(frozen=True)
class Prepared:
    """A request under the policy, validated: what the key store is asked about."""

    http: HttpRequest
    scope: str
    method: str
    route: str
    key: str
    fingerprint: str
    ttl: float

    @property
    def identity(self) -> Identity:
        return Identity(self.scope, self.method, self.route, self.key)


def prepare(request: Any, policy: Policy) -> Prepared | HttpResponse | None:
    """Validate without touching the database: None means "not ours, just run".

    ``request`` is Django's, or Django REST framework's wrapping it.
    """
    http: HttpRequest = getattr(request, "_request", request)
    if not getattr(http, "_sagaflow_idempotency", False):
        raise ConfigurationError(
            "@idempotent view called without sagaflow's middleware: add "
            "'sagaflow.middleware.IdempotencyMiddleware' to settings.MIDDLEWARE."
        )
    method = (http.method or "").upper()
    if method not in conf.IDEMPOTENCY_METHODS:
        return None
    try:
        key = parse_key(http.META.get(_META_HEADER))
        if key is None:
            if policy.required:
                raise IdempotencyKeyMissing(
                    f"{method} {http.path} requires an {HEADER} header: send a new random "
                    f"value (e.g. a UUID) per operation and the same one when retrying it."
                )
            return None
        scope_function = policy.scope or import_scope(conf.IDEMPOTENCY_SCOPE)
        scope = scope_function(request)
        if scope is None:
            raise IdempotencyScopeMissing(
                f"{HEADER} is only honoured for identified clients and this request is "
                f"anonymous: authenticate, or send no {HEADER}."
            )
        if not isinstance(scope, str) or not 0 < len(scope) <= 255:
            raise ConfigurationError(
                f"The idempotency scope function returned {scope!r}; it must return a str "
                f"of 1 to 255 characters or None."
            )
        match = http.resolver_match
        route = match.route if match is not None and match.route else http.path
        return Prepared(
            http=http,
            scope=scope,
            method=method,
            route=route,
            key=key,
            fingerprint=fingerprint(http, method, route),
            ttl=policy.ttl if policy.ttl is not None else float(conf.IDEMPOTENCY_TTL),
        )
    except IdempotencyError as error:
        return problem_response(error)
