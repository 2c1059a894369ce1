"""Versions, waiting for code and resolving failed runs (issue 16).

Adds the run's version and the fingerprint of its steps, the time it began to
wait for its code, who resolved a failed run and why, the indexes the janitor's
retention and the status report use, and the ``resolve_saga`` permission.
Runs that exist already are version 1; the data step fingerprints the steps of
those that may still go on (live and failed ones), so a change of their steps
in place is noticed too.
"""

import hashlib
import itertools

from django.db import migrations, models

#: Rows per bulk update of the data step.
BATCH = 1000


def fingerprint_existing_runs(apps, schema_editor):
    Saga = apps.get_model("sagaflow", "Saga")
    SagaStep = apps.get_model("sagaflow", "SagaStep")
    names = (
        SagaStep.objects.filter(saga__state__in=["running", "compensating", "failed"])
        .order_by("saga_id", "index")
        .values_list("saga_id", "name")
        .iterator(chunk_size=BATCH)
    )
    pending = []
    for saga_id, rows in itertools.groupby(names, key=lambda row: row[0]):
        digest = hashlib.sha256("\n".join(name for _, name in rows).encode()).hexdigest()
        pending.append(Saga(id=saga_id, steps_fingerprint=digest))
        if len(pending) >= BATCH:
            Saga.objects.bulk_update(pending, ["steps_fingerprint"])
            pending.clear()
    if pending:
        Saga.objects.bulk_update(pending, ["steps_fingerprint"])


class Migration(migrations.Migration):
    dependencies = [
        ("sagaflow", "0005_step_ordering"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="saga",
            options={
                "ordering": ["-created_at"],
                "permissions": [
                    ("retry_saga", "Can retry a saga"),
                    ("compensate_saga", "Can compensate a saga"),
                    ("resolve_saga", "Can resolve a failed saga"),
                ],
            },
        ),
        migrations.AddField(
            model_name="saga",
            name="version",
            field=models.PositiveIntegerField(db_default=1, default=1),
        ),
        migrations.AddField(
            model_name="saga",
            name="steps_fingerprint",
            field=models.CharField(blank=True, db_default="", default="", max_length=64),
        ),
        migrations.AddField(
            model_name="saga",
            name="needs_code_since",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="saga",
            name="resolved_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="saga",
            name="resolved_by",
            field=models.CharField(blank=True, db_default="", default="", max_length=150),
        ),
        migrations.AddField(
            model_name="saga",
            name="resolution_note",
            field=models.TextField(blank=True, db_default="", default=""),
        ),
        migrations.AddIndex(
            model_name="saga",
            index=models.Index(
                condition=models.Q(("state__in", ["completed", "compensated"])),
                fields=["finished_at"],
                name="sagaflow_saga_finished",
            ),
        ),
        migrations.AddIndex(
            model_name="saga",
            index=models.Index(
                condition=models.Q(("resolved_at__isnull", False)),
                fields=["resolved_at"],
                name="sagaflow_saga_resolved",
            ),
        ),
        migrations.AddIndex(
            model_name="saga",
            index=models.Index(
                condition=models.Q(("needs_code_since__isnull", False)),
                fields=["needs_code_since"],
                name="sagaflow_saga_needs_code",
            ),
        ),
        migrations.RunPython(fingerprint_existing_runs, migrations.RunPython.noop, elidable=True),
    ]
