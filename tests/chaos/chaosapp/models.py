"""What the chaos suite's own sagas did, as the checker's ground truth.

The engine's rows say what sagaflow *thinks* ran; an ``Effect`` row is written by
the step itself when it acts (and by its compensation when it undoes), so the
checker can compare the two: a step that acted and was never undone, or an undo
that ran before the action it undoes, shows here whatever the engine recorded.
"""

from django.db import models
from django.db.models.functions import Now


class Effect(models.Model):
    saga_id = models.UUIDField(db_index=True)
    saga_name = models.CharField(max_length=100)
    step = models.CharField(max_length=100)
    #: ``action`` (the step acted) or ``undo`` (its compensation did).
    kind = models.CharField(max_length=8)
    attempt = models.PositiveIntegerField()
    pid = models.IntegerField()
    #: The database's clock: what every order in the checks is measured on.
    at = models.DateTimeField(db_default=Now())
    #: The writing worker's own clock (``timezone.now()``): its skew is ``py_at - at``.
    py_at = models.DateTimeField()
    #: ``CHAOS_SAGA_VARIANT`` of the process that wrote it (a deploy mid-run).
    variant = models.CharField(max_length=16, blank=True, default="")

    class Meta:
        indexes = [models.Index(fields=["saga_id", "step"], name="chaos_effect_saga_step")]

    def __str__(self) -> str:
        return f"{self.saga_name} {self.saga_id} {self.step} {self.kind} #{self.attempt}"
