"""Grouping and de-duplication of alerts, Alertmanager in small.

Alerts with the same group key (by default: the same service) are held and
sent together:

- the first alert of a new group waits ``group_wait`` for its companions
  (a breaker that opens usually brings a restart or a pause with it);
- once a group has been notified, alerts that come later are sent together
  at most every ``group_interval``;
- a group still firing (its breaker open) with nothing new is reminded of
  every ``repeat_interval``;
- a breaker that opened ``flap_transitions`` times within ``flap_window`` is
  **flapping**: its transitions become one line, not pairs of open/closed;
- the close of a breaker whose open was notified is a **resolved**
  notification.

Within one notification, repeated alerts of the same kind and state become
one line with a count. Every alert is represented in exactly one
notification: ``sum(line.count)`` over all notifications equals the number
of alerts added. The grouper is pure logic on an injected monotonic time, so
the alert actor persists what it decides and tests drive it on a fake clock.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from uuid import uuid4

from tickvisor.alerts.model import FIRING_STATES, Alert, stable_id
from tickvisor.alerts.notification import SEVERITIES, AlertLine, Notification, Severity


@dataclass(frozen=True, slots=True)
class GroupingPolicy:
    group_by: tuple[str, ...] = ("service",)
    group_wait: float = 30.0
    group_interval: float = 300.0
    repeat_interval: float = 14_400.0
    #: Opens within ``flap_window`` seconds that make a breaker "flapping".
    flap_transitions: int = 3
    flap_window: float = 600.0

    def __post_init__(self) -> None:
        for name in ("group_wait", "group_interval", "repeat_interval", "flap_window"):
            if getattr(self, name) < 0:
                raise ValueError(f"grouping {name} must be >= 0, got {getattr(self, name)}")
        if self.flap_transitions < 2:
            raise ValueError(f"flap_transitions must be >= 2, got {self.flap_transitions}")


@dataclass(frozen=True, slots=True)
class Flushed:
    """A notification and the ids of the alerts it represents."""

    notification: Notification
    alert_ids: tuple[str, ...]


@dataclass
class _Group:
    key: str
    service: str | None
    pending: list[Alert] = field(default_factory=list)
    first_pending_at: float = 0.0
    last_flush_at: float | None = None
    #: The breaker state as of the last alert seen, and whether the last
    #: notification left the group firing (its close is then "resolved").
    breaker_state: str | None = None
    notified_firing: bool = False
    time_until_half_open: float | None = None
    opens: deque[float] = field(default_factory=deque)

    def due_at(self, policy: GroupingPolicy) -> float | None:
        if self.pending:
            if self.last_flush_at is None:
                return self.first_pending_at + policy.group_wait
            return max(self.first_pending_at, self.last_flush_at + policy.group_interval)
        if self.notified_firing and self.last_flush_at is not None:
            return self.last_flush_at + policy.repeat_interval
        return None


class Grouper:
    """Holds alerts by group and hands out notifications when they are due."""

    def __init__(self, policy: GroupingPolicy, memory: int = 50_000) -> None:
        self.policy = policy
        self._groups: dict[str, _Group] = {}
        #: Ids seen lately, pending or already sent: the same event twice is one alert.
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._memory = memory

    def add(self, alert: Alert, now: float) -> None:
        if alert.id in self._seen:
            return
        self._seen[alert.id] = None
        while len(self._seen) > self._memory:
            self._seen.popitem(last=False)
        key = alert.group_key(self.policy.group_by)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(key, alert.service)
        if not group.pending:
            group.first_pending_at = now
        group.pending.append(alert)
        if alert.is_breaker and alert.line.to_state == "open":
            group.opens.append(now)

    def restore(self, key: str, service: str | None, last: Notification, now: float) -> None:
        """After a restart: remember what the group's last notification said.

        So a breaker that was notified open and closes after the restart still
        gets its resolved notification, and reminders keep their pace.
        """
        group = self._groups.setdefault(key, _Group(key, service))
        group.breaker_state = last.to_state
        group.notified_firing = last.to_state in FIRING_STATES and not last.resolved
        group.last_flush_at = now

    def next_due(self) -> float | None:
        times = [t for g in self._groups.values() if (t := g.due_at(self.policy)) is not None]
        return min(times, default=None)

    def pending_count(self) -> int:
        return sum(len(g.pending) for g in self._groups.values())

    def due(self, now: float, *, everything: bool = False) -> list[Flushed]:
        """Every notification due at ``now`` (with ``everything``: every waiting group)."""
        out: list[Flushed] = []
        for key in list(self._groups):
            group = self._groups[key]
            due_at = group.due_at(self.policy)
            if due_at is None or (due_at > now and not (everything and group.pending)):
                continue
            if group.pending:
                ids = tuple(a.id for a in group.pending)
                out.append(Flushed(self._flush(group, now), ids))
            else:
                out.append(Flushed(self._reminder(group, now), ()))
            if not group.pending and not group.notified_firing:
                del self._groups[key]  # resolved and quiet: a new alert starts afresh
        return out

    # --- building notifications ---------------------------------------------------

    def _flush(self, group: _Group, now: float) -> Notification:
        alerts, group.pending = group.pending, []
        while group.opens and now - group.opens[0] > self.policy.flap_window:
            group.opens.popleft()
        flapping = len(group.opens) >= self.policy.flap_transitions
        breaker = [a for a in alerts if a.is_breaker]
        was_firing = group.notified_firing
        if breaker:
            group.breaker_state = breaker[-1].line.to_state
            group.time_until_half_open = breaker[-1].time_until_half_open
        firing = group.breaker_state in FIRING_STATES
        opened_here = any(a.line.to_state in FIRING_STATES for a in breaker)
        resolved = bool(breaker) and not firing and (was_firing or opened_here)

        other_lines = _merged(a.line for a in alerts if not a.is_breaker)
        lines: list[AlertLine] = []
        if flapping and breaker:
            lines.append(self._flapping_line(group, breaker))
        else:
            lines.extend(_merged(a.line for a in breaker))
        lines.extend(other_lines)

        severities: list[Severity] = [line.severity for line in other_lines]
        if flapping and breaker:
            severities.append("critical")
        elif firing and breaker:
            severities.append(breaker[-1].line.severity)
        severity = _most_urgent(severities) if severities else "info"

        newest = max(alerts, key=lambda a: a.line.at)
        last_breaker = breaker[-1].line if breaker else None
        group.last_flush_at = now
        group.notified_firing = firing and (was_firing or opened_here)
        if breaker:
            kind = "breaker.flapping" if flapping else "breaker.transition"
        else:
            kind = newest.line.kind
        title = _title(group, severity, kind, last_breaker, resolved)
        return Notification(
            id=stable_id("notification", *sorted(a.id for a in alerts)),
            group_key=group.key,
            service=group.service,
            severity=severity,
            kind=kind,
            title=title,
            text="\n".join(line.text for line in lines),
            at=newest.line.at,
            resolved=resolved,
            from_state=last_breaker.from_state if last_breaker else None,
            to_state=last_breaker.to_state if last_breaker else None,
            failure_count=last_breaker.failure_count if last_breaker else None,
            time_until_half_open=group.time_until_half_open if firing else None,
            alerts=tuple(lines),
        )

    def _flapping_line(self, group: _Group, breaker: list[Alert]) -> AlertLine:
        opens = sum(1 for a in breaker if a.line.to_state == "open")
        last = breaker[-1].line
        window = _seconds(self.policy.flap_window)
        return AlertLine(
            id=stable_id("flapping", *(a.id for a in breaker)),
            kind="breaker.flapping",
            severity="critical",
            at=last.at,
            text=(
                f"{group.service}: breaker flapping: opened {len(group.opens)} times in "
                f"{window}; {len(breaker)} transitions since the last notice ({opens} opens), "
                f"now {last.to_state}"
            ),
            from_state=last.from_state,
            to_state=last.to_state,
            failure_count=last.failure_count,
            count=len(breaker),
        )

    def _reminder(self, group: _Group, now: float) -> Notification:
        group.last_flush_at = now
        state = group.breaker_state or "firing"
        text = f"{group.service}: breaker still {state}"
        line = AlertLine(
            id=uuid4().hex, kind="alert.reminder", severity="warning", at=now, text=text, count=0
        )
        return Notification(
            id=uuid4().hex,
            group_key=group.key,
            service=group.service,
            severity="warning",
            kind="alert.reminder",
            title=f"{group.service}: breaker still {state}",
            text=text,
            at=now,
            to_state=group.breaker_state,
            alerts=(line,),
        )


def _merged(lines: Iterable[AlertLine]) -> list[AlertLine]:
    """Lines of the same kind and target state become one, with a count (de-duplication)."""
    merged: dict[tuple[str, str | None], AlertLine] = {}
    for line in lines:
        key = (line.kind, line.to_state)
        seen = merged.get(key)
        merged[key] = (
            line
            if seen is None
            else replace(line, id=seen.id, at=max(seen.at, line.at), count=seen.count + line.count)
        )
    return [
        replace(line, text=f"{line.text} (x{line.count})") if line.count > 1 else line
        for line in merged.values()
    ]


def _most_urgent(severities: Iterable[Severity]) -> Severity:
    return min(severities, key=SEVERITIES.index)


def _seconds(value: float) -> str:
    return f"{value / 60:g} min" if value >= 120 else f"{value:g} s"


def _title(
    group: _Group, severity: Severity, kind: str, breaker: AlertLine | None, resolved: bool
) -> str:
    """A short headline; channels put the severity tag (or RESOLVED) in front themselves."""
    who = group.service or group.key
    if resolved:
        return f"{who}: breaker closed"
    if kind == "breaker.flapping":
        return f"{who}: breaker flapping"
    if breaker is not None:
        return f"{who}: breaker {breaker.to_state}"
    return f"{who}: {kind}"
