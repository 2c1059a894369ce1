"""Demo data: the catalogue, a clean slate, and the demo's failure rates."""

from __future__ import annotations

from . import chaos
from .models import (
    Charge,
    FaultRule,
    LocalEvent,
    Order,
    Product,
    ServiceRequest,
    Shipment,
)

CATALOGUE = [
    ("BOOK", "A book about sagas", 1800, 200),
    ("MUG", "Outbox mug", 900, 200),
    ("PEN", "Idempotent pen", 250, 200),
    ("LAMP", "Compensating lamp", 4200, 150),
    ("SOCKS", "At-least-once socks", 600, 150),
    ("CHAIR", "Exactly-once chair", 12000, 40),  # scarce: some checkouts find it gone
]

#: (service, operation, mode, rate): what ``make demo`` injects.
DEMO_FAULTS = [
    ("payments", "authorise", "decline", 0.06),
    ("payments", "authorise", "timeout", 0.06),
    ("payments", "authorise", "error", 0.08),
    ("payments", "capture", "timeout", 0.05),
    ("payments", "capture", "error", 0.05),
    ("payments", "", "down", 0.004),
    ("shipping", "schedule", "decline", 0.03),
    ("shipping", "schedule", "timeout", 0.05),
    ("shipping", "schedule", "error", 0.06),
    ("shipping", "", "down", 0.003),
]


def reset(catalogue=CATALOGUE) -> list[Product]:
    """Delete every order and service record and restock the catalogue."""
    Order.objects.all().delete()  # lines, holds and order events go with them
    for model in (Charge, Shipment, ServiceRequest, FaultRule, LocalEvent):
        model.objects.all().delete()
    Product.objects.all().delete()
    return [
        Product.objects.create(
            sku=sku, name=name, price_cents=price, on_hand=stock, initial_stock=stock
        )
        for sku, name, price, stock in catalogue
    ]


def arm_demo_faults(down_for: float = 0.8) -> None:
    for service, operation, mode, rate in DEMO_FAULTS:
        chaos.arm(service, mode, operation=operation, rate=rate, down_for=down_for)
