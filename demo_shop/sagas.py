"""The demo's sagas. The full shop checkout (stock, payments, shipping services
with injected failures) comes with the shop; this small one shows the engine."""

from datetime import timedelta

import sagaflow
from sagaflow import Abort, Retry

checkout = sagaflow.define("demo_checkout", deadline=timedelta(minutes=5))


@checkout.step(retry=Retry(attempts=3, backoff=0.1, max_backoff=1), timeout=10)
def reserve_stock(ctx):
    return {"reservation": f"R-{ctx.data['order']}", "items": ctx.data["items"]}


@reserve_stock.compensation
def release_stock(ctx):
    return None


@checkout.step(retry=Retry(attempts=3, backoff=0.1, max_backoff=1), timeout=10)
def authorise_payment(ctx):
    if ctx.data.get("card") == "declined":
        raise Abort("card declined")
    if ctx.data.get("flaky_gateway") and ctx.attempt < 2:
        raise ConnectionError("payment gateway timed out; retrying with the same key")
    return {"authorisation": f"A-{ctx.data['order']}", "key": ctx.idempotency_key}


@authorise_payment.compensation
def void_payment(ctx):
    return None


@checkout.step(atomic=True)
def confirm_order(ctx):
    return {"confirmed": True}
