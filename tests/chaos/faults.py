"""The fault catalogue and its seeded schedule.

Each fault is a function that breaks something, waits, and heals what it broke; it
returns a :class:`FaultRecord` with wall-clock start and end (the shaded interval of
the plot). Process crashes are healed by the topology's supervisor (a restart). The
kinds that aim at sagas of their own, and the slow broker, are in ``probe_faults``;
``docs/chaos/README.md`` maps every kind to the fault classes of DESIGN §8.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.services import PrivateRedis
from tests.waiting import WaitTimeout, wait_until

from .cluster import PrivatePostgres
from .probe_faults import ProbeFaults
from .proxy import LatencyProxy
from .topology import Topology

#: Named fault points armed in a process's environment (``sagaflow/faults.py``).
WORKER_POINTS = ("step.after_action", "compensation.after_action")
RELAY_POINTS = ("relay.after_claim", "relay.after_publish")

ALL_KINDS = (
    "kill_worker_child",
    "kill_worker",
    "stop_worker_past_lease",
    *(f"point:{p}" for p in WORKER_POINTS + RELAY_POINTS),
    "redis_stop",
    "redis_restart_empty",
    "redis_pause_writes",
    "pg_restart_fast",
    "pg_restart_immediate",
    "pg_terminate_backends",
    "poison_message",
    # The classes of DESIGN §8 the kinds above never injected (probe_faults.py).
    "stop_lock_holder",
    "slow_broker",
    "deadline_passes",
    "definition_renamed",
    "clock_skew",
)


@dataclass
class FaultRecord:
    kind: str
    started: float
    ended: float = 0.0
    detail: str = ""
    fired: bool = True
    #: The saga a fault aimed at (a frozen step whose late result must be rejected).
    saga_id: str = ""
    #: What the checks of a probe fault need (``probe_faults``, ``fault_checks``).
    probes: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "saga_id": self.saga_id,
            "probes": self.probes,
            "kind": self.kind,
            "started": self.started,
            "ended": self.ended,
            "detail": self.detail,
            "fired": self.fired,
        }


@dataclass
class Timings:
    lease: float = 12.0  # the demo's step timeout (10 s) + LEASE_GRACE (2 s)
    lease_grace: float = 2.0  # settings.SAGAFLOW["LEASE_GRACE"]
    redis_down: float = 30.0
    redis_pause: float = 10.0
    point_wait: float = 60.0
    #: How long the relays' broker is slow, and how: (seconds each reply is held,
    #: seconds between its bytes after that).
    slow_broker: float = 30.0
    slow_reply: tuple[float, float] = (3.0, 2.0)
    publish_hold_limit: float = 8.0  # settings.SAGAFLOW["OUTBOX_PUBLISH_TIMEOUT"]
    #: Worker pools restarted with the next release of ``chaos.deploy``.
    deploy_slots: int = 1
    #: The wall-clock offsets (seconds) of the skewed worker pools, one pool each.
    skew: tuple[float, ...] = (-30.0, 30.0)
    clock_probes: int = 8


@dataclass
class Injector(ProbeFaults):
    topology: Topology
    postgres: PrivatePostgres
    redis: PrivateRedis
    dbname: str
    rng: random.Random
    timings: Timings
    log: Callable[[str], None]
    start_poison: Callable[[], str]
    #: Starts a ``chaos.slow`` run and returns its id.
    start_slow: Callable[[], str]
    pid_dir: Path
    #: ``tests.chaos.probes``: starts the chaos app's probe runs, reads their end.
    probes: Any = None
    #: The private database's DSN (lock probes), and the relays' way to Redis.
    dsn: str = ""
    proxy: LatencyProxy | None = None
    records: list[FaultRecord] = field(default_factory=list)

    def inject(self, kind: str) -> FaultRecord:
        record = FaultRecord(kind, time.time())
        self.log(f"fault {kind}: start")
        try:
            if kind.startswith("point:"):
                self._point(record, kind.removeprefix("point:"))
            else:
                getattr(self, "_" + kind)(record)
        except Exception as exc:  # a fault that could not be injected is reported, not fatal
            record.fired = False
            record.detail = f"{record.detail} (injection error: {exc!r})".strip()
        record.ended = max(time.time(), record.started)
        self.log(
            f"fault {kind}: end after {record.ended - record.started:.1f} s; {record.detail}"
            + ("" if record.fired else " [did not fire]")
        )
        self.records.append(record)
        return record

    # --- processes -------------------------------------------------------------------------

    def _busy_worker(self):
        workers = [s for s in self.topology.role("worker") if s.alive() and s.children()]
        if not workers:
            raise RuntimeError("no live worker with pool children")
        return self.rng.choice(workers)

    def _kill_worker_child(self, record: FaultRecord) -> None:
        slot = self._busy_worker()
        pid = self.rng.choice(slot.children())
        os.kill(pid, signal.SIGKILL)
        record.detail = f"SIGKILL pool child {pid} of {slot.name}"

    def _kill_worker(self, record: FaultRecord) -> None:
        slot = self._busy_worker()
        with self.topology.held():
            slot.hold_until = time.monotonic() + 3.0
            slot.kill()
        record.detail = f"SIGKILL {slot.name} (main process and children), restarted after 3 s"
        time.sleep(3.5)

    def _stop_worker_past_lease(self, record: FaultRecord) -> None:
        """Freeze the worker running a ``chaos.slow`` step past the step's lease.

        Its pool children are thawed first and its main process 4 s later, so the
        frozen attempt finishes and tries to record its result (while the main process
        is still stopped it cannot enforce Celery's time limit and kill the child). By
        then the sweeper has handed the step to another worker: the late result must
        be rejected.
        """
        record.saga_id = self.start_slow()
        pidfile = self.pid_dir / f"{record.saga_id}.pid"
        # Generous: after a worker kill or a broker outage the step may wait behind
        # a backlog before a worker takes it.
        wait_until(
            pidfile.exists,
            timeout=120,
            every=0.05,
            what=f"the slow step of saga {record.saga_id} to start (its pid file)",
        )
        pid = int(pidfile.read_text())
        slot = next((s for s in self.topology.role("worker") if pid in s.children()), None)
        if slot is None:
            raise RuntimeError(f"no running worker owns pid {pid} (restarted meanwhile?)")
        children = slot.children()
        pause = self.timings.lease + 4.0
        slot.signal_group(signal.SIGSTOP)
        time.sleep(pause)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGCONT)
        time.sleep(4.0)
        slot.signal_group(signal.SIGCONT)
        record.detail = (
            f"SIGSTOP {slot.name} (running saga {record.saga_id}'s step in pid {pid}) for "
            f"{pause:.0f} s, lease {self.timings.lease:.0f} s; children thawed 4 s before main"
        )

    def _point(self, record: FaultRecord, point: str) -> None:
        role = "worker" if point in WORKER_POINTS else "relay"
        slot = self.rng.choice(self.topology.role(role))
        # The point fires once per directory: kept (with the logs), a process started
        # with it still armed can never fire again.
        once = Path(tempfile.mkdtemp(prefix="once-", dir=self.pid_dir))
        armed = {"SAGAFLOW_FAULTS": f"{point}=kill", "SAGAFLOW_FAULTS_ONCE_DIR": str(once)}
        self.topology.replace(slot, armed)
        fired = once / f"{point}.fired"
        # Compensations are rare in the load: start runs that compensate at once
        # (one a second) until one is run by the armed worker.
        nudge = self.probes.start_undo if point == "compensation.after_action" else None
        next_nudge = time.monotonic()

        def reached() -> bool:
            nonlocal next_nudge
            if nudge is not None and time.monotonic() >= next_nudge:
                next_nudge = time.monotonic() + 1.0
                with contextlib.suppress(Exception):  # the database may be restarting
                    nudge()
            return fired.exists()

        with contextlib.suppress(WaitTimeout):  # not reached in time: recorded as not fired
            wait_until(
                reached,
                timeout=self.timings.point_wait,
                every=0.2,
                what=f"{point} to fire in {slot.name}",
            )
        record.fired = fired.exists()
        if record.fired:
            time.sleep(1.0)  # let the crash happen (the file is written just before the kill)
            # Spent: the supervisor's restart (or the heal) drops it, no restart needed.
            with self.topology.held():
                slot.extra_env = {}
        else:  # still armed: disarm it now, or it would fire later, unaccounted for
            self.topology.replace(slot, {})
        record.detail = f"{point}=kill in {slot.name}"

    # --- redis -----------------------------------------------------------------------------

    def _redis_stop(self, record: FaultRecord) -> None:
        self.redis.stop()
        time.sleep(self.timings.redis_down)
        self.redis.start()
        record.detail = f"redis down {self.timings.redis_down:.0f} s, back empty"

    def _redis_restart_empty(self, record: FaultRecord) -> None:
        queued = 0
        with contextlib.suppress(Exception):
            queued = int(self.redis.client().dbsize())
        self.redis.stop()
        self.redis.start()
        record.detail = f"redis restarted without persistence ({queued} keys lost)"

    def _redis_pause_writes(self, record: FaultRecord) -> None:
        self.redis.pause_writes(self.timings.redis_pause)
        time.sleep(self.timings.redis_pause)
        self.redis.unpause()
        record.detail = f"CLIENT PAUSE WRITE {self.timings.redis_pause:.0f} s"

    # --- postgresql ------------------------------------------------------------------------

    def _pg_restart_fast(self, record: FaultRecord) -> None:
        self.postgres.restart("fast")
        record.detail = "pg_ctl restart -m fast"

    def _pg_restart_immediate(self, record: FaultRecord) -> None:
        self.postgres.restart("immediate")
        record.detail = "pg_ctl restart -m immediate (crash recovery)"

    def _pg_terminate_backends(self, record: FaultRecord) -> None:
        n = self.postgres.terminate_backends(self.dbname, 0.5, self.rng)
        record.detail = f"pg_terminate_backend on {n} client backends"

    # --- workload --------------------------------------------------------------------------

    def _poison_message(self, record: FaultRecord) -> None:
        record.detail = self.start_poison()


def schedule(
    kinds: list[str], *, seconds: float, warmup: float, tail: float, rng: random.Random
) -> list[tuple[float, str]]:
    """Start offsets for ``kinds`` (shuffled) spread over the load, seeded."""
    order = list(kinds)
    rng.shuffle(order)
    span = max(1.0, seconds - warmup - tail)
    slot = span / max(1, len(order))
    return [(warmup + i * slot + rng.uniform(0, slot * 0.3), kind) for i, kind in enumerate(order)]
