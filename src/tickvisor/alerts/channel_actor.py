"""ChannelActor: one actor per channel, so a slow or broken endpoint delays nobody else.

The alerts actor has already written every notification to the outbox; this
actor only delivers and records the outcome:

- one delivery is one *try*: the channel's ``send`` with tenacity retries
  (``alerts.retry``), bounded in attempts and in total time, honouring a
  receiver's Retry-After;
- a try that fails transiently leaves the delivery pending with a later
  ``next_attempt_ms``; the alerts actor's sweep hands it back then (also
  after a restart). After ``max_tries`` tries, or once it is older than
  ``max_age_seconds``, it is dead-lettered (``alert.dead_lettered``);
- a permanent failure dead-letters at once; a retired endpoint (410)
  disables the channel and tells the alerts actor, which alerts on the others;
- sends are paced (``min_interval_seconds``), and notifications that queued
  up meanwhile go out together, up to the channel's ``max_batch``: during a
  storm Slack gets one message a second carrying many notifications.

Waits (pacing, retry backoff) end early when ``closing`` is set, so shutdown
is never held up by a retry schedule; what was not delivered stays pending.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import pykka
import tenacity

from tickvisor import telemetry
from tickvisor.alerts.channels.base import Channel
from tickvisor.alerts.notification import (
    EndpointGoneError,
    Notification,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from tickvisor.alerts.outbox import Outbox
from tickvisor.alerts.retry import RetryPolicy
from tickvisor.clock import Clock, now_ms
from tickvisor.config import AlertDeliveryConfig
from tickvisor.logs import get_logger
from tickvisor.messages import ChannelDisabled, DeliverNotifications, GetMetrics, Ping

#: Ids of recently finished deliveries kept to drop a late duplicate dispatch.
_DONE_MEMORY = 10_000


class _Closing(Exception):
    """Shutdown began during a wait: stop trying, the outbox keeps the rest."""


class _SendNext:
    """To self: send the next batch from the queue."""


class ChannelActor(pykka.ThreadingActor):
    use_daemon_thread = True

    def __init__(
        self,
        channel: Channel,
        outbox: Outbox,
        *,
        clock: Clock,
        delivery: AlertDeliveryConfig,
        closing: threading.Event,
        on_disabled: Callable[[ChannelDisabled], None] | None = None,
    ) -> None:
        super().__init__()
        self.channel = channel
        self.outbox = outbox
        self.clock = clock
        self.delivery = delivery
        self.closing = closing
        self.on_disabled = on_disabled
        self.policy = RetryPolicy(
            max_attempts=delivery.attempts_per_try,
            max_seconds=delivery.try_seconds,
            retry_after_cap=delivery.retry_after_cap_seconds,
        )
        self.log = get_logger("tickvisor.alerts", channel=channel.name)
        self._queue: deque[tuple[Notification, int, int]] = deque()
        self._queued: set[str] = set()
        self._done: OrderedDict[str, None] = OrderedDict()
        self._send_pending = False
        self._next_send_at = 0.0
        self.disabled: str | None = None
        self.counters = {"messages": 0, "delivered": 0, "failed": 0, "dead_lettered": 0}
        self._sent_metric = telemetry.ALERTS_SENT.labels(channel=channel.name)
        self._failed_metric = telemetry.ALERTS_FAILED.labels(channel=channel.name)
        self._dead_metric = telemetry.ALERTS_DEAD_LETTERED.labels(channel=channel.name)

    def on_receive(self, message: Any) -> Any:
        match message:
            case DeliverNotifications():
                self._enqueue(message)
            case _SendNext():
                self._send_pending = False
                self._send_batch()
                self._send_soon()
            case GetMetrics():
                return self.metrics()
            case Ping():
                return True
        return None

    def metrics(self) -> dict[str, Any]:
        return {
            "channel": self.channel.name,
            "endpoint": self.channel.describe(),
            "queued": len(self._queue),
            "disabled": self.disabled,
            **self.counters,
        }

    # --- queueing ---------------------------------------------------------------------

    def _enqueue(self, message: DeliverNotifications) -> None:
        now = now_ms(self.clock)
        for index, notification in enumerate(message.notifications):
            if notification.id in self._queued or notification.id in self._done:
                continue  # already queued, or just finished: a late duplicate dispatch
            attempts = message.attempts[index] if index < len(message.attempts) else 0
            created = message.created_ms[index] if index < len(message.created_ms) else now
            self._queue.append((notification, attempts, created))
            self._queued.add(notification.id)
        self._send_soon()

    def _send_soon(self) -> None:
        """One _SendNext at the back of the inbox while anything is queued.

        Deliveries that arrive before it is handled join the same batch.
        """
        if self._queue and not self._send_pending:
            self._send_pending = True
            self.actor_ref.tell(_SendNext())

    def _take_batch(self) -> list[tuple[Notification, int, int]]:
        batch: list[tuple[Notification, int, int]] = []
        while self._queue and len(batch) < max(1, self.channel.max_batch):
            item = self._queue.popleft()
            self._queued.discard(item[0].id)
            batch.append(item)
        return batch

    # --- sending -------------------------------------------------------------------------

    def _send_batch(self) -> None:
        if self.disabled is not None or self.closing.is_set():
            return
        try:
            self._wait(self._next_send_at - self.clock.monotonic())
        except _Closing:
            return
        batch = self._take_batch()
        if not batch:
            return
        notifications = [item[0] for item in batch]
        ids = [n.id for n in notifications]
        try:
            self.policy.retrying(sleep=self._wait, before_sleep=self._retrying)(
                self.channel.send, notifications
            )
        except _Closing:
            return  # left pending in the outbox; the next start sends it
        except EndpointGoneError as exc:
            self._disable(str(exc), ids)
        except PermanentDeliveryError as exc:
            self._dead(ids, f"permanent: {exc}")
        except Exception as exc:  # TransientDeliveryError after its retries, or a bug
            self._failed(batch, exc)
        else:
            self.outbox.mark_delivered(ids, self.channel.name, now_ms(self.clock))
            self.counters["messages"] += 1
            self.counters["delivered"] += len(ids)
            self._sent_metric.inc(len(ids))
            for notification in notifications:
                self.log.info(
                    "alert.delivered",
                    alert_id=notification.id,
                    service=notification.service,
                    severity=notification.severity,
                    batch=len(ids),
                )
            self._remember(ids)
        finally:
            self._next_send_at = self.clock.monotonic() + self.channel.min_interval_seconds

    def _wait(self, seconds: float) -> None:
        if seconds > 0 and self.closing.wait(seconds):
            raise _Closing
        if self.closing.is_set():
            raise _Closing

    def _retrying(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        self.log.warning(
            "alert.retrying",
            attempt=state.attempt_number,
            wait_seconds=round(state.next_action.sleep, 3) if state.next_action else None,
            error=str(exc),
        )

    def _failed(self, batch: list[tuple[Notification, int, int]], exc: Exception) -> None:
        now = now_ms(self.clock)
        error = f"{type(exc).__name__}: {exc}"
        self.counters["failed"] += len(batch)
        self._failed_metric.inc(len(batch))
        for notification, attempts, created in batch:
            tries = attempts + 1
            too_old = now - created >= self.delivery.max_age_seconds * 1000
            if tries >= self.delivery.max_tries or too_old:
                why = "too old" if too_old else f"{tries} tries"
                self._dead([notification.id], f"gave up after {why}: {error}")
                continue
            hint = exc.retry_after if isinstance(exc, TransientDeliveryError) else None
            backoff = self.delivery.retry_interval_seconds * min(2 ** (tries - 1), 32)
            delay_ms = int(max(backoff, hint or 0.0) * 1000)
            self.outbox.mark_retry([notification.id], self.channel.name, error, now + delay_ms, now)
            self.log.warning(
                "alert.retry_scheduled",
                alert_id=notification.id,
                tries=tries,
                next_try_in_seconds=delay_ms / 1000,
                error=error,
            )

    def _dead(self, ids: list[str], reason: str) -> None:
        self.outbox.mark_dead(ids, self.channel.name, reason, now_ms(self.clock))
        self.counters["dead_lettered"] += len(ids)
        self._dead_metric.inc(len(ids))
        self._remember(ids)
        for alert_id in ids:
            self.log.error("alert.dead_lettered", alert_id=alert_id, reason=reason)

    def _disable(self, reason: str, ids: list[str]) -> None:
        self.disabled = reason
        self._dead(ids, f"endpoint gone: {reason}")
        dropped = self.outbox.disable_channel(self.channel.name, reason, now_ms(self.clock))
        self._queue.clear()
        self._queued.clear()
        self.log.error(
            "alert.channel_disabled",
            endpoint=self.channel.describe(),
            reason=reason,
            pending_disabled=dropped,
        )
        if self.on_disabled is not None:
            self.on_disabled(ChannelDisabled(self.channel.name, reason, self.clock.time()))

    def _remember(self, ids: list[str]) -> None:
        for alert_id in ids:
            self._done[alert_id] = None
        while len(self._done) > _DONE_MEMORY:
            self._done.popitem(last=False)
