"""Checking a checkout request before anything is written.

``validate`` turns a request body into a ``CheckoutRequest`` or raises ``Invalid``
with field errors: 400 when the body does not have the documented shape, 422 when
its values are refused. Two rules keep bad input from reaching the database as a
500: every string that is queried or stored is first checked against what its
column and PostgreSQL accept (no NUL or other control character, no lone surrogate,
no longer than the column), and the work done is bounded by the documented limits,
not by the size of the body: a basket over the line limit gets one error, not one
per line, and an object with thousands of unknown fields names ten of them.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from .models import Order, Product, Style

MAX_QUANTITY = 100
MAX_LINES = 20
#: The ``customer`` column's length (an e-mail address may be 320 characters long).
MAX_CUSTOMER_LENGTH: int = Order._meta.get_field("customer").max_length
#: What a SKU looks like; ``Product.sku`` holds 32 characters.
SKU_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
#: Unknown fields named per object in one answer; the others are counted.
MAX_NAMED_UNKNOWN = 10
FIELDS = frozenset({"items", "customer", "style"})
ITEM_FIELDS = frozenset({"sku", "quantity"})


class Invalid(Exception):
    """The request cannot be processed; ``status`` 400 (shape) or 422 (values)."""

    def __init__(self, status: int, errors: dict[str, list[str]]) -> None:
        super().__init__(errors)
        self.status = status
        self.errors = errors


@dataclass(frozen=True)
class CheckoutRequest:
    customer: str
    style: str
    items: tuple[tuple[Product, int], ...]


def validate(body: Any) -> CheckoutRequest:
    """Check the shape first (400), then the values (422); query only clean values."""
    if not isinstance(body, dict):
        raise Invalid(400, {"non_field_errors": ["the body must be a JSON object"]})
    shape: dict[str, list[str]] = {}
    _unknown_fields(body, FIELDS, "", shape)
    customer, items = body.get("customer"), body.get("items")
    style = body.get("style", Style.ORCHESTRATED)
    if not isinstance(customer, str):
        shape["customer"] = ["required, a string (an e-mail address)"]
    if not isinstance(style, str):
        shape["style"] = ["must be a string"]
    if not isinstance(items, list):
        shape["items"] = ["required, a list of {sku, quantity}"]
    elif len(items) <= MAX_LINES:  # a longer basket is refused below, without a look inside
        for i, item in enumerate(items):
            _item_shape(i, item, shape)
    if shape:
        raise Invalid(400, shape)

    values: dict[str, list[str]] = {}
    customer_error = _customer_error(customer)
    if customer_error:
        values["customer"] = [customer_error]
    if style not in Style.values:
        values["style"] = [f"one of {', '.join(Style.values)}"]
    if not items:
        values["items"] = ["at least one item"]
    elif len(items) > MAX_LINES:
        values["items"] = [f"at most {MAX_LINES} lines, got {len(items)}"]
        raise Invalid(422, values)
    products = _products(items, values)
    if values:
        raise Invalid(422, values)
    return CheckoutRequest(
        customer=customer.strip().lower(),
        style=style,
        items=tuple((products[item["sku"]], item["quantity"]) for item in items),
    )


def _unknown_fields(
    obj: dict[str, Any], known: frozenset[str], where: str, errors: dict[str, list[str]]
) -> None:
    unknown = sorted(set(obj) - known)
    for name in unknown[:MAX_NAMED_UNKNOWN]:
        errors.setdefault(f"{where}{_shorten(name)}", []).append("unknown field")
    if len(unknown) > MAX_NAMED_UNKNOWN:
        errors.setdefault(f"{where}non_field_errors" if where else "non_field_errors", []).append(
            f"{len(unknown) - MAX_NAMED_UNKNOWN} more unknown fields"
        )


def _item_shape(i: int, item: Any, errors: dict[str, list[str]]) -> None:
    where = f"items[{i}]"
    if not isinstance(item, dict):
        errors[where] = ["must be an object {sku, quantity}"]
        return
    _unknown_fields(item, ITEM_FIELDS, f"{where}.", errors)
    if not isinstance(item.get("sku"), str):
        errors[f"{where}.sku"] = ["required, a string"]
    quantity = item.get("quantity")
    if not isinstance(quantity, int) or isinstance(quantity, bool):
        errors[f"{where}.quantity"] = ["required, an integer"]


def _customer_error(customer: str) -> str | None:
    if len(customer) > MAX_CUSTOMER_LENGTH:
        return f"at most {MAX_CUSTOMER_LENGTH} characters, got {len(customer)}"
    bad = _bad_character(customer)
    if bad:
        return bad
    try:
        validate_email(customer)
    except ValidationError:
        return "not a valid e-mail address"
    return None


def _products(items: list[dict[str, Any]], values: dict[str, list[str]]) -> dict[str, Product]:
    """The products of the well-formed SKUs; an error for each line that is not."""
    wellformed = [item["sku"] for item in items if SKU_PATTERN.fullmatch(item["sku"])]
    products = {p.sku: p for p in Product.objects.filter(sku__in=wellformed)}
    seen: set[str] = set()
    for i, item in enumerate(items):
        sku = item["sku"]
        if not SKU_PATTERN.fullmatch(sku):
            values[f"items[{i}].sku"] = [
                f"not a SKU: 1 to 32 letters, digits, '.', '_' or '-' "
                f"(got {len(sku)} characters{_bad_character(sku, prefix=', ')})"
            ]
        elif sku not in products:
            values[f"items[{i}].sku"] = [f"unknown product {sku!r}"]
        elif sku in seen:
            values[f"items[{i}].sku"] = ["listed twice; put the total in one line"]
        seen.add(sku)
        if not 1 <= item["quantity"] <= MAX_QUANTITY:
            values[f"items[{i}].quantity"] = [f"between 1 and {MAX_QUANTITY}"]
    return products


def _bad_character(text: str, prefix: str = "") -> str:
    """Where ``text`` has a character no column takes (NUL, a control, a lone surrogate)."""
    for position, char in enumerate(text):
        if unicodedata.category(char) in ("Cc", "Cs"):
            return f"{prefix}U+{ord(char):04X} at position {position} is not allowed"
    return ""


def _shorten(name: str, limit: int = 64) -> str:
    return name if len(name) <= limit else f"{name[:limit]}..."
