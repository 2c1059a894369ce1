"""The relays sagaflow's is compared with, draining the same backlog.

A naive relay that sends one Celery message per row and then deletes the batch
(django-celery-outbox's shape, one broker round trip a row), and django-celery-outbox's
own relay, run by ``bench/relay_dco.py`` in a child process on the same database and
broker (it needs its own settings and app).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bench.common import ROOT
from bench.relay_backlog import BATCH, QUEUE, drain

NAIVE_CLAIM = """
SELECT id, topic, key, payload::text FROM sagaflow_outboxevent
WHERE state = 'pending' AND available_at <= now()
ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED
"""


def naive_rate() -> float:
    """SKIP LOCKED claim, one ``send_task`` per row, delete: one broker round trip a row."""
    from celery import current_app
    from django.db import connection, transaction

    def step() -> int:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(NAIVE_CLAIM, [BATCH])
            rows = cursor.fetchall()
            for _id, topic, key, payload in rows:
                current_app.send_task(
                    "bench.naive", args=[topic, key, json.loads(payload)], queue=QUEUE
                )
            cursor.execute(
                "DELETE FROM sagaflow_outboxevent WHERE id = ANY(%s)", [[r[0] for r in rows]]
            )
            return len(rows)

    return drain(step)


def dco_rates(rows: int, runs: int) -> tuple[list[float], str]:
    """django-celery-outbox's relay in a child process: (rates, error)."""
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        DJANGO_SETTINGS_MODULE="bench.relay_settings",
        BENCH_RELAY_DCO="1",
    )
    try:
        done = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "relay_dco.py"), str(rows), str(runs)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    except subprocess.TimeoutExpired:
        return [], "django-celery-outbox's relay did not finish within 180 s"
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return [], f"django-celery-outbox could not run: {tail[0]}"
    result = json.loads(lines[-1])
    return result.get("rates", []), result.get("error", "")
