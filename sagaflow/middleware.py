"""``IdempotencyMiddleware``: the HTTP boundary of sagaflow's idempotency keys.

The policy itself runs in ``@idempotent`` when the view is called (see
``sagaflow.idempotency.policy`` for why). The middleware:

- marks each request as passing through a configured boundary, so a decorated
  view in a project that forgot the middleware fails loudly instead of silently
  running without protection;
- sets ``request.idempotency`` to None, so views can always read it;
- renders any ``IdempotencyError`` raised below it as ``application/problem+json``.

It is sync- and async-capable, so an ASGI stack stays async through it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest
from django.http.response import HttpResponseBase

from .exceptions import IdempotencyError
from .idempotency.http import problem_response

__all__ = ["IdempotencyMiddleware"]


class IdempotencyMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        self._mark(request)
        return self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        self._mark(request)
        get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = self.get_response
        return await get_response(request)

    @staticmethod
    def _mark(request: HttpRequest) -> None:
        request._sagaflow_idempotency = True  # type: ignore[attr-defined]
        request.idempotency = None  # type: ignore[attr-defined]

    def process_exception(
        self, request: HttpRequest, exception: Exception
    ) -> HttpResponseBase | None:
        if isinstance(exception, IdempotencyError):
            return problem_response(exception)
        return None
