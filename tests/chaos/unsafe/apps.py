"""Control configurations only: each name in ``CHAOS_UNSAFE`` that is a patch here
reverts one safety of sagaflow in every process of the run, so a control run can show
that the checks see what that safety prevents (``patches.py``)."""

from django.apps import AppConfig


class UnsafeConfig(AppConfig):
    name = "tests.chaos.unsafe"
    label = "chaos_unsafe"

    def ready(self) -> None:
        from django.conf import settings

        from . import patches

        for name in sorted(settings.UNSAFE & set(patches.PATCHES)):
            patches.PATCHES[name]()
