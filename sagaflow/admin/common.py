"""What the admin pages share: read-only models and escaped, truncated JSON."""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.utils.html import format_html

#: Longest JSON shown on the detail page; the rest is cut with a note.
SHOWN_JSON = 10_000
#: How many refusal reasons an action lists before summarising.
SHOWN_REFUSALS = 5


class ReadOnlyMixin:
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class GuardedActionsMixin:
    """A POST that names an action the user may not run is refused with 403.

    The admin leaves such actions out of the form, but a forged POST naming one
    renders the changelist again (200, nothing done): it should be refused as
    loudly as any other forged admin POST.
    """

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> Any:
        if request.method == "POST":
            allowed = self.get_actions(request)  # type: ignore[attr-defined]
            if any(name and name not in allowed for name in request.POST.getlist("action")):
                raise PermissionDenied
        return super().changelist_view(request, extra_context)  # type: ignore[misc]


def json_block(value: Any) -> str:
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)
    if len(text) > SHOWN_JSON:
        text = f"{text[:SHOWN_JSON]}\n… ({len(text) - SHOWN_JSON} more characters not shown)"
    return format_html('<pre style="white-space: pre-wrap">{}</pre>', text)


def error_details(error: str) -> str:
    if not error:
        return ""
    return format_html(
        '<details><summary>{}</summary><pre style="white-space: pre-wrap">{}</pre></details>',
        error.strip().splitlines()[-1][:200],
        error,
    )
