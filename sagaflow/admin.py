"""Admin for the people on call: see what is stuck and why, and repair it safely.

Everything is read-only; the only writes are the *retry* and *compensate* actions,
each a call into ``sagaflow.operations`` (never a bulk ``update()``), each guarded by
its own permission and recorded in the admin log with the user who ran it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.translation import ngettext

from . import operations, outbox_store, store
from .conf import conf
from .exceptions import ActionRefused, UnknownSagaError
from .graph import mermaid
from .models import IdempotencyKey, InboxMessage, OutboxEvent, Saga, SagaStep
from .registry import get_definition

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


def _json_block(value: Any) -> str:
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)
    if len(text) > SHOWN_JSON:
        text = f"{text[:SHOWN_JSON]}\n… ({len(text) - SHOWN_JSON} more characters not shown)"
    return format_html('<pre style="white-space: pre-wrap">{}</pre>', text)


def _error_details(error: str) -> str:
    if not error:
        return ""
    return format_html(
        '<details><summary>{}</summary><pre style="white-space: pre-wrap">{}</pre></details>',
        error.strip().splitlines()[-1][:200],
        error,
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

    @admin.display(description="duration")
    def duration(self, step: SagaStep) -> str:
        if step.started_at and step.finished_at:
            return f"{(step.finished_at - step.started_at).total_seconds() * 1000:.0f} ms"
        return ""

    @admin.display(description="result")
    def result_shown(self, step: SagaStep) -> str:
        return _json_block(step.result) if step.result is not None else ""

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
                    _error_details(entry.get("error", "")),
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
            return queryset & store.stuck(conf.STUCK_AFTER)
        return queryset


@admin.register(Saga)
class SagaAdmin(ReadOnlyMixin, admin.ModelAdmin):
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
        return _json_block(saga.data)

    @admin.display(description="results")
    def results_shown(self, saga: Saga) -> str:
        return _json_block(saga.results)

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


def _report(
    admin_: admin.ModelAdmin, request: HttpRequest, count: int, singular: str, plural: str
) -> None:
    admin_.message_user(
        request, ngettext(singular, plural, count) % {"count": count}, messages.SUCCESS
    )


@admin.register(OutboxEvent)
class OutboxEventAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "topic",
        "key",
        "state",
        "attempts",
        "created_at",
        "available_at",
        "published_at",
        "short_error",
    ]
    list_filter = ["state", "topic"]
    search_fields = ["=id", "topic", "key"]
    actions = ["requeue"]
    readonly_fields = [
        "id",
        "topic",
        "key",
        "state",
        "attempts",
        "created_at",
        "available_at",
        "published_at",
        "last_error",
        "payload_shown",
        "headers_shown",
    ]
    fields = readonly_fields

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> Any:
        context = {**(extra_context or {}), "outbox_backlog": outbox_store.backlog()}
        return super().changelist_view(request, extra_context=context)

    @admin.display(description="last error")
    def short_error(self, event: OutboxEvent) -> str:
        return event.last_error.strip().splitlines()[-1][:120] if event.last_error else ""

    @admin.display(description="payload")
    def payload_shown(self, event: OutboxEvent) -> str:
        return _json_block(event.payload)

    @admin.display(description="headers")
    def headers_shown(self, event: OutboxEvent) -> str:
        return _json_block(event.headers)

    def has_requeue_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("sagaflow.requeue_outboxevent")

    @admin.action(description="Re-queue selected dead events", permissions=["requeue"])
    def requeue(self, request: HttpRequest, queryset: QuerySet) -> None:
        ids = list(queryset.filter(state="dead").values_list("pk", flat=True))
        count = sum(outbox_store.requeue_dead(ids[i : i + 1000]) for i in range(0, len(ids), 1000))
        for event in queryset.filter(pk__in=ids).only("pk", "topic"):
            self.log_change(request, event, "re-queued from the admin")
        _report(
            self,
            request,
            count,
            "%(count)d dead event re-queued.",
            "%(count)d dead events re-queued.",
        )


@admin.register(InboxMessage)
class InboxMessageAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = [
        "consumer",
        "message_id",
        "topic",
        "state",
        "attempts",
        "updated_at",
        "available_at",
    ]
    list_filter = ["state", "consumer", "topic"]
    search_fields = ["=message_id", "consumer"]
    actions = ["requeue"]

    def has_requeue_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("sagaflow.requeue_outboxevent")

    @admin.action(description="Retry selected dead handler runs", permissions=["requeue"])
    def requeue(self, request: HttpRequest, queryset: QuerySet) -> None:
        ids = list(queryset.filter(state="dead").values_list("pk", flat=True))
        count = sum(
            outbox_store.requeue_dead_inbox(ids[i : i + 1000]) for i in range(0, len(ids), 1000)
        )
        _report(
            self,
            request,
            count,
            "%(count)d dead handler run re-queued.",
            "%(count)d dead handler runs re-queued.",
        )


@admin.register(IdempotencyKey)
class IdempotencyKeyAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """Keys are evidence, not content: a stored body shows as its size only."""

    list_display = [
        "key",
        "scope",
        "method",
        "route",
        "state",
        "response_status",
        "attempts",
        "created_at",
        "expires_at",
    ]
    list_filter = ["state", "method"]
    search_fields = ["=key", "scope"]
    fields = [
        "key",
        "scope",
        "method",
        "route",
        "state",
        "fingerprint",
        "attempts",
        "locked_until",
        "created_at",
        "completed_at",
        "expires_at",
        "response_status",
        "body_size",
    ]
    readonly_fields = fields

    @admin.display(description="stored body")
    def body_size(self, key: IdempotencyKey) -> str:
        if key.response_body is None:
            return "none"
        return f"{len(key.response_body)} bytes"
