"""Stock holds (the reservation pattern). Every change of stock goes through here.

A hold takes items off the shelf (``Product.on_hand``) for one order. It ends in
one of two ways: ``shipped`` when the order is confirmed, or ``released`` (the
items go back on the shelf) by a compensation or, once ``expires_at`` has passed,
by the periodic task. Holds outlive the checkout saga's deadline, so expiry only
ever cleans up after checkouts that stalled or died.

The shelf is decremented with a conditional UPDATE (``on_hand >= quantity``), so
concurrent checkouts never oversell and never lose an update (P5); products are
taken in id order, so two multi-item reservations cannot deadlock.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from .models import HoldState, Order, Product, StockHold

logger = logging.getLogger("demo_shop.inventory")


class OutOfStock(Exception):
    def __init__(self, sku: str) -> None:
        super().__init__(f"out of stock: {sku}")
        self.sku = sku


def hold_ttl() -> timedelta:
    return timedelta(seconds=getattr(settings, "SHOP_HOLD_TTL", 600))


def reserve(order_id: int) -> list[int]:
    """Hold every line of the order; all or nothing. Repeating it is a no-op."""
    with transaction.atomic():
        existing = list(StockHold.objects.filter(order_id=order_id).values_list("pk", flat=True))
        if existing:
            return existing
        expires = timezone.now() + hold_ttl()
        lines = (
            Order.objects.get(pk=order_id).lines.select_related("product").order_by("product_id")
        )
        holds = []
        for line in lines:
            taken = Product.objects.filter(pk=line.product_id, on_hand__gte=line.quantity).update(
                on_hand=F("on_hand") - line.quantity
            )
            if not taken:
                raise OutOfStock(line.product.sku)  # rolls back the lines already held
            holds.append(
                StockHold.objects.create(
                    order_id=order_id,
                    product_id=line.product_id,
                    quantity=line.quantity,
                    expires_at=expires,
                )
            )
        return [h.pk for h in holds]


def release(order_id: int, *, reason: str) -> int:
    """Put the order's held items back on the shelf; returns how many holds it released."""
    released = 0
    with transaction.atomic():
        for hold in StockHold.objects.filter(order_id=order_id, state=HoldState.HELD):
            released += _release_one(hold, reason)
    return released


def _release_one(hold: StockHold, reason: str) -> int:
    # Conditional: a hold released twice (compensation and expiry racing) counts once.
    changed = StockHold.objects.filter(pk=hold.pk, state=HoldState.HELD).update(
        state=HoldState.RELEASED, released_by=reason[:32]
    )
    if changed:
        Product.objects.filter(pk=hold.product_id).update(on_hand=F("on_hand") + hold.quantity)
    return changed


def ship(order_id: int) -> bool:
    """Commit the order's holds (call inside the confirming transaction).

    False if any hold is no longer held (it expired): the order cannot be confirmed.
    """
    holds = list(StockHold.objects.filter(order_id=order_id))
    if not holds:
        return False
    changed = StockHold.objects.filter(order_id=order_id, state=HoldState.HELD).update(
        state=HoldState.SHIPPED
    )
    return changed == len(holds)


def release_expired(limit: int = 500) -> list[int]:
    """Release holds past their expiry; returns the orders they belonged to."""
    orders = set()
    due = StockHold.objects.filter(state=HoldState.HELD, expires_at__lt=timezone.now())
    for hold in due.order_by("expires_at")[:limit]:
        with transaction.atomic():
            if _release_one(hold, "expired"):
                orders.add(hold.order_id)
                logger.warning("released expired hold %s of order %s", hold.pk, hold.order_id)
    return sorted(orders)
