"""CircuitBreaker: the seed's integration tests rewritten on the fake clock, plus every edge."""

from __future__ import annotations

import itertools
import threading
from collections import Counter

import pytest

from tickvisor.actors.breaker import CircuitBreaker, CircuitOpenError, CircuitState
from tickvisor.clock import FakeClock
from tickvisor.messages import BreakerTransition


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(clock: FakeClock, **kwargs: object) -> CircuitBreaker:
    kwargs.setdefault("service_name", "svc")
    return CircuitBreaker(clock=clock, **kwargs)  # type: ignore[arg-type]


def fail(cb: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        assert cb.can_execute()
        cb.record_failure(RuntimeError("db down"))


# --- the seed's tests --------------------------------------------------------------


def test_breaker_opens_after_threshold_failures(clock: FakeClock) -> None:
    cb = make(clock, failure_threshold=3)
    fail(cb, 2)
    assert cb.state is CircuitState.CLOSED
    fail(cb, 1)
    assert cb.state is CircuitState.OPEN
    assert cb.is_open
    assert not cb.can_execute()


def test_auto_recovery_closed_open_half_open_closed(clock: FakeClock) -> None:
    cb = make(clock, failure_threshold=2, timeout=30.0)
    fail(cb, 2)
    assert cb.state is CircuitState.OPEN
    clock.advance(29.9)
    assert not cb.can_execute()
    clock.advance(0.1)
    assert cb.state is CircuitState.HALF_OPEN
    assert cb.can_execute()
    cb.record_success()
    assert cb.state is CircuitState.CLOSED


def test_callbacks_notified_on_open_half_open_close(clock: FakeClock) -> None:
    seen: list[str] = []
    cb = make(
        clock,
        failure_threshold=1,
        timeout=5.0,
        on_open=lambda: seen.append("open"),
        on_half_open=lambda: seen.append("half_open"),
        on_close=lambda: seen.append("close"),
    )
    fail(cb, 1)
    clock.advance(5.0)
    assert cb.can_execute()
    cb.record_success()
    assert seen == ["open", "half_open", "close"]


def test_get_stats_includes_countdown(clock: FakeClock) -> None:
    cb = make(clock, failure_threshold=2, timeout=60.0)
    fail(cb, 2)
    stats = cb.get_stats()
    assert stats["state"] == "open"
    assert stats["failure_count"] == 2
    assert stats["failure_threshold"] == 2
    assert stats["timeout"] == 60.0
    assert stats["last_failure_time"] == clock.time()
    assert stats["time_until_half_open"] == pytest.approx(60.0)
    clock.advance(45.0)
    assert cb.get_stats()["time_until_half_open"] == pytest.approx(15.0)
    clock.advance(15.0)
    stats = cb.get_stats()
    assert stats["state"] == "half_open"
    assert stats["time_until_half_open"] == 0.0
    assert set(stats) >= {
        "state",
        "failure_count",
        "success_count",
        "failure_threshold",
        "timeout",
        "last_failure_time",
        "time_until_half_open",
    }


def test_state_transitions_with_can_execute(clock: FakeClock) -> None:
    cb = make(clock, failure_threshold=1, timeout=10.0, half_open_max_calls=2)
    assert cb.can_execute()
    cb.record_failure()
    assert not cb.can_execute()
    clock.advance(10.0)
    assert cb.can_execute()  # trial 1
    assert cb.can_execute()  # trial 2
    assert not cb.can_execute()  # no more trial permits
    assert cb.state is CircuitState.HALF_OPEN


def test_reset_returns_to_closed(clock: FakeClock) -> None:
    cb = make(clock, failure_threshold=1)
    fail(cb, 1)
    cb.reset()
    assert cb.state is CircuitState.CLOSED
    assert cb.get_stats()["failure_count"] == 0
    assert cb.can_execute()


def test_seed_defaults() -> None:
    cb = CircuitBreaker()
    assert (cb.failure_threshold, cb.timeout, cb.half_open_max_calls) == (5, 60.0, 3)
    assert cb.service_name == "Unknown"
    assert cb.state is CircuitState.CLOSED


# --- every edge ---------------------------------------------------------------------


def test_success_in_closed_resets_consecutive_failures(clock: FakeClock) -> None:
    cb = make(clock, failure_threshold=3)
    fail(cb, 2)
    cb.record_success()
    fail(cb, 2)
    assert cb.state is CircuitState.CLOSED


def test_half_open_failure_reopens_and_listeners_see_it(clock: FakeClock) -> None:
    events: list[BreakerTransition] = []
    cb = make(clock, failure_threshold=1, timeout=10.0)
    cb.subscribe(events.append)
    fail(cb, 1)
    clock.advance(10.0)
    assert cb.can_execute()
    cb.record_failure(TimeoutError("still down"))
    assert cb.state is CircuitState.OPEN
    assert [(e.from_state, e.to_state) for e in events] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
    ]
    assert "still down" in events[-1].reason
    assert all(e.service == "svc" for e in events)


def test_success_threshold_needs_several_trials(clock: FakeClock) -> None:
    cb = make(clock, failure_threshold=1, timeout=1.0, half_open_max_calls=3, success_threshold=2)
    fail(cb, 1)
    clock.advance(1.0)
    assert cb.can_execute()
    cb.record_success()
    assert cb.state is CircuitState.HALF_OPEN
    assert cb.can_execute()
    cb.record_success()
    assert cb.state is CircuitState.CLOSED


def test_half_open_cannot_stay_stuck_without_verdicts(clock: FakeClock) -> None:
    events: list[BreakerTransition] = []
    cb = make(clock, failure_threshold=1, timeout=10.0, half_open_max_calls=1)
    cb.subscribe(events.append)
    fail(cb, 1)
    clock.advance(10.0)
    assert cb.can_execute()  # a trial call that never reports back
    assert not cb.can_execute()
    clock.advance(10.0)
    assert not cb.can_execute()  # re-opened: waits one more open period
    assert cb.state is CircuitState.OPEN
    assert "no verdict" in events[-1].reason
    clock.advance(10.0)
    assert cb.can_execute()  # a fresh trial is admitted


def test_backoff_grows_open_period_and_resets_on_close(clock: FakeClock) -> None:
    cb = make(clock, failure_threshold=1, timeout=10.0, backoff_factor=2.0, max_timeout=25.0)
    fail(cb, 1)
    assert cb.get_stats()["current_timeout"] == 10.0
    for expected in (20.0, 25.0, 25.0):
        clock.advance(cb.get_stats()["current_timeout"])
        assert cb.can_execute()
        cb.record_failure()
        assert cb.get_stats()["current_timeout"] == expected
    clock.advance(25.0)
    assert cb.can_execute()
    cb.record_success()
    fail(cb, 1)
    assert cb.get_stats()["current_timeout"] == 10.0


def test_failure_rate_window_opens_below_consecutive_threshold(clock: FakeClock) -> None:
    cb = make(
        clock,
        failure_threshold=100,
        sliding_window_size=10,
        minimum_calls=10,
        failure_rate_threshold=50.0,
    )
    for i in range(9):
        assert cb.can_execute()
        if i % 2:
            cb.record_failure()
        else:
            cb.record_success()
    assert cb.state is CircuitState.CLOSED  # 9 calls < minimum_calls
    assert cb.can_execute()
    cb.record_failure()  # 5 failures of 10 = 50%
    assert cb.state is CircuitState.OPEN
    assert cb.get_stats()["failure_rate"] == 50.0


def test_slow_calls_count_as_failures(clock: FakeClock) -> None:
    cb = make(clock, failure_threshold=2, slow_call_seconds=1.0)
    cb.record_success(duration=0.5)
    cb.record_success(duration=1.5)
    cb.record_success(duration=2.0)
    assert cb.state is CircuitState.OPEN
    assert cb.get_stats()["slow_calls"] == 2


def test_ignored_exceptions_count_as_neither(clock: FakeClock) -> None:
    cb = make(clock, failure_threshold=1, ignore_exceptions=(KeyError,))
    cb.record_failure(KeyError("no such symbol"))
    assert cb.state is CircuitState.CLOSED
    assert cb.get_stats()["ignored_calls"] == 1
    cb.record_failure(ValueError("bad"))
    assert cb.state is CircuitState.OPEN


def test_force_open_and_disable(clock: FakeClock) -> None:
    cb = make(clock, failure_threshold=1, timeout=1.0)
    cb.force_open()
    clock.advance(1000.0)
    assert not cb.can_execute()
    assert cb.is_open
    cb.reset()
    cb.disable()
    fail(cb, 50)
    assert cb.state is CircuitState.DISABLED
    assert cb.can_execute()
    cb.reset()
    assert cb.state is CircuitState.CLOSED


def test_call_and_guard_record_outcomes_and_raise_when_open(clock: FakeClock) -> None:
    cb = make(clock, failure_threshold=1, timeout=5.0)
    assert cb.call(lambda x: x * 2, 21) == 42
    with pytest.raises(ZeroDivisionError):
        cb.call(lambda: 1 / 0)
    with pytest.raises(CircuitOpenError, match=r"'svc' is open; retry in 5\.0s"):
        cb.call(lambda: None)
    assert cb.get_stats()["rejected_calls"] == 1


# --- callbacks outside the lock ---------------------------------------------------


def test_callback_may_call_get_stats(clock: FakeClock) -> None:
    seen: list[dict[str, object]] = []
    cb: CircuitBreaker

    def on_open() -> None:
        seen.append(cb.get_stats())

    cb = make(clock, failure_threshold=1, timeout=7.0, on_open=on_open)
    fail(cb, 1)
    assert seen and seen[0]["state"] == "open"
    assert seen[0]["time_until_half_open"] == pytest.approx(7.0)


def test_raising_callback_and_listener_never_propagate(clock: FakeClock) -> None:
    events: list[BreakerTransition] = []

    def boom() -> None:
        raise RuntimeError("callback bug")

    def bad_listener(_: BreakerTransition) -> None:
        raise RuntimeError("listener bug")

    cb = make(clock, failure_threshold=1, on_open=boom)
    cb.subscribe(bad_listener)
    cb.subscribe(events.append)
    fail(cb, 1)  # must not raise
    assert cb.state is CircuitState.OPEN
    assert [e.to_state for e in events] == ["open"]  # later listeners still run


def test_callback_reentering_the_breaker_keeps_event_order(clock: FakeClock) -> None:
    events: list[BreakerTransition] = []
    cb: CircuitBreaker

    def on_open() -> None:
        cb.reset()  # an operator policy that closes straight away

    cb = make(clock, failure_threshold=1, on_open=on_open)
    cb.subscribe(events.append)
    fail(cb, 1)
    assert [(e.from_state, e.to_state) for e in events] == [("closed", "open"), ("open", "closed")]
    assert cb.state is CircuitState.CLOSED


def test_unsubscribe(clock: FakeClock) -> None:
    events: list[BreakerTransition] = []
    cb = make(clock, failure_threshold=1)
    unsubscribe = cb.subscribe(events.append)
    unsubscribe()
    fail(cb, 1)
    assert events == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"failure_threshold": 0}, "failure_threshold must be >= 1"),
        ({"timeout": 0}, "timeout must be > 0"),
        ({"half_open_max_calls": 2, "success_threshold": 3}, "success_threshold"),
        ({"backoff_factor": 0.5}, "backoff_factor"),
        ({"timeout": 10.0, "max_timeout": 5.0}, "max_timeout must be >= timeout"),
        ({"failure_rate_threshold": 0}, "failure_rate_threshold"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]


# --- many threads --------------------------------------------------------------------


def test_sixteen_threads_hammering_one_breaker_keep_it_consistent(clock: FakeClock) -> None:
    events: list[BreakerTransition] = []
    events_lock = threading.Lock()

    def listener(event: BreakerTransition) -> None:
        with events_lock:
            events.append(event)
        cb.get_stats()  # re-entering from a listener must not deadlock

    cb = make(clock, failure_threshold=5, timeout=0.001, half_open_max_calls=3)
    cb.subscribe(listener)
    start = threading.Barrier(16)
    outcomes: Counter[str] = Counter()
    outcomes_lock = threading.Lock()

    def worker(seed: int) -> None:
        start.wait()
        local: Counter[str] = Counter()
        for i in range(2000):
            if cb.can_execute():
                local["allowed"] += 1
                if (i // 7 + seed) % 2 == 0:  # runs of 7 failures, then 7 successes
                    cb.record_failure()
                else:
                    cb.record_success()
            else:
                local["denied"] += 1
            if i % 50 == 0:
                clock.advance(0.001)
        with outcomes_lock:
            outcomes.update(local)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a worker deadlocked"

    stats = cb.get_stats()
    assert outcomes["allowed"] + outcomes["denied"] == 16 * 2000
    assert stats["total_failures"] + stats["total_successes"] == outcomes["allowed"]
    # Events form a valid chain: each transition starts where the previous ended.
    for before, after in itertools.pairwise(events):
        assert after.from_state == before.to_state
    assert events, "the breaker should have opened at least once"
    assert events[-1].to_state == stats["state"]


def test_backoff_never_overflows_however_long_the_outage(clock: FakeClock) -> None:
    cb = make(clock, failure_threshold=1, timeout=1.0, backoff_factor=2.0, max_timeout=600.0)
    fail(cb, 1)
    for _ in range(2000):
        clock.advance(cb.get_stats()["current_timeout"])
        assert cb.can_execute()
        cb.record_failure()
    assert cb.get_stats()["current_timeout"] == 600.0


def test_stuck_trial_clock_starts_with_the_first_trial(clock: FakeClock) -> None:
    cb = make(clock, failure_threshold=1, timeout=60.0, half_open_max_calls=1)
    fail(cb, 1)
    clock.advance(60.0)
    assert cb.state is CircuitState.HALF_OPEN  # nobody calls for a while
    clock.advance(59.5)
    assert cb.can_execute()  # the trial starts now
    clock.advance(1.0)
    assert cb.get_stats()["state"] == "half_open"  # 1 s into the trial: not stuck


def test_forced_open_error_has_no_retry_time(clock: FakeClock) -> None:
    cb = make(clock)
    cb.force_open()
    with pytest.raises(CircuitOpenError) as info:
        cb.call(lambda: None)
    assert info.value.retry_in == float("inf")
