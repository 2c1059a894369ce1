"""Settings for benchmarks: the demo's, plus the bench app, on their own database."""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@localhost:5432/sagaflow_bench")
os.environ.setdefault("CELERY_BROKER_URL", "redis://localhost:6379/3")

from demo_shop.settings import *  # noqa: F403
from demo_shop.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "bench.benchapp"]
LOGGING = {"version": 1, "disable_existing_loggers": False}
