"""Which changes of a reloaded config can take effect now, and how.

Pure data in, pure data out, so the rules are testable without a tree:

* a running service's interval, breaker, symbol source, iteration deadline,
  restart type and breaker policy: applied live (the service takes over the
  first four, its supervisor's child spec the others);
* a running service's job settings (timeframes, levels, batch sizes,
  thresholds...): the service is restarted with its new config; a fresh
  instance is what a process restart would give it, without stopping the
  rest of the process;
* a change to the contents of a service's symbols file: its cache is
  invalidated;
* everything else (database, feed, supervisor, alerts, admin, logging, a
  service added, removed, enabled or disabled): needs a process restart.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tickvisor.actors.base import LIVE_KEYS, SPEC_KEYS
from tickvisor.config import ServiceConfig, TickvisorConfig
from tickvisor.reload.diff import Change
from tickvisor.supervision.tree import enabled_services

__all__ = ["ReloadPlan", "ServiceUpdate", "plan_reload"]

SERVICES = "services"


@dataclass(frozen=True, slots=True)
class ServiceUpdate:
    """Hand ``config`` to the running service ``name``; ``restart`` when a job setting changed."""

    name: str
    config: ServiceConfig
    restart: bool
    paths: tuple[str, ...]


@dataclass(slots=True)
class ReloadPlan:
    updates: list[ServiceUpdate] = field(default_factory=list)
    #: Services whose symbols file changed on disk (and that are not restarted anyway).
    invalidate: list[str] = field(default_factory=list)
    needs_restart: list[str] = field(default_factory=list)


def plan_reload(
    old: TickvisorConfig,
    new: TickvisorConfig,
    changes: Iterable[Change],
    symbols_changed: Iterable[str] = (),
) -> ReloadPlan:
    """Sort ``changes`` (from ``old`` to ``new``) into what to apply, restart or report."""
    running = enabled_services(old).keys() & enabled_services(new).keys()
    plan = ReloadPlan()
    per_service: dict[str, list[Change]] = {}
    for change in changes:
        path = change.path
        if len(path) < 3 or path[0] != SERVICES or path[1] not in running or path[2] == "enabled":
            plan.needs_restart.append(change.dotted)
        else:
            per_service.setdefault(path[1], []).append(change)
    live = LIVE_KEYS | SPEC_KEYS
    for name, service_changes in per_service.items():
        plan.updates.append(
            ServiceUpdate(
                name=name,
                config=getattr(new.services, name),
                restart=any(c.path[2] not in live for c in service_changes),
                paths=tuple(c.dotted for c in service_changes),
            )
        )
    # A restart reads the file afresh anyway; an ApplyConfig replaces the cache
    # only when the config's symbol keys changed, so invalidate in every other case.
    restarting = {update.name for update in plan.updates if update.restart}
    plan.invalidate = [
        name for name in symbols_changed if name in running and name not in restarting
    ]
    return plan
