"""Conditions the idempotency tests wait for (with ``tests.waiting.wait_until``), read on
the database clock."""

from __future__ import annotations

from django.db.models.functions import Now

from sagaflow.models import IdempotencyKey


def some_lease_lapsed() -> bool:
    """By the database clock, as the claim decides it."""
    return IdempotencyKey.objects.filter(locked_until__lt=Now()).exists()


def some_key_expired() -> bool:
    return IdempotencyKey.objects.filter(expires_at__lt=Now()).exists()
