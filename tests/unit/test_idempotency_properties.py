"""Properties of the key's grammar and of the request fingerprint (Hypothesis).

No database: ``parse_key`` and ``fingerprint`` are pure functions of the header
and the request. The examples are generated afresh on every run (no example
database is kept), and a failure prints the smallest value that breaks them.
"""

from __future__ import annotations

import json
import random

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import RequestFactory
from django.test.client import encode_multipart
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sagaflow.exceptions import (
    IdempotencyBodyMalformed,
    IdempotencyError,
    IdempotencyKeyInvalid,
)
from sagaflow.idempotency import fingerprint, parse_key

factory = RequestFactory()
PROPERTY = settings(
    database=None,
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
)
KEY_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"\\')
BARE_KEY_CHARS = "".join(c for c in KEY_CHARS if c not in ",;")

# --- Idempotency-Key header values --------------------------------------------------

sf_token = st.from_regex(r"[A-Za-z*][A-Za-z0-9!#$%&'*+.^_`|~:/-]{0,20}", fullmatch=True)
sf_string = st.text(alphabet=KEY_CHARS + " ", max_size=20).map(
    lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
)
sf_parameters = st.lists(
    st.tuples(st.from_regex(r"[a-z*][a-z0-9_.*-]{0,5}", fullmatch=True), sf_token | sf_string),
    max_size=3,
).map(lambda params: "".join(f";{name}={value}" for name, value in params))
sf_like = st.tuples(
    st.lists(st.tuples(sf_token | sf_string, sf_parameters), min_size=1, max_size=3),
    st.sampled_from([",", ", ", " ,", ",,"]),
).map(lambda t: t[1].join(value + params for value, params in t[0]))
header_values = st.one_of(
    st.text(max_size=300),  # anything at all, past the length bound too
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0xFF), max_size=40),
    st.text(alphabet=KEY_CHARS + ' ,;="\\', max_size=40),
    sf_like,
)


@PROPERTY
@given(header_values)
@example("K1, K2")
@example('"k";p=1')
@example("\x00")
@example(" " * 5)
def test_any_header_value_is_a_valid_key_or_a_400_never_another_exception(raw):
    try:
        key = parse_key(raw)
    except IdempotencyKeyInvalid as error:
        assert error.status_code == 400
        assert error.detail  # it says what was wrong
        return
    assert isinstance(key, str)
    assert 1 <= len(key) <= 255
    assert all(c in KEY_CHARS for c in key), key


@PROPERTY
@given(st.text(alphabet=KEY_CHARS, min_size=1, max_size=255), sf_parameters)
def test_a_key_sent_as_a_structured_field_string_is_itself_whatever_its_parameters(key, params):
    quoted = '"' + key + '"'  # KEY_CHARS has neither '"' nor '\\': nothing to escape
    assert parse_key(quoted) == key
    assert parse_key(quoted + params) == key


@PROPERTY
@given(st.lists(st.text(alphabet=BARE_KEY_CHARS, min_size=1, max_size=40), min_size=2, max_size=4))
def test_a_repeated_header_is_never_taken_for_one_key(keys):
    for separator in (",", ", "):
        joined = separator.join(keys)
        try:
            parse_key(joined)
        except IdempotencyKeyInvalid:
            continue
        raise AssertionError(f"{joined!r} was taken for one key")


# --- the fingerprint: JSON bodies ------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


def _fp(body: bytes | str, content_type: str = "application/json") -> str:
    request = factory.post("/orders/", data=body, content_type=content_type)
    return fingerprint(request, "POST", "orders/")


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _shuffled(value, rng: random.Random):
    """The same JSON value, its objects' keys in another order (dicts keep insertion order)."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: _shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [_shuffled(v, rng) for v in value]
    return value


@PROPERTY
@given(
    json_values,
    st.randoms(use_true_random=False),
    st.sampled_from([None, 0, 2, "\t"]),
    st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : ")]),
    st.booleans(),
)
def test_equivalent_json_bodies_fingerprint_the_same(value, rng, indent, separators, ascii_only):
    compact = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    other = json.dumps(
        _shuffled(value, rng), indent=indent, separators=separators, ensure_ascii=ascii_only
    )
    assert _fp(compact.encode()) == _fp(("\n " + other + " \n").encode())


@PROPERTY
@given(json_values, json_values)
def test_different_json_bodies_fingerprint_differently(first, second):
    if _canonical(first) == _canonical(second):
        assert _fp(json.dumps(first)) == _fp(json.dumps(second))
    else:
        assert _fp(json.dumps(first)) != _fp(json.dumps(second))


@PROPERTY
@given(st.text(min_size=1))
def test_a_json_body_that_is_not_json_is_a_400_never_another_exception(text):
    try:
        _fp(text.encode("utf-8", "surrogatepass"))
    except IdempotencyError as error:
        assert error.status_code == 400


@pytest.mark.parametrize("depth", [1000, 5000, 100_000])
def test_json_nested_deeper_than_python_parses_is_a_400(depth):
    with pytest.raises(IdempotencyBodyMalformed, match="nested too deeply"):
        _fp("[" * depth + "]" * depth)


# --- the fingerprint: multipart forms --------------------------------------------------

boundaries = st.from_regex(r"[A-Za-z0-9'()+_,.-]{1,60}", fullmatch=True)
field_names = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
forms = st.dictionaries(
    field_names, st.lists(st.text(max_size=20).filter(lambda s: "\r" not in s), max_size=3)
)
uploads = st.dictionaries(field_names, st.binary(max_size=200), max_size=2)


def _multipart(fields: dict, files: dict, boundary: str) -> str:
    data = {**fields}
    for name, content in files.items():
        data[f"file_{name}"] = SimpleUploadedFile(f"{name}.bin", content)
    request = factory.post(
        "/orders/",
        data=encode_multipart(boundary, data),
        content_type=f"multipart/form-data; boundary={boundary}",
    )
    return fingerprint(request, "POST", "orders/")


@PROPERTY
@given(forms, uploads, boundaries, boundaries)
def test_a_multipart_body_fingerprints_the_same_whatever_its_boundary(fields, files, b1, b2):
    assert _multipart(fields, files, b1) == _multipart(fields, files, b2)


@PROPERTY
@given(forms, uploads, st.binary(min_size=1, max_size=50), boundaries)
def test_a_multipart_body_with_another_file_fingerprints_differently(fields, files, extra, b):
    changed = {**files, "x": files.get("x", b"") + extra}
    assert _multipart(fields, files, b) != _multipart(fields, changed, b)
