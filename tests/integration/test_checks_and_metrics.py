"""System checks with stable ids, and Prometheus metrics fed by the signals."""

import pytest
from django.core.checks import run_checks
from prometheus_client import REGISTRY

from sagaflow.testing import captured_dispatches, run_inline
from tests.sagaapp import sagas


def ids():
    return sorted(m.id for m in run_checks() if m.id.startswith("sagaflow."))


def test_clean_settings_pass():
    assert ids() == []


def test_missing_celery_settings_are_reported(settings):
    settings.CELERY_TASK_ACKS_LATE = False
    del settings.CELERY_WORKER_PREFETCH_MULTIPLIER
    assert ids() == ["sagaflow.W001", "sagaflow.W003"]


def test_short_visibility_timeout_is_an_error(settings):
    settings.CELERY_BROKER_URL = "redis://localhost:6379/0"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 5}
    messages = [m for m in run_checks() if m.id == "sagaflow.E002"]
    assert len(messages) == 1
    # The longest lease among the test sagas: a 10 s default timeout + 1 s grace.
    assert "(5s) is shorter than step" in messages[0].msg and "(11s)" in messages[0].msg


def test_idempotent_views_without_the_middleware(settings):
    settings.ROOT_URLCONF = "tests.idempotency_views"
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if "sagaflow" not in m]
    assert "sagaflow.E001" in ids()
    settings.MIDDLEWARE = ["sagaflow.middleware.IdempotencyMiddleware", *settings.MIDDLEWARE]
    assert "sagaflow.W004" in ids() and "sagaflow.E001" not in ids()


def test_sqlite_outside_debug_is_flagged(settings, monkeypatch):
    from django.db import connections

    settings.DEBUG = False
    monkeypatch.setattr(connections["default"], "vendor", "sqlite")
    assert ids() == ["sagaflow.E003", "sagaflow.W005"]


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.django_db
def test_metrics_count_outcomes_and_durations(django_capture_on_commit_callbacks):
    failed = {"saga": "chain", "outcome": "failed"}
    before = sample("sagaflow_sagas_finished_total", **failed)
    comp_fail = {"saga": "chain", "step": "s1", "phase": "compensate", "outcome": "failed"}
    before_steps = sample("sagaflow_step_duration_seconds_count", **comp_fail)
    with captured_dispatches(), django_capture_on_commit_callbacks(execute=True):
        run_inline(sagas.chain, {"fail": {"s2": "abort"}, "comp_fail": {"s1": "always"}})
    assert sample("sagaflow_sagas_finished_total", **failed) == before + 1
    assert sample("sagaflow_step_duration_seconds_count", **comp_fail) == before_steps + 3
    assert sample("sagaflow_outbox_events", state="pending") == 0
