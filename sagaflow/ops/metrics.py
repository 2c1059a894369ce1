"""Prometheus metrics, when ``prometheus_client`` is installed (``sagaflow[metrics]``).

Counters and histograms are fed by sagaflow's signals; the outbox backlog and lag
are read from the database when Prometheus scrapes. Celery's prefork workers are
several processes: run them with prometheus_client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``) so every child's samples are exported.
"""

from __future__ import annotations

from typing import Any

try:
    import prometheus_client
    from prometheus_client.core import GaugeMetricFamily
except ImportError:  # the optional dependency is not installed: no metrics
    prometheus_client = None  # type: ignore[assignment]

from .. import signals

if prometheus_client is not None:
    STEP_DURATION = prometheus_client.Histogram(
        "sagaflow_step_duration_seconds",
        "Time a step's action (or compensation) ran, by outcome.",
        ["saga", "step", "phase", "outcome"],
    )
    SAGAS_STARTED = prometheus_client.Counter(
        "sagaflow_sagas_started_total", "Sagas started.", ["saga"]
    )
    SAGAS_FINISHED = prometheus_client.Counter(
        "sagaflow_sagas_finished_total",
        "Sagas that ended, by outcome: completed, compensated or failed (failed is the alert).",
        ["saga", "outcome"],
    )


class OutboxCollector:
    """Backlog and lag of the outbox, read at scrape time."""

    EVENTS = ("sagaflow_outbox_events", "Outbox events waiting, by state.")
    LAG = ("sagaflow_outbox_lag_seconds", "Age of the oldest unpublished outbox event.")

    def describe(self) -> Any:
        """Names only, so registering queries nothing (no database at import time)."""
        yield GaugeMetricFamily(*self.EVENTS, labels=["state"])
        yield GaugeMetricFamily(*self.LAG)

    def collect(self) -> Any:
        from ..outbox import store as outbox_store

        backlog = outbox_store.backlog()
        events = GaugeMetricFamily(*self.EVENTS, labels=["state"])
        events.add_metric(["pending"], backlog["pending"])
        events.add_metric(["dead"], backlog["dead"])
        yield events
        yield GaugeMetricFamily(*self.LAG, value=backlog["oldest_pending_seconds"])


class SagaCollector:
    """Runs that need a person, read at scrape time: failed ones nobody resolved,
    and live ones waiting for the code of their version. Alert on either > 0."""

    ATTENTION = (
        "sagaflow_sagas_needing_attention",
        "Runs that need a person, by reason: failed (not resolved) or needs_code.",
    )

    def describe(self) -> Any:
        yield GaugeMetricFamily(*self.ATTENTION, labels=["reason"])

    def collect(self) -> Any:
        from ..saga import scans
        from .health import waiting_for_code

        attention = GaugeMetricFamily(*self.ATTENTION, labels=["reason"])
        attention.add_metric(["failed"], scans.failed_unresolved())
        attention.add_metric(["needs_code"], sum(g["runs"] for g in waiting_for_code()))
        yield attention


def _step(outcome: str):
    def receiver(
        sender: Any, saga: Any, step: str, phase: str, duration: float = 0.0, **kwargs: Any
    ) -> None:
        STEP_DURATION.labels(saga.name, step, phase, outcome).observe(duration)

    return receiver


def _finished(outcome: str):
    def receiver(sender: Any, saga: Any, **kwargs: Any) -> None:
        SAGAS_FINISHED.labels(saga.name, outcome).inc()

    return receiver


def _started(sender: Any, saga: Any, **kwargs: Any) -> None:
    SAGAS_STARTED.labels(saga.name).inc()


_RECEIVERS = [
    (signals.saga_started, _started),
    (signals.step_succeeded, _step("succeeded")),
    (signals.step_failed, _step("failed")),
    (signals.saga_completed, _finished("completed")),
    (signals.saga_compensated, _finished("compensated")),
    (signals.saga_failed, _finished("failed")),
]
_collectors: list[Any] = []


def install() -> bool:
    """Connect the metrics to the signals (idempotent); False without prometheus_client."""
    if prometheus_client is None:
        return False
    for signal, receiver in _RECEIVERS:
        signal.connect(receiver, dispatch_uid=f"sagaflow.metrics.{id(receiver)}")
    if not _collectors:
        _collectors.extend([OutboxCollector(), SagaCollector()])
        for collector in _collectors:
            prometheus_client.REGISTRY.register(collector)
    return True
