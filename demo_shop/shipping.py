"""The fake carrier: schedule and cancel a shipment, keyed by the caller.

Same conventions as ``payments.py``: the same key returns the first result;
``cancel`` on an unknown key leaves a cancelled tombstone so a late booking with
that key is refused; faults ``decline`` (address not served), ``timeout`` (booked,
then no answer), ``error`` (500) and ``down`` (503 for a while).
"""

from __future__ import annotations

from django.db import IntegrityError, transaction

from . import chaos
from .chaos import Declined, Timeout
from .models import Shipment
from .routers import SERVICES

SERVICE = "shipping"


def _log(operation: str, key: str, order_ref: str, outcome: str) -> None:
    chaos.log_request(SERVICE, operation, key, order_ref, outcome)


def _fault(operation: str, key: str, order_ref: str, customer: str) -> str | None:
    return chaos.fault_for(SERVICE, operation, key, order_ref, customer)


def schedule(*, key: str, order_ref: str, customer: str, items: int) -> Shipment:
    mode = _fault("schedule", key, order_ref, customer)
    if mode == "decline":
        _log("schedule", key, order_ref, "declined")
        raise Declined("the carrier does not deliver to this address")
    try:
        with transaction.atomic(using=SERVICES):
            shipment = Shipment.objects.select_for_update().filter(key=key).first()
            if shipment is None:
                shipment = Shipment.objects.create(
                    key=key,
                    order_ref=order_ref,
                    customer=customer,
                    items=items,
                    state=Shipment.State.SCHEDULED,
                )
                _log("schedule", key, order_ref, mode or "ok")
            else:
                _log("schedule", key, order_ref, "replayed")
    except IntegrityError:
        return schedule(key=key, order_ref=order_ref, customer=customer, items=items)
    if mode == "timeout":
        raise Timeout(f"shipping schedule {key}: no answer (it may have been booked)")
    if shipment.state == Shipment.State.CANCELLED:
        raise Declined(f"shipment {key} was cancelled")
    return shipment


def cancel(*, key: str, order_ref: str, customer: str) -> Shipment:
    mode = _fault("cancel", key, order_ref, customer)
    try:
        with transaction.atomic(using=SERVICES):
            shipment = Shipment.objects.select_for_update().filter(key=key).first()
            if shipment is None:
                shipment = Shipment.objects.create(
                    key=key,
                    order_ref=order_ref,
                    customer=customer,
                    items=0,
                    state=Shipment.State.CANCELLED,
                )
                outcome = "tombstone"
            elif shipment.state == Shipment.State.SCHEDULED:
                shipment.state = Shipment.State.CANCELLED
                shipment.save(update_fields=["state", "updated_at"])
                outcome = "cancelled"
            else:
                outcome = "replayed"
            _log("cancel", key, order_ref, outcome if mode != "timeout" else "timeout")
    except IntegrityError:
        return cancel(key=key, order_ref=order_ref, customer=customer)
    if mode == "timeout":
        raise Timeout(f"shipping cancel {key}: no answer (it may have been cancelled)")
    return shipment
