"""EventRecorder: every breaker and supervisor event into the ``events`` table.

It is an event sink like the alerts actor will be: services and supervisors
``tell`` it, so a slow or broken database never blocks them. A write that
fails is logged and dropped from the log only, never retried in a loop: the
structured log line already carries the same event.
"""

from __future__ import annotations

from typing import Any

import pykka
from sqlalchemy import Engine

from tickvisor.clock import Clock, now_ms
from tickvisor.logs import get_logger
from tickvisor.messages import BreakerTransition, ChildExited, Ping
from tickvisor.store.schema import events

log = get_logger(__name__)


class EventRecorder(pykka.ThreadingActor):
    """Persists :class:`BreakerTransition` and :class:`ChildExited` events."""

    def __init__(self, engine: Engine, clock: Clock) -> None:
        super().__init__()
        self.engine = engine
        self.clock = clock
        self.recorded = 0

    def on_receive(self, message: Any) -> Any:
        match message:
            case BreakerTransition():
                self._record("breaker.transition", message.service, message.as_dict())
            case ChildExited():
                payload = {
                    "child": message.child,
                    "generation": message.generation,
                    "error": message.error,
                    "error_type": message.error_type,
                }
                self._record("child.exited", message.child, payload)
            case Ping():
                return True
            case _:
                return self.recorded
        return None

    def _record(self, kind: str, service: str | None, payload: dict[str, Any]) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    events.insert().values(
                        ts_ms=now_ms(self.clock), kind=kind, service=service, payload=payload
                    )
                )
            self.recorded += 1
        except Exception as exc:
            log.warning("events.record_failed", kind=kind, error=f"{type(exc).__name__}: {exc}")
