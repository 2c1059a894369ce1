"""Settle an orchestrated order when its saga ends without confirming it.

The saga signals are sent after commit, so a crash can lose one: ``tasks.reconcile``
(beat) and the order API settle from the saga's state as well. Settling is a
conditional UPDATE, so doing it twice is harmless.
"""

from __future__ import annotations

from django.dispatch import receiver

from sagaflow import signals

from . import settlement


@receiver(signals.saga_compensated, dispatch_uid="shop.settle_compensated")
@receiver(signals.saga_failed, dispatch_uid="shop.settle_failed")
def settle_order(sender, saga, **kwargs) -> None:
    if saga.name == "shop.checkout":
        settlement.settle_from_saga(saga)
