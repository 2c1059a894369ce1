"""The ``Idempotency-Key`` header's grammar: one RFC 8941 Item, never a list.

A header sent twice reaches Django joined with a comma (the server does that),
and a comma was an allowed key character: the pair became one new key and a
client that repeated the header on retry made a second effect. The server test
sends the header twice to a real gunicorn, so the joining is the server's own.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys

import pytest
from django.test import Client
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from sagaflow.models import IdempotencyKey
from tests.idempotency_views import MIDDLEWARE, recorder
from tests.processes import Process
from tests.sagaapp.models import AtomicWrite
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _idempotency_urls(settings):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, MIDDLEWARE]
    settings.ROOT_URLCONF = "tests.idempotency_views"
    recorder.reset()
    yield
    recorder.reset()


def post(raw_key: str, body: dict | None = None, tenant: str = "t1"):
    """POST with the header value exactly as the server hands it to Django."""
    return Client().post(
        "/server/orders/",
        data=json.dumps(body or {"amount": 5}),
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY=raw_key,
        HTTP_X_TENANT=tenant,
    )


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


@pytest.mark.parametrize(
    "raw",
    [
        "K1, K2",
        "K1,K2",
        '"K1", "K2"',
        "8e03978e-40d5-43e8-bc93-6894a57f9324,8e03978e-40d5-43e8-bc93-6894a57f9324",
    ],
    ids=["tokens", "joined-by-server", "strings", "uuids"],
)
def test_more_than_one_member_is_400_and_claims_nothing(raw):
    document = problem(post(raw), 400, "idempotency-key-invalid")
    assert "more than one value" in document["detail"]
    nothing_written()


def test_parameters_are_ignored_so_they_never_make_a_second_key():
    first = post('"k-1";p=1')
    assert first.status_code == 201
    assert first.json()["key"] == "k-1"
    for same in ('"k-1"', "k-1", "k-1;p=2", '"k-1"; other=?0'):
        again = post(same)
        assert again["Idempotent-Replayed"] == "true", same
        assert again.content == first.content
    assert recorder.count() == 1
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["k-1"]


def test_a_semicolon_in_a_bare_key_that_is_no_token_is_400():
    document = problem(post("1;p=1"), 400, "idempotency-key-invalid")
    assert "';' at position 1" in document["detail"]
    nothing_written()


@pytest.mark.parametrize(
    "raw",
    ["8e03978e-40d5-43e8-bc93-6894a57f9324", "a", "~!#$%", "12345", '"a,b;c"', "*x/y:z"],
)
def test_keys_clients_send_today_still_work(raw):
    response = post(raw)
    assert response.status_code == 201, response.content
    assert post(raw)["Idempotent-Replayed"] == "true"


# --- the same, through a real server -----------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server():
    port = _free_port()
    process = Process(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "demo_shop.wsgi:application",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--timeout",
            "30",
        ],
        env={"DJANGO_SETTINGS_MODULE": "tests.idempotency_settings"},
        prefix="gunicorn",
    )

    def answers() -> bool:
        process.exited_early("gunicorn")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    try:
        wait_until(answers, timeout=30)
        yield port
    finally:
        process.close()


def _send(port: int, keys: list[str]) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"amount": 5}).encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest("POST", "/server/orders/")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(len(body)))
        connection.putheader("X-Tenant", "t1")
        for key in keys:
            connection.putheader("Idempotency-Key", key)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@pytest.mark.timeout(90)
def test_a_header_sent_twice_to_gunicorn_is_400_and_runs_nothing(server):
    status, headers, body = _send(server, ["K1", "K2"])
    assert status == 400, body
    assert headers["Content-Type"] == "application/problem+json"
    assert json.loads(body)["code"] == "idempotency-key-invalid"
    status, _, body = _send(server, ["K1", "K1"])  # a client repeating it on retry
    assert status == 400, body
    assert IdempotencyKey.objects.count() == 0
    assert AtomicWrite.objects.count() == 0
    # The control: sent once, the same server runs the view and keeps the key.
    status, _, body = _send(server, ["K1"])
    assert status == 201, body
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["K1"]
    assert AtomicWrite.objects.count() == 1


# --- any value, through the full stack (Hypothesis) ------------------------------------


@hypothesis_settings(
    database=None,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.one_of(
        st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60),
        st.text(alphabet=' ,;="\\*:abc019', max_size=30),
    )
)
def test_any_header_value_is_answered_201_or_400_never_500(raw):
    response = Client(raise_request_exception=False).post(
        "/server/orders/",
        data=b"{}",
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY=raw,
        HTTP_X_TENANT="t1",
    )
    if response.status_code == 400:
        problem(response, 400, "idempotency-key-invalid")
        return
    assert response.status_code == 201, (raw, response.content)
    key = response.json()["key"]
    assert IdempotencyKey.objects.filter(scope="t1", key=key).exists()
