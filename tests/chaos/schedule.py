"""What a chaos run does and when: its profiles, and the thread that injects the faults.

A profile says how long the load runs and how hard (clients, keys per second), which
fault kinds are injected (once each in a seeded order, or again and again), how long
the backlog may take to drain, and, for a control run, which unsafe settings are on.
``run_faults`` follows a profile's schedule (``faults.schedule``) on the injector.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from . import faults as faults_mod
from .faults import ALL_KINDS, Injector, Timings


@dataclass(frozen=True)
class Profile:
    seconds: float
    workers: int = 3
    relays: int = 4
    beats: int = 2
    rate: float = 4.0
    threads: int = 6
    kinds: tuple[str, ...] = ALL_KINDS
    repeat: bool = False  # cycle through the kinds until the load ends
    drain: float = 240.0  # longest wait for the backlog to drain
    warmup: float = 8.0
    tail: float = 6.0  # no fault starts this close to the end of the load
    #: Unsafe settings of a control run (``settings.UNSAFE``): acks, publish, sweeper.
    unsafe: tuple[str, ...] = ()
    timings: Timings = field(default_factory=Timings)


#: Seconds a single pass of faults may run past the profile's load time.
FAULT_OVERRUN = 120.0

#: The control: an unsafe configuration under crashes and a Redis restart.
CONTROL = Profile(
    seconds=40,
    workers=2,
    relays=1,
    beats=1,
    threads=4,
    kinds=(
        "kill_worker_child",
        "kill_worker_child",
        "redis_restart_empty",
        "kill_worker_child",
        "kill_worker",
    ),
    drain=30.0,
    warmup=6.0,
    tail=4.0,
    unsafe=("acks", "publish", "sweeper"),
)

#: A control of one probe fault kind: that kind alone, with the fix it tests reverted
#: (``tests/chaos/unsafe/patches.py``); its check must find the damage.
PROBE_CONTROL = replace(CONTROL, seconds=30, kinds=(), drain=90.0)

PROFILES = {
    # make test: every kind once, short outages.
    "short": Profile(
        seconds=130,
        drain=150.0,
        timings=Timings(redis_down=10.0, redis_pause=5.0, point_wait=40.0, slow_broker=15.0),
    ),
    # make chaos: every kind, again and again, the durations.
    "long": Profile(seconds=900, repeat=True, drain=400.0, timings=Timings()),
    "control": CONTROL,
    # which unsafe setting does the damage: each alone, same faults.
    "control-acks": replace(CONTROL, unsafe=("acks",)),
    "control-publish": replace(CONTROL, unsafe=("publish",)),
    "control-sweeper": replace(CONTROL, unsafe=("sweeper",)),
    # hole 1 reverted: the sweeper waits for a frozen worker's lock, nothing bounds it.
    "control-lock": replace(PROBE_CONTROL, kinds=("stop_lock_holder",), unsafe=("lock-wait",)),
    # holes 2 and 3 reverted: a deadline compensates at once, skipping waits that acted.
    "control-deadline": replace(PROBE_CONTROL, kinds=("deadline_passes",), unsafe=("deadline",)),
    # hole 6 reverted: a renamed step counts as "no compensation"; every pool gets it.
    "control-deploy": replace(
        PROBE_CONTROL,
        kinds=("definition_renamed",),
        unsafe=("rename",),
        timings=Timings(deploy_slots=2),
    ),
    # leases and due times on the worker's clock; one pool behind, one ahead.
    "control-clock": replace(
        PROBE_CONTROL, kinds=("clock_skew",), unsafe=("clock",), timings=Timings(clock_probes=16)
    ),
}

#: The control runs ``make chaos`` runs after the long tier (each must exit 1).
CONTROL_PROFILES = tuple(name for name in PROFILES if name.startswith("control"))


def run_faults(
    injector: Injector,
    profile: Profile,
    t0: float,
    stop: threading.Event,
    log: Callable[[str], None],
) -> None:
    """Inject the profile's faults from ``t0`` (wall clock, the load's start) on, until
    the schedule is done or ``stop`` is set: the fault thread's body."""
    rng = injector.rng
    end = t0 + profile.seconds - profile.tail
    cycle = 0
    while not stop.is_set():
        plan = faults_mod.schedule(
            list(profile.kinds),
            seconds=profile.seconds if not profile.repeat else len(profile.kinds) * 45.0,
            warmup=profile.warmup if cycle == 0 else 0.0,
            tail=profile.tail if not profile.repeat else 0.0,
            rng=rng,
        )
        base = time.time()
        for offset, kind in plan:
            at = max(base + offset, time.time() + 3.0)  # at least 3 s between faults
            # A single pass (the short tier) injects every kind even if earlier faults
            # ran long; the load is held open until it is done (see run.load_under_faults).
            if (profile.repeat and at > end) or stop.wait(max(0.0, at - time.time())):
                if not profile.repeat:
                    log(f"fault {kind}: not injected (stopped)")
                return
            injector.inject(kind)
        cycle += 1
        if not profile.repeat:
            return
