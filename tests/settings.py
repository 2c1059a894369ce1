"""Test settings: the demo project's, plus the test app whose sagas the suite drives.

The suite runs against PostgreSQL and Redis (``DATABASE_URL``, ``CELERY_BROKER_URL``);
``make test`` points them at localhost by default.
"""

import importlib.util
import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@localhost:5432/sagaflow")
os.environ.setdefault("CELERY_BROKER_URL", "redis://localhost:6379/0")

from demo_shop.settings import *  # noqa: F403
from demo_shop.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.sagaapp", "tests.outboxapp"]
# django-celery-beat (an extra) pins Django<6.1, so `make matrix` runs the Django 6.1
# leg without it; only the acceptance tier starts beat with its DatabaseScheduler.
if importlib.util.find_spec("django_celery_beat") is None:
    INSTALLED_APPS.remove("django_celery_beat")

# Short timings so recovery paths run in seconds, not minutes.
SAGAFLOW = {
    "LEASE_GRACE": 1.0,
    "REDISPATCH_AFTER": 2.0,
    "DEFAULT_RETRY_BACKOFF": 0.05,
    "DEFAULT_RETRY_MAX_BACKOFF": 0.2,
    "DEFAULT_STEP_TIMEOUT": 10.0,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"sagaflow": {"handlers": ["console"], "level": "WARNING"}},
}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
