"""The durable outbox: nothing the alert actor has accepted is lost to a crash.

An alert is written (``alert_outbox``, status ``pending``) as it arrives,
before anything else happens to it. When its group is flushed, the
notification, one delivery row per channel, and the alerts' move to
``notified`` are one transaction. A delivery row stays ``pending`` until its
channel delivered it (``delivered``), gave up on it (``dead``), or the
endpoint was retired (``disabled``). After a restart, pending alerts go back
into their groups and pending deliveries are sent again: at least once, and
a duplicate carries the same notification id.

Every write is idempotent: recording an alert twice, or marking a delivery
twice, changes nothing the second time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, func, select, update

from tickvisor.alerts.model import Alert
from tickvisor.alerts.notification import Notification
from tickvisor.store.schema import (
    alert_deliveries,
    alert_notifications,
    alert_outbox,
    events,
    upsert,
)

PENDING, NOTIFIED = "pending", "notified"
DELIVERED, DEAD, DISABLED = "delivered", "dead", "disabled"


@dataclass(frozen=True, slots=True)
class Delivery:
    """A notification still to be delivered on one channel."""

    notification: Notification
    channel: str
    attempts: int
    created_ms: int


class Outbox:
    """SQL access for the alert tables; every method is one short transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # --- alerts -------------------------------------------------------------------

    def record_alert(
        self, alert: Alert, group_key: str, now_ms: int, *, event: dict[str, Any] | None = None
    ) -> bool:
        """Keep the alert, and the ``event`` it came from in ``events``; one transaction.

        Returns False, and writes nothing, when the alert was already recorded.
        """
        row = {
            "alert_id": alert.id,
            "created_ms": now_ms,
            "severity": alert.line.severity,
            "service": alert.service,
            "group_key": group_key,
            "payload": alert.as_payload(),
            "status": PENDING,
            "updated_ms": now_ms,
        }
        with self.engine.begin() as conn:
            if not upsert(conn, alert_outbox, row, ["alert_id"], []):
                return False
            if event is not None:
                conn.execute(
                    events.insert().values(
                        ts_ms=now_ms, kind=alert.line.kind, service=alert.service, payload=event
                    )
                )
        return True

    def pending_alerts(self) -> list[Alert]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(alert_outbox.c.payload)
                .where(alert_outbox.c.status == PENDING)
                .order_by(alert_outbox.c.created_ms, alert_outbox.c.alert_id)
            ).all()
        return [Alert.from_payload(row.payload) for row in rows]

    # --- notifications -----------------------------------------------------------------

    def record_notification(
        self,
        notification: Notification,
        alert_ids: Sequence[str],
        channels: Sequence[str],
        now_ms: int,
        lease_ms: int = 0,
    ) -> None:
        """The notification, its deliveries and its alerts' new status: one transaction.

        The deliveries are handed to their channels at once, so they are
        leased: not handed out again by a sweep before ``lease_ms`` is up.
        """
        with self.engine.begin() as conn:
            upsert(
                conn,
                alert_notifications,
                {
                    "notification_id": notification.id,
                    "created_ms": now_ms,
                    "group_key": notification.group_key,
                    "payload": notification.as_dict(),
                },
                ["notification_id"],
                [],
            )
            if channels:
                upsert(
                    conn,
                    alert_deliveries,
                    [
                        {
                            "notification_id": notification.id,
                            "channel": channel,
                            "status": PENDING,
                            "attempts": 0,
                            "next_attempt_ms": now_ms + lease_ms,
                            "created_ms": now_ms,
                            "updated_ms": now_ms,
                        }
                        for channel in channels
                    ],
                    ["notification_id", "channel"],
                    [],
                )
            if alert_ids:
                conn.execute(
                    update(alert_outbox)
                    .where(alert_outbox.c.alert_id.in_(list(alert_ids)))
                    .values(status=NOTIFIED, notification_id=notification.id, updated_ms=now_ms)
                )

    def last_notifications(self) -> dict[str, Notification]:
        """The newest notification of every group (to restore group state after a restart)."""
        newest = (
            select(
                alert_notifications.c.group_key,
                func.max(alert_notifications.c.created_ms).label("created_ms"),
            )
            .group_by(alert_notifications.c.group_key)
            .subquery()
        )
        query = select(alert_notifications.c.group_key, alert_notifications.c.payload).join(
            newest,
            (newest.c.group_key == alert_notifications.c.group_key)
            & (newest.c.created_ms == alert_notifications.c.created_ms),
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return {row.group_key: Notification.from_dict(row.payload) for row in rows}

    # --- deliveries -----------------------------------------------------------------------

    def claim_due(
        self,
        now_ms: int,
        lease_ms: int,
        channels: Sequence[str] | None = None,
        *,
        everything: bool = False,
    ) -> list[Delivery]:
        """Pending deliveries whose next attempt is due, oldest first, leased for ``lease_ms``.

        ``everything``: every pending delivery, due or not (at start-up, when
        the leases a previous run took no longer mean anything).
        """
        conditions = [alert_deliveries.c.status == PENDING]
        if not everything:
            conditions.append(alert_deliveries.c.next_attempt_ms <= now_ms)
        if channels is not None:
            conditions.append(alert_deliveries.c.channel.in_(list(channels)))
        query = (
            select(
                alert_deliveries.c.notification_id,
                alert_deliveries.c.channel,
                alert_deliveries.c.attempts,
                alert_deliveries.c.created_ms,
                alert_notifications.c.payload,
            )
            .join(
                alert_notifications,
                alert_notifications.c.notification_id == alert_deliveries.c.notification_id,
            )
            .where(*conditions)
            .order_by(alert_deliveries.c.created_ms, alert_deliveries.c.notification_id)
        )
        with self.engine.begin() as conn:
            rows = conn.execute(query).all()
            for channel in {r.channel for r in rows}:
                ids = [r.notification_id for r in rows if r.channel == channel]
                for start in range(0, len(ids), 500):
                    conn.execute(
                        update(alert_deliveries)
                        .where(
                            alert_deliveries.c.channel == channel,
                            alert_deliveries.c.notification_id.in_(ids[start : start + 500]),
                        )
                        .values(next_attempt_ms=now_ms + lease_ms)
                    )
        return [
            Delivery(Notification.from_dict(r.payload), r.channel, r.attempts, r.created_ms)
            for r in rows
        ]

    def mark_delivered(self, notification_ids: Sequence[str], channel: str, now_ms: int) -> None:
        self._set(notification_ids, channel, now_ms, status=DELIVERED, error=None)

    def mark_retry(
        self, notification_ids: Sequence[str], channel: str, error: str, next_ms: int, now_ms: int
    ) -> None:
        self._set(
            notification_ids,
            channel,
            now_ms,
            status=PENDING,
            error=error,
            next_attempt_ms=next_ms,
        )

    def mark_dead(
        self, notification_ids: Sequence[str], channel: str, error: str, now_ms: int
    ) -> None:
        self._set(notification_ids, channel, now_ms, status=DEAD, error=error)

    def disable_channel(self, channel: str, reason: str, now_ms: int) -> int:
        """Every pending delivery of a retired endpoint: ``disabled``. Returns how many."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(alert_deliveries)
                .where(alert_deliveries.c.channel == channel, alert_deliveries.c.status == PENDING)
                .values(status=DISABLED, last_error=reason[:500], updated_ms=now_ms)
            )
        return int(result.rowcount or 0)

    def _set(
        self,
        notification_ids: Sequence[str],
        channel: str,
        now_ms: int,
        *,
        status: str,
        error: str | None,
        **extra: Any,
    ) -> None:
        if not notification_ids:
            return
        values: dict[str, Any] = {
            "status": status,
            "updated_ms": now_ms,
            "attempts": alert_deliveries.c.attempts + 1,  # every mark ends one try
            **extra,
        }
        if error is not None:
            values["last_error"] = error[:500]
        with self.engine.begin() as conn:
            conn.execute(
                update(alert_deliveries)
                .where(
                    alert_deliveries.c.notification_id.in_(list(notification_ids)),
                    alert_deliveries.c.channel == channel,
                    alert_deliveries.c.status == PENDING,  # a second mark changes nothing
                )
                .values(**values)
            )

    # --- housekeeping ---------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Deliveries by status, and alerts still waiting in a group."""
        with self.engine.connect() as conn:
            by_status: dict[str, int] = dict(
                conn.execute(
                    select(alert_deliveries.c.status, func.count()).group_by(
                        alert_deliveries.c.status
                    )
                ).all()
            )
            waiting = conn.execute(
                select(func.count()).where(alert_outbox.c.status == PENDING)
            ).scalar_one()
        return {**{k: int(v) for k, v in by_status.items()}, "alerts_waiting": int(waiting)}

    def purge(self, before_ms: int) -> int:
        """Drop notifications older than ``before_ms`` with nothing left pending; returns how many.

        Delivered, dead-lettered and disabled rows alike: the log lines and
        the ``events`` table keep the history.
        """
        still_pending = select(alert_deliveries.c.notification_id).where(
            alert_deliveries.c.status == PENDING
        )
        old = select(alert_notifications.c.notification_id).where(
            alert_notifications.c.created_ms < before_ms,
            alert_notifications.c.notification_id.not_in(still_pending),
        )
        with self.engine.begin() as conn:
            ids = list(conn.execute(old).scalars())
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                conn.execute(
                    delete(alert_deliveries).where(alert_deliveries.c.notification_id.in_(chunk))
                )
                conn.execute(delete(alert_outbox).where(alert_outbox.c.notification_id.in_(chunk)))
                conn.execute(
                    delete(alert_notifications).where(
                        alert_notifications.c.notification_id.in_(chunk)
                    )
                )
        return len(ids)
