"""EventBus: one place where events are published, whoever listens today.

A restarted actor is a new actor with a new ref, so a service that copied
the alerts actor's ref at start would keep telling a dead actor after the
alerts actor restarted. Publishers hold the bus instead; a listener's
factory re-subscribes the new ref under the same key, replacing the old.

The bus quacks like a pykka ref (it has ``tell``), so it can sit in any list
of event sinks.
"""

from __future__ import annotations

import threading
from typing import Any

import pykka

from tickvisor.logs import get_logger

log = get_logger(__name__)


class EventBus:
    """Thread-safe fan-out of events to subscribed actor refs, by subscription key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[str, pykka.ActorRef[Any]] = {}

    def subscribe(self, key: str, ref: pykka.ActorRef[Any]) -> None:
        """Deliver events to ``ref`` from now on, replacing whatever ``key`` had."""
        with self._lock:
            self._subscribers[key] = ref

    def unsubscribe(self, key: str) -> None:
        with self._lock:
            self._subscribers.pop(key, None)

    def tell(self, event: object) -> None:
        """Publish ``event`` to every live subscriber; never blocks, never raises."""
        with self._lock:
            targets = list(self._subscribers.items())
        for key, ref in targets:  # tell outside the lock: nothing calls out while holding it
            try:
                ref.tell(event)
            except pykka.ActorDeadError:
                log.debug("eventbus.subscriber_dead", subscriber=key)

    def tell_to(self, key: str, message: object) -> bool:
        """Deliver ``message`` to the one subscriber under ``key``; False if none is alive."""
        with self._lock:
            ref = self._subscribers.get(key)
        if ref is None:
            return False
        try:
            ref.tell(message)
        except pykka.ActorDeadError:
            return False
        return True

    def subscribers(self) -> list[str]:
        with self._lock:
            return sorted(self._subscribers)
