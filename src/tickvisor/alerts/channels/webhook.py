"""Signed JSON webhooks, following Standard Webhooks.

Each notification is one POST whose ``webhook-id`` is the notification id
(stable across retries, so the receiver can drop duplicates), whose
``webhook-timestamp`` is the time of *this* attempt (so a retry is never
rejected as stale), and whose ``webhook-signature`` covers id, timestamp and
body (see :mod:`tickvisor.alerts.signing` for the secret's two forms).

A receiver answering 410 Gone has retired the endpoint: that raises
:class:`~tickvisor.alerts.notification.EndpointGoneError` so the endpoint
is disabled rather than retried forever.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import requests

from tickvisor.alerts.channels.base import (
    host_of,
    is_transient_status,
    parse_retry_after,
    post_once,
    require_http_url,
    response_reason,
)
from tickvisor.alerts.channels.base import iso_utc as _iso_utc
from tickvisor.alerts.notification import (
    EndpointGoneError,
    Notification,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from tickvisor.alerts.signing import secret_bytes, sign


def payload(notification: Notification) -> dict[str, Any]:
    """The JSON body of one webhook call.

    ``type`` is the notification's kind (``breaker.transition``,
    ``breaker.flapping``, ...); ``at`` is ISO 8601 UTC; ``alerts`` holds the
    alert lines as they are (their ``at`` in epoch seconds).
    """
    return {
        "id": notification.id,
        "type": notification.kind,
        "severity": notification.severity,
        "service": notification.service,
        "title": notification.title,
        "from_state": notification.from_state,
        "to_state": notification.to_state,
        "failure_count": notification.failure_count,
        "time_until_half_open": notification.time_until_half_open,
        "count": notification.count,
        "at": _iso_utc(notification.at),
        "text": notification.text,
        "resolved": notification.resolved,
        "alerts": [asdict(line) for line in notification.alerts],
    }


class WebhookChannel:
    """POSTs each notification, signed, to one URL."""

    name = "webhook"
    min_interval_seconds = 0.0
    max_batch = 1

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        timeout: float = 10.0,
        session: requests.Session | None = None,
        time: Callable[[], float] = time.time,
    ) -> None:
        require_http_url(url, "webhook URL")
        secret_bytes(secret)  # fail now, at configuration time, on a malformed secret
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._url = url
        self._secret = secret
        self._host = host_of(url)
        self._timeout = timeout
        self._session = session if session is not None else requests.Session()
        self._owns_session = session is None
        self._time = time

    def describe(self) -> str:
        return f"webhook {self._host}"

    def __repr__(self) -> str:
        return f"WebhookChannel({self._host!r})"

    def close(self) -> None:
        """Close the HTTP session if this channel created it."""
        if self._owns_session:
            self._session.close()

    def send(self, notifications: Sequence[Notification]) -> None:
        """One POST per notification (``max_batch`` is 1, so normally exactly one).

        Given more, they go in order and the first failure raises; the ones
        already accepted will be sent again on a retry, under the same
        ``webhook-id``, which is what the id is for.
        """
        for notification in notifications:
            self._post(notification)

    def _post(self, notification: Notification) -> None:
        body = json.dumps(payload(notification), ensure_ascii=False, separators=(",", ":"))
        data = body.encode("utf-8")
        timestamp = int(self._time())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": notification.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._secret, notification.id, timestamp, data),
        }
        label = self.describe()
        response = post_once(
            self._session, self._url, data=data, headers=headers, timeout=self._timeout, label=label
        )
        with response:
            status = response.status_code
            if 200 <= status <= 299:
                return
            reason = response_reason(response, secrets=[self._url, self._secret])
            said = f"HTTP {status} {reason}".rstrip()
            if status == 410:
                raise EndpointGoneError(f"{label}: {said} (the endpoint is gone)")
            if is_transient_status(status):
                retry_after = parse_retry_after(response.headers.get("Retry-After"), self._time())
                raise TransientDeliveryError(f"{label}: {said}", retry_after=retry_after)
            raise PermanentDeliveryError(f"{label}: {said}")
