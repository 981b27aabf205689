"""The supervision tree of ``tickvisor run``, built from a config.

::

    root (one_for_one)
    ├── alerts     AlertActor (log channel; Slack, e-mail, webhooks join later)
    ├── feed       FeedActor (optional)
    └── services   Supervisor (strategy, intensity and backoff from config)
        └── candles ... one child per enabled service

Services publish to an :class:`~tickvisor.eventbus.EventBus` and tell their
supervisor; the alerts actor subscribes to the bus each time it starts, so a
restarted alerts actor keeps receiving without anyone holding its old ref.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pykka
from sqlalchemy import Engine

from tickvisor.actors.base import ServiceActor
from tickvisor.actors.candles import CandleService
from tickvisor.actors.feed import FeedActor
from tickvisor.alerts.actor import AlertActor
from tickvisor.clock import Clock, Scheduler
from tickvisor.config import ServiceConfig, TickvisorConfig
from tickvisor.eventbus import EventBus
from tickvisor.supervision.policy import Backoff, Intensity
from tickvisor.supervision.spec import BreakerPolicy, ChildSpec, RestartType
from tickvisor.supervision.strategy import ONE_FOR_ONE, strategy_named
from tickvisor.supervision.supervisor import Supervisor

#: Service name -> actor class; later issues register depth and sentiment here.
SERVICE_TYPES: dict[str, type[ServiceActor]] = {"candles": CandleService}

ROOT = "root"
ALERTS = "alerts"
FEED = "feed"
SERVICES = "services"


def enabled_services(config: TickvisorConfig) -> dict[str, ServiceConfig]:
    """The services the config turns on, in start order."""
    found: dict[str, ServiceConfig] = {}
    for name in SERVICE_TYPES:
        service_config = getattr(config.services, name, None)
        if service_config is not None and service_config.enabled:
            found[name] = service_config
    return found


def backoff_from_config(config: TickvisorConfig) -> Backoff:
    b = config.supervisor.backoff
    return Backoff(b.min_seconds, b.max_seconds, b.factor, b.jitter, b.reset_after_seconds)


def build_tree(
    config: TickvisorConfig,
    *,
    engine: Engine,
    clock: Clock,
    scheduler: Scheduler,
    on_escalate: Callable[[str], None] | None = None,
    bus: EventBus | None = None,
) -> pykka.ActorRef[Any]:
    """Start the whole tree and return the root supervisor's ref."""
    bus = bus or EventBus()
    sup = config.supervisor
    intensity = Intensity(sup.max_restarts, sup.within_seconds)
    backoff = backoff_from_config(config)

    def start_alerts(_parent: pykka.ActorRef[Any], _generation: int) -> pykka.ActorRef[Any]:
        ref = AlertActor.start(engine, clock)
        bus.subscribe(ALERTS, ref)
        return ref

    def service_spec(name: str, service_config: ServiceConfig) -> ChildSpec:
        actor_class = SERVICE_TYPES[name]

        def start(parent: pykka.ActorRef[Any], generation: int) -> pykka.ActorRef[Any]:
            return actor_class.start(
                name,
                service_config,
                engine=engine,
                clock=clock,
                scheduler=scheduler,
                event_sinks=[parent, bus],
                parent=parent,
                generation=generation,
            )

        return ChildSpec(
            name=name,
            factory=start,
            restart=RestartType(service_config.restart),
            on_breaker_open=BreakerPolicy(service_config.on_breaker_open),
            shutdown_timeout=sup.shutdown_timeout,
            hang_timeout=service_config.iteration_deadline_seconds,
        )

    def start_services(parent: pykka.ActorRef[Any], generation: int) -> pykka.ActorRef[Any]:
        specs = [service_spec(n, c) for n, c in enabled_services(config).items()]
        return Supervisor.start(
            SERVICES,
            specs,
            clock=clock,
            scheduler=scheduler,
            strategy=strategy_named(sup.strategy),
            intensity=intensity,
            backoff=backoff,
            check_interval=sup.check_interval_seconds,
            parent=parent,
            path=f"{ROOT}/{SERVICES}",
            generation=generation,
            events=bus,
        )

    root_specs = [
        ChildSpec(name=ALERTS, factory=start_alerts, shutdown_timeout=sup.shutdown_timeout)
    ]
    if config.feed.enabled:
        feed = config.feed

        def start_feed(parent: pykka.ActorRef[Any], generation: int) -> pykka.ActorRef[Any]:
            return FeedActor.start(
                engine,
                clock,
                scheduler,
                feed.symbols,
                interval_seconds=feed.interval_seconds,
                ticks_per_interval=feed.ticks_per_interval,
                seed=feed.seed,
            )

        root_specs.append(
            ChildSpec(name=FEED, factory=start_feed, shutdown_timeout=sup.shutdown_timeout)
        )
    root_specs.append(
        ChildSpec(
            name=SERVICES,
            factory=start_services,
            is_supervisor=True,
            # It stops its children one after another, each within its own timeout.
            shutdown_timeout=sup.shutdown_timeout * (len(enabled_services(config)) + 1),
        )
    )
    return Supervisor.start(
        ROOT,
        root_specs,
        clock=clock,
        scheduler=scheduler,
        strategy=ONE_FOR_ONE,
        intensity=intensity,
        backoff=backoff,
        check_interval=sup.check_interval_seconds,
        events=bus,
        on_escalate=on_escalate,
    )


def shutdown_budget(config: TickvisorConfig) -> float:
    """How long stopping the whole tree may take: every child's timeout, in sequence."""
    return config.supervisor.shutdown_timeout * (len(enabled_services(config)) + 3)
