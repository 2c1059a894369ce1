"""Celery tasks: thin adapters over the engine and the sweeper.

Names are explicit so that moving a module never orphans queued messages, and the
app never imports a project's Celery app (``shared_task``).
"""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from . import engine, sweeper


@shared_task(
    name="sagaflow.execute_step",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    # A database restart: try again shortly; if that fails too, the sweeper recovers.
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=1,
    retry_backoff_max=30,
    max_retries=5,
)
def execute_step(step_id: int, phase: str) -> None:
    engine.execute(step_id, phase)


@shared_task(name="sagaflow.sweep", ignore_result=True)
def sweep() -> dict[str, int]:
    return sweeper.sweep().as_dict()
