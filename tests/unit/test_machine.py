"""The pure state machine: what happens after each outcome."""

import random

import pytest

from sagaflow import Retry
from sagaflow.saga.machine import (
    Compensate,
    Fail,
    RetryLater,
    StepView,
    after_compensation_failure,
    after_step_failure,
    next_to_compensate,
)

RETRY = Retry(attempts=3, backoff=1, max_backoff=10)


def test_failure_with_attempts_left_retries_within_the_backoff_bounds():
    decision = after_step_failure(index=2, attempts=2, retry=RETRY, aborted=False)
    assert isinstance(decision, RetryLater)
    assert 1.0 <= decision.delay <= 2.0  # ceiling 1 * 2**1, equal jitter


@pytest.mark.parametrize(
    ("attempts", "aborted", "retryable"), [(3, False, True), (1, True, True), (1, False, False)]
)
def test_exhausted_aborted_or_unretryable_failures_compensate_from_the_step(
    attempts, aborted, retryable
):
    decision = after_step_failure(
        index=2, attempts=attempts, retry=RETRY, aborted=aborted, retryable=retryable
    )
    assert decision == Compensate(below=3)


def test_compensation_failure_retries_then_fails():
    assert isinstance(
        after_compensation_failure(attempts=1, retry=RETRY, aborted=False, step="s", error="x"),
        RetryLater,
    )
    decision = after_compensation_failure(
        attempts=3, retry=RETRY, aborted=False, step="s", error="boom"
    )
    assert decision == Fail("compensation of step 's' failed after 3 attempt(s): boom")


def views(*states, interrupted=(), without=()):
    return [
        StepView(i, state, has_compensation=i not in without, interrupted=i in interrupted)
        for i, state in enumerate(states)
    ]


def test_compensates_succeeded_steps_highest_first_skipping_those_without_compensation():
    steps = views("succeeded", "succeeded", "succeeded", "failed", without={1})
    order, below = [], 4
    while (index := next_to_compensate(steps, below)) is not None:
        order.append(index)
        below = index
    assert order == [2, 0]


def test_a_failed_step_is_compensated_only_if_it_was_interrupted():
    assert next_to_compensate(views("succeeded", "failed"), below=2) == 0
    assert next_to_compensate(views("succeeded", "failed", interrupted={1}), below=2) == 1


def test_nothing_to_compensate():
    assert next_to_compensate(views("failed"), below=1) is None
    assert next_to_compensate(views("compensated", "compensated"), below=2) is None


@pytest.mark.parametrize("attempt", range(1, 12))
def test_retry_delay_stays_in_its_bounds(attempt):
    retry = Retry(attempts=20, backoff=0.5, max_backoff=30)
    ceiling = min(0.5 * 2 ** (attempt - 1), 30)
    assert retry.ceiling(attempt) == ceiling
    rng = random.Random(attempt)
    delays = [retry.delay(attempt, rng) for _ in range(200)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert max(delays) - min(delays) > ceiling / 4  # jittered, not constant
