"""Control configuration only (``CHAOS_UNSAFE=1``): step messages are sent inside the
transaction that writes the step, instead of after it commits (PITFALLS C7)."""

from django.apps import AppConfig


class UnsafeConfig(AppConfig):
    name = "tests.chaos.unsafe"
    label = "chaos_unsafe"

    def ready(self) -> None:
        from sagaflow.saga import dispatch

        def send_now(step_id, phase, *, countdown=None, timeout=None):
            dispatch.send(step_id, phase, countdown=countdown, timeout=timeout)

        dispatch.send_on_commit = send_now
