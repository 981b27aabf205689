"""AlertActor: every breaker and supervisor event becomes an alert, grouped and delivered.

Services and supervisors publish to the event bus and never wait: this
actor is subscribed there. For each event it

1. raises the alert on the log channel (``alert.raised``, with severity),
   which gets everything, always;
2. keeps the event in the ``events`` table and the alert in the outbox, in
   one transaction, before anything else happens to it;
3. adds it to its group (:mod:`tickvisor.alerts.grouping`), and when the
   group is due writes the notification and its deliveries (one
   transaction) and hands it to the channel actors chosen by the routes.

Channel actors deliver on their own threads. A periodic sweep hands back
deliveries whose retry is due (also those left by a previous run) and purges
old rows. On start, alerts that were waiting in a group go back into it.
"""

from __future__ import annotations

from typing import Any

import pykka
from sqlalchemy import Engine

from tickvisor.alerts.grouping import Flushed, Grouper, GroupingPolicy
from tickvisor.alerts.model import Alert, alert_from_event, stable_id
from tickvisor.alerts.notification import AlertLine
from tickvisor.alerts.outbox import Outbox
from tickvisor.alerts.routing import Router
from tickvisor.clock import Clock, Scheduler, Timer, now_ms
from tickvisor.config import AlertsConfig
from tickvisor.eventbus import EventBus
from tickvisor.logs import get_logger
from tickvisor.messages import (
    BreakerTransition,
    ChannelDisabled,
    ConfigRejected,
    DeliverNotifications,
    FlushAlerts,
    GetMetrics,
    Ping,
    SupervisorEvent,
)

log = get_logger("tickvisor.alerts")

_LEVELS = {"critical": 50, "warning": 30, "info": 20}


class _FlushDue:
    """To self: a group's wait is over."""


class _Sweep:
    """To self: hand back due retries, purge old rows."""


class AlertActor(pykka.ThreadingActor):
    """Turns events into alerts, groups them, and dispatches notifications to channels."""

    use_daemon_thread = True

    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        scheduler: Scheduler | None = None,
        config: AlertsConfig | None = None,
        channels: EventBus | None = None,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.clock = clock
        self.scheduler = scheduler
        self.config = config or AlertsConfig()
        self.channels = channels or EventBus()
        self.outbox = Outbox(engine)
        self.router = Router.from_config(self.config)
        self.grouper = Grouper(
            GroupingPolicy(
                group_by=tuple(self.config.group_by),
                group_wait=self.config.group_wait_seconds,
                group_interval=self.config.group_interval_seconds,
                repeat_interval=self.config.repeat_interval_seconds,
                flap_transitions=self.config.flap_transitions,
                flap_window=self.config.flap_window_seconds,
            )
        )
        self.available = self.config.channels()
        self.disabled: set[str] = set()
        self.recorded = 0
        self.raised = 0
        self.notified = 0
        self._flush_timer: Timer | None = None
        self._flush_at: float | None = None
        self._sweep_timer: Timer | None = None

    # --- lifecycle ------------------------------------------------------------------

    def on_start(self) -> None:
        now = self.clock.monotonic()
        try:
            for key, last in self.outbox.last_notifications().items():
                self.grouper.restore(key, last.service, last, now)
            waiting = self.outbox.pending_alerts()
        except Exception as exc:  # the database may be down: start anyway, log it
            log.error("alerts.recover_failed", error=f"{type(exc).__name__}: {exc}")
            waiting = []
        for alert in waiting:
            self.grouper.add(alert, now)
        if waiting:
            log.info("alerts.recovered", waiting=len(waiting))
        self._dispatch_due(everything=True)  # a previous run's leases no longer hold
        self._schedule_flush()
        if self.scheduler is not None:
            self._sweep_timer = self.scheduler.tell_every(
                self.config.delivery.sweep_interval_seconds, self.actor_ref, _Sweep
            )

    def on_stop(self) -> None:
        for timer in (self._flush_timer, self._sweep_timer):
            if timer is not None:
                timer.cancel()

    # --- messages ---------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        match message:
            case BreakerTransition() | SupervisorEvent() | ConfigRejected():
                alert = alert_from_event(message)
                if alert is not None:
                    self._accept(alert, message.as_dict())
            case ChannelDisabled():
                self._channel_disabled(message)
            case _FlushDue():
                self._flush_at = None
                self._flush(everything=False)
            case FlushAlerts():
                self._flush(everything=True)
                return self.metrics()
            case _Sweep():
                self._dispatch_due()
                self._purge()
            case GetMetrics():
                return self.metrics()
            case Ping():
                return True
            case _:
                log.warning("alerts.unknown_message", message_type=type(message).__name__)
        return None

    def metrics(self) -> dict[str, Any]:
        outbox: dict[str, Any]
        try:
            outbox = dict(self.outbox.counts())
        except Exception as exc:
            outbox = {"error": f"{type(exc).__name__}: {exc}"}
        return {
            "raised": self.raised,
            "recorded": self.recorded,
            "notifications": self.notified,
            "waiting_in_groups": self.grouper.pending_count(),
            "channels": self.available,
            "disabled_channels": sorted(self.disabled),
            "outbox": outbox,
        }

    # --- alerts ---------------------------------------------------------------------------

    def _accept(self, alert: Alert, payload: dict[str, Any]) -> None:
        self.raised += 1
        log.log(
            _LEVELS[alert.line.severity],
            "alert.raised",
            alert_id=alert.id,
            severity=alert.line.severity,
            kind=alert.line.kind,
            resolved=alert.is_breaker and alert.line.to_state == "closed",
            text=alert.line.text,
            **{k: v for k, v in payload.items() if k not in ("kind",)},
        )
        key = alert.group_key(self.grouper.policy.group_by)
        try:
            if self.outbox.record_alert(alert, key, now_ms(self.clock), event=payload):
                self.recorded += 1
        except Exception as exc:
            # Not durable, but not lost while this process lives: group it anyway.
            log.error("alerts.outbox_write_failed", alert_id=alert.id, error=str(exc))
        self.grouper.add(alert, self.clock.monotonic())
        self._schedule_flush()

    def _channel_disabled(self, message: ChannelDisabled) -> None:
        self.disabled.add(message.channel)
        line = AlertLine(
            id=stable_id("channel.disabled", message.channel, message.at),
            kind="channel.disabled",
            severity="warning",
            at=message.at,
            text=(
                f"alert channel {message.channel} was disabled: its endpoint is gone "
                f"({message.reason}); fix the configuration and restart"
            ),
        )
        alert = Alert(line, service=None, supervisor="alerts")
        self._accept(alert, {"channel": message.channel, "reason": message.reason})

    # --- grouping and dispatch ----------------------------------------------------------

    def _schedule_flush(self) -> None:
        due = self.grouper.next_due()
        if due is None or self.scheduler is None:
            return
        if self._flush_at is not None and self._flush_at <= due:
            return
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        self._flush_at = due
        delay = max(0.0, due - self.clock.monotonic())
        self._flush_timer = self.scheduler.tell_later(delay, self.actor_ref, _FlushDue())

    def _flush(self, *, everything: bool) -> None:
        for flushed in self.grouper.due(self.clock.monotonic(), everything=everything):
            self._notify(flushed)
        self._schedule_flush()

    def _notify(self, flushed: Flushed) -> None:
        notification = flushed.notification
        active = [c for c in self.available if c not in self.disabled]
        channels = self.router.channels_for(notification, active)
        try:
            self.outbox.record_notification(
                notification, flushed.alert_ids, channels, now_ms(self.clock), self._lease_ms()
            )
        except Exception as exc:
            log.error("alerts.outbox_write_failed", alert_id=notification.id, error=str(exc))
        self.notified += 1
        log.info(
            "alert.notified",
            alert_id=notification.id,
            group=notification.group_key,
            severity=notification.severity,
            kind=notification.kind,
            resolved=notification.resolved,
            alerts=notification.count,
            channels=channels,
        )
        for channel in channels:
            self.channels.tell_to(channel, DeliverNotifications((notification,)))

    def _lease_ms(self) -> int:
        """How long a dispatched delivery is left to its channel before it is handed out again."""
        return int((self.config.delivery.try_seconds + 60.0) * 1000)

    def _dispatch_due(self, *, everything: bool = False) -> None:
        """Hand due pending deliveries to their channels (retries, expired leases, a past run's)."""
        active = [c for c in self.available if c not in self.disabled]
        if not active:
            return
        try:
            due = self.outbox.claim_due(
                now_ms(self.clock), self._lease_ms(), active, everything=everything
            )
        except Exception as exc:
            log.error("alerts.outbox_read_failed", error=f"{type(exc).__name__}: {exc}")
            return
        by_channel: dict[str, list[Any]] = {}
        for delivery in due:
            by_channel.setdefault(delivery.channel, []).append(delivery)
        for channel, deliveries in by_channel.items():
            self.channels.tell_to(
                channel,
                DeliverNotifications(
                    tuple(d.notification for d in deliveries),
                    tuple(d.attempts for d in deliveries),
                    tuple(d.created_ms for d in deliveries),
                ),
            )

    def _purge(self) -> None:
        retention_ms = int(self.config.delivery.retention_seconds * 1000)
        try:
            purged = self.outbox.purge(now_ms(self.clock) - retention_ms)
        except Exception as exc:
            log.warning("alerts.purge_failed", error=f"{type(exc).__name__}: {exc}")
            return
        if purged:
            log.info("alerts.purged", notifications=purged)
