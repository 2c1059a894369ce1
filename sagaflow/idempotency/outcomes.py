"""What the key store answers: the shared result types of ``store``'s backends.

``postgresql`` and ``portable`` return these and the decorator branches on them;
they live apart so that neither backend imports the other, nor the store that
picks between them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

IN_FLIGHT = "in_flight"
COMPLETED = "completed"


@dataclass(frozen=True)
class Identity:
    """What makes two keys the same key."""

    scope: str
    method: str
    route: str
    key: str


@dataclass(frozen=True)
class Claimed:
    """We hold the key: run the view, then ``complete`` or ``release``."""

    id: int
    token: uuid.UUID
    attempt: int
    alias: str


@dataclass(frozen=True)
class Reserved:
    """Atomic mode: the key is ours until the transaction ends; nothing written yet.

    ``complete`` writes the completed row in the same transaction; there is
    nothing to ``release`` (a rollback leaves no trace).
    """

    identity: Identity
    fingerprint: str
    attempt: int
    ttl: float
    alias: str
    claimed_at: datetime
    #: No row existed: ``complete`` inserts without the takeover clause.
    fresh: bool


@dataclass(frozen=True)
class Busy:
    """Another transaction is claiming or (atomic mode) running this key now."""


@dataclass(frozen=True)
class Existing:
    """The key is taken: in flight with a live lease, or completed."""

    state: str
    fingerprint: str
    status: int | None
    headers: list[list[str]]
    body: bytes | None


@dataclass(frozen=True)
class Vanished:
    """The row was deleted between the claim attempt and the read; try again."""


ClaimOutcome = Claimed | Reserved | Busy | Existing | Vanished
