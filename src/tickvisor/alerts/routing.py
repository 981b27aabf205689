"""Which channels a notification goes to, from the config's routes.

Every matching route adds its channels (Alertmanager's ``continue: true``
everywhere, which is what small setups want: "critical to Slack and e-mail,
everything to the webhook"). With no routes, every configured channel gets
everything. The log channel is not routed: it gets every alert as it arrives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tickvisor.alerts.notification import Notification
from tickvisor.config import AlertsConfig


@dataclass(frozen=True, slots=True)
class Route:
    channels: tuple[str, ...]
    severities: frozenset[str] | None = None  # None: any severity
    services: frozenset[str] | None = None  # None: any service

    def matches(self, notification: Notification) -> bool:
        if self.severities is not None and notification.severity not in self.severities:
            return False
        return self.services is None or (notification.service or "") in self.services


@dataclass(frozen=True, slots=True)
class Router:
    routes: tuple[Route, ...] = ()

    def channels_for(self, notification: Notification, available: Sequence[str]) -> list[str]:
        if not self.routes:
            return list(available)
        wanted = {c for route in self.routes if route.matches(notification) for c in route.channels}
        return [channel for channel in available if channel in wanted]

    @classmethod
    def from_config(cls, config: AlertsConfig) -> Router:
        return cls(
            tuple(
                Route(
                    tuple(route.channels),
                    frozenset(route.severity) if route.severity is not None else None,
                    frozenset(route.service) if route.service is not None else None,
                )
                for route in config.routes
            )
        )
