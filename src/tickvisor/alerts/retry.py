"""The one retry policy for alert delivery, built from tenacity's parts.

Channels make exactly one attempt and classify the failure; this module
decides whether and when to try again, so that every channel retries the
same way and tests can drive it with a fake sleep:

- only :class:`~tickvisor.alerts.notification.TransientDeliveryError` is
  retried (a positive list: a bug or a permanent error is never retried);
- the wait is the receiver's ``Retry-After`` when it gave one (capped), else
  exponential backoff with jitter, so many failed deliveries do not retry in
  lock-step;
- the whole delivery is bounded by attempts *and* by time, and a wait that
  would end past the time bound is not started at all;
- the last error is re-raised as itself, so the caller can tell a dead letter
  from a gone endpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import tenacity
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from tickvisor.alerts.notification import TransientDeliveryError


class wait_retry_after(wait_base):
    """Wait as long as the receiver asked (up to ``cap``), else as ``fallback`` says."""

    def __init__(self, fallback: wait_base, cap: float) -> None:
        self.fallback = fallback
        self.cap = cap

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        if isinstance(error, TransientDeliveryError) and error.retry_after is not None:
            return min(max(0.0, error.retry_after), self.cap)
        return self.fallback(retry_state)


class stop_before_deadline(stop_base):
    """Stop when the next wait would end at or past ``max_seconds`` from the first attempt.

    Like tenacity's ``stop_before_delay``, but the time spent so far is the
    larger of the wall time and the sum of the waits already decided. With a
    real sleep they agree (wall time includes the waits); with a fake or an
    interruptible sleep that returns early, the waits still count, so the
    bound holds in tests and a cut-short wait does not buy extra attempts.
    """

    def __init__(self, max_seconds: float) -> None:
        self.max_seconds = max_seconds

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        elapsed = max(retry_state.seconds_since_start or 0.0, retry_state.idle_for)
        return elapsed + retry_state.upcoming_sleep >= self.max_seconds


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one delivery on one channel. Policy is data; tenacity is the engine."""

    max_attempts: int = 5
    #: Bound on the whole delivery: attempts plus waits.
    max_seconds: float = 60.0
    #: First backoff wait; it doubles per retry (plus up to ``initial_wait`` of jitter).
    initial_wait: float = 1.0
    max_wait: float = 30.0
    #: A receiver's Retry-After is honoured up to this many seconds.
    retry_after_cap: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        for name in ("max_seconds", "initial_wait", "max_wait", "retry_after_cap"):
            value = getattr(self, name)
            if not value >= 0:  # also rejects NaN
                raise ValueError(f"{name} must be zero or more, got {value}")

    def wait_strategy(self) -> wait_base:
        """Retry-After when given, else exponential backoff with jitter."""
        backoff = tenacity.wait_exponential_jitter(
            multiplier=self.initial_wait, max=self.max_wait, jitter=self.initial_wait
        )
        return wait_retry_after(backoff, cap=self.retry_after_cap)

    def stop_strategy(self) -> stop_base:
        """Whichever comes first: ``max_attempts`` attempts, or a wait past ``max_seconds``."""
        return tenacity.stop_after_attempt(self.max_attempts) | stop_before_deadline(
            self.max_seconds
        )

    def retrying(
        self,
        *,
        sleep: Callable[[float], None] = time.sleep,
        before_sleep: Callable[[tenacity.RetryCallState], None] | None = None,
    ) -> tenacity.Retrying:
        """A tenacity ``Retrying`` for this policy: ``policy.retrying()(channel.send, batch)``.

        ``sleep`` is injectable so that tests use a recording fake and the
        alert actor an interruptible wait; ``before_sleep`` is where a caller
        logs ``alert.retrying``.
        """
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type((TransientDeliveryError,)),
            wait=self.wait_strategy(),
            stop=self.stop_strategy(),
            sleep=sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
