"""The saga admin, for the people on call: see what is stuck and why, and repair it.

Everything is read-only; the only writes are the *retry*, *compensate* and
*resolve* actions, each a call into ``sagaflow.ops`` (never a bulk ``update()``),
each guarded by its own permission and recorded in the admin log with the user
who ran it. *Resolve* asks for a note first (what was done by hand), on a page of
its own, from the changelist's action or the button on a failed run's page.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied
from django.db.models import OuterRef, Q, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import ngettext

from ..exceptions import ActionRefused, UnknownSagaError
from ..models import Saga, SagaState, SagaStep
from ..ops import operations
from ..ops.health import code_missing
from ..saga.graph import mermaid
from ..saga.registry import get_definition, needs_code
from .common import (
    SHOWN_REFUSALS,
    GuardedActionsMixin,
    ReadOnlyMixin,
    json_block,
)
from .filters import AttentionFilter, StuckFilter
from .steps import SagaStepInline

#: Runs a bulk *resolve* lists on its confirmation page before summarising.
SHOWN_ON_CONFIRMATION = 20


class ResolveForm(forms.Form):
    note = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4, "cols": 80}),
        max_length=operations.NOTE_MAX_LENGTH,
        help_text="What was done by hand, and where it is recorded (a ticket, a refund id).",
    )


@admin.register(Saga)
class SagaAdmin(GuardedActionsMixin, ReadOnlyMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "name",
        "version",
        "state",
        "attention",
        "age",
        "current_step_name",
        "current_attempts",
        "updated_at",
    ]
    list_filter = ["state", AttentionFilter, StuckFilter, "name", "version"]
    search_fields = ["=id", "key", "=correlation_id"]
    date_hierarchy = "created_at"
    inlines = [SagaStepInline]
    actions = ["retry_sagas", "compensate_sagas", "resolve_sagas"]
    change_form_template = "admin/sagaflow/saga/change_form.html"
    readonly_fields = [
        "id",
        "name",
        "version",
        "attention",
        "key",
        "state",
        "current_step",
        "correlation_id",
        "deadline_at",
        "created_at",
        "updated_at",
        "finished_at",
        "error",
        "needs_code_since",
        "resolved_at",
        "resolved_by",
        "resolution_note",
        "graph",
        "data_shown",
        "results_shown",
    ]
    # One list of names, shown read-only: django-stubs types fields and readonly_fields
    # as different lists (invariant), though a list[str] is valid for both.
    fields = readonly_fields  # type: ignore[assignment]

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

    @admin.display(description="attention")
    def attention(self, saga: Saga) -> str:
        """Why a person should look: the run waits for its code (a worker found it
        missing, or this deploy lacks it), or it failed and nobody resolved it."""
        if saga.state in (SagaState.RUNNING, SagaState.COMPENSATING):
            missing = code_missing(saga.name, saga.version, saga.steps_fingerprint)
            if missing or saga.needs_code_since is not None:
                return missing or f"{needs_code(saga.name, saga.version)} (a worker lacks it)"
        if saga.state == SagaState.FAILED:
            if saga.resolved_at is None:
                return "failed: needs a person (retry, or fix and resolve)"
            return f"resolved by {saga.resolved_by or 'a script'}"
        return ""

    @admin.display(description="graph (Mermaid)")
    def graph(self, saga: Saga) -> str:
        try:
            definition = get_definition(saga.name, saga.version)
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

    def has_resolve_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("sagaflow.resolve_saga")

    @admin.action(description="Retry selected sagas", permissions=["retry"])
    def retry_sagas(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._act(request, queryset, operations.retry, "retried")

    @admin.action(description="Compensate selected sagas now", permissions=["compensate"])
    def compensate_sagas(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._act(request, queryset, operations.compensate, "compensated")

    @admin.action(description="Resolve selected failed sagas…", permissions=["resolve"])
    def resolve_sagas(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        """Ask for the note first; the confirmation posts back here with it."""
        form = ResolveForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            note = form.cleaned_data["note"]
            self._act(
                request,
                queryset,
                lambda saga_id: operations.resolve(saga_id, note=note, user=request.user),
                "resolved",
            )
            return None
        shown = list(queryset.order_by("-created_at")[:SHOWN_ON_CONFIRMATION])
        return self._resolve_page(
            request,
            form,
            sagas=shown,
            more=max(0, queryset.count() - len(shown)),
            selected=request.POST.getlist(ACTION_CHECKBOX_NAME),
            select_across=request.POST.get("select_across", "0"),
        )

    def get_urls(self) -> list:
        resolve = path(
            "<path:object_id>/resolve/",
            self.admin_site.admin_view(self.resolve_view),
            name=f"{self.opts.app_label}_{self.opts.model_name}_resolve",
        )
        return [resolve, *super().get_urls()]

    def resolve_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The *Resolve* button of one failed run: the note, then ``ops.resolve``."""
        if not self.has_resolve_permission(request):
            raise PermissionDenied
        saga = get_object_or_404(Saga, pk=object_id)
        form = ResolveForm(request.POST if request.method == "POST" else None)
        if form.is_valid():
            self._act(
                request,
                Saga.objects.filter(pk=saga.pk),
                lambda saga_id: operations.resolve(
                    saga_id, note=form.cleaned_data["note"], user=request.user
                ),
                "resolved",
            )
            return HttpResponseRedirect(
                reverse(
                    "admin:sagaflow_saga_change", args=[saga.pk], current_app=self.admin_site.name
                )
            )
        return self._resolve_page(request, form, sagas=[saga], more=0)

    def _resolve_page(
        self,
        request: HttpRequest,
        form: ResolveForm,
        *,
        sagas: list[Saga],
        more: int,
        selected: list[str] | None = None,
        select_across: str = "0",
    ) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": "Resolve failed sagas",
            "opts": self.opts,
            "form": form,
            "sagas": sagas,
            "more": more,
            "selected": selected,
            "select_across": select_across,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/sagaflow/saga/resolve.html", context)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        can_resolve = (
            self.has_resolve_permission(request)
            and Saga.objects.filter(
                Q(pk=object_id) if _is_uuid(object_id) else Q(pk__in=[]),
                state=SagaState.FAILED,
                resolved_at__isnull=True,
            ).exists()
        )
        extra = {**(extra_context or {}), "can_resolve": can_resolve}
        return super().change_view(request, object_id, form_url, extra_context=extra)

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


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True
