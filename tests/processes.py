"""Real processes for acceptance tests: Celery workers on the test database.

A worker is a separate ``celery worker`` process (prefork pool) configured with
``tests.settings`` and pointed at the test database pytest-django created, so what
it does goes through the real broker (Redis) and real PostgreSQL transactions.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from django.db import connection

from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent


def database_url() -> str:
    """URL of the database this test process uses (the test database)."""
    s = connection.settings_dict
    user = s.get("USER") or "postgres"
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    host = s.get("HOST") or "localhost"
    port = s.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{s['NAME']}"


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=database_url(),
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class Process:
    """A subprocess in its own session, its output in a temporary log file."""

    def __init__(self, command: list[str], *, env: dict[str, str], prefix: str) -> None:
        fd, path = tempfile.mkstemp(prefix=f"sagaflow-{prefix}-", suffix=".log")
        os.close(fd)
        self.log = Path(path)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=child_env(**env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]

    def exited_early(self, what: str) -> None:
        if self.process.poll() is not None:
            code = self.process.returncode
            raise AssertionError(f"{what} exited early ({code}):\n{self.output()}")

    def kill(self) -> None:
        """SIGKILL the process and every child: a cold crash, no cleanup."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self, timeout: float = 20) -> None:
        """SIGTERM and wait; SIGKILL whatever is left of the session."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # stray children, if any

    def close(self) -> None:
        self.terminate()
        self.log.unlink(missing_ok=True)


class Worker(Process):
    """A ``celery worker`` (prefork) subprocess; stop() or kill() it, or SIGKILL a child.

    ``queues``: consume only these (``-Q``); by default Celery's default queue.
    Its children share its process group, so ``os.getpgid(pid) == worker.pid`` says
    which worker a recorded ``Call.pid`` belongs to.
    """

    def __init__(
        self,
        *,
        concurrency: int = 2,
        env: dict[str, str] | None = None,
        queues: tuple[str, ...] = (),
    ) -> None:
        self.name = f"test-{uuid.uuid4().hex[:8]}@%h"
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "demo_shop",
            "worker",
            "--loglevel=INFO",
            f"--concurrency={concurrency}",
            "--pool=prefork",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            self.name,
            *(["-Q", ",".join(queues)] if queues else []),
        ]
        super().__init__(command, env=env or {}, prefix="worker")
        wait_until(self._ready, timeout=60, what="the celery worker to be ready")

    def _ready(self) -> bool:
        self.exited_early("worker")
        return b"ready." in self.log.read_bytes()

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self.close()


class Beat(Process):
    """``celery beat`` with django-celery-beat's DatabaseScheduler (the settings' schedule)."""

    def __init__(self, *, env: dict[str, str] | None = None) -> None:
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "demo_shop",
            "beat",
            "--loglevel=INFO",
            "-S",
            "django_celery_beat.schedulers:DatabaseScheduler",
        ]
        super().__init__(command, env=env or {}, prefix="beat")


class Relay(Process):
    """A ``manage.py sagaflow_relay`` subprocess (the outbox relay's long-lived loop)."""

    def __init__(self, *, env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> None:
        super().__init__(
            [sys.executable, "manage.py", "sagaflow_relay", *args],
            env={"DJANGO_SETTINGS_MODULE": "tests.outboxapp.relay_settings", **(env or {})},
            prefix="relay",
        )

    def ready(self) -> bool:
        self.exited_early("relay")
        return b"sagaflow relay ready" in self.log.read_bytes()

    def stop(self) -> dict[str, int]:
        """SIGTERM, wait, and return the counters it printed (empty if it was killed)."""
        self.terminate(timeout=30)
        text = self.log.read_text(errors="replace")
        stats: dict[str, int] = {}
        for line in text.splitlines():
            if line.startswith("sagaflow relay stopped:"):
                for item in line.split(":", 1)[1].split():
                    name, _, value = item.partition("=")
                    stats[name] = int(value)
        return stats

    def close(self) -> None:
        if self.process.poll() is None:
            self.kill()
        self.log.unlink(missing_ok=True)
