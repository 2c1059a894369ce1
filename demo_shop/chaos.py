"""Failure injection for the fake services: ``FaultRule`` rows, read by every process.

A rule fires on a matching request either by chance (``rate``, the demo) or for
exactly the next ``remaining`` matching requests (tests: "time out after charging
on the first attempt" is ``remaining=1``). Deciding takes a conditional UPDATE, so
two worker processes never both consume the last firing of a rule.
"""

from __future__ import annotations

import random
from datetime import timedelta

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from .models import FaultMode, FaultRule, ServiceRequest
from .routers import SERVICES


class ServiceError(Exception):
    """A fake service failed; subclasses say how."""


class Declined(ServiceError):
    """A business refusal: retrying will not help."""


class Timeout(ServiceError):
    """No answer in time. The request may or may not have taken effect."""


class ServerError(ServiceError):
    """HTTP 500: nothing happened."""


class Unavailable(ServiceError):
    """HTTP 503, the service is down: nothing happened."""


def arm(service: str, mode: str, **fields) -> FaultRule:
    """Add a rule (``operation``, ``customer``, ``rate``, ``remaining``, ``down_for``)."""
    if mode not in FaultMode.values:
        raise ValueError(f"unknown fault mode {mode!r}; use one of {FaultMode.values}")
    return FaultRule.objects.create(service=service, mode=mode, **fields)


def disarm_all() -> None:
    FaultRule.objects.all().delete()


def decide(service: str, operation: str, customer: str) -> str | None:
    """The fault to inject into this request, or None. ``down`` is raised here."""
    now = timezone.now()
    rules = FaultRule.objects.filter(service=service).filter(
        Q(operation="") | Q(operation=operation), Q(customer="") | Q(customer=customer)
    )
    if rules.filter(mode=FaultMode.DOWN, down_until__gt=now).exists():
        raise Unavailable(f"{service} is down")
    for rule in rules.order_by("id"):
        if rule.remaining is not None:
            with transaction.atomic(using=SERVICES):
                fired = FaultRule.objects.filter(pk=rule.pk, remaining__gt=0).update(
                    remaining=F("remaining") - 1
                )
            if not fired:
                continue
        elif random.random() >= rule.rate:
            continue
        if rule.mode == FaultMode.DOWN:
            FaultRule.objects.filter(pk=rule.pk).update(
                down_until=now + timedelta(seconds=rule.down_for)
            )
            raise Unavailable(f"{service} went down for {rule.down_for:g} s")
        return rule.mode
    return None


def log_request(service: str, operation: str, key: str, order_ref: str, outcome: str) -> None:
    """One line of a fake service's request log (what the invariants are checked on)."""
    ServiceRequest.objects.create(
        service=service, operation=operation, key=key, order_ref=order_ref, outcome=outcome
    )


def fault_for(service: str, operation: str, key: str, order_ref: str, customer: str) -> str | None:
    """The fault this request meets: ``down`` and ``error`` are raised (and logged)
    here, before the service acts; ``decline`` and ``timeout`` are returned for the
    service to act out."""
    try:
        mode = decide(service, operation, customer)
    except Unavailable:
        log_request(service, operation, key, order_ref, "down")
        raise
    if mode == "error":
        log_request(service, operation, key, order_ref, "error")
        raise ServerError(f"{service} {operation}: HTTP 500")
    return mode
