"""One run's verdict: every invariant checked after heal and drain, and the summary that
the report, the JSON file and the suite's assertions read.

Called in the harness's process once the backlog has drained (or the drain gave up);
Django is set up on the private database by then.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .faults import Injector
from .load import LoadGenerator
from .observe import Sampler
from .schedule import Profile
from .topology import Topology


@dataclass
class RunRecord:
    """What the summary says about a run besides what the checks find: which run it
    was, and when its phases ended (wall clock, ``time.time()``)."""

    profile_name: str
    profile: Profile
    seed: int
    started_at: str  # for people: "2026-01-31 12:00 UTC"
    wall0: float  # ``time.monotonic()`` at the start, for the wall time
    log_dir: Path
    topology_text: str = ""
    t0: float = 0.0  # the load's start
    load_end: float = 0.0
    drain_end: float = 0.0
    drained: bool = False


def recovery_times(records: list[dict]) -> None:
    """Seconds from a fault's end until the first checkout placed after it settled."""
    from demo_shop.models import Order

    orders = list(Order.objects.exclude(settled_at=None).values_list("created_at", "settled_at"))
    for record in records:
        end = datetime.fromtimestamp(record["ended"], UTC)
        after = [s for c, s in orders if c >= end]
        record["recovery"] = (min(after) - end).total_seconds() if after else None


def outcomes() -> tuple[dict, dict]:
    """Sagas by name and state, orders by style and status."""
    from demo_shop.models import Order
    from sagaflow.models import Saga

    sagas: dict = defaultdict(Counter)
    for name, state in Saga.objects.values_list("name", "state"):
        sagas[name][state] += 1
    orders: dict = defaultdict(Counter)
    for style, status in Order.objects.values_list("style", "status"):
        orders[style][status] += 1
    return {k: dict(v) for k, v in sagas.items()}, {k: dict(v) for k, v in orders.items()}


def summarise(
    run: RunRecord,
    *,
    topology: Topology,
    injector: Injector,
    load: LoadGenerator,
    sampler: Sampler,
) -> dict:
    """Check every invariant and gather the run's figures into one JSON-able dict."""
    from django.conf import settings
    from django.db import close_old_connections

    from . import checks

    close_old_connections()
    process_logs = topology.logs()
    fault_records = [r.as_dict() for r in injector.records]
    results, counts = checks.run_all(
        load.stats,
        process_logs,
        float(settings.SWEEP_INTERVAL),
        fault_records,
        list(topology.restarts),
        float(settings.SAGAFLOW["LEASE_GRACE"]),
    )
    recovery_times(fault_records)
    sagas, orders = outcomes()
    settled_during = [x["settled"] for x in sampler.samples if x.get("settled") is not None]
    t0, load_end, drain_end = run.t0, run.load_end, run.drain_end
    load_seconds = load_end - t0
    stats = load.stats
    lost_kinds = ("1 ", "2a", "4 every order")
    lost = sum(r.violations for r in results if r.name.startswith(lost_kinds))
    windows = [(r["started"], r["ended"] + 5.0) for r in fault_records]
    errors_5xx = [t for t, status in stats.timeline if status >= 500]
    outside = [t for t in errors_5xx if not any(a <= t <= b for a, b in windows)]
    restarts = Counter(name.split("-")[0] for _, name in topology.restarts)
    return {
        "profile": run.profile_name,
        "seed": run.seed,
        "unsafe": run.profile.unsafe,
        "started_at": run.started_at,
        "topology": run.topology_text,
        "t0": t0,
        "load_end": load_end,
        "drain_end": drain_end,
        "load_seconds": load_seconds,
        "drain_seconds": drain_end - load_end if run.drained else None,
        "drained": run.drained,
        "faults": fault_records,
        "saga_states": ["completed", "compensated", "failed", "running", "compensating"],
        "sagas": sagas,
        "orders": orders,
        "load": {
            "keys": stats.keys,
            "requests": stats.requests,
            "transport_errors": stats.transport_errors,
            "in_flight_409": stats.in_flight_409,
            "replays_identical": stats.replays_identical,
            "statuses": {str(k): v for k, v in stats.statuses.items()},
            "scenarios": dict(stats.scenarios),
        },
        "counts": {
            "lost (non-terminal sagas, undelivered events, unsettled orders)": lost,
            "unexpected (deliveries never committed, orders without a key)": sum(
                r.violations for r in results if r.name.startswith(("2b", "3b"))
            ),
            "duplicated effects at the services": next(
                r.violations for r in results if r.name.startswith("3a")
            ),
            **counts,
            "HTTP 5xx answers during a fault (+5 s) / outside any fault": (
                f"{len(errors_5xx) - len(outside)} / {len(outside)}"
            ),
            "process exits restarted by the supervisor, by role": (
                ", ".join(f"{k} {v}" for k, v in sorted(restarts.items())) or "none"
            ),
        },
        "invariants": [r.as_dict() for r in results],
        "violations": sum(r.violations for r in results),
        "throughput": (max(settled_during, default=0)) / max(1.0, drain_end - t0),
        "requests_per_second": stats.requests / max(1.0, load_seconds),
        "wall_seconds": time.monotonic() - run.wall0,
        "log_dir": str(run.log_dir),
    }
