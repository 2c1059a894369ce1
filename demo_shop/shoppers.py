"""Who is shopping: a logged-in user, or an anonymous shopper known by their session.

An anonymous shopper is a random id kept in their session (server-side: the cookie
holds only the session key, never the id). A page visit or ``GET /api/session``
gives a client one; a checkout never does. So a client without a session has no
scope for its idempotency keys and its checkout is refused (sagaflow's 400
``idempotency-scope-missing``), rather than given a bucket of its own per request,
in which a retry would place a second order, or one shared by every client behind
an address. A header such as ``X-Client-Id`` is whatever the client claims, so
nothing here reads one.

The id survives logging in (Django keeps an anonymous session's data when it logs
in), so a shopper who logs in still sees the orders placed before.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from django.db.models import Q
from django.http import HttpRequest

from .models import Order

#: The session entry that holds the anonymous shopper's id.
SESSION_KEY = "demo_shop.shopper"


@dataclass(frozen=True)
class Owner:
    """Whom a new order belongs to: a user (``user_id``) or an anonymous ``shopper``."""

    user_id: int | None = None
    shopper: str = ""

    def __post_init__(self) -> None:
        if (self.user_id is None) == (not self.shopper):
            raise ValueError("an owner is a user or an anonymous shopper, exactly one of them")


def _http(request: Any) -> HttpRequest:
    """The Django request, also when handed DRF's wrapper of it."""
    return getattr(request, "_request", request)


def _user_id(request: HttpRequest) -> int | None:
    user = getattr(request, "user", None)
    return user.pk if user is not None and user.is_authenticated else None


def shopper_id(request: Any) -> str | None:
    """The anonymous shopper id of this request's session, if it has one."""
    session = getattr(_http(request), "session", None)
    value = session.get(SESSION_KEY) if session is not None else None
    return value if isinstance(value, str) and value else None


def start(request: Any) -> str:
    """Give this session a shopper id, once; returns it (the cookie goes on the response)."""
    http = _http(request)
    existing = shopper_id(http)
    if existing:
        return existing
    http.session[SESSION_KEY] = secrets.token_hex(16)
    return http.session[SESSION_KEY]


def owner(request: Any) -> Owner | None:
    """Whom an order placed by this request belongs to; None for a client we cannot name."""
    http = _http(request)
    user_id = _user_id(http)
    if user_id is not None:
        return Owner(user_id=user_id)
    shopper = shopper_id(http)
    return Owner(shopper=shopper) if shopper else None


def idempotency_scope(request: Any) -> str | None:
    """``@idempotent``'s scope: the user, else the session's shopper, else none (400)."""
    who = owner(request)
    if who is None:
        return None
    return f"user:{who.user_id}" if who.user_id is not None else f"shopper:{who.shopper}"


def find_order(request: Any, public_id: str) -> Order | None:
    """The order ``public_id`` if this request may see it, else None (answer 404 alike).

    An order is its owner's: the user who placed it, or the shopper of the session
    it was placed in (also once that shopper has logged in). A malformed id, an
    unknown one and somebody else's order are not told apart.
    """
    try:
        key = uuid.UUID(public_id)
    except ValueError:
        return None
    http = _http(request)
    mine = Q(pk__in=[])
    user_id = _user_id(http)
    if user_id is not None:
        mine |= Q(user_id=user_id)
    shopper = shopper_id(http)
    if shopper:
        mine |= Q(shopper=shopper)
    return Order.objects.filter(mine, public_id=key).first()
