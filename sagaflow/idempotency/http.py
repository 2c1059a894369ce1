"""The HTTP side of the Idempotency-Key policy, free of database and view plumbing:
parsing the header, fingerprinting a request, and the responses (RFC 9457
problems, replays) sent back.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import TYPE_CHECKING, cast

import http_sf
from django.core.files.uploadedfile import UploadedFile
from django.http import HttpRequest, HttpResponse
from django.http.multipartparser import MultiPartParserError
from django.http.request import RawPostDataException
from django.http.response import HttpResponseBase

if TYPE_CHECKING:
    from http_sf.types import BareItemType, ParamsType

from ..conf import conf
from ..exceptions import (
    ConfigurationError,
    IdempotencyBodyMalformed,
    IdempotencyError,
    IdempotencyKeyInvalid,
)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
#: Set on a response that was not stored for replay: ``<reason>;key=kept|released``
#: (kept: replays answer 409; released: a retry runs the view again).
NOT_STORED_HEADER = "Idempotent-Not-Stored"
#: Never stored, whatever SAGAFLOW['IDEMPOTENCY_REPLAY_HEADERS'] says: replaying
#: them would hand one client's session, CSRF token or credentials to a retry.
NEVER_REPLAYED = frozenset(
    {
        "set-cookie",
        "cookie",
        "authorization",
        "proxy-authorization",
        "www-authenticate",
        "proxy-authenticate",
        "x-csrftoken",
        "x-csrf-token",
        REPLAYED_HEADER.lower(),
        NOT_STORED_HEADER.lower(),
    }
)


#: What a key may hold: printable ASCII (0x21-0x7E) except ``"`` and ``\``.
_KEY_CHARS = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]*")
#: What a bare (unquoted) key may hold: also no ``,`` (servers join a repeated
#: header with one) and no ``;`` (parameters, which only a String or Token carries).
_BARE_KEY_CHARS = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")
#: Form fields that are not part of the operation: a new page render gives a new
#: masked CSRF token, and a retry from it must not be refused as another request.
_NOT_FINGERPRINTED_FIELDS = frozenset({"csrfmiddlewaretoken"})


def parse_key(raw: str | None) -> str | None:
    """The key from the header value, or None if absent; raise if malformed.

    The value is read as an RFC 8941 Structured Field Item, as the draft defines
    the header: a String (``"abc"``) or a Token (``abc``) is the key, and its
    parameters (``"abc";p=1``) are ignored, as RFC 8941 has recipients ignore
    parameters they do not know (the draft defines none), so they never make a
    second key of one. A value that is not a String or Token, such as a UUID that
    starts with a digit, is taken as a bare key, Stripe's format, without ``,``
    or ``;``. More than one member (``K1, K2``, or the header sent twice, which
    servers join with a comma) is refused. The key is printable ASCII without
    spaces, quotes or backslashes, within the configured length bounds. No
    database is touched before this passes.
    """
    if raw is None:
        return None
    for position, char in enumerate(raw):
        if not 0x20 <= ord(char) <= 0x7E:
            raise IdempotencyKeyInvalid(
                f"{HEADER} has {char!r} at position {position}; use printable ASCII "
                f"without spaces, quotes or backslashes, e.g. a random UUID."
            )
    try:
        # An Item parses to (value, parameters); http_sf types it as any structure.
        item, _parameters = cast(
            "tuple[BareItemType, ParamsType]", http_sf.parse(raw.encode("ascii"), tltype="item")
        )
    except http_sf.StructuredFieldError:
        item = None
    if isinstance(item, str | http_sf.Token):  # a String or a Token
        return _checked(str(item), _KEY_CHARS)
    value = raw.strip(" ")
    if "," in value:
        raise IdempotencyKeyInvalid(
            f"{HEADER} holds more than one value ({value[:80]!r}): the header was sent "
            f"twice or the key has a comma. Send the header once, with one key."
        )
    return _checked(value, _BARE_KEY_CHARS)


def _checked(value: str, allowed: re.Pattern[str]) -> str:
    low, high = conf.IDEMPOTENCY_KEY_MIN_LENGTH, conf.IDEMPOTENCY_KEY_MAX_LENGTH
    if low <= len(value) <= high and allowed.fullmatch(value):
        return value
    if not low <= len(value) <= high:
        raise IdempotencyKeyInvalid(
            f"{HEADER} is {len(value)} characters long; send {low} to {high} printable "
            f"ASCII characters, e.g. a random UUID."
        )
    position, char = next((i, c) for i, c in enumerate(value) if not allowed.fullmatch(c))
    if char == ";":
        raise IdempotencyKeyInvalid(
            f"{HEADER} has ';' at position {position}: parameters are only read after a "
            f'quoted key ("key";name=value); leave ";" out of a bare key.'
        )
    raise IdempotencyKeyInvalid(
        f"{HEADER} has {char!r} at position {position}; use printable ASCII "
        f"without spaces, quotes or backslashes, e.g. a random UUID."
    )


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def _is_form(content_type: str) -> bool:
    return content_type in ("multipart/form-data", "application/x-www-form-urlencoded")


def fingerprint(request: HttpRequest, method: str, route: str) -> str:
    """sha256 over method, route, path + query, media type and body.

    A JSON body is hashed in canonical form (sorted keys, no whitespace), so a
    client that re-serialises the same object differently is not refused with 422.
    A form (multipart or urlencoded) is hashed as its parsed fields and files, in
    the order sent, without the CSRF token: a multipart retry has a new boundary,
    and CSRF or Django REST framework may have read the body's stream already.
    Raises ``IdempotencyBodyMalformed`` for a body that cannot be read (JSON that
    is not JSON or is nested too deeply, a broken multipart body): such a request
    can never run, so it must not consume the key.
    """
    content_type = (request.content_type or "").lower()
    if _is_form(content_type):
        body = _form(request, content_type)
    else:
        body = _body(request)
        if _is_json(content_type) and body.strip():
            body = _canonical_json(body, content_type)
    digest = hashlib.sha256()
    for part in (method, route, request.get_full_path(), content_type):
        digest.update(part.encode("utf-8", "surrogateescape"))
        digest.update(b"\0")
    digest.update(body)
    return digest.hexdigest()


def _body(request: HttpRequest) -> bytes:
    try:
        return request.body  # RequestDataTooBig propagates: Django answers 400
    except RawPostDataException as exc:
        raise ConfigurationError(
            f"@idempotent cannot fingerprint this {request.content_type} request: code that "
            f"ran before the view read its body as a stream (request.read()), so the body "
            f"is gone. Read request.body instead, or let the view parse it."
        ) from exc


def _canonical_json(body: bytes, content_type: str) -> bytes:
    try:
        value = json.loads(body)
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except RecursionError:
        raise IdempotencyBodyMalformed(
            f"The {content_type} body is nested too deeply to be read. Send a flatter "
            f"document and retry with the same {HEADER}; it was not used."
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise IdempotencyBodyMalformed(
            f"The body is sent as {content_type} but is not valid JSON ({exc}). "
            f"Fix the body and retry with the same {HEADER}; it was not used."
        ) from exc
    return text.encode("utf-8", "surrogatepass")  # "\\ud800" is valid JSON


def _form(request: HttpRequest, content_type: str) -> bytes:
    """The form's fields and files as canonical JSON (the boundary plays no part)."""
    try:
        fields, files = request.POST, request.FILES
    except MultiPartParserError as exc:
        raise IdempotencyBodyMalformed(
            f"The {content_type} body cannot be parsed ({exc}). Fix the body and retry "
            f"with the same {HEADER}; it was not used."
        ) from exc
    document = {
        "fields": [
            [name, values]
            for name, values in fields.lists()
            if name not in _NOT_FINGERPRINTED_FIELDS
        ],
        "files": [
            [name, [[f.name, f.content_type, f.size, _file_digest(f)] for f in uploads]]
            for name, uploads in files.lists()
        ],
    }
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "surrogateescape")


def _file_digest(upload: UploadedFile) -> str:
    digest = hashlib.sha256()
    for chunk in upload.chunks():  # from the start, in memory or on disk
        digest.update(chunk)
    upload.seek(0)  # the view reads it next
    return digest.hexdigest()


def problem_response(error: IdempotencyError) -> HttpResponse:
    """An RFC 9457 ``application/problem+json`` response for ``error``."""
    body = {
        "type": f"urn:sagaflow:problem:{error.code}",
        "title": error.title,
        "status": error.status_code,
        "detail": error.detail,
        "code": error.code,
    }
    response = HttpResponse(
        json.dumps(body), status=error.status_code, content_type="application/problem+json"
    )
    if error.retry_after is not None:
        response["Retry-After"] = str(error.retry_after)
    return response


def stored_headers(response: HttpResponseBase) -> list[list[str]]:
    allowed = {name.lower() for name in conf.IDEMPOTENCY_REPLAY_HEADERS} - NEVER_REPLAYED
    return [[name, value] for name, value in response.items() if name.lower() in allowed]


def replay(status: int, headers: list[list[str]], body: bytes) -> HttpResponse:
    response = HttpResponse(body, status=status)
    del response["Content-Type"]
    for name, value in headers:
        response[name] = value
    response[REPLAYED_HEADER] = "true"
    return response
