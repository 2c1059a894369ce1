"""Helpers for the demo shop's tests: a fresh shop, checkouts over HTTP, settling."""

from __future__ import annotations

import uuid

from django.test import Client

from demo_shop import invariants, seed
from demo_shop.models import Order, OrderStatus
from sagaflow.outbox import relay
from sagaflow.saga import sweeper
from tests.waiting import wait_until

SHOP_DB = ["default", "services"]


def fresh_shop(stock: int = 100, sku: str = "WIDGET", price: int = 500):
    """An empty shop with one product (plus the demo catalogue's, restocked)."""
    products = seed.reset([(sku, "Widget", price, stock), ("GADGET", "Gadget", 900, 100)])
    return products[0]


def post_checkout(
    body: dict, *, key: str | None = None, client: Client | None = None, client_id: str = "tests"
):
    client = client or Client()
    headers = {"HTTP_X_CLIENT_ID": client_id}
    if key is not False:
        headers["HTTP_IDEMPOTENCY_KEY"] = key or str(uuid.uuid4())
    return client.post("/api/checkout", body, content_type="application/json", **headers)


def order_body(customer: str, style: str, quantity: int = 1, sku: str = "WIDGET") -> dict:
    return {"customer": customer, "style": style, "items": [{"sku": sku, "quantity": quantity}]}


def beat() -> None:
    """celery beat's sagaflow part: sweep and relay. Not the shop's reconcile task, so
    that every compensation the tests see was made by the checkout itself."""
    sweeper.sweep()
    relay.drain()


def settle(order_ids, timeout: float = 60.0) -> list[Order]:
    ids = list(order_ids)
    pending = Order.objects.filter(pk__in=ids, status=OrderStatus.PENDING)
    wait_until(
        lambda: not pending.exists(),
        timeout=timeout,
        every=0.2,
        tick=beat,
        what=f"{len(ids)} orders to settle",
    )
    return list(Order.objects.filter(pk__in=ids).order_by("pk"))


def assert_invariants() -> None:
    broken = [c for c in invariants.check_all() if not c.ok]
    assert not broken, broken
