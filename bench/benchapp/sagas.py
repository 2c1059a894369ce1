"""No-op sagas and the bare Celery tasks they are measured against.

Each measured run ends by pushing to one Redis list, ``DONE_LIST``: a saga from
the ``saga_completed``/``saga_compensated`` signal of its last step's task, a
chain from its last task. The benchmark blocks on that list, so it neither polls
the database nor adds load while it waits.
"""

from __future__ import annotations

from functools import cache

import redis
from celery import shared_task
from django.conf import settings
from django.dispatch import receiver

import sagaflow
from sagaflow import Abort, Retry, signals

DONE_LIST = "bench:done"
PREFIX = "bench_"


@cache
def broker() -> redis.Redis:
    return redis.Redis.from_url(settings.CELERY_BROKER_URL)


def _noop(ctx: sagaflow.Context) -> None:
    return None


def _abort(ctx: sagaflow.Context) -> None:
    raise Abort("the bench compensates")


def no_op_saga(name: str, steps: int, *, local_steps: bool = False, abort_last: bool = False):
    definition = sagaflow.define(f"{PREFIX}{name}", local_steps=local_steps)
    for i in range(steps):
        step = definition.step(name=f"s{i}", retry=Retry(attempts=1))(_noop)
        step.compensation(_noop)
    if abort_last:
        definition.step(name="abort", retry=Retry(attempts=1))(_abort)
    return definition


#: 10 steps, one message per step (the default) and local steps.
ten = no_op_saga("ten", 10)
ten_local = no_op_saga("ten_local", 10, local_steps=True)
#: 5 steps, for throughput.
five = no_op_saga("five", 5)
five_local = no_op_saga("five_local", 5, local_steps=True)
#: 5 steps then one that aborts: 5 compensations follow.
five_then_abort = no_op_saga("five_then_abort", 5, abort_last=True)
five_then_abort_local = no_op_saga("five_then_abort_local", 5, local_steps=True, abort_last=True)


@receiver(signals.saga_completed)
@receiver(signals.saga_compensated)
def _push_done(sender, saga, **kwargs) -> None:
    if saga.name.startswith(PREFIX):
        broker().lpush(DONE_LIST, str(saga.id))


@shared_task(name="bench.noop", ignore_result=True)
def noop() -> None:
    return None


@shared_task(name="bench.noop_done", ignore_result=True)
def noop_done(tag: str = "") -> None:
    """A no-op that says it ran: the last link of a chain, or the end of a drain."""
    broker().lpush(DONE_LIST, tag)


@shared_task(name="bench.flush_stats", ignore_result=True)
def flush_stats() -> None:
    """Make this worker's session report its transaction counts now (PostgreSQL 15+):
    sessions otherwise report to ``pg_stat_database`` lazily, seconds later."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")
    broker().lpush(DONE_LIST, "flushed")
