"""Settings for a real web server (gunicorn) serving the idempotency tests' views."""

from tests.settings import *  # noqa: F403

ROOT_URLCONF = "tests.idempotency_views"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
