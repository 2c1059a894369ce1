"""``manage.py sagaflow_relay``: the outbox relay as a long-lived process.

It drains the outbox, then sleeps until a publishing transaction commits
(``LISTEN sagaflow_outbox``; ``publish`` sends ``NOTIFY``) or ``--poll-interval``
passes (retries that became due, a notification missed while draining). Run as
many as you like: they share work through ``SKIP LOCKED`` and key ownership.
SIGTERM/SIGINT stop it after the current batch. With it running, you may set
``OUTBOX_KICK_ON_COMMIT = False`` so commits do not also send a Celery task.

It outlives what goes wrong around it: a lost database session (a PostgreSQL
restart, a session ended by a timeout), a broker that fails or hangs, an error in
a publisher. Each is logged and the loop continues after a backoff, on a new
connection when the old one is gone; only SIGTERM/SIGINT end it.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

import psycopg
from django.core.management.base import BaseCommand, CommandParser
from django.db import InterfaceError, OperationalError, close_old_connections, connection

from sagaflow.conf import conf
from sagaflow.outbox import consumers, relay
from sagaflow.outbox import store as outbox_store

logger = logging.getLogger("sagaflow.relay")

#: Longest wait between two tries after an error (seconds).
MAX_ERROR_BACKOFF = 30.0


class Command(BaseCommand):
    help = "Relay outbox events to the broker until stopped (wakes on LISTEN/NOTIFY)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch-size", type=int, default=None)
        parser.add_argument(
            "--poll-interval",
            type=float,
            default=None,
            help="seconds to wait for a NOTIFY before looking anyway",
        )
        parser.add_argument("--once", action="store_true", help="drain once and exit")

    def handle(self, *args: Any, **options: Any) -> None:
        self.stopping = False
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        poll = float(options["poll_interval"] or conf.OUTBOX_POLL_INTERVAL)
        total = relay.DrainReport()
        #: the psycopg connection our LISTEN was issued on (a new one is not listening)
        listening_on: Any = None
        failures = 0
        retries_at = 0.0
        self.stdout.write("sagaflow relay ready", ending="\n")
        self.stdout.flush()
        while not self.stopping:
            try:
                if connection.vendor == "postgresql" and (
                    listening_on is None or connection.connection is not listening_on
                ):
                    with connection.cursor() as cursor:
                        cursor.execute(f"LISTEN {outbox_store.CHANNEL}")
                    listening_on = connection.connection
                report = relay.drain(
                    batch_size=options["batch_size"], should_stop=lambda: self.stopping
                )
                for name, value in report.as_dict().items():
                    setattr(total, name, getattr(total, name) + value)
                # Due consumer retries: once per poll interval, not on every
                # wake-up (under load that is hundreds of times a second, each a
                # transaction between a commit and its relay).
                if time.monotonic() >= retries_at:
                    consumers.redeliver_due()
                    retries_at = time.monotonic() + poll
                failures = 0
                if options["once"]:
                    break
                # Drained. If the broker is failing, the rows wait for their retry
                # time and a NOTIFY must not cut the wait short.
                listening = (
                    listening_on is not None
                    and connection.connection is listening_on
                    and not (report.failed or report.dead)
                )
                self._wait(poll, listening=listening)
            except (OperationalError, InterfaceError):
                # The database restarted or ended our session (C12): reconnect.
                failures += 1
                logger.warning("relay lost its database connection", exc_info=True)
                listening_on = None
                self._reset_connection()
                self._wait(min(MAX_ERROR_BACKOFF, 0.5 * 2**failures), listening=False)
            except Exception:
                # Anything else (a publisher's bug, an unexpected database error):
                # the rows are still there; log, back off, go on.
                failures += 1
                logger.exception("relay pass failed; trying again")
                if connection.connection is not None and not connection.is_usable():
                    listening_on = None
                    self._reset_connection()
                self._wait(min(MAX_ERROR_BACKOFF, 0.5 * 2**failures), listening=False)
        self.stdout.write(
            "sagaflow relay stopped: " + " ".join(f"{k}={v}" for k, v in total.as_dict().items()),
            ending="\n",
        )
        self.stdout.flush()

    def _stop(self, signum: int, frame: Any) -> None:
        self.stopping = True

    @staticmethod
    def _reset_connection() -> None:
        close_old_connections()
        connection.close()

    def _wait(self, seconds: float, *, listening: bool) -> None:
        if not listening:
            deadline = time.monotonic() + seconds
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(min(0.2, seconds))
            return
        # psycopg 3: wait for notifications with a timeout; wake in slices so a
        # SIGTERM is noticed promptly.
        deadline = time.monotonic() + seconds
        while not self.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                got = list(connection.connection.notifies(timeout=min(left, 0.5), stop_after=1))
            except psycopg.Error as exc:
                # A raw psycopg call, outside Django's error wrapping: translate it so
                # the loop reconnects instead of the process dying on a restart.
                raise OperationalError(str(exc)) from exc
            if got:
                return
