"""Small waits shared by the actor tests; each is bounded, none sleeps on a timer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pykka

from tickvisor.messages import GetMetrics, SupervisorEvent

ASK = 10.0


def metrics(ref: pykka.ActorRef[Any]) -> dict[str, Any]:
    result: dict[str, Any] = ref.ask(GetMetrics(), timeout=ASK)
    return result


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` (which asks actors, the sync point) until true or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.005)


def wait_first_iteration(ref: pykka.ActorRef[Any]) -> None:
    """A service queues its first iteration in on_start, after start() returned.

    An ask sent before on_start ran is answered before that iteration, so a
    test that wants to see the first iteration's effects waits for it.
    """
    wait_for(lambda: metrics(ref)["iteration_count"] >= 1, "the first iteration")


class Collector(pykka.ThreadingActor):
    """Stands where the alerts actor stands: keeps every supervisor event (ask it "events")."""

    use_daemon_thread = True

    def __init__(self) -> None:
        super().__init__()
        self.events: list[SupervisorEvent] = []

    def on_receive(self, message: Any) -> Any:
        if message == "events":
            return list(self.events)
        if isinstance(message, SupervisorEvent):
            self.events.append(message)
        return None
