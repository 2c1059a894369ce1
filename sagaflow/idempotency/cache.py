"""An optional cache of completed responses, so that a replay need not read the database.

A completed key's response never changes while the key lives, so a copy may be
served again. Off by default: ``SAGAFLOW["IDEMPOTENCY_REPLAY_CACHE"]`` names a
cache in ``CACHES`` (Redis, shared by every process, or per-process memory). A copy
lives ``IDEMPOTENCY_REPLAY_CACHE_SECONDS`` (30 s) from the database read that
found it, and is never refreshed from itself: for that long, at most, a replay may
still be served after its key expired or an operator deleted it. Only completed
responses are cached; 409 (in flight) and claims always ask the database.
"""

from __future__ import annotations

import hashlib

from django.core.cache import caches

from ..conf import conf
from .outcomes import COMPLETED, Existing, Identity


def _key(identity: Identity, using: str) -> str | None:
    alias = conf.IDEMPOTENCY_REPLAY_CACHE
    if not alias:
        return None
    raw = "\x1f".join((using, identity.scope, identity.method, identity.route, identity.key))
    return "sagaflow:idempotency:" + hashlib.sha256(raw.encode()).hexdigest()


def get(identity: Identity, using: str) -> Existing | None:
    key = _key(identity, using)
    if key is None:
        return None
    found = caches[conf.IDEMPOTENCY_REPLAY_CACHE].get(key)
    if found is None:
        return None
    fingerprint, status, headers, body = found
    return Existing(COMPLETED, fingerprint, status, headers, body)


def put(identity: Identity, using: str, existing: Existing) -> None:
    """Keep a completed response that was just read from the database."""
    key = _key(identity, using)
    if key is None or existing.body is None or existing.status is None:
        return
    value = (existing.fingerprint, existing.status, existing.headers, existing.body)
    caches[conf.IDEMPOTENCY_REPLAY_CACHE].set(
        key, value, timeout=float(conf.IDEMPOTENCY_REPLAY_CACHE_SECONDS)
    )
