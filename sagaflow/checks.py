"""System checks for settings that would silently break at-least-once execution."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.compatibility)
def check_celery_settings(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    problems = []
    expected = {
        "CELERY_TASK_ACKS_LATE": (True, "a worker crash mid-step would lose the message"),
        "CELERY_TASK_REJECT_ON_WORKER_LOST": (
            True,
            "a killed worker child would ack its message instead of returning it",
        ),
        "CELERY_WORKER_PREFETCH_MULTIPLIER": (
            1,
            "messages reserved by a worker die with it and wait for the visibility timeout",
        ),
    }
    for i, (name, (value, why)) in enumerate(expected.items(), start=1):
        if getattr(settings, name, None) != value:
            problems.append(
                Warning(
                    f"{name} should be {value!r} for sagaflow: otherwise {why}.",
                    hint=f"Set {name} = {value!r} in your settings (see the sagaflow README).",
                    id=f"sagaflow.W00{i}",
                )
            )
    return problems
