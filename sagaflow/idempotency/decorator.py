"""``@idempotent``: the decorator, and the claim, run and store flow around a view.

``policy`` decides what a request asks without the database; this module takes
the key (``store``), runs the view, and records its response (``record``) or
releases the key.

Mode, chosen per call: when a transaction is open on the keys' database the key
is reserved inside it and written with the response when the view returns, in
that same transaction (**atomic mode**: one read before the view, one write
after, no commit of its own); otherwise the claim is committed on its own before
the view runs (**claim-first mode**, Stripe's recovery point), which is what
views with external side effects need. In both, a replay is one indexed read.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar, cast, overload

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.db import InterfaceError, OperationalError, connections, transaction
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase

from ..conf import conf
from ..exceptions import (
    ConfigurationError,
    IdempotencyError,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    IdempotencyResponseNotStored,
    IdempotencyStoreUnavailable,
)
from ..faults import fault_point, register_points
from . import cache as replay_cache
from . import record, store
from .http import HEADER, problem_response, replay
from .outcomes import COMPLETED, Claimed, ClaimOutcome, Existing, Reserved, Vanished
from .policy import (
    ATOMIC,
    CLAIM_FIRST,
    IdempotencyInfo,
    Policy,
    Prepared,
    ScopeFunction,
    prepare,
)

logger = logging.getLogger("sagaflow.idempotency")

_UNSAFE_HANDLERS = ("post", "put", "patch", "delete")
_CLAIM_TRIES = 3
#: What a database that cannot be reached raises (refused, reset, killed session,
#: statement or lock timeout): the claim did not happen, and the client may retry.
_UNREACHABLE = (OperationalError, InterfaceError)

register_points(
    "idempotency.after_claim",  # the claim is written; the view has not run
    "idempotency.after_view",  # the view ran; its response is not recorded
)

#: A view: a function, a handler method or a class-based view (a class is callable too).
_View = TypeVar("_View", bound=Callable[..., Any])
_Class = TypeVar("_Class", bound=type)
_Function = TypeVar("_Function", bound=Callable[..., Any])


@overload
def idempotent(
    view: _View,
    /,
    *,
    required: bool = ...,
    ttl: timedelta | float | None = ...,
    scope: ScopeFunction | None = ...,
) -> _View: ...


@overload
def idempotent(
    view: None = None,
    /,
    *,
    required: bool = ...,
    ttl: timedelta | float | None = ...,
    scope: ScopeFunction | None = ...,
) -> Callable[[_View], _View]: ...


def idempotent(
    view: _View | None = None,
    /,
    *,
    required: bool = False,
    ttl: timedelta | float | None = None,
    scope: ScopeFunction | None = None,
) -> _View | Callable[[_View], _View]:
    """Make a view honour ``Idempotency-Key`` on POST, PUT, PATCH and DELETE.

    Use bare (``@idempotent``) or with options. Decorates a function view, a
    method handler of a class-based or DRF view (``def post(self, request)``), or
    the class itself (each of its post/put/patch/delete handlers). ``required``
    answers 400 to a request without a key; ``ttl`` (seconds or timedelta)
    overrides ``SAGAFLOW['IDEMPOTENCY_TTL']``; ``scope(request) -> str | None``
    overrides ``SAGAFLOW['IDEMPOTENCY_SCOPE']``. The decorated view keeps its type.
    """
    policy = Policy.of(required=required, ttl=ttl, scope=scope)

    def decorate(target: _View) -> _View:
        if isinstance(target, type):
            return _decorate_class(target, policy)
        if not callable(target):
            raise ConfigurationError(f"@idempotent cannot decorate {target!r}: not a view.")
        return _wrap(target, policy)

    return decorate(view) if view is not None else decorate


def _decorate_class(cls: _Class, policy: Policy) -> _Class:
    found = [name for name in _UNSAFE_HANDLERS if callable(getattr(cls, name, None))]
    if not found:
        raise ConfigurationError(
            f"@idempotent on {cls.__name__}: it defines none of "
            f"{', '.join(_UNSAFE_HANDLERS)}; decorate the handler methods instead."
        )
    for name in found:
        setattr(cls, name, _wrap(getattr(cls, name), policy))
    return cls


def _find_request(args: tuple[Any, ...]) -> Any:
    for candidate in args[:2]:  # (request, ...) or (self, request, ...)
        if isinstance(candidate, HttpRequest) or isinstance(
            getattr(candidate, "_request", None), HttpRequest
        ):
            return candidate
    raise ConfigurationError(
        "@idempotent found no request among the view's first two arguments; decorate "
        "a view function (request, ...) or a handler method (self, request, ...)."
    )


def _wrap(view: _Function, policy: Policy) -> _Function:
    """``view`` wrapped in the idempotency flow; the wrapper takes and returns what it does."""
    if iscoroutinefunction(view):

        @functools.wraps(view)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            request = _find_request(args)
            # The scope function may load the user from the database: in a thread.
            try:
                prepared = await sync_to_async(prepare)(request, policy)
            except _UNREACHABLE as error:
                return await sync_to_async(_unavailable)(error, store.alias())
            if prepared is None:
                return await view(*args, **kwargs)
            if isinstance(prepared, HttpResponseBase):
                return prepared
            return await _run_async(prepared, view, args, kwargs)

        # The marker the system checks look for (sagaflow.checks); not part of the type.
        async_wrapper.sagaflow_idempotent = policy  # type: ignore[attr-defined]
        # functools.wraps types the wrapper as (*args, **kwargs): it has view's signature.
        return cast(_Function, async_wrapper)

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        request = _find_request(args)
        try:
            prepared = prepare(request, policy)  # the scope may read the session's user
        except _UNREACHABLE as error:
            return _unavailable(error, store.alias())
        if prepared is None:
            return view(*args, **kwargs)
        if isinstance(prepared, HttpResponseBase):
            return prepared
        return _run_sync(prepared, request, view, args, kwargs)

    # The marker the system checks look for (sagaflow.checks); not part of the type.
    wrapper.sagaflow_idempotent = policy  # type: ignore[attr-defined]
    # functools.wraps types the wrapper as (*args, **kwargs): it has view's signature.
    return cast(_Function, wrapper)


def _claim(
    prepared: Prepared, using: str, *, atomic_mode: bool
) -> Claimed | Reserved | HttpResponse:
    """Take the key; returns the outcome, or the response to send instead.

    Atomic mode reserves it in the view's transaction (nothing is written until
    the response is); claim-first mode writes the in-flight claim, committed at
    once when no transaction is open.
    """
    take = store.reserve if atomic_mode else store.claim
    identity = prepared.identity
    lease = float(conf.IDEMPOTENCY_LEASE)
    for _ in range(_CLAIM_TRIES):
        outcome = take(identity, prepared.fingerprint, lease=lease, ttl=prepared.ttl, using=using)
        if not isinstance(outcome, Vanished):
            break
    if isinstance(outcome, Claimed | Reserved):
        return outcome
    return _answer(prepared, outcome, using=using)


def _cached(prepared: Prepared, using: str) -> HttpResponse | None:
    """A replay, or a 422, answered from the replay cache (if one is configured)."""
    existing = replay_cache.get(prepared.identity, using)
    if existing is None:
        return None
    return _answer(prepared, existing, using=None)


def _answer(
    prepared: Prepared, outcome: ClaimOutcome | None, *, using: str | None = None
) -> HttpResponse:
    """The response for a key that is not ours: replay, 422 or 409.

    With ``using``, ``outcome`` was just read from that database: a completed one
    goes to the replay cache.
    """
    try:
        if isinstance(outcome, Existing) and outcome.fingerprint != prepared.fingerprint:
            raise IdempotencyKeyReused(
                f"{HEADER} {prepared.key!r} was already used for a different "
                f"{prepared.method} request to {prepared.http.path} (body, path, query or "
                f"content type differ). Use a new key for a new operation."
            )
        if isinstance(outcome, Existing) and outcome.state == COMPLETED:
            if outcome.body is None or outcome.status is None:
                raise IdempotencyResponseNotStored(
                    f"The request with {HEADER} {prepared.key!r} completed, but its response "
                    f"was not stored (streaming, larger than IDEMPOTENCY_MAX_RESPONSE_BYTES, "
                    f"or Cache-Control: no-store); it will not run again."
                )
            if using is not None:
                replay_cache.put(prepared.identity, using, outcome)
            return replay(outcome.status, outcome.headers, outcome.body)
        retry_after = int(conf.IDEMPOTENCY_RETRY_AFTER)
        raise IdempotencyKeyInFlight(
            f"A request with {HEADER} {prepared.key!r} is still being processed; retry "
            f"after {retry_after} s to get its response.",
            retry_after=retry_after,
        )
    except IdempotencyError as error:
        return problem_response(error)


def _claim_first(prepared: Prepared, using: str) -> Claimed | Reserved | HttpResponse:
    # A replay, or a key in flight elsewhere, answers from one read: no transaction.
    cached = _cached(prepared, using)
    if cached is not None:
        return cached
    existing = store.lookup(prepared.identity, using=using)
    if existing is not None:
        return _answer(prepared, existing, using=using)
    return _claim(prepared, using, atomic_mode=False)  # committed at once


def _unavailable(error: Exception, using: str) -> HttpResponse:
    """503 for a database that failed while the key was being claimed.

    Nothing ran and nothing was recorded, so the client should retry with the same
    key. In atomic mode the view's transaction is lost with its session: the
    session is closed, so that the transaction ends without another round trip to
    a database that may still be down (PostgreSQL rolls it back).
    """
    logger.warning(
        "idempotency key store unavailable while claiming a key: answered 503 (%s)",
        str(error).splitlines()[0] if str(error) else type(error).__name__,
        extra={"database": using},
    )
    if connections[using].in_atomic_block:
        connections[using].close()
    retry_after = int(conf.IDEMPOTENCY_UNAVAILABLE_RETRY_AFTER)
    return problem_response(
        IdempotencyStoreUnavailable(
            f"The database that holds idempotency keys ({using!r}) cannot be reached; "
            f"nothing was done. Retry after {retry_after} s with the same {HEADER}.",
            retry_after=retry_after,
        )
    )


def _run_sync(
    prepared: Prepared, request: Any, view: Callable[..., Any], args: Any, kwargs: Any
) -> Any:
    using = store.alias()
    atomic_mode = connections[using].in_atomic_block
    outcome: Claimed | Reserved | HttpResponse
    try:
        if atomic_mode:
            cached = _cached(prepared, using)
            outcome = cached if cached is not None else _claim(prepared, using, atomic_mode=True)
        else:
            outcome = _claim_first(prepared, using)
    except _UNREACHABLE as error:
        return _unavailable(error, using)
    if isinstance(outcome, HttpResponseBase):
        return outcome
    # request.idempotency is sagaflow's attribute (set by the middleware), not Django's.
    prepared.http.idempotency = IdempotencyInfo(  # type: ignore[attr-defined]
        prepared.key, prepared.scope, outcome.attempt, ATOMIC if atomic_mode else CLAIM_FIRST
    )
    # A fault here is a crash: nothing below runs, the claim stays (claim-first
    # mode, taken over after the lease) or rolls back with the view (atomic mode).
    fault_point("idempotency.after_claim")
    try:
        response = record.render(request, view(*args, **kwargs))
    except Exception:
        # The view failed: the client will retry, so let it. In atomic mode the
        # exception rolls the claim back with the view's writes.
        if not atomic_mode:
            store.release(outcome)
        raise
    fault_point("idempotency.after_view")
    if response.status_code >= 500:
        if atomic_mode:
            # Keep the view's writes and the key together: neither commits.
            transaction.set_rollback(True, using=using)
        else:
            store.release(outcome)
        return response
    body = record.storable_body(prepared, response)
    if isinstance(body, record.NotStored):  # a 4xx: nothing was done, the key is free again
        if not atomic_mode:
            store.release(outcome)
        return response
    if not record.save(outcome, response, body) and isinstance(outcome, Reserved):
        # A claim-first holder of this key recorded its response while this view
        # ran: that one stands. Roll this view's writes back and answer as a retry.
        answer = _answer(prepared, store.lookup(prepared.identity, using=using), using=using)
        transaction.set_rollback(True, using=using)
        return answer
    return response


async def _run_async(prepared: Prepared, view: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    # Async views cannot run in a transaction: always claim-first.
    using = store.alias()
    try:
        outcome = await sync_to_async(_claim_first)(prepared, using)
    except _UNREACHABLE as error:
        return await sync_to_async(_unavailable)(error, using)
    if isinstance(outcome, HttpResponseBase):
        return outcome
    # request.idempotency is sagaflow's attribute (set by the middleware), not Django's.
    prepared.http.idempotency = IdempotencyInfo(  # type: ignore[attr-defined]
        prepared.key, prepared.scope, outcome.attempt, CLAIM_FIRST
    )
    fault_point("idempotency.after_claim")
    try:
        response = await view(*args, **kwargs)
        if callable(getattr(response, "render", None)) and not response.is_rendered:
            response = await sync_to_async(response.render)()
    except Exception:
        await sync_to_async(store.release)(outcome)
        raise
    fault_point("idempotency.after_view")
    body = record.storable_body(prepared, response) if response.status_code < 500 else None
    if response.status_code >= 500 or isinstance(body, record.NotStored):
        await sync_to_async(store.release)(outcome)
        return response
    await sync_to_async(record.save)(outcome, response, body)
    return response
