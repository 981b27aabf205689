"""From events to alerts: a stable id, a severity, a text, and what to group by.

An alert's id is a hash of the event it came from, so the same event
recorded twice (a retried write, a replay after a restart) is one alert.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

from tickvisor.alerts.notification import AlertLine, Severity
from tickvisor.messages import BreakerTransition, ConfigRejected, SupervisorEvent

#: Breaker target state -> severity; a close resolves what the open raised.
BREAKER_SEVERITY: dict[str, Severity] = {
    "open": "critical",
    "forced_open": "critical",
    "half_open": "warning",
    "closed": "info",
    "disabled": "warning",
}
#: Supervisor decision -> severity.
SUPERVISOR_SEVERITY: dict[str, Severity] = {
    "supervisor.escalated": "critical",
    "child.hung": "critical",
    "child.abandoned": "critical",
    "child.exited": "warning",
    "child.restarted": "warning",
    "child.paused": "warning",
    "child.resumed": "info",
    "channel.disabled": "warning",
}
#: A rejected reload: nothing is broken yet (the old config runs on), but the
#: file on disk would not start the process again, so someone must look.
CONFIG_REJECTED_SEVERITY: Severity = "warning"
#: Problems shown in the alert text; the log line and the events row keep them all.
CONFIG_PROBLEMS_SHOWN = 3
#: Breaker states in which something is wrong (an alert is "firing").
FIRING_STATES = frozenset({"open", "forced_open", "half_open"})
#: Keys an alert can be grouped by.
GROUP_KEYS = ("service", "kind", "severity", "supervisor")


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert: the line channels show, plus what routing and grouping need."""

    line: AlertLine
    service: str | None
    supervisor: str | None = None
    time_until_half_open: float | None = None

    @property
    def id(self) -> str:
        return self.line.id

    @property
    def is_breaker(self) -> bool:
        return self.line.kind == "breaker.transition"

    def group_key(self, group_by: tuple[str, ...]) -> str:
        """``service=candles`` (or several ``k=v`` joined by ``,``); one group per value."""
        values = {
            "service": self.service or "-",
            "kind": self.line.kind,
            "severity": self.line.severity,
            "supervisor": self.supervisor or "-",
        }
        return ",".join(f"{key}={values[key]}" for key in group_by) or "all"

    def as_payload(self) -> dict[str, Any]:
        return {
            "line": asdict(self.line),
            "service": self.service,
            "supervisor": self.supervisor,
            "time_until_half_open": self.time_until_half_open,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Alert:
        return cls(
            line=AlertLine(**payload["line"]),
            service=payload.get("service"),
            supervisor=payload.get("supervisor"),
            time_until_half_open=payload.get("time_until_half_open"),
        )


def stable_id(*parts: object) -> str:
    """A short hex digest of ``parts``: the same inputs give the same id, anywhere."""
    digest = hashlib.sha256("\x1f".join(repr(p) for p in parts).encode())
    return digest.hexdigest()[:32]


def alert_from_breaker(event: BreakerTransition) -> Alert:
    severity = BREAKER_SEVERITY.get(event.to_state, "warning")
    text = f"{event.service}: breaker {event.from_state} -> {event.to_state}"
    if event.to_state in ("open", "forced_open"):
        text += f" after {event.failure_count} failures"
    if event.reason:
        text += f" ({event.reason})"
    line = AlertLine(
        id=stable_id(
            "breaker",
            event.service,
            event.generation,
            event.from_state,
            event.to_state,
            event.at,
            event.reason,
        ),
        kind="breaker.transition",
        severity=severity,
        at=event.at,
        text=text,
        from_state=event.from_state,
        to_state=event.to_state,
        failure_count=event.failure_count,
    )
    return Alert(line, event.service, time_until_half_open=event.retry_in_seconds)


def alert_from_supervisor(event: SupervisorEvent) -> Alert:
    severity = SUPERVISOR_SEVERITY.get(event.kind, "warning")
    if event.kind == "supervisor.escalated":
        text = f"supervisor {event.supervisor} gave up: {event.reason}"
    else:
        verb = event.kind.removeprefix("child.")
        text = f"{event.child}: {verb} (generation {event.generation}): {event.reason}"
    line = AlertLine(
        id=stable_id(
            "supervisor",
            event.kind,
            event.supervisor,
            event.child,
            event.generation,
            event.at,
            event.reason,
        ),
        kind=event.kind,
        severity=severity,
        at=event.at,
        text=text,
    )
    return Alert(line, event.child, supervisor=event.supervisor)


def alert_from_config_rejected(event: ConfigRejected) -> Alert:
    problems = event.error.splitlines() or ["invalid"]
    shown = "; ".join(problems[:CONFIG_PROBLEMS_SHOWN])
    text = f"config reload rejected, the running config stays: {shown}"
    if len(problems) > CONFIG_PROBLEMS_SHOWN:
        text += f" (and {len(problems) - CONFIG_PROBLEMS_SHOWN} more)"
    line = AlertLine(
        id=stable_id("config.rejected", event.file, event.error, event.at),
        kind="config.rejected",
        severity=CONFIG_REJECTED_SEVERITY,
        at=event.at,
        text=text,
    )
    return Alert(line, service=None, supervisor=None)


def alert_from_event(event: object) -> Alert | None:
    """The alert for a breaker, supervisor or config event; None for anything else."""
    if isinstance(event, BreakerTransition):
        return alert_from_breaker(event)
    if isinstance(event, SupervisorEvent):
        return alert_from_supervisor(event)
    if isinstance(event, ConfigRejected):
        return alert_from_config_rejected(event)
    return None
