"""What a chaos run sees while it runs: its timestamped log, and a sampler that reads
the shop's progress and the outbox backlog once a second (the plot's curves, and the
drain condition)."""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg


class Log:
    """Prints each line with its wall-clock time and seconds since the start, and
    appends it to ``path`` if given; callable from every thread."""

    def __init__(self, path: Path | None) -> None:
        self.t0 = time.time()
        self.file = path.open("a") if path else None
        self.lock = threading.Lock()

    def __call__(self, message: str) -> None:
        now = time.time()
        stamp = datetime.fromtimestamp(now, UTC).strftime("%H:%M:%S.%f")[:-3]
        line = f"[{stamp} +{now - self.t0:7.1f}s] {message}"
        with self.lock:
            print(line, flush=True)
            if self.file:
                self.file.write(line + "\n")
                self.file.flush()


class Sampler(threading.Thread):
    """Once a second: settled and pending orders, outbox backlog, live sagas."""

    SQL = """
        SELECT (SELECT count(*) FROM demo_shop_order WHERE status <> 'pending'),
               (SELECT count(*) FROM demo_shop_order WHERE status = 'pending'),
               (SELECT count(*) FROM sagaflow_outboxevent WHERE state = 'pending'),
               (SELECT count(*) FROM sagaflow_saga
                 WHERE state IN ('pending', 'running', 'compensating')),
               (SELECT count(*) FROM sagaflow_inboxmessage WHERE state = 'failed'),
               (SELECT count(*) FROM demo_shop_order o WHERE o.status = 'cancelled' AND (
                    EXISTS (SELECT 1 FROM demo_shop_charge c WHERE c.order_ref = 'order-' || o.id
                            AND c.state IN ('authorised', 'captured'))
                    OR EXISTS (SELECT 1 FROM demo_shop_shipment s
                               WHERE s.order_ref = 'order-' || o.id AND s.state = 'scheduled')
                    OR EXISTS (SELECT 1 FROM demo_shop_stockhold h
                               WHERE h.order_id = o.id AND h.state = 'held')))
    """

    def __init__(self, dsn: str) -> None:
        super().__init__(name="sampler", daemon=True)
        self.dsn = dsn
        self.samples: list[dict] = []
        self.stopping = threading.Event()
        self.conn = None

    def read(self) -> dict:
        sample: dict = {"t": time.time(), "settled": None}
        try:
            if self.conn is None or self.conn.closed:
                self.conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=2)
            row = self.conn.execute(self.SQL).fetchone()
            keys = (
                "settled",
                "pending_orders",
                "outbox_pending",
                "live_sagas",
                "inbox_failed",
                "cancelled_not_given_back",
            )
            sample.update(dict(zip(keys, row, strict=True)))
        except psycopg.Error:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None
        return sample

    def run(self) -> None:
        while not self.stopping.wait(1.0):
            self.samples.append(self.read())

    def last(self) -> dict:
        return self.samples[-1] if self.samples else {"settled": None}

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
        with contextlib.suppress(Exception):
            self.conn.close()
