"""The shop's two pages: the catalogue with its checkout form, and an order's page.

Visiting the catalogue starts the visitor's shopper session (``shoppers.py``): the
form's checkout is scoped to it, and so is the order page it leads to. An order
page answers 404 to anyone but the order's owner, like the API.
"""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views import defaults
from django.views.decorators.http import require_GET

from . import api, orders, shoppers
from .models import Product


@require_GET
def products_page(request: HttpRequest) -> HttpResponse:
    shoppers.start(request)
    return render(request, "demo_shop/products.html", {"products": Product.objects.all()})


@require_GET
def order_page(request: HttpRequest, public_id: str) -> HttpResponse:
    order = shoppers.find_order(request, public_id)
    if order is None:
        raise Http404("no order of yours has this id")
    return render(
        request,
        "demo_shop/order.html",
        {
            "data": orders.describe(order),
            "order": order,
            "status_url": reverse("shop-order-api", args=[order.public_id]),
        },
    )


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """``handler404``: a problem under ``/api/``, Django's page elsewhere."""
    if _is_api(request):
        return api.problem(404, "not-found", "nothing here")
    return defaults.page_not_found(request, exception)


def crashed(request: HttpRequest) -> HttpResponse:
    """``handler500``: a problem under ``/api/`` (no traceback, whatever DEBUG says)."""
    if _is_api(request):
        return api.problem(500, "server-error", "the server failed; the error is logged")
    return defaults.server_error(request)


def bad_request(request: HttpRequest, exception: Any = None) -> HttpResponse:
    """``handler400`` (a body over the size limit, a bad Host): a problem under ``/api/``."""
    if _is_api(request):
        return api.problem(400, "bad-request", "the request cannot be read")
    return defaults.bad_request(request, exception)
