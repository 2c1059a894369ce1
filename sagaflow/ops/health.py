"""What needs attention right now: the data behind ``sagaflow status`` and metrics."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..conf import conf
from ..models import SagaState
from ..outbox import store as outbox_store
from ..saga import registry, scans


@dataclass
class Health:
    sagas_by_state: dict[str, int]
    stuck: list[Mapping[str, Any]]  # id, name, state, updated_at of each
    stuck_count: int
    oldest_live_age: float | None
    outbox: dict[str, Any]
    #: Failed runs nobody resolved yet (resolved ones no longer need attention).
    failed_unresolved: int = 0
    #: Live runs that cannot go on, by saga and version: ``name``, ``version``,
    #: ``runs``, ``message`` ("needs the code of version N of <name>: …").
    needs_code: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def needs_attention(self) -> bool:
        return bool(self.problems)


def check(stuck_after: float | None = None, show: int = 20) -> Health:
    after = conf.STUCK_AFTER if stuck_after is None else stuck_after
    stuck = scans.stuck(after)
    health = Health(
        sagas_by_state=scans.counts_by_state(),
        stuck=list(stuck.order_by("updated_at").values("id", "name", "state", "updated_at")[:show]),
        stuck_count=stuck.count(),
        oldest_live_age=scans.oldest_live_age(),
        outbox=outbox_store.backlog(),
        needs_code=waiting_for_code(),
    )
    if health.sagas_by_state.get(SagaState.FAILED, 0):
        health.failed_unresolved = scans.failed_unresolved()
    if health.failed_unresolved:
        health.problems.append(
            f"{health.failed_unresolved} saga(s) failed and need a person "
            f"(retry, or fix and resolve)"
        )
    for group in health.needs_code:
        health.problems.append(f"{group['runs']} saga(s) {group['message']}")
    if health.stuck_count:
        health.problems.append(f"{health.stuck_count} saga(s) made no progress for {after:g}s")
    dead = health.outbox.get("dead", 0)
    if dead:
        health.problems.append(f"{dead} outbox event(s) are dead (re-queue them)")
    lag = health.outbox.get("oldest_pending_seconds") or 0.0
    if lag > conf.OUTBOX_LAG_ALERT:
        health.problems.append(f"outbox lag is {lag:.0f}s (over {conf.OUTBOX_LAG_ALERT:g}s)")
    return health


def waiting_for_code() -> list[dict[str, Any]]:
    """Live runs that wait for the code of their version, by saga and version.

    Two sources, so that neither a worker nor this process is trusted alone: runs a
    worker found without their code (flagged), and runs whose version, or whose
    steps, the code this process loaded lacks (a deploy removed or changed it, and
    no worker has looked yet).
    """
    groups: dict[tuple[str, int], dict[str, Any]] = {}
    for live in scans.live_versions():
        missing = code_missing(live.name, live.version, live.steps_fingerprint)
        runs = live.runs if missing else live.waiting
        if not runs:
            continue
        group = groups.setdefault(
            (live.name, live.version),
            {"name": live.name, "version": live.version, "runs": 0, "message": ""},
        )
        group["runs"] += runs
        group["message"] = (
            missing
            or group["message"]
            or (
                f"{registry.needs_code(live.name, live.version)}: a worker found it missing "
                f"(this process has it: deploy it to every worker)"
            )
        )
    return [groups[key] for key in sorted(groups)]


def code_missing(name: str, version: int, steps_fingerprint: str) -> str:
    """Why this process cannot run a run of ``version`` of ``name`` started with
    those steps ("needs the code of version N of <name>: …"), or "" if it can."""
    needs = registry.needs_code(name, version)
    versions = registry.versions_of(name)
    if not versions:
        return f"{needs}: this code defines no saga {name!r}"
    if version not in versions:
        have = ", ".join(str(v) for v in versions)
        return f"{needs}: this code defines version(s) {have} only"
    if steps_fingerprint and steps_fingerprint != versions[version].fingerprint:
        return f"{needs}: its steps were changed in place (restore them; add a new version)"
    return ""
