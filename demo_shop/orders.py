"""Placing orders and reading them back: what the API, the pages and the demo call.

``validation.validate`` turns a request body into a ``CheckoutRequest`` (or field
errors) before anything is written. ``place_order`` creates the order
and starts its checkout in one transaction: the saga run (orchestrated) or the
``order.placed`` event (choreographed) commits with the order or not at all.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from sagaflow.models import Saga, SagaStep

from .events import emit
from .models import Order, OrderLine, OrderStatus, Style
from .sagas import checkout
from .settlement import settle_from_saga
from .shoppers import Owner
from .validation import CheckoutRequest


class OutOfStock(Exception):
    def __init__(self, sku: str, available: int) -> None:
        super().__init__(f"only {available} of {sku} left")
        self.sku = sku
        self.available = available


def place_order(request: CheckoutRequest, owner: Owner) -> Order:
    """Create ``owner``'s order and start its checkout, atomically.

    Raises ``OutOfStock`` (nothing written) when the shelf visibly cannot serve it;
    under a race the reservation decides, and the order ends cancelled instead.
    """
    for product, quantity in request.items:
        product.refresh_from_db(fields=["on_hand"])
        if product.on_hand < quantity:
            raise OutOfStock(product.sku, product.on_hand)
    with transaction.atomic():
        order = Order.objects.create(
            user_id=owner.user_id,
            shopper=owner.shopper,
            customer=request.customer,
            style=request.style,
            total_cents=sum(p.price_cents * q for p, q in request.items),
        )
        OrderLine.objects.bulk_create(
            OrderLine(order=order, product=p, quantity=q, unit_price_cents=p.price_cents)
            for p, q in request.items
        )
        if request.style == Style.ORCHESTRATED:
            saga = checkout.start({"order_id": order.pk}, key=f"order-{order.pk}")
            order.saga_id = saga.id
            order.save(update_fields=["saga_id"])
        else:
            emit("order.placed", order.pk)
    return order


# --- reading -----------------------------------------------------------------------------


def describe(order: Order) -> dict[str, Any]:
    """The order, its saga (orchestrated) and its step timeline, as JSON."""
    saga = Saga.objects.filter(pk=order.saga_id).first() if order.saga_id else None
    if saga is not None and order.status == OrderStatus.PENDING and settle_from_saga(saga):
        order.refresh_from_db()
    lines = [
        {
            "sku": line.product.sku,
            "name": line.product.name,
            "quantity": line.quantity,
            "unit_price_cents": line.unit_price_cents,
        }
        for line in order.lines.select_related("product").order_by("id")
    ]
    return {
        "order": {
            "id": order.pk,
            "public_id": str(order.public_id),
            "customer": order.customer,
            "style": order.style,
            "status": order.status,
            "reason": order.reason,
            "total_cents": order.total_cents,
            "lines": lines,
            "created_at": order.created_at.isoformat(),
            "settled_at": order.settled_at.isoformat() if order.settled_at else None,
        },
        "settled": order.status != OrderStatus.PENDING,
        "saga": {"id": str(saga.id), "state": saga.state, "error": saga.error} if saga else None,
        "timeline": _saga_timeline(saga) if saga else _event_timeline(order),
    }


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def _saga_timeline(saga: Saga) -> list[dict[str, Any]]:
    return [
        {
            "step": step.name,
            "state": step.state,
            "attempts": step.attempts,
            "compensation_attempts": step.compensation_attempts,
            "started_at": _iso(step.started_at),
            "finished_at": _iso(step.finished_at),
            "compensated_at": _iso(step.compensated_at),
            "error": step.error.strip().splitlines()[-1][:300] if step.error.strip() else "",
        }
        for step in SagaStep.objects.filter(saga=saga).order_by("index")
    ]


def _event_timeline(order: Order) -> list[dict[str, Any]]:
    return [
        {"event": e.topic, "handled_by": e.handled_by, "detail": e.detail, "at": _iso(e.at)}
        for e in order.events.order_by("id")
    ]
