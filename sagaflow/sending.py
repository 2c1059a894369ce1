"""Celery task names, and sending a task by its name.

Everything below ``sagaflow.tasks`` sends messages through here, so no module
imports the task layer (the layers are import-linter contracts in
``pyproject.toml``). The names are the wire protocol: queued messages find their
task by them, so they never change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from celery import current_app

EXECUTE_STEP = "sagaflow.execute_step"
SWEEP = "sagaflow.sweep"
JANITOR = "sagaflow.janitor"
RELAY_OUTBOX = "sagaflow.relay_outbox"
DELIVER_EVENTS = "sagaflow.deliver_events"
OUTBOX_SWEEP = "sagaflow.outbox_sweep"

#: Publish options for one quick attempt. ``retry=False`` is *not* that: kombu then
#: still retries the connection for about 6 s per call when Redis refuses it (C8),
#: whereas ``retry=True`` with ``max_retries=0`` fails in milliseconds.
ONE_ATTEMPT: dict[str, Any] = {"retry": True, "retry_policy": {"max_retries": 0}}


def send_task(
    name: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    **options: Any,
) -> None:
    """Send the task ``name`` through the current Celery app, with ``options`` as
    ``apply_async`` takes them (queue, countdown, retry policy, time limits)."""
    current_app.send_task(name, args=tuple(args), kwargs=dict(kwargs or {}), **options)
