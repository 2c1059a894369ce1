"""Named fault points at commit boundaries, no-ops until a test arms them.

Points are armed in-process with :func:`sagaflow.testing.armed_fault`, or for a
whole worker process through the environment, so crash tests can kill a real
worker at a precise boundary::

    SAGAFLOW_FAULTS="step.after_action=kill"          # every time
    SAGAFLOW_FAULTS_ONCE_DIR=/some/dir                # each point fires once per dir

Actions: ``raise`` raises :class:`~sagaflow.exceptions.FaultInjected`; ``kill``
SIGKILLs the current process (no cleanup, no rollback message: like the OOM killer).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from .exceptions import ConfigurationError, FaultInjected

#: Every point the engine calls; arming an unknown name is refused.
POINTS = frozenset(
    {
        "step.after_claim",  # the attempt is committed as running; the action has not run
        "step.after_action",  # the action ran (side effect done); nothing recorded yet
        "step.after_record",  # the outcome committed; the next message not yet sent
        "compensation.after_action",  # the compensation ran; not recorded yet
        "relay.after_claim",  # a batch is claimed (rows locked); nothing published yet
        "relay.after_publish",  # the batch is on the broker; not yet marked published
    }
)
ACTIONS = frozenset({"raise", "kill"})

_armed: dict[str, str] = {}


def register_points(*names: str) -> None:
    """Let another module (the outbox relay, say) declare its own points."""
    global POINTS
    POINTS = POINTS | frozenset(names)


def arm(point: str, action: str = "raise") -> None:
    if point not in POINTS:
        raise ConfigurationError(
            f"Unknown fault point {point!r}. Known points: {', '.join(sorted(POINTS))}."
        )
    if action not in ACTIONS:
        raise ConfigurationError(f"Unknown fault action {action!r}; use 'raise' or 'kill'.")
    _armed[point] = action


def disarm(point: str | None = None) -> None:
    if point is None:
        _armed.clear()
    else:
        _armed.pop(point, None)


def _from_environment(point: str) -> str | None:
    spec = os.environ.get("SAGAFLOW_FAULTS", "")
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition("=")
        if name == point:
            return action or "raise"
    return None


def _first_time(point: str) -> bool:
    """With SAGAFLOW_FAULTS_ONCE_DIR set, only the first process to get here fires."""
    directory = os.environ.get("SAGAFLOW_FAULTS_ONCE_DIR")
    if not directory:
        return True
    try:
        fd = os.open(Path(directory) / f"{point}.fired", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def fault_point(point: str) -> None:
    """Crash here if a test armed ``point``; otherwise do nothing."""
    action = _armed.get(point) or _from_environment(point)
    if action is None or not _first_time(point):
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise FaultInjected(f"fault point {point!r} fired")
