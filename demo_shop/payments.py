"""The fake payment gateway: authorise, capture, void and refund, keyed by the caller.

It behaves like a real provider's API in the ways that matter to a saga:

- every request carries an idempotency key; the same key again returns the first
  result (``replayed`` in the request log) and never charges twice;
- ``cancel(key)`` undoes whatever exists under a key: voids an authorisation,
  refunds a capture, and on a key it has never seen records a voided tombstone,
  so an authorisation that arrives late with that key is refused, not charged;
- injected faults (``chaos.py``): ``decline``, ``timeout`` (the charge is made,
  then the caller sees a timeout: outcome unknown), ``error`` (500, nothing
  happened) and ``down`` (503 for a while).

Its tables live on the ``services`` connection, so its commits do not depend on
the caller's transaction.
"""

from __future__ import annotations

from django.db import IntegrityError, transaction

from . import chaos
from .chaos import Declined, Timeout
from .models import Charge, ChargeState
from .routers import SERVICES

SERVICE = "payments"


def _log(operation: str, key: str, order_ref: str, outcome: str) -> None:
    chaos.log_request(SERVICE, operation, key, order_ref, outcome)


def _fault(operation: str, key: str, order_ref: str, customer: str) -> str | None:
    return chaos.fault_for(SERVICE, operation, key, order_ref, customer)


def _locked(key: str) -> Charge | None:
    return Charge.objects.select_for_update().filter(key=key).first()


def authorise(*, key: str, order_ref: str, customer: str, amount_cents: int) -> Charge:
    """Hold ``amount_cents`` on the customer's card. Raises Declined on a refusal."""
    mode = _fault("authorise", key, order_ref, customer)
    try:
        with transaction.atomic(using=SERVICES):
            charge = _locked(key)
            if charge is not None:
                _log("authorise", key, order_ref, "replayed")
            else:
                state = ChargeState.DECLINED if mode == "decline" else ChargeState.AUTHORISED
                charge = Charge.objects.create(
                    key=key,
                    order_ref=order_ref,
                    customer=customer,
                    amount_cents=amount_cents,
                    state=state,
                )
                _log("authorise", key, order_ref, mode or "ok")
    except IntegrityError:  # a concurrent request with the same key won: replay it
        return authorise(key=key, order_ref=order_ref, customer=customer, amount_cents=amount_cents)
    if mode == "timeout":
        raise Timeout(f"payments authorise {key}: no answer (the card may have been charged)")
    if charge.state == ChargeState.DECLINED:
        raise Declined("card declined")
    if charge.state not in (ChargeState.AUTHORISED, ChargeState.CAPTURED):
        raise Declined(f"the authorisation under {key} was cancelled ({charge.state})")
    return charge


def capture(*, key: str) -> Charge:
    """Take the authorised money. Capturing a captured charge is a no-op."""
    charge = Charge.objects.filter(key=key).first()
    if charge is None:
        raise Declined(f"no authorisation under {key}")
    mode = _fault("capture", key, charge.order_ref, charge.customer)
    with transaction.atomic(using=SERVICES):
        charge = _locked(key)
        if charge.state == ChargeState.AUTHORISED:
            charge.state = ChargeState.CAPTURED
            charge.captured_cents = charge.amount_cents
            charge.save(update_fields=["state", "captured_cents", "updated_at"])
            _log("capture", key, charge.order_ref, mode or "ok")
        elif charge.state == ChargeState.CAPTURED:
            _log("capture", key, charge.order_ref, "replayed")
        else:
            _log("capture", key, charge.order_ref, "refused")
            raise Declined(f"cannot capture a {charge.state} charge")
    if mode == "timeout":
        raise Timeout(f"payments capture {key}: no answer (the money may have been taken)")
    return charge


def cancel(*, key: str, order_ref: str, customer: str) -> Charge:
    """Give back whatever exists under ``key``: void, refund, or refuse it in advance."""
    mode = _fault("cancel", key, order_ref, customer)
    try:
        with transaction.atomic(using=SERVICES):
            charge = _locked(key)
            if charge is None:
                charge = Charge.objects.create(
                    key=key,
                    order_ref=order_ref,
                    customer=customer,
                    amount_cents=0,
                    state=ChargeState.VOIDED,
                )
                outcome = "tombstone"
            elif charge.state == ChargeState.AUTHORISED:
                charge.state = ChargeState.VOIDED
                charge.save(update_fields=["state", "updated_at"])
                outcome = "voided"
            elif charge.state == ChargeState.CAPTURED:
                charge.state = ChargeState.REFUNDED
                charge.refunded_cents = charge.captured_cents
                charge.save(update_fields=["state", "refunded_cents", "updated_at"])
                outcome = "refunded"
            else:
                outcome = "replayed"
            _log("cancel", key, order_ref, outcome if mode != "timeout" else "timeout")
    except IntegrityError:
        return cancel(key=key, order_ref=order_ref, customer=customer)
    if mode == "timeout":
        raise Timeout(f"payments cancel {key}: no answer (it may have been cancelled)")
    return charge


def lookup(*, key: str) -> Charge | None:
    return Charge.objects.filter(key=key).first()
