"""AlertActor: every breaker and supervisor event becomes an alert (log channel only, for now).

Services and supervisors publish to the event bus, and this actor is
subscribed to it, so a slow or broken database never blocks them. Each event
is kept in the ``events`` table (the demo summary and operators read it) and
raised on the log channel as ``alert.raised`` with a severity; Slack, e-mail
and webhook channels join here in the alerting issue.

A write that fails is logged and dropped, never retried in a loop: the
structured log line already carries the same event.
"""

from __future__ import annotations

from typing import Any

import pykka
from sqlalchemy import Engine

from tickvisor.clock import Clock, now_ms
from tickvisor.logs import get_logger
from tickvisor.messages import BreakerTransition, ChildExited, Ping, SupervisorEvent
from tickvisor.store.schema import events

log = get_logger("tickvisor.alerts")

#: Breaker target state -> alert severity (a closed breaker resolves the alert).
BREAKER_SEVERITY = {
    "open": "critical",
    "forced_open": "critical",
    "half_open": "warning",
    "closed": "info",
    "disabled": "warning",
}
#: Supervisor event kind -> alert severity.
SUPERVISOR_SEVERITY = {
    "supervisor.escalated": "critical",
    "child.hung": "critical",
    "child.abandoned": "critical",
    "child.exited": "warning",
    "child.restarted": "warning",
    "child.paused": "warning",
    "child.resumed": "info",
}


class AlertActor(pykka.ThreadingActor):
    """Records every event and raises it on the log channel."""

    use_daemon_thread = True

    def __init__(self, engine: Engine, clock: Clock) -> None:
        super().__init__()
        self.engine = engine
        self.clock = clock
        self.recorded = 0

    def on_receive(self, message: Any) -> Any:
        match message:
            case BreakerTransition():
                severity = BREAKER_SEVERITY.get(message.to_state, "warning")
                self._raise(severity, "breaker.transition", message.service, message.as_dict())
            case SupervisorEvent():
                severity = SUPERVISOR_SEVERITY.get(message.kind, "warning")
                self._raise(severity, message.kind, message.child, message.as_dict())
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

    def _raise(
        self, severity: str, kind: str, service: str | None, payload: dict[str, Any]
    ) -> None:
        log.log(
            _LEVELS[severity],
            "alert.raised",
            severity=severity,
            kind=kind,
            service=service,
            resolved=kind == "breaker.transition" and payload.get("to_state") == "closed",
            **{k: v for k, v in payload.items() if k not in ("kind", "service")},
        )
        self._record(kind, service, payload)

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


_LEVELS = {"critical": 50, "warning": 30, "info": 20}
