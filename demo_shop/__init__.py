"""The demo project: a shop whose checkout exercises sagaflow."""

from .celery import app as celery_app

__all__ = ["celery_app"]
