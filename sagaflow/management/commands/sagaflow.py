"""``manage.py sagaflow status|retry|compensate|graph``: operations from a shell.

``status`` exits 1 when something needs attention, so it doubles as a health
check for a container or a cron job.
"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from sagaflow.exceptions import ActionRefused, UnknownSagaError
from sagaflow.ops import health, operations
from sagaflow.saga.graph import mermaid
from sagaflow.saga.registry import get_definition


class Command(BaseCommand):
    help = "Inspect and repair sagas: status, retry, compensate, graph."

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
        graph = sub.add_parser("graph", help="print a saga definition as a Mermaid diagram")
        graph.add_argument("name")

    def handle(self, *args, action: str, **options):
        if action == "status":
            return self._status(options["json"], options["stuck_after"])
        if action == "graph":
            try:
                self.stdout.write(mermaid(get_definition(options["name"])))
            except UnknownSagaError as exc:
                raise CommandError(str(exc)) from None
            return None
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
                "outbox": report.outbox,
                "problems": report.problems,
            }
            self.stdout.write(json.dumps(payload, indent=2))
        else:
            states = ", ".join(f"{k} {v}" for k, v in sorted(report.sagas_by_state.items()))
            self.stdout.write(f"sagas: {states or 'none'}")
            if report.oldest_live_age is not None:
                self.stdout.write(f"oldest live saga: {report.oldest_live_age:.0f}s old")
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
