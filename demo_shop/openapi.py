"""The JSON API's schemas, as drf-spectacular components (``SPECTACULAR_SETTINGS``).

Written by hand as JSON Schema rather than derived from DRF serializers, because the
views validate bodies themselves (``validation.py``: 400 for the shape, 422 for the
values, sagaflow's idempotency answers before either) and the schema must say what
they accept and answer exactly: closed objects, the line limit, the SKU pattern,
the column lengths. ``tests/integration/test_shop_schemathesis.py`` holds the live
server to it.
"""

from __future__ import annotations

from typing import Any

from sagaflow.conf import Defaults, conf
from sagaflow.exceptions import ConfigurationError

from .models import OrderStatus, Style
from .validation import MAX_CUSTOMER_LENGTH, MAX_LINES, MAX_QUANTITY

PROBLEM_MEDIA_TYPE = "application/problem+json"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


_STRING = {"type": "string"}
_DATETIME = {"type": "string", "format": "date-time"}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Problem": {
        "type": "object",
        "description": "An RFC 9457 problem. Branch on `code`; `errors` maps fields to messages.",
        "required": ["type", "title", "status", "detail", "code"],
        "properties": {
            "type": _STRING,
            "title": _STRING,
            "status": {"type": "integer"},
            "detail": _STRING,
            "code": _STRING,
            "errors": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": _STRING},
            },
            "sku": _STRING,
            "available": {"type": "integer"},
        },
    },
    "CheckoutLine": {
        "type": "object",
        "additionalProperties": False,
        "required": ["sku", "quantity"],
        "properties": {
            "sku": {
                "type": "string",
                "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$",
                "description": "A product's SKU (`GET /` lists the catalogue).",
            },
            "quantity": {"type": "integer", "minimum": 1, "maximum": MAX_QUANTITY},
        },
    },
    "CheckoutRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["customer", "items"],
        "properties": {
            "customer": {"type": "string", "format": "email", "maxLength": MAX_CUSTOMER_LENGTH},
            "style": {"type": "string", "enum": list(Style.values), "default": Style.ORCHESTRATED},
            "items": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_LINES,
                "items": ref("CheckoutLine"),
                "description": "One line per product; a basket over the limit gets one error.",
            },
        },
    },
    "OrderLine": {
        "type": "object",
        "required": ["sku", "name", "quantity", "unit_price_cents"],
        "properties": {
            "sku": _STRING,
            "name": _STRING,
            "quantity": {"type": "integer"},
            "unit_price_cents": {"type": "integer"},
        },
    },
    "Order": {
        "type": "object",
        "required": [
            "id",
            "public_id",
            "customer",
            "style",
            "status",
            "reason",
            "total_cents",
            "lines",
            "created_at",
            "settled_at",
        ],
        "properties": {
            "id": {"type": "integer", "description": "The order number (not an address)."},
            "public_id": {
                "type": "string",
                "format": "uuid",
                "description": "What `/api/orders/{public_id}` and the order page take.",
            },
            "customer": _STRING,
            "style": {"type": "string", "enum": list(Style.values)},
            "status": {"type": "string", "enum": list(OrderStatus.values)},
            "reason": _STRING,
            "total_cents": {"type": "integer"},
            "lines": {"type": "array", "items": ref("OrderLine")},
            "created_at": _DATETIME,
            "settled_at": _nullable(_DATETIME),
        },
    },
    "CheckoutAccepted": {
        "type": "object",
        "required": ["order", "status_url", "page_url"],
        "properties": {
            "order": ref("Order"),
            "status_url": _STRING,
            "page_url": _STRING,
        },
    },
    "StepRow": {
        "type": "object",
        "required": ["step", "state", "attempts", "compensation_attempts", "error"],
        "properties": {
            "step": _STRING,
            "state": _STRING,
            "attempts": {"type": "integer"},
            "compensation_attempts": {"type": "integer"},
            "started_at": _nullable(_DATETIME),
            "finished_at": _nullable(_DATETIME),
            "compensated_at": _nullable(_DATETIME),
            "error": _STRING,
        },
    },
    "EventRow": {
        "type": "object",
        "required": ["event", "handled_by", "detail", "at"],
        "properties": {
            "event": _STRING,
            "handled_by": _STRING,
            "detail": _STRING,
            "at": _nullable(_DATETIME),
        },
    },
    "OrderStatus": {
        "type": "object",
        "required": ["order", "settled", "saga", "timeline"],
        "properties": {
            "order": ref("Order"),
            "settled": {"type": "boolean"},
            "saga": _nullable(
                {
                    "type": "object",
                    "required": ["id", "state", "error"],
                    "properties": {
                        "id": {"type": "string", "format": "uuid"},
                        "state": _STRING,
                        "error": _STRING,
                    },
                }
            ),
            "timeline": {
                "type": "array",
                "items": {"anyOf": [ref("StepRow"), ref("EventRow")]},
                "description": "The saga's steps (orchestrated) or the events (choreographed).",
            },
        },
    },
    "Session": {
        "type": "object",
        "required": ["authenticated"],
        "properties": {"authenticated": {"type": "boolean"}},
    },
}


def idempotency_key_schema() -> dict[str, Any]:
    """The header sagaflow accepts: printable ASCII without quotes or backslashes.

    Built when the URLconf is imported, which ``manage.py check`` does too: a broken
    ``SAGAFLOW`` setting must reach the user as its system check error (E004), so the
    schema then shows the default bounds instead of raising here.
    """
    try:
        low, high = conf.IDEMPOTENCY_KEY_MIN_LENGTH, conf.IDEMPOTENCY_KEY_MAX_LENGTH
    except ConfigurationError:
        low, high = Defaults.IDEMPOTENCY_KEY_MIN_LENGTH, Defaults.IDEMPOTENCY_KEY_MAX_LENGTH
    return {
        "type": "string",
        "minLength": low,
        "maxLength": high,
        "pattern": r"^[!#-\[\]-~]+$",
    }


def add_components(result: dict[str, Any], generator: Any, request: Any, public: bool):
    """drf-spectacular postprocessing hook: add ``SCHEMAS`` to the components."""
    result.setdefault("components", {}).setdefault("schemas", {}).update(SCHEMAS)
    return result
