"""The supervision tree of ``tickvisor run``, built from a config.

::

    root (one_for_one)
    ├── events     EventRecorder (the alerts actor joins here later)
    ├── feed       FeedActor (optional)
    └── services   Supervisor
        └── candles ... one child per enabled service

Services get the services supervisor and the event recorder as event sinks,
which is the only way they talk to either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pykka
from sqlalchemy import Engine

from tickvisor.actors.base import ServiceActor
from tickvisor.actors.candles import CandleService
from tickvisor.actors.feed import FeedActor
from tickvisor.alerts.recorder import EventRecorder
from tickvisor.clock import Clock, Scheduler
from tickvisor.config import ServiceConfig, TickvisorConfig
from tickvisor.supervision.spec import ChildSpec
from tickvisor.supervision.supervisor import Supervisor

#: Service name -> actor class; later issues register depth and sentiment here.
SERVICE_TYPES: dict[str, type[ServiceActor]] = {"candles": CandleService}

ROOT = "root"
SERVICES = "services"


def enabled_services(config: TickvisorConfig) -> dict[str, ServiceConfig]:
    """The services the config turns on, in start order."""
    found: dict[str, ServiceConfig] = {}
    for name in SERVICE_TYPES:
        service_config = getattr(config.services, name, None)
        if service_config is not None and service_config.enabled:
            found[name] = service_config
    return found


def build_tree(
    config: TickvisorConfig,
    *,
    engine: Engine,
    clock: Clock,
    scheduler: Scheduler,
    on_escalate: Callable[[str], None] | None = None,
) -> pykka.ActorRef[Any]:
    """Start the whole tree and return the root supervisor's ref."""
    recorder_box: list[pykka.ActorRef[Any]] = []

    def start_recorder(_parent: pykka.ActorRef[Any], _generation: int) -> pykka.ActorRef[Any]:
        ref = EventRecorder.start(engine, clock)
        recorder_box[:] = [ref]
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
                event_sinks=[parent, *recorder_box],
                parent=parent,
                generation=generation,
            )

        return ChildSpec(
            name=name, factory=start, shutdown_timeout=config.supervisor.shutdown_timeout
        )

    def start_services(parent: pykka.ActorRef[Any], generation: int) -> pykka.ActorRef[Any]:
        specs = [service_spec(n, c) for n, c in enabled_services(config).items()]
        return Supervisor.start(
            SERVICES,
            specs,
            clock=clock,
            max_restarts=config.supervisor.max_restarts,
            within_seconds=config.supervisor.within_seconds,
            parent=parent,
            generation=generation,
        )

    root_specs = [ChildSpec(name="events", factory=start_recorder)]
    if config.feed.enabled:
        feed = config.feed

        def start_feed(_parent: pykka.ActorRef[Any], _generation: int) -> pykka.ActorRef[Any]:
            return FeedActor.start(
                engine,
                clock,
                scheduler,
                feed.symbols,
                interval_seconds=feed.interval_seconds,
                ticks_per_interval=feed.ticks_per_interval,
                seed=feed.seed,
            )

        root_specs.append(ChildSpec(name="feed", factory=start_feed))
    root_specs.append(
        ChildSpec(
            name=SERVICES,
            factory=start_services,
            is_supervisor=True,
            # It stops its children one after another, each within its own timeout.
            shutdown_timeout=config.supervisor.shutdown_timeout
            * (len(enabled_services(config)) + 1),
        )
    )
    return Supervisor.start(
        ROOT,
        root_specs,
        clock=clock,
        max_restarts=config.supervisor.max_restarts,
        within_seconds=config.supervisor.within_seconds,
        on_escalate=on_escalate,
    )
