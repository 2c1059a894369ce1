"""Helpers for the demo shop's tests: a fresh shop, checkouts over HTTP, settling."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import gunicorn
from django.test import Client

from demo_shop import invariants, seed
from demo_shop.models import Charge, Order, OrderStatus, Product, Shipment, StockHold
from sagaflow.models import IdempotencyKey, IdempotencyKeyState, OutboxEvent, Saga
from sagaflow.outbox import relay
from sagaflow.saga import sweeper
from tests.processes import ROOT, Process, child_env
from tests.waiting import wait_until

SHOP_DB = ["default", "services"]


def fresh_shop(stock: int = 100, sku: str = "WIDGET", price: int = 500):
    """An empty shop with one product (plus the demo catalogue's, restocked)."""
    products = seed.reset([(sku, "Widget", price, stock), ("GADGET", "Gadget", 900, 100)])
    return products[0]


def shopper() -> Client:
    """A client with an anonymous shopper session, as a visit to the shop gives one."""
    client = Client()
    response = client.get("/api/session")
    assert response.status_code == 200, response.content
    return client


def post_checkout(
    body, *, key: str | bool | None = None, client: Client | None = None, **extra: str
):
    """POST a checkout as ``client`` (a new shopper by default), with a fresh key unless
    ``key`` is given (``False``: no key at all); ``extra`` as the test client takes it."""
    client = client or shopper()
    if key is not False:
        extra["HTTP_IDEMPOTENCY_KEY"] = key or str(uuid.uuid4())
    return client.post("/api/checkout", body, content_type="application/json", **extra)


def order_body(customer: str, style: str, quantity: int = 1, sku: str = "WIDGET") -> dict:
    return {"customer": customer, "style": style, "items": [{"sku": sku, "quantity": quantity}]}


def beat() -> None:
    """celery beat's sagaflow part: sweep and relay. Not the shop's reconcile task, so
    that every compensation the tests see was made by the checkout itself."""
    sweeper.sweep()
    relay.drain()


def settle(order_ids, timeout: float = 60.0) -> list[Order]:
    ids = list(order_ids)
    pending = Order.objects.filter(pk__in=ids, status=OrderStatus.PENDING)
    wait_until(
        lambda: not pending.exists(),
        timeout=timeout,
        every=0.2,
        tick=beat,
        what=f"{len(ids)} orders to settle",
    )
    return list(Order.objects.filter(pk__in=ids).order_by("pk"))


def assert_invariants() -> None:
    broken = [c for c in invariants.check_all() if not c.ok]
    assert not broken, broken


def assert_problem(response, status: int, code: str) -> dict:
    """``response`` is an RFC 9457 problem with this status and ``code``; its body."""
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"] == "application/problem+json", response["Content-Type"]
    body = response.json()
    assert (body["status"], body["code"]) == (status, code), body
    return body


def assert_nothing_written(*, stored_refusal: int | None = None) -> None:
    """No order, saga, event, hold, charge or shipment exists and no stock moved.

    Idempotency keys: none, or (``stored_refusal``) only completed keys holding that
    refusal, which sagaflow stores so that a retry gets the same answer.
    """
    assert Order.objects.count() == 0
    assert Saga.objects.filter(name="shop.checkout").count() == 0
    assert OutboxEvent.objects.count() == 0
    assert StockHold.objects.count() == 0
    assert Charge.objects.count() == 0
    assert Shipment.objects.count() == 0
    assert [p.sku for p in Product.objects.all() if p.on_hand != p.initial_stock] == []
    keys = set(IdempotencyKey.objects.values_list("state", "response_status"))
    allowed = set() if stored_refusal is None else {(IdempotencyKeyState.COMPLETED, stored_refusal)}
    assert keys <= allowed, keys


class WebServer(Process):
    """gunicorn serving the demo on a free loopback port, which gunicorn picks itself.

    The environment is the test process's, pointed at the test database, with
    ``env`` on top; names in ``unset`` are removed (to see what a default does).
    """

    def __init__(self, *, env: dict[str, str] | None = None, unset: tuple[str, ...] = ()):
        fd, path = tempfile.mkstemp(prefix="sagaflow-web-", suffix=".log")
        os.close(fd)
        self.log = Path(path)
        environment = child_env(**(env or {}))
        for name in unset:
            environment.pop(name, None)
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "demo_shop.wsgi:application",
            "--bind",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--threads",
            "4",
            "--timeout",
            "30",
        ]
        if gunicorn.version_info >= (25, 1):  # else every gunicorn here shares one socket
            command.append("--no-control-socket")
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.url: str = wait_until(self._listening, timeout=60, what="gunicorn to listen")

    def _listening(self) -> str | None:
        self.exited_early("gunicorn")
        found = re.search(rb"Listening at: (http://127\.0\.0\.1:\d+)", self.log.read_bytes())
        return found.group(1).decode() if found else None

    def text(self) -> str:
        """Everything the server wrote so far (``output()`` is its tail)."""
        return self.log.read_text(errors="replace")

    def __enter__(self) -> WebServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
