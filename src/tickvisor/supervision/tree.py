"""The supervision tree of ``tickvisor run``, built from a config.

::

    root (one_for_one)
    ├── alerts     Supervisor: one ChannelActor per configured channel, then
    │              the router (AlertActor: log channel, grouping, outbox)
    ├── feed       FeedActor (optional)
    └── services   Supervisor (strategy, intensity and backoff from config)
        ├── candles
        ├── depth
        └── sentiment    one child per enabled service

Services publish to an :class:`~tickvisor.eventbus.EventBus` and tell their
supervisor; the alerts actor subscribes to the bus each time it starts, so a
restarted alerts actor keeps receiving without anyone holding its old ref.

A reloaded service config reaches the services supervisor as
:class:`~tickvisor.messages.ReconfigureChild`; it rebuilds that child's spec
here, and the newest config of every service is kept for the case where the
services supervisor itself is restarted, so nothing comes back with the
config the tree was first built from.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pykka
from sqlalchemy import Engine

from tickvisor.actors.candles import CandleService
from tickvisor.actors.depth import DepthService
from tickvisor.actors.feed import FeedActor
from tickvisor.actors.incremental import IncrementalService
from tickvisor.actors.sentiment import SentimentService
from tickvisor.alerts.actor import AlertActor
from tickvisor.alerts.channel_actor import ChannelActor
from tickvisor.alerts.channels.base import Channel
from tickvisor.alerts.outbox import Outbox
from tickvisor.alerts.setup import channels_from_config
from tickvisor.clock import Clock, Scheduler
from tickvisor.config import ServiceConfig, TickvisorConfig
from tickvisor.eventbus import EventBus
from tickvisor.supervision.policy import Backoff, Intensity
from tickvisor.supervision.spec import BreakerPolicy, ChildSpec, RestartType
from tickvisor.supervision.strategy import ONE_FOR_ONE, strategy_named
from tickvisor.supervision.supervisor import Supervisor

#: Service name -> actor class, in start order.
SERVICE_TYPES: dict[str, type[IncrementalService]] = {
    "candles": CandleService,
    "depth": DepthService,
    "sentiment": SentimentService,
}

ROOT = "root"
ALERTS = "alerts"
ROUTER = "router"
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


class LatestServiceConfigs:
    """The newest config of each service, shared by the specs and the services supervisor.

    Written by the services supervisor when it adopts a reloaded config, read
    by the root when it (re)starts the services supervisor: two threads, so
    a lock, held only for the dict operation.
    """

    def __init__(self, configs: dict[str, ServiceConfig]) -> None:
        self._lock = threading.Lock()
        self._configs = dict(configs)

    def set(self, name: str, config: ServiceConfig) -> None:
        with self._lock:
            self._configs[name] = config

    def items(self) -> list[tuple[str, ServiceConfig]]:
        with self._lock:
            return list(self._configs.items())


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
    closing: threading.Event | None = None,
) -> pykka.ActorRef[Any]:
    """Start the whole tree and return the root supervisor's ref.

    Set ``closing`` before stopping the tree: alert channels then stop
    waiting (pacing, retry backoff) at once and leave the rest in the outbox.
    """
    bus = bus or EventBus()
    sup = config.supervisor
    intensity = Intensity(sup.max_restarts, sup.within_seconds)
    backoff = backoff_from_config(config)

    closing = closing or threading.Event()
    alert_channels = config.alerts.channels()

    def start_alerts(parent: pykka.ActorRef[Any], generation: int) -> pykka.ActorRef[Any]:
        return start_alerting(
            config,
            engine=engine,
            clock=clock,
            scheduler=scheduler,
            bus=bus,
            closing=closing,
            parent=parent,
            generation=generation,
        )

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

    latest = LatestServiceConfigs(enabled_services(config))

    def reconfigure_service(name: str, service_config: object) -> ChildSpec:
        """The services supervisor's spec builder: a reloaded config becomes a new spec."""
        actor_class = SERVICE_TYPES.get(name)
        if actor_class is None:
            raise ValueError(f"no service type named {name!r}")
        if not isinstance(service_config, actor_class.config_type):
            raise ValueError(
                f"service {name!r} needs a {actor_class.config_type.__name__}, "
                f"got {type(service_config).__name__}"
            )
        latest.set(name, service_config)
        return service_spec(name, service_config)

    def start_services(parent: pykka.ActorRef[Any], generation: int) -> pykka.ActorRef[Any]:
        specs = [service_spec(n, c) for n, c in latest.items()]
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
            reconfigure=reconfigure_service,
        )

    root_specs = [
        ChildSpec(
            name=ALERTS,
            factory=start_alerts,
            is_supervisor=True,
            shutdown_timeout=sup.shutdown_timeout * (len(alert_channels) + 2),
        )
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
                depth_snapshots=feed.depth_snapshots,
                sentiment_readings=feed.sentiment_readings,
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
    children = len(enabled_services(config)) + len(config.alerts.channels()) + 4
    return config.supervisor.shutdown_timeout * children


def start_alerting(
    config: TickvisorConfig,
    *,
    engine: Engine,
    clock: Clock,
    scheduler: Scheduler,
    bus: EventBus,
    closing: threading.Event,
    parent: pykka.ActorRef[Any] | None = None,
    generation: int = 1,
) -> pykka.ActorRef[Any]:
    """The alerts subtree: a supervisor over one ChannelActor per channel, then the router.

    Channels start first: the router hands them a previous run's pending
    deliveries as soon as it starts. The router subscribes to ``bus`` under
    ``alerts``; channel actors register in a registry of their own, so a
    restarted channel is found by name.
    """
    alerts_config = config.alerts
    sup = config.supervisor
    channel_refs = EventBus()  # channel name -> the channel actor's current ref
    outbox = Outbox(engine)

    def channel_spec(name: str, channel: Channel) -> ChildSpec:
        def start(_parent: pykka.ActorRef[Any], _generation: int) -> pykka.ActorRef[Any]:
            ref = ChannelActor.start(
                channel,
                outbox,
                clock=clock,
                delivery=alerts_config.delivery,
                closing=closing,
                on_disabled=lambda event: bus.tell_to(ALERTS, event),
            )
            channel_refs.subscribe(name, ref)
            return ref

        return ChildSpec(name=name, factory=start, shutdown_timeout=sup.shutdown_timeout)

    def start_router(_parent: pykka.ActorRef[Any], _generation: int) -> pykka.ActorRef[Any]:
        ref = AlertActor.start(engine, clock, scheduler, alerts_config, channel_refs)
        bus.subscribe(ALERTS, ref)
        return ref

    specs = [channel_spec(n, c) for n, c in channels_from_config(alerts_config).items()]
    specs.append(
        ChildSpec(name=ROUTER, factory=start_router, shutdown_timeout=sup.shutdown_timeout)
    )
    return Supervisor.start(
        ALERTS,
        specs,
        clock=clock,
        scheduler=scheduler,
        strategy=ONE_FOR_ONE,
        intensity=Intensity(sup.max_restarts, sup.within_seconds),
        backoff=backoff_from_config(config),
        check_interval=sup.check_interval_seconds,
        parent=parent,
        path=f"{ROOT}/{ALERTS}" if parent is not None else ALERTS,
        generation=generation,
        events=bus,
    )
