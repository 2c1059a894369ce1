"""The pure parts of the idempotency policy: no database."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.http import HttpResponse
from django.test import RequestFactory

from sagaflow.conf import conf
from sagaflow.exceptions import (
    ConfigurationError,
    IdempotencyBodyMalformed,
    IdempotencyKeyInFlight,
    IdempotencyKeyInvalid,
    IdempotencyKeyReused,
)
from sagaflow.idempotency import (
    fingerprint,
    idempotent,
    parse_key,
    problem_response,
    user_scope,
)
from sagaflow.idempotency.http import stored_headers
from sagaflow.middleware import IdempotencyMiddleware

factory = RequestFactory()


def _fp(body: str, content_type: str = "application/json", path: str = "/orders/") -> str:
    request = factory.post(path, data=body, content_type=content_type)
    return fingerprint(request, "POST", "orders/")


def test_defaults():
    assert conf.IDEMPOTENCY_TTL == 86400.0
    assert conf.IDEMPOTENCY_METHODS == ("POST", "PUT", "PATCH", "DELETE")
    assert conf.IDEMPOTENCY_SCOPE == "sagaflow.idempotency.user_scope"


@pytest.mark.parametrize("raw", ["a", "8e03978e-40d5-43e8-bc93-6894a57f9324", "x" * 255, "~!#$%"])
def test_valid_keys(raw):
    assert parse_key(raw) == raw


def test_absent_key_is_none_and_sf_string_is_unquoted():
    assert parse_key(None) is None
    assert parse_key('"abc"') == "abc"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "0 characters long"),
        ("x" * 256, "256 characters long"),
        ("a b", "' ' at position 1"),
        ("ok\u00e9", "'é' at position 2"),
        ("a\x7f", "position 1"),
        ('"', "'\"' at position 0"),
    ],
)
def test_invalid_keys_name_the_problem(raw, message):
    with pytest.raises(IdempotencyKeyInvalid) as info:
        parse_key(raw)
    assert message in info.value.detail
    assert info.value.status_code == 400
    assert info.value.code == "idempotency-key-invalid"


def test_key_length_bounds_are_settings(settings):
    settings.SAGAFLOW = {"IDEMPOTENCY_KEY_MIN_LENGTH": 8}
    with pytest.raises(IdempotencyKeyInvalid, match="send 8 to 255"):
        parse_key("short")


def test_json_fingerprint_ignores_key_order_and_whitespace():
    assert _fp('{"a": 1, "b": [1, {"c": 2, "d": 3}]}') == _fp('{"b":[1,{"d":3,"c":2}],"a":1}')


@pytest.mark.parametrize(
    "other",
    [
        {"body": '{"a": 2}'},
        {"body": '{"a": 1}', "path": "/orders/?x=1"},
        {"body": '{"a": 1}', "content_type": "application/vnd.api+json"},
    ],
)
def test_fingerprint_covers_body_path_and_content_type(other):
    assert _fp('{"a": 1}') != _fp(**other)


def test_non_json_bodies_are_compared_byte_for_byte():
    form = "application/x-www-form-urlencoded"
    assert _fp("a=1&b=2", form) != _fp("b=2&a=1", form)


def test_malformed_json_is_refused():
    with pytest.raises(IdempotencyBodyMalformed, match="not valid JSON"):
        _fp('{"a": ')


def test_problem_response_shape():
    response = problem_response(IdempotencyKeyInFlight("busy", retry_after=3))
    assert response.status_code == 409
    assert response["Content-Type"] == "application/problem+json"
    assert response["Retry-After"] == "3"
    assert json.loads(response.content) == {
        "type": "urn:sagaflow:problem:idempotency-key-in-flight",
        "title": IdempotencyKeyInFlight.title,
        "status": 409,
        "detail": "busy",
        "code": "idempotency-key-in-flight",
    }
    assert problem_response(IdempotencyKeyReused("x")).status_code == 422


def test_cookie_and_auth_headers_are_never_stored_even_if_allowed(settings):
    settings.SAGAFLOW = {
        "IDEMPOTENCY_REPLAY_HEADERS": ("Content-Type", "Set-Cookie", "WWW-Authenticate", "X-A")
    }
    response = HttpResponse("x", content_type="text/plain")
    response["WWW-Authenticate"] = "Basic"
    response["X-A"] = "1"
    response["X-B"] = "2"
    response.set_cookie("session", "s")
    assert stored_headers(response) == [["Content-Type", "text/plain"], ["X-A", "1"]]


def test_user_scope_has_no_anonymous_bucket():
    from django.contrib.auth.models import AnonymousUser

    request = factory.post("/")
    request.user = AnonymousUser()
    assert user_scope(request) is None
    assert user_scope(factory.post("/")) is None


@pytest.mark.parametrize("ttl", [0, -1, "1d", True])
def test_bad_ttl_is_refused_at_decoration(ttl):
    with pytest.raises(ConfigurationError, match="ttl"):
        idempotent(ttl=ttl)


def test_ttl_accepts_timedelta_and_seconds():
    assert idempotent(ttl=timedelta(hours=1))(lambda request: None).sagaflow_idempotent.ttl == 3600
    assert idempotent(ttl=5)(lambda request: None).sagaflow_idempotent.ttl == 5.0


def test_class_without_unsafe_handlers_is_refused():
    class ReadOnly:
        def get(self, request):
            return None

    with pytest.raises(ConfigurationError, match="defines none of"):
        idempotent(ReadOnly)


def test_middleware_renders_idempotency_errors_only():
    middleware = IdempotencyMiddleware(lambda request: HttpResponse())
    request = factory.post("/")
    assert middleware.process_exception(request, ValueError()) is None
    rendered = middleware.process_exception(request, IdempotencyKeyInFlight("x", retry_after=1))
    assert rendered.status_code == 409
    middleware(request)
    assert request.idempotency is None
