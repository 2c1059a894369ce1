"""The shop's JSON API: checkout, an order's status, a shopper session, the schema.

``POST /api/checkout`` runs in one transaction with its idempotency key
(``@transaction.atomic`` above ``@idempotent``: sagaflow's atomic mode), so the
order, the start of its checkout and the stored response commit together, and a
retry with the same key gets the first response back instead of a second order.
Keys are scoped to the user, else to the session's anonymous shopper
(``shoppers.py``); a client with neither gets sagaflow's 400.

The views are DRF ``APIView``s so that drf-spectacular can publish their schema
(``/api/schema``, written in ``openapi.py``), but they keep the shop's own answers:
they read the body themselves, every error is ``application/problem+json`` (DRF's
own exceptions too), the caller is the user Django's middleware found, and any
``Accept`` gets JSON.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.db import transaction
from django.http import Http404, HttpRequest, JsonResponse
from django.urls import reverse
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import JSONParser
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.views import APIView

from sagaflow.idempotency import idempotent

from . import orders, shoppers, validation
from .openapi import PROBLEM_MEDIA_TYPE, idempotency_key_schema, ref


def problem(status: int, code: str, detail: str, **extra: Any) -> JsonResponse:
    """An RFC 9457 problem (the shape of sagaflow's own, plus ``errors`` and the like)."""
    body = {
        "type": f"urn:demo-shop:problem:{code}",
        "title": detail,
        "status": status,
        "code": code,
        "detail": detail,
        **extra,
    }
    return JsonResponse(body, status=status, content_type=PROBLEM_MEDIA_TYPE)


def problem_from_exception(exc: Exception, context: dict[str, Any]) -> JsonResponse | None:
    """DRF's exceptions (405, 406, ...) as problems; anything else propagates (a 500)."""
    if isinstance(exc, Http404):
        return problem(404, "not-found", "nothing here")
    if isinstance(exc, exceptions.APIException):
        code = str(exc.default_code).replace("_", "-")
        response = problem(exc.status_code, code, str(exc.detail))
        if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
            response["Retry-After"] = str(int(exc.wait))
        return response
    return None


class MiddlewareUser(BaseAuthentication):
    """The user Django's ``AuthenticationMiddleware`` found, as DRF's caller.

    Not DRF's ``SessionAuthentication``, which would add its own CSRF check: the
    checkout takes only ``application/json`` with an ``Idempotency-Key`` header, which
    a cross-site page cannot send without a CORS preflight that this site never
    grants, and the session cookie is ``SameSite=Lax``.
    """

    def authenticate(self, request: Any) -> tuple[Any, None] | None:
        user = getattr(request._request, "user", None)
        if user is not None and user.is_authenticated:
            return user, None
        return None


class MiddlewareUserScheme(OpenApiAuthenticationExtension):
    """How the schema describes ``MiddlewareUser``: the session cookie."""

    target_class = MiddlewareUser
    name = "session"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "apiKey", "in": "cookie", "name": settings.SESSION_COOKIE_NAME}


class AlwaysJSON(BaseContentNegotiation):
    """Answer JSON whatever ``Accept`` says, as the shop always has."""

    def select_parser(self, request: Any, parsers: list[Any]) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(self, request: Any, renderers: list[Any], format_suffix: Any = None):
        return renderers[0], renderers[0].media_type


class ShopView(APIView):
    authentication_classes = [MiddlewareUser]
    permission_classes = [AllowAny]
    throttle_classes: list[Any] = []
    #: Declared for the schema: the views parse ``request.body`` themselves.
    parser_classes = [JSONParser]
    renderer_classes = [JSONRenderer]
    content_negotiation_class = AlwaysJSON
    #: No OPTIONS self-description (DRF's would list the view's docstring): 405.
    metadata_class = None

    @property
    def allowed_methods(self) -> list[str]:
        return [method for method in super().allowed_methods if method != "OPTIONS"]

    def get_exception_handler(self):
        return problem_from_exception


def _problems(*codes: int) -> dict[tuple[int, str], OpenApiResponse]:
    descriptions = {
        400: "The body's shape is wrong (`invalid-request`, `invalid-json`), or the "
        "`Idempotency-Key` is missing or malformed, or the client has no session "
        "(`idempotency-scope-missing`: call `GET /api/session` first).",
        404: "No such order, or not yours.",
        409: "Not enough on the shelf right now (`out-of-stock`, with `sku` and "
        "`available`), or the same key is in flight.",
        415: "The body is not `application/json`.",
        422: "The body's values are refused (`invalid-request`, with `errors`), or the "
        "key was used for a different request (`idempotency-key-reused`).",
        503: "The database is unavailable; retry with the same key after `Retry-After`.",
    }
    return {
        (code, PROBLEM_MEDIA_TYPE): OpenApiResponse(ref("Problem"), description=descriptions[code])
        for code in codes
    }


CHECKOUT_EXAMPLE = {
    "customer": "a@example.com",
    "style": "orchestrated",
    "items": [{"sku": "BOOK", "quantity": 2}],
}


class Checkout(ShopView):
    @extend_schema(
        operation_id="checkout",
        summary="Place an order and start its checkout",
        request={"application/json": ref("CheckoutRequest")},
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                idempotency_key_schema(),
                OpenApiParameter.HEADER,
                required=True,
                description="A fresh random value (a UUID) per order; resend it on a retry.",
            ),
            OpenApiParameter(
                "Location",
                str,
                OpenApiParameter.HEADER,
                response=[202],
                description="The order's status URL.",
            ),
        ],
        examples=[OpenApiExample("two books", value=CHECKOUT_EXAMPLE, request_only=True)],
        responses={
            202: OpenApiResponse(ref("CheckoutAccepted"), description="The order, pending."),
            **_problems(400, 409, 415, 422, 503),
        },
    )
    @transaction.atomic
    @idempotent(required=True, scope=shoppers.idempotency_scope)
    def post(self, request: Any) -> JsonResponse:
        http: HttpRequest = request._request
        if http.content_type != "application/json":
            return problem(415, "unsupported-media-type", "send the body as application/json")
        try:
            body = json.loads(http.body or b"null")
        except (ValueError, RecursionError):
            return problem(400, "invalid-json", "the body is not valid JSON")
        owner = shoppers.owner(http)
        if owner is None:  # the idempotency scope refused it already; never place it ownerless
            return problem(400, "no-shopper", "start a session first: GET /api/session")
        try:
            order = orders.place_order(validation.validate(body), owner)
        except validation.Invalid as exc:
            return problem(
                exc.status, "invalid-request", "the request has invalid fields", errors=exc.errors
            )
        except orders.OutOfStock as exc:
            return problem(409, "out-of-stock", str(exc), sku=exc.sku, available=exc.available)
        status_url = reverse("shop-order-api", args=[order.public_id])
        response = JsonResponse(
            {
                "order": orders.describe(order)["order"],
                "status_url": status_url,
                "page_url": reverse("shop-order", args=[order.public_id]),
            },
            status=202,
        )
        response["Location"] = status_url
        return response


class OrderStatus(ShopView):
    @extend_schema(
        operation_id="order_status",
        summary="An order, its saga and its timeline (its owner only)",
        parameters=[
            OpenApiParameter(
                "public_id",
                {"type": "string"},
                OpenApiParameter.PATH,
                description="The order's `public_id` (a UUID).",
            )
        ],
        responses={
            200: OpenApiResponse(ref("OrderStatus"), description="The order."),
            **_problems(404),
        },
    )
    def get(self, request: Any, public_id: str) -> JsonResponse:
        order = shoppers.find_order(request, public_id)
        if order is None:
            return problem(404, "not-found", "no order of yours has this id")
        return JsonResponse(orders.describe(order))


class Session(ShopView):
    @extend_schema(
        operation_id="session",
        summary="Start (or keep) this client's shopper session",
        description="Sets the session cookie that identifies an anonymous shopper: their "
        "idempotency keys and their orders belong to it.",
        responses={200: OpenApiResponse(ref("Session"), description="The session is ready.")},
    )
    def get(self, request: Any) -> JsonResponse:
        shoppers.start(request)
        return JsonResponse({"authenticated": request.user.is_authenticated})
