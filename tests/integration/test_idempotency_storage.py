"""Which responses are stored for replay, and what happens to the key when one is not.

A response that is not stored either releases its key (a 4xx: the request
changed nothing, so running it again is harmless) or keeps it without a body (a
success may have acted: a retry answers 409 and never runs it twice). Either way
the response says so in ``Idempotent-Not-Stored``, and a log line says why.
"""

from __future__ import annotations

import logging

import pytest
from django.db import connections
from django.test import Client

from sagaflow.models import IdempotencyKey, IdempotencyKeyState
from tests.idempotency_views import MIDDLEWARE, recorder
from tests.sagaapp.models import AtomicWrite

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _idempotency_urls(settings):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, MIDDLEWARE]
    settings.ROOT_URLCONF = "tests.idempotency_views"
    recorder.reset()
    yield
    recorder.reset()


@pytest.fixture
def client_a(django_user_model):
    alice = django_user_model.objects.create_user("alice", password="pw-alice")
    client = Client()
    client.force_login(alice)
    return client


@pytest.fixture
def atomic_requests():
    settings_dict = connections.settings["default"]
    previous = settings_dict["ATOMIC_REQUESTS"]
    settings_dict["ATOMIC_REQUESTS"] = True
    yield
    settings_dict["ATOMIC_REQUESTS"] = previous


def sagaflow_settings(settings, **values) -> None:
    settings.SAGAFLOW = {**getattr(settings, "SAGAFLOW", {}), **values}


def post(client, query: str, key: str = "key-1"):
    return client.post(
        f"/sized/?{query}",
        data=b"{}",
        content_type="application/json",
        headers={"Idempotency-Key": key},
    )


def problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    document = response.json()
    assert (document["status"], document["code"]) == (status, code)
    return document


def not_stored_logged(caplog, reason: str) -> None:
    lines = [r.getMessage() for r in caplog.records if r.name == "sagaflow.idempotency"]
    assert any("not stored" in line and reason in line for line in lines), lines


# --- IDEMPOTENCY_MAX_RESPONSE_BYTES ---------------------------------------------------


def test_a_35_mb_4xx_is_not_stored_by_default_and_its_key_is_released(client_a, caplog):
    caplog.set_level(logging.WARNING, logger="sagaflow.idempotency")
    query = "size=3500000&status=400"
    first = post(client_a, query)
    assert first.status_code == 400
    assert len(first.content) == 3_500_000  # the client still gets all of it
    assert first["Idempotent-Not-Stored"] == "too-large;key=released"
    not_stored_logged(caplog, "too-large")
    assert IdempotencyKey.objects.count() == 0
    again = post(client_a, query)  # the key is free: it runs again
    assert again.status_code == 400
    assert not again.has_header("Idempotent-Replayed")
    assert again.content.startswith(b"2:")
    assert recorder.count() == 2


@pytest.mark.parametrize("mode", ["claim-first", "atomic"])
def test_a_success_above_the_limit_keeps_its_key_without_a_body(
    client_a, settings, caplog, mode, request
):
    if mode == "atomic":
        request.getfixturevalue("atomic_requests")
    caplog.set_level(logging.WARNING, logger="sagaflow.idempotency")
    sagaflow_settings(settings, IDEMPOTENCY_MAX_RESPONSE_BYTES=1000)
    first = post(client_a, "size=1001")
    assert first.status_code == 201
    assert first["Idempotent-Not-Stored"] == "too-large;key=kept"
    not_stored_logged(caplog, "too-large")
    row = IdempotencyKey.objects.get()
    assert (row.state, row.response_status, row.response_body) == (
        IdempotencyKeyState.COMPLETED,
        201,
        None,
    )
    problem(post(client_a, "size=1001"), 409, "idempotency-response-not-stored")
    assert recorder.count() == 1  # never run twice
    assert AtomicWrite.objects.count() == 1


def test_a_response_at_the_limit_is_stored(client_a, settings):
    sagaflow_settings(settings, IDEMPOTENCY_MAX_RESPONSE_BYTES=1000)
    first = post(client_a, "size=1000&status=400")
    assert not first.has_header("Idempotent-Not-Stored")
    again = post(client_a, "size=1000&status=400")
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert recorder.count() == 1


def test_no_limit_when_the_setting_is_none(client_a, settings):
    sagaflow_settings(settings, IDEMPOTENCY_MAX_RESPONSE_BYTES=None)
    first = post(client_a, "size=2000000")
    assert post(client_a, "size=2000000").content == first.content
    assert recorder.count() == 1


# --- the deviations a project may turn off ---------------------------------------------


def test_4xx_is_stored_by_default(client_a):
    first = post(client_a, "status=409")
    assert post(client_a, "status=409")["Idempotent-Replayed"] == "true"
    assert first.status_code == 409
    assert recorder.count() == 1


def test_4xx_releases_its_key_when_client_errors_are_not_stored(client_a, settings, caplog):
    caplog.set_level(logging.WARNING, logger="sagaflow.idempotency")
    sagaflow_settings(settings, IDEMPOTENCY_STORE_CLIENT_ERRORS=False)
    first = post(client_a, "status=409")
    assert first.status_code == 409
    assert first["Idempotent-Not-Stored"] == "client-error;key=released"
    not_stored_logged(caplog, "client-error")
    assert IdempotencyKey.objects.count() == 0
    assert not post(client_a, "status=409").has_header("Idempotent-Replayed")
    assert post(client_a, "status=201").status_code == 201  # a 2xx is stored as ever
    assert post(client_a, "status=201")["Idempotent-Replayed"] == "true"


def test_no_store_responses_are_stored_by_default_and_replayed_as_no_store(client_a):
    first = post(client_a, "no_store=1")
    again = post(client_a, "no_store=1")
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert again["Cache-Control"] == "no-store"  # an intermediary still must not keep it
    assert recorder.count() == 1


def test_no_store_responses_keep_their_key_without_a_body_when_asked(client_a, settings):
    sagaflow_settings(settings, IDEMPOTENCY_STORE_NO_STORE_RESPONSES=False)
    first = post(client_a, "no_store=1")
    assert first.status_code == 201
    assert first["Idempotent-Not-Stored"] == "no-store;key=kept"
    assert IdempotencyKey.objects.get().response_body is None
    problem(post(client_a, "no_store=1"), 409, "idempotency-response-not-stored")
    assert recorder.count() == 1
