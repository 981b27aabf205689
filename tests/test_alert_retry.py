"""RetryPolicy: what is retried, how long it waits, when it stops. Driven by a fake sleep."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import tenacity

from tickvisor.alerts.notification import (
    EndpointGoneError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from tickvisor.alerts.retry import RetryPolicy, stop_before_deadline
from tickvisor.testing import FakeSlack, Reply


class Attempts:
    """A send that fails with the scripted errors, then succeeds."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "delivered"


def run(policy: RetryPolicy, attempt: Callable[[], Any]) -> tuple[Any, list[float]]:
    """Run ``attempt`` under ``policy`` with a recording sleep that never sleeps."""
    waits: list[float] = []
    result = policy.retrying(sleep=waits.append)(attempt)
    return result, waits


def transient(retry_after: float | None = None) -> TransientDeliveryError:
    return TransientDeliveryError("HTTP 503", retry_after=retry_after)


def test_transient_then_ok_is_retried() -> None:
    attempt = Attempts(transient(), transient())
    result, waits = run(RetryPolicy(), attempt)
    assert result == "delivered"
    assert attempt.calls == 3
    assert len(waits) == 2


def test_retry_after_is_honoured() -> None:
    attempt = Attempts(transient(retry_after=7))
    _, waits = run(RetryPolicy(), attempt)
    assert waits == [7]


def test_retry_after_is_capped() -> None:
    attempt = Attempts(transient(retry_after=3_600))
    _, waits = run(RetryPolicy(retry_after_cap=20, max_seconds=1_000), attempt)
    assert waits == [20]


def test_exponential_waits_stay_within_jitter_bounds() -> None:
    policy = RetryPolicy(max_attempts=6, initial_wait=1, max_wait=10, max_seconds=1_000)
    for _ in range(20):  # jitter is random: look at several runs
        attempt = Attempts(*[transient() for _ in range(5)])
        _, waits = run(policy, attempt)
        assert len(waits) == 5
        for n, wait in enumerate(waits):
            low = min(2**n, policy.max_wait)
            high = min(2**n + policy.initial_wait, policy.max_wait)
            assert low <= wait <= high, (n, wait)


def test_stops_at_max_attempts_and_reraises_the_last_error() -> None:
    errors = [TransientDeliveryError(f"failure {i}") for i in range(10)]
    attempt = Attempts(*errors)
    with pytest.raises(TransientDeliveryError, match="failure 2"):
        run(RetryPolicy(max_attempts=3, initial_wait=0.5), attempt)
    assert attempt.calls == 3


def test_no_wait_starts_that_would_overrun_max_seconds() -> None:
    policy = RetryPolicy(max_attempts=100, max_seconds=10, initial_wait=1, max_wait=30)
    attempt = Attempts(*[transient() for _ in range(100)])
    waits: list[float] = []
    with pytest.raises(TransientDeliveryError):
        policy.retrying(sleep=waits.append)(attempt)
    assert sum(waits) < policy.max_seconds
    assert attempt.calls == len(waits) + 1 < 100
    # The wait that was refused would have crossed the bound: 1-2, 2-3, 4-5 then 8-9.
    assert len(waits) == 3


def test_a_retry_after_past_the_deadline_ends_the_delivery() -> None:
    policy = RetryPolicy(max_seconds=30, retry_after_cap=60)
    attempt = Attempts(transient(retry_after=45))
    with pytest.raises(TransientDeliveryError):
        run(policy, attempt)
    assert attempt.calls == 1


def test_deadline_counts_wall_time_too() -> None:
    """With a real sleep the elapsed wall time is what counts; checked on a crafted state."""
    stop = stop_before_deadline(10)
    state = tenacity.RetryCallState(tenacity.Retrying(), fn=None, args=(), kwargs={})
    state.start_time = 100.0
    state.outcome_timestamp = 108.5  # 8.5 s of attempts, no waits recorded
    state.upcoming_sleep = 1.0
    assert not stop(state)
    state.upcoming_sleep = 1.5
    assert stop(state)
    state.outcome_timestamp = 100.5  # a fake sleep: the recorded waits count instead
    state.idle_for = 9.0
    assert stop(state)


@pytest.mark.parametrize(
    "error",
    [
        PermanentDeliveryError("HTTP 404 channel_not_found"),
        EndpointGoneError("HTTP 410"),
        ValueError("a bug, not a delivery failure"),
    ],
)
def test_only_transient_errors_are_retried(error: Exception) -> None:
    attempt = Attempts(error)
    with pytest.raises(type(error)):
        run(RetryPolicy(), attempt)
    assert attempt.calls == 1


def test_before_sleep_sees_each_retry() -> None:
    seen: list[tuple[int, float]] = []
    policy = RetryPolicy(max_seconds=1_000)
    attempt = Attempts(transient(retry_after=2), transient(retry_after=3))
    policy.retrying(
        sleep=lambda _: None,
        before_sleep=lambda state: seen.append((state.attempt_number, state.upcoming_sleep)),
    )(attempt)
    assert seen == [(1, 2), (2, 3)]


def test_policy_values_are_checked() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="max_wait"):
        RetryPolicy(max_wait=-1)
    with pytest.raises(ValueError, match="max_seconds"):
        RetryPolicy(max_seconds=float("nan"))


def test_policy_drives_a_real_channel() -> None:
    """End to end: Slack rate-limits twice, then accepts; waits follow its Retry-After."""
    from tickvisor.alerts.channels import SlackChannel
    from tickvisor.alerts.helpers import make_notification

    with FakeSlack() as slack:
        slack.script(
            Reply(429, "rate_limited", {"Retry-After": "2"}),
            Reply(503, "busy", {"Retry-After": "1"}),
        )
        channel = SlackChannel(slack.url, timeout=0.3)
        waits: list[float] = []
        RetryPolicy().retrying(sleep=waits.append)(channel.send, [make_notification("t", "m")])
        assert waits == [2, 1]
        assert [r.status_answered for r in slack.requests] == [429, 503, 200]
