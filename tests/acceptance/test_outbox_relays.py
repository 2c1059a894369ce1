"""Relay processes racing each other, crashing and outliving a broker outage.

Every relay here is a real ``manage.py sagaflow_relay`` process on the test
database and a real Redis; the test reads what reached the broker straight from
the queue (the consumer side), and reports losses and duplicates separately.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter, defaultdict

import pytest
from django.db import transaction
from django.test import override_settings

import sagaflow
from sagaflow.models import OutboxEvent, OutboxState
from sagaflow.outbox import store as outbox_store
from tests.outboxapp.broker import BrokerQueue
from tests.processes import ROOT, Relay, child_env
from tests.services import PrivateRedis
from tests.waiting import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

PARENT = {"OUTBOX_KICK_ON_COMMIT": False}


@pytest.fixture
def relays():
    started: list[Relay] = []

    def start(n: int = 1, **env: str) -> list[Relay]:
        new = [Relay(env=env) for _ in range(n)]
        started.extend(new)
        for relay in new:
            wait_until(relay.ready, timeout=60, what="the relay to start")
        return new

    yield start
    for relay in started:
        relay.close()


@pytest.fixture
def queue(settings):
    q = BrokerQueue(settings.CELERY_BROKER_URL)
    yield q
    q.close()


def pending() -> int:
    return OutboxEvent.objects.filter(state=OutboxState.PENDING).count()


def received(queue: BrokerQueue) -> list[dict]:
    return [event for batch in queue.read() for event in batch]


def losses_and_duplicates(ids: list[int], events: list[dict]) -> tuple[set[int], int]:
    counts = Counter(e["id"] for e in events)
    return set(ids) - set(counts), sum(c - 1 for c in counts.values())


def test_four_relays_publish_20000_events_exactly_once(relays, queue):
    started = relays(4, OUTBOX_TEST_QUEUE=queue.name)
    with override_settings(SAGAFLOW=PARENT), transaction.atomic():
        # Four events per order key, like an order's life; committed together, so
        # the NOTIFY wakes the four relays at the same moment.
        outbox_store.insert_events(
            ("order.event", f"order-{i // 4}", {"n": i}) for i in range(20_000)
        )
    t0 = time.monotonic()
    wait_until(lambda: pending() == 0, timeout=90, every=0.2, what="the outbox to drain")
    elapsed = time.monotonic() - t0
    stats = [relay.stop() for relay in started]

    ids = list(OutboxEvent.objects.values_list("id", flat=True))
    lost, duplicates = losses_and_duplicates(ids, received(queue))
    per_relay = [s["published"] for s in stats]
    print(f"20000 events by 4 relays in {elapsed:.2f}s; per relay {per_relay}")
    assert len(ids) == 20_000
    assert lost == set(), f"{len(lost)} events lost"
    assert duplicates == 0, f"{duplicates} events published twice by live relays"
    assert sum(per_relay) == 20_000
    assert sum(1 for n in per_relay if n) >= 2, f"the relays did not race: {per_relay}"


def test_relay_killed_after_publish_before_mark_delivers_again(relays, queue, tmp_path):
    (doomed,) = relays(
        1,
        OUTBOX_TEST_QUEUE=queue.name,
        SAGAFLOW_FAULTS="relay.after_publish=kill",
        SAGAFLOW_FAULTS_ONCE_DIR=str(tmp_path),
    )
    with override_settings(SAGAFLOW=PARENT), transaction.atomic():
        ids = [sagaflow.publish("order.event", {"n": i}, key=f"k{i % 5}") for i in range(50)]
    wait_until(lambda: doomed.process.poll() is not None, what="the relay to be killed")
    assert doomed.process.returncode == -9  # a real SIGKILL, mid-transaction
    assert (tmp_path / "relay.after_publish.fired").exists()
    assert pending() == 50  # its transaction rolled back: nothing marked
    relays(1, OUTBOX_TEST_QUEUE=queue.name)
    wait_until(lambda: pending() == 0, what="the survivor to drain")

    lost, duplicates = losses_and_duplicates(ids, received(queue))
    assert lost == set()
    assert duplicates == 50  # the killed relay's batch, delivered again


def test_redis_stopped_for_20s_writes_succeed_and_backlog_drains(relays):
    redis_server = PrivateRedis()
    try:
        queue = BrokerQueue(redis_server.url)
        # Celery reads CELERY_BROKER_URL from the environment before settings.
        env = {"OUTBOX_TEST_QUEUE": queue.name, "CELERY_BROKER_URL": redis_server.url}
        relays(2, **env)
        redis_server.stop()
        stopped = time.monotonic()
        # A "web" process writes while the broker is down, kicking the relay on
        # commit as in production: every write must commit, and quickly.
        writer = subprocess.run(
            [sys.executable, "-c", WRITER, "40"],
            cwd=ROOT,
            env=child_env(
                DJANGO_SETTINGS_MODULE="tests.outboxapp.relay_settings", OUTBOX_TEST_KICK="1", **env
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert writer.returncode == 0, writer.stderr[-3000:]
        slowest = float(writer.stdout.split()[-1])
        assert slowest < 6.0, f"a write waited {slowest:.1f}s for the broker"
        assert pending() == 40, list(OutboxEvent.objects.values("state", "attempts", "last_error"))[
            :3
        ]
        assert OutboxEvent.objects.filter(attempts__gt=0).exists()  # the relays tried
        wait_until(lambda: time.monotonic() - stopped >= 20, every=0.5, what="20 s of outage")
        assert pending() == 40 and not OutboxEvent.objects.filter(state=OutboxState.DEAD).exists()
        redis_server.start()
        wait_until(lambda: pending() == 0, timeout=60, what="the backlog to drain")
        ids = list(OutboxEvent.objects.values_list("id", flat=True))
        lost, duplicates = losses_and_duplicates(ids, received(queue))
        assert lost == set()
        print(f"after the outage: {len(ids)} delivered, {duplicates} duplicates")
        queue.close()
    finally:
        redis_server.close()


WRITER = """
import sys, time, django
django.setup()
from django.db import transaction
import sagaflow
slowest = 0.0
for i in range(int(sys.argv[1])):
    t = time.monotonic()
    with transaction.atomic():
        sagaflow.publish("order.event", {"n": i}, key=f"k{i % 4}")
    slowest = max(slowest, time.monotonic() - t)
print(slowest)
"""


def test_per_key_order_holds_with_four_relays_and_random_publish_failures(relays, queue):
    started = relays(
        4,
        OUTBOX_TEST_QUEUE=queue.name,
        OUTBOX_TEST_PUBLISHER="tests.outboxapp.publishers.FlakyPublisher",
        OUTBOX_TEST_FAIL_RATE="0.3",
        OUTBOX_TEST_BATCH_SIZE="40",
    )
    with override_settings(SAGAFLOW=PARENT):
        for chunk in range(10):  # ten commits, relays already busy with earlier ones
            with transaction.atomic():
                for i in range(200):
                    n = chunk * 200 + i
                    sagaflow.publish("order.event", {"n": n}, key=f"k{n % 25}" if n % 10 else None)
    wait_until(lambda: pending() == 0, timeout=90, what="the outbox to drain")
    stats = [relay.stop() for relay in started]
    events = received(queue)
    ids = list(OutboxEvent.objects.values_list("id", flat=True))
    lost, duplicates = losses_and_duplicates(ids, events)
    assert lost == set()
    assert sum(s["failed"] for s in stats) > 0, "no publish failed: the test proved nothing"
    first_seen: dict[str, list[int]] = defaultdict(list)
    seen: set[int] = set()
    for event in events:
        if event["key"] is not None and event["id"] not in seen:
            first_seen[event["key"]].append(event["id"])
        seen.add(event["id"])
    assert len(first_seen) == 25
    for key, order in first_seen.items():
        assert order == sorted(order), f"key {key} published out of order: {order}"
    print(f"failures {sum(s['failed'] for s in stats)}, duplicates {duplicates}")


def test_relay_survives_losing_its_database_session(relays, queue):
    """A PostgreSQL restart ends every session; the long-lived relay must reconnect."""
    from django.db import connection

    (relay,) = relays(1, OUTBOX_TEST_QUEUE=queue.name)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        (terminated,) = cursor.fetchone()
    assert terminated >= 1
    with override_settings(SAGAFLOW=PARENT), transaction.atomic():
        ids = [sagaflow.publish("order.event", {"n": i}) for i in range(20)]
    wait_until(lambda: pending() == 0, timeout=60, what=f"the relay to reconnect\n{relay.output()}")
    assert relay.process.poll() is None, relay.output()  # the same process, still running
    lost, _ = losses_and_duplicates(ids, received(queue))
    assert lost == set()


def test_three_relays_share_50_hot_keys_and_keep_each_keys_order(relays, queue):
    """Events of different keys are relayed in parallel: with 50 keys in a 3,000-event
    backlog no relay may own every key of its window while the others idle."""
    started = relays(3, OUTBOX_TEST_QUEUE=queue.name, OUTBOX_TEST_BATCH_SIZE="100")
    with override_settings(SAGAFLOW=PARENT), transaction.atomic():
        outbox_store.insert_events(("order.event", f"hot-{i % 50}", {"n": i}) for i in range(3000))
    wait_until(lambda: pending() == 0, timeout=90, every=0.1, what="the outbox to drain")
    stats = [relay.stop() for relay in started]

    per_relay = [s["published"] for s in stats]
    events = received(queue)
    ids = list(OutboxEvent.objects.values_list("id", flat=True))
    lost, duplicates = losses_and_duplicates(ids, events)
    print(f"3000 events, 50 keys, 3 relays: per relay {per_relay}")
    assert lost == set() and duplicates == 0
    assert sum(per_relay) == 3000
    assert min(per_relay) >= 300, f"a relay was left out of the hot keys: {per_relay}"
    order: dict[str, list[int]] = defaultdict(list)
    for event in events:
        order[event["key"]].append(event["id"])
    assert len(order) == 50
    for key, published in order.items():
        assert published == sorted(published), f"key {key} published out of order"
