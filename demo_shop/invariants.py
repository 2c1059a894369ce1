"""The shop's invariants, checked by ``make demo`` and by the tests after every run.

Each check reads the shop's tables and the fake services' own records (not what
the shop believes it did), and reports the first few offenders.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from django.db.models import Sum

from .models import (
    Charge,
    ChargeState,
    HoldState,
    Order,
    OrderStatus,
    Product,
    Shipment,
    StockHold,
)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _held(state: str) -> dict[int, int]:
    rows = StockHold.objects.filter(state=state).values("product_id").annotate(n=Sum("quantity"))
    return {row["product_id"]: row["n"] for row in rows}


def stock_conserved() -> Check:
    held, shipped = _held(HoldState.HELD), _held(HoldState.SHIPPED)
    bad = []
    for p in Product.objects.all():
        total = p.on_hand + held.get(p.pk, 0) + shipped.get(p.pk, 0)
        if p.on_hand < 0 or total != p.initial_stock:
            bad.append(
                f"{p.sku}: {p.on_hand}+{held.get(p.pk, 0)}+{shipped.get(p.pk, 0)}"
                f"!={p.initial_stock}"
            )
    return Check(
        "stock conserved (on hand + held + shipped = initial, none negative)",
        not bad,
        ", ".join(bad[:5]) or f"{Product.objects.count()} products",
    )


def _charges_by_order() -> dict[int, list[Charge]]:
    by_order: dict[int, list[Charge]] = defaultdict(list)
    for charge in Charge.objects.filter(order_ref__startswith="order-"):
        by_order[int(charge.order_ref.removeprefix("order-"))].append(charge)
    return by_order


def _shipments_by_order() -> dict[int, list[Shipment]]:
    by_order: dict[int, list[Shipment]] = defaultdict(list)
    for shipment in Shipment.objects.filter(order_ref__startswith="order-"):
        by_order[int(shipment.order_ref.removeprefix("order-"))].append(shipment)
    return by_order


def no_double_charge(charges: dict[int, list[Charge]], totals: dict[int, int]) -> Check:
    bad = []
    for order_id, items in charges.items():
        captured = [c for c in items if c.captured_cents > 0]
        net = sum(c.captured_cents - c.refunded_cents for c in items)
        if len(captured) > 1 or net > totals.get(order_id, 0):
            bad.append(f"order {order_id}: {len(captured)} captures, net {net}")
    return Check(
        "no order charged twice",
        not bad,
        ", ".join(bad[:5]) or f"{sum(len(v) for v in charges.values())} charges",
    )


def captured_has_shipment(charges, shipments) -> Check:
    bad = []
    for order_id, items in charges.items():
        if any(c.state == ChargeState.CAPTURED for c in items) and not any(
            s.state == Shipment.State.SCHEDULED for s in shipments.get(order_id, [])
        ):
            bad.append(f"order {order_id}")
    return Check(
        "every captured payment has a shipment",
        not bad,
        ", ".join(bad[:5])
        or f"{sum(c.state == ChargeState.CAPTURED for v in charges.values() for c in v)} captured",
    )


def cancelled_given_back(charges, shipments) -> Check:
    bad = []
    cancelled = list(
        Order.objects.filter(status=OrderStatus.CANCELLED).values_list("pk", flat=True)
    )
    kept = set(
        StockHold.objects.filter(order_id__in=cancelled)
        .exclude(state=HoldState.RELEASED)
        .values_list("order_id", flat=True)
    )
    for order_id in cancelled:
        money = [
            c
            for c in charges.get(order_id, [])
            if c.state in (ChargeState.AUTHORISED, ChargeState.CAPTURED)
        ]
        parcels = [s for s in shipments.get(order_id, []) if s.state == Shipment.State.SCHEDULED]
        if money or parcels or order_id in kept:
            bad.append(
                f"order {order_id}: money={len(money)} parcels={len(parcels)} "
                f"stock={'kept' if order_id in kept else 'back'}"
            )
    return Check(
        "every cancelled order has its money and stock back",
        not bad,
        ", ".join(bad[:5]) or f"{len(cancelled)} cancelled",
    )


def confirmed_complete(charges, shipments) -> Check:
    bad = []
    confirmed = Order.objects.filter(status=OrderStatus.CONFIRMED)
    unshipped = set(
        StockHold.objects.filter(order__status=OrderStatus.CONFIRMED)
        .exclude(state=HoldState.SHIPPED)
        .values_list("order_id", flat=True)
    )
    for order in confirmed:
        net = sum(c.captured_cents - c.refunded_cents for c in charges.get(order.pk, []))
        parcels = [s for s in shipments.get(order.pk, []) if s.state == Shipment.State.SCHEDULED]
        if net != order.total_cents or len(parcels) != 1 or order.pk in unshipped:
            bad.append(f"order {order.pk}: paid {net}/{order.total_cents}, {len(parcels)} parcels")
    return Check(
        "every confirmed order is paid once, shipped once",
        not bad,
        ", ".join(bad[:5]) or f"{confirmed.count()} confirmed",
    )


def all_settled() -> Check:
    pending = list(Order.objects.filter(status=OrderStatus.PENDING).values_list("pk", flat=True))
    return Check(
        "every order settled",
        not pending,
        f"pending: {pending[:10]}" if pending else f"{Order.objects.count()} orders",
    )


def check_all() -> list[Check]:
    charges, shipments = _charges_by_order(), _shipments_by_order()
    totals = dict(Order.objects.values_list("pk", "total_cents"))
    return [
        stock_conserved(),
        no_double_charge(charges, totals),
        captured_has_shipment(charges, shipments),
        cancelled_given_back(charges, shipments),
        confirmed_complete(charges, shipments),
        all_settled(),
    ]
