"""Private servers the chaos harness may break: a PostgreSQL cluster and a Redis.

Never the shared ones on 5432/6379. Both live in a temp dir on a free loopback port and
are torn down by :meth:`close` (call it in a ``finally``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

from tests.services import free_port


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} not found under /usr/lib/postgresql/*/bin")
    return found[-1]


class PrivatePostgres:
    """``initdb`` + ``pg_ctl`` in a temp dir, trust auth, default durability (fsync on)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="sagaflow-chaos-pg-"))
        self.data = self.root / "data"
        self.logfile = self.root / "postgres.log"
        self._as_root = os.geteuid() == 0
        if self._as_root:  # PostgreSQL refuses to run as root: the cluster belongs to postgres
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
        self.start()

    def _run(self, *argv: str, timeout: float = 120) -> None:
        cmd = ["runuser", "-u", "postgres", "--", *argv] if self._as_root else list(argv)
        subprocess.run(
            cmd, check=True, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c max_connections=300 -c shared_buffers=64MB"
        )
        self._run(
            _pg_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.logfile),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        """``fast`` rolls back open transactions; ``immediate`` is a crash (WAL recovery)."""
        self.stop(mode)
        self.start()

    def execute(self, sql: str, dbname: str = "postgres") -> list[tuple]:
        with psycopg.connect(self.dsn(dbname), autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []

    def create_database(self, name: str) -> None:
        self.execute(f'CREATE DATABASE "{name}"')

    def dump(self, dbname: str, path: Path) -> None:
        """``pg_dump -Fc`` of ``dbname`` (evidence when a check fails)."""
        subprocess.run(
            [_pg_bin("pg_dump"), "-Fc", "-f", str(path), self.dsn(dbname)],
            check=True,
            timeout=300,
            stdout=subprocess.DEVNULL,
        )

    def terminate_backends(self, dbname: str, fraction: float, rng) -> int:
        """``pg_terminate_backend`` on a random share of the client backends of ``dbname``."""
        pids = [
            row[0]
            for row in self.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = "
                f"'{dbname}' AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
            )
        ]
        chosen = [p for p in pids if rng.random() < fraction] or pids[:1]
        for pid in chosen:
            self.execute(f"SELECT pg_terminate_backend({int(pid)})")
        return len(chosen)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
