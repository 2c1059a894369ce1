"""``make demo``: a few hundred checkouts, both styles, with failures injected.

Without services (no ``DATABASE_URL``/``CELERY_BROKER_URL``) it runs on SQLite with
an in-memory broker and a Celery worker inside this process. With both set, it
runs on PostgreSQL and Redis and starts real ``celery worker`` processes. Either
way this process plays celery beat (sweeper, relay, the shop's periodic tasks)
while it waits, prints a progress bar, a summary and the shop's invariants, and
exits 1 if one of them is broken.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.test import Client
from django.test.utils import override_settings

from demo_shop import invariants, orders, seed, tasks, validation
from demo_shop.celery import app
from demo_shop.models import Order, OrderEvent, OrderStatus, Product, ServiceRequest, Style
from demo_shop.shoppers import Owner
from sagaflow.models import SagaStep, StepState
from sagaflow.saga import sweeper

UNDO_DETAILS = ("shipment cancelled", "payment voided or refunded", "stock released")


class Command(BaseCommand):
    help = "Run a few hundred demo checkouts with injected failures and check the invariants."

    def add_arguments(self, parser):
        parser.add_argument("--orders", type=int, default=300)
        parser.add_argument("--timeout", type=float, default=300.0)
        parser.add_argument("--workers", type=int, default=2, help="worker processes (Redis)")
        parser.add_argument("--seed", type=int, default=None, dest="random_seed")
        parser.add_argument("--no-faults", action="store_true")

    def handle(
        self,
        *args,
        orders: int,
        timeout: float,
        workers: int,
        random_seed: int | None,
        no_faults: bool,
        verbosity: int,
        **options,
    ):
        if verbosity < 2:  # the tables are the output; -v 2 shows the engine's log too
            # (the in-process worker reconfigures loggers, so switch levels off globally)
            logging.disable(logging.WARNING)
        rng = random.Random(random_seed)
        embedded = app.conf.broker_url.startswith("memory://")
        runner = "embedded broker, in-process worker" if embedded else f"{workers} worker processes"
        where = f"{connection.vendor}, {runner}"
        self.stdout.write(self.style.MIGRATE_HEADING(f"sagaflow demo shop ({where})"))
        seed.reset()
        if not no_faults:
            seed.arm_demo_faults()
        # Hundreds of confirmation e-mails would bury the tables (in this process).
        quiet_mail = override_settings(
            EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend"
        )
        with quiet_mail, self._workers(embedded, workers):
            started = time.monotonic()
            placed, rejected, via = self._place(orders, rng)
            self._wait(placed, timeout)
            elapsed = time.monotonic() - started
        self._summary(placed, rejected, via, elapsed)
        if not self._invariants():
            raise CommandError("an invariant is broken (see above)")

    # --- workers -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _workers(self, embedded: bool, count: int):
        if embedded:
            from celery.contrib.testing.worker import start_worker

            with start_worker(
                app, pool="solo", perform_ping_check=False, loglevel="CRITICAL", shutdown_timeout=30
            ):
                yield
            return
        processes = []
        log_dir = Path(tempfile.mkdtemp(prefix="sagaflow-demo-"))
        try:
            for i in range(count):
                log = (log_dir / f"worker-{i}.log").open("wb")
                processes.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "celery",
                            "-A",
                            "demo_shop",
                            "worker",
                            "--loglevel=INFO",
                            "--concurrency=2",
                            "--without-gossip",
                            "--without-mingle",
                            "-n",
                            f"demo-{i}-{uuid.uuid4().hex[:6]}@%h",
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        env={
                            **os.environ,
                            "DJANGO_SETTINGS_MODULE": os.environ.get(
                                "DJANGO_SETTINGS_MODULE", "demo_shop.settings"
                            ),
                        },
                    )
                )
            deadline = time.monotonic() + 60
            while not all(
                b"ready." in (log_dir / f"worker-{i}.log").read_bytes() for i in range(count)
            ):
                if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                    raise CommandError(f"the workers did not start; see {log_dir}")
                time.sleep(0.2)
            self.stdout.write(f"{count} worker processes ready (logs in {log_dir})")
            yield
        finally:
            for p in processes:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
            for p in processes:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)

    # --- placing orders --------------------------------------------------------------------

    def _basket(self, rng: random.Random, skus: list[str]) -> list[dict]:
        return [
            {"sku": sku, "quantity": rng.randint(1, 3)}
            for sku in rng.sample(skus, rng.choice([1, 1, 2]))
        ]

    def _place(self, count: int, rng: random.Random):
        """Place ``count`` orders, half in each style, through the HTTP API if it can."""
        client = Client()
        client.get("/api/session")  # an anonymous shopper: the keys and orders are its own
        skus = list(Product.objects.values_list("sku", flat=True))
        placed, rejected, via = [], Counter(), "POST /api/checkout"
        replays = 0
        for i in range(count):
            body = {
                "customer": f"customer{i}@example.com",
                "style": Style.ORCHESTRATED if i % 2 == 0 else Style.CHOREOGRAPHED,
                "items": self._basket(rng, skus),
            }
            order_id = None
            if via.startswith("POST"):
                try:
                    order_id, code, replayed = self._post(client, body, retry=i % 10 == 0)
                    replays += replayed
                    if code:
                        rejected[code] += 1
                except Exception as exc:  # the API cannot run here (e.g. a database it lacks)
                    via = f"orders.place_order (the API is unavailable here: {exc})"[:160]
            if not via.startswith("POST"):
                try:
                    owner = Owner(shopper="make-demo")
                    order_id = orders.place_order(validation.validate(body), owner).pk
                except orders.OutOfStock:
                    rejected["out-of-stock"] += 1
            if order_id is not None:
                placed.append(order_id)
            self._bar("placing ", i + 1, count)
        self.stdout.write("")
        self._replays = replays
        return placed, rejected, via

    def _post(self, client: Client, body: dict, *, retry: bool):
        """POST one checkout; ``retry`` sends it twice with the same key, as a client
        that timed out would. Returns (order id, refusal code, replayed)."""
        key = str(uuid.uuid4())
        response = client.post(
            "/api/checkout", body, content_type="application/json", HTTP_IDEMPOTENCY_KEY=key
        )
        if response.status_code >= 500:
            raise RuntimeError(f"HTTP {response.status_code}")
        if response.status_code != 202:
            return None, response.json().get("code", str(response.status_code)), False
        order_id = response.json()["order"]["id"]
        replayed = False
        if retry:
            again = client.post(
                "/api/checkout", body, content_type="application/json", HTTP_IDEMPOTENCY_KEY=key
            )
            # Counted only if it is a replay *and* byte for byte the first response.
            replayed = (
                again.headers.get("Idempotent-Replayed") == "true"
                and again.content == response.content
            )
        return order_id, None, replayed

    # --- waiting, playing celery beat --------------------------------------------------------

    def _wait(self, placed: list[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_beat = 0.0
        pending = Order.objects.filter(pk__in=placed, status=OrderStatus.PENDING)
        while True:
            left = pending.count()
            self._bar("settling", len(placed) - left, len(placed))
            if not left or time.monotonic() > deadline:
                break
            if time.monotonic() - last_beat > 1.0:
                self._beat()
                last_beat = time.monotonic()
            time.sleep(0.25)
        self._beat()
        self.stdout.write("")

    def _beat(self) -> None:
        sweeper.sweep()
        if connection.vendor == "postgresql":
            from sagaflow.tasks import relay_outbox

            relay_outbox.apply()
        else:
            tasks.deliver_local_events.delay()
        tasks.reconcile()
        tasks.release_expired_holds()

    def _bar(self, label: str, done: int, total: int) -> None:
        width = 40
        filled = width * done // max(total, 1)
        line = f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
        if self.stdout.isatty():
            self.stdout.write(line, ending="")
            self.stdout.flush()
        elif (label, filled // 4) != getattr(self, "_last_bar", None):  # a line per 10 %
            self._last_bar = (label, filled // 4)
            self.stdout.write(line.lstrip("\r"))

    # --- reporting ---------------------------------------------------------------------------

    def _summary(self, placed, rejected, via, elapsed) -> None:
        out = self.stdout.write
        ours = Order.objects.filter(pk__in=placed)
        out("")
        out(
            f"{len(placed)} orders placed via {via}; refused at the door: "
            f"{dict(rejected) or 'none'}; identical replays of retried POSTs: {self._replays}; "
            f"{elapsed:.1f} s"
        )
        out("")
        header = (
            f"{'style':<14}{'orders':>7}{'confirmed':>10}{'cancelled':>10}{'failed':>7}"
            f"{'pending':>8}{'undo steps':>11}{'retries':>8}{'p50 s':>7}{'p95 s':>7}"
        )
        out(header)
        out("-" * len(header))
        style_of = dict(ours.values_list("pk", "style"))
        calls = Counter()
        distinct = defaultdict(set)
        for ref, op, key in ServiceRequest.objects.values_list("order_ref", "operation", "key"):
            order_id = int(ref.removeprefix("order-")) if ref.startswith("order-") else None
            style = style_of.get(order_id)
            calls[style] += 1
            distinct[style].add((op, key))
        for style in Style.values:
            rows = ours.filter(style=style)
            states = Counter(rows.values_list("status", flat=True))
            times = sorted(
                (o.settled_at - o.created_at).total_seconds() for o in rows.exclude(settled_at=None)
            )
            if style == Style.ORCHESTRATED:
                undo = SagaStep.objects.filter(
                    saga_id__in=rows.values("saga_id"), state=StepState.COMPENSATED
                ).count()
            else:
                undo = OrderEvent.objects.filter(order__in=rows, detail__in=UNDO_DETAILS).count()
            retries = calls[style] - len(distinct[style])
            out(
                f"{style:<14}{rows.count():>7}{states['confirmed']:>10}{states['cancelled']:>10}"
                f"{states['failed']:>7}{states['pending']:>8}{undo:>11}{retries:>8}"
                f"{_pct(times, 50):>7}{_pct(times, 95):>7}"
            )
        out("")
        reasons = Counter(ours.filter(status=OrderStatus.CANCELLED).values_list("style", "reason"))
        out(
            "cancelled because: "
            + ", ".join(
                f"{reason} ({style[:5]}.) {n}" for (style, reason), n in sorted(reasons.items())
            )
        )
        faults = Counter(
            ServiceRequest.objects.exclude(
                outcome__in=["ok", "replayed", "voided", "refunded", "cancelled", "tombstone"]
            ).values_list("service", "outcome")
        )
        out(
            "faults injected: "
            + ", ".join(
                f"{service} {outcome} {n}" for (service, outcome), n in sorted(faults.items())
            )
        )
        out(
            "undo steps: orchestrated = saga steps compensated; choreographed = cancel/void/"
            "release handlers run. retries = service calls beyond the first per key."
        )

    def _invariants(self) -> bool:
        self.stdout.write("")
        self.stdout.write(self.style.MIGRATE_HEADING("invariants"))
        ok = True
        for check in invariants.check_all():
            mark = self.style.SUCCESS("PASS") if check.ok else self.style.ERROR("FAIL")
            self.stdout.write(f"  {mark}  {check.name:<68} {check.detail}")
            ok &= check.ok
        return ok


def _pct(values: list[float], pct: int) -> str:
    if not values:
        return "-"
    index = min(len(values) - 1, round(pct / 100 * (len(values) - 1)))
    return f"{values[index]:.2f}"
