"""Settling an orchestrated order from the end of its checkout saga.

A compensated or failed saga leaves its order ``pending`` until something settles it:
the saga signals (``receivers.py``), the periodic ``tasks.reconcile``, and the order
API when it reads a pending order. Settling is a conditional UPDATE, so any of them
may do it, twice or at once. This module imports neither the checkout saga nor the
API, so the signal receivers it serves can be registered by ``sagas.py`` itself.
"""

from __future__ import annotations

import re

from django.utils import timezone

from sagaflow.models import Saga, SagaState

from .models import Order, OrderStatus


def reason_from_saga(saga: Saga) -> str:
    """``out_of_stock`` from "step 'reserve_stock' failed: Abort: out_of_stock: ..."."""
    failed = saga.steps.filter(error__gt="").exclude(state="compensated").order_by("index").last()
    text = (saga.error or "").strip()
    if "Abort: " in text:
        return text.split("Abort: ", 1)[1].split(":", 1)[0].strip()[:100]
    if saga.state == SagaState.FAILED:
        return "compensation_failed"
    # "step 'schedule_shipping' failed: ..." (the step may itself be compensated
    # since it is declared compensate_on_failure, so its row no longer says so).
    named = re.match(r"step '([\w.:-]+)' failed", text)
    if named:
        return f"{named.group(1)}_failed"
    if failed is not None:
        return f"{failed.name}_failed"
    return (text.split(":", 1)[0] or "cancelled")[:100]


def settle_from_saga(saga: Saga) -> bool:
    """Mark the order of a compensated/failed checkout saga; True if it changed."""
    if saga.state not in (SagaState.COMPENSATED, SagaState.FAILED):
        return False
    status = OrderStatus.FAILED if saga.state == SagaState.FAILED else OrderStatus.CANCELLED
    return bool(
        Order.objects.filter(saga_id=saga.id, status=OrderStatus.PENDING).update(
            status=status, reason=reason_from_saga(saga), settled_at=timezone.now()
        )
    )
