"""Sending step messages to Celery, after commit and never blocking for long.

A message only ever points at a committed row, and losing one is harmless: the
row is the durable intent and the sweeper sends it again. So a send that fails
(broker down, paused, unreachable) is logged and given up on quickly instead of
hanging the caller, typically a web request.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from django.db import transaction

from .. import sending
from ..conf import conf

logger = logging.getLogger("sagaflow.dispatch")

#: When set (by ``sagaflow.testing``), messages go to this callable instead of Celery.
_interceptor: Callable[[int, str], None] | None = None

# A publish gets one quick retry; the sweeper is the real retry.
_RETRY_POLICY = {"max_retries": 1, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5}


def send(
    step_id: int,
    phase: str,
    *,
    countdown: float | None = None,
    timeout: float | None = None,
    queue: str | None = None,
) -> None:
    """Send the message that runs one attempt of step ``step_id`` in ``phase``.

    ``queue`` is the step's (or its compensation's) own; without one the message
    goes to ``SAGAFLOW["QUEUE"]``, and without that to Celery's default queue.
    """
    if _interceptor is not None:
        _interceptor(step_id, phase)
        return
    options: dict = {"retry": True, "retry_policy": _RETRY_POLICY}
    if countdown:
        options["countdown"] = countdown
    if timeout:
        # Soft limit: SoftTimeLimitExceeded is raised in the step (a retryable failure).
        # Hard limit: the process is killed, and the lease (timeout + grace) recovers it.
        options["soft_time_limit"] = timeout
        options["time_limit"] = timeout + max(1.0, conf.LEASE_GRACE / 2)
    queue = queue or conf.QUEUE
    if queue:
        options["queue"] = queue
    try:
        sending.send_task(sending.EXECUTE_STEP, (step_id, phase), **options)
    except Exception:  # the broker is down: the sweeper will send it again
        logger.warning(
            "could not send step %s (%s) to the broker; the sweeper will resend it",
            step_id,
            phase,
            exc_info=True,
        )


def send_on_commit(
    step_id: int,
    phase: str,
    *,
    countdown: float | None = None,
    timeout: float | None = None,
    queue: str | None = None,
) -> None:
    transaction.on_commit(
        functools.partial(send, step_id, phase, countdown=countdown, timeout=timeout, queue=queue),
        robust=True,
    )
