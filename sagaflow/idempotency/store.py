"""The key store: every read and write of ``IdempotencyKey`` goes through here.

The policy (``decorator``) decides; the store reads and writes, and picks the
backend for the database at hand: ``postgresql`` (the statements production
uses: one ``INSERT … ON CONFLICT`` per claim and a no-wait advisory lock) or
``portable`` (the same rules through the ORM, for SQLite in the demo). Both
answer with the types of ``outcomes``, re-exported here.

Two ways to take a key, one per mode of the policy:

- ``reserve`` (atomic mode: the view runs in a transaction): nothing is written
  before the view runs; ``complete`` writes the completed row in that same
  transaction, so the key commits, or rolls back, with the view's writes.
- ``claim`` (claim-first mode): an in-flight row with a lease and a fencing token,
  committed before the view runs; ``complete`` stores the response on it and
  ``release`` deletes it.

``lookup`` reads a key without locking or writing: a replay is one indexed read.
"""

from __future__ import annotations

from django.db import connections, router, transaction

from ..exceptions import ConfigurationError
from ..models import IdempotencyKey
from . import portable, postgresql
from .outcomes import (
    COMPLETED,
    IN_FLIGHT,
    Busy,
    Claimed,
    ClaimOutcome,
    Existing,
    Identity,
    Reserved,
    Vanished,
)

__all__ = [
    "COMPLETED",
    "IN_FLIGHT",
    "Busy",
    "ClaimOutcome",
    "Claimed",
    "Existing",
    "Identity",
    "Reserved",
    "Vanished",
    "alias",
    "claim",
    "complete",
    "delete_expired",
    "lookup",
    "release",
    "reserve",
]


def alias() -> str:
    """The database the keys live on (the router's choice for ``IdempotencyKey``)."""
    return router.db_for_write(IdempotencyKey)


def _is_postgresql(using: str) -> bool:
    """Other databases (SQLite for the demo) take ``portable``'s path."""
    return connections[using].vendor == "postgresql"


def lookup(identity: Identity, *, using: str) -> Existing | None:
    """The key's row if it answers by itself (completed, or in flight under a live
    lease), else None; no lock, no write, no transaction needed.

    Only a shortcut: on databases other than PostgreSQL it answers None and the
    claim decides.
    """
    if not _is_postgresql(using):
        return None
    return postgresql.lookup(identity, using=using)


def reserve(
    identity: Identity, fingerprint: str, *, lease: float, ttl: float, using: str
) -> ClaimOutcome:
    """Atomic mode: take ``identity`` until the caller's transaction ends.

    Nothing is written until ``complete``. On databases other than PostgreSQL
    this is ``claim`` inside the caller's transaction.
    """
    if not connections[using].in_atomic_block:
        raise ConfigurationError(
            "sagaflow.idempotency.store.reserve() must run inside transaction.atomic()."
        )
    if not _is_postgresql(using):
        return portable.claim(identity, fingerprint, lease=lease, ttl=ttl, using=using)
    return postgresql.reserve(identity, fingerprint, ttl=ttl, using=using)


def claim(
    identity: Identity, fingerprint: str, *, lease: float, ttl: float, using: str
) -> ClaimOutcome:
    """Write an in-flight claim on ``identity`` (claim-first mode).

    Inside ``transaction.atomic(using=...)`` the claim lasts until that transaction
    ends; outside one, it is committed at once, which is what claim-first mode wants.
    """
    if not _is_postgresql(using):
        with transaction.atomic(using=using):
            return portable.claim(identity, fingerprint, lease=lease, ttl=ttl, using=using)
    return postgresql.claim(identity, fingerprint, lease=lease, ttl=ttl, using=using)


def complete(
    claimed: Claimed | Reserved, *, status: int, headers: list[list[str]], body: bytes | None
) -> bool:
    """Store the response; False if our claim was taken over meanwhile (fenced), or
    (reserved) the row changed since ``reserve`` read it."""
    if isinstance(claimed, Reserved) or _is_postgresql(claimed.alias):
        return postgresql.complete(claimed, status=status, headers=headers, body=body)
    return portable.complete(claimed, status=status, headers=headers, body=body)


def release(claimed: Claimed | Reserved) -> bool:
    """Forget the claim so the client may retry the key; False if no longer ours."""
    if isinstance(claimed, Reserved):
        return True  # nothing was written; the lock goes with the transaction
    if not _is_postgresql(claimed.alias):
        return portable.release(claimed)
    return postgresql.release(claimed)


def delete_expired(batch_size: int, using: str | None = None) -> int:
    """Delete expired keys in batches of ``batch_size``; returns how many.

    A key still held under a live lease is never deleted, even past its expiry.
    An in-flight key whose lease lapsed *and* which expired is deleted: its
    holder is gone and the claim would hand the row to any new request anyway.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigurationError(
            f"SAGAFLOW['JANITOR_BATCH_SIZE'] is {batch_size!r}; it must be a positive int."
        )
    using = using or alias()
    if not _is_postgresql(using):
        return portable.delete_expired(batch_size, using)
    return postgresql.delete_expired(batch_size, using)
