"""Settings for the demo project, read from the environment: development and tests.

With no ``DATABASE_URL`` the demo runs on SQLite and with no ``CELERY_BROKER_URL``
on an in-memory broker, so ``make demo`` needs no services. Production-like runs set
both (PostgreSQL and Redis). ``DEBUG`` is off unless ``DJANGO_DEBUG=1``.

This profile has a fixed, public ``SECRET_KEY``: it is for a developer's machine.
A server runs ``demo_shop.settings_production``, which takes everything from the
environment and passes ``manage.py check --deploy``.
"""

import os
from pathlib import Path

import dj_database_url
import django

BASE_DIR = Path(__file__).resolve().parent.parent

# The "django-insecure-" prefix makes `check --deploy` refuse this key if it ever serves.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or "django-insecure-demo-only-not-secret"
DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
ALLOWED_HOSTS = os.environ.get(
    "DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver"
).split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "rest_framework",
    "drf_spectacular",
    "sagaflow",
    "demo_shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "sagaflow.middleware.IdempotencyMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # X-Frame-Options: DENY, so no other site can frame the admin (clickjacking).
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "demo_shop.urls"
WSGI_APPLICATION = "demo_shop.wsgi.application"
ASGI_APPLICATION = "demo_shop.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'demo.sqlite3'}",
        # Workers keep connections between tasks but check them first, so a
        # PostgreSQL restart costs one reconnect instead of failing every task.
        conn_max_age=60,
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # The demo's in-process worker and its main thread write at once: take the write
    # lock when a transaction begins, and wait for it rather than fail.
    DATABASES["default"]["OPTIONS"] = {"transaction_mode": "IMMEDIATE", "timeout": 30}
    # SQLite without services is `make demo` (one process) by design, DEBUG or not; the
    # server profile requires DATABASE_URL and does not inherit this. sagaflow's outbox
    # needs PostgreSQL (sagaflow.E003): on SQLite the demo runs only sagas and
    # idempotency keys, and events.py feeds the consumers without the outbox.
    SILENCED_SYSTEM_CHECKS = ["sagaflow.E003", "sagaflow.W005"]
# The shop's fake payment and shipping services keep their tables on a connection of
# their own (same database), so their commits do not depend on the shop's transactions.
DATABASES["services"] = {**DATABASES["default"], "TEST": {"MIRROR": "default"}}
DATABASE_ROUTERS = ["demo_shop.routers.ServicesRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
STATIC_URL = "static/"

# --- Celery: the settings sagaflow relies on for at-least-once execution -----
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or "memory://"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
# Celery's Django fixup closes every database connection before and after each task
# unless told to reuse them: a new PostgreSQL session per task, about 5 ms here,
# more than a no-op saga step costs. Reuse them; celery.py still drops a broken or
# expired connection between tasks, as Django does between requests.
CELERY_DB_REUSE_MAX = 1_000_000
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # Longer than the longest step timeout, so a running step is never redelivered.
    "visibility_timeout": 3600,
    # A paused or unreachable Redis makes publishing fail fast instead of hanging
    # a web request; the durable rows and the sweeper recover the message.
    "socket_timeout": 5,
    "socket_connect_timeout": 5,
}
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BEAT_SCHEDULE = {
    "sagaflow-sweep": {"task": "sagaflow.sweep", "schedule": 5.0},
    # Recovery only: publishing transactions kick the relay on commit.
    "sagaflow-relay-outbox": {"task": "sagaflow.relay_outbox", "schedule": 5.0},
    "sagaflow-outbox-sweep": {"task": "sagaflow.outbox_sweep", "schedule": 30.0},
    "sagaflow-janitor": {"task": "sagaflow.janitor", "schedule": 3600.0},
    "shop-release-expired-holds": {"task": "demo_shop.release_expired_holds", "schedule": 30.0},
    "shop-reconcile": {"task": "demo_shop.reconcile", "schedule": 60.0},
}

# --- The JSON API's schema (GET /api/schema), see demo_shop/openapi.py ---------
REST_FRAMEWORK = {"DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema"}
SPECTACULAR_SETTINGS = {
    "TITLE": "sagaflow demo shop",
    "DESCRIPTION": "Checkout with idempotency keys, and the orders it places (their owner only).",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_AUTHENTICATION": [],
    "POSTPROCESSING_HOOKS": ["demo_shop.openapi.add_components"],
}

# Django 6.1 configures mail with MAILERS; EMAIL_BACKEND warns there (deprecated).
if django.VERSION >= (6, 1):
    MAILERS = {"default": {"BACKEND": "django.core.mail.backends.console.EmailBackend"}}
else:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
#: Seconds a stock hold lasts; longer than the checkout saga's deadline (2 min).
SHOP_HOLD_TTL = 600

SAGAFLOW: dict = {}

# Everything to stderr, where gunicorn, celery and compose collect it. Django's own
# default sends request errors to the console only with DEBUG on (and mails them to
# ADMINS otherwise): without "django.request" here a 500 would be logged nowhere.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
            "formatter": "plain",
        }
    },
    "loggers": {
        "sagaflow": {"handlers": ["console"], "level": "INFO"},
        "demo_shop": {"handlers": ["console"], "level": "WARNING"},
        # 5xx with their tracebacks (4xx are answers, not errors: not logged).
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
        # DisallowedHost and other suspicious requests.
        "django.security": {"handlers": ["console"], "level": "ERROR", "propagate": False},
    },
}
