import logging

from django.apps import AppConfig

logger = logging.getLogger("chaos.deliveries")


class ChaosConfig(AppConfig):
    name = "tests.chaos.chaosapp"
    label = "chaosapp"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from celery.signals import task_prerun

        task_prerun.connect(log_relayed_batch, weak=False)


def log_relayed_batch(sender=None, args=None, kwargs=None, task=None, **extra) -> None:
    """Log the event ids of every batch a relay published, as its worker receives it.

    The inbox deduplicates, so the shop's tables cannot say how often an event was
    published; these lines can (``fault_checks.slow_broker``). A consumer retry or a
    redelivery by ``outbox_sweep`` names its consumer and is not a relay's publish;
    a batch the broker returned after its worker died is marked.
    """
    if getattr(sender, "name", "") != "sagaflow.deliver_events" or not args:
        return
    kwargs = kwargs or {}
    if kwargs.get("consumer") or kwargs.get("retry") or len(args) > 1:
        return
    info = getattr(getattr(sender, "request", None), "delivery_info", None) or {}
    ids = ",".join(str(e.get("id")) for e in args[0] if isinstance(e, dict))
    logger.warning("chaos relayed batch ids=%s redelivered=%s", ids, bool(info.get("redelivered")))
