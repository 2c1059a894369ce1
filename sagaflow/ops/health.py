"""What needs attention right now: the data behind ``sagaflow status`` and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..conf import conf
from ..models import SagaState
from ..outbox import store as outbox_store
from ..saga import scans


@dataclass
class Health:
    sagas_by_state: dict[str, int]
    stuck: list[dict[str, Any]]
    stuck_count: int
    oldest_live_age: float | None
    outbox: dict[str, Any]
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
    )
    failed = health.sagas_by_state.get(SagaState.FAILED, 0)
    if failed:
        health.problems.append(f"{failed} saga(s) failed and need a person (retry or fix)")
    if health.stuck_count:
        health.problems.append(f"{health.stuck_count} saga(s) made no progress for {after:g}s")
    dead = health.outbox.get("dead", 0)
    if dead:
        health.problems.append(f"{dead} outbox event(s) are dead (re-queue them)")
    lag = health.outbox.get("oldest_pending_seconds") or 0.0
    if lag > conf.OUTBOX_LAG_ALERT:
        health.problems.append(f"outbox lag is {lag:.0f}s (over {conf.OUTBOX_LAG_ALERT:g}s)")
    return health
