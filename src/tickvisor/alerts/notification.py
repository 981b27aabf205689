"""What a channel delivers, and how a delivery attempt fails.

The alert actor groups alerts into :class:`Notification` s; a channel turns
one or more of them into a Slack message, an e-mail or a webhook call. A
channel's ``send`` makes exactly one attempt and says how it failed through
the exception type, so retry policy lives in one place (``alerts.retry``)
and never inside a channel:

- :class:`TransientDeliveryError`: try again (5xx, 429, timeouts, dropped
  connections, SMTP 4xx); ``retry_after`` is the receiver's own hint.
- :class:`PermanentDeliveryError`: trying again cannot help (Slack's
  ``invalid_payload``, ``channel_not_found``, SMTP 5xx): dead-letter at once.
- :class:`EndpointGoneError`: the receiver says the endpoint is gone for good
  (a webhook's 410): the endpoint is disabled, and operators are told so on
  the other channels.

Error messages never carry a secret: a URL is named by its host only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["critical", "warning", "info"]

#: Severity order, most urgent first.
SEVERITIES: tuple[Severity, ...] = ("critical", "warning", "info")


@dataclass(frozen=True, slots=True)
class AlertLine:
    """One alert inside a notification (a transition or a supervisor decision)."""

    id: str
    kind: str  # breaker.transition, child.restarted, supervisor.escalated, ...
    severity: Severity
    at: float  # epoch seconds
    text: str
    from_state: str | None = None
    to_state: str | None = None
    failure_count: int | None = None
    #: Events this line stands for (a flapping line stands for many
    #: transitions; a reminder that something is still firing, none).
    count: int = 1


@dataclass(frozen=True, slots=True)
class Notification:
    """One message for a channel: a group's alerts since its last notification.

    ``id`` is stable across retries and restarts, and travels to the receiver
    (webhook-id header, e-mail Message-ID, Slack footer), so a receiver can
    drop the duplicates that at-least-once delivery may produce.
    """

    id: str
    group_key: str
    service: str | None
    severity: Severity
    #: The kind of the newest alert, or ``breaker.flapping`` for a flapping group.
    kind: str
    title: str
    text: str
    at: float  # epoch seconds of the newest alert
    resolved: bool = False
    from_state: str | None = None
    to_state: str | None = None
    failure_count: int | None = None
    #: Seconds until the breaker lets a trial call through, when it is open.
    time_until_half_open: float | None = None
    alerts: tuple[AlertLine, ...] = field(default_factory=tuple)

    @property
    def count(self) -> int:
        """How many events this notification represents (0 for a reminder)."""
        return sum(line.count for line in self.alerts)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Notification:
        lines = tuple(AlertLine(**line) for line in data.get("alerts", ()))
        return cls(**{**data, "alerts": lines})


class DeliveryError(Exception):
    """A delivery attempt failed; the subclass says whether to try again."""


class TransientDeliveryError(DeliveryError):
    """Worth retrying; ``retry_after`` is the receiver's hint in seconds, if it gave one."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """Retrying cannot help: dead-letter the notification on this channel at once."""


class EndpointGoneError(PermanentDeliveryError):
    """The receiver retired the endpoint (HTTP 410): disable the channel."""
