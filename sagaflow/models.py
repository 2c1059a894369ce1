"""sagaflow's tables. Every write to them goes through a store module (``store.py``)."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q


class SagaState(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    FAILED = "failed"


class StepState(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"


TERMINAL_SAGA_STATES = (SagaState.COMPLETED, SagaState.COMPENSATED, SagaState.FAILED)


class Saga(models.Model):
    """One run of a saga definition."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100)
    # NULL, not "", means "no key": the unique (name, key) constraint skips NULLs.
    key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001
    state = models.CharField(max_length=16, choices=SagaState.choices, default=SagaState.RUNNING)
    data = models.JSONField(null=True, blank=True)
    results = models.JSONField(default=dict, blank=True)
    correlation_id = models.CharField(max_length=200, db_index=True)
    #: Index of the step being run or compensated (len(steps) once completed).
    current_step = models.PositiveIntegerField(default=0)
    deadline_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["name", "key"],
                condition=Q(key__isnull=False),
                name="sagaflow_saga_unique_name_key",
            ),
        ]
        indexes = [
            # The sweeper's deadline scan only ever looks at live runs.
            models.Index(
                fields=["deadline_at"],
                condition=Q(state="running"),
                name="sagaflow_saga_live_deadline",
            ),
            models.Index(fields=["state", "updated_at"], name="sagaflow_saga_state_updated"),
        ]
        permissions = [
            ("retry_saga", "Can retry a saga"),
            ("compensate_saga", "Can compensate a saga"),
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.id} ({self.state})"

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_SAGA_STATES


class SagaStep(models.Model):
    """One step of one run, forward and compensation.

    A step is *waiting* when ``due_at`` is set and no lease is held: a message to
    run it (or, in state ``compensating``, to compensate it) has been or will be
    sent. It is *executing* while it holds a lease; the lease token fences out a
    late result from a worker whose lease was taken over.
    """

    saga = models.ForeignKey(Saga, on_delete=models.CASCADE, related_name="steps")
    index = models.PositiveIntegerField()
    name = models.CharField(max_length=100)
    state = models.CharField(max_length=16, choices=StepState.choices, default=StepState.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    compensation_attempts = models.PositiveIntegerField(default=0)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    #: Set when the step ran (or was running) when the saga began to compensate,
    #: so its effect may have happened: it is compensated too.
    interrupted = models.BooleanField(default=False)
    due_at = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    lease_token = models.UUIDField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    compensated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["saga", "index"]
        constraints = [
            models.UniqueConstraint(fields=["saga", "index"], name="sagaflow_step_unique_index"),
        ]
        indexes = [
            # Sweeper: waiting steps whose message may be lost.
            models.Index(
                fields=["due_at"],
                condition=Q(due_at__isnull=False, lease_token__isnull=True),
                name="sagaflow_step_waiting",
            ),
            # Sweeper: executing steps whose worker may be dead.
            models.Index(
                fields=["lease_expires_at"],
                condition=Q(lease_token__isnull=False),
                name="sagaflow_step_leased",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.saga_id}#{self.index} {self.name} ({self.state})"
