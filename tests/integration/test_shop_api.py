"""The shop's HTTP API and pages, its validation and its stock holds (no worker).

Sagas run in this process (``sagaflow.testing``); events are not relayed.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.conf import settings
from django.test import override_settings
from django.utils import timezone

from demo_shop import inventory, tasks
from demo_shop.models import HoldState, Order, OrderStatus, Product, StockHold
from sagaflow.models import OutboxEvent, Saga
from sagaflow.testing import captured_dispatches, drive
from tests.shop_support import (
    SHOP_DB,
    assert_invariants,
    fresh_shop,
    order_body,
    post_checkout,
    shopper,
)

pytestmark = [pytest.mark.django_db(transaction=True, databases=SHOP_DB), pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def _no_broker():
    """Step messages and relay kicks stay in this process."""
    quiet = {**settings.SAGAFLOW, "OUTBOX_KICK_ON_COMMIT": False}
    with captured_dispatches() as sent, override_settings(SAGAFLOW=quiet):
        yield sent


def _nothing_written():
    assert Order.objects.count() == 0
    assert Saga.objects.filter(name="shop.checkout").count() == 0
    assert OutboxEvent.objects.count() == 0


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ([1, 2], 400, "non_field_errors"),
        (
            {"customer": "a@b.example", "items": [{"sku": "WIDGET", "quantity": 1}], "coupon": "x"},
            400,
            "coupon",
        ),
        ({"customer": 5, "items": [{"sku": "WIDGET", "quantity": 1}]}, 400, "customer"),
        ({"customer": "a@b.example", "items": "WIDGET"}, 400, "items"),
        (
            {"customer": "a@b.example", "items": [{"sku": "WIDGET", "quantity": "2"}]},
            400,
            "items[0].quantity",
        ),
        (
            {"customer": "a@b.example", "items": [{"sku": "WIDGET", "quantity": True}]},
            400,
            "items[0].quantity",
        ),
        (
            {"customer": "a@b.example", "items": [{"sku": "WIDGET", "quantity": 1, "gift": 1}]},
            400,
            "items[0].gift",
        ),
        (
            {"customer": "a@b.example", "items": [{"sku": "NOPE", "quantity": 1}]},
            422,
            "items[0].sku",
        ),
        (
            {"customer": "a@b.example", "items": [{"sku": "WIDGET", "quantity": 0}]},
            422,
            "items[0].quantity",
        ),
        (
            {"customer": "a@b.example", "items": [{"sku": "WIDGET", "quantity": 10**9}]},
            422,
            "items[0].quantity",
        ),
        (
            {"customer": "not-an-email", "items": [{"sku": "WIDGET", "quantity": 1}]},
            422,
            "customer",
        ),
        ({"customer": "a@b.example", "items": []}, 422, "items"),
        (
            {
                "customer": "a@b.example",
                "style": "telepathy",
                "items": [{"sku": "WIDGET", "quantity": 1}],
            },
            422,
            "style",
        ),
    ],
)
def test_invalid_checkout_gets_field_errors_and_writes_nothing(body, status, field):
    fresh_shop()
    response = post_checkout(body)
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert field in response.json()["errors"]
    _nothing_written()


def test_key_is_required_and_json_is_required():
    fresh_shop()
    assert post_checkout(order_body("a@b.example", "orchestrated"), key=False).status_code == 400
    form = shopper().post(
        "/api/checkout", {"customer": "a@b.example"}, HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4())
    )
    assert form.status_code == 415
    _nothing_written()


@pytest.mark.parametrize("method", ["get", "put", "delete", "options"])
def test_other_methods_are_refused_as_problems(method):
    fresh_shop()
    response = getattr(shopper(), method)("/api/checkout", HTTP_IDEMPOTENCY_KEY="k")
    assert response.status_code == 405
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "method-not-allowed"
    assert response["Allow"] == "POST"
    _nothing_written()


def test_out_of_stock_is_a_clear_refusal_and_writes_nothing():
    fresh_shop(stock=2)
    response = post_checkout(order_body("a@b.example", "orchestrated", quantity=3))
    assert response.status_code == 409
    assert response.json()["code"] == "out-of-stock"
    assert response.json()["available"] == 2
    _nothing_written()


@pytest.mark.parametrize("style", ["orchestrated", "choreographed"])
def test_checkout_creates_the_order_and_starts_its_checkout_in_one_transaction(style):
    fresh_shop()
    response = post_checkout(order_body("a@b.example", style, quantity=2))
    assert response.status_code == 202, response.content
    data = response.json()
    order = Order.objects.get(pk=data["order"]["id"])
    assert data["status_url"] == f"/api/orders/{order.public_id}" == response["Location"]
    assert data["page_url"] == f"/orders/{order.public_id}"
    assert order.status == OrderStatus.PENDING and order.total_cents == 1000
    if style == "orchestrated":
        assert Saga.objects.get(pk=order.saga_id).data == {"order_id": order.pk}
    else:
        event = OutboxEvent.objects.get()
        assert (event.topic, event.payload) == ("order.placed", {"order_id": order.pk})


def test_a_retried_post_with_the_same_key_makes_one_order():
    fresh_shop()
    key = str(uuid.uuid4())
    body = order_body("a@b.example", "orchestrated")
    client = shopper()
    first = post_checkout(body, key=key, client=client)
    again = post_checkout(body, key=key, client=client)
    assert first.status_code == again.status_code == 202
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert Order.objects.count() == 1
    assert Saga.objects.filter(name="shop.checkout").count() == 1
    other = post_checkout(
        {**body, "items": [{"sku": "WIDGET", "quantity": 2}]}, key=key, client=client
    )
    assert other.status_code == 422  # same key, different request
    assert Order.objects.count() == 1


def test_order_page_and_api_show_the_saga_timeline():
    fresh_shop()
    client = shopper()
    response = post_checkout(order_body("page@b.example", "orchestrated"), client=client)
    order = Order.objects.get(pk=response.json()["order"]["id"])
    pending = client.get(f"/orders/{order.public_id}").content.decode()
    assert "reserve_stock" in pending and "setTimeout(refresh" in pending  # keeps polling
    assert drive(Saga.objects.get(pk=order.saga_id)).state == "completed"
    data = client.get(f"/api/orders/{order.public_id}").json()
    assert data["order"]["status"] == "confirmed" and data["settled"]
    assert [(r["step"], r["state"]) for r in data["timeline"]] == [
        (name, "succeeded")
        for name in (
            "reserve_stock",
            "authorise_payment",
            "schedule_shipping",
            "capture_payment",
            "confirm_order",
        )
    ]
    page = client.get(f"/orders/{order.public_id}").content.decode()
    assert page.count('class="state-succeeded"') == 5 and "confirmed" in page
    assert "setTimeout(refresh, 500)" not in page  # settled: no more polling
    assert client.get("/").status_code == 200
    assert_invariants()


def test_expired_holds_go_back_on_the_shelf_and_cancel_a_stalled_order():
    widget = fresh_shop(stock=10)
    response = post_checkout(order_body("slow@b.example", "choreographed", quantity=4))
    order = Order.objects.get(pk=response.json()["order"]["id"])
    inventory.reserve(order.pk)  # what the inventory consumer did before the chain stalled
    widget.refresh_from_db()
    assert widget.on_hand == 6
    assert tasks.release_expired_holds()["released_orders"] == 0  # not expired yet
    StockHold.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert tasks.release_expired_holds() == {"released_orders": 1, "cancelled": 1}
    assert tasks.release_expired_holds()["released_orders"] == 0  # once only
    widget.refresh_from_db()
    order.refresh_from_db()
    assert widget.on_hand == 10
    assert StockHold.objects.get().state == HoldState.RELEASED
    assert (order.status, order.reason) == ("cancelled", "hold_expired")
    assert_invariants()
    assert Product.objects.get(sku="WIDGET").on_hand == 10
