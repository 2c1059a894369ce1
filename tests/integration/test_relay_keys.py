"""Per-key order and fairness of the relay's claim, on real PostgreSQL.

Two holes a review found: a failure counted between a relay's snapshot and its
key lock let it publish a key's second event before its first (order), and one
key blocked behind a retrying head filled the claim's window so that no other key
was relayed (a stall).
"""

from __future__ import annotations

import json
import threading

import psycopg
import pytest
from django.db import connection, transaction
from django.db.models import F
from django.db.models.functions import Now
from django.test import override_settings

import sagaflow
from sagaflow.models import OutboxEvent, OutboxState
from sagaflow.outbox import failures, relay
from sagaflow.outbox import store as outbox_store
from tests.processes import database_url, wait_until

SETTINGS = {
    "OUTBOX_KICK_ON_COMMIT": False,
    "OUTBOX_RETRY_BACKOFF": 60,
    "OUTBOX_RETRY_MAX_BACKOFF": 60,
    "OUTBOX_MAX_ATTEMPTS": 5,
}


@pytest.fixture(autouse=True)
def _settings():
    with override_settings(SAGAFLOW=SETTINGS):
        yield


class RefusesKey:
    """A broker that refuses every batch holding an event of ``key`` (None: none)."""

    def __init__(self, key: str | None) -> None:
        self.key = key
        self.ids: list[int] = []

    def publish(self, events):
        if self.key is not None and any(e["key"] == self.key for e in events):
            raise ConnectionError(f"the broker refuses key {self.key}")
        self.ids.extend(json.loads(json.dumps(e))["id"] for e in events)


@pytest.mark.django_db
def test_a_key_blocked_behind_its_retrying_head_does_not_stall_other_keys(monkeypatch):
    hot = [sagaflow.publish("t", {"n": i}, key="hot") for i in range(100)]
    others = [sagaflow.publish("t", {"n": i}, key=f"o{i}") for i in range(30)]
    others += [sagaflow.publish("t", {"n": i}) for i in range(5)]
    broker = RefusesKey("hot")

    for _ in range(3):  # beat's relay runs: each drain stops at the failed batch
        relay.drain(batch_size=10, publisher=broker)

    assert sorted(broker.ids) == others, "the other keys waited behind the blocked one"
    assert set(OutboxEvent.objects.filter(key="hot").values_list("state", flat=True)) == {
        OutboxState.PENDING
    }
    # When the head is due and the broker takes it, the key goes out in order.
    # (created_at is this test transaction's now(), the relay's clock here)
    OutboxEvent.objects.filter(key="hot").update(available_at=F("created_at"))
    broker.key = None
    monkeypatch.setattr(relay, "_floor", relay._ScanFloor())  # a full scan, not a second later
    relay.drain(batch_size=10, publisher=broker)
    assert [i for i in broker.ids if i in set(hot)] == hot


@pytest.mark.django_db(transaction=True)
def test_a_failure_counted_between_a_relays_snapshot_and_its_key_lock_keeps_the_key_in_order():
    """Relay A's publish of ``k``'s first event failed and A counts it (mark_failed)
    while relay B's claim is running: B's snapshot predates A's commit, B's lock on
    ``k`` follows it. B must not publish ``k``'s second event while the first waits.

    B's claim is made slow the way production makes it slow (P3): a snapshot pinned
    while 200,000 earlier events were relayed leaves their entries in the pending
    index, and B walks them all before it reaches ``k``. A commits meanwhile.
    """
    with transaction.atomic():
        outbox_store.insert_events((("t", None, {"n": i}) for i in range(200_000)), notify=False)
    pin = psycopg.connect(database_url())  # e.g. a long report in another session
    pin.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    pin.execute("SELECT 1")
    OutboxEvent.objects.filter(state=OutboxState.PENDING).update(
        state=OutboxState.PUBLISHED, published_at=Now()
    )
    with transaction.atomic():
        first = sagaflow.publish("t", {"n": 1}, key="k")
        second = sagaflow.publish("t", {"n": 2}, key="k")

    watch = psycopg.connect(database_url(), autocommit=True)
    counted, commit = threading.Event(), threading.Event()
    b_pid: list[int] = []
    claimed: list[int] = []
    errors: list[BaseException] = []

    def relay_a() -> None:
        try:
            with transaction.atomic():
                failures.mark_failed(
                    [first],
                    error="ConnectionError: broker down",
                    max_attempts=5,
                    backoff=60,
                    max_backoff=60,
                )
                counted.set()
                commit.wait(30)
        except BaseException as exc:
            errors.append(exc)
            counted.set()
        finally:
            connection.close()

    def relay_b() -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                b_pid.append(cursor.fetchone()[0])
            with transaction.atomic():
                claimed.extend(e.id for e in outbox_store.claim(10)[0])
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    a = threading.Thread(target=relay_a)
    a.start()
    assert counted.wait(30)
    b = threading.Thread(target=relay_b)
    b.start()

    def b_is_claiming() -> bool:
        if claimed or errors:
            raise AssertionError(f"B's claim ended before A committed: {claimed} {errors}")
        if not b_pid:
            return False
        row = watch.execute(
            "SELECT state, query FROM pg_stat_activity WHERE pid = %s", [b_pid[0]]
        ).fetchone()
        # The claim is one statement (its text is cut at track_activity_query_size).
        return bool(row) and row[0] == "active" and row[1].startswith("WITH s AS MATERIALIZED")

    try:
        wait_until(b_is_claiming, timeout=30, every=0.001, what="relay B's claim to start")
    finally:
        commit.set()
        a.join(30)
        b.join(60)
        pin.close()
        watch.close()
    assert not errors, errors
    assert second not in claimed, "k's second event was claimed while its first waits for a retry"
    assert first not in claimed
    states = dict(OutboxEvent.objects.filter(key="k").values_list("id", "state"))
    assert states == {first: OutboxState.PENDING, second: OutboxState.PENDING}
