"""Settings of every process the chaos harness starts (web, workers, relays, beats).

The demo project's settings with recovery timings short enough for minutes-long runs.
``CHAOS_UNSAFE=acks,publish,sweeper`` is the control configuration the suite must catch:
early acks, step messages published inside the transaction, and no sweepers; the
other names (``lock-wait``, ``deadline``, ``rename``, ``clock``) each revert one fix
(``tests/chaos/unsafe/patches.py``).
"""

import os

from demo_shop.settings import *  # noqa: F403
from demo_shop.settings import CELERY_BEAT_SCHEDULE as _SCHEDULE
from demo_shop.settings import INSTALLED_APPS as _APPS

DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [*_APPS, "tests.chaos.chaosapp"]

#: Seconds between two sweeps (the "sweep interval" of invariant 1).
SWEEP_INTERVAL = 2.0

SAGAFLOW = {
    "LEASE_GRACE": 2.0,
    "REDISPATCH_AFTER": 5.0,
    "CONSUMER_REDELIVER_AFTER": 10.0,
    "CONSUMER_RETRY_MAX_BACKOFF": 10.0,
    "OUTBOX_POLL_INTERVAL": 0.5,
    "OUTBOX_RETRY_BACKOFF": 0.2,
    "OUTBOX_RETRY_MAX_BACKOFF": 5.0,
    "OUTBOX_MAX_ATTEMPTS": 10_000,
    "OUTBOX_PUBLISH_TIMEOUT": 8.0,
}

CELERY_BEAT_SCHEDULE = {
    **_SCHEDULE,
    "sagaflow-sweep": {"task": "sagaflow.sweep", "schedule": SWEEP_INTERVAL},
    "sagaflow-relay-outbox": {"task": "sagaflow.relay_outbox", "schedule": 2.0},
    "sagaflow-outbox-sweep": {"task": "sagaflow.outbox_sweep", "schedule": 5.0},
    "shop-reconcile": {"task": "demo_shop.reconcile", "schedule": 5.0},
}

#: The control's unsafe settings, any of ``acks,publish,sweeper`` (comma-separated).
UNSAFE = frozenset(filter(None, os.environ.get("CHAOS_UNSAFE", "").split(",")))
if "acks" in UNSAFE:  # early acks: a message is acked before its task runs (C1, C2)
    CELERY_TASK_ACKS_LATE = False
    CELERY_TASK_REJECT_ON_WORKER_LOST = False
    # sagaflow's tasks ask for late acks themselves; annotations override them.
    CELERY_TASK_ANNOTATIONS = {"*": {"acks_late": False, "reject_on_worker_lost": False}}
if "sweeper" in UNSAFE:  # nothing re-sends a lost step message or a lost event
    for _name in ("sagaflow-sweep", "sagaflow-outbox-sweep"):
        CELERY_BEAT_SCHEDULE.pop(_name)
#: Unsafe settings that are patches of sagaflow, applied by ``tests.chaos.unsafe``.
PATCHED = frozenset({"publish", "lock-wait", "deadline", "rename", "clock"})
if UNSAFE & PATCHED:
    INSTALLED_APPS = [*INSTALLED_APPS, "tests.chaos.unsafe"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"chaos": {"()": "tests.chaos.logfmt.ExtraFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "chaos"}},
    "loggers": {
        "sagaflow": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        "demo_shop": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        "chaos": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}
