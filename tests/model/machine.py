"""The model: a Hypothesis state machine that drives the real engine on PostgreSQL.

One example is one run of a random definition (``spec.py``). The rules are what
happens to a run in production: a message delivered on time, twice, early, late or
after its lease; a worker crashing at each named fault point, or pausing inside a
slow step; leases expiring; sweeps; a deadline passing; time passing; an operator's
retry or compensate; a deploy that renames or removes a step, and one that restores
it. Step functions do what each delivery rule tells them (succeed, raise, ``Abort``,
act then raise, act then return a non-JSON value or a NUL character) and log it
(``world.Ledger``).

After every rule the invariants of ``checks.py`` run; at teardown the run is driven to
quiescence (deliveries, sweeps and time, bounded) and the end state is checked against
the log: terminal, and exactly the steps that acted or may have acted compensated, in
reverse order.

The engine is reached only through its entry points: ``engine.execute`` (a delivered
message), ``sweeper.sweep``, ``sagaflow.operations``, ``definition.start`` and
``sagaflow.testing`` (``captured_dispatches``, ``armed_fault``, ``expire_leases``).
Time is the database's: the model moves a run's clock by shifting its timestamps.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import DataError, connection
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from sagaflow import Abort, testing
from sagaflow.exceptions import ActionRefused, FaultInjected, NotSerializableError
from sagaflow.models import Saga, SagaStep
from sagaflow.ops import operations
from sagaflow.saga import engine, registry, sweeper

from .checks import Invariants, Snapshot, healthy_connection
from .holes import BY_HOLE, open_holes
from .spec import MODEL_SETTINGS, SagaSpec, build, saga_specs, step_name
from .world import (
    COMPENSATE,
    FORWARD,
    OUTCOMES,
    Call,
    Ledger,
    StepFailed,
    Worker,
    current_worker,
)

ENGINE_POINTS = ("step.after_claim", "step.after_action", "step.after_record")
COMPENSATION_POINTS = ("step.after_claim", "compensation.after_action", "step.after_record")

# Half of the attempts succeed, so that runs get past their first steps.
outcomes = st.sampled_from(("ok",) * (len(OUTCOMES) - 1) + OUTCOMES[1:])
picks = st.integers(0, 7)
delays = st.sampled_from([10.0, 150.0, 700.0, 4000.0, 60000.0])
fault_points = st.sampled_from(sorted({*ENGINE_POINTS, *COMPENSATION_POINTS}))

_names = itertools.count()


MAX_PAUSED = 2


@dataclass(frozen=True)
class Message:
    step_id: int
    phase: str
    eta: datetime
    seq: int


def _guarded(fn):
    """Mark the machine broken when a rule fails, so teardown only cleans up."""

    def wrapped(self, **kwargs):
        try:
            return fn(self, **kwargs)
        except BaseException:
            self.broken = True
            raise

    wrapped.__name__ = fn.__name__
    wrapped.__qualname__ = fn.__qualname__
    wrapped.__doc__ = fn.__doc__
    return wrapped


class EngineModel(Invariants, RuleBasedStateMachine):
    """One run of one random definition, registered under a name of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.tolerated = open_holes()
        self.name = f"model_{next(_names)}"
        self.spec: SagaSpec | None = None
        self.definition: Any = None
        self.names: list[str | None] = []  # per original step, its name in the code now
        self.saga_id: Any = None
        self.index_of: dict[int, int] = {}  # step row id -> index
        # The broker: messages on their way, and those it lost (only the sweeper helps).
        self.queue: list[Message] = []
        self.lost: set[tuple[int, str]] = set()
        self.early_dropped: set[tuple[int, str]] = set()
        self.workers: list[Worker] = []
        self.ledger = Ledger()
        self.plan = "ok"  # what the step function called by the next delivery does
        # Attempt numbering restarts when an operator retries a failed run: an epoch.
        self.epoch: dict[tuple[int, str], int] = {}
        self.epoch_end: dict[tuple[int, str, int], int] = {}
        # Steps that may have acted though the log does not say so (an attempt whose
        # worker was lost, or paused in flight): the engine may compensate them.
        self.lost_fate: set[int] = set()
        self.paused_ever: set[int] = set()
        self.defchanged: set[int] = set()  # steps a deploy renamed or moved
        self.deploys = 0
        self.calm = 0
        self.deliveries = 0
        self.losses = 0
        self.exempt: dict[int, set[int]] = {}  # step -> open holes seen on it
        self.snap: Snapshot | None = None
        self.now: datetime | None = None
        self.allow_reopen = False
        self.unchanged = False
        self.broken = False
        self.deferred: list[AssertionError] = []
        self._exit = contextlib.ExitStack()
        self.sent = self._exit.enter_context(testing.captured_dispatches())

    # --- tolerating known holes --------------------------------------------------------

    def flag(self, hole: int, message: str, *, index: int | None = None) -> None:
        """Report hole ``hole``; while it is open, count it and exempt ``index`` instead."""
        if hole not in self.tolerated:
            raise BY_HOLE[hole](message)
        with contextlib.suppress(Exception):  # outside a Hypothesis run there is no event log
            event(f"tolerated open hole {hole}")

        if index is not None:
            self.exempt.setdefault(index, set()).add(hole)

    def exempted(self, index: int, hole: int) -> bool:
        return hole in self.exempt.get(index, set())

    # --- the step functions -----------------------------------------------------------

    def _forward(self, index: int):
        return lambda ctx: self.perform(index, FORWARD, ctx)

    def _undo(self, index: int):
        return lambda ctx: self.perform(index, COMPENSATE, ctx)

    def _call(self, index: int, phase: str, ctx: Any, kind: str, paused: bool) -> Call:
        epoch = self.epoch.get((index, phase), 0)
        call = Call(self.ledger.next_seq(), index, phase, ctx.attempt, epoch, kind, paused)
        self.ledger.calls.append(call)
        return call

    def adjust(self, index: int, phase: str, plan: str) -> str:
        """Keep a step within its contract: ``Abort`` means "nothing done under this key",
        so a step that already acted cannot abort; only a step with
        ``compensate_on_failure`` may fail after acting."""
        assert self.spec is not None
        if phase == FORWARD:
            if plan == "abort" and self.ledger.acts_of(index):
                return "raise"
            if plan == "act_raise" and not self.spec.steps[index].compensate_on_failure:
                return "raise"
        return plan

    def perform(self, index: int, phase: str, ctx: Any) -> Any:
        """The body of every step and compensation function: do what the rule said."""
        assert self.spec is not None
        worker = current_worker()
        atomic = phase == FORWARD and self.spec.steps[index].atomic
        if worker is not None:
            worker.pause_here(lambda: self._act_and_die(index, phase, ctx))
        if phase == COMPENSATE:
            self.check_settled(index)
        kind = self.adjust(index, phase, worker.plan if worker is not None else self.plan)
        call = self._call(index, phase, ctx, kind, worker is not None)
        if kind == "raise":
            raise StepFailed(f"{phase} of step {index} failed (attempt {ctx.attempt})")
        if kind == "abort":
            raise Abort(f"{phase} of step {index} refused")
        self.ledger.act(call, atomic=atomic)
        if kind == "act_raise":
            raise StepFailed(f"{phase} of step {index} failed after acting")
        call.settled = True
        if kind == "nonjson":
            return {"amount": Decimal("9.99")} if phase == FORWARD else Decimal("9.99")
        if kind == "nul":
            return {"note": "paid\x00"}
        return {"index": index, "attempt": ctx.attempt} if phase == FORWARD else None

    def _act_and_die(self, index: int, phase: str, ctx: Any) -> None:
        """A paused worker that acted, then was lost before it returned."""
        if phase == COMPENSATE:
            self.check_settled(index)
        self.ledger.act(self._call(index, phase, ctx, "ok", True), atomic=False)

    # --- starting -----------------------------------------------------------------------

    @initialize(spec=saga_specs, nul_in_data=st.booleans(), calm=st.integers(0, 4))
    @_guarded
    def start(self, spec: SagaSpec, nul_in_data: bool, calm: int) -> None:
        self.spec, self.calm = spec, calm
        self.names = [step_name(i) for i in range(len(spec.steps))]
        self._define()
        saga = None
        if nul_in_data:
            try:
                saga = self.definition.start({"note": "x\x00y"})
            except NotSerializableError:
                pass
            except DataError as exc:
                self.flag(8, f"start() with a NUL character in data raised {exc!r}")
        if saga is None:
            saga = self.definition.start({"n": 1})
        self.saga_id = saga.pk
        for pk, index in SagaStep.objects.filter(saga_id=saga.pk).values_list("pk", "index"):
            self.index_of[pk] = index
        self.drain()

    def _define(self) -> None:
        assert self.spec is not None
        n = len(self.spec.steps)
        self.definition = build(
            self.name,
            self.spec,
            [self._forward(i) for i in range(n)],
            [self._undo(i) for i in range(n)],
            names=self.names,
        )

    # --- time and messages ----------------------------------------------------------

    def refresh_now(self) -> datetime:
        with connection.cursor() as cursor:
            cursor.execute("SELECT STATEMENT_TIMESTAMP()")
            self.now = cursor.fetchone()[0]
        return self.now

    def drain(self) -> None:
        """Move the messages the engine sent into the model's queue, each with its ETA."""
        while self.sent:
            step_id, phase = self.sent.pop(0)
            if step_id not in self.index_of:
                continue
            now = self.refresh_now()
            due = SagaStep.objects.values_list("due_at", flat=True).get(pk=step_id)
            eta = due if due is not None and due > now else now
            self.queue.append(Message(step_id, phase, eta, self.ledger.next_seq()))
            self.lost.discard((step_id, phase))
            self.early_dropped.discard((step_id, phase))

    def ordered(self, messages: list[Message] | None = None) -> list[Message]:
        return sorted(self.queue if messages is None else messages, key=lambda m: (m.eta, m.seq))

    def advance(self, seconds: float) -> None:
        """Time passes for this run: every timestamp of it moves back by ``seconds``."""
        delta = timedelta(seconds=seconds)
        if self._idle() and not self.queue and not self.live_workers():
            self.unchanged = True  # a finished run: time changes nothing (nor does reading it)
            return
        params = {"d": delta, "id": self.saga_id}
        step_columns = ("due_at", "dispatched_at", "lease_expires_at", "started_at")
        step_columns += ("finished_at", "compensated_at")
        saga_columns = ("deadline_at", "created_at", "finished_at")
        with connection.cursor() as cursor:
            sets = ", ".join(f"{c} = {c} - %(d)s" for c in step_columns)
            cursor.execute(
                f"UPDATE {SagaStep._meta.db_table} SET {sets} WHERE saga_id = %(id)s", params
            )
            sets = ", ".join(f"{c} = {c} - %(d)s" for c in saga_columns)
            cursor.execute(f"UPDATE {Saga._meta.db_table} SET {sets} WHERE id = %(id)s", params)
        self.queue = [replace(m, eta=m.eta - delta) for m in self.queue]
        for worker in self.live_workers():
            if worker.lease_expires_at is not None:
                worker.lease_expires_at -= delta
        self.refresh_now()
        self.reap()

    # --- workers ------------------------------------------------------------------------

    def live_workers(self) -> list[Worker]:
        return [w for w in self.workers if w.paused]

    def reap(self) -> None:
        """A paused worker whose lease has run out was stopped by its time limit."""
        now = self.now or self.refresh_now()
        for worker in self.live_workers():
            if worker.lease_expires_at is None or worker.lease_expires_at <= now:
                self._kill(worker)

    def _kill(self, worker: Worker) -> None:
        worker.kill()
        if worker.phase == FORWARD:
            self.lost_fate.add(worker.index)
        self._worker_ended(worker)

    def _worker_ended(self, worker: Worker) -> None:
        if worker.error is not None:
            calls = [c for c in self.ledger.calls if c.paused and c.index == worker.index]
            self._engine_raised(worker.step_id, worker.error, calls[-1:])
        self.drain()

    # --- delivering -------------------------------------------------------------------

    def _deliver(
        self, msg: Message, plan: str, *, fault: str | None = None, requeue: bool = False
    ) -> None:
        index = self.index_of[msg.step_id]
        self.deliveries += 1
        self.plan = plan
        first = len(self.ledger.calls)
        try:
            with testing.armed_fault(fault) if fault else contextlib.nullcontext():
                engine.execute(msg.step_id, msg.phase)
        except FaultInjected:
            for call in self.ledger.calls[first:]:
                call.settled = False
            if msg.phase == FORWARD and fault in ("step.after_claim", "step.after_action"):
                self.lost_fate.add(index)
            if requeue:  # the broker gives a lost worker's message to another
                self.queue.append(replace(msg, eta=self.refresh_now(), seq=self.ledger.next_seq()))
        except Exception as exc:
            self._engine_raised(msg.step_id, exc, self.ledger.calls[first:])
        else:
            self.check_recorded(msg.step_id, self.ledger.calls[first:])
        finally:
            self.plan = "ok"
            self.drain()

    def _engine_raised(self, step_id: int, exc: BaseException, calls: list[Call]) -> None:
        index = self.index_of[step_id]
        if isinstance(exc, DataError) and calls and calls[-1].kind == "nul":
            for call in calls:
                call.settled = False  # as the worker sees it: the task failed, nothing recorded
            self.flag(8, f"step {index} returned a NUL character; the engine raised {exc!r}")
            return
        raise AssertionError(f"the engine raised on a delivery of step {index}: {exc!r}") from exc

    def _take(self, pick: int, messages: list[Message] | None = None) -> Message:
        candidates = self.ordered(messages)
        return candidates[pick % len(candidates)]

    def _on_time(self, msg: Message) -> Message:
        now = self.refresh_now()
        if msg.eta > now:
            self.advance((msg.eta - now).total_seconds() + 0.001)
            msg = next(m for m in self.queue if m.seq == msg.seq)
        return msg

    def _started(self) -> bool:
        return self.saga_id is not None

    def _has_messages(self) -> bool:
        return self._started() and bool(self.queue)

    @precondition(lambda self: self._has_messages())
    @rule(pick=picks, outcome=outcomes, duplicate=st.booleans())
    @_guarded
    def deliver(self, pick: int, outcome: str, duplicate: bool) -> None:
        """The next due message (``pick`` 0) or a later one, on time; ``duplicate``: the
        broker will deliver it again later (a redelivery)."""
        msg = self._on_time(self._take(pick))
        if not duplicate:
            self.queue.remove(msg)
        self._deliver(msg, outcome)

    def _early(self) -> list[Message]:
        now = self.now
        return [m for m in self.queue if now is not None and m.eta > now + timedelta(seconds=1)]

    @precondition(lambda self: self._started() and bool(self._early()))
    @rule(pick=picks, outcome=outcomes)
    @_guarded
    def deliver_early(self, pick: int, outcome: str) -> None:
        """A countdown message delivered before its time (a worker's clock ahead)."""
        msg = self._take(pick, self._early())
        self.queue.remove(msg)
        key = (msg.step_id, msg.phase)
        self._deliver(msg, outcome)
        if not any((m.step_id, m.phase) == key for m in self.queue):
            self.early_dropped.add(key)

    @precondition(lambda self: self._has_messages())
    @rule(pick=picks, delay=delays, outcome=outcomes)
    @_guarded
    def deliver_late(self, pick: int, delay: float, outcome: str) -> None:
        """A message delivered ``delay`` seconds after its time (a busy queue)."""
        msg = self._take(pick)
        self.advance(max(0.0, (msg.eta - self.refresh_now()).total_seconds()) + delay)
        msg = next(m for m in self.queue if m.seq == msg.seq)
        self.queue.remove(msg)
        self._deliver(msg, outcome)

    @precondition(lambda self: self._has_messages())
    @rule(point=fault_points, pick=picks, outcome=outcomes, requeue=st.booleans())
    @_guarded
    def crash(self, point: str, pick: int, outcome: str, requeue: bool) -> None:
        """The worker dies at a named fault point; ``requeue``: the broker redelivers."""
        msg = self._on_time(self._take(pick))
        self.queue.remove(msg)
        self._deliver(msg, outcome, fault=point, requeue=requeue)

    def _pausable(self) -> list[Message]:
        assert self.spec is not None
        return [
            m
            for m in self.queue
            if m.phase == COMPENSATE or not self.spec.steps[self.index_of[m.step_id]].atomic
        ]

    @precondition(
        lambda self: (
            self._started() and len(self.live_workers()) < MAX_PAUSED and bool(self._pausable())
        )
    )
    @rule(pick=picks, outcome=outcomes, duplicate=st.booleans(), acts_if_killed=st.booleans())
    @_guarded
    def pause(self, pick: int, outcome: str, duplicate: bool, acts_if_killed: bool) -> None:
        """A worker takes the message and stops inside the step (a slow provider call);
        it is resumed or killed by later rules. (Atomic steps hold the run's lock while
        they run, so their pause is the chaos suite's.)"""
        msg = self._on_time(self._take(pick, self._pausable()))
        if not duplicate:
            self.queue.remove(msg)
        index = self.index_of[msg.step_id]
        self.deliveries += 1
        worker = Worker(msg.step_id, msg.phase, index, outcome, acts_if_killed)
        self.workers.append(worker)
        if worker.start():
            lease = SagaStep.objects.values_list("lease_expires_at", flat=True).get(pk=msg.step_id)
            worker.lease_expires_at = lease
            if msg.phase == FORWARD:
                self.paused_ever.add(index)
        if worker.paused:
            self.drain()
        else:
            self._worker_ended(worker)

    @precondition(lambda self: self._started() and bool(self.live_workers()))
    @rule(pick=picks)
    @_guarded
    def resume(self, pick: int) -> None:
        """The slow call returns: the worker acts as it was told, then records."""
        workers = self.live_workers()
        worker = workers[pick % len(workers)]
        worker.resume()
        self._worker_ended(worker)

    def _leased(self) -> list[Any]:
        return [s for s in self.snap.steps if s.lease_token is not None] if self.snap else []

    @precondition(lambda self: self._started() and bool(self._leased()))
    @rule(pick=picks, acts_if_killed=st.booleans())
    @_guarded
    def deliver_after_lease(self, pick: int, acts_if_killed: bool) -> None:
        """A step's lease runs out (its worker is lost), and its message comes again."""
        leased = self._leased()
        step = leased[pick % len(leased)]
        expired = self.refresh_now() - timedelta(milliseconds=1)
        SagaStep.objects.filter(pk=step.id).update(lease_expires_at=expired)
        for worker in self.live_workers():
            if worker.step_id == step.id:
                worker.acts_if_killed = acts_if_killed
                self._kill(worker)
        phase = FORWARD if step.state == "running" else COMPENSATE
        self._deliver(Message(step.id, phase, self.refresh_now(), self.ledger.next_seq()), "ok")

    @precondition(lambda self: self._started() and bool(self._leased()))
    @rule(acts_if_killed=st.booleans())
    @_guarded
    def expire_leases(self, acts_if_killed: bool) -> None:
        """``sagaflow.testing.expire_leases``: the lease holders died; the sweeper acts.
        (It collects the messages it causes itself: for the model they are lost.)"""
        for worker in self.live_workers():
            worker.acts_if_killed = acts_if_killed
            self._kill(worker)
        before = self.read()
        testing.expire_leases(Saga.objects.get(pk=self.saga_id))
        self.mark_unsent_as_lost(before)

    def _sweepable(self) -> bool:
        """Something the sweeper acts on: an expired lease, a deadline, a lost message."""
        snap, now = self.snap, self.now
        if snap is None or now is None:
            return False
        if snap.saga_state == "running" and snap.deadline_at and snap.deadline_at < now:
            return True
        resend = now - timedelta(seconds=MODEL_SETTINGS["REDISPATCH_AFTER"])
        for step in snap.steps:
            if step.lease_token is not None and step.lease_expires_at < now:
                return True
            lost = step.dispatched_at is None or step.dispatched_at <= resend
            if snap.waiting_phase(step) and step.due_at <= now and lost:
                return True
        return False

    @precondition(lambda self: self._started() and self._sweepable())
    @rule()
    @_guarded
    def sweep(self) -> None:
        sweeper.sweep()
        self.drain()

    def _running(self) -> bool:
        return self.snap is not None and self.snap.saga_state == "running"

    def _disruptible(self) -> bool:
        """Deadlines, operators' compensate and deploys end or stop a run; holding them
        back until ``calm`` messages were delivered lets examples reach the later steps."""
        return self._started() and self.deliveries >= self.calm

    @precondition(lambda self: self._disruptible() and self._running() and self.spec.deadline)
    @rule()
    @_guarded
    def pass_deadline(self) -> None:
        Saga.objects.filter(pk=self.saga_id).update(deadline_at=self.refresh_now())

    def _idle(self) -> bool:
        return self.snap is not None and self.snap.saga_state in ("completed", "compensated")

    def _waiting_for_time(self) -> bool:
        """No message is due: only time moves the run on (or it is finished). While one
        is due, time passes through ``deliver_late``."""
        now = self.now
        return self._started() and not any(m.eta <= now for m in self.queue)

    @precondition(lambda self: self._waiting_for_time())
    @rule(delay=delays)
    @_guarded
    def advance_clock(self, delay: float) -> None:
        self.advance(delay)

    def _retryable(self) -> bool:
        """A run an operator would retry: failed, or with a step waiting or stalled."""
        snap = self.snap
        if snap is None or snap.saga_state in ("completed", "compensated"):
            return False
        now = self.now
        return snap.saga_state == "failed" or any(
            (s.lease_token is not None and s.lease_expires_at < now)
            or (snap.waiting_phase(s) and s.due_at > now)
            for s in snap.steps
        )

    @precondition(lambda self: self._started() and self._retryable())
    @rule()
    @_guarded
    def operator_retry(self) -> None:
        self.allow_reopen = True
        with contextlib.suppress(ActionRefused):
            operations.retry(self.saga_id)
        self.drain()

    @precondition(lambda self: self._disruptible() and self._running())
    @rule()
    @_guarded
    def operator_compensate(self) -> None:
        with contextlib.suppress(ActionRefused):
            operations.compensate(self.saga_id)
        self.drain()

    @precondition(lambda self: self._disruptible() and self.deploys < 3)
    @rule(change=st.sampled_from(["rename", "remove", "restore"]), pick=picks)
    @_guarded
    def deploy(self, change: str, pick: int) -> None:
        """New code while the run is in flight: one step renamed (its code kept) or
        removed (every later step's position changes), or the original code back."""
        index = pick % len(self.names)
        if change == "restore":
            self.names = [step_name(i) for i in range(len(self.names))]
        elif self.names[index] is None or (change == "remove" and len(self.names) == 1):
            return
        elif change == "rename":
            self.names[index] = f"{step_name(index)}_r{self.deploys}"
            self.defchanged.add(index)
        else:
            self.names[index] = None
            self.defchanged.update(range(index, len(self.names)))
        self.deploys += 1
        self._define()

    @precondition(lambda self: self._has_messages() and not self.losses)
    @rule(pick=picks)
    @_guarded
    def lose_message(self, pick: int) -> None:
        """The broker loses a message (Redis flushed): only the sweeper can make up for it.
        (Once per run: after that the run waits an hour, and the example idles.)"""
        self.losses += 1
        msg = self._take(pick)
        self.queue.remove(msg)
        if not any((m.step_id, m.phase) == (msg.step_id, msg.phase) for m in self.queue):
            self.lost.add((msg.step_id, msg.phase))

    # --- after every rule, and at the end -----------------------------------------------

    @invariant()
    @_guarded
    def after_every_rule(self) -> None:
        if self._started():
            self.check()

    def teardown(self) -> None:
        try:
            if self._started() and not self.broken:
                original = [step_name(i) for i in range(len(self.names))]
                if self.names != original:
                    # A run whose code is gone waits for it (DESIGN §4.1): the code
                    # comes back, as a rolled-back deploy brings it, and the run ends.
                    self.names = original
                    self._define()
                self.quiesce()
                self.check_end()
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        for worker in self.live_workers():
            with contextlib.suppress(Exception):
                worker.kill()
        self._exit.close()
        registry.unregister(self.name)
        healthy_connection()
        if self.saga_id is not None:
            Saga.objects.filter(pk=self.saga_id).delete()


__all__ = ["MODEL_SETTINGS", "EngineModel"]
