"""The saga admin, for the people on call: see what is stuck and why, and repair it.

Everything is read-only; the only writes are the *retry* and *compensate* actions,
each a call into ``sagaflow.ops`` (never a bulk ``update()``), each guarded by
its own permission and recorded in the admin log with the user who ran it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.translation import ngettext

from ..conf import conf
from ..exceptions import ActionRefused, UnknownSagaError
from ..models import Saga, SagaStep
from ..ops import operations
from ..saga import scans
from ..saga.graph import mermaid
from ..saga.registry import get_definition
from .common import (
    SHOWN_REFUSALS,
    GuardedActionsMixin,
    ReadOnlyMixin,
    error_details,
    json_block,
)


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
    readonly_fields = fields

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


class StuckFilter(admin.SimpleListFilter):
    title = "progress"
    parameter_name = "stuck"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", f"stuck (no change for {conf.STUCK_AFTER:g}s)")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "yes":
            return queryset & scans.stuck(conf.STUCK_AFTER)
        return queryset


@admin.register(Saga)
class SagaAdmin(GuardedActionsMixin, ReadOnlyMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "name",
        "state",
        "age",
        "current_step_name",
        "current_attempts",
        "updated_at",
    ]
    list_filter = ["state", StuckFilter, "name"]
    search_fields = ["=id", "key", "=correlation_id"]
    date_hierarchy = "created_at"
    inlines = [SagaStepInline]
    actions = ["retry_sagas", "compensate_sagas"]
    readonly_fields = [
        "id",
        "name",
        "key",
        "state",
        "current_step",
        "correlation_id",
        "deadline_at",
        "created_at",
        "updated_at",
        "finished_at",
        "error",
        "graph",
        "data_shown",
        "results_shown",
    ]
    fields = readonly_fields

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        current = SagaStep.objects.filter(saga=OuterRef("pk"), index=OuterRef("current_step"))
        return (
            super()
            .get_queryset(request)
            .annotate(
                current_name=Subquery(current.values("name")[:1]),
                current_attempts=Subquery(current.values("attempts")[:1]),
            )
        )

    @admin.display(description="age", ordering="created_at")
    def age(self, saga: Saga) -> str:
        end = saga.finished_at or timezone.now()
        seconds = int((end - saga.created_at).total_seconds())
        return (
            f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
            if seconds >= 3600
            else (f"{seconds // 60}m{seconds % 60:02d}s")
        )

    @admin.display(description="current step")
    def current_step_name(self, saga: Saga) -> str:
        return saga.current_name or "—"  # type: ignore[attr-defined]

    @admin.display(description="attempts")
    def current_attempts(self, saga: Saga) -> int | None:
        return saga.current_attempts  # type: ignore[attr-defined]

    @admin.display(description="graph (Mermaid)")
    def graph(self, saga: Saga) -> str:
        try:
            definition = get_definition(saga.name)
        except UnknownSagaError as exc:
            return str(exc)
        return format_html('<pre class="mermaid">{}</pre>', mermaid(definition, saga))

    @admin.display(description="data")
    def data_shown(self, saga: Saga) -> str:
        return json_block(saga.data)

    @admin.display(description="results")
    def results_shown(self, saga: Saga) -> str:
        return json_block(saga.results)

    # --- actions ---------------------------------------------------------------------

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("sagaflow.retry_saga")

    def has_compensate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("sagaflow.compensate_saga")

    @admin.action(description="Retry selected sagas", permissions=["retry"])
    def retry_sagas(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._act(request, queryset, operations.retry, "retried")

    @admin.action(description="Compensate selected sagas now", permissions=["compensate"])
    def compensate_sagas(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._act(request, queryset, operations.compensate, "compensated")

    def _act(
        self,
        request: HttpRequest,
        queryset: QuerySet,
        action: Callable[[Any], str],
        verb: str,
    ) -> None:
        """One transaction per saga, rows read in chunks: thousands stay bounded."""
        done, refused = 0, []
        for saga in queryset.order_by().only("pk", "name", "state").iterator(chunk_size=500):
            try:
                outcome = action(saga.pk)
            except ActionRefused as exc:
                refused.append(str(exc))
                continue
            done += 1
            self.log_change(request, saga, f"{verb} from the admin: {outcome}")
        if done:
            self.message_user(
                request,
                ngettext("%(count)d saga %(verb)s.", "%(count)d sagas %(verb)s.", done)
                % {"count": done, "verb": verb},
                messages.SUCCESS,
            )
        if refused:
            shown = " ".join(refused[:SHOWN_REFUSALS])
            more = len(refused) - SHOWN_REFUSALS
            self.message_user(
                request,
                ngettext(
                    "%(count)d saga refused: %(why)s",
                    "%(count)d sagas refused: %(why)s",
                    len(refused),
                )
                % {
                    "count": len(refused),
                    "why": shown + (f" (and {more} more)" if more > 0 else ""),
                },
                messages.WARNING,
            )
