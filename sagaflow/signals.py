"""Django signals sent after the transaction that caused them commits.

Every receiver gets ``saga`` (a ``sagaflow.models.Saga``). Step signals also
get ``step`` (the step name), ``phase`` (``"forward"`` or ``"compensate"``: a
compensation's outcome is reported through the same two signals), ``attempt`` and
``duration`` (seconds the action ran); ``step_failed`` and ``saga_failed`` get
``error``.
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
