"""Celery tasks: thin adapters over the engine and the sweeper.

Names are explicit so that moving a module never orphans queued messages, and the
app never imports a project's Celery app (``shared_task``).
"""

from __future__ import annotations

from typing import TypedDict

from celery import Task, shared_task
from django.db import InterfaceError, OperationalError

from .ops.janitor import clean
from .saga import engine, sweeper
from .sending import ONE_ATTEMPT


class _TaskOptions(TypedDict):
    """The options below, typed so that ``shared_task(**AT_LEAST_ONCE)`` is checked."""

    acks_late: bool
    reject_on_worker_lost: bool
    ignore_result: bool
    autoretry_for: tuple[type[BaseException], ...]
    retry_backoff: int
    retry_backoff_max: int
    max_retries: int


#: Options of every task that must run at least once: acked after it ran, returned
#: to the queue if its process dies, and retried shortly after a database restart
#: (if that fails too, the sweepers recover from the rows).
AT_LEAST_ONCE: _TaskOptions = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "ignore_result": True,
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "max_retries": 5,
}


@shared_task(name="sagaflow.execute_step", **AT_LEAST_ONCE)
def execute_step(step_id: int, phase: str) -> None:
    engine.execute(step_id, phase)


@shared_task(name="sagaflow.sweep", ignore_result=True)
def sweep() -> dict[str, int]:
    return sweeper.sweep().as_dict()


@shared_task(name="sagaflow.janitor", ignore_result=True)
def janitor() -> dict[str, int]:

    return clean()


# --- transactional outbox (relay.py, consumers.py) ------------------------------------


@shared_task(name="sagaflow.relay_outbox", ignore_result=True)
def relay_outbox() -> dict[str, int]:
    """Kicked on commit by ``publish`` and run by beat to recover: drain the outbox,
    then send due consumer retries. Harmless when run concurrently (C10)."""
    from .conf import conf
    from .outbox import consumers, relay

    report = relay.drain(max_seconds=float(conf.OUTBOX_TASK_TIME_BUDGET)).as_dict()
    if report["batches"] and report["published"] and not report["failed"]:
        # Stopped by the time budget with work left? A fresh task continues.
        last_full = report["published"] == report["batches"] * int(conf.OUTBOX_BATCH_SIZE)
        if last_full:
            # queue=None is Celery's default queue; celery-types does not allow None.
            relay_outbox.apply_async(queue=conf.QUEUE or None, **ONE_ATTEMPT)  # type: ignore[arg-type]
    report["consumer_retries"] = consumers.redeliver_due()
    return report


@shared_task(name="sagaflow.deliver_events", bind=True, **AT_LEAST_ONCE)
def deliver_events(
    self: Task, events: list[dict], consumer: str | None = None, retry: bool = False
) -> dict[str, int]:
    """One relayed batch: run each event's consumers, each in its own transaction."""
    from .outbox import consumers

    # The broker marks a message it returns after its worker died (kombu's Redis
    # transport on reject/restore; AMQP natively).
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    return consumers.deliver(events, only=consumer, retry=retry, redelivered=redelivered).as_dict()


@shared_task(name="sagaflow.outbox_sweep", ignore_result=True)
def outbox_sweep() -> dict[str, int]:
    """Periodic (beat): resend published events a consumer never received."""
    from .outbox import consumers

    return {"resent": consumers.redeliver_unconsumed()}
