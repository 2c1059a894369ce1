"""Sagas the suite drives; their behaviour is chosen by the run's data.

``data["fail"][step]``: ``"abort"`` raises Abort, ``"always"`` always raises, an int
n fails the first n tries. ``data["comp_fail"][step]``: the same for compensations.
``data["sleep"][step]``: seconds to sleep on the first try (a step to kill mid-way).
"""

import os
import time
from datetime import timedelta

from django.db.models import F

import sagaflow
from sagaflow import Abort, Retry

from .models import AtomicWrite, Call, Effect

FAST_RETRY = Retry(attempts=3, backoff=0.2, max_backoff=0.8)
COMP_RETRY = Retry(attempts=3, backoff=0.05, max_backoff=0.1)


class Boom(RuntimeError):
    pass


def _behave(ctx, kind: str) -> None:
    Call.objects.create(
        saga_id=ctx.saga_id,
        step=ctx.step,
        kind=kind,
        attempt=ctx.attempt,
        idempotency_key=ctx.idempotency_key,
        pid=os.getpid(),
    )
    rules = (ctx.data or {}).get("fail" if kind == "step" else "comp_fail", {})
    rule = rules.get(ctx.step)
    if rule == "abort":
        raise Abort(f"{ctx.step} refused")
    if rule == "always" or (isinstance(rule, int) and ctx.attempt <= rule):
        raise Boom(f"{kind} {ctx.step} failed on attempt {ctx.attempt}")
    sleep = (ctx.data or {}).get("sleep", {}).get(ctx.step)
    if sleep and ctx.attempt == 1 and kind == "step":
        time.sleep(sleep)


def _effect(ctx, kind: str) -> None:
    effect, created = Effect.objects.get_or_create(
        idempotency_key=ctx.idempotency_key,
        defaults={"saga_id": ctx.saga_id, "step": ctx.step, "kind": kind},
    )
    if not created:
        Effect.objects.filter(pk=effect.pk).update(requests=F("requests") + 1)


def _make_chain(name: str, steps: list[str], **kwargs):
    definition = sagaflow.define(name, **kwargs)
    for step_name in steps:

        def action(ctx):
            _behave(ctx, "step")
            _effect(ctx, "step")
            return {"step": ctx.step, "attempt": ctx.attempt}

        def undo(ctx):
            _behave(ctx, "compensation")
            _effect(ctx, "compensation")

        step = definition.step(name=step_name, retry=FAST_RETRY, timeout=5)(action)
        step.compensation(retry=COMP_RETRY)(undo)
    return definition


chain = _make_chain("chain", ["s0", "s1", "s2", "s3"])

# The same chain, its steps run one after another in the task that ran the first.
local_chain = _make_chain("local_chain", ["l0", "l1", "l2", "l3"], local_steps=True)

# A short deadline; its second step sleeps past it.
deadline_chain = _make_chain("deadline_chain", ["d0", "d1", "d2"], deadline=timedelta(seconds=3))

# A step with a short timeout, killed mid-step after its side effect; recovery takes
# timeout + grace.
crashable = sagaflow.define("crashable")


@crashable.step(timeout=4, retry=Retry(attempts=3, backoff=0.1, max_backoff=0.2))
def charge(ctx):
    _effect(ctx, "step")  # the side effect first: a crash after it must not repeat it
    _behave(ctx, "step")
    return {"charged": True}


@charge.compensation
def refund(ctx):
    _behave(ctx, "compensation")
    _effect(ctx, "compensation")


@crashable.step
def ship(ctx):
    _behave(ctx, "step")
    return {"shipped": True}


# An atomic step whose local write must happen exactly once per run.
atomic_saga = sagaflow.define("atomic_saga")


@atomic_saga.step(atomic=True)
def write_locally(ctx):
    _behave(ctx, "step")
    AtomicWrite.objects.create(saga_id=ctx.saga_id, step=ctx.step)
    sleep = (ctx.data or {}).get("hold")
    if sleep:
        time.sleep(sleep)  # keep the transaction open so a duplicate races it
    return {"written": True}


@atomic_saga.step
def after(ctx):
    return {"done": True}


# A step whose result cannot be stored.
bad_result = sagaflow.define("bad_result")


@bad_result.step
def first(ctx):
    _effect(ctx, "step")
    return {"ok": True}


@first.compensation
def undo_first(ctx):
    _effect(ctx, "compensation")


@bad_result.step
def returns_object(ctx):
    return {"when": object()}


# A step whose failure may hide an effect: its compensation runs even when it failed.
uncertain = sagaflow.define("uncertain")


@uncertain.step
def hold(ctx):
    _effect(ctx, "step")
    return {"held": True}


@hold.compensation
def unhold(ctx):
    _behave(ctx, "compensation")


@uncertain.step(compensate_on_failure=True, retry=Retry(attempts=2, backoff=0, max_backoff=0))
def charge_card(ctx):
    _effect(ctx, "step")  # the money moved...
    _behave(ctx, "step")  # ...then the call failed (data says how)
    return {"charged": True}


@charge_card.compensation
def refund_card(ctx):
    _behave(ctx, "compensation")
    # No result was recorded: cancel whatever was done under the step's own key.
    Effect.objects.filter(idempotency_key=ctx.step_key).update(kind="refunded")


# Per-step queues: authorise and capture go to the payments queue (authorise's
# compensation too, having none of its own); reserve goes to the default queue,
# its compensation to the refunds queue.
PAYMENTS_QUEUE = "sagaflow-test-payments"
REFUNDS_QUEUE = "sagaflow-test-refunds"
queued = sagaflow.define("queued")


@queued.step(queue=PAYMENTS_QUEUE, retry=FAST_RETRY, timeout=5)
def authorise(ctx):
    _behave(ctx, "step")
    return {"pid": os.getpid()}


@authorise.compensation(retry=COMP_RETRY)
def void_authorisation(ctx):
    _behave(ctx, "compensation")


@queued.step(retry=FAST_RETRY, timeout=5)
def reserve(ctx):
    _behave(ctx, "step")
    return {"pid": os.getpid()}


@reserve.compensation(retry=COMP_RETRY, queue=REFUNDS_QUEUE)
def release(ctx):
    _behave(ctx, "compensation")


@queued.step(queue=PAYMENTS_QUEUE, retry=FAST_RETRY, timeout=5)
def capture(ctx):
    _behave(ctx, "step")
    return {"pid": os.getpid()}
