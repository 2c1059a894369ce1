"""``outbox_sweep`` under a backlog: resend what is provably lost, never the backlog.

A consumer's missing inbox row means its event was lost by the broker *or* that the
workers have not reached it yet. Resending everything older than
``CONSUMER_REDELIVER_AFTER`` turns a backlog older than that into a bigger one
(each sweep adds a copy of it), which makes it older still.
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import override_settings

from sagaflow.models import OutboxEvent
from sagaflow.outbox import consumers
from sagaflow.outbox import inbox as inbox_store
from sagaflow.outbox import store as outbox_store
from tests.outboxapp import sagas

pytestmark = pytest.mark.django_db

CONSUMER = "outboxapp.flaky"  # the only consumer of sagas.FLAKY
SETTLE = 60.0


@pytest.fixture(autouse=True)
def _settings(settings):
    quick = {"OUTBOX_KICK_ON_COMMIT": False, "CONSUMER_REDELIVER_AFTER": SETTLE}
    with override_settings(SAGAFLOW={**settings.SAGAFLOW, **quick}):
        yield


def published(n: int, ago: float) -> list[int]:
    """``n`` events of the flaky consumer's topic, relayed ``ago`` seconds ago."""
    outbox_store.insert_events(((sagas.FLAKY, None, {"n": i}) for i in range(n)), notify=False)
    ids = list(OutboxEvent.objects.order_by("-id").values_list("id", flat=True)[:n])[::-1]
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE sagaflow_outboxevent SET state = 'published',"
            " published_at = now() - make_interval(secs => %s) WHERE id = ANY(%s)",
            [ago, ids],
        )
    return ids


def received(ids: list[int], ago: float) -> None:
    """The consumer applied ``ids``, ``ago`` seconds ago."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO sagaflow_inboxmessage (consumer, message_id, topic, state, attempts,"
            " last_error, created_at, updated_at)"
            " SELECT %s, i, %s, 'processed', 1, '', now() - make_interval(secs => %s),"
            "  now() - make_interval(secs => %s) FROM unnest(%s::bigint[]) AS i",
            [CONSUMER, sagas.FLAKY, ago, ago, ids],
        )


def take() -> list[int]:
    return inbox_store.take_unconsumed(CONSUMER, sagas.FLAKY, settle=SETTLE, window=3600, limit=500)


def test_outbox_sweep_does_not_resend_a_backlog_the_workers_have_not_reached(monkeypatch):
    before = published(10, ago=300)
    received(before, ago=250)  # before the backlog formed
    backlog = published(40, ago=120)  # queued two minutes ago, older than the settle time
    received(backlog[:1], ago=0)  # the workers are on it, just now
    sent: list[list[dict]] = []
    monkeypatch.setattr(
        consumers.sending, "send_task", lambda name, args, kwargs, **o: sent.append(args[0])
    )

    for _ in range(3):  # sweeps: a probe each at most, never the backlog
        assert consumers.redeliver_unconsumed() <= 1
    assert sum(len(batch) for batch in sent) <= 3


def test_outbox_sweep_resends_events_lost_behind_ones_already_received():
    before = published(10, ago=300)
    received(before, ago=250)
    lost = published(10, ago=200)  # Redis flushed with these in it
    after = published(10, ago=150)
    received(after, ago=100)  # later events arrived, over a minute ago: these are lost
    assert take() == lost
    assert take() == []  # stamped as sent again


def test_outbox_sweep_probes_with_one_event_when_nothing_later_was_received():
    before = published(5, ago=300)
    received(before, ago=250)
    lost = published(10, ago=200)  # lost, and nothing published since
    assert take() == [lost[-1]]  # one probe, the newest
    received([lost[-1]], ago=SETTLE + 1)  # it arrived (a minute ago)
    assert take() == lost[:-1]  # so the ones before it are provably lost
