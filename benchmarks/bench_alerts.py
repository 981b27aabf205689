"""Alerting's costs: what a slow Slack does to a service, and a storm of transitions.

- **Iteration latency with a 5-second Slack**: a service whose breaker
  opens, half-opens and closes every few iterations, so it publishes a
  stream of transitions. With alerting on, they go to the alerts subtree,
  whose Slack endpoint (a real HTTP server on loopback) takes 5 s per
  request; with alerting off, nobody listens. Both services run in the same
  process, iterations interleaved; the figure is each one's p99 of the
  ``ask(Iterate)`` round trip. Goal: at most +1 ms.
- **Storm**: 1,000 transitions from 50 services within 10 s. Every
  transition must be represented in some delivered Slack message, Slack
  must never get more than about one message per second, and at most 60
  messages in all. Baseline: the seed, which sent one message per
  transition (1,000).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import sqlalchemy as sa

from benchmarks._harness import Result
from benchmarks.bench_supervision import percentile, production_logging
from tickvisor.actors.base import ServiceActor
from tickvisor.alerts.outbox import Outbox
from tickvisor.clock import RealClock, ThreadScheduler
from tickvisor.config import BreakerConfig, ServiceConfig, TickvisorConfig
from tickvisor.eventbus import EventBus
from tickvisor.messages import BreakerTransition, Iterate, Ping
from tickvisor.store.engine import open_database
from tickvisor.store.schema import alert_deliveries, alert_notifications, alert_outbox
from tickvisor.supervision.tree import start_alerting
from tickvisor.testing.receivers import FakeSlack, Stall

ASK = 10.0


class Pulse(ServiceActor):
    """Fails every fourth iteration: with threshold 1, a breaker cycle each time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    def process_symbols(self, symbols: list[str]) -> int:
        self.calls += 1
        if self.calls % 4 == 0:
            raise RuntimeError("pulse")
        return len(symbols)


@contextmanager
def alerting(slack_url: str, db: str, **alerts: Any) -> Iterator[tuple[EventBus, Any]]:
    config = TickvisorConfig.model_validate(
        {"alerts": {"slack": {"webhook_url": slack_url}, **alerts}}
    )
    engine = open_database(db)
    clock = RealClock()
    scheduler = ThreadScheduler(clock)
    bus = EventBus()
    closing = threading.Event()
    root = start_alerting(
        config, engine=engine, clock=clock, scheduler=scheduler, bus=bus, closing=closing
    )
    root.ask(Ping(), timeout=ASK)
    try:
        yield bus, engine
    finally:
        closing.set()
        root.stop(block=True, timeout=30)
        scheduler.stop()
        engine.dispose()


def iteration_latency(iterations: int = 4_000) -> Result:
    service_config = ServiceConfig(
        interval_seconds=3600,
        symbols=["EUR/USD"],
        breaker=BreakerConfig(failure_threshold=1, timeout=0.001, half_open_max_calls=1),
    )
    with (
        TemporaryDirectory() as folder,
        FakeSlack(default=Stall(5.0)) as slack,
        alerting(slack.url, f"sqlite:///{Path(folder) / 'a.db'}", group_wait_seconds=0) as (
            bus,
            engine,
        ),
    ):
        clock = RealClock()
        scheduler = ThreadScheduler(clock)
        on = Pulse.start(
            "on",
            service_config,
            engine=engine,
            clock=clock,
            scheduler=scheduler,
            event_sinks=[bus],
        )
        off = Pulse.start(
            "off", service_config, engine=engine, clock=clock, scheduler=scheduler, event_sinks=[]
        )
        samples: dict[str, list[float]] = {"on": [], "off": []}
        try:
            for i in range(iterations):
                pair = [("on", on), ("off", off)] if i % 2 else [("off", off), ("on", on)]
                for name, ref in pair:
                    started = time.perf_counter()
                    ref.ask(Iterate(clock.monotonic()), timeout=ASK)
                    samples[name].append(time.perf_counter() - started)
                time.sleep(0.0005)  # let the breaker's 1 ms open period pass now and then
            transitions = on.ask(Ping(), timeout=ASK) and len(slack.requests)
        finally:
            on.stop(block=True, timeout=ASK)
            off.stop(block=True, timeout=ASK)
            scheduler.stop()
        with engine.connect() as conn:
            raised = conn.execute(sa.select(sa.func.count()).select_from(alert_outbox)).scalar()
    on99, off99 = percentile(samples["on"], 99) * 1e3, percentile(samples["off"], 99) * 1e3
    delta = on99 - off99
    print(
        f"iteration latency with a 5 s Slack: p99 {on99:.3f} ms with alerting, {off99:.3f} ms "
        f"without (+{delta:.3f} ms); {raised} alerts raised, {transitions} Slack requests begun"
    )
    return Result(
        benchmark=(
            f"service iteration p99 while Slack takes 5 s per request ({iterations} iterations, "
            f"{raised} alerts)"
        ),
        measured=f"p99 {on99:.3f} ms (p50 {percentile(samples['on'], 50) * 1e3:.3f} ms)",
        baseline=(
            f"alerting off: p99 {off99:.3f} ms (p50 {percentile(samples['off'], 50) * 1e3:.3f} ms)"
        ),
        ratio=on99 / off99,
        goal="<= +1 ms p99",
        met=delta <= 1.0,
    )


def storm(transitions: int = 1_000, services: int = 50, seconds: float = 10.0) -> Result:
    names = [f"svc{i:02d}" for i in range(services)]
    cycle = (("closed", "open"), ("open", "half_open"), ("half_open", "closed"))
    with (
        TemporaryDirectory() as folder,
        FakeSlack() as slack,
        alerting(
            slack.url,
            f"sqlite:///{Path(folder) / 's.db'}",
            group_wait_seconds=1.0,
            group_interval_seconds=5.0,
        ) as (bus, engine),
    ):
        started = time.monotonic()
        for i in range(transitions):
            service = names[i % services]
            frm, to = cycle[(i // services) % 3]
            bus.tell(BreakerTransition(service, frm, to, 5, "storm", time.time(), 30.0, 1))
            time.sleep(max(0.0, started + seconds * (i + 1) / transitions - time.monotonic()))

        def settled() -> bool:
            counts = Outbox(engine).counts()
            return counts.get("pending", 0) == 0 and counts["alerts_waiting"] == 0

        deadline = time.monotonic() + 120
        while not settled() and time.monotonic() < deadline:
            time.sleep(0.2)
        with engine.connect() as conn:
            represented = sum(
                line["count"]
                for (payload,) in conn.execute(
                    sa.select(alert_notifications.c.payload)
                    .join(
                        alert_deliveries,
                        alert_deliveries.c.notification_id == alert_notifications.c.notification_id,
                    )
                    .where(alert_deliveries.c.status == "delivered")
                )
                for line in payload["alerts"]
            )
        times = [r.at_monotonic for r in slack.delivered]
    messages = len(times)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    busiest = max((sum(1 for t in times if s <= t < s + 1.0) for s in times), default=0)
    print(
        f"storm: {transitions} transitions from {services} services in {seconds:.0f} s -> "
        f"{messages} Slack messages, {represented} transitions represented, shortest gap "
        f"{min(gaps, default=0):.2f} s, at most {busiest} in any second"
    )
    return Result(
        benchmark=(
            f"storm: {transitions:,} transitions from {services} services within {seconds:.0f} s"
        ),
        measured=(
            f"{messages} Slack messages, {represented:,} transitions represented, "
            f"shortest gap {min(gaps, default=0):.2f} s"
        ),
        baseline=f"the seed: one message per transition, {transitions:,} messages",
        ratio=messages / transitions,
        goal="all represented, <= ~1 msg/s, <= 60 messages",
        met=represented == transitions and messages <= 60 and busiest <= 1,
    )


def run() -> list[Result]:
    with production_logging():
        return [iteration_latency(), storm()]


if __name__ == "__main__":
    run()
