"""Read-only admin to inspect runs; repairs go through engine calls (see issue tracker)."""

from __future__ import annotations

from django.contrib import admin

from .models import Saga, SagaStep


class ReadOnlyMixin:
    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


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
        "compensated_at",
        "due_at",
        "lease_expires_at",
        "result",
        "error",
    ]
    readonly_fields = fields


@admin.register(Saga)
class SagaAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["id", "name", "state", "current_step", "key", "created_at", "updated_at"]
    list_filter = ["state", "name"]
    search_fields = ["=id", "key", "correlation_id"]
    date_hierarchy = "created_at"
    inlines = [SagaStepInline]
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
        "data",
        "results",
    ]
    fields = readonly_fields
