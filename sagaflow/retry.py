"""Retry policy: how many tries a step gets and how long to wait between them."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .exceptions import DefinitionError


@dataclass(frozen=True)
class Retry:
    """At most ``attempts`` tries in all, the first included.

    The wait before try k+1 is ``backoff * 2**(k-1)`` seconds, capped at
    ``max_backoff``, with "equal jitter": a random value between half of it and
    all of it. Half is kept so that the bound stays meaningful to the caller, and
    the other half is random so that many sagas failing together do not retry in
    lockstep against a recovering service.
    """

    attempts: int = 3
    backoff: float = 1.0
    max_backoff: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or isinstance(self.attempts, bool):
            raise DefinitionError(f"Retry(attempts=...) must be an int, got {self.attempts!r}.")
        if self.attempts < 1:
            raise DefinitionError(
                f"Retry(attempts={self.attempts}) must be at least 1 (the first try counts)."
            )
        for name in ("backoff", "max_backoff"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise DefinitionError(f"Retry({name}={value!r}) must be a number of seconds >= 0.")
        if self.max_backoff < self.backoff:
            raise DefinitionError(
                f"Retry(max_backoff={self.max_backoff}) is smaller than "
                f"backoff={self.backoff}; make max_backoff >= backoff."
            )

    def ceiling(self, attempt: int) -> float:
        """Longest wait after failed try ``attempt`` (1-based), before jitter."""
        exponent = min(attempt - 1, 62)  # 2**62 is already far past any cap
        return float(min(self.backoff * (2**exponent), self.max_backoff))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed try ``attempt`` before the next one."""
        ceiling = self.ceiling(attempt)
        return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)

    def exhausted(self, attempts_made: int) -> bool:
        return attempts_made >= self.attempts
