"""sagaflow's admin: sagas (``sagas.py``) and the outbox, inbox and keys (``events.py``)."""

from . import events, sagas  # noqa: F401 - importing registers the ModelAdmins
