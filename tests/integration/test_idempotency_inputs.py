"""Request bodies ``@idempotent`` must handle: multipart forms, bodies already read,
and JSON nested too deeply to parse.

Through Django's full request stack (the test client: middleware, CSRF, DRF) on
PostgreSQL, committed (``transaction=True``). Each refusal is checked for what it
must not leave behind: no key row, no run of the view, no row the view writes.
"""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.test.client import encode_multipart

from sagaflow.models import IdempotencyKey
from tests.idempotency_views import MIDDLEWARE, recorder
from tests.sagaapp.models import AtomicWrite

pytestmark = pytest.mark.django_db(transaction=True)

CSRF_SECRET = "c" * 32
DEEP = "[" * 1000 + "]" * 1000  # 2 KB, 1,000 levels: past Python's recursion limit


@pytest.fixture(autouse=True)
def _idempotency_urls(settings):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, MIDDLEWARE]
    settings.ROOT_URLCONF = "tests.idempotency_views"
    recorder.reset()
    yield
    recorder.reset()


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="pw-alice")


@pytest.fixture
def client_a(alice):
    client = Client()
    client.force_login(alice)
    return client


@pytest.fixture
def csrf_client(alice):
    """A browser-like client: CSRF is enforced, the token comes in the form body."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    client.cookies["csrftoken"] = CSRF_SECRET
    return client


def problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    document = response.json()
    assert (document["status"], document["code"]) == (status, code)
    assert document["type"] == f"urn:sagaflow:problem:{code}"
    return document


def nothing_written() -> None:
    assert IdempotencyKey.objects.count() == 0
    assert AtomicWrite.objects.count() == 0
    assert recorder.count() == 0


def form(**extra):
    return {
        "amount": "5",
        "note": "two words",
        "receipt": SimpleUploadedFile("receipt.txt", b"paid 5", content_type="text/plain"),
        **extra,
    }


def multipart(client, url: str, data: dict, *, key: str = "key-1", boundary: str = "B0UNDARY"):
    return client.post(
        url,
        data=encode_multipart(boundary, data),
        content_type=f"multipart/form-data; boundary={boundary}",
        headers={"Idempotency-Key": key},
    )


# --- multipart: the stream already read, and the boundary ---------------------------


def test_multipart_post_whose_stream_csrf_already_read_runs_once_and_replays(csrf_client):
    # CsrfViewMiddleware reads request.POST for the token: the raw body is gone.
    first = multipart(csrf_client, "/uploads/", form(csrfmiddlewaretoken=CSRF_SECRET))
    assert first.status_code == 201, first.content
    assert first.json()["files"] == {"receipt": [6]}
    again = multipart(csrf_client, "/uploads/", form(csrfmiddlewaretoken=CSRF_SECRET))
    assert again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert recorder.count("upload") == 1
    assert AtomicWrite.objects.count() == 1


def test_multipart_post_whose_stream_drf_already_parsed_runs_once_and_replays(csrf_client):
    # DRF's SessionAuthentication checks CSRF through request.POST: DRF parses first.
    first = multipart(csrf_client, "/drf/uploads/", form(csrfmiddlewaretoken=CSRF_SECRET))
    assert first.status_code == 201, first.content
    assert first.json()["fields"] == ["amount", "note", "receipt"]
    again = multipart(csrf_client, "/drf/uploads/", form(csrfmiddlewaretoken=CSRF_SECRET))
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert recorder.count("drf-upload") == 1


def test_multipart_retry_with_a_new_boundary_is_the_same_request(client_a):
    first = multipart(client_a, "/uploads/", form(), boundary="first-boundary-1")
    retry = multipart(client_a, "/uploads/", form(), boundary="retry-boundary-22")
    assert first.status_code == retry.status_code == 201, retry.content
    assert retry["Idempotent-Replayed"] == "true"
    assert recorder.count("upload") == 1


@pytest.mark.parametrize(
    "change",
    [
        {"amount": "6"},
        {"receipt": SimpleUploadedFile("receipt.txt", b"paid 6", content_type="text/plain")},
        {"receipt": SimpleUploadedFile("other.txt", b"paid 5", content_type="text/plain")},
        {"extra": "1"},
    ],
    ids=["field", "file-content", "file-name", "added-field"],
)
def test_multipart_with_other_fields_or_files_is_422(client_a, change):
    assert multipart(client_a, "/uploads/", form()).status_code == 201
    problem(multipart(client_a, "/uploads/", form(**change)), 422, "idempotency-key-reused")
    assert recorder.count("upload") == 1


def test_malformed_multipart_is_400_and_claims_nothing(client_a):
    response = client_a.post(
        "/uploads/",
        data=b"--x\r\nnot a part",
        content_type="multipart/form-data",  # no boundary: the parser refuses it
        headers={"Idempotency-Key": "key-1"},
    )
    problem(response, 400, "request-body-malformed")
    nothing_written()


# --- JSON nested too deeply ---------------------------------------------------------------


@pytest.mark.parametrize("url", ["/orders/writing/", "/orders/atomic/", "/drf/function/"])
def test_deeply_nested_json_is_400_and_claims_nothing(client_a, url):
    assert len(DEEP) == 2000
    response = client_a.post(
        url, data=DEEP, content_type="application/json", headers={"Idempotency-Key": "deep"}
    )
    document = problem(response, 400, "request-body-malformed")
    assert "nested" in document["detail"]
    nothing_written()
    # The key is free: the same key with a readable body runs.
    ok = client_a.post(
        url,
        data=json.dumps([[1]]),
        content_type="application/json",
        headers={"Idempotency-Key": "deep"},
    )
    assert ok.status_code == 201


def test_json_as_deep_as_python_parses_it_is_fingerprinted(client_a):
    body = "[" * 200 + "]" * 200
    response = client_a.post(
        "/orders/", data=body, content_type="application/json", headers={"Idempotency-Key": "k"}
    )
    assert response.status_code == 201
    assert recorder.count() == 1
