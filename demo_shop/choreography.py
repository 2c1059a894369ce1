"""The choreographed checkout: the same flow as ``sagas.checkout``, with no conductor.

Each service reacts to an event and announces what it did; nobody holds the
whole picture. Forward::

    order.placed      -> inventory reserves   -> stock.reserved    | stock.rejected
    stock.reserved    -> payments authorise   -> payment.authorised | payment.failed
    payment.authorised-> shipping schedules   -> shipping.scheduled | shipping.failed
    shipping.scheduled-> payments capture     -> payment.captured   | payment.capture_failed
    payment.captured  -> orders confirm       -> order.confirmed    | order.rejected

Compensation walks back the same chain, each service undoing its own part::

    payment.capture_failed, order.rejected -> shipping cancels   -> shipping.cancelled
    shipping.failed, shipping.cancelled    -> payments cancel    -> payment.voided
    payment.failed, payment.voided         -> inventory releases -> stock.released
    stock.rejected, stock.released         -> orders cancel      -> order.cancelled

Every handler runs at most once per event (sagaflow's inbox), calls its service
first and then, in one transaction, writes its local change, its line in the
order's log (``OrderEvent``) and the next event. There is no central retry
policy: each service retries its own calls (``_call``) and decides when to give
up, and a timed-out call is cancelled by its key before a failure is announced.
Compensation handlers never give up: they raise, and sagaflow retries them and
finally dead-letters the inbox row, which is where a stuck choreography shows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.utils import timezone

import sagaflow

from . import inventory, notifications, payments, shipping
from .chaos import Declined, ServiceError
from .events import emit
from .models import Order, OrderEvent, OrderStatus, Shipment

logger = logging.getLogger("demo_shop.choreography")

FORWARD_TRIES = 4
UNDO_TRIES = 10


def payment_key(order_id: int) -> str:
    return f"shop:order:{order_id}:payment"


def shipment_key(order_id: int) -> str:
    return f"shop:order:{order_id}:shipment"


def _ref(order_id: int) -> str:
    return f"order-{order_id}"


def _call(fn: Callable[[], Any], tries: int) -> tuple[str, Any]:
    """Call a service with backoff: ("ok", result), ("declined", why) or ("gave_up", why)."""
    for attempt in range(1, tries + 1):
        try:
            return "ok", fn()
        except Declined as exc:
            return "declined", str(exc)
        except ServiceError as exc:
            if attempt == tries:
                return "gave_up", str(exc)
            time.sleep(min(0.1 * 2 ** (attempt - 1), 1.0))
    raise AssertionError("unreachable")


def _must(fn: Callable[[], Any]) -> Any:
    """A compensation: retried here, then by sagaflow (raise), never abandoned."""
    outcome, value = _call(fn, UNDO_TRIES)
    if outcome == "gave_up":
        raise ServiceError(value)
    return value


def _record(event: sagaflow.Event, order_id: int, who: str, detail: str = "") -> None:
    OrderEvent.objects.create(
        order_id=order_id, topic=event.topic, handled_by=who, detail=detail[:300]
    )


def _context(event: sagaflow.Event) -> tuple[int, Order, str]:
    order_id = int(event.payload["order_id"])
    return order_id, Order.objects.get(pk=order_id), event.payload.get("reason", "")


# --- forward ---------------------------------------------------------------------------


@sagaflow.consumer("order.placed", name="shop.inventory.reserve")
def reserve(event: sagaflow.Event) -> None:
    order_id, _, _ = _context(event)
    with transaction.atomic():
        try:
            inventory.reserve(order_id)
        except inventory.OutOfStock as exc:
            _record(event, order_id, "inventory", str(exc))
            emit("stock.rejected", order_id, reason=f"out_of_stock: {exc.sku}")
            return
        _record(event, order_id, "inventory", "stock held")
        emit("stock.reserved", order_id)


@sagaflow.consumer("stock.reserved", name="shop.payments.authorise")
def authorise(event: sagaflow.Event) -> None:
    order_id, order, _ = _context(event)
    key = payment_key(order_id)
    outcome, value = _call(
        lambda: payments.authorise(
            key=key,
            order_ref=_ref(order_id),
            customer=order.customer,
            amount_cents=order.total_cents,
        ),
        FORWARD_TRIES,
    )
    if outcome == "gave_up":  # the outcome is unknown: make sure nothing stays charged
        _must(lambda: payments.cancel(key=key, order_ref=_ref(order_id), customer=order.customer))
    with transaction.atomic():
        if outcome == "ok":
            _record(event, order_id, "payments", "authorised")
            emit("payment.authorised", order_id)
        else:
            reason = "payment_declined" if outcome == "declined" else "authorise_payment_failed"
            _record(event, order_id, "payments", f"{reason}: {value}")
            emit("payment.failed", order_id, reason=f"{reason}: {value}")


@sagaflow.consumer("payment.authorised", name="shop.shipping.schedule")
def schedule(event: sagaflow.Event) -> None:
    order_id, order, _ = _context(event)
    key = shipment_key(order_id)
    items = sum(line.quantity for line in order.lines.all())
    outcome, value = _call(
        lambda: shipping.schedule(
            key=key, order_ref=_ref(order_id), customer=order.customer, items=items
        ),
        FORWARD_TRIES,
    )
    if outcome == "gave_up":
        _must(lambda: shipping.cancel(key=key, order_ref=_ref(order_id), customer=order.customer))
    with transaction.atomic():
        if outcome == "ok":
            _record(event, order_id, "shipping", "scheduled")
            emit("shipping.scheduled", order_id)
        else:
            reason = "shipping_refused" if outcome == "declined" else "schedule_shipping_failed"
            _record(event, order_id, "shipping", f"{reason}: {value}")
            emit("shipping.failed", order_id, reason=f"{reason}: {value}")


@sagaflow.consumer("shipping.scheduled", name="shop.payments.capture")
def capture(event: sagaflow.Event) -> None:
    order_id, _, _ = _context(event)
    scheduled = Shipment.objects.filter(
        key=shipment_key(order_id), state=Shipment.State.SCHEDULED
    ).exists()
    if not scheduled:  # never capture unless shipping is scheduled
        outcome, value = "declined", "no scheduled shipment"
    else:
        outcome, value = _call(lambda: payments.capture(key=payment_key(order_id)), FORWARD_TRIES)
    with transaction.atomic():
        if outcome == "ok":
            _record(event, order_id, "payments", "captured")
            emit("payment.captured", order_id)
        else:
            # payments.cancel refunds a capture that happened after all (a timeout).
            _record(event, order_id, "payments", f"capture failed: {value}")
            emit("payment.capture_failed", order_id, reason=f"capture_payment_failed: {value}")


@sagaflow.consumer("payment.captured", name="shop.orders.confirm")
def confirm(event: sagaflow.Event) -> None:
    order_id, _, _ = _context(event)
    with transaction.atomic():
        now = timezone.now()
        shipped = inventory.ship(order_id)
        if shipped and Order.objects.filter(pk=order_id, status=OrderStatus.PENDING).update(
            status=OrderStatus.CONFIRMED, settled_at=now, emailed_at=now
        ):
            _record(event, order_id, "orders", "confirmed")
            emit("order.confirmed", order_id)
            transaction.on_commit(lambda: notifications.send_confirmation(order_id))
            return
        transaction.set_rollback(True)
    with transaction.atomic():
        _record(event, order_id, "orders", "cannot confirm: hold expired or order settled")
        emit("order.rejected", order_id, reason="hold_expired")


# --- compensation ----------------------------------------------------------------------


def _cancel_shipping(event: sagaflow.Event) -> None:
    order_id, order, reason = _context(event)
    _must(
        lambda: shipping.cancel(
            key=shipment_key(order_id), order_ref=_ref(order_id), customer=order.customer
        )
    )
    with transaction.atomic():
        _record(event, order_id, "shipping", "shipment cancelled")
        emit("shipping.cancelled", order_id, reason=reason)


def _cancel_payment(event: sagaflow.Event) -> None:
    order_id, order, reason = _context(event)
    _must(
        lambda: payments.cancel(
            key=payment_key(order_id), order_ref=_ref(order_id), customer=order.customer
        )
    )
    with transaction.atomic():
        _record(event, order_id, "payments", "payment voided or refunded")
        emit("payment.voided", order_id, reason=reason)


def _release_stock(event: sagaflow.Event) -> None:
    order_id, _, reason = _context(event)
    with transaction.atomic():
        inventory.release(order_id, reason="compensation")
        _record(event, order_id, "inventory", "stock released")
        emit("stock.released", order_id, reason=reason)


def _cancel_order(event: sagaflow.Event) -> None:
    order_id, _, reason = _context(event)
    with transaction.atomic():
        cancelled = Order.objects.filter(pk=order_id, status=OrderStatus.PENDING).update(
            status=OrderStatus.CANCELLED,
            reason=reason.split(":")[0][:100],
            settled_at=timezone.now(),
        )
        _record(
            event, order_id, "orders", f"cancelled: {reason}" if cancelled else "already settled"
        )
        if cancelled:
            emit("order.cancelled", order_id, reason=reason)


for _topic, _handler, _name in [
    ("payment.capture_failed", _cancel_shipping, "shop.shipping.cancel_after_capture_failed"),
    ("order.rejected", _cancel_shipping, "shop.shipping.cancel_after_rejected"),
    ("shipping.failed", _cancel_payment, "shop.payments.cancel_after_shipping_failed"),
    ("shipping.cancelled", _cancel_payment, "shop.payments.cancel_after_shipping_cancelled"),
    ("payment.failed", _release_stock, "shop.inventory.release_after_payment_failed"),
    ("payment.voided", _release_stock, "shop.inventory.release_after_payment_voided"),
    ("stock.rejected", _cancel_order, "shop.orders.cancel_after_stock_rejected"),
    ("stock.released", _cancel_order, "shop.orders.cancel_after_stock_released"),
]:
    sagaflow.consumer(_topic, name=_name)(_handler)
