"""Checkout input that used to reach PostgreSQL (a 500), or produced an error per line.

Over Django's full request stack (middleware, sagaflow's idempotency, the view):
each refusal is a problem with field errors, and nothing is written but the stored
refusal under its key.
"""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import override_settings

from demo_shop import validation
from demo_shop.models import Order
from demo_shop.validation import MAX_CUSTOMER_LENGTH, MAX_LINES, MAX_NAMED_UNKNOWN
from sagaflow.testing import captured_dispatches
from tests.shop_support import (
    SHOP_DB,
    assert_nothing_written,
    assert_problem,
    fresh_shop,
    order_body,
    post_checkout,
)

pytestmark = [pytest.mark.django_db(transaction=True, databases=SHOP_DB), pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def _no_broker():
    quiet = {**settings.SAGAFLOW, "OUTBOX_KICK_ON_COMMIT": False}
    with captured_dispatches(), override_settings(SAGAFLOW=quiet):
        yield


def email_of_length(length: int) -> str:
    """A syntactically valid address exactly ``length`` characters long."""
    local = "a" * 64
    labels, left = [], length - len(local) - 1 - len(".example")
    while left > 0:
        size = min(63, left)
        if left - size == 1:  # never leave a single character for the next "." + label
            size -= 1
        labels.append("b" * size)
        left -= size + 1
    address = f"{local}@{'.'.join(labels)}.example"
    assert len(address) == length, (len(address), length)
    return address


def refused(body, status: int, field: str) -> list[str]:
    response = post_checkout(body)
    problem = assert_problem(response, status, "invalid-request")
    assert field in problem["errors"], problem["errors"]
    assert_nothing_written(stored_refusal=status)
    return problem["errors"][field]


@pytest.mark.parametrize("sku", ["WID\x00GET", "\x00", "WIDGET\x00", "WID\nGET", "W" * 33, ""])
def test_a_sku_no_column_takes_is_a_field_error_not_a_500(sku):
    fresh_shop()
    (message,) = refused(order_body("a@b.example", "orchestrated", sku=sku), 422, "items[0].sku")
    assert message.startswith("not a SKU")


def test_a_nul_in_the_second_line_names_that_line():
    fresh_shop()
    body = {
        "customer": "a@b.example",
        "items": [{"sku": "WIDGET", "quantity": 1}, {"sku": "GAD\x00GET", "quantity": 1}],
    }
    (message,) = refused(body, 422, "items[1].sku")
    assert "U+0000 at position 3" in message


@pytest.mark.parametrize("customer", ["a\x00@b.example", "a@b\x00.example", "a\x7f@b.example"])
def test_a_control_character_in_the_address_is_a_field_error(customer):
    fresh_shop()
    (message,) = refused(order_body(customer, "orchestrated"), 422, "customer")
    assert "is not allowed" in message


def test_lone_surrogates_are_refused_before_any_query():
    """sagaflow's fingerprint refuses such a body over HTTP (400 request-body-malformed);
    the shop's own check does not rely on that."""
    fresh_shop()
    body = {"customer": "a@\ud800b.example", "items": [{"sku": "W\udfffX", "quantity": 1}]}
    with pytest.raises(validation.Invalid) as refusal:
        validation.validate(body)
    assert refusal.value.status == 422
    assert set(refusal.value.errors) == {"customer", "items[0].sku"}


@pytest.mark.parametrize("length", [MAX_CUSTOMER_LENGTH + 1, 300, 320, 321, 5000])
def test_an_address_longer_than_the_column_is_a_field_error(length):
    fresh_shop()
    customer = email_of_length(length) if length <= 320 else "a" * (length - 10) + "@b.example"
    (message,) = refused(order_body(customer, "orchestrated"), 422, "customer")
    assert message == f"at most {MAX_CUSTOMER_LENGTH} characters, got {length}"


def test_an_address_as_long_as_the_column_is_accepted():
    fresh_shop()
    customer = email_of_length(MAX_CUSTOMER_LENGTH)
    response = post_checkout(order_body(customer, "orchestrated"))
    assert response.status_code == 202, response.content
    assert Order.objects.get().customer == customer


@pytest.mark.parametrize(
    ("lines", "status"),
    [
        ([{"sku": "WIDGET", "quantity": 1}] * 70_000, 422),
        ([{"sku": "NOPE", "quantity": 0, "gift": True}] * (MAX_LINES + 1), 422),
        ([1] * 70_000, 422),
    ],
    ids=["70000-lines", "one-over", "70000-non-objects"],
)
def test_validation_stops_at_the_line_limit_with_one_error(lines, status):
    fresh_shop()
    response = post_checkout({"customer": "a@b.example", "items": lines})
    problem = assert_problem(response, status, "invalid-request")
    assert problem["errors"] == {"items": [f"at most {MAX_LINES} lines, got {len(lines)}"]}
    assert len(response.content) < 1000
    assert_nothing_written(stored_refusal=status)


def test_a_long_basket_still_reports_the_other_fields():
    fresh_shop()
    response = post_checkout({"customer": "nope", "style": "x", "items": [1] * 50})
    problem = assert_problem(response, 422, "invalid-request")
    assert set(problem["errors"]) == {"customer", "style", "items"}
    assert_nothing_written(stored_refusal=422)


def test_thousands_of_unknown_fields_are_named_ten_at_a_time():
    fresh_shop()
    body = {**order_body("a@b.example", "orchestrated"), **{f"x{i:05}": 1 for i in range(5000)}}
    body["items"] = [{"sku": "WIDGET", "quantity": 1, **{f"y{i:05}": 1 for i in range(5000)}}]
    problem = assert_problem(post_checkout(body), 400, "invalid-request")
    errors = problem["errors"]
    assert [k for k in errors if k.startswith("x")] == [f"x{i:05}" for i in range(10)]
    more = [f"{5000 - MAX_NAMED_UNKNOWN} more unknown fields"]
    assert errors["non_field_errors"] == errors["items[0].non_field_errors"] == more
    assert len(errors) == 2 * MAX_NAMED_UNKNOWN + 2
    assert_nothing_written(stored_refusal=400)
