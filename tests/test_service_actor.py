"""ServiceActor end to end: real pykka actors, a real SQLite file, the fake clock."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest
from sqlalchemy import Engine

from actor_helpers import wait_first_iteration
from tickvisor.actors.base import ServiceActor
from tickvisor.clock import FakeClock, SteppedScheduler
from tickvisor.config import BreakerConfig, ServiceConfig
from tickvisor.messages import (
    BreakerTransition,
    GetMetrics,
    InjectFailures,
    InvalidateCache,
    Pause,
    ResetBreaker,
    Resume,
)
from tickvisor.store.engine import open_database

ASK = 5.0  # every ask in these tests has a timeout


class FlakyService(ServiceActor):
    """A service whose work the test controls: fail, block, or count calls."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fail = False
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.calls: list[list[str]] = []

    def process_symbols(self, symbols: list[str]) -> int:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        self.calls.append(symbols)
        if self.fail:
            raise ConnectionError("database unreachable")
        return len(symbols)

    def discover_symbols(self) -> list[str]:
        self.discoveries = getattr(self, "discoveries", 0) + 1
        return ["EUR/USD", "USD/JPY"]

    def on_receive(self, message: Any) -> Any:
        match message:
            case ("set", attribute, value):
                setattr(self, attribute, value)
                return None
            case ("get", attribute):
                return getattr(self, attribute)
        return super().on_receive(message)


class Collector(pykka.ThreadingActor):
    """An event sink standing where the supervisor and alerts actor stand."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[object] = []

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, GetMetrics):
            return list(self.events)
        self.events.append(message)
        return None


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = open_database(f"sqlite:///{tmp_path / 'svc.db'}")
    yield eng
    eng.dispose()


def start(
    engine: Engine,
    clock: FakeClock,
    scheduler: SteppedScheduler,
    sinks: list[pykka.ActorRef[Any]] | None = None,
    **config: Any,
) -> pykka.ActorRef[Any]:
    config.setdefault("interval_seconds", 5.0)
    config.setdefault("breaker", BreakerConfig(failure_threshold=3, timeout=30.0))
    ref = FlakyService.start(
        "flaky",
        ServiceConfig(**config),
        engine=engine,
        clock=clock,
        scheduler=scheduler,
        event_sinks=sinks or [],
    )
    wait_first_iteration(ref)
    return ref


def metrics(ref: pykka.ActorRef[Any]) -> dict[str, Any]:
    result: dict[str, Any] = ref.ask(GetMetrics(), timeout=ASK)
    return result


def step(ref: pykka.ActorRef[Any], scheduler: SteppedScheduler, intervals: int) -> None:
    """Advance one interval at a time, letting the actor finish each iteration.

    In fake time an iteration takes no time; advancing many intervals at once
    would let the clock run ahead of the actor, which then (correctly) sees a
    backlog and coalesces it.
    """
    for _ in range(intervals):
        scheduler.advance(5.0)
        metrics(ref)


def test_first_iteration_runs_at_start_then_every_interval(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler
) -> None:
    ref = start(engine, clock, scheduler, symbols=["EUR/USD"])
    assert metrics(ref)["iteration_count"] == 1
    scheduler.advance(4.9)
    assert metrics(ref)["iteration_count"] == 1
    scheduler.advance(0.1)
    assert metrics(ref)["iteration_count"] == 2
    step(ref, scheduler, 3)
    assert metrics(ref)["iteration_count"] == 5


def test_failing_iterations_open_the_breaker_and_publish_transitions(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler
) -> None:
    collector = Collector.start()
    ref = start(engine, clock, scheduler, [collector], symbols=["EUR/USD"])
    ref.ask(("set", "fail", True), timeout=ASK)
    step(ref, scheduler, 3)  # three failing iterations (t=5, 10, 15)
    m = metrics(ref)
    assert m["circuit_breaker_state"] == "open"
    assert m["error_count"] == 3
    assert m["recent_errors"][-1]["type"] == "ConnectionError"
    assert m["recent_errors"][-1]["message"] == "database unreachable"
    assert m["last_error_time"] == clock.time()

    step(ref, scheduler, 5)  # open: iterations are skipped, not run
    assert metrics(ref)["error_count"] == 3
    assert metrics(ref)["skipped_while_open"] == 5

    ref.ask(("set", "fail", False), timeout=ASK)
    scheduler.advance(5.0)  # 30 s after opening: half-open trial succeeds
    m = metrics(ref)
    assert m["circuit_breaker_state"] == "closed"
    events = collector.ask(GetMetrics(), timeout=ASK)
    assert [(e.from_state, e.to_state) for e in events] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    assert all(isinstance(e, BreakerTransition) and e.service == "flaky" for e in events)


def test_control_message_waits_at_most_one_iteration_and_iterations_coalesce(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler
) -> None:
    gate = threading.Event()
    ref = start(engine, clock, scheduler, symbols=["EUR/USD"])
    assert metrics(ref)["iteration_count"] == 1
    ref.ask(("set", "gate", gate), timeout=ASK)
    entered: threading.Event = ref.ask(("get", "entered"), timeout=ASK)
    entered.clear()

    scheduler.advance(5.0)  # the next iteration starts and blocks inside its work
    assert entered.wait(ASK)
    scheduler.advance(25.0)  # five more Iterates queue up behind it
    pause_reply = ref.ask(Pause(), block=False)
    with pytest.raises(pykka.Timeout):
        pause_reply.get(timeout=0.05)  # still inside the one iteration
    gate.set()
    reply = pause_reply.get(timeout=ASK)
    assert reply["paused"] is True
    m = metrics(ref)
    # The five Iterates queued during the blocked iteration became one catch-up,
    # sent behind the Pause: the Pause waited one iteration, and the catch-up
    # found the service paused.
    assert m["iteration_count"] == 2
    assert m["coalesced_iterations"] == 4

    step(ref, scheduler, 10)
    assert metrics(ref)["iteration_count"] == 2  # paused: nothing runs
    ref.ask(Resume(), timeout=ASK)
    scheduler.advance(5.0)
    assert metrics(ref)["iteration_count"] == 3
    assert metrics(ref)["paused"] is False


def test_slow_iteration_is_followed_by_one_catch_up_not_a_backlog(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler
) -> None:
    gate = threading.Event()
    ref = start(engine, clock, scheduler, symbols=["EUR/USD"])
    metrics(ref)
    ref.ask(("set", "gate", gate), timeout=ASK)
    entered: threading.Event = ref.ask(("get", "entered"), timeout=ASK)
    entered.clear()
    scheduler.advance(5.0)
    assert entered.wait(ASK)
    scheduler.advance(50.0)  # ten Iterates scheduled during the slow iteration
    gate.set()
    metrics(ref)  # answered before the catch-up, which queues behind this ask
    m = metrics(ref)
    assert m["iteration_count"] == 3  # start, the slow one, one catch-up
    assert m["coalesced_iterations"] == 9


def test_invalidate_cache_and_reset_breaker(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler
) -> None:
    ref = start(engine, clock, scheduler, symbol_cache_ttl=300.0)  # symbols discovered
    assert metrics(ref)["symbols"] == ["EUR/USD", "USD/JPY"]
    step(ref, scheduler, 2)
    assert ref.ask(("get", "discoveries"), timeout=ASK) == 1  # cached
    ref.ask(InvalidateCache(), timeout=ASK)
    scheduler.advance(5.0)
    assert ref.ask(("get", "discoveries"), timeout=ASK) == 2

    ref.ask(InjectFailures(3), timeout=ASK)
    step(ref, scheduler, 3)
    assert metrics(ref)["circuit_breaker_state"] == "open"
    stats = ref.ask(ResetBreaker(), timeout=ASK)
    assert stats["state"] == "closed"
    scheduler.advance(5.0)
    assert metrics(ref)["circuit_breaker_state"] == "closed"


def test_metrics_have_the_seed_fields(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler
) -> None:
    ref = start(engine, clock, scheduler, symbols=["EUR/USD"], interval_seconds=2.0)
    m = metrics(ref)
    seed_fields = {
        "service_name",
        "is_running",
        "iteration_count",
        "error_count",
        "last_error_time",
        "recent_errors",
        "interval_seconds",
        "symbols",
        "symbol_cache_enabled",
        "symbol_cache_age_seconds",
        "circuit_breaker_state",
        "circuit_breaker_stats",
    }
    assert seed_fields | {"last_iteration_seconds", "paused"} <= set(m)
    assert m["service_name"] == "flaky"
    assert m["is_running"] is True
    assert m["interval_seconds"] == 2.0
    assert m["symbols"] == ["EUR/USD"]
    assert m["symbol_cache_enabled"] is False  # inline symbols bypass the cache
    assert m["circuit_breaker_stats"]["failure_threshold"] == 3


def test_recent_errors_keep_the_last_ten(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler
) -> None:
    ref = start(
        engine,
        clock,
        scheduler,
        symbols=["EUR/USD"],
        breaker=BreakerConfig(failure_threshold=100),
    )
    ref.ask(("set", "fail", True), timeout=ASK)
    step(ref, scheduler, 14)
    m = metrics(ref)
    assert m["error_count"] == 14
    assert len(m["recent_errors"]) == 10


def test_stopping_leaves_no_thread_and_no_timer(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler
) -> None:
    before = {t.ident for t in threading.enumerate()}
    ref = start(engine, clock, scheduler, symbols=["EUR/USD"])
    metrics(ref)
    assert scheduler.pending() == 1
    ref.stop(timeout=ASK)
    assert scheduler.pending() == 0
    leftover = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert leftover == []
    scheduler.advance(60.0)  # a tick after stop is harmless
