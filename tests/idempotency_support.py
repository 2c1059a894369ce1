"""Helpers shared by the idempotency tests: waiting on database conditions."""

from __future__ import annotations

import time
from collections.abc import Callable

from django.db.models.functions import Now

from sagaflow.models import IdempotencyKey


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)


def some_lease_lapsed() -> bool:
    """By the database clock, as the claim decides it."""
    return IdempotencyKey.objects.filter(locked_until__lt=Now()).exists()


def some_key_expired() -> bool:
    return IdempotencyKey.objects.filter(expires_at__lt=Now()).exists()
