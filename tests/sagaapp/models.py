"""Tables the test sagas write to, so tests can count what really happened."""

from django.db import models


class Call(models.Model):
    """One invocation of a step or compensation (every try, duplicates included)."""

    saga_id = models.UUIDField(db_index=True)
    step = models.CharField(max_length=100)
    kind = models.CharField(max_length=16)  # "step" or "compensation"
    attempt = models.PositiveIntegerField()
    idempotency_key = models.CharField(max_length=300)
    pid = models.IntegerField()
    at = models.DateTimeField(auto_now_add=True)


class Effect(models.Model):
    """An external effect, deduplicated by idempotency key like a real payment API."""

    idempotency_key = models.CharField(max_length=300, unique=True)
    saga_id = models.UUIDField(db_index=True)
    step = models.CharField(max_length=100)
    kind = models.CharField(max_length=16)
    requests = models.PositiveIntegerField(default=1)


class AtomicWrite(models.Model):
    """Written inside an ``atomic=True`` step: no dedup, so a double run shows."""

    saga_id = models.UUIDField(db_index=True)
    step = models.CharField(max_length=100)
