"""``manage.py sagaflow status|retry|compensate|resolve|graph``: operations from a shell.

``status`` exits 1 when something needs attention (failed runs nobody resolved,
runs waiting for the code of their version, stuck runs, the outbox), so it
doubles as a health check for a container or a cron job.
"""

from __future__ import annotations

import json

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from sagaflow.exceptions import ActionRefused, UnknownSagaError
from sagaflow.ops import health, operations
from sagaflow.saga.graph import mermaid
from sagaflow.saga.registry import get_definition


class Command(BaseCommand):
    help = "Inspect and repair sagas: status, retry, compensate, resolve, graph."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        status = sub.add_parser(
            "status",
            help="counts, stuck sagas, outbox backlog; exit 1 if something needs attention",
        )
        status.add_argument("--json", action="store_true", help="machine-readable output")
        status.add_argument(
            "--stuck-after",
            type=float,
            default=None,
            help="seconds without progress (default SAGAFLOW['STUCK_AFTER'])",
        )
        for name, what in (
            ("retry", "resume failed or stalled sagas"),
            ("compensate", "abandon running sagas and compensate them"),
        ):
            action = sub.add_parser(name, help=what)
            action.add_argument("ids", nargs="+", metavar="ID")
        resolve = sub.add_parser(
            "resolve",
            help="record that failed sagas were dealt with by hand (they stop needing attention)",
        )
        resolve.add_argument("ids", nargs="+", metavar="ID")
        resolve.add_argument("--note", required=True, help="what was done, and why")
        resolve.add_argument(
            "--user", default=None, help="username to record as who resolved it (default: none)"
        )
        graph = sub.add_parser("graph", help="print a saga definition as a Mermaid diagram")
        graph.add_argument("name")
        graph.add_argument(
            "--version", type=int, default=None, help="that version (default: the highest)"
        )

    def handle(self, *args, action: str, **options):
        if action == "status":
            return self._status(options["json"], options["stuck_after"])
        if action == "graph":
            try:
                definition = get_definition(options["name"], options["version"])
            except UnknownSagaError as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(mermaid(definition))
            return None
        if action == "resolve":
            user = self._user(options["user"])

            def act(saga_id: str) -> str:
                return operations.resolve(saga_id, note=options["note"], user=user)

        else:
            act = operations.retry if action == "retry" else operations.compensate
        refused = 0
        for saga_id in options["ids"]:
            try:
                self.stdout.write(f"{saga_id}: {act(saga_id)}")
            except ActionRefused as exc:
                refused += 1
                self.stderr.write(f"{saga_id}: refused: {exc}")
        if refused:
            raise CommandError(f"{refused} of {len(options['ids'])} refused", returncode=2)
        return None

    def _user(self, username: str | None):
        if username is None:
            return None
        model = get_user_model()
        try:
            return model._default_manager.get_by_natural_key(username)
        except model.DoesNotExist:
            raise CommandError(f"There is no user {username!r} (--user).") from None

    def _status(self, as_json: bool, stuck_after: float | None) -> None:
        report = health.check(stuck_after)
        if as_json:
            payload = {
                "sagas_by_state": report.sagas_by_state,
                "stuck_count": report.stuck_count,
                "stuck": [
                    {**row, "id": str(row["id"]), "updated_at": row["updated_at"].isoformat()}
                    for row in report.stuck
                ],
                "oldest_live_age": report.oldest_live_age,
                "failed_unresolved": report.failed_unresolved,
                "needs_code": report.needs_code,
                "outbox": report.outbox,
                "problems": report.problems,
            }
            self.stdout.write(json.dumps(payload, indent=2))
        else:
            states = ", ".join(f"{k} {v}" for k, v in sorted(report.sagas_by_state.items()))
            self.stdout.write(f"sagas: {states or 'none'}")
            if report.oldest_live_age is not None:
                self.stdout.write(f"oldest live saga: {report.oldest_live_age:.0f}s old")
            for group in report.needs_code:
                self.stdout.write(f"  waiting: {group['runs']} run(s) {group['message']}")
            for row in report.stuck:
                self.stdout.write(
                    f"  stuck: {row['id']} {row['name']} {row['state']} "
                    f"(last change {row['updated_at']:%Y-%m-%d %H:%M:%S})"
                )
            out = report.outbox
            self.stdout.write(
                f"outbox: {out['pending']} pending, {out['dead']} dead, "
                f"lag {out['oldest_pending_seconds']:.1f}s"
            )
            for problem in report.problems:
                self.stdout.write(self.style.ERROR(f"attention: {problem}"))
            if not report.problems:
                self.stdout.write(self.style.SUCCESS("ok"))
        if report.needs_attention:
            raise SystemExit(1)
