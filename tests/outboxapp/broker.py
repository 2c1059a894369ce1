"""The broker side of outbox tests: read what relays put on a queue, and a
private Redis server a test may stop and start (never the shared one)."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import redis


class BrokerQueue:
    """A Celery queue of the test's own on Redis, read without a worker.

    Kombu's Redis transport LPUSHes each message and workers BRPOP, so the list
    read from its tail is the order messages were published in.
    """

    def __init__(self, url: str, name: str | None = None) -> None:
        self.client = redis.Redis.from_url(url)
        self.name = name or f"outbox-test-{uuid.uuid4().hex[:8]}"

    def read(self) -> list[list[dict]]:
        """Every ``deliver_events`` batch on the queue, oldest first."""
        raw = self.client.lrange(self.name, 0, -1)
        return [self._events(item) for item in reversed(raw)]

    def length(self) -> int:
        return self.client.llen(self.name)

    @staticmethod
    def _events(item: bytes) -> list[dict]:
        message = json.loads(item)
        body = message["body"]
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args, _kwargs, _embed = json.loads(body)
        return args[0]

    def close(self) -> None:
        self.client.delete(self.name)
        self.client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A throw-away ``redis-server`` (no persistence) on a free port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sagaflow-redis-"))
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=1).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise AssertionError("private redis-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
