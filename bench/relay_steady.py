"""Steady load through the long-lived relay: the latency and pinned-snapshot figures.

Writers commit events at a given rate for a given time while ``manage.py
sagaflow_relay`` (a child process, woken by ``NOTIFY``: the path
``OUTBOX_KICK_ON_COMMIT = False`` deployments use) relays them, and a thread
``BRPOP``s the queue and stamps each event's arrival. Optionally another session
holds a ``REPEATABLE READ`` snapshot open for the whole load, and the time to drain
what piled up is measured from its release.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

from bench.common import ROOT
from bench.relay_backlog import QUEUE, clear_queue, fill, redis_client
from tests.waiting import WaitTimeout, wait_until


class Consumer(threading.Thread):
    """Pops relayed batches off the queue and stamps each event's arrival."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.times: list[float] = []
        #: (writer's transaction, event in it) -> arrival time
        self.latest: dict[tuple[int, int], float] = {}
        self.count = 0
        self.stop = threading.Event()

    def run(self) -> None:
        client = redis_client()
        while not self.stop.is_set():
            got = client.brpop([QUEUE], timeout=0.2)
            if not got:
                continue
            now = time.monotonic()
            envelope = json.loads(got[1])
            body = envelope["body"]
            if envelope.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            events = json.loads(body)[0][0]
            for event in events:
                self.latest[(event["payload"]["w"], event["payload"]["i"])] = now
                self.times.append(now)
            self.count += len(events)


def start_relay_process() -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), DJANGO_SETTINGS_MODULE="bench.relay_settings")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "sagaflow_relay"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = process.stdout.readline()
    if "ready" not in line:
        process.kill()
        raise RuntimeError(f"manage.py sagaflow_relay did not start: {line!r}")
    return process


def steady(rate: float, seconds: float, *, pin: bool = False, tick: float = 0.005) -> dict:
    """Writers commit ``rate`` events/s for ``seconds`` (one transaction per ``tick``)
    with the LISTEN relay running; optionally with a pinned REPEATABLE READ snapshot.

    Returns per-event latencies (commit to arrival in Redis), arrival times, the
    measurement window and, when pinned, the drain time after the release.
    """
    import psycopg
    from django.db import connection, transaction

    from sagaflow.outbox import store as outbox_store

    fill(0)
    clear_queue()
    relay_process = start_relay_process()
    consumer = Consumer()
    consumer.start()
    per_tx = max(1, round(rate * tick))
    committed: dict[int, float] = {}
    pinned = None
    written = 0
    try:
        if pin:
            db = connection.settings_dict
            pinned = psycopg.connect(
                host=db["HOST"] or "localhost",
                port=db["PORT"] or 5432,
                user=db["USER"] or "postgres",
                password=db["PASSWORD"] or None,
                dbname=db["NAME"],
            )
            pinned.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            pinned.execute("SELECT 1 FROM sagaflow_outboxevent LIMIT 1").fetchall()
        started = time.monotonic()
        n = 0
        while True:
            due = started + n * tick
            now = time.monotonic()
            if due - now > 0:
                time.sleep(due - now)
            if time.monotonic() - started >= seconds:
                break
            with transaction.atomic():
                outbox_store.insert_events(
                    ("order.event", f"order-{n}-{i // 4}", {"w": n, "i": i}) for i in range(per_tx)
                )
            committed[n] = time.monotonic()
            written += per_tx
            n += 1
        ended = time.monotonic()
        if pinned is not None:
            pinned.rollback()
            pinned.close()
            pinned = None
        released = time.monotonic()
        # Not drained in 120 s is a figure (far over its 30 s goal), not a crash.
        with contextlib.suppress(WaitTimeout):
            wait_until(
                lambda: consumer.count >= written,
                timeout=120,
                every=0.01,
                what=f"the {written:,} events written to reach the queue",
            )
        drained = time.monotonic() - released
    finally:
        if pinned is not None:
            pinned.close()
        consumer.stop.set()
        relay_process.send_signal(signal.SIGTERM)
        try:
            relay_process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            relay_process.kill()
        consumer.join(timeout=5)
        clear_queue()
    latencies = [(arrived - committed[w]) * 1000 for (w, _i), arrived in consumer.latest.items()]
    return {
        "latencies": latencies,
        "times": consumer.times,
        "window": (started, ended),
        "written": written,
        "arrived": consumer.count,
        "drain": drained,
    }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def window_rates(result: dict, parts: int) -> list[float]:
    start, end = result["window"]
    size = (end - start) / parts
    return [
        sum(1 for t in result["times"] if start + k * size <= t < start + (k + 1) * size) / size
        for k in range(parts)
    ]
