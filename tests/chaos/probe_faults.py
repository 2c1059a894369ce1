"""The fault kinds that aim at sagas of their own (the chaos app's probes), and the slow
broker: the classes of DESIGN §8 the first fourteen kinds never injected.

Each method breaks something, starts or watches its probes, and heals; what the
checker needs afterwards (the probe ids, when the lock was held, which pools ran
which code or clock) goes into ``FaultRecord.probes``. The checks are in
``fault_checks.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tests.waiting import WaitTimeout, wait_until

from .topology import ROOT

if TYPE_CHECKING:
    from .faults import FaultRecord, Injector
    from .topology import Slot

#: A directory whose ``sitecustomize`` skews the wall clock of a process
#: (``CHAOS_CLOCK_SKEW`` seconds); its docstring says why not libfaketime.
CLOCK_HOOK = Path(__file__).resolve().parent / "clock"


def skewed_env(offset: float) -> dict[str, str]:
    """The environment of a worker pool whose wall clock is ``offset`` seconds off.

    The monotonic clock is left alone, as NTP leaves it: a skewed wall clock is the
    fault, not a process whose timers jump.
    """
    return {"PYTHONPATH": f"{CLOCK_HOOK}{os.pathsep}{ROOT}", "CHAOS_CLOCK_SKEW": f"{offset:+g}"}


def _proc_state(pid: int) -> str:
    """The state letter of ``pid`` in /proc ('T': stopped), '' if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


class ProbeFaults:
    """Mixed into :class:`faults.Injector` (its fields are used here)."""

    # --- processes: a worker frozen while it holds a run's row lock ----------------------

    def _stop_lock_holder(self: Injector, record: FaultRecord) -> None:
        """Freeze a worker inside an atomic step, holding its run's row lock, while the
        deadline of that run and then of another (a probe) pass.

        ``chaos.locked``'s step stops its own process inside the step's transaction;
        the harness then freezes the whole worker (a VM pause). The locked run's
        deadline passes first, so a sweeper that waits for a run's lock gets stuck
        on it; then the probe's deadline is made to pass, and the probe must be
        compensated while the lock is still held. PostgreSQL must end the frozen
        session within the step's timeout + LEASE_GRACE
        (``idle_in_transaction_session_timeout``), which releases the lock.
        """
        from .chaosapp.sagas import LOCK_STEP_TIMEOUT

        locked, pid = self._frozen_lock_holder()
        slot = self._worker_of(pid)
        slot.signal_group(signal.SIGSTOP)
        frozen_at = time.time()
        held = self.probes.lock_held(self.dsn, locked)
        probe = self.probes.start_deadline_wait()
        locked_deadline = self.probes.deadline_at(locked).timestamp()
        passed_at = ended_at = released_at = None
        cap = frozen_at + LOCK_STEP_TIMEOUT + self.timings.lease_grace + 10.0
        try:
            while time.time() < cap and (ended_at is None or released_at is None):
                now = time.time()
                if passed_at is None and now > locked_deadline + 1.0:
                    self.probes.pass_deadline(probe)
                    passed_at = now
                if ended_at is None and self.probes.all_terminal([probe]):
                    ended_at = time.time()
                if released_at is None and not self.probes.lock_held(self.dsn, locked):
                    released_at = time.time()
                time.sleep(0.2)
        finally:
            slot.signal_group(signal.SIGCONT)
        thawed_at = time.time()
        record.fired = held and passed_at is not None
        record.probes = {
            "locked": locked,
            "probe": probe,
            "slot": slot.name,
            "frozen_at": frozen_at,
            "locked_deadline": locked_deadline,
            "probe_deadline_passed_at": passed_at,
            "probe_ended_at": ended_at,
            "released_at": released_at,
            "thawed_at": thawed_at,
        }

        def after(t: float | None) -> str:
            return "never" if t is None else f"{t - frozen_at:+.1f} s"

        record.detail = (
            f"SIGSTOP {slot.name} in saga {locked}'s atomic step (pid {pid}), lock "
            f"{'held' if held else 'NOT held'}; from the freeze: its deadline "
            f"{after(locked_deadline)}, probe {probe}'s deadline {after(passed_at)}, "
            f"probe ended {after(ended_at)}, lock released {after(released_at)}, "
            f"thawed {after(thawed_at)}"
        )

    def _frozen_lock_holder(self: Injector) -> tuple[str, int]:
        """Start ``chaos.locked`` runs until one's step froze inside its lock; returns
        the run and the frozen pid. A run whose deadline passes before a worker takes
        its step (a backlog) never runs it: the next try starts another."""
        for _ in range(3):
            saga_id = self.probes.start_locked()
            pidfile = self.pid_dir / f"{saga_id}.pid"
            try:
                wait_until(pidfile.exists, timeout=15, every=0.05, what="chaos.locked's step")
            except WaitTimeout:
                continue
            pid = int(pidfile.read_text())
            wait_until(
                lambda pid=pid: _proc_state(pid) == "T",
                timeout=10,
                every=0.02,
                what=f"pid {pid} to stop itself inside saga {saga_id}'s lock",
            )
            return saga_id, pid
        raise RuntimeError("no chaos.locked step started before its deadline, in 3 runs")

    def _worker_of(self: Injector, pid: int) -> Slot:
        slot = next((s for s in self.topology.role("worker") if pid in s.children()), None)
        if slot is None:
            raise RuntimeError(f"no running worker owns pid {pid} (restarted meanwhile?)")
        return slot

    # --- time: deadlines during a retry wait and during a running step --------------------

    def _deadline_passes(self: Injector, record: FaultRecord) -> None:
        """Three runs whose deadline passes while a step that acted waits for its retry
        (it failed; its worker died) or while a step still runs. Each must end
        ``compensated`` with that step undone, and never before it settled.

        The harness makes each deadline pass (``deadline_at`` = now) as soon as its
        probe's ``charge`` step is in the state it aims at, so a queue backlog
        cannot make a probe miss its moment.
        """
        runs = self.probes.start_deadline_probes()
        aims = {
            # acted, failed, waits for its retry (compensate_on_failure)
            "wait": lambda s: s["state"] == "pending" and s["attempts"] >= 1,
            # acted, its worker died, the sweeper counted the lost attempt: waits
            "lost": lambda s: s["state"] == "pending" and s["interrupted"],
            # its attempt is running (it acts at the end of a 5 s call)
            "running": lambda s: s["state"] == "running" and s["lease_token"] is not None,
        }
        passed: dict[str, float] = {}

        def all_passed() -> bool:
            for name, saga_id in runs.items():
                step = None if name in passed else self.probes.step_of(saga_id, "charge")
                if step is not None and aims[name](step) and self.probes.pass_deadline(saga_id):
                    passed[name] = time.time()
            return len(passed) == len(runs)

        with contextlib.suppress(WaitTimeout):  # reported below, and by check 12
            wait_until(all_passed, timeout=45, every=0.1, what="the deadline probes' moments")
        for name, saga_id in runs.items():
            if name not in passed:  # missed its moment: end it all the same
                self.probes.pass_deadline(saga_id)
        ids = list(runs.values())
        wait_until(
            lambda: self.probes.all_terminal(ids),
            timeout=60,
            every=0.5,
            what=f"the deadline probes {runs} to end",
        )
        record.fired = bool(passed)
        record.probes = {"runs": runs, "passed": passed}
        ended = self.probes.states(ids)
        record.detail = ", ".join(
            f"{name}: deadline {'passed in its moment' if name in passed else 'NOT passed'}, "
            f"{ended.get(saga_id)}"
            for name, saga_id in runs.items()
        )

    # --- deploys: a definition renamed while runs are in flight ---------------------------

    def _definition_renamed(self: Injector, record: FaultRecord) -> None:
        """Deploy the next release of ``chaos.deploy`` (its second step renamed) to a
        worker pool while runs are in flight; the pool keeps it until the heal.

        Runs are started 0.4 s apart, and the pool is replaced once three of them
        are past their second step, so some runs are mid-step when the new code arrives;
        a few more are started by the old code after it. Runs may end ``failed``
        (the new code refuses a step it does not know: a person must look), never
        ``compensated`` with a step that acted left in place.
        """
        runs: list[str] = []
        record.probes = {"runs": runs, "slots": []}
        for i in range(6):
            runs.append(self.probes.start_deploy(fail=i % 2 == 0))
            time.sleep(0.4)
        # Behind a queue backlog the runs are in flight all the same: deploy anyway.
        with contextlib.suppress(WaitTimeout):
            wait_until(
                lambda: self.probes.steps_succeeded(runs, "charge") >= 3,
                timeout=30,
                every=0.2,
                what="three chaos.deploy runs past their second step",
            )
        past = self.probes.steps_succeeded(runs, "charge")
        workers = self.topology.role("worker")
        count = min(self.timings.deploy_slots, len(workers))
        slots = sorted(self.rng.sample(workers, count), key=lambda s: s.index)
        record.probes["slots"] = [s.name for s in slots]
        self.topology.roll_each(
            [(s, {"CHAOS_SAGA_VARIANT": "renamed"}) for s in slots], lasting=True
        )
        for i in range(4):
            runs.append(self.probes.start_deploy(fail=i % 2 == 1))
        record.detail = (
            f"{', '.join(s.name for s in slots)} rolled to chaos.deploy's second step "
            f"renamed; {len(runs)} runs around it, {past} of the first 6 past that step"
        )

    # --- time: worker clocks off from the database's --------------------------------------

    def _clock_skew(self: Injector, record: FaultRecord) -> None:
        """Worker pools whose wall clock is behind and ahead of the database's (the
        ``clock/sitecustomize.py`` hook) while ``chaos.clock`` probes run; then their
        clocks are put right.

        A lease must never be taken from an attempt that runs within its timeout, and
        a retry must never start before its backoff ran out, whichever clock the
        workers that sent and received its messages had.
        """
        offsets = list(self.timings.skew)
        workers = self.topology.role("worker")
        chosen = sorted(self.rng.sample(workers, min(len(offsets), len(workers))), key=str)
        plan = [(slot, skewed_env(offset)) for slot, offset in zip(chosen, offsets, strict=False)]
        sizes = {slot.name: len(slot.log_text()) for slot in chosen}
        self.topology.roll_each(plan)
        wait_until(
            lambda: all("ready." in s.log_text()[sizes[s.name] :] for s in chosen),
            timeout=90,
            every=0.5,
            what=f"the skewed pools {[s.name for s in chosen]} to start",
        )
        runs = []
        try:
            for _ in range(self.timings.clock_probes):
                runs.append(self.probes.start_clock())
                time.sleep(0.2)
            wait_until(
                lambda: self.probes.all_terminal(runs),
                timeout=90,
                every=0.5,
                what="the chaos.clock probes to end",
            )
        finally:
            self.topology.roll_each([(slot, {}) for slot in chosen])
        skews = self.probes.effect_skews(runs)
        skewed = [s for s in skews if abs(s) > 10.0]
        record.fired = bool(skewed)
        record.probes = {
            "runs": runs,
            "skew": {s.name: env["CHAOS_CLOCK_SKEW"] for s, env in plan},
        }
        clocks = ", ".join(f"{s.name} {env['CHAOS_CLOCK_SKEW']} s" for s, env in plan)
        record.detail = (
            f"{clocks} (wall clock shifted by a sitecustomize hook); "
            f"{len(runs)} chaos.clock probes, {len(skewed)} of {len(skews)} effects "
            f"written on a skewed clock"
        )

    # --- broker: slow, not down -------------------------------------------------------------

    def _slow_broker(self: Injector, record: FaultRecord) -> None:
        """The relays' broker answers slowly: every reply held ``delay`` seconds, then
        handed on a byte at a time, so a publish outlives the relay's hold limit
        (``OUTBOX_PUBLISH_TIMEOUT``) while no read waits as long as the socket timeout."""
        delay, interval = self.timings.slow_reply
        before = self.proxy.slowed_replies
        self.proxy.slow(delay, interval)
        try:
            time.sleep(self.timings.slow_broker)
        finally:
            self.proxy.fast()
        slowed = self.proxy.slowed_replies - before
        record.fired = slowed > 0
        record.probes = {"hold_limit": self.timings.publish_hold_limit}
        record.detail = (
            f"relays' Redis replies held {delay:g} s then 1 byte per {interval:g} s for "
            f"{self.timings.slow_broker:g} s ({slowed} replies slowed; hold limit "
            f"{self.timings.publish_hold_limit:g} s)"
        )
