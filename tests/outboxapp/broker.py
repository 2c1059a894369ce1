"""The broker side of outbox tests: read what relays put on a queue. A private
Redis server a test may stop and start is ``tests.services.PrivateRedis``."""

from __future__ import annotations

import base64
import json
import uuid

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
