"""The demo as a server: ``DJANGO_SETTINGS_MODULE=demo_shop.settings_production``.

Everything a deployment decides comes from the environment, and what has no safe
default is required (the process refuses to start without it, saying what to set):

- ``DJANGO_SECRET_KEY``: 50 or more random characters, e.g. the output of
  ``python -c "import secrets; print(secrets.token_urlsafe(50))"``; while rotating,
  ``DJANGO_SECRET_KEY_FALLBACKS`` (comma-separated) keeps the old ones valid;
- ``DJANGO_ALLOWED_HOSTS``: comma-separated host names, never ``*``;
- ``DATABASE_URL`` (PostgreSQL) and ``CELERY_BROKER_URL`` (Redis or RabbitMQ);
- ``DJANGO_CSRF_TRUSTED_ORIGINS`` (optional): e.g. ``https://shop.example.com``.

It runs behind a reverse proxy that terminates TLS. That proxy redirects plain HTTP
to HTTPS and sets ``Strict-Transport-Security`` on every response (also on those
Django never sees), so Django's redirect and HSTS checks are silenced below; and it
must set ``X-Forwarded-Proto`` itself, overwriting any the client sent, because
Django trusts that header (``SECURE_PROXY_SSL_HEADER``) to know a request was
HTTPS. Cookies are ``Secure`` (browsers also keep them for ``http://localhost``,
where ``docker compose up`` serves the shop without a proxy).

``manage.py check --deploy`` passes with this profile, without warnings.
"""

import os

from django.core.exceptions import ImproperlyConfigured

from .settings import *  # noqa: F403


def _required(name: str, what: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise ImproperlyConfigured(f"{name} is not set: {what}")
    return value


def _list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


DEBUG = False
SECRET_KEY = _required(
    "DJANGO_SECRET_KEY",
    "set it to 50 or more random characters, kept secret "
    '(python -c "import secrets; print(secrets.token_urlsafe(50))").',
)
SECRET_KEY_FALLBACKS = _list(os.environ.get("DJANGO_SECRET_KEY_FALLBACKS", ""))
ALLOWED_HOSTS = _list(
    _required("DJANGO_ALLOWED_HOSTS", "the host names this site answers to, comma-separated.")
)
if "*" in ALLOWED_HOSTS:
    raise ImproperlyConfigured(
        "DJANGO_ALLOWED_HOSTS contains '*': name the hosts this site answers to, so that "
        "a forged Host header cannot end up in its links and e-mails."
    )
CSRF_TRUSTED_ORIGINS = _list(os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", ""))

_required("DATABASE_URL", "the PostgreSQL database, e.g. postgres://user:password@host/db.")
_required("CELERY_BROKER_URL", "the broker, e.g. redis://host:6379/0.")

# HTTPS, as the proxy in front reports it.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"

SILENCED_SYSTEM_CHECKS = [
    # SECURE_HSTS_SECONDS: the TLS proxy sets Strict-Transport-Security (see above).
    "security.W004",
    # SECURE_SSL_REDIRECT: the TLS proxy redirects plain HTTP (see above).
    "security.W008",
]
