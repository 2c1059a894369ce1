"""Waiting on a condition with a deadline: the one polling helper of the tests, the chaos
harness and the benchmarks.

Nothing here sleeps a fixed time and hopes: it polls, and when the deadline passes it
fails and says what it was waiting for. It imports only the standard library, so the
chaos harness and the benchmarks (plain scripts, no pytest, Django set up late or not
at all) use it as the tests do.

Not tenacity: its retrying is built for calls that raise. Polling for a truthy value
with it takes ``retry_if_result``, ``stop_after_delay``, ``wait_fixed``, a ``before``
hook for ``tick`` and a ``retry_error_callback`` for a message naming what was awaited
at every call site, plus a dependency, for what these twenty lines do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A condition stayed false until its deadline.

    An ``AssertionError``, so that a test waiting in vain fails (rather than errors)
    with the message; the harness and the benchmarks catch it where a timeout is an
    outcome to report rather than a failure.
    """


def wait_until(
    condition: Callable[[], T],
    *,
    timeout: float = 60.0,
    every: float = 0.1,
    tick: Callable[[], object] | None = None,
    what: str = "the condition",
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll ``condition`` every ``every`` seconds until it returns something truthy, and
    return that; raise :class:`WaitTimeout` once ``timeout`` seconds have passed.

    ``tick`` runs before each poll (the acceptance tests pass the sweeper, playing
    celery beat). ``ignoring``: exceptions that mean "not yet" (a server still
    starting refuses connections); the last one is named in the timeout's message.
    The condition is polled at least once, even with no time to wait.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        if tick is not None:
            tick()
        try:
            value = condition()
        except ignoring as exc:
            last_error = exc
        else:
            if value:
                return value
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}{detail}")
        time.sleep(every)
