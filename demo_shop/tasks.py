"""The shop's periodic tasks (celery beat, see ``settings.CELERY_BEAT_SCHEDULE``).

Both are harmless when run twice or concurrently (C10): every change they make is
a conditional UPDATE or an idempotent call to a service.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import transaction
from django.utils import timezone

from sagaflow.models import Saga, SagaState

from . import events, inventory, payments, settlement, shipping
from .models import Charge, ChargeState, HoldState, Order, OrderStatus, Shipment, StockHold

logger = logging.getLogger("demo_shop.tasks")


@shared_task(name="demo_shop.release_expired_holds", ignore_result=True)
def release_expired_holds() -> dict[str, int]:
    """The reservation pattern's clock: expired holds go back on the shelf.

    A hold outlives the checkout saga's deadline, so this only ever finds
    checkouts that stalled (a choreography whose event is dead-lettered, a saga
    that ended ``failed``). A still-pending order of such a hold is cancelled and
    its payment and shipment are cancelled by key.
    """
    released_orders = inventory.release_expired()
    cancelled = 0
    for order_id in released_orders:
        with transaction.atomic():
            cancelled += Order.objects.filter(pk=order_id, status=OrderStatus.PENDING).update(
                status=OrderStatus.CANCELLED, reason="hold_expired", settled_at=timezone.now()
            )
    if released_orders:
        reconcile()
    return {"released_orders": len(released_orders), "cancelled": cancelled}


@shared_task(name="demo_shop.reconcile", ignore_result=True)
def reconcile() -> dict[str, int]:
    """Make the services agree with the shop's settled orders.

    - an orchestrated order whose saga ended without a confirmation is settled
      (the saga signal that does it is sent after commit and can be lost);
    - a cancelled order's charges are voided or refunded and its shipments
      cancelled, by their keys: this catches a payment whose outcome was unknown
      when its step gave up and whose cancellation failed too.
    """
    settled = 0
    pending = Order.objects.filter(status=OrderStatus.PENDING, saga_id__isnull=False)
    for saga in Saga.objects.filter(
        pk__in=pending.values("saga_id"), state__in=[SagaState.COMPENSATED, SagaState.FAILED]
    ):
        settled += settlement.settle_from_saga(saga)
    fixed = 0
    cancelled = Order.objects.filter(status=OrderStatus.CANCELLED)
    refs = {f"order-{pk}": pk for pk in cancelled.values_list("pk", flat=True)}
    live_charges = Charge.objects.filter(
        state__in=[ChargeState.AUTHORISED, ChargeState.CAPTURED], order_ref__in=list(refs)
    )
    for charge in live_charges:
        try:
            payments.cancel(key=charge.key, order_ref=charge.order_ref, customer=charge.customer)
            fixed += 1
        except Exception:  # the gateway is down: the next run tries again
            logger.warning("reconcile: could not cancel charge %s", charge.key, exc_info=True)
    live_shipments = Shipment.objects.filter(
        state=Shipment.State.SCHEDULED, order_ref__in=list(refs)
    )
    for shipment in live_shipments:
        try:
            shipping.cancel(
                key=shipment.key, order_ref=shipment.order_ref, customer=shipment.customer
            )
            fixed += 1
        except Exception:
            logger.warning("reconcile: could not cancel shipment %s", shipment.key, exc_info=True)
    for order_id in (
        StockHold.objects.filter(state=HoldState.HELD, order_id__in=list(refs.values()))
        .values_list("order_id", flat=True)
        .distinct()
    ):
        fixed += inventory.release(order_id, reason="reconcile")
    return {"settled": settled, "fixed": fixed}


@shared_task(name=events.DELIVER_LOCAL_EVENTS, ignore_result=True)
def deliver_local_events() -> int:
    """SQLite only: feed ``LocalEvent`` rows to the consumers (see ``events.py``)."""
    return events.deliver_local()
