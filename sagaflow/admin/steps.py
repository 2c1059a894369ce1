"""The steps of a saga on its admin page: a read-only inline with each attempt."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from ..models import SagaStep
from .common import (
    ReadOnlyMixin,
    error_details,
    json_block,
)

#: Runs a bulk *resolve* lists on its confirmation page before summarising.
SHOWN_ON_CONFIRMATION = 20


class SagaStepInline(ReadOnlyMixin, admin.TabularInline):
    model = SagaStep
    extra = 0
    can_delete = False
    ordering = ["index"]
    fields = [
        "index",
        "name",
        "state",
        "attempts",
        "compensation_attempts",
        "interrupted",
        "started_at",
        "finished_at",
        "duration",
        "compensated_at",
        "due_at",
        "lease_expires_at",
        "result_shown",
        "timeline",
    ]
    # One list of names, shown read-only: django-stubs types fields and readonly_fields
    # as different lists (invariant), though a list[str] is valid for both.
    readonly_fields = fields  # type: ignore[assignment]

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """A run's steps are part of the run: whoever may view the saga sees them
        (read-only, as is the whole inline), without a ``view_sagastep`` grant."""
        return request.user.has_perm("sagaflow.view_saga") or super().has_view_permission(
            request, obj
        )

    @admin.display(description="duration")
    def duration(self, step: SagaStep) -> str:
        if step.started_at and step.finished_at:
            return f"{(step.finished_at - step.started_at).total_seconds() * 1000:.0f} ms"
        return ""

    @admin.display(description="result")
    def result_shown(self, step: SagaStep) -> str:
        return json_block(step.result) if step.result is not None else ""

    @admin.display(description="attempts (oldest first)")
    def timeline(self, step: SagaStep) -> str:
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{} #{}</td><td>{}</td><td>{} ms</td><td>{}</td></tr>",
            (
                (
                    entry.get("finished_at", "")[:23].replace("T", " "),
                    entry.get("phase", ""),
                    entry.get("attempt", ""),
                    entry.get("outcome", ""),
                    f"{float(entry.get('duration') or 0) * 1000:.0f}",
                    error_details(entry.get("error", "")),
                )
                for entry in step.history
            ),
        )
        return format_html('<table class="sagaflow-attempts">{}</table>', rows) if rows else ""
