"""The chaos harness: ``python -m tests.chaos.run --profile long --minutes 15 --out docs/chaos``.

Starts a private PostgreSQL cluster and Redis on loopback, the shop's web server
(gunicorn), celery workers, long-lived relays and beats; drives ``POST /api/checkout``
while injecting seeded faults; then heals, drains, checks every invariant and writes one
table (Markdown) and one plot (PNG). Exit status: 0 when every invariant holds, 1 when
one is violated (what a control run must show), 2 when the harness itself failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from tests.services import PrivateRedis, free_port

from . import faults as faults_mod
from .cluster import PrivatePostgres
from .faults import ALL_KINDS, Injector, Timings
from .load import CATALOGUE, STEP_FAILS, LoadGenerator
from .topology import ROOT, Topology

DBNAME = "sagaflow_chaos"


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

PROFILES = {
    # make test: every kind once, short outages.
    "short": Profile(
        seconds=130,
        drain=150.0,
        timings=Timings(redis_down=10.0, redis_pause=5.0, point_wait=40.0),
    ),
    # make chaos: every kind, again and again, the durations.
    "long": Profile(seconds=900, repeat=True, drain=400.0, timings=Timings()),
    "control": CONTROL,
    # which unsafe setting does the damage: each alone, same faults.
    "control-acks": replace(CONTROL, unsafe=("acks",)),
    "control-publish": replace(CONTROL, unsafe=("publish",)),
    "control-sweeper": replace(CONTROL, unsafe=("sweeper",)),
}


class Log:
    def __init__(self, path: Path | None) -> None:
        self.t0 = time.time()
        self.file = path.open("a") if path else None
        self.lock = threading.Lock()

    def __call__(self, message: str) -> None:
        now = time.time()
        stamp = datetime.fromtimestamp(now, UTC).strftime("%H:%M:%S.%f")[:-3]
        line = f"[{stamp} +{now - self.t0:7.1f}s] {message}"
        with self.lock:
            print(line, flush=True)
            if self.file:
                self.file.write(line + "\n")
                self.file.flush()


class Sampler(threading.Thread):
    """Once a second: settled and pending orders, outbox backlog, live sagas."""

    SQL = """
        SELECT (SELECT count(*) FROM demo_shop_order WHERE status <> 'pending'),
               (SELECT count(*) FROM demo_shop_order WHERE status = 'pending'),
               (SELECT count(*) FROM sagaflow_outboxevent WHERE state = 'pending'),
               (SELECT count(*) FROM sagaflow_saga
                 WHERE state IN ('pending', 'running', 'compensating')),
               (SELECT count(*) FROM sagaflow_inboxmessage WHERE state = 'failed'),
               (SELECT count(*) FROM demo_shop_order o WHERE o.status = 'cancelled' AND (
                    EXISTS (SELECT 1 FROM demo_shop_charge c WHERE c.order_ref = 'order-' || o.id
                            AND c.state IN ('authorised', 'captured'))
                    OR EXISTS (SELECT 1 FROM demo_shop_shipment s
                               WHERE s.order_ref = 'order-' || o.id AND s.state = 'scheduled')
                    OR EXISTS (SELECT 1 FROM demo_shop_stockhold h
                               WHERE h.order_id = o.id AND h.state = 'held')))
    """

    def __init__(self, dsn: str) -> None:
        super().__init__(name="sampler", daemon=True)
        self.dsn = dsn
        self.samples: list[dict] = []
        self.stopping = threading.Event()
        self.conn = None

    def read(self) -> dict:
        sample: dict = {"t": time.time(), "settled": None}
        try:
            if self.conn is None or self.conn.closed:
                self.conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=2)
            row = self.conn.execute(self.SQL).fetchone()
            keys = (
                "settled",
                "pending_orders",
                "outbox_pending",
                "live_sagas",
                "inbox_failed",
                "cancelled_not_given_back",
            )
            sample.update(dict(zip(keys, row, strict=True)))
        except psycopg.Error:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None
        return sample

    def run(self) -> None:
        while not self.stopping.wait(1.0):
            self.samples.append(self.read())

    def last(self) -> dict:
        return self.samples[-1] if self.samples else {"settled": None}

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
        with contextlib.suppress(Exception):
            self.conn.close()


def wait_until(condition, *, timeout: float, every: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if condition():
                return True
        time.sleep(every)
    return False


def _web_ready(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        return response.status == 200


def _setup_django(env: dict[str, str]) -> None:
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from demo_shop import chaos, seed

    seed.reset(catalogue=CATALOGUE)
    seed.arm_demo_faults()
    chaos.arm("payments", "error", operation="authorise", customer=STEP_FAILS, rate=1.0)


def _arm_customer(customer: str) -> None:
    """A compensation that keeps failing: every try of ``cancel_payment`` errors."""
    from django.db import close_old_connections, transaction

    from demo_shop import chaos
    from demo_shop.sagas import UNDO_RETRY

    close_old_connections()
    with transaction.atomic():
        chaos.arm("shipping", "decline", operation="schedule", customer=customer, rate=1.0)
        chaos.arm(
            "payments",
            "error",
            operation="cancel",
            customer=customer,
            remaining=UNDO_RETRY.attempts,
        )


def _start_poison() -> str:
    from django.db import close_old_connections, transaction

    from demo_shop.celery import app
    from tests.chaos.chaosapp.sagas import poison

    close_old_connections()
    with transaction.atomic():
        saga = poison.start({})
    app.send_task("sagaflow.execute_step", args=(2**31 - 1, "forward"))
    app.send_task("sagaflow.execute_step", args=("garbage", "sideways"))
    return f"saga {saga.id} whose step SIGKILLs its worker; 2 malformed step messages"


def _start_slow() -> str:
    from django.db import close_old_connections, transaction

    from tests.chaos.chaosapp.sagas import slow

    close_old_connections()
    with transaction.atomic():
        return str(slow.start({"sleep": 3.0}).id)


def _run_faults(injector: Injector, profile: Profile, t0: float, stop: threading.Event, log):
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
            # ran long; the load is held open until it is done (see the main loop).
            if (profile.repeat and at > end) or stop.wait(max(0.0, at - time.time())):
                if not profile.repeat:
                    log(f"fault {kind}: not injected (stopped)")
                return
            injector.inject(kind)
        cycle += 1
        if not profile.repeat:
            return


def _recovery_times(records, log) -> None:
    """Seconds from a fault's end until the first checkout placed after it settled."""
    from demo_shop.models import Order

    orders = list(Order.objects.exclude(settled_at=None).values_list("created_at", "settled_at"))
    for record in records:
        end = datetime.fromtimestamp(record["ended"], UTC)
        after = [s for c, s in orders if c >= end]
        record["recovery"] = (min(after) - end).total_seconds() if after else None


def _outcomes() -> tuple[dict, dict]:
    from demo_shop.models import Order
    from sagaflow.models import Saga

    sagas: dict = defaultdict(Counter)
    for name, state in Saga.objects.values_list("name", "state"):
        sagas[name][state] += 1
    orders: dict = defaultdict(Counter)
    for style, status in Order.objects.values_list("style", "status"):
        orders[style][status] += 1
    return {k: dict(v) for k, v in sagas.items()}, {k: dict(v) for k, v in orders.items()}


def run(
    profile_name: str, profile: Profile, seed: int, out: Path | None, logs: Path | None, log: Log
) -> dict:
    started_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    wall0 = time.monotonic()
    rng = random.Random(seed)
    if logs is None:
        log_dir = Path(tempfile.mkdtemp(prefix="sagaflow-chaos-logs-"))
    else:
        log_dir = logs / profile_name
        log_dir.mkdir(parents=True, exist_ok=True)
    pid_dir = log_dir / "pids"
    pid_dir.mkdir(exist_ok=True)
    log(f"profile {profile_name}, seed {seed}, {profile.seconds:.0f} s of load; logs {log_dir}")
    postgres = redis = topology = sampler = load = None
    fault_stop = threading.Event()
    fault_thread = None
    try:
        postgres = PrivatePostgres()
        redis = PrivateRedis()
        postgres.create_database(DBNAME)
        log(f"private PostgreSQL on 127.0.0.1:{postgres.port}, Redis on 127.0.0.1:{redis.port}")
        env = {
            "DJANGO_SETTINGS_MODULE": "tests.chaos.settings",
            "DATABASE_URL": postgres.dsn(DBNAME),
            "CELERY_BROKER_URL": redis.url,
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "DJANGO_DEBUG": "0",
            "CHAOS_UNSAFE": ",".join(profile.unsafe),
            "CHAOS_PID_DIR": str(pid_dir),
        }
        _setup_django(env)
        from django.conf import settings

        web_port = free_port()
        topology = Topology(
            env={**os.environ, **env},
            log_dir=log_dir,
            workers=profile.workers,
            relays=profile.relays,
            beats=profile.beats,
            web_port=web_port,
        )
        topology.on_restart = log
        topology.start()
        ready = wait_until(
            lambda: (
                _web_ready(web_port)
                and all("ready." in s.log_text() for s in topology.role("worker"))
            ),
            timeout=120,
        )
        if not ready:
            raise RuntimeError(f"topology not ready in 120 s; logs in {log_dir}")
        topo_text = (
            f"{profile.workers} celery workers x 2 pool children, {profile.relays} relays, "
            f"{profile.beats} beats, gunicorn 2 workers x 4 threads; private PostgreSQL "
            f"and Redis on loopback; load {profile.rate:g} keys/s from {profile.threads} clients"
        )
        log(f"topology ready: {topo_text}")

        sampler = Sampler(postgres.dsn(DBNAME))
        sampler.start()
        injector = Injector(
            topology=topology,
            postgres=postgres,
            redis=redis,
            dbname=DBNAME,
            rng=random.Random(rng.getrandbits(32)),
            timings=profile.timings,
            log=log,
            start_poison=_start_poison,
            start_slow=_start_slow,
            pid_dir=pid_dir,
        )
        load = LoadGenerator(
            f"http://127.0.0.1:{web_port}",
            rate=profile.rate,
            threads=profile.threads,
            seed=seed,
            arm_customer=_arm_customer,
        )
        t0 = time.time()
        load.start()
        fault_thread = threading.Thread(
            target=_run_faults, args=(injector, profile, t0, fault_stop, log), daemon=True
        )
        fault_thread.start()
        # Load for the profile's time; a single pass of faults that ran long keeps
        # the load open until its last fault is in (at most FAULT_OVERRUN more).
        while time.time() < t0 + profile.seconds or (
            not profile.repeat
            and fault_thread.is_alive()
            and time.time() < t0 + profile.seconds + FAULT_OVERRUN
        ):
            time.sleep(5)
            s = sampler.last()
            log(
                f"load: {load.stats.keys} keys, {load.stats.requests} requests; "
                f"settled {s.get('settled')}, pending {s.get('pending_orders')}, "
                f"outbox {s.get('outbox_pending')}, live sagas {s.get('live_sagas')}"
            )
        fault_stop.set()
        log("load: no new keys; finishing keys in progress")
        load.stop()
        fault_thread.join(timeout=120)
        load_end = time.time()
        log("heal: every process up, nothing paused")
        redis.unpause()
        topology.heal()

        def drained() -> bool:
            s = sampler.read()
            # Quiet: nothing in flight, and reconcile has given back what cancelled
            # orders still held (it runs every few seconds).
            busy = ("pending_orders", "outbox_pending", "live_sagas", "inbox_failed")
            return s["settled"] is not None and not any(
                s[k] for k in (*busy, "cancelled_not_given_back")
            )

        drained_ok = wait_until(drained, timeout=profile.drain, every=1.0)
        drain_end = time.time()
        log(f"drain: {'done' if drained_ok else 'NOT drained'} in {drain_end - load_end:.1f} s")

        from django.db import close_old_connections

        from . import checks

        close_old_connections()
        process_logs = topology.logs()
        fault_records = [r.as_dict() for r in injector.records]
        frozen = [r["saga_id"] for r in fault_records if r["saga_id"] and r["fired"]]
        results, counts = checks.run_all(
            load.stats, process_logs, float(settings.SWEEP_INTERVAL), frozen
        )
        _recovery_times(fault_records, log)
        sagas, orders = _outcomes()
        settled_during = [x["settled"] for x in sampler.samples if x.get("settled") is not None]
        load_seconds = load_end - t0
        stats = load.stats
        lost_kinds = ("1 ", "2a", "4 every order")
        lost = sum(r.violations for r in results if r.name.startswith(lost_kinds))
        windows = [(r["started"], r["ended"] + 5.0) for r in fault_records]
        errors_5xx = [t for t, status in stats.timeline if status >= 500]
        outside = [t for t in errors_5xx if not any(a <= t <= b for a, b in windows)]
        restarts = Counter(name.split("-")[0] for _, name in topology.restarts)
        summary = {
            "profile": profile_name,
            "seed": seed,
            "unsafe": profile.unsafe,
            "started_at": started_at,
            "topology": topo_text,
            "t0": t0,
            "load_end": load_end,
            "drain_end": drain_end,
            "load_seconds": load_seconds,
            "drain_seconds": drain_end - load_end if drained_ok else None,
            "drained": drained_ok,
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
            "wall_seconds": time.monotonic() - wall0,
            "log_dir": str(log_dir),
        }
        if summary["violations"]:
            dump = log_dir / f"{DBNAME}.dump"
            with contextlib.suppress(Exception):
                postgres.dump(DBNAME, dump)
                log(f"violations: database dumped to {dump} for the post-mortem")
        from .report import plot, table

        text = table(summary)
        print(text, flush=True)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            stem = f"chaos-{profile_name}"
            (out / f"{stem}.md").write_text(text)
            if not plot(summary, sampler.samples, out / f"{stem}.png"):
                log("no plot: matplotlib is not installed (pip install -e '.[chaos]')")
            (out / f"{stem}.json").write_text(
                json.dumps({**summary, "samples": sampler.samples}, indent=1, default=str)
            )
            log(f"wrote {out / stem}.md, .png and .json")
        return summary
    finally:
        fault_stop.set()
        if load is not None:
            load._stop.set()
        if sampler is not None:
            sampler.stop()
        if topology is not None:
            topology.close()
        if redis is not None:
            redis.close()
        if postgres is not None:
            with contextlib.suppress(Exception):
                from django.db import connections

                connections.close_all()
            postgres.close()


def _terminate(signum, frame):
    # SIGTERM (a test's timeout, Ctrl-C in make) unwinds through run()'s ``finally``,
    # so the private servers and every process are torn down.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="long")
    parser.add_argument("--minutes", type=float, default=None, help="override the load length")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--kinds", default=None, help="comma-separated fault kinds (debugging)")
    parser.add_argument("--out", type=Path, default=None, help="write .md, .png, .json here")
    parser.add_argument(
        "--logs", type=Path, default=None, help="process logs here (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    if args.minutes is not None:
        profile = replace(profile, seconds=args.minutes * 60)
    if args.seconds is not None:
        profile = replace(profile, seconds=args.seconds)
    if args.kinds:
        profile = replace(profile, kinds=tuple(args.kinds.split(",")))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"chaos-{args.profile}.log").write_text("")
    log = Log((args.out / f"chaos-{args.profile}.log") if args.out else None)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        summary = run(args.profile, profile, args.seed, args.out, args.logs, log)
    except (Exception, KeyboardInterrupt):
        traceback.print_exc()
        return 2
    return 0 if summary["violations"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
