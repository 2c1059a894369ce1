"""Checked by mypy in ``make lint``, never run: the types a user's code sees.

``assert_type`` fails the lint when the public API's types regress, e.g. when
``@idempotent`` returns ``Any`` again and a decorated view becomes untyped. The
``type: ignore`` lines are expected errors: with ``warn_unused_ignores`` an
ignore that has nothing to ignore fails the lint, so they prove mypy checks the
calls.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, assert_type

from django.http import HttpRequest, HttpResponse
from django.views import View

import sagaflow
from sagaflow.idempotency import idempotent
from sagaflow.models import Saga

SyncView = Callable[[HttpRequest, int], HttpResponse]
AsyncView = Callable[[HttpRequest], Coroutine[Any, Any, HttpResponse]]


def order_view(request: HttpRequest, order_id: int) -> HttpResponse:
    return HttpResponse(str(order_id))


async def async_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse()


class Orders(View):
    def post(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse()


@idempotent
def bare(request: HttpRequest, order_id: int) -> HttpResponse:
    return HttpResponse()


@idempotent(required=True, ttl=60)
def with_options(request: HttpRequest, order_id: int) -> HttpResponse:
    return HttpResponse()


def check_idempotent_keeps_the_view_type(request: HttpRequest) -> None:
    sync: SyncView = order_view
    assert_type(idempotent(sync), SyncView)
    assert_type(idempotent(required=True, ttl=60)(sync), SyncView)
    asynchronous: AsyncView = async_view
    assert_type(idempotent(asynchronous), AsyncView)
    assert_type(idempotent(Orders), type[Orders])
    assert_type(bare(request, 1), HttpResponse)
    assert_type(with_options(request, 1), HttpResponse)
    bare(request, "1")  # type: ignore[arg-type]  # expected: order_id is an int
    with_options(request)  # type: ignore[call-arg]  # expected: order_id is missing


def check_idempotent_refuses_bad_options() -> None:
    idempotent(ttl="soon")  # type: ignore[call-overload]  # expected: ttl is seconds or a timedelta


def check_start_returns_the_run() -> None:
    assert_type(sagaflow.start("checkout", {"order": 1}), Saga)
