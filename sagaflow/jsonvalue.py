"""Checks that a value can be stored as JSON, naming the first offending path."""

from __future__ import annotations

import json
import math
from typing import Any

from .exceptions import NotSerializableError

_SCALARS = (int, bool, type(None))

#: Deepest nesting accepted (PostgreSQL's and Python's parsers have stack limits;
#: no real document of a step or event comes near).
MAX_DEPTH = 100

#: PostgreSQL's ``jsonb`` cannot hold the NUL character (``\u0000``).
_NUL = "\x00"


def _first_bad_path(value: Any, path: str, depth: int = 0) -> tuple[str, str] | None:
    if isinstance(value, str):
        return (
            (path, "the string contains a NUL character (\\x00), which PostgreSQL cannot store")
            if _NUL in value
            else None
        )
    if isinstance(value, _SCALARS):
        return None
    if depth >= MAX_DEPTH and isinstance(value, dict | list | tuple):
        return (path, f"the value is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, f"float {value!r} is not valid JSON")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                return (path, f"key {k!r} is a {type(k).__name__}, JSON keys must be str")
            if _NUL in k:
                return (path, f"key {k!r} contains a NUL character (\\x00)")
            found = _first_bad_path(v, f"{path}[{k!r:.60}]", depth + 1)
            if found:
                return found
        return None
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found = _first_bad_path(v, f"{path}[{i}]", depth + 1)
            if found:
                return found
        return None
    return (path, f"{type(value).__name__} {value!r:.60} is not JSON-serialisable")


def ensure_json(value: Any, what: str) -> Any:
    """Return ``value`` as it will read back from the database, or raise.

    The round trip turns tuples into lists now, so a step sees the same value on
    its first run as after a reload from the database.
    """
    bad = _first_bad_path(value, what)
    if bad:
        path, reason = bad
        raise NotSerializableError(
            f"{path}: {reason}. Pass only dict, list, str, int, float, bool and None, "
            f"strings without NUL characters, at most {MAX_DEPTH} levels deep "
            f"(convert Decimal, datetime, UUID and model instances to str or int first)."
        )
    return json.loads(json.dumps(value))
