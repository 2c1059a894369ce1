"""The orchestrated checkout, and (imported below) the choreographed one's consumers.

    reserve_stock -> authorise_payment -> schedule_shipping -> capture_payment -> confirm_order

Payment is captured only once shipping is scheduled; the non-reversible step
(confirming and e-mailing) comes last and runs in the transaction that records it.

**Outcome unknown.** A payment or shipping call that times out may have taken
effect. Each call passes the step's ``ctx.idempotency_key``, so a retry returns
the first call's result instead of acting twice. If the step runs out of tries
while the outcome is unknown, it is declared ``compensate_on_failure=True``: its
own compensation runs too, and cancels by the step's key (``ctx.step_key``: void,
refund, or a tombstone that refuses a late request). If that cancel keeps failing,
the saga ends ``failed`` and raises the alert, rather than leaving a cancelled
order with the money held.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

import sagaflow
from sagaflow import Abort, Retry

from . import inventory, notifications, payments, shipping
from .chaos import Declined
from .models import Order, OrderStatus, Shipment

logger = logging.getLogger("demo_shop.checkout")

checkout = sagaflow.define("shop.checkout", deadline=timedelta(minutes=2))

#: Service calls: 4 tries over about 1.5 s; local steps: 3 quick tries.
SERVICE_RETRY = Retry(attempts=4, backoff=0.2, max_backoff=2)
LOCAL_RETRY = Retry(attempts=3, backoff=0.1, max_backoff=1)
#: Compensations must not give up on a gateway that is down for a while.
UNDO_RETRY = Retry(attempts=10, backoff=0.2, max_backoff=2)


def _order(ctx) -> Order:
    return Order.objects.get(pk=ctx.data["order_id"])


def _ref(ctx) -> str:
    return f"order-{ctx.data['order_id']}"


@checkout.step(retry=LOCAL_RETRY, timeout=10, atomic=True)
def reserve_stock(ctx):
    try:
        holds = inventory.reserve(ctx.data["order_id"])
    except inventory.OutOfStock as exc:
        raise Abort(f"out_of_stock: {exc.sku}") from exc
    return {"holds": holds}


@reserve_stock.compensation(retry=UNDO_RETRY)
def release_stock(ctx):
    inventory.release(ctx.data["order_id"], reason="compensation")


@checkout.step(retry=SERVICE_RETRY, timeout=10, compensate_on_failure=True)
def authorise_payment(ctx):
    order = _order(ctx)
    try:
        charge = payments.authorise(
            key=ctx.idempotency_key,
            order_ref=_ref(ctx),
            customer=order.customer,
            amount_cents=order.total_cents,
        )
    except Declined as exc:
        raise Abort(f"payment_declined: {exc}") from exc
    return {"charge_key": charge.key, "amount_cents": charge.amount_cents}


@authorise_payment.compensation(retry=UNDO_RETRY)
def cancel_payment(ctx):
    # Voids an authorisation, refunds a capture: whatever exists under the step's
    # key, also when the step itself failed with its outcome unknown.
    order = _order(ctx)
    payments.cancel(key=ctx.step_key, order_ref=_ref(ctx), customer=order.customer)


@checkout.step(retry=SERVICE_RETRY, timeout=10, compensate_on_failure=True)
def schedule_shipping(ctx):
    order = _order(ctx)
    items = sum(line.quantity for line in order.lines.all())
    try:
        shipment = shipping.schedule(
            key=ctx.idempotency_key, order_ref=_ref(ctx), customer=order.customer, items=items
        )
    except Declined as exc:
        raise Abort(f"shipping_refused: {exc}") from exc
    return {"shipment_key": shipment.key}


@schedule_shipping.compensation(retry=UNDO_RETRY)
def cancel_shipment(ctx):
    order = _order(ctx)
    shipping.cancel(key=ctx.step_key, order_ref=_ref(ctx), customer=order.customer)


@checkout.step(retry=SERVICE_RETRY, timeout=10)
def capture_payment(ctx):
    # Never capture unless shipping is scheduled: check the carrier's own record.
    shipment_key = ctx.results["schedule_shipping"]["shipment_key"]
    if not Shipment.objects.filter(key=shipment_key, state=Shipment.State.SCHEDULED).exists():
        raise Abort("shipping_missing: no scheduled shipment, refusing to capture")
    try:
        # Capturing a captured charge is a no-op, so a retry after a timeout is safe;
        # if all tries fail, authorise_payment's compensation refunds or voids.
        charge = payments.capture(key=ctx.results["authorise_payment"]["charge_key"])
    except Declined as exc:
        raise Abort(f"capture_refused: {exc}") from exc
    return {"captured_cents": charge.captured_cents}


@checkout.step(atomic=True)
def confirm_order(ctx):
    order_id = ctx.data["order_id"]
    if not inventory.ship(order_id):
        raise Abort("hold_expired: the stock hold expired before confirmation")
    now = timezone.now()
    confirmed = Order.objects.filter(pk=order_id, status=OrderStatus.PENDING).update(
        status=OrderStatus.CONFIRMED, settled_at=now, emailed_at=now
    )
    if not confirmed:
        raise Abort("order_not_pending: the order was settled elsewhere")
    # The e-mail is the one effect that cannot be undone: sent only once this commits.
    transaction.on_commit(lambda: notifications.send_confirmation(order_id))
    return {"confirmed_at": now.isoformat()}


# Imported for their side effects: the choreography's consumers and the receivers
# that settle an order from its saga's end register themselves.
from . import choreography, receivers  # noqa: E402, F401
