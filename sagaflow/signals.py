"""Django signals sent after the transaction that caused them commits.

Every receiver gets ``saga`` (a :class:`~sagaflow.models.Saga`); step signals also
get ``step`` (the step name), ``attempt`` and, on failure, ``error``.
"""

from django.dispatch import Signal

saga_started = Signal()
step_succeeded = Signal()
step_failed = Signal()
saga_completed = Signal()
saga_compensated = Signal()
#: A saga ended ``failed``: its compensation ran out of attempts or its code no
#: longer matches the run. Somebody has to look at it; this is the alert.
saga_failed = Signal()
