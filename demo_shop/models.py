"""The shop's tables, and the tables of the fake services it calls.

Shop: ``Product`` (stock on hand), ``Order`` + ``OrderLine``, ``StockHold`` (the
reservation pattern: a hold takes items off the shelf until it is committed when
the order is confirmed, released by a compensation, or released by the periodic
task once it expires), ``OrderEvent`` (the choreographed checkout's log).

Fake services (``payments.py``, ``shipping.py``): ``Charge``, ``Shipment`` and
their request logs. They are read and written through the ``services`` database
connection (``routers.py``), so their commits are independent of the shop's
transactions, as a remote service's would be. ``FaultRule`` says when they fail.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class Product(models.Model):
    sku = models.CharField(max_length=32, unique=True)
    name = models.CharField(max_length=100)
    price_cents = models.PositiveIntegerField()
    #: Items on the shelf, free to reserve. Holds take items off it.
    on_hand = models.IntegerField()
    #: What the shop started with; on_hand + held + shipped equals it (the invariant).
    initial_stock = models.PositiveIntegerField()

    class Meta:
        ordering = ["sku"]
        constraints = [
            models.CheckConstraint(condition=Q(on_hand__gte=0), name="shop_product_on_hand_gte_0"),
        ]

    def __str__(self) -> str:
        return f"{self.sku} ({self.on_hand} on hand)"


class Style(models.TextChoices):
    ORCHESTRATED = "orchestrated"
    CHOREOGRAPHED = "choreographed"


class OrderStatus(models.TextChoices):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"  # compensated: money and stock given back
    FAILED = "failed"  # a compensation gave up: somebody has to look


SETTLED = (OrderStatus.CONFIRMED, OrderStatus.CANCELLED, OrderStatus.FAILED)


class Order(models.Model):
    """One checkout. It belongs to whoever placed it: a logged-in ``user``, else the
    anonymous ``shopper`` of a session (a random id kept in that session). The API
    and the pages address it by ``public_id`` and show it to its owner only; the
    sequential ``id`` is the shop's order number (services and events refer to it)."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="shop_orders",
    )
    shopper = models.CharField(max_length=64, blank=True, default="")
    customer = models.EmailField()
    style = models.CharField(max_length=16, choices=Style.choices)
    status = models.CharField(
        max_length=16, choices=OrderStatus.choices, default=OrderStatus.PENDING
    )
    #: Why it was cancelled or failed (``out_of_stock``, ``payment_declined``, ...).
    reason = models.CharField(max_length=100, blank=True, default="")
    total_cents = models.PositiveIntegerField()
    saga_id = models.UUIDField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    settled_at = models.DateTimeField(null=True, blank=True)
    #: Set in the transaction that confirms the order; the e-mail goes out on commit.
    emailed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["status", "style"], name="shop_order_status_style")]

    def __str__(self) -> str:
        return f"order {self.pk} ({self.style}, {self.status})"


class OrderLine(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines")
    product = models.ForeignKey(Product, on_delete=models.PROTECT)
    quantity = models.PositiveIntegerField()
    unit_price_cents = models.PositiveIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["order", "product"], name="shop_line_unique_product"),
        ]

    def __str__(self) -> str:
        return f"{self.quantity} x {self.product_id}"


class HoldState(models.TextChoices):
    HELD = "held"
    RELEASED = "released"
    SHIPPED = "shipped"  # committed when the order was confirmed


class StockHold(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="holds")
    product = models.ForeignKey(Product, on_delete=models.PROTECT)
    quantity = models.PositiveIntegerField()
    state = models.CharField(max_length=16, choices=HoldState.choices, default=HoldState.HELD)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    #: ``expired`` when the periodic task released it, else the compensation's reason.
    released_by = models.CharField(max_length=32, blank=True, default="")

    class Meta:
        constraints = [
            # One reservation per order and product: a repeated reserve is a no-op.
            models.UniqueConstraint(fields=["order", "product"], name="shop_hold_unique_product"),
        ]
        indexes = [
            models.Index(
                fields=["expires_at"], condition=Q(state="held"), name="shop_hold_live_expiry"
            ),
        ]

    def __str__(self) -> str:
        return f"hold {self.quantity} x {self.product_id} for order {self.order_id} ({self.state})"


class OrderEvent(models.Model):
    """The choreographed checkout's timeline: one row per event a service handled."""

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="events")
    topic = models.CharField(max_length=64)
    handled_by = models.CharField(max_length=64)
    detail = models.CharField(max_length=300, blank=True, default="")
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.topic} for order {self.order_id}"


# --- the fake services (their own tables, on the ``services`` connection) ----------------


class ChargeState(models.TextChoices):
    AUTHORISED = "authorised"
    CAPTURED = "captured"
    VOIDED = "voided"
    REFUNDED = "refunded"
    DECLINED = "declined"


class Charge(models.Model):
    """A card payment at the fake gateway, deduplicated by the caller's key."""

    key = models.CharField(max_length=255, unique=True)
    order_ref = models.CharField(max_length=64, db_index=True)
    customer = models.CharField(max_length=254)
    amount_cents = models.PositiveIntegerField()
    state = models.CharField(max_length=16, choices=ChargeState.choices)
    captured_cents = models.PositiveIntegerField(default=0)
    refunded_cents = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"charge {self.key} ({self.state})"


class Shipment(models.Model):
    """A parcel booked with the fake carrier, deduplicated by the caller's key."""

    class State(models.TextChoices):
        SCHEDULED = "scheduled"
        CANCELLED = "cancelled"

    key = models.CharField(max_length=255, unique=True)
    order_ref = models.CharField(max_length=64, db_index=True)
    customer = models.CharField(max_length=254)
    items = models.PositiveIntegerField()
    state = models.CharField(max_length=16, choices=State.choices)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"shipment {self.key} ({self.state})"


class ServiceRequest(models.Model):
    """Every request a fake service received and what it answered (its access log)."""

    service = models.CharField(max_length=16)
    operation = models.CharField(max_length=16)
    key = models.CharField(max_length=255)
    order_ref = models.CharField(max_length=64, blank=True, default="")
    #: ``ok``, ``replayed``, or the injected fault (``declined``, ``timeout``, ...).
    outcome = models.CharField(max_length=16)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["service", "key"], name="shop_request_service_key")]

    def __str__(self) -> str:
        return f"{self.service}.{self.operation} {self.key} -> {self.outcome}"


class FaultMode(models.TextChoices):
    DECLINE = "decline"  # a business refusal: card declined, address not served
    TIMEOUT = "timeout"  # the effect happens, then the caller sees a timeout
    ERROR = "error"  # 5xx before anything happens
    DOWN = "down"  # unavailable for ``down_for`` seconds


class FaultRule(models.Model):
    """When a fake service fails. Read by every process (tests arm them for workers).

    ``rate`` is the chance per matching request (the demo). ``remaining`` makes a
    rule deterministic (tests): it fires on exactly the next N matching requests.
    ``customer`` and ``operation`` narrow the match (blank: any).
    """

    service = models.CharField(max_length=16)
    mode = models.CharField(max_length=16, choices=FaultMode.choices)
    operation = models.CharField(max_length=16, blank=True, default="")
    customer = models.CharField(max_length=254, blank=True, default="")
    rate = models.FloatField(default=1.0)
    remaining = models.IntegerField(null=True, blank=True)
    down_for = models.FloatField(default=1.0)
    down_until = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.service}.{self.operation or '*'} {self.mode} @ {self.rate}"


class LocalEvent(models.Model):
    """The SQLite stand-in for sagaflow's outbox (``events.py``); unused on PostgreSQL."""

    topic = models.CharField(max_length=64)
    key = models.CharField(max_length=64, blank=True, default="")
    payload = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["id"], condition=Q(delivered_at__isnull=True), name="shop_localevent_todo"
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.topic}"
