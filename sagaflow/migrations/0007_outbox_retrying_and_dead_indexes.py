"""Two small partial indexes on the outbox: failed events by key (the relay's
head-of-line guard and a new event's inherited retry time) and dead events (status,
metrics, re-queueing). Built concurrently on PostgreSQL: the outbox takes writes
from every publishing transaction, and a plain CREATE INDEX would block them while
it reads the whole table."""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models
from django.db.migrations.operations import AddIndex


class AddIndexConcurrentlyOnPostgres(AddIndexConcurrently):
    """``CREATE INDEX CONCURRENTLY`` on PostgreSQL, a plain index elsewhere (the demo's
    SQLite)."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            super().database_forwards(app_label, schema_editor, from_state, to_state)
        else:
            AddIndex.database_forwards(self, app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            super().database_backwards(app_label, schema_editor, from_state, to_state)
        else:
            AddIndex.database_backwards(self, app_label, schema_editor, from_state, to_state)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("sagaflow", "0006_saga_versions_and_resolution"),
    ]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name="outboxevent",
            index=models.Index(
                condition=models.Q(("attempts__gt", 0), ("key__isnull", False), ("state", "pending")),
                fields=["key", "id"],
                name="sagaflow_outbox_retrying",
            ),
        ),
        AddIndexConcurrentlyOnPostgres(
            model_name="outboxevent",
            index=models.Index(
                condition=models.Q(("state", "dead")), fields=["id"], name="sagaflow_outbox_dead"
            ),
        ),
    ]
