"""The stepped scheduler: timers fire at their due times, in order, without drift."""

from __future__ import annotations

import pytest

from tickvisor.clock import FakeClock, SteppedScheduler


@pytest.mark.parametrize("interval", [0.1, 0.2, 0.7, 1 / 3, 5.0])
def test_periodic_timer_fires_once_per_interval_without_drift(interval: float) -> None:
    clock = FakeClock()
    scheduler = SteppedScheduler(clock)
    fired: list[float] = []
    scheduler.call_every(interval, lambda: fired.append(clock.monotonic()))
    periods = 30
    scheduler.advance(interval * periods)
    assert len(fired) == periods
    assert fired[0] == pytest.approx(1000.0 + interval)


def test_timers_fire_in_due_order_at_their_due_time() -> None:
    clock = FakeClock()
    scheduler = SteppedScheduler(clock)
    seen: list[tuple[str, float]] = []
    scheduler.call_later(3.0, lambda: seen.append(("b", clock.monotonic())))
    scheduler.call_later(1.0, lambda: seen.append(("a", clock.monotonic())))
    timer = scheduler.call_later(2.0, lambda: seen.append(("cancelled", clock.monotonic())))
    timer.cancel()
    scheduler.advance(10.0)
    assert seen == [("a", 1001.0), ("b", 1003.0)]
    assert clock.monotonic() == 1010.0
    assert scheduler.pending() == 0


def test_negative_steps_are_refused() -> None:
    clock = FakeClock()
    with pytest.raises(ValueError, match="seconds must be >= 0"):
        SteppedScheduler(clock).advance(-1.0)
    with pytest.raises(ValueError, match="seconds must be >= 0"):
        clock.advance(-1.0)
