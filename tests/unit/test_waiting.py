"""The one polling helper every slow test, the chaos harness and the bench wait with."""

import time

import pytest

from tests.waiting import WaitTimeout, wait_until


def test_returns_the_first_truthy_value_and_ticks_before_each_poll():
    polls: list[str] = []
    answers = iter([None, 0, "", "found"])

    def condition():
        polls.append("poll")
        return next(answers)

    value = wait_until(condition, timeout=5, every=0, tick=lambda: polls.append("tick"))
    assert value == "found"
    assert polls == ["tick", "poll"] * 4


def test_times_out_with_what_it_waited_for_as_a_test_failure():
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"timed out after 0\.2 s waiting for the relay"):
        wait_until(lambda: False, timeout=0.2, every=0.01, what="the relay")
    assert 0.2 <= time.monotonic() - started < 2
    assert issubclass(WaitTimeout, AssertionError)  # pytest reports a failure, not an error


def test_polls_once_even_with_no_time_to_wait():
    assert wait_until(lambda: 42, timeout=0) == 42


def test_ignored_exceptions_mean_not_yet_and_the_last_is_named():
    attempts = iter([ConnectionRefusedError("not listening yet"), None, "up"])

    def condition():
        outcome = next(attempts)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert wait_until(condition, timeout=5, every=0, ignoring=(OSError,)) == "up"

    def refused():
        raise ConnectionRefusedError("still refused")

    with pytest.raises(WaitTimeout, match="last error: ConnectionRefusedError"):
        wait_until(refused, timeout=0.05, every=0.01, ignoring=(OSError,))


def test_other_exceptions_propagate_at_once():
    def broken():
        raise KeyError("a bug, not a wait")

    started = time.monotonic()
    with pytest.raises(KeyError):
        wait_until(broken, timeout=30, ignoring=(OSError,))
    assert time.monotonic() - started < 1
