"""Slack incoming webhooks: one message per send, one attachment per notification.

Why attachments rather than blocks: an attachment carries a colour bar, a
``fallback`` for notifications and a ``ts``, which is all an alert needs, and
every Slack client renders it. The webhook URL's path is the credential, so
nothing here ever names it: errors and :meth:`SlackChannel.describe` show the
host only, and requests' own exceptions (which quote the URL) are replaced.

Slack answers ``200 ok`` when it accepted the message, ``429`` with
``Retry-After`` when we go too fast (it allows about one message per second
per webhook, hence ``min_interval_seconds``), and a 4xx with a reason such as
``invalid_payload`` or ``channel_not_found`` when retrying cannot help.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import requests

from tickvisor.alerts.channels.base import (
    TRUNCATED,
    clip,
    host_of,
    human_seconds,
    is_transient_status,
    parse_retry_after,
    post_once,
    require_http_url,
    response_reason,
    severity_tag,
)
from tickvisor.alerts.notification import (
    EndpointGoneError,
    Notification,
    PermanentDeliveryError,
    Severity,
    TransientDeliveryError,
)

#: Slack truncates a message's text past this; we stay within it for the whole message.
MAX_MESSAGE_CHARS = 40_000
#: Slack rejects a message with more attachments than this.
MAX_ATTACHMENTS = 100
#: Longer attachment text is folded away by Slack clients and hard to read.
MAX_ATTACHMENT_TEXT = 3_000
_MAX_TITLE = 250
_MAX_FALLBACK = 300
_MAX_FIELD = 100
_MAX_SUMMARY = 1_000

SEVERITY_COLOR: dict[Severity, str] = {
    "critical": "#d00000",
    "warning": "#daa038",
    "info": "#2eb886",
}
RESOLVED_COLOR = "#2eb886"
SEVERITY_EMOJI: dict[Severity, str] = {
    "critical": ":rotating_light:",
    "warning": ":warning:",
    "info": ":information_source:",
}
RESOLVED_EMOJI = ":white_check_mark:"


def escape(text: str) -> str:
    """Escape Slack's control characters, so alert text cannot ping ``<!channel>``."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip_escaped(text: str, limit: int) -> str:
    """:func:`clip` that does not leave half an ``&amp;`` entity before the marker."""
    clipped = clip(text, limit)
    if clipped == text or not clipped.endswith(TRUNCATED):
        return clipped
    head = clipped[: -len(TRUNCATED)]
    amp = head.rfind("&", max(0, len(head) - 5))
    if amp != -1 and ";" not in head[amp:]:
        head = head[:amp]
    return head + TRUNCATED


def emoji_of(notification: Notification) -> str:
    return RESOLVED_EMOJI if notification.resolved else SEVERITY_EMOJI[notification.severity]


def color_of(notification: Notification) -> str:
    return RESOLVED_COLOR if notification.resolved else SEVERITY_COLOR[notification.severity]


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M:%SZ")


def _body_text(notification: Notification) -> str:
    """The text, then one bullet per alert line with its time (escaped for Slack).

    When the text is nothing but the lines (as the grouper writes it), only
    the bullets are shown, so nothing appears twice. A line's text already
    says how many events it stands for ("(x5)").
    """
    bullets = [f"• `{_clock(line.at)}` {escape(line.text)}" for line in notification.alerts]
    text_is_lines = bool(bullets) and all(
        line.text in notification.text for line in notification.alerts
    )
    parts = [] if text_is_lines or not notification.text else [escape(notification.text)]
    return "\n".join(parts + bullets)


def _fields(notification: Notification, limit: int) -> list[dict[str, Any]]:
    fields: list[tuple[str, str]] = []
    if notification.service:
        fields.append(("Service", notification.service))
    if notification.from_state and notification.to_state:
        fields.append(("Transition", f"{notification.from_state} → {notification.to_state}"))
    if notification.failure_count is not None:
        fields.append(("Failures", str(notification.failure_count)))
    if notification.time_until_half_open is not None and not notification.resolved:
        fields.append(("Time until half-open", human_seconds(notification.time_until_half_open)))
    if notification.count > 1:
        fields.append(("Events", str(notification.count)))
    return [
        {"title": title, "value": _clip_escaped(escape(value), limit), "short": True}
        for title, value in fields
    ]


def _text_chars(attachment: dict[str, Any]) -> int:
    """Characters of text an attachment shows (what Slack's limits are about)."""
    total = sum(len(attachment.get(key, "")) for key in ("title", "text", "fallback", "footer"))
    for field in attachment.get("fields", ()):
        total += len(field["title"]) + len(field["value"])
    return total


def build_attachment(notification: Notification, budget: int) -> dict[str, Any]:
    """One attachment showing at most ``budget`` characters of text in all."""
    tag = severity_tag(notification)
    attachment: dict[str, Any] = {
        "color": color_of(notification),
        "title": _clip_escaped(
            f"{emoji_of(notification)} [{tag}] {escape(notification.title)}",
            min(_MAX_TITLE, budget // 4),
        ),
        "fallback": _clip_escaped(
            f"[{tag}] {escape(notification.title)}", min(_MAX_FALLBACK, budget // 4)
        ),
        "fields": _fields(notification, min(_MAX_FIELD, budget // 20)),
        "footer": clip(f"tickvisor alert {notification.id}", max(0, budget // 8)),
        "ts": int(notification.at),
        "mrkdwn_in": ["text"],
    }
    room = budget - _text_chars(attachment)
    if room < 0:  # only with ~100 attachments: the fields go first
        attachment["fields"] = []
        room = budget - _text_chars(attachment)
    attachment["text"] = _clip_escaped(_body_text(notification), min(MAX_ATTACHMENT_TEXT, room))
    return attachment


def summary_text(notifications: Sequence[Notification]) -> str:
    """The message's top-level text: what a phone notification shows."""
    if len(notifications) == 1:
        only = notifications[0]
        text = f"{emoji_of(only)} [{severity_tag(only)}] {escape(only.title)}"
    else:
        titles = "; ".join(escape(n.title) for n in notifications)
        text = f"{len(notifications)} alerts: {titles}"
    return _clip_escaped(text, _MAX_SUMMARY)


def build_message(notifications: Sequence[Notification]) -> dict[str, Any]:
    """The JSON payload for ``notifications``, within Slack's limits.

    Past :data:`MAX_ATTACHMENTS` the last attachment says how many were left
    out; the text budget is shared evenly, so the whole message stays within
    :data:`MAX_MESSAGE_CHARS`.
    """
    text = summary_text(notifications)
    shown = list(notifications)
    left_out = 0
    if len(shown) > MAX_ATTACHMENTS:
        left_out = len(shown) - (MAX_ATTACHMENTS - 1)
        shown = shown[: MAX_ATTACHMENTS - 1]
    marker = f"{TRUNCATED}: {left_out} more notifications not shown" if left_out else ""
    budget = (MAX_MESSAGE_CHARS - len(text) - len(marker)) // len(shown)
    attachments = [build_attachment(n, budget) for n in shown]
    if left_out:
        attachments.append({"color": "#888888", "text": marker})
    return {"text": text, "attachments": attachments}


def message_chars(message: dict[str, Any]) -> int:
    """All the text a message shows, counted the way :func:`build_message` budgets it."""
    total = len(message.get("text", ""))
    for attachment in message.get("attachments", ()):
        total += _text_chars(attachment)
    return total


class SlackChannel:
    """Posts notifications to one Slack incoming webhook.

    ``max_batch`` is 20: at about one message per second, an alert storm
    still reaches the channel in seconds, while each message stays readable.
    A larger batch is still sent whole, within Slack's limits (see
    :func:`build_message`).
    """

    name = "slack"
    max_batch = 20

    def __init__(
        self,
        webhook_url: str,
        *,
        timeout: float = 10.0,
        session: requests.Session | None = None,
        min_interval_seconds: float = 1.0,
    ) -> None:
        require_http_url(webhook_url, "Slack webhook URL")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._url = webhook_url
        self._host = host_of(webhook_url)
        self._timeout = timeout
        self._session = session if session is not None else requests.Session()
        self._owns_session = session is None
        self.min_interval_seconds = min_interval_seconds

    def describe(self) -> str:
        return f"slack {self._host}"

    def __repr__(self) -> str:
        return f"SlackChannel({self._host!r})"

    def close(self) -> None:
        """Close the HTTP session if this channel created it."""
        if self._owns_session:
            self._session.close()

    def send(self, notifications: Sequence[Notification]) -> None:
        """Post one message carrying ``notifications`` (up to ``max_batch`` is the norm)."""
        if not notifications:
            return
        body = json.dumps(build_message(notifications), ensure_ascii=False).encode("utf-8")
        label = self.describe()
        response = post_once(
            self._session,
            self._url,
            data=body,
            headers={"Content-Type": "application/json; charset=utf-8"},
            timeout=self._timeout,
            label=label,
        )
        with response:
            self._check(response, label)

    def _check(self, response: requests.Response, label: str) -> None:
        status = response.status_code
        reason = response_reason(response, secrets=[self._url, _path_of(self._url)])
        said = f"HTTP {status} {reason}".rstrip()
        if status == 200 and reason == "ok":
            return
        if status == 200:
            raise PermanentDeliveryError(f"{label}: Slack answered {said!r} instead of 'ok'")
        if is_transient_status(status):
            retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
            raise TransientDeliveryError(f"{label}: {said}", retry_after=retry_after)
        if status == 410:
            # channel_is_archived: every later message would fail the same way.
            raise EndpointGoneError(f"{label}: {said} (the webhook's channel is gone)")
        raise PermanentDeliveryError(f"{label}: {said}")


def _path_of(url: str) -> str | None:
    """The secret part of a webhook URL, to scrub from anything a server echoes."""
    start = url.find("/", url.find("//") + 2)
    path = url[start:] if start != -1 else ""
    return path if len(path) > 1 else None
