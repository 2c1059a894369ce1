"""Consumers in a real celery worker: every event delivered twice, applied once."""

from __future__ import annotations

import ast
import re

import pytest
from django.db import transaction
from django.test import override_settings

import sagaflow
from sagaflow.models import InboxMessage
from sagaflow.outbox import publishers, relay
from tests.outboxapp import sagas
from tests.outboxapp.broker import BrokerQueue
from tests.outboxapp.models import Receipt
from tests.processes import Worker
from tests.waiting import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


class Twice(publishers.CeleryPublisher):
    """Every batch goes to the broker twice: the duplicate a crashed relay makes."""

    def publish(self, events):
        super().publish(events)
        super().publish(events)


def test_consumer_receiving_every_event_twice_applies_it_once(settings):
    queue = BrokerQueue(settings.CELERY_BROKER_URL)
    worker = Worker(
        concurrency=2,
        env={
            "DJANGO_SETTINGS_MODULE": "tests.outboxapp.relay_settings",
            "OUTBOX_TEST_QUEUE": queue.name,
        },
    )
    try:
        with override_settings(
            SAGAFLOW={"OUTBOX_KICK_ON_COMMIT": False, "OUTBOX_QUEUE": queue.name}
        ):
            with transaction.atomic():
                ids = [sagaflow.publish(sagas.TOPIC, {"n": i}, key=f"k{i % 7}") for i in range(300)]
            report = relay.drain(batch_size=50, publisher=Twice())
        assert report.published == 300
        applied = InboxMessage.objects.filter(consumer="outboxapp.record")
        wait_until(
            lambda: applied.count() == 300 and queue.length() == 0,
            timeout=60,
            what=f"the worker to consume both copies (queue {queue.length()}, "
            f"applied {applied.count()})\n{worker.output()}",
        )

        def totals():
            found = re.findall(
                r"succeeded in [0-9.]+s: (\{.*?\})", worker.log.read_text(errors="replace")
            )
            reports = [ast.literal_eval(x) for x in found]
            return reports if len(reports) == 12 else None

        reports = wait_until(totals, what="both copies of the 6 batches to be reported")
        receipts = list(
            Receipt.objects.filter(consumer="outboxapp.record").values_list("event_id", flat=True)
        )
        assert sorted(receipts) == sorted(ids)  # each applied exactly once
        # 2 consumers of the topic (record, chain) x 300 events, each delivered twice.
        assert sum(r["applied"] for r in reports) == 600
        assert sum(r["duplicates"] for r in reports) == 600
    finally:
        worker.stop()
        queue.close()
