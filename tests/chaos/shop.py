"""The harness's own hands on the shop, in its process: what a chaos run sets up and
starts through Django rather than over HTTP.

The injector calls ``start_poison`` and ``start_slow`` for the faults that need a saga
of their own; the load generator calls ``arm_customer`` for the checkouts whose
compensation must keep failing.
"""

from __future__ import annotations

import os

from .load import CATALOGUE, STEP_FAILS


def setup_django(env: dict[str, str]) -> None:
    """Django in the harness's own process, on the private database: migrated, the
    catalogue seeded, and the demo's faults armed as the workload needs them."""
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from demo_shop import chaos, seed

    seed.reset(catalogue=CATALOGUE)
    seed.arm_demo_faults()
    chaos.arm("payments", "error", operation="authorise", customer=STEP_FAILS, rate=1.0)


def arm_customer(customer: str) -> None:
    """A compensation that keeps failing: every try of ``cancel_payment`` errors."""
    from django.db import close_old_connections, transaction

    from demo_shop import chaos
    from demo_shop.sagas import UNDO_RETRY

    close_old_connections()
    with transaction.atomic():
        chaos.arm("shipping", "decline", operation="schedule", customer=customer, rate=1.0)
        chaos.arm(
            "payments",
            "error",
            operation="cancel",
            customer=customer,
            remaining=UNDO_RETRY.attempts,
        )


def start_poison() -> str:
    """A saga whose step SIGKILLs its worker, and two step messages no saga can take."""
    from django.db import close_old_connections, transaction

    from demo_shop.celery import app
    from tests.chaos.chaosapp.sagas import poison

    close_old_connections()
    with transaction.atomic():
        saga = poison.start({})
    app.send_task("sagaflow.execute_step", args=(2**31 - 1, "forward"))
    app.send_task("sagaflow.execute_step", args=("garbage", "sideways"))
    return f"saga {saga.id} whose step SIGKILLs its worker; 2 malformed step messages"


def start_slow() -> str:
    """A saga whose step outlives its lease when its worker is frozen; returns its id."""
    from django.db import close_old_connections, transaction

    from tests.chaos.chaosapp.sagas import slow

    close_old_connections()
    with transaction.atomic():
        return str(slow.start({"sleep": 3.0}).id)
