"""Running the model outside Hypothesis: the settings it needs, and replaying an example.

A failing example that Hypothesis shrank prints as a program (``state.deliver(...)``);
``replay`` runs such a program the way Hypothesis did, the invariants after every
rule and the end checks at teardown, with every hole checked (none tolerated).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from django.test import override_settings

from .machine import EngineModel
from .spec import MODEL_SETTINGS


@contextlib.contextmanager
def model_environment() -> Iterator[None]:
    """The model's settings, and the engine's expected warnings (stale results,
    retries: thousands in a run) kept out of the test's output."""
    engine_log = logging.getLogger("sagaflow")
    level = engine_log.level
    engine_log.setLevel(logging.CRITICAL)
    try:
        with override_settings(SAGAFLOW=MODEL_SETTINGS):
            yield
    finally:
        engine_log.setLevel(level)


class Replay:
    """``state.<rule>(**arguments)`` runs that rule, then the invariants."""

    def __init__(self, tolerated: frozenset[int]) -> None:
        self.machine = EngineModel()
        self.machine.tolerated = tolerated

    def __getattr__(self, name: str) -> Callable[..., None]:
        rule = getattr(self.machine, name)

        def run(**arguments: Any) -> None:
            rule(**arguments)
            self.machine.after_every_rule()

        return run


@contextlib.contextmanager
def replay(tolerated: frozenset[int] = frozenset()) -> Iterator[Replay]:
    with model_environment():
        state = Replay(tolerated)
        try:
            yield state
        except BaseException:
            state.machine.broken = True
            raise
        finally:
            state.machine.teardown()
