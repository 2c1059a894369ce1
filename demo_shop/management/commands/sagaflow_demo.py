"""Run the demo checkout end to end and print each saga's timeline.

With no services configured it runs on SQLite with an in-memory broker and a
Celery worker inside this process, so it works on a fresh machine.
"""

import logging
import time

from celery.contrib.testing.worker import start_worker
from django.core.management.base import BaseCommand
from django.db import transaction

from demo_shop.celery import app
from demo_shop.sagas import checkout
from sagaflow import sweeper
from sagaflow.models import Saga

SCENARIOS = [
    ("happy path", {"order": 1, "items": ["book"]}),
    ("gateway fails once, retried", {"order": 2, "items": ["pen"], "flaky_gateway": True}),
    ("card declined, compensated", {"order": 3, "items": ["lamp"], "card": "declined"}),
]


class Command(BaseCommand):
    help = "Run the demo checkout saga through a real Celery worker and print its timeline."

    def add_arguments(self, parser):
        parser.add_argument("--timeout", type=float, default=60.0)

    def handle(self, *args, timeout: float, verbosity: int, **options):
        if verbosity < 2:  # the timeline is the output; -v 2 shows the engine's log too
            logging.getLogger("sagaflow").setLevel(logging.WARNING)
        embedded = app.conf.broker_url.startswith("memory://")
        worker = (
            start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING")
            if embedded
            else None
        )
        if worker:
            worker.__enter__()
            self.stdout.write("Embedded broker and in-process worker started.")
        try:
            runs = []
            for title, data in SCENARIOS:
                with transaction.atomic():
                    saga = checkout.start(data, key=f"demo-order-{data['order']}-{time.time()}")
                runs.append((title, saga))
            self._wait([saga for _, saga in runs], timeout)
            for title, saga in runs:
                self._print(title, saga)
        finally:
            if worker:
                worker.__exit__(None, None, None)
        if any(saga.state not in ("completed", "compensated") for _, saga in runs):
            raise SystemExit(1)

    def _wait(self, runs, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for saga in runs:
                saga.refresh_from_db()
            if all(saga.is_terminal for saga in runs):
                return
            sweeper.sweep()
            time.sleep(0.1)
        self.stderr.write("Timed out waiting for the sagas to end.")

    def _print(self, title: str, saga: Saga) -> None:
        self.stdout.write("")
        self.stdout.write(self.style.MIGRATE_HEADING(f"{title}: saga {saga.id} -> {saga.state}"))
        for step in saga.steps.order_by("index"):
            duration = ""
            if step.started_at and step.finished_at:
                duration = f"{(step.finished_at - step.started_at).total_seconds() * 1000:.0f} ms"
            note = step.error.splitlines()[-1] if step.error else step.result
            self.stdout.write(
                f"  {step.index}. {step.name:<18} {step.state:<12} attempts={step.attempts} "
                f"compensations={step.compensation_attempts} {duration:>7}  {note or ''}"
            )
        if saga.error:
            self.stdout.write(f"  error: {saga.error}")
