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
    #: The version of its definition the run started with; it only ever runs the
    #: steps of that version (``sagaflow.define(name, version=N)``).
    version = models.PositiveIntegerField(default=1, db_default=1)
    #: The fingerprint of that version's step names when the run started
    #: (``definition.steps_fingerprint``): the run goes on only while the code of
    #: its version has exactly these steps.
    steps_fingerprint = models.CharField(max_length=64, blank=True, default="", db_default="")
    #: Set while the run waits for the code of its version, which this deploy
    #: removed or changed: it neither goes on nor is compensated until that code
    #: is back. ``error`` then starts with "needs the code of version N of <name>".
    needs_code_since = models.DateTimeField(null=True, blank=True)
    #: A person resolved this failed run (``sagaflow.ops.resolve``): when, who and
    #: why. It no longer needs attention and ages out after ``SAGA_RETENTION``.
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.CharField(max_length=150, blank=True, default="", db_default="")
    resolution_note = models.TextField(blank=True, default="", db_default="")

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
            # Retention (the janitor): finished runs by age, resolved failed runs by
            # the time they were resolved.
            models.Index(
                fields=["finished_at"],
                condition=Q(state__in=["completed", "compensated"]),
                name="sagaflow_saga_finished",
            ),
            models.Index(
                fields=["resolved_at"],
                condition=Q(resolved_at__isnull=False),
                name="sagaflow_saga_resolved",
            ),
            # Runs waiting for the code of their version (status, admin, sweeper).
            models.Index(
                fields=["needs_code_since"],
                condition=Q(needs_code_since__isnull=False),
                name="sagaflow_saga_needs_code",
            ),
        ]
        permissions = [
            ("retry_saga", "Can retry a saga"),
            ("compensate_saga", "Can compensate a saga"),
            ("resolve_saga", "Can resolve a failed saga"),
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.id} ({self.state})"

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_SAGA_STATES

    @property
    def is_resolved(self) -> bool:
        return self.resolved_at is not None


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
    #: Every attempt, forward and compensation, oldest first: ``phase``, ``attempt``,
    #: ``outcome`` (succeeded, failed, aborted, lost, revoked), ``finished_at``,
    #: ``duration`` (seconds), ``error`` and, when another try was scheduled,
    #: ``retry_in`` (seconds). Written with the outcome it describes.
    history = models.JSONField(default=list, blank=True)

    class Meta:
        # By the column, not the relation: ordering by "saga" would join the saga
        # table (and its own ordering) into every step query.
        ordering = ["saga_id", "index"]
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


class IdempotencyKeyState(models.TextChoices):
    IN_FLIGHT = "in_flight"
    COMPLETED = "completed"


class IdempotencyKey(models.Model):
    """One client request key (``Idempotency-Key``) and, once done, its response.

    Written only by ``sagaflow.idempotency.store``. A key belongs to a scope (the
    authenticated principal), a method and a route; the unique constraint over
    the four is what makes the claim atomic. ``lock_token`` fences the holder of
    an in-flight claim: after a takeover, a late holder can no longer record.
    """

    scope = models.CharField(max_length=255)
    method = models.CharField(max_length=10)
    #: The URL pattern (``resolver_match.route``), not the concrete path.
    route = models.TextField()
    key = models.CharField(max_length=255)
    #: sha256 over method, route, path + query, content type and canonical body.
    fingerprint = models.CharField(max_length=64)
    state = models.CharField(
        max_length=16, choices=IdempotencyKeyState.choices, default=IdempotencyKeyState.IN_FLIGHT
    )
    lock_token = models.UUIDField(null=True, blank=True)
    #: How many times the view was started for this key (takeovers count).
    attempts = models.PositiveIntegerField(default=1)
    locked_until = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    #: ``[[name, value], ...]``: only the allow-listed headers.
    response_headers = models.JSONField(default=list, blank=True)
    #: NULL for a completed streaming response, whose body was never stored.
    response_body = models.BinaryField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["scope", "method", "route", "key"],
                name="sagaflow_idempotencykey_unique",
            ),
        ]
        indexes = [
            # The janitor's scan: expired rows only.
            models.Index(fields=["expires_at"], name="sagaflow_idemkey_expires"),
        ]

    def __str__(self) -> str:
        return f"{self.method} {self.route} {self.key} ({self.state})"


class OutboxState(models.TextChoices):
    PENDING = "pending"
    PUBLISHED = "published"
    DEAD = "dead"


class OutboxEvent(models.Model):
    """One message to publish, written in the transaction of the change it announces.

    Written only by ``outbox_store.py``. ``id`` orders events; per ``key`` it is
    also commit order (``publish`` serialises writers of one key). Rows stay
    ``published`` until the janitor's retention deletes them; ``dead`` rows (too
    many failed publishes) wait for a person to re-queue them.
    """

    id = models.BigAutoField(primary_key=True)
    topic = models.CharField(max_length=200)
    #: Ordering key: events with the same key are published in order. NULL: unordered.
    key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001
    payload = models.JSONField(null=True, blank=True)
    #: ``correlation_id``, ``causation_id`` and whatever the caller added.
    headers = models.JSONField(default=dict, blank=True)
    state = models.CharField(
        max_length=16, choices=OutboxState.choices, default=OutboxState.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField()
    #: Not published before this time (database clock); moved on by failed publishes.
    available_at = models.DateTimeField()
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        permissions = [("requeue_outboxevent", "Can re-queue dead outbox events")]
        indexes = [
            # The relay's claim: pending rows in id order; stays small however
            # large the table grows, because published rows leave it.
            models.Index(
                fields=["id"],
                condition=Q(state="pending"),
                name="sagaflow_outbox_pending",
            ),
            # Head-of-line check: an earlier pending event of the same key.
            models.Index(
                fields=["key", "id"],
                condition=Q(state="pending", key__isnull=False),
                name="sagaflow_outbox_pending_key",
            ),
            # Retention: the janitor's scan of old published rows.
            models.Index(
                fields=["published_at"],
                condition=Q(state="published"),
                name="sagaflow_outbox_published",
            ),
            # Failed events waiting for a retry, by key: the claim's head-of-line
            # guard, and the retry time a new event of a waiting key inherits.
            models.Index(
                fields=["key", "id"],
                condition=Q(state="pending", attempts__gt=0, key__isnull=False),
                name="sagaflow_outbox_retrying",
            ),
            # Dead events: counted by status and metrics, re-queued by a person.
            models.Index(fields=["id"], condition=Q(state="dead"), name="sagaflow_outbox_dead"),
        ]

    def __str__(self) -> str:
        return f"#{self.id} {self.topic} ({self.state})"


class InboxState(models.TextChoices):
    PROCESSED = "processed"
    FAILED = "failed"
    DEAD = "dead"


class InboxMessage(models.Model):
    """One event as seen by one consumer: processed (its writes committed with this
    row), failed (a retry is due at ``available_at``) or dead (retries exhausted).

    Written only by ``consumers.py`` through ``inbox_store.py``. The unique
    (consumer, message_id) pair is what makes a duplicate delivery a no-op.
    """

    consumer = models.CharField(max_length=200)
    #: The ``OutboxEvent`` id.
    message_id = models.BigIntegerField()
    topic = models.CharField(max_length=200)
    state = models.CharField(max_length=16, choices=InboxState.choices)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    available_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["consumer", "message_id"], name="sagaflow_inbox_unique"
            ),
        ]
        indexes = [
            # Due retries of failed handlers.
            models.Index(
                fields=["available_at"],
                condition=Q(state="failed"),
                name="sagaflow_inbox_retry",
            ),
            # Retention.
            models.Index(fields=["updated_at"], name="sagaflow_inbox_updated"),
        ]

    def __str__(self) -> str:
        return f"{self.consumer} #{self.message_id} ({self.state})"
