"""The world outside the engine: what the step functions did, and the workers that run them.

The step functions keep their own log (``Ledger``): every call, with the attempt the
engine gave it, what it was told to do and whether it acted. That log is the truth the
model checks the engine's rows against; the engine never sees it.

A paused ``Worker`` is a delivery running in its own thread that stops inside the step
function, as a slow provider call does: its attempt is claimed, its action not yet
done. The main thread goes on with other rules meanwhile, then resumes it (it acts and
records) or kills it (a worker lost, or stopped by its time limit).
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection, transaction

from sagaflow.exceptions import FaultInjected
from sagaflow.saga import engine

FORWARD, COMPENSATE = "forward", "compensate"

#: What a rule may tell a step function to do. ``act_raise`` acts, then raises (a charge
#: that timed out after the money moved); ``nonjson`` acts, then returns a ``Decimal``;
#: ``nul`` acts, then returns a string with a NUL character.
OUTCOMES = ("ok", "raise", "act_raise", "abort", "nonjson", "nul")
ACTING = frozenset({"ok", "act_raise", "nonjson", "nul"})
RETURNING = frozenset({"ok", "nonjson", "nul"})

#: How long the main thread waits for a worker thread to get somewhere.
WORKER_WAIT = 30.0

_local = threading.local()


def current_worker() -> Worker | None:
    return getattr(_local, "worker", None)


@dataclass
class Call:
    """One invocation of a step or compensation function."""

    seq: int
    index: int
    phase: str
    attempt: int
    epoch: int
    kind: str  # what it did: one of OUTCOMES, after the contract's adjustments
    paused: bool  # run by a paused worker
    #: It returned normally and was not cut short by a crash before its record.
    settled: bool = False


@dataclass
class Act:
    """An effect in the outside world (a charge, a refund) by one attempt."""

    seq: int
    index: int
    phase: str
    attempt: int
    epoch: int
    kind: str


class StepFailed(RuntimeError):
    """What a step function raises when a rule tells it to fail."""


@dataclass
class Ledger:
    calls: list[Call] = field(default_factory=list)
    acts: list[Act] = field(default_factory=list)
    _seq: Any = field(default_factory=itertools.count)

    def next_seq(self) -> int:
        return next(self._seq)

    def act(self, call: Call, *, atomic: bool) -> None:
        """Record ``call``'s effect; an atomic step's only if its transaction commits."""

        def record() -> None:
            self.acts.append(
                Act(self.next_seq(), call.index, call.phase, call.attempt, call.epoch, call.kind)
            )

        if atomic:
            transaction.on_commit(record)  # dropped with a rolled-back savepoint
        else:
            record()

    def acts_of(self, index: int, phase: str = FORWARD) -> list[Act]:
        return [a for a in self.acts if a.index == index and a.phase == phase]

    def calls_of(self, index: int, phase: str) -> list[Call]:
        return [c for c in self.calls if c.index == index and c.phase == phase]


class Worker:
    """One delivery in a thread of its own, paused inside the step function."""

    def __init__(
        self, step_id: int, phase: str, index: int, plan: str, acts_if_killed: bool
    ) -> None:
        self.step_id, self.phase, self.index = step_id, phase, index
        self.plan = plan
        self.acts_if_killed = acts_if_killed
        self.lease_expires_at: datetime | None = None
        self.error: BaseException | None = None
        self.crashed = False
        self.killed = False
        self._at_pause = threading.Event()
        self._go = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"worker-{index}")

    # --- main thread ---------------------------------------------------------------

    def start(self) -> bool:
        """Deliver; True if it paused inside the function, False if it already ended."""
        self._thread.start()
        for _ in range(int(WORKER_WAIT * 10)):
            if self._at_pause.wait(0.1) or self._done.is_set():
                break
        else:
            raise AssertionError(f"worker for step {self.index} neither paused nor ended")
        return self.paused

    @property
    def paused(self) -> bool:
        return self._at_pause.is_set() and not self._done.is_set() and not self._go.is_set()

    def resume(self) -> None:
        self._go.set()
        self._join()

    def kill(self) -> None:
        """The worker is lost (or its time limit stopped it): it records nothing."""
        self.killed = True
        self._go.set()
        self._join()

    def _join(self) -> None:
        self._thread.join(WORKER_WAIT)
        if self._thread.is_alive():
            raise AssertionError(f"worker for step {self.index} did not finish")

    # --- worker thread -------------------------------------------------------------

    def _run(self) -> None:
        _local.worker = self
        try:
            engine.execute(self.step_id, self.phase)
        except FaultInjected:
            self.crashed = True
        except BaseException as exc:  # checked by the main thread
            self.error = exc
        finally:
            connection.close()
            self._done.set()

    def pause_here(self, act: Any) -> None:
        """Called by the step function: wait to be resumed; die if killed."""
        self._at_pause.set()
        if not self._go.wait(WORKER_WAIT * 4):
            raise FaultInjected("paused worker was never resumed")
        if self.killed:
            if self.acts_if_killed:
                act()
            raise FaultInjected("worker killed while its step ran")
