"""Admin for the outbox, the consumers' inbox and idempotency keys.

Read-only but for re-queueing dead events and dead handler runs, each a call into
``sagaflow.ops`` under the ``sagaflow.requeue_outboxevent`` permission.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import ngettext

from ..models import IdempotencyKey, InboxMessage, OutboxEvent
from ..ops import dead_letters
from ..outbox import store as outbox_store
from .common import GuardedActionsMixin, ReadOnlyMixin, json_block


def _requeue_dead(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet,
    requeue: Callable[[Sequence[int]], int],
    singular: str,
    plural: str,
) -> list[int]:
    """Re-queue the dead rows of ``queryset`` in batches of 1000; returns their ids."""
    ids = list(queryset.filter(state="dead").values_list("pk", flat=True))
    count = sum(requeue(ids[i : i + 1000]) for i in range(0, len(ids), 1000))
    model_admin.message_user(
        request, ngettext(singular, plural, count) % {"count": count}, messages.SUCCESS
    )
    return ids


@admin.register(OutboxEvent)
class OutboxEventAdmin(GuardedActionsMixin, ReadOnlyMixin, admin.ModelAdmin):
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
    # One list of names, shown read-only: django-stubs types fields and readonly_fields
    # as different lists (invariant), though a list[str] is valid for both.
    fields = readonly_fields  # type: ignore[assignment]

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> Any:
        context = {**(extra_context or {}), "outbox_backlog": outbox_store.backlog()}
        return super().changelist_view(request, extra_context=context)

    @admin.display(description="last error")
    def short_error(self, event: OutboxEvent) -> str:
        return event.last_error.strip().splitlines()[-1][:120] if event.last_error else ""

    @admin.display(description="payload")
    def payload_shown(self, event: OutboxEvent) -> str:
        return json_block(event.payload)

    @admin.display(description="headers")
    def headers_shown(self, event: OutboxEvent) -> str:
        return json_block(event.headers)

    def has_requeue_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("sagaflow.requeue_outboxevent")

    @admin.action(description="Re-queue selected dead events", permissions=["requeue"])
    def requeue(self, request: HttpRequest, queryset: QuerySet) -> None:
        ids = _requeue_dead(
            self,
            request,
            queryset,
            dead_letters.requeue_dead_events,
            "%(count)d dead event re-queued.",
            "%(count)d dead events re-queued.",
        )
        for event in queryset.filter(pk__in=ids).only("pk", "topic"):
            self.log_change(request, event, "re-queued from the admin")


@admin.register(InboxMessage)
class InboxMessageAdmin(GuardedActionsMixin, ReadOnlyMixin, admin.ModelAdmin):
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
        _requeue_dead(
            self,
            request,
            queryset,
            dead_letters.requeue_dead_inbox,
            "%(count)d dead handler run re-queued.",
            "%(count)d dead handler runs re-queued.",
        )


@admin.register(IdempotencyKey)
class IdempotencyKeyAdmin(GuardedActionsMixin, ReadOnlyMixin, admin.ModelAdmin):
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
    # One list of names, shown read-only: django-stubs types fields and readonly_fields
    # as different lists (invariant), though a list[str] is valid for both.
    readonly_fields = fields  # type: ignore[assignment]

    @admin.display(description="stored body")
    def body_size(self, key: IdempotencyKey) -> str:
        if key.response_body is None:
            return "none"
        return f"{len(key.response_body)} bytes"
