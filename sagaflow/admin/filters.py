"""The saga changelist's filters: stuck runs, and runs that need a person."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from ..conf import conf
from ..models import SagaState
from ..saga import scans

#: Runs a bulk *resolve* lists on its confirmation page before summarising.
SHOWN_ON_CONFIRMATION = 20


class StuckFilter(admin.SimpleListFilter):
    title = "progress"
    parameter_name = "stuck"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", f"stuck (no change for {conf.STUCK_AFTER:g}s)")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "yes":
            return queryset & scans.stuck(conf.STUCK_AFTER)
        return queryset


class AttentionFilter(admin.SimpleListFilter):
    title = "attention"
    parameter_name = "attention"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("needs_code", "waiting for the code of their version"),
            ("failed", "failed, not resolved"),
            ("resolved", "failed, resolved"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "needs_code":
            return queryset.filter(needs_code_since__isnull=False)
        if self.value() == "failed":
            return queryset.filter(state=SagaState.FAILED, resolved_at__isnull=True)
        if self.value() == "resolved":
            return queryset.filter(resolved_at__isnull=False)
        return queryset
