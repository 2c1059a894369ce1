"""The shop's JSON API and its two pages.

``POST /api/checkout`` runs in one transaction with its idempotency key
(``@transaction.atomic`` above ``@idempotent``: sagaflow's atomic mode), so the
order, the start of its checkout and the stored response commit together, and a
retry with the same key gets the first response back instead of a second order.
"""

from __future__ import annotations

import json
from typing import Any

from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from sagaflow.idempotency import idempotent, user_scope

from . import orders, validation
from .models import Order, Product


def client_scope(request: Any) -> str:
    """Whose keys these are: the user, else the client (a demo without accounts).

    ``X-Client-Id`` (the page sends a random id kept in localStorage), else the
    client's address. A real shop would require authentication instead.
    """
    user = user_scope(request)
    if user is not None:
        return user
    http = getattr(request, "_request", request)
    client = http.headers.get("X-Client-Id") or http.META.get("REMOTE_ADDR") or "unknown"
    return f"client:{client[:200]}"


def problem(status: int, code: str, detail: str, **extra: Any) -> JsonResponse:
    body = {
        "type": f"urn:demo-shop:problem:{code}",
        "title": detail,
        "status": status,
        "code": code,
        "detail": detail,
        **extra,
    }
    return JsonResponse(body, status=status, content_type="application/problem+json")


@csrf_exempt  # JSON only (checked below): a cross-site form cannot send it without CORS
@require_POST
@transaction.atomic
@idempotent(required=True, scope=client_scope)
def checkout(request: HttpRequest) -> HttpResponse:
    if request.content_type != "application/json":
        return problem(415, "unsupported-media-type", "send the body as application/json")
    try:
        body = json.loads(request.body or b"null")
    except (ValueError, RecursionError):
        return problem(400, "invalid-json", "the body is not valid JSON")
    try:
        order = orders.place_order(validation.validate(body))
    except validation.Invalid as exc:
        return problem(
            exc.status, "invalid-request", "the request has invalid fields", errors=exc.errors
        )
    except orders.OutOfStock as exc:
        return problem(409, "out-of-stock", str(exc), sku=exc.sku, available=exc.available)
    status_url = reverse("shop-order-api", args=[order.pk])
    response = JsonResponse(
        {"order": orders.describe(order)["order"], "status_url": status_url}, status=202
    )
    response["Location"] = status_url
    return response


@require_GET
def order_status(request: HttpRequest, pk: int) -> JsonResponse:
    return JsonResponse(orders.describe(get_object_or_404(Order, pk=pk)))


@require_GET
def products_page(request: HttpRequest) -> HttpResponse:
    return render(request, "demo_shop/products.html", {"products": Product.objects.all()})


@require_GET
def order_page(request: HttpRequest, pk: int) -> HttpResponse:
    order = get_object_or_404(Order, pk=pk)
    data = orders.describe(order)
    return render(
        request,
        "demo_shop/order.html",
        {"data": data, "order": order, "status_url": reverse("shop-order-api", args=[pk])},
    )
