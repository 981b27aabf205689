"""Time and timers, injected everywhere so tests never sleep.

Every component that needs "now" or "later" takes a :class:`Clock` and, where
it schedules work, a :class:`Scheduler`. Production uses :class:`RealClock`
and :class:`ThreadScheduler`; tests use :class:`FakeClock` and
:class:`SteppedScheduler`, which only move when the test says so.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import pykka

from tickvisor.logs import get_logger

log = get_logger(__name__)


@runtime_checkable
class Clock(Protocol):
    """Where time comes from: monotonic for durations, wall for timestamps."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (durations, deadlines)."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the Unix epoch, UTC (for stored timestamps)."""
        ...


class RealClock:
    """The system clock."""

    # Bound straight to the C functions: the symbol cache and breaker call
    # these on their hot paths, and a Python-level wrapper would double the cost.
    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)


class FakeClock:
    """A clock that moves only when told to; thread-safe.

    Wall time and monotonic time advance together, so a test that advances
    by 60 s sees both a 60 s duration and a timestamp 60 s later.
    """

    def __init__(self, start: float = 1_700_000_000.0, monotonic_start: float = 1000.0) -> None:
        self._lock = threading.Lock()
        self._wall = start
        self._mono = monotonic_start

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def time(self) -> float:
        with self._lock:
            return self._wall

    def advance(self, seconds: float) -> None:
        """Move both clocks forward; negative steps are refused (time is monotonic)."""
        if seconds < 0:
            raise ValueError(f"FakeClock.advance: seconds must be >= 0, got {seconds}")
        with self._lock:
            self._mono += seconds
            self._wall += seconds


def now_ms(clock: Clock) -> int:
    """Wall time as integer UTC milliseconds, the unit every table stores."""
    return int(clock.time() * 1000)


@dataclass(eq=False)
class Timer:
    """A handle on scheduled work; :meth:`cancel` is idempotent and thread-safe."""

    due: float
    callback: Callable[[], None]
    interval: float | None = None
    cancelled: bool = False
    seq: int = field(default=0)
    origin: float = 0.0  # first due time of a periodic timer
    ticks: int = 0  # periodic ticks since the origin

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    """Runs callbacks later or periodically, and delivers delayed ``tell``s.

    Callbacks run on the scheduler's own thread (or the test's thread for the
    stepped scheduler), so they must be quick: the usual callback is one
    ``ActorRef.tell``, which never blocks.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` once, ``delay`` seconds from now."""
        return self._push(self.clock.monotonic() + max(0.0, delay), callback, None)

    def call_every(
        self, interval: float, callback: Callable[[], None], *, initial_delay: float | None = None
    ) -> Timer:
        """Run ``callback`` every ``interval`` seconds (fixed rate, missed ticks skipped)."""
        if interval <= 0:
            raise ValueError(f"call_every: interval must be > 0, got {interval}")
        first = interval if initial_delay is None else max(0.0, initial_delay)
        return self._push(self.clock.monotonic() + first, callback, interval)

    def tell_later(self, delay: float, ref: pykka.ActorRef[Any], message: object) -> Timer:
        """Deliver ``message`` to ``ref`` once after ``delay`` seconds."""
        timer_box: list[Timer] = []
        callback = _teller(ref, lambda: message, timer_box)
        timer = self.call_later(delay, callback)
        timer_box.append(timer)
        return timer

    def tell_every(
        self,
        interval: float,
        ref: pykka.ActorRef[Any],
        make_message: Callable[[], object],
        *,
        initial_delay: float | None = None,
    ) -> Timer:
        """Deliver ``make_message()`` to ``ref`` every ``interval`` seconds.

        The timer cancels itself once the actor is dead, so a stopped actor
        leaves no periodic work behind.
        """
        timer_box: list[Timer] = []
        timer = self.call_every(
            interval, _teller(ref, make_message, timer_box), initial_delay=initial_delay
        )
        timer_box.append(timer)
        return timer

    def pending(self) -> int:
        """Number of live (not cancelled) timers."""
        with self._lock:
            return sum(1 for _, _, t in self._heap if not t.cancelled)

    def _push(self, due: float, callback: Callable[[], None], interval: float | None) -> Timer:
        with self._lock:
            seq = next(self._seq)
            timer = Timer(due=due, callback=callback, interval=interval, seq=seq, origin=due)
            heapq.heappush(self._heap, (due, seq, timer))
        self._wake()
        return timer

    def _pop_due(self, now: float) -> Timer | None:
        """Remove and return the earliest timer due at ``now``, rescheduling periodic ones."""
        with self._lock:
            while self._heap:
                due, _, timer = self._heap[0]
                if timer.cancelled:
                    heapq.heappop(self._heap)
                    continue
                if due > now:
                    return None
                heapq.heappop(self._heap)
                if timer.interval is not None:
                    # Fixed rate without a backlog: the next due time is the first
                    # tick strictly after now, computed from the origin (not by
                    # repeated addition, which drifts in floating point).
                    timer.ticks += int((now - due) // timer.interval) + 1
                    timer.due = timer.origin + timer.ticks * timer.interval
                    timer.seq = next(self._seq)
                    heapq.heappush(self._heap, (timer.due, timer.seq, timer))
                return timer
            return None

    def _next_due(self) -> float | None:
        with self._lock:
            while self._heap and self._heap[0][2].cancelled:
                heapq.heappop(self._heap)
            return self._heap[0][0] if self._heap else None

    def _fire(self, timer: Timer) -> None:
        if timer.cancelled:
            return
        try:
            timer.callback()
        except Exception:
            log.exception("scheduler.callback_failed")

    def _wake(self) -> None:
        """Hook for schedulers with a thread to re-check their next deadline."""

    def stop(self) -> None:
        """Cancel every timer; the threaded scheduler also ends its thread."""
        with self._lock:
            for _, _, timer in self._heap:
                timer.cancel()
            self._heap.clear()


def _teller(
    ref: pykka.ActorRef[Any], make_message: Callable[[], object], timer_box: list[Timer]
) -> Callable[[], None]:
    def tell() -> None:
        try:
            ref.tell(make_message())
        except pykka.ActorDeadError:
            if timer_box:
                timer_box[0].cancel()

    return tell


class SteppedScheduler(Scheduler):
    """A scheduler for tests: nothing fires until :meth:`advance` or :meth:`run_due`.

    ``advance`` walks the fake clock forward timer by timer, so callbacks see
    the time they were due at, in due order, exactly as in production.
    """

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.fake_clock = clock

    def run_due(self) -> int:
        """Fire every timer due now; return how many fired."""
        fired = 0
        while (timer := self._pop_due(self.fake_clock.monotonic())) is not None:
            self._fire(timer)
            fired += 1
        return fired

    def advance(self, seconds: float) -> int:
        """Move the fake clock forward by ``seconds``, firing timers on the way."""
        if seconds < 0:
            raise ValueError(f"SteppedScheduler.advance: seconds must be >= 0, got {seconds}")
        target = self.fake_clock.monotonic() + seconds
        fired = self.run_due()
        while True:
            due = self._next_due()
            if due is None or due > target:
                break
            self.fake_clock.advance(max(0.0, due - self.fake_clock.monotonic()))
            fired += self.run_due()
        self.fake_clock.advance(max(0.0, target - self.fake_clock.monotonic()))
        return fired + self.run_due()


class ThreadScheduler(Scheduler):
    """The production scheduler: one daemon thread sleeping until the next timer."""

    def __init__(self, clock: Clock | None = None, name: str = "tickvisor-scheduler") -> None:
        super().__init__(clock or RealClock())
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                due = self._next_due()
                now = self.clock.monotonic()
                if due is None or due > now:
                    self._cond.wait(timeout=None if due is None else due - now)
                    continue
            while (timer := self._pop_due(self.clock.monotonic())) is not None:
                self._fire(timer)

    def stop(self, timeout: float = 5.0) -> None:
        super().stop()
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
