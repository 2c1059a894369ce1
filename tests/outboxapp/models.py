"""Tables the outbox tests count deliveries in."""

from django.db import models


class Receipt(models.Model):
    """One successful run of a test consumer on one event (no uniqueness on purpose:
    a second row for the same event means the handler applied it twice)."""

    consumer = models.CharField(max_length=200)
    event_id = models.BigIntegerField()
    key = models.CharField(max_length=200, null=True)  # noqa: DJ001
    headers = models.JSONField(default=dict)
