"""Settings for the relay benchmark's child processes (``manage.py sagaflow_relay``,
django-celery-outbox's relay): the bench settings, the bench queue, batch 100."""

import os

from bench.relay_backlog import QUEUE
from bench.settings import *  # noqa: F403
from bench.settings import INSTALLED_APPS

SAGAFLOW = {
    "OUTBOX_QUEUE": QUEUE,
    "OUTBOX_BATCH_SIZE": int(os.environ.get("BENCH_RELAY_BATCH", "100")),
    "OUTBOX_KICK_ON_COMMIT": False,
}
if os.environ.get("BENCH_RELAY_DCO"):
    INSTALLED_APPS = [*INSTALLED_APPS, "django_celery_outbox"]
    CELERY_OUTBOX_RELAY = {"batch_size": 100}
