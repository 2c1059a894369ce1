"""The processes of one chaos run: web (gunicorn), celery workers, relays, beats.

Each role has numbered *slots*. A supervisor thread restarts a slot whose process died
(as systemd would), unless a fault holds it down for a while. Every process is started
in its own session, so killing its process group takes its children too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Slot:
    role: str
    index: int
    argv: list[str]
    log_dir: Path
    env: dict[str, str]
    #: A fault's environment (a fault point armed), until the fault disarms it.
    extra_env: dict[str, str] = field(default_factory=dict)
    #: What a fault left in place until the heal (a new release's code, a skewed
    #: clock): kept when another fault restarts the slot.
    lasting_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    #: The supervisor leaves the slot down until this monotonic time.
    hold_until: float = 0.0
    starts: int = 0
    #: Processes a roll replaced, finishing their tasks (killed at the latest on close).
    retired: list[subprocess.Popen] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}"

    def start(self) -> None:
        self.starts += 1
        log = (self.log_dir / f"{self.name}.log").open("ab")
        argv = [a.replace("{uid}", uuid.uuid4().hex[:6]) for a in self.argv]
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**self.env, **self.lasting_env, **self.extra_env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        self.signal_group(signal.SIGKILL)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)

    def stop(self, timeout: float = 20) -> None:
        self.terminate()
        self.wait_stopped(timeout)

    def terminate(self) -> None:
        """Ask for a warm shutdown (SIGTERM; thawed first if frozen)."""
        if self.alive():
            self.signal_group(signal.SIGCONT)
            self.process.send_signal(signal.SIGTERM)

    def roll(self) -> None:
        """Start a new process in the slot at once and let the old one finish its
        running tasks (warm shutdown) in the background, as a rolling deploy does:
        no wait for the old one to exit. It is killed if it takes longer than 30 s."""
        old = self.process
        if old is not None and old.poll() is None:
            self.signal_group(signal.SIGCONT)
            old.send_signal(signal.SIGTERM)
            self.retired.append(old)
            threading.Thread(target=_reap, args=(old,), daemon=True).start()
        self.start()

    def wait_stopped(self, timeout: float = 20) -> None:
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        self.kill()  # too slow, or stray children

    def children(self) -> list[int]:
        if not self.alive():
            return []
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except OSError:
            return []

    def log_text(self) -> str:
        path = self.log_dir / f"{self.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _reap(process: subprocess.Popen, timeout: float = 30) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


class Topology:
    def __init__(
        self,
        *,
        env: dict[str, str],
        log_dir: Path,
        workers: int,
        relays: int,
        beats: int,
        web_port: int,
        role_env: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.web_port = web_port
        py = sys.executable
        self.slots: list[Slot] = []

        def add(role: str, count: int, argv: list[str]) -> None:
            for i in range(count):
                a = [x.replace("{i}", str(i)) for x in argv]
                own = {**env, **(role_env or {}).get(role, {})}
                self.slots.append(Slot(role, i, a, log_dir, own))

        add(
            "web",
            1,
            [
                py,
                "-m",
                "gunicorn",
                "demo_shop.wsgi:application",
                "--bind",
                f"127.0.0.1:{web_port}",
                "--workers",
                "2",
                "--threads",
                "4",
                "--timeout",
                "60",
                "--graceful-timeout",
                "5",
            ],
        )
        add(
            "worker",
            workers,
            [
                py,
                "-m",
                "celery",
                "-A",
                "demo_shop",
                "worker",
                "--loglevel=INFO",
                "--concurrency=2",
                "--pool=prefork",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                "chaos-{i}-{uid}@%h",
            ],
        )
        add("relay", relays, [py, "manage.py", "sagaflow_relay"])
        add(
            "beat",
            beats,
            [
                py,
                "-m",
                "celery",
                "-A",
                "demo_shop",
                "beat",
                "--loglevel=INFO",
                "--pidfile",
                str(log_dir / "beat-{i}.pid"),
                "--schedule",
                str(log_dir / "beat-{i}.db"),
            ],
        )
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self.restarts: list[tuple[float, str]] = []
        #: Called with a message whenever the supervisor restarts a process.
        self.on_restart = lambda message: None

    def role(self, role: str) -> list[Slot]:
        return [s for s in self.slots if s.role == role]

    def start(self) -> None:
        for slot in self.slots:
            slot.start()
        self._thread.start()

    def _supervise(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                for slot in self.slots:
                    if not slot.alive() and time.monotonic() >= slot.hold_until:
                        code = slot.process.returncode if slot.process else None
                        slot.start()
                        self.restarts.append((time.time(), slot.name))
                        self.on_restart(f"supervisor: {slot.name} had exited ({code}); restarted")

    @contextlib.contextmanager
    def held(self):
        """Hold the supervisor's lock: no restart happens while a fault rearranges slots."""
        with self._lock:
            yield

    def replace(self, slot: Slot, extra_env: dict[str, str]) -> None:
        """Restart ``slot`` with ``extra_env`` (a fault armed, or disarmed with ``{}``):
        the old process is gone before the new one starts."""
        with self._lock:
            slot.extra_env = dict(extra_env)
            slot.stop()
            slot.start()

    def roll_each(self, plan: list[tuple[Slot, dict[str, str]]], *, lasting: bool = False) -> None:
        """Roll each slot of ``plan`` to a new process with its own environment
        (``lasting``: kept until the heal, else until the next roll): the new
        processes start at once, the old ones finish their tasks meanwhile."""
        with self._lock:
            for slot, env in plan:
                if lasting:
                    slot.lasting_env = dict(env)
                else:
                    slot.extra_env = dict(env)
                slot.roll()

    def heal(self) -> None:
        """Everything up, nothing stopped or held."""
        with self._lock:
            for slot in self.slots:
                slot.hold_until = 0.0
                slot.signal_group(signal.SIGCONT)
                if slot.extra_env or slot.lasting_env:
                    slot.extra_env, slot.lasting_env = {}, {}
                    slot.stop()
                if not slot.alive():
                    slot.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        for slot in self.slots:
            slot.signal_group(signal.SIGCONT)
            with contextlib.suppress(Exception):
                if slot.alive():
                    slot.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for slot in self.slots:
            if slot.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    slot.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            slot.kill()
            for old in slot.retired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(old.pid, signal.SIGKILL)

    def logs(self, role: str | None = None) -> str:
        return "\n".join(s.log_text() for s in self.slots if role is None or s.role == role)
