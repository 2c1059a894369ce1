"""``manage.py sagaflow_relay``: the outbox relay as a long-lived process.

It drains the outbox, then sleeps until a publishing transaction commits
(``LISTEN sagaflow_outbox``; ``publish`` sends ``NOTIFY``) or ``--poll-interval``
passes (retries that became due, a notification missed while draining). Run as
many as you like: they share work through ``SKIP LOCKED`` and key ownership.
SIGTERM/SIGINT stop it after the current batch. With it running, you may set
``OUTBOX_KICK_ON_COMMIT = False`` so commits do not also send a Celery task.
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
        listening = False
        failures = 0
        retries_at = 0.0
        self.stdout.write("sagaflow relay ready", ending="\n")
        self.stdout.flush()
        while not self.stopping:
            try:
                if not listening and connection.vendor == "postgresql":
                    with connection.cursor() as cursor:
                        cursor.execute(f"LISTEN {outbox_store.CHANNEL}")
                    listening = True
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
                # Drained (a short batch). If the broker is failing, the rows wait
                # for their retry time and a NOTIFY must not cut the wait short.
                self._wait(poll, listening=listening and not (report.failed or report.dead))
            except (OperationalError, InterfaceError):
                # The database restarted or ended our session (C12): reconnect.
                failures += 1
                logger.warning("relay lost its database connection", exc_info=True)
                listening = False
                close_old_connections()
                connection.close()
                self._wait(min(30.0, 0.5 * 2**failures), listening=False)
        self.stdout.write(
            "sagaflow relay stopped: " + " ".join(f"{k}={v}" for k, v in total.as_dict().items()),
            ending="\n",
        )
        self.stdout.flush()

    def _stop(self, signum: int, frame: Any) -> None:
        self.stopping = True

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
