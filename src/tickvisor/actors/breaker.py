"""The circuit breaker: the seed's API and defaults, with the seed's faults fixed.

The seed ran its callbacks inside its lock (so a callback calling
``get_stats()`` deadlocked), let a raising callback break the caller, never
told anyone when a half-open trial re-opened the circuit, and could sit in
HALF_OPEN forever when trial calls never reported back. Here:

* state changes are computed under the lock, and *notified* after it is
  released, in order, by whichever thread is not already notifying;
* a callback or listener that raises is logged and swallowed;
* every change, HALF_OPEN -> OPEN included, is a :class:`BreakerTransition`;
* HALF_OPEN gives up after ``half_open_max_wait`` (default: the open timeout)
  without a verdict and re-opens, so it can never stay stuck.

Beyond the seed: Akka-style open-period backoff, a Resilience4j-style
count-based failure-rate window, slow calls counted as failures, ignored
exception types, and the FORCED_OPEN / DISABLED operator states.
"""

from __future__ import annotations

import functools
import math
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Any, TypeVar

from tickvisor.clock import Clock, RealClock
from tickvisor.logs import get_logger
from tickvisor.messages import BreakerTransition

log = get_logger(__name__)

T = TypeVar("T")
Callback = Callable[[], None]
Listener = Callable[[BreakerTransition], None]


class CircuitState(StrEnum):
    """Breaker states; the string values are what logs, alerts and metrics show."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"


_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN
_FORCED_OPEN = CircuitState.FORCED_OPEN
_DISABLED = CircuitState.DISABLED


class CircuitOpenError(RuntimeError):
    """Raised by :meth:`CircuitBreaker.call` when the breaker denies the call."""

    def __init__(self, service: str, state: CircuitState, retry_in: float) -> None:
        super().__init__(
            f"circuit breaker of {service!r} is {state.value}; retry in {retry_in:.1f}s"
        )
        self.service = service
        self.state = state
        self.retry_in = retry_in


class CircuitBreaker:
    """A thread-safe circuit breaker.

    Use it as the seed did (``if cb.can_execute(): ... cb.record_success()``),
    or let it time and record the call: ``cb.call(fn)`` / ``with cb.guard():``.
    """

    def __init__(  # noqa: PLR0917 - the seed's positional signature, kept for its users
        self,
        failure_threshold: int = 5,
        timeout: float = 60.0,
        half_open_max_calls: int = 3,
        on_open: Callback | None = None,
        on_close: Callback | None = None,
        on_half_open: Callback | None = None,
        service_name: str = "Unknown",
        *,
        success_threshold: int = 1,
        backoff_factor: float = 1.0,
        max_timeout: float = 600.0,
        sliding_window_size: int = 0,
        minimum_calls: int = 10,
        failure_rate_threshold: float = 50.0,
        slow_call_seconds: float | None = None,
        ignore_exceptions: tuple[type[BaseException], ...] = (),
        half_open_max_wait: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        _validate_settings(
            failure_threshold=failure_threshold,
            timeout=timeout,
            half_open_max_calls=half_open_max_calls,
            success_threshold=success_threshold,
            backoff_factor=backoff_factor,
            max_timeout=max_timeout,
            sliding_window_size=sliding_window_size,
            minimum_calls=minimum_calls,
            failure_rate_threshold=failure_rate_threshold,
            slow_call_seconds=slow_call_seconds,
        )

        self.failure_threshold = failure_threshold
        self.timeout = timeout
        self.half_open_max_calls = half_open_max_calls
        self.success_threshold = success_threshold
        self.backoff_factor = backoff_factor
        self.max_timeout = max_timeout
        self.sliding_window_size = sliding_window_size
        self.minimum_calls = minimum_calls
        self.failure_rate_threshold = failure_rate_threshold
        self.slow_call_seconds = slow_call_seconds
        self.ignore_exceptions = ignore_exceptions
        self.half_open_max_wait = timeout if half_open_max_wait is None else half_open_max_wait
        # Left unset, the stuck-trial limit follows the open timeout, also on reconfigure.
        self._max_wait_follows_timeout = half_open_max_wait is None
        self.service_name = service_name
        self.on_open = on_open
        self.on_close = on_close
        self.on_half_open = on_half_open
        self.clock: Clock = clock or RealClock()

        self._lock = threading.Lock()
        self._state = CircuitState.CLOSED
        self._failure_count = 0  # consecutive failures while CLOSED; trial failures otherwise
        self._success_count = 0  # successes since the last state change
        self._total_failures = 0
        self._total_successes = 0
        self._slow_calls = 0
        self._ignored = 0
        self._rejected = 0
        self._last_failure_time: float | None = None  # wall clock, as the seed reported it
        self._opened_at = 0.0  # monotonic
        self._open_count = 0  # consecutive opens without a close: drives the backoff
        self._current_timeout = timeout
        self._half_open_since = 0.0
        self._half_open_in_flight = 0
        self._window: deque[bool] = deque(maxlen=sliding_window_size or None)
        self._window_enabled = sliding_window_size > 0
        self._listeners: list[Listener] = []
        self._pending: deque[BreakerTransition] = deque()
        self._notifying = False

    # --- seed API -----------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """Current state, moving OPEN -> HALF_OPEN first if the open period is over."""
        if self._state is CircuitState.OPEN:
            self._advance()
        return self._state

    @property
    def is_open(self) -> bool:
        return self.state in (CircuitState.OPEN, CircuitState.FORCED_OPEN)

    def can_execute(self) -> bool:
        """Whether a call may go ahead now; in HALF_OPEN this takes a trial permit."""
        state = self._state
        if state is _CLOSED or state is _DISABLED:
            return True  # the hot path: no lock, one attribute read
        with self._lock:
            self._advance_locked()
            state = self._state
            if state is _HALF_OPEN:
                if self._half_open_in_flight < self.half_open_max_calls:
                    if self._half_open_in_flight == 0:
                        # The stuck-trial clock starts with the first trial, not
                        # with the (possibly much earlier) move to HALF_OPEN.
                        self._half_open_since = self.clock.monotonic()
                    self._half_open_in_flight += 1
                    allowed = True
                else:
                    self._rejected += 1
                    allowed = False
            elif state is _OPEN or state is _FORCED_OPEN:
                self._rejected += 1
                allowed = False
            else:
                allowed = True
        self._notify()  # an OPEN -> HALF_OPEN edge taken above is delivered now
        return allowed

    def record_success(self, duration: float | None = None) -> None:
        """Record a successful call; a call slower than ``slow_call_seconds`` is a failure."""
        if (
            duration is not None
            and self.slow_call_seconds is not None
            and duration > self.slow_call_seconds
        ):
            with self._lock:
                self._slow_calls += 1
            self.record_failure(reason=f"slow call ({duration:.3f}s)")
            return
        lock = self._lock
        lock.acquire()  # explicit acquire/release: this is the hot path of every call
        try:
            state = self._state
            if state is _CLOSED:
                self._total_successes += 1
                self._success_count += 1
                self._failure_count = 0
                if self._window_enabled:
                    self._window.append(True)
                return  # a success never changes a CLOSED breaker: nothing to notify
            if state is _DISABLED:
                return
            self._total_successes += 1
            self._success_count += 1
            if state is _HALF_OPEN:
                self._half_open_in_flight = max(0, self._half_open_in_flight - 1)
                if self._success_count >= self.success_threshold:
                    self._transition_locked(CircuitState.CLOSED, "trial call succeeded")
        finally:
            lock.release()
        self._notify()

    def record_failure(
        self, exc: BaseException | None = None, *, reason: str | None = None
    ) -> None:
        """Record a failed call; an exception of an ignored type counts as neither."""
        if exc is not None and isinstance(exc, self.ignore_exceptions):
            with self._lock:
                self._ignored += 1
                if self._state is CircuitState.HALF_OPEN:
                    self._half_open_in_flight = max(0, self._half_open_in_flight - 1)
            return
        why = reason or (f"{type(exc).__name__}: {exc}" if exc is not None else "failure")
        with self._lock:
            state = self._state
            if state is CircuitState.DISABLED:
                return
            self._total_failures += 1
            self._failure_count += 1
            self._last_failure_time = self.clock.time()
            if state is CircuitState.CLOSED:
                if self._window_enabled:
                    self._window.append(False)
                if self._failure_count >= self.failure_threshold:
                    self._transition_locked(
                        CircuitState.OPEN,
                        f"{self._failure_count} consecutive failures (last: {why})",
                    )
                elif (rate := self._failure_rate_locked()) is not None and (
                    rate >= self.failure_rate_threshold
                ):
                    self._transition_locked(
                        CircuitState.OPEN,
                        f"failure rate {rate:.0f}% over the last {len(self._window)} calls",
                    )
            elif state is CircuitState.HALF_OPEN:
                self._transition_locked(CircuitState.OPEN, f"trial call failed ({why})")
        self._notify()

    def reset(self) -> None:
        """Back to CLOSED with clean counters (operator override; also leaves FORCED/DISABLED)."""
        with self._lock:
            self._open_count = 0
            self._current_timeout = self.timeout
            self._window.clear()
            if self._state is not CircuitState.CLOSED:
                self._transition_locked(CircuitState.CLOSED, "reset")
            self._failure_count = 0
            self._success_count = 0
        self._notify()

    def get_stats(self) -> dict[str, Any]:
        """A snapshot for metrics and alerts; safe to call from a callback."""
        with self._lock:
            self._advance_locked()
            now = self.clock.monotonic()
            if self._state is CircuitState.OPEN:
                until = max(0.0, self._opened_at + self._current_timeout - now)
            else:
                until = 0.0
            stats: dict[str, Any] = {
                "state": self._state.value,
                "failure_count": self._failure_count,
                "success_count": self._success_count,
                "failure_threshold": self.failure_threshold,
                "timeout": self.timeout,
                "last_failure_time": self._last_failure_time,
                "time_until_half_open": until,
                "current_timeout": self._current_timeout,
                "open_count": self._open_count,
                "half_open_in_flight": self._half_open_in_flight,
                "total_failures": self._total_failures,
                "total_successes": self._total_successes,
                "slow_calls": self._slow_calls,
                "ignored_calls": self._ignored,
                "rejected_calls": self._rejected,
                "failure_rate": self._failure_rate_locked(),
            }
        self._notify()
        return stats

    # --- beyond the seed ----------------------------------------------------

    def force_open(self, reason: str = "forced open") -> None:
        """Deny every call until :meth:`reset` (maintenance, known-bad upstream)."""
        with self._lock:
            if self._state is not CircuitState.FORCED_OPEN:
                self._transition_locked(CircuitState.FORCED_OPEN, reason)
        self._notify()

    def disable(self, reason: str = "disabled") -> None:
        """Allow every call and record nothing until :meth:`reset`."""
        with self._lock:
            if self._state is not CircuitState.DISABLED:
                self._transition_locked(CircuitState.DISABLED, reason)
        self._notify()

    def reconfigure(
        self,
        *,
        failure_threshold: int,
        timeout: float,
        half_open_max_calls: int,
        success_threshold: int,
        backoff_factor: float,
        max_timeout: float,
        sliding_window_size: int,
        minimum_calls: int,
        failure_rate_threshold: float,
        slow_call_seconds: float | None,
    ) -> None:
        """Take new settings (a config reload) without losing the breaker's state.

        Replacing the breaker would close an open circuit behind the
        supervisor's back (it holds the service until it hears "closed") and
        forget the failures counted so far. So the state, the counters and
        the failure-rate window (its newest calls, if it shrinks) are kept,
        and nothing transitions here: the next recorded call is judged by
        the new thresholds. An open period already running ends as it was
        scheduled, because the supervisor timed the half-open trial by it;
        a new ``timeout`` applies from the next opening. Raises ValueError,
        changing nothing, if the settings are inconsistent.
        """
        _validate_settings(
            failure_threshold=failure_threshold,
            timeout=timeout,
            half_open_max_calls=half_open_max_calls,
            success_threshold=success_threshold,
            backoff_factor=backoff_factor,
            max_timeout=max_timeout,
            sliding_window_size=sliding_window_size,
            minimum_calls=minimum_calls,
            failure_rate_threshold=failure_rate_threshold,
            slow_call_seconds=slow_call_seconds,
        )
        with self._lock:
            self.failure_threshold = failure_threshold
            self.timeout = timeout
            self.half_open_max_calls = half_open_max_calls
            self.success_threshold = success_threshold
            self.backoff_factor = backoff_factor
            self.max_timeout = max_timeout
            self.minimum_calls = minimum_calls
            self.failure_rate_threshold = failure_rate_threshold
            self.slow_call_seconds = slow_call_seconds
            if self._max_wait_follows_timeout:
                self.half_open_max_wait = timeout
            if self._state not in (_OPEN, _HALF_OPEN):
                self._current_timeout = timeout  # no open period (or backoff) in progress
            if sliding_window_size != self.sliding_window_size:
                self.sliding_window_size = sliding_window_size
                self._window = deque(
                    self._window if sliding_window_size else (),
                    maxlen=sliding_window_size or None,
                )
                self._window_enabled = sliding_window_size > 0

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Receive every :class:`BreakerTransition`; returns an unsubscribe function."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` through the breaker, timing it and recording the outcome.

        Raises :class:`CircuitOpenError` when the breaker denies the call.
        """
        if not self.can_execute():
            raise self._open_error()
        started = self.clock.monotonic()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self.record_failure(exc)
            raise
        self.record_success(self.clock.monotonic() - started)
        return result

    @contextmanager
    def guard(self) -> Iterator[None]:
        """``with breaker.guard(): ...`` — the block form of :meth:`call`."""
        if not self.can_execute():
            raise self._open_error()
        started = self.clock.monotonic()
        try:
            yield
        except BaseException as exc:
            self.record_failure(exc)
            raise
        self.record_success(self.clock.monotonic() - started)

    def _open_error(self) -> CircuitOpenError:
        stats = self.get_stats()
        state = CircuitState(stats["state"])
        # FORCED_OPEN lasts until an operator resets it: there is no retry time.
        retry_in = math.inf if state is _FORCED_OPEN else stats["time_until_half_open"]
        return CircuitOpenError(self.service_name, state, retry_in)

    # --- internals ----------------------------------------------------------

    def _advance(self) -> None:
        with self._lock:
            self._advance_locked()
        self._notify()

    def _advance_locked(self) -> None:
        """Apply the time-driven edges: OPEN -> HALF_OPEN, stuck HALF_OPEN -> OPEN."""
        if self._state is CircuitState.OPEN:
            if self.clock.monotonic() - self._opened_at >= self._current_timeout:
                self._transition_locked(CircuitState.HALF_OPEN, "open period elapsed")
        elif (
            self._state is CircuitState.HALF_OPEN
            and self._half_open_in_flight > 0
            and self.clock.monotonic() - self._half_open_since >= self.half_open_max_wait
        ):
            self._transition_locked(
                CircuitState.OPEN,
                f"no verdict from {self._half_open_in_flight} trial call(s) "
                f"within {self.half_open_max_wait:.0f}s",
            )

    def _failure_rate_locked(self) -> float | None:
        if not self._window_enabled or len(self._window) < self.minimum_calls:
            return None
        failures = sum(1 for ok in self._window if not ok)
        return 100.0 * failures / len(self._window)

    def _transition_locked(self, to_state: CircuitState, reason: str) -> None:
        from_state = self._state
        now = self.clock.monotonic()
        failures = self._failure_count
        self._state = to_state
        self._success_count = 0
        self._half_open_in_flight = 0
        if to_state is CircuitState.OPEN:
            if from_state is CircuitState.HALF_OPEN:
                self._open_count += 1
                # Multiply the current period (not timeout * factor ** n): no
                # overflow however long the dependency stays down.
                self._current_timeout = min(
                    self.max_timeout, self._current_timeout * self.backoff_factor
                )
            else:
                self._open_count = 1
                self._current_timeout = self.timeout
            self._opened_at = now
        elif to_state is CircuitState.HALF_OPEN:
            self._half_open_since = now
            self._failure_count = 0
        elif to_state is CircuitState.CLOSED:
            self._failure_count = 0
            self._open_count = 0
            self._current_timeout = self.timeout
            self._window.clear()
        self._pending.append(
            BreakerTransition(
                service=self.service_name,
                from_state=from_state.value,
                to_state=to_state.value,
                failure_count=failures,
                reason=reason,
                at=self.clock.time(),
                retry_in_seconds=self._current_timeout if to_state is CircuitState.OPEN else None,
            )
        )

    def _notify(self) -> None:
        """Deliver pending transitions outside the lock, in order, on one thread at a time.

        A thread that finds another already notifying leaves its events in the
        queue for that thread: order is kept, and no lock is held while user
        code runs, so a callback may call back into the breaker.
        """
        if not self._pending:
            return
        with self._lock:
            if self._notifying:
                return
            self._notifying = True
        try:
            while True:
                with self._lock:
                    if not self._pending:
                        self._notifying = False
                        return
                    event = self._pending.popleft()
                    listeners = list(self._listeners)
                self._deliver(event, listeners)
        except BaseException:
            with self._lock:
                self._notifying = False
            raise

    def _deliver(self, event: BreakerTransition, listeners: list[Listener]) -> None:
        callback = {
            CircuitState.OPEN.value: self.on_open,
            CircuitState.CLOSED.value: self.on_close,
            CircuitState.HALF_OPEN.value: self.on_half_open,
        }.get(event.to_state)
        if callback is not None:
            _safely(callback, event, "breaker.callback_failed")
        for listener in listeners:
            _safely(functools.partial(listener, event), event, "breaker.listener_failed")


def _safely(fn: Callable[[], None], event: BreakerTransition, log_event: str) -> None:
    try:
        fn()
    except Exception:
        log.exception(
            log_event, service=event.service, from_state=event.from_state, to_state=event.to_state
        )


def _validate_settings(
    *,
    failure_threshold: int,
    timeout: float,
    half_open_max_calls: int,
    success_threshold: int,
    backoff_factor: float,
    max_timeout: float,
    sliding_window_size: int,
    minimum_calls: int,
    failure_rate_threshold: float,
    slow_call_seconds: float | None,
) -> None:
    _require(failure_threshold >= 1, "failure_threshold", failure_threshold, ">= 1")
    _require(timeout > 0, "timeout", timeout, "> 0")
    _require(half_open_max_calls >= 1, "half_open_max_calls", half_open_max_calls, ">= 1")
    _require(
        1 <= success_threshold <= half_open_max_calls,
        "success_threshold",
        success_threshold,
        f"between 1 and half_open_max_calls ({half_open_max_calls})",
    )
    _require(backoff_factor >= 1.0, "backoff_factor", backoff_factor, ">= 1.0")
    _require(max_timeout >= timeout, "max_timeout", max_timeout, f">= timeout ({timeout})")
    _require(sliding_window_size >= 0, "sliding_window_size", sliding_window_size, ">= 0")
    _require(
        1 <= minimum_calls <= (sliding_window_size or minimum_calls),
        "minimum_calls",
        minimum_calls,
        f">= 1 and <= sliding_window_size ({sliding_window_size})",
    )
    _require(
        0 < failure_rate_threshold <= 100,
        "failure_rate_threshold",
        failure_rate_threshold,
        "in (0, 100]",
    )
    _require(
        slow_call_seconds is None or slow_call_seconds > 0,
        "slow_call_seconds",
        slow_call_seconds,
        "> 0",
    )


def _require(ok: bool, name: str, value: object, rule: str) -> None:
    if not ok:
        raise ValueError(f"CircuitBreaker: {name} must be {rule}, got {value!r}")
