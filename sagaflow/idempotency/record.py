"""After the view: what of its response is stored for replay, and storing it.

A response is stored whole, or not at all: a streaming one, one larger than
``IDEMPOTENCY_MAX_RESPONSE_BYTES``, a 4xx when ``IDEMPOTENCY_STORE_CLIENT_ERRORS``
is off, or a ``no-store`` one when ``IDEMPOTENCY_STORE_NO_STORE_RESPONSES`` is off.
Then its key is released if it is a 4xx (the request changed nothing, so running
it again is harmless), and kept without a body otherwise (a success may have
acted: a retry answers 409 and never runs it twice). ``Idempotent-Not-Stored``
and a log line say which.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.http.response import HttpResponseBase

from ..conf import conf
from . import store
from .http import NOT_STORED_HEADER, stored_headers
from .outcomes import Claimed, Reserved
from .policy import Prepared

logger = logging.getLogger("sagaflow.idempotency")


def render(request: Any, response: Any) -> Any:
    """Render a lazy response now, so its body can be stored with the claim.

    DRF's ``Response`` is finalised by the view (renderer chosen) after the
    handler returns; we do that step early. Rendering twice is a no-op.
    """
    if not callable(getattr(response, "render", None)) or getattr(response, "is_rendered", True):
        return response
    context = getattr(request, "parser_context", None) or {}
    view = context.get("view")
    if view is not None and hasattr(view, "finalize_response"):
        response = view.finalize_response(
            request, response, *context.get("args", ()), **context.get("kwargs", {})
        )
    response.render()
    return response


@dataclass(frozen=True)
class NotStored:
    """Why a response is not stored, and whether its key stays taken."""

    reason: str
    keep_key: bool


def _not_stored(response: HttpResponseBase) -> NotStored | None:
    """None: store the response. Otherwise it is not, and the key is kept (without a
    body: replays answer 409) if the view may have acted, i.e. unless it is a 4xx.
    """
    status = response.status_code
    limit = conf.IDEMPOTENCY_MAX_RESPONSE_BYTES
    if response.streaming:
        reason = "streaming"
    elif status >= 400 and not conf.IDEMPOTENCY_STORE_CLIENT_ERRORS:
        reason = "client-error"
    elif not conf.IDEMPOTENCY_STORE_NO_STORE_RESPONSES and _is_no_store(response):
        reason = "no-store"
    elif limit is not None and len(response.content) > limit:  # type: ignore[attr-defined]
        reason = "too-large"
    else:
        return None
    return NotStored(reason, keep_key=status < 400)


def _is_no_store(response: HttpResponseBase) -> bool:
    directives = response.get("Cache-Control", "").split(",")
    return any(d.split("=", 1)[0].strip().lower() == "no-store" for d in directives)


def _say_not_stored(response: HttpResponseBase, not_stored: NotStored, key: str) -> None:
    kept = "kept" if not_stored.keep_key else "released"
    response[NOT_STORED_HEADER] = f"{not_stored.reason};key={kept}"
    size = "streaming" if response.streaming else len(response.content)  # type: ignore[attr-defined]
    logger.warning(
        "idempotent response not stored (%s, status %s, %s bytes, limit %s); key %r %s: %s",
        not_stored.reason,
        response.status_code,
        size,
        conf.IDEMPOTENCY_MAX_RESPONSE_BYTES,
        key,
        kept,
        "a retry answers 409" if not_stored.keep_key else "a retry runs the view again",
    )


def save(claimed: Claimed | Reserved, response: HttpResponseBase, body: bytes | None) -> bool:
    """Store the response (``body`` None: without its body); False if the key is no
    longer ours (nothing stored)."""
    if store.complete(
        claimed, status=response.status_code, headers=stored_headers(response), body=body
    ):
        return True
    if isinstance(claimed, Reserved):
        logger.warning(
            "idempotency key was recorded by an earlier request while this view ran; "
            "this view's writes are rolled back and the stored response is returned"
        )
    else:
        logger.warning(
            "idempotency key was taken over while its view ran; response not stored "
            "(raise SAGAFLOW['IDEMPOTENCY_LEASE'] above your request timeout)"
        )
    return False


def storable_body(prepared: Prepared, response: HttpResponseBase) -> bytes | NotStored | None:
    """The body to store, None to store the key without it, or a released key."""
    not_stored = _not_stored(response)
    if not_stored is None:
        return bytes(response.content)  # type: ignore[attr-defined]
    _say_not_stored(response, not_stored, prepared.key)
    return None if not_stored.keep_key else not_stored
