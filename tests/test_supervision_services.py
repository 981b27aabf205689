"""Supervisors over real services: breaker pause/resume/restart, fencing, chaos, the tree.

Real pykka actors, real SQLite files and the real PostgreSQL, the fake clock
and stepped scheduler; nothing sleeps on a timer.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Callable
from typing import Any

import pykka
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from actor_helpers import Collector, wait_for
from candle_oracle import assert_matches_oracle
from tickvisor.actors.base import ServiceActor
from tickvisor.actors.candles import CandleService
from tickvisor.clock import FakeClock, SteppedScheduler
from tickvisor.config import (
    BackoffConfig,
    BreakerConfig,
    CandleServiceConfig,
    ServiceConfig,
    ServicesConfig,
    SupervisorConfig,
    TickvisorConfig,
)
from tickvisor.messages import Crash, InjectFailures, Ping, SupervisorEvent
from tickvisor.store import insert_ticks
from tickvisor.store.fencing import FencedOut, claim_fence
from tickvisor.store.schema import candles, progress_cursors
from tickvisor.supervision import (
    BreakerPolicy,
    ChildSpec,
    Control,
    Intensity,
    InvalidChildState,
    NoSuchChild,
    Supervisor,
)
from tickvisor.supervision.tree import build_tree

ASK = 10.0
BASE_TS = 1_704_067_200_000


class Steady(ServiceActor):
    """A service whose work always succeeds unless InjectFailures says otherwise."""

    def process_symbols(self, symbols: list[str]) -> int:
        return len(symbols)


class Discovering(Steady):
    """Finds its symbols in its data, so they go through its symbol cache."""

    def discover_symbols(self) -> list[str]:
        return ["EUR/USD", "USD/JPY"]


def decisions(collector: pykka.ActorRef[Any]) -> list[tuple[str, int, str]]:
    found: list[SupervisorEvent] = collector.ask("events", timeout=ASK)
    return [(e.kind, e.generation, e.reason) for e in found]


class Rig:
    """One supervisor, its services, and a way to let fake time pass and settle."""

    def __init__(
        self,
        engine: Engine,
        clock: FakeClock,
        scheduler: SteppedScheduler,
        specs: Callable[[Rig], list[ChildSpec]],
        **supervisor: Any,
    ) -> None:
        self.engine, self.clock, self.scheduler = engine, clock, scheduler
        self.collector = Collector.start()
        supervisor.setdefault("check_interval", None)
        self.sup = Supervisor.start(
            "services",
            specs(self),
            clock=clock,
            scheduler=scheduler,
            events=self.collector,
            **supervisor,
        )
        self.control = Control(self.sup, timeout=ASK)
        self.sup.ask(Ping(), timeout=ASK)

    def service(
        self, name: str, config: ServiceConfig, actor: type[ServiceActor] = Steady, **spec: Any
    ) -> ChildSpec:
        def start(parent: pykka.ActorRef[Any], generation: int) -> pykka.ActorRef[Any]:
            return actor.start(
                name,
                config,
                engine=self.engine,
                clock=self.clock,
                scheduler=self.scheduler,
                event_sinks=[parent],
                parent=parent,
                generation=generation,
            )

        return ChildSpec(name=name, factory=start, **spec)

    def settle(self, *paths: str) -> None:
        """Let every message caused so far be handled: services, then their supervisor."""
        for _ in range(3):
            for path in paths:
                # A child mid-restart or already gone has nothing left to settle.
                with contextlib.suppress(InvalidChildState, NoSuchChild, pykka.ActorDeadError):
                    self.control.metrics(path)
            self.sup.ask(Ping(), timeout=ASK)

    def step(self, seconds: float, *paths: str, by: float = 1.0) -> None:
        """Advance in steps of ``by``, settling after each, as real time would pass."""
        remaining = seconds
        while remaining > 1e-9:
            delta = min(by, remaining)
            self.scheduler.advance(delta)
            self.settle(*paths)
            remaining -= delta


def flaky_config(**breaker: Any) -> ServiceConfig:
    breaker.setdefault("failure_threshold", 2)
    breaker.setdefault("timeout", 10.0)
    breaker.setdefault("half_open_max_calls", 1)
    return ServiceConfig(
        interval_seconds=1.0, symbols=["EUR/USD"], breaker=BreakerConfig(**breaker)
    )


# --- breaker policies -----------------------------------------------------------------


def test_pause_on_open_trial_when_the_open_period_ends_resume_on_close(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler
) -> None:
    rig = Rig(engine, clock, scheduler, lambda r: [r.service("svc", flaky_config())])
    rig.control.send("svc", InjectFailures(3))  # two to open, one to fail the first trial
    rig.step(2, "svc")  # two failing iterations: the breaker opens
    node = rig.control.which_children()[0]
    assert (node["state"], node["breaker_state"], node["paused_by"]) == (
        "paused",
        "open",
        ["breaker"],
    )
    before = rig.control.metrics("svc")
    assert before["paused"] is True
    rig.step(9, "svc")  # still open: no iterations at all, not even skipped ones
    during = rig.control.metrics("svc")
    assert during["iteration_count"] == before["iteration_count"]
    assert during["skipped_while_open"] == before["skipped_while_open"]

    rig.step(1, "svc")  # the open period ends: one trial, which fails -> open again
    after_trial = rig.control.metrics("svc")
    assert after_trial["iteration_count"] == before["iteration_count"] + 1
    assert after_trial["circuit_breaker_state"] == "open"
    assert rig.control.which_children()[0]["state"] == "paused"

    rig.step(10, "svc")  # the next trial succeeds: closed, and resumed
    assert rig.control.metrics("svc")["circuit_breaker_state"] == "closed"
    node = rig.control.which_children()[0]
    assert (node["state"], node["paused_by"]) == ("running", [])
    resumed_at = rig.control.metrics("svc")["iteration_count"]
    rig.step(3, "svc")
    assert rig.control.metrics("svc")["iteration_count"] == resumed_at + 3
    assert [(k, g, r) for k, g, r in decisions(rig.collector)] == [
        ("child.paused", 1, "breaker_open"),
        ("child.resumed", 1, "breaker_closed"),
    ]


def test_restart_policy_replaces_the_child_after_the_open_period(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler
) -> None:
    rig = Rig(
        engine,
        clock,
        scheduler,
        lambda r: [r.service("svc", flaky_config(), on_breaker_open=BreakerPolicy.RESTART)],
    )
    rig.control.send("svc", InjectFailures(2))
    rig.step(2, "svc")
    assert rig.control.which_children()[0]["generation"] == 1
    rig.step(10, "svc")
    node = rig.control.which_children()[0]
    assert (node["generation"], node["state"], node["breaker_state"]) == (2, "running", None)
    assert rig.control.status()["restarts"] == 1  # counted against intensity
    assert rig.control.metrics("svc")["circuit_breaker_state"] == "closed"
    assert ("child.restarted", 2, "breaker_open") in decisions(rig.collector)


def test_ignore_policy_leaves_it_to_the_breaker(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler
) -> None:
    rig = Rig(
        engine,
        clock,
        scheduler,
        lambda r: [r.service("svc", flaky_config(), on_breaker_open=BreakerPolicy.IGNORE)],
    )
    rig.control.send("svc", InjectFailures(2))
    rig.step(4, "svc")
    node = rig.control.which_children()[0]
    assert (node["state"], node["breaker_state"]) == ("running", "open")
    assert rig.control.metrics("svc")["skipped_while_open"] == 2
    assert decisions(rig.collector) == []


def test_an_operator_pause_outlives_a_restart(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler
) -> None:
    rig = Rig(engine, clock, scheduler, lambda r: [r.service("svc", flaky_config())])
    rig.control.pause("svc")
    rig.control.tell("svc", Crash("test"))
    wait_for(lambda: rig.control.which_children()[0]["generation"] == 2, "the restart")
    rig.settle("svc")
    assert rig.control.metrics("svc")["paused"] is True
    rig.step(3, "svc")
    # The replacement was paused before its first iteration could run.
    assert rig.control.metrics("svc")["iteration_count"] == 0
    assert rig.control.which_children()[0]["state"] == "paused"
    rig.control.resume("svc")
    rig.step(2, "svc")
    assert rig.control.metrics("svc")["iteration_count"] == 2


def test_control_resets_a_breaker_and_invalidates_a_symbol_cache(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler
) -> None:
    config = ServiceConfig(
        interval_seconds=1.0, breaker=BreakerConfig(failure_threshold=2, timeout=60.0)
    )
    rig = Rig(engine, clock, scheduler, lambda r: [r.service("svc", config, Discovering)])
    rig.control.send("svc", InjectFailures(2))
    rig.step(2, "svc")
    assert rig.control.which_children()[0]["state"] == "paused"

    assert rig.control.reset_breaker("svc")["state"] == "closed"
    rig.settle("svc")
    node = rig.control.which_children()[0]
    assert (node["state"], node["breaker_state"]) == ("running", "closed")
    assert ("child.resumed", 1, "breaker_closed") in decisions(rig.collector)

    reloads = rig.control.metrics("svc")["symbol_cache"]["reloads"]
    rig.step(1, "svc")  # within the TTL: served from the cache
    assert rig.control.metrics("svc")["symbol_cache"]["reloads"] == reloads
    rig.control.invalidate_cache("svc")
    rig.step(1, "svc")
    assert rig.control.metrics("svc")["symbol_cache"]["reloads"] == reloads + 1


# --- fencing ---------------------------------------------------------------------------


def test_a_fenced_out_instance_cannot_commit(engine: Engine) -> None:
    old = claim_fence(engine, "candles", 1)
    new = claim_fence(engine, "candles", 2)
    assert (old.token, new.token) == (1, 2)
    row = {"service": "candles", "key": "probe", "position": 1, "txid": 0, "updated_ms": 0}
    with pytest.raises(FencedOut, match="replaced"), engine.begin() as conn:
        conn.execute(progress_cursors.insert().values(**row))
        old.check(conn)
    with engine.begin() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(progress_cursors)).scalar() == 0
        conn.execute(progress_cursors.insert().values(**row))
        new.check(conn)  # the current instance commits
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(progress_cursors)).scalar() == 1


HANG_GATES: dict[int, threading.Event] = {}


class HangsInIO(CandleService):
    """A candle service whose listed generations block before their work, as in stuck I/O."""

    def process_symbols(self, symbols: list[str]) -> int:
        gate = HANG_GATES.get(self.generation)
        if gate is not None:
            gate.wait(30)
        return super().process_symbols(symbols)


def tick_rows(symbol: str, offsets: list[int], seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "symbol": symbol,
            "ts_ms": BASE_TS + off,
            "bid": round(1.1 + rng.random() / 100, 5),
            "ask": round(1.1002 + rng.random() / 100, 5),
            "volume": float(rng.randint(1, 9)),
        }
        for off in offsets
    ]


def candle_ticks(engine: Engine) -> int:
    with engine.connect() as conn:
        total = conn.execute(
            sa.select(sa.func.sum(candles.c.tick_count)).where(candles.c.timeframe == "1m")
        ).scalar()
    return int(total or 0)


def test_a_hung_service_is_replaced_and_its_late_write_is_fenced_off(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler
) -> None:
    HANG_GATES.clear()
    HANG_GATES[1] = threading.Event()
    with engine.begin() as conn:
        insert_ticks(conn, tick_rows("EUR/USD", list(range(0, 300_000, 7_000))))
    config = CandleServiceConfig(interval_seconds=5.0, symbols=["EUR/USD"])
    rig = Rig(
        engine,
        clock,
        scheduler,
        lambda r: [r.service("candles", config, HangsInIO, hang_timeout=10.0)],
        check_interval=1.0,
    )
    first = list(pykka.ActorRegistry.get_by_class(HangsInIO))
    assert len(first) == 1
    rig.step(12, by=1.0)  # generation 1 sits in its first iteration: silent for > 10 s
    node = rig.control.status()
    assert node["children"][0]["generation"] == 2
    assert node["abandoned_threads"] == 1
    wait_for(lambda: metrics_of(rig)["ticks_processed"] == 43, "generation 2's catch-up")
    assert candle_ticks(engine) == 43

    with engine.begin() as conn:  # new ticks arrive; the hung instance wakes up
        insert_ticks(conn, tick_rows("EUR/USD", list(range(400_000, 500_000, 9_000)), seed=1))
    HANG_GATES[1].set()
    assert first[0].actor_stopped.wait(ASK), "the fenced-out instance stops itself"
    assert candle_ticks(engine) == 43, "its fold was rolled back by the fence"

    rig.step(5, "candles")  # generation 2's next iteration folds them
    assert candle_ticks(engine) == 43 + 12
    assert_matches_oracle(engine)
    rig.step(1)
    assert rig.control.status()["abandoned_threads"] == 0
    kinds = [k for k, _, _ in decisions(rig.collector)]
    assert kinds[:4] == ["child.hung", "child.abandoned", "child.exited", "child.restarted"]


def metrics_of(rig: Rig) -> dict[str, Any]:
    return rig.control.metrics("candles")


# --- chaos -----------------------------------------------------------------------------


def test_chaos_random_crashes_and_restarts_lose_and_double_count_nothing(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler
) -> None:
    """Two candle services ingest random ticks while being crashed and restarted at random."""
    rng = random.Random(20261125)
    groups = {"candles_a": ["EUR/USD"], "candles_b": ["USD/JPY", "GBP/USD"]}
    rig = Rig(
        engine,
        clock,
        scheduler,
        lambda r: [
            r.service(
                name,
                CandleServiceConfig(interval_seconds=1.0, symbols=symbols, batch_ticks=17),
                CandleService,
            )
            for name, symbols in groups.items()
        ],
        intensity=Intensity(max_restarts=1000, within_seconds=30),
    )
    names = list(groups)
    inserted = 0
    for round_no in range(60):
        symbol = rng.choice([s for symbols in groups.values() for s in symbols])
        # Late ticks (behind earlier rounds), same-millisecond ticks, duplicates.
        offsets = [rng.randint(0, 4 * 3_600_000) for _ in range(rng.randint(1, 40))]
        rows = tick_rows(symbol, offsets + offsets[:2], seed=round_no)
        with engine.begin() as conn:
            inserted += insert_ticks(conn, rows)
        action = rng.random()
        target = rng.choice(names)
        if action < 0.3:
            rig.control.tell(target, Crash("chaos"))
        elif action < 0.4:
            rig.control.restart(target, "chaos")
        rig.step(1, *names)
    rig.step(3, *names)
    restarts = sum(c["generation"] - 1 for c in rig.control.which_children())
    assert restarts >= 10
    assert candle_ticks(engine) == inserted
    assert_matches_oracle(engine)


# --- the tree of `tickvisor run` --------------------------------------------------------


def test_the_run_tree_escalates_to_the_process_when_the_root_gives_up(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler
) -> None:
    escalated = threading.Event()
    config = TickvisorConfig(
        supervisor=SupervisorConfig(
            max_restarts=0, backoff=BackoffConfig(max_seconds=0), check_interval_seconds=1
        ),
        services=ServicesConfig(candles=CandleServiceConfig(symbols=["EUR/USD"])),
    )
    root = build_tree(
        config,
        engine=engine,
        clock=clock,
        scheduler=scheduler,
        on_escalate=lambda _reason: escalated.set(),
    )
    control = Control(root)
    tree = control.status()
    assert [c["name"] for c in tree["children"]] == ["alerts", "services"]
    services = tree["children"][1]
    assert services["kind"] == "supervisor"
    assert [c["path"] for c in services["children"]] == ["root/services/candles"]
    candle_node = services["children"][0]
    assert candle_node["state"] == "running" and candle_node["breaker_state"] is None
    control.tell("services/candles", Crash("test"))  # services: 1 > 0 -> escalates
    assert escalated.wait(ASK)  # root: restarting services is 1 > 0 -> escalates
    assert root.actor_stopped.wait(ASK)
    with engine.connect() as conn:
        kinds = conn.execute(sa.text("SELECT kind FROM events ORDER BY id")).scalars().all()
    assert "supervisor.escalated" in kinds
