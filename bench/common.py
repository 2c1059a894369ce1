"""Shared plumbing for benchmarks: Django setup, a worker process, a database session of
its own, medians."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tests.waiting import wait_until

if TYPE_CHECKING:
    import psycopg

ROOT = Path(__file__).resolve().parent.parent


def setup_django() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    import django
    import psycopg
    from django.conf import settings

    django.setup()
    db = settings.DATABASES["default"]
    admin = psycopg.connect(
        host=db["HOST"] or "localhost",
        port=db["PORT"] or 5432,
        user=db["USER"] or "postgres",
        dbname="postgres",
        autocommit=True,
    )
    exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]).fetchone()
    if not exists:
        admin.execute(f'CREATE DATABASE "{db["NAME"]}"')
    admin.close()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def start_worker(concurrency: int = 1) -> subprocess.Popen:
    from django.conf import settings

    env = dict(os.environ, PYTHONPATH=str(ROOT), DJANGO_SETTINGS_MODULE="bench.settings")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "demo_shop",
            "worker",
            "--loglevel=WARNING",
            f"--concurrency={concurrency}",
            "--pool=prefork",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"bench-{os.getpid()}@%h",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # a pipe nobody reads would fill and block it
    )
    from demo_shop.celery import app

    wait_until(  # each ping waits half a second for an answer
        lambda: process.poll() is not None or app.control.ping(timeout=0.5),
        timeout=60,
        every=0,
        what="the bench worker to answer a ping",
    )
    if process.poll() is not None:
        raise RuntimeError(f"the bench worker exited ({process.returncode}) before it started")
    del settings
    return process


def stat_connection() -> psycopg.Connection:
    """An autocommit session of its own on the bench database, outside Django's.

    For what must not be counted in, or disturbed by, Django's connection: reading
    ``pg_stat_database`` from a fresh session, the calibration's timed commits.
    """
    import psycopg
    from django.conf import settings

    db = settings.DATABASES["default"]
    return psycopg.connect(
        host=db["HOST"] or "localhost",
        port=db["PORT"] or 5432,
        user=db["USER"] or "postgres",
        dbname=db["NAME"],
        autocommit=True,
    )


def median_of(runs: int, measure: Callable[[], float]) -> tuple[float, list[float]]:
    values = [measure() for _ in range(runs)]
    return statistics.median(values), values


# --- results: every figure is a ratio to a reference measured in the same run ---------


@dataclass
class Figure:
    """One row of the bench table.

    ``value`` and ``reference_value`` are medians of the runs in ``runs`` and
    ``reference_runs``; ``ratio`` is ``value / reference_value`` unless the module
    says otherwise in ``note``. ``goal`` is the issue's target as text (``"≥ 0.5x"``,
    ``"≤ 5 ms"``) and ``met`` whether the median reached it.
    """

    section: str
    name: str
    value: float
    unit: str
    reference: str
    reference_value: float
    goal: str
    met: bool
    runs: list[float] = field(default_factory=list)
    reference_runs: list[float] = field(default_factory=list)
    note: str = ""
    ratio: float = 0.0

    def __post_init__(self) -> None:
        if not self.ratio and self.reference_value:
            self.ratio = self.value / self.reference_value

    def as_dict(self) -> dict:
        return asdict(self)


def medians(values: list[float]) -> float:
    return statistics.median(values)
