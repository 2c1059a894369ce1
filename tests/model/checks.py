"""The model's invariants: after every rule, and at the end of a run.

After every rule (``Invariants.check``):

- saga and step states only move forwards (an operator's retry of a ``failed`` run
  may reopen it), and attempt counters never go down (except by that retry);
- no step makes more tries than its ``Retry`` allows, and at most the attempts the
  engine counted acted, each once;
- no compensation runs while its step's attempt is still in flight, and no step acts
  after its compensation ran;
- compensations run in reverse step order;
- a step the engine says was sent (``dispatched_at``) has a message on its way;
- an attempt that returned normally is recorded as what it was.

At the end (``check_end``, after ``quiesce``): the run is terminal; completed with
every step succeeded; compensated with exactly the steps that acted (and only steps
that acted or may have acted) undone; or failed for a reason the log shows.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models.functions import Now

from sagaflow.models import Saga, SagaStep
from sagaflow.saga import sweeper

from .holes import BY_HOLE, Violation
from .spec import MODEL_SETTINGS
from .world import COMPENSATE, FORWARD, RETURNING, Call

TERMINAL = ("completed", "compensated", "failed")
QUIESCE_ROUNDS = 300

_STEP_EDGES = {
    "pending": {"running", "failed"},
    "running": {"pending", "succeeded", "failed"},
    "succeeded": {"compensating"},
    "failed": {"compensating"},
    "compensating": {"compensated"},
    "compensated": set(),
}
_SAGA_EDGES = {
    "running": {"compensating", "completed", "compensated", "failed"},
    "compensating": {"compensated", "failed"},
    "completed": set(),
    "compensated": set(),
    "failed": set(),
}
# What an operator's retry of a failed run may reopen.
_STEP_REOPEN = {"failed": {"pending"}}
_SAGA_REOPEN = {"failed": {"running", "compensating"}}


def _closure(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    reach = {state: {state} | set(following) for state, following in edges.items()}
    changed = True
    while changed:
        changed = False
        for seen in reach.values():
            more = set().union(*(reach.get(s, {s}) for s in seen)) - seen
            if more:
                seen |= more
                changed = True
    return reach


def _merge(edges: dict[str, set[str]], extra: dict[str, set[str]]) -> dict[str, set[str]]:
    return {state: following | extra.get(state, set()) for state, following in edges.items()}


STEP_REACH, SAGA_REACH = _closure(_STEP_EDGES), _closure(_SAGA_EDGES)
STEP_REACH_REOPEN = _closure(_merge(_STEP_EDGES, _STEP_REOPEN))
SAGA_REACH_REOPEN = _closure(_merge(_SAGA_EDGES, _SAGA_REOPEN))

_STEP_FIELDS = (
    "id",
    "index",
    "name",
    "state",
    "attempts",
    "compensation_attempts",
    "interrupted",
    "due_at",
    "dispatched_at",
    "lease_token",
    "lease_expires_at",
    "error",
)


@dataclass(frozen=True)
class StepRow:
    id: int
    index: int
    name: str
    state: str
    attempts: int
    compensation_attempts: int
    interrupted: bool
    due_at: datetime | None
    dispatched_at: datetime | None
    lease_token: Any
    lease_expires_at: datetime | None
    error: str


@dataclass(frozen=True)
class Snapshot:
    saga_state: str
    deadline_at: datetime | None
    error: str
    now: datetime
    steps: tuple[StepRow, ...]
    #: The run waits for the code of its version (DESIGN §4.1): its due step is sent
    #: again by the sweeper when that code is back, not by a message now.
    needs_code: bool = False

    def waiting_phase(self, step: StepRow) -> str | None:
        """The phase a message must have to run ``step`` now, if it waits for one."""
        if step.due_at is None or step.lease_token is not None:
            return None
        if step.state == "pending" and self.saga_state == "running":
            return FORWARD
        if step.state == "compensating" and self.saga_state == "compensating":
            return COMPENSATE
        return None


class Invariants:
    """Mixed into the state machine (``machine.EngineModel``), whose state it reads."""

    # --- reading ----------------------------------------------------------------------

    def read(self) -> Snapshot:
        state, deadline, error, now, needs_code_since = (
            Saga.objects.filter(pk=self.saga_id)
            .annotate(db_now=Now())
            .values_list("state", "deadline_at", "error", "db_now", "needs_code_since")
            .get()
        )
        steps = SagaStep.objects.filter(saga_id=self.saga_id).order_by("index")
        rows = tuple(StepRow(*values) for values in steps.values_list(*_STEP_FIELDS))
        return Snapshot(state, deadline, error, now, rows, needs_code_since is not None)

    def defer(self, hole: int, message: str, index: int) -> None:
        """``flag`` from inside a step function, where the engine would catch an exception
        as the step's failure: raised by the next ``check``."""
        if hole in self.tolerated:
            self.flag(hole, message, index=index)
        else:
            self.deferred.append(BY_HOLE[hole](message))

    # --- after every rule ---------------------------------------------------------------

    def check(self) -> None:
        if self.unchanged:
            self.unchanged = False
            return
        healthy_connection()
        self.drain()
        if self.deferred:
            raise self.deferred[0]
        snap = self.read()
        self.now = snap.now
        if self.snap is not None:
            self.check_transitions(self.snap, snap)
        self.check_attempts(snap)
        self.check_messages(snap)
        self.check_order()
        self.snap = snap
        self.allow_reopen = False

    def check_transitions(self, prev: Snapshot, cur: Snapshot) -> None:
        saga_reach = SAGA_REACH_REOPEN if self.allow_reopen else SAGA_REACH
        step_reach = STEP_REACH_REOPEN if self.allow_reopen else STEP_REACH
        if cur.saga_state not in saga_reach[prev.saga_state]:
            raise Violation(f"saga moved backwards: {prev.saga_state} -> {cur.saga_state}")
        for before, after in zip(prev.steps, cur.steps, strict=True):
            i = after.index
            if after.state not in step_reach[before.state]:
                raise Violation(f"step {i} moved backwards: {before.state} -> {after.state}")
            for phase, old, new in (
                (FORWARD, before.attempts, after.attempts),
                (COMPENSATE, before.compensation_attempts, after.compensation_attempts),
            ):
                if new >= old:
                    continue
                if not self.allow_reopen:
                    raise Violation(f"step {i}: {phase} attempts went down, {old} -> {new}")
                epoch = self.epoch.get((i, phase), 0)
                self.epoch_end[(i, phase, epoch)] = old
                self.epoch[(i, phase)] = epoch + 1

    def check_attempts(self, snap: Snapshot) -> None:
        for step in snap.steps:
            spec = self.spec.steps[step.index]
            for phase, counter, tries in (
                (FORWARD, step.attempts, spec.tries()),
                (COMPENSATE, step.compensation_attempts, spec.compensation_tries()),
            ):
                if counter > tries:
                    raise Violation(
                        f"step {step.index} made {counter} {phase} attempts; its Retry allows "
                        f"{tries}"
                    )
                current = self.epoch.get((step.index, phase), 0)
                for epoch in range(current + 1):
                    limit = (
                        counter if epoch == current else self.epoch_end[(step.index, phase, epoch)]
                    )
                    acted = [
                        a.attempt
                        for a in self.ledger.acts_of(step.index, phase)
                        if a.epoch == epoch
                    ]
                    if len(acted) != len(set(acted)):
                        raise Violation(
                            f"step {step.index}: one {phase} attempt acted twice: {acted}"
                        )
                    if acted and max(acted) > limit:
                        raise Violation(
                            f"step {step.index}: {phase} attempt {max(acted)} acted but the "
                            f"engine counted {limit}"
                        )

    def check_messages(self, snap: Snapshot) -> None:
        """A step recorded as sent must have a message on its way (or one the model lost)."""
        if snap.needs_code:
            return
        for step in snap.steps:
            phase = snap.waiting_phase(step)
            if phase is None or step.dispatched_at is None:
                continue
            key = (step.id, phase)
            if key in self.lost or any((m.step_id, m.phase) == key for m in self.queue):
                continue
            message = (
                f"step {step.index} waits ({phase}, due {step.due_at}) as sent at "
                f"{step.dispatched_at}, but no message for it is on its way; only the "
                f"sweeper's resend after REDISPATCH_AFTER will run it"
            )
            if key in self.early_dropped:
                self.flag(10, message)
                self.lost.add(key)
            else:
                raise Violation(message)

    def check_order(self) -> None:
        undo = [c for c in self.ledger.calls if c.phase == COMPENSATE]
        for earlier, later in itertools.pairwise(undo):
            if later.index > earlier.index:
                raise Violation(
                    f"compensation of step {later.index} ran after that of step "
                    f"{earlier.index}: not in reverse order"
                )
        for index in sorted({c.index for c in undo}):
            first = min(c.seq for c in undo if c.index == index)
            late = [a for a in self.ledger.acts_of(index) if a.seq > first]
            if late and not self.exempted(index, 3):
                raise Violation(
                    f"step {index} acted (attempt {late[0].attempt}) after its compensation ran"
                )

    def check_settled(self, index: int) -> None:
        """Called as a compensation starts: its step's attempt must have settled."""
        running = [w for w in self.live_workers() if w.phase == FORWARD and w.index == index]
        if running:
            self.defer(
                3,
                f"compensation of step {index} ran while its forward attempt was still in "
                f"flight (a paused worker, lease valid until {running[0].lease_expires_at})",
                index,
            )

    def check_recorded(self, step_id: int, calls: list[Call]) -> None:
        """After a delivery in the main thread: what returned normally is recorded so."""
        if not calls:
            return
        call = calls[-1]
        state = SagaStep.objects.values_list("state", flat=True).get(pk=step_id)
        if call.phase == FORWARD and call.kind == "ok" and state != "succeeded":
            raise Violation(f"step {call.index} succeeded but was recorded as {state}")
        if call.phase == COMPENSATE and call.kind in RETURNING and state != "compensated":
            message = (
                f"compensation of step {call.index} returned ({call.kind}) but the step is "
                f"{state}, not compensated"
            )
            if call.kind != "nonjson":
                raise Violation(message)
            call.settled = False  # the engine took it for a failure
            self.flag(7, message, index=call.index)

    def mark_unsent_as_lost(self, before: Snapshot) -> None:
        """The steps sent during a call whose messages the model never saw are lost."""
        sent_before = {s.id: s.dispatched_at for s in before.steps}
        snap = self.read()
        for step in snap.steps:
            phase = snap.waiting_phase(step)
            if phase is None or step.dispatched_at is None:
                continue
            if step.dispatched_at != sent_before.get(step.id):
                self.lost.add((step.id, phase))

    # --- the end ---------------------------------------------------------------------

    def quiesce(self) -> None:
        """Resume paused workers, then deliver, sweep and let time pass until the run ends."""
        for worker in self.live_workers():
            worker.resume()
            self._worker_ended(worker)
        self.check()
        for _ in range(QUIESCE_ROUNDS):
            snap = self.snap
            if snap.saga_state in TERMINAL and not self.live_workers():
                break
            due = [m for m in self.ordered() if m.eta <= snap.now]
            if due:
                self.queue.remove(due[0])
                self._deliver(due[0], "ok")
            elif not any(sweeper.sweep().as_dict().values()):
                self._advance_to_next_event(snap)
            self.check()
        else:
            raise Violation(f"run still {self.snap.saga_state} after {QUIESCE_ROUNDS} rounds")
        for msg in self.ordered():  # what is left are duplicates: each must change nothing
            self.queue.remove(msg)
            self._deliver(msg, "ok")
            self.check()
        sweeper.sweep()
        self.check()

    def _advance_to_next_event(self, snap: Snapshot) -> None:
        resend = timedelta(seconds=MODEL_SETTINGS["REDISPATCH_AFTER"])
        times = [m.eta for m in self.queue]
        for step in snap.steps:
            if step.lease_token is not None:
                times.append(step.lease_expires_at)
            elif step.due_at is not None:
                times.append(step.due_at)
                if step.dispatched_at is not None:
                    times.append(step.dispatched_at + resend)
        if snap.saga_state == "running" and snap.deadline_at is not None:
            times.append(snap.deadline_at)
        future = [t for t in times if t is not None and t > snap.now]
        if not future:
            raise Violation(
                f"run is {snap.saga_state} with nothing scheduled: no message, lease, due step "
                f"or deadline will ever move it (steps: {[s.state for s in snap.steps]})"
            )
        self.advance((min(future) - snap.now).total_seconds() + 0.001)

    def check_end(self) -> None:
        snap = self.read()
        steps = self.spec.steps
        if snap.saga_state not in TERMINAL:
            raise Violation(f"run ended {snap.saga_state}, not terminal")
        for step in snap.steps:
            if step.lease_token is not None or step.due_at is not None:
                raise Violation(f"run is {snap.saga_state} but step {step.index} is still live")
        undone = {s.index for s in snap.steps if s.state == "compensated"}
        has_undo = {i for i, s in enumerate(steps) if s.compensation}
        acted = {a.index for a in self.ledger.acts if a.phase == FORWARD}
        must = acted & has_undo
        may_fail = {
            i
            for i, s in enumerate(steps)
            if s.compensate_on_failure
            and any(c.kind != "abort" for c in self.ledger.calls_of(i, FORWARD))
        }
        may = must | ((self.lost_fate | self.paused_ever | may_fail) & has_undo)
        for index in undone:
            if not any(c.kind in RETURNING for c in self.ledger.calls_of(index, COMPENSATE)):
                raise Violation(f"step {index} is compensated but its compensation never returned")
        if undone - may:
            raise Violation(
                f"steps {sorted(undone - may)} were compensated but never acted and could not "
                f"have (acted: {sorted(acted)})"
            )
        if snap.saga_state == "completed":
            if any(s.state != "succeeded" for s in snap.steps):
                raise Violation(f"completed with steps {[s.state for s in snap.steps]}")
            if any(c.phase == COMPENSATE for c in self.ledger.calls):
                raise Violation("completed, but a compensation ran")
        elif snap.saga_state == "compensated":
            for index in sorted(must - undone):
                self._missing_compensation(snap.steps[index])
        else:
            self._check_failure(snap)

    def _missing_compensation(self, step: StepRow) -> None:
        index = step.index
        if self.exempted(index, 3):
            return
        message = (
            f"run is compensated but step {index} acted and was not compensated "
            f"(state {step.state}, error {step.error.splitlines()[-1:]!r})"
        )
        if step.error.endswith("before it ran") and step.attempts > 0:
            self.flag(2, message, index=index)  # cancelled in its retry wait by abandon
        elif index in self.defchanged:
            self.flag(6, message, index=index)
        elif any(c.kind == "nonjson" for c in self.ledger.calls_of(index, FORWARD)):
            self.flag(7, message, index=index)
        else:
            raise Violation(message)

    def _check_failure(self, snap: Snapshot) -> None:
        """A run may end failed when its code changed, or when a compensation gave up."""
        if self.defchanged:
            return
        stuck = [s for s in snap.steps if s.state == "compensating"]
        for step in stuck:
            epoch = self.epoch.get((step.index, COMPENSATE), 0)
            calls = [c for c in self.ledger.calls_of(step.index, COMPENSATE) if c.epoch == epoch]
            if not any(c.settled for c in calls):
                return  # every try of it failed: it needs a person
        message = f"run failed although no compensation gave up ({snap.error!r})"
        nonjson = [
            s.index
            for s in stuck
            if any(c.kind == "nonjson" for c in self.ledger.calls_of(s.index, COMPENSATE))
        ]
        if not nonjson:
            raise Violation(message)
        self.flag(7, message, index=nonjson[0])


def healthy_connection() -> None:
    """The engine must leave a worker's connection usable for its next task."""
    raw = connection.connection
    if raw is not None and (raw.pgconn.transaction_status != 0 or raw._pipeline is not None):
        status, pipeline = raw.pgconn.transaction_status, raw._pipeline
        connection.close()
        raise Violation(f"the engine left the connection in state {status!r}, pipeline {pipeline}")
