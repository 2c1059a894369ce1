"""The chaos harness: ``python -m tests.chaos.run --profile long --minutes 15 --out docs/chaos``.

Starts a private PostgreSQL cluster and Redis on loopback, the shop's web server
(gunicorn), celery workers, long-lived relays and beats; drives ``POST /api/checkout``
while injecting seeded faults; then heals, drains, checks every invariant and writes one
table (Markdown) and one plot (PNG). Exit status: 0 when every invariant holds, 1 when
one is violated (what a control run must show), 2 when the harness itself failed.

This module is the run's phases, in order, and its command line; what each phase uses
lives beside it: ``schedule`` (the profiles, the fault thread), ``observe`` (the log,
the sampler), ``shop`` (what the harness does through Django), ``summary`` (the checks
and the summary) and ``report`` (the table, the plot, the files).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import random
import signal
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from tests.services import PrivateRedis, free_port
from tests.waiting import WaitTimeout, wait_until

from . import probes, report, shop
from .cluster import PrivatePostgres
from .faults import Injector
from .load import LoadGenerator
from .observe import Log, Sampler
from .proxy import LatencyProxy
from .schedule import FAULT_OVERRUN, PROFILES, Profile, run_faults
from .summary import RunRecord, summarise
from .topology import ROOT, Topology

DBNAME = "sagaflow_chaos"


def _web_ready(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        return response.status == 200


def _environment(
    profile: Profile, postgres: PrivatePostgres, redis: PrivateRedis, pid_dir: Path
) -> dict[str, str]:
    """The environment of every process of the run (and of Django in this one)."""
    return {
        "DJANGO_SETTINGS_MODULE": "tests.chaos.settings",
        "DATABASE_URL": postgres.dsn(DBNAME),
        "CELERY_BROKER_URL": redis.url,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "DJANGO_DEBUG": "0",
        "CHAOS_UNSAFE": ",".join(profile.unsafe),
        "CHAOS_PID_DIR": str(pid_dir),
    }


def _wait_ready(topology: Topology, web_port: int, log_dir: Path) -> None:
    wait_until(
        lambda: (
            _web_ready(web_port) and all("ready." in s.log_text() for s in topology.role("worker"))
        ),
        timeout=120,
        every=0.5,
        ignoring=(OSError, http.client.HTTPException),  # the web server still starting
        what=f"the topology (web answering, every worker ready); logs in {log_dir}",
    )


def _load_under_faults(
    record: RunRecord,
    load: LoadGenerator,
    injector: Injector,
    sampler: Sampler,
    fault_stop: threading.Event,
    log: Log,
) -> None:
    """Load for the profile's time while the fault thread follows its schedule; then
    no new keys, and the keys in progress are driven to their answer."""
    profile = record.profile
    record.t0 = t0 = time.time()
    load.start()
    fault_thread = threading.Thread(
        target=run_faults, args=(injector, profile, t0, fault_stop, log), daemon=True
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
    record.load_end = time.time()


def _heal_and_drain(
    record: RunRecord, redis: PrivateRedis, topology: Topology, sampler: Sampler, log: Log
) -> None:
    """Every process up, nothing paused; then wait (at most the profile's drain time)
    until nothing is in flight."""
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

    try:
        wait_until(drained, timeout=record.profile.drain, every=1.0, what="the backlog to drain")
        record.drained = True
    except WaitTimeout:  # reported (and a violation of the checks that follow), not fatal
        record.drained = False
    record.drain_end = time.time()
    log(
        f"drain: {'done' if record.drained else 'NOT drained'} in"
        f" {record.drain_end - record.load_end:.1f} s"
    )


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
    record = RunRecord(profile_name, profile, seed, started_at, wall0, log_dir)
    log(f"profile {profile_name}, seed {seed}, {profile.seconds:.0f} s of load; logs {log_dir}")
    postgres = redis = proxy = topology = sampler = load = None
    fault_stop = threading.Event()
    try:
        # --- the private servers, Django in this process, the topology ------------------
        postgres = PrivatePostgres()
        redis = PrivateRedis()
        postgres.create_database(DBNAME)
        # The relays reach Redis through a proxy that slow_broker turns slow.
        proxy = LatencyProxy(redis.port)
        log(
            f"private PostgreSQL on 127.0.0.1:{postgres.port}, Redis on 127.0.0.1:{redis.port}"
            f" (the relays' way to it: a proxy on 127.0.0.1:{proxy.port})"
        )
        env = _environment(profile, postgres, redis, pid_dir)
        shop.setup_django(env)
        from django.conf import settings

        timings = replace(
            profile.timings,
            lease_grace=float(settings.SAGAFLOW["LEASE_GRACE"]),
            publish_hold_limit=float(settings.SAGAFLOW["OUTBOX_PUBLISH_TIMEOUT"]),
        )
        web_port = free_port()
        topology = Topology(
            env={**os.environ, **env},
            log_dir=log_dir,
            workers=profile.workers,
            relays=profile.relays,
            beats=profile.beats,
            web_port=web_port,
            role_env={"relay": {"CELERY_BROKER_URL": proxy.url}},
        )
        topology.on_restart = log
        topology.start()
        _wait_ready(topology, web_port, log_dir)
        record.topology_text = (
            f"{profile.workers} celery workers x 2 pool children, {profile.relays} relays, "
            f"{profile.beats} beats, gunicorn 2 workers x 4 threads; private PostgreSQL "
            f"and Redis on loopback; load {profile.rate:g} keys/s from {profile.threads} clients"
        )
        log(f"topology ready: {record.topology_text}")

        # --- load under faults, heal, drain ---------------------------------------------
        sampler = Sampler(postgres.dsn(DBNAME))
        sampler.start()
        injector = Injector(
            topology=topology,
            postgres=postgres,
            redis=redis,
            dbname=DBNAME,
            rng=random.Random(rng.getrandbits(32)),
            timings=timings,
            log=log,
            start_poison=shop.start_poison,
            start_slow=shop.start_slow,
            pid_dir=pid_dir,
            probes=probes,
            dsn=postgres.dsn(DBNAME),
            proxy=proxy,
        )
        load = LoadGenerator(
            f"http://127.0.0.1:{web_port}",
            rate=profile.rate,
            threads=profile.threads,
            seed=seed,
            arm_customer=shop.arm_customer,
        )
        _load_under_faults(record, load, injector, sampler, fault_stop, log)
        _heal_and_drain(record, redis, topology, sampler, log)

        # --- the verdict -----------------------------------------------------------------
        summary = summarise(
            record, topology=topology, injector=injector, load=load, sampler=sampler
        )
        if summary["violations"]:
            dump = log_dir / f"{DBNAME}.dump"
            with contextlib.suppress(Exception):
                postgres.dump(DBNAME, dump)
                log(f"violations: database dumped to {dump} for the post-mortem")
        report.write(summary, sampler.samples, out, log)
        return summary
    finally:
        fault_stop.set()
        if load is not None:
            load._stop.set()
        if sampler is not None:
            sampler.stop()
        if topology is not None:
            topology.close()
        if proxy is not None:
            proxy.close()
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
    parser.add_argument("--rate", type=float, default=None, help="new keys/s (debugging)")
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
    if args.rate is not None:
        profile = replace(profile, rate=args.rate)
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
