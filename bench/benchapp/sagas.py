"""A saga of no-op steps, and the bare Celery no-op task it is measured against."""

from celery import shared_task

import sagaflow

STEPS = 10

noop_saga = sagaflow.define("bench_noop")
for i in range(STEPS):
    noop_saga.step(name=f"noop{i}")(lambda ctx: None)


@shared_task(name="bench.noop", ignore_result=True)
def noop() -> None:
    return None


@shared_task(name="bench.mark_done", ignore_result=True)
def mark_done(key: str) -> None:
    """Queued after the no-ops: with one worker process and prefetch 1 it runs last."""
    import redis
    from django.conf import settings

    redis.Redis.from_url(settings.CELERY_BROKER_URL).set(key, "1")
