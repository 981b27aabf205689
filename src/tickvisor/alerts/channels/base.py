"""The channel contract, and the few helpers every channel needs.

A channel makes exactly one delivery attempt per :meth:`Channel.send` and
reports the outcome through the exception type (see
:mod:`tickvisor.alerts.notification`); pacing, batching and retries belong to
the caller. The helpers here exist so that every channel names an endpoint the
same safe way (host only: a Slack webhook URL's path *is* its secret) and
reads ``Retry-After`` the same way.
"""

from __future__ import annotations

import email.utils
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

import requests

from tickvisor.alerts.notification import (
    DeliveryError,
    Notification,
    PermanentDeliveryError,
    TransientDeliveryError,
)

#: The marker appended wherever text had to be cut to fit a receiver's limits.
TRUNCATED = "… (truncated)"


@runtime_checkable
class Channel(Protocol):
    """A way to deliver notifications: Slack, e-mail, a signed webhook.

    ``send`` makes exactly ONE attempt, always bounded by a timeout. It returns
    when the receiver accepted the notifications, and otherwise raises
    :class:`~tickvisor.alerts.notification.TransientDeliveryError` (with the
    receiver's ``retry_after`` hint when it gave one),
    :class:`~tickvisor.alerts.notification.PermanentDeliveryError` or
    :class:`~tickvisor.alerts.notification.EndpointGoneError`. No exception
    message carries a secret.
    """

    #: "slack", "email" or "webhook": the ``channel`` key of log lines.
    name: str
    #: The least time between two sends to the same endpoint (Slack: 1 s).
    min_interval_seconds: float
    #: How many notifications one ``send`` may carry.
    max_batch: int

    def send(self, notifications: Sequence[Notification]) -> None:
        """Deliver ``notifications`` in one attempt, or raise a DeliveryError."""
        ...

    def describe(self) -> str:
        """A name for the endpoint that is safe to log, e.g. ``slack hooks.slack.com``."""
        ...


def host_of(url: str) -> str:
    """The host (and explicit port) of ``url``: all of a URL that may be logged.

    The path, query and user-info are dropped because any of them may be the
    secret (Slack's ``/services/T…/B…/XXXX``, a token in a query string).
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return "<invalid url>"
    if not host:
        return "<invalid url>"
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    return f"{host}:{port}" if port is not None else host


def require_http_url(url: str, what: str) -> None:
    """Reject a URL that requests could not post to, without echoing it back."""
    try:
        parts = urlsplit(url)
        has_host = bool(parts.hostname)
    except ValueError:
        has_host = False
        parts = None
    if parts is None or parts.scheme not in {"http", "https"} or not has_host:
        raise ValueError(f"{what} must be an http(s) URL with a host (value not shown: secret)")


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date).

    Returns None when there is no usable hint, and never a negative number:
    a date in the past means "now".
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending in the truncation marker."""
    if limit <= 0:
        return ""
    if len(text) <= limit:
        return text
    if limit <= len(TRUNCATED):
        return text[:limit]
    return text[: limit - len(TRUNCATED)].rstrip() + TRUNCATED


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every non-empty secret replaced by ``***``.

    Used on text a receiver sent back (an error page, an SMTP reply) before it
    goes into an exception message, in case the receiver echoed a secret.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def iso_utc(at: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds, e.g. ``2024-05-01T12:00:00.000Z``."""
    stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def human_seconds(seconds: float) -> str:
    """A short human duration for alert text: ``45 s``, ``2 min 5 s``, ``1 h 3 min``."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def severity_tag(notification: Notification) -> str:
    """``RESOLVED`` for a resolved notification, else the severity in capitals."""
    return "RESOLVED" if notification.resolved else notification.severity.upper()


#: requests errors that mean the configuration is wrong, so trying again cannot help.
_BAD_REQUEST_ERRORS: tuple[type[Exception], ...] = (
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidHeader,
    requests.exceptions.URLRequired,
)


def post_once(
    session: requests.Session,
    url: str,
    *,
    data: bytes,
    headers: Mapping[str, str],
    timeout: float,
    label: str,
) -> requests.Response:
    """POST once, never following a redirect; a failure to get any answer is classified.

    requests' own exception messages contain the full URL, so none of them is
    ever passed on, not even as ``__cause__`` (a logged traceback would print
    it, even from ``__context__``): the new error says what happened in words,
    with ``label`` (which names the host only) for where.
    """
    error: DeliveryError
    try:
        return session.post(
            url, data=data, headers=dict(headers), timeout=timeout, allow_redirects=False
        )
    except requests.Timeout:
        error = TransientDeliveryError(f"{label}: no answer within {timeout:g} s")
    except requests.ConnectionError as exc:
        reason = os_reason(exc) or "connection failed"
        error = TransientDeliveryError(f"{label}: cannot connect ({reason})")
    except _BAD_REQUEST_ERRORS as exc:
        error = PermanentDeliveryError(
            f"{label}: the endpoint URL is unusable ({type(exc).__name__})"
        )
    except requests.RequestException as exc:
        error = TransientDeliveryError(f"{label}: request failed ({type(exc).__name__})")
    # Raised outside the handler, so the error has no __context__ quoting the URL.
    raise error


def os_reason(exc: BaseException) -> str | None:
    """The operating system's words for the socket error behind ``exc``, if any.

    Walks the chain requests and urllib3 build (``args``, ``reason``,
    ``__cause__``, ``__context__``) for an :class:`OSError` with an errno, so
    a message can say "connection refused" without quoting urllib3's text.
    """
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo and len(seen) < 32:
        item = todo.pop(0)
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, OSError) and item.errno:
            return os.strerror(item.errno).lower()
        todo.extend(item.args)
        todo.extend([getattr(item, "reason", None), item.__cause__, item.__context__])
    return None


def is_transient_status(status: int) -> bool:
    """HTTP statuses that say "try again later": 408, 429 and every 5xx."""
    return status in (408, 429) or 500 <= status <= 599


def response_reason(response: requests.Response, secrets: Iterable[str | None] = ()) -> str:
    """The start of a response body, on one line, fit for an error message."""
    try:
        text = response.text
    except (requests.RequestException, UnicodeDecodeError, LookupError):
        return ""
    text = " ".join(scrub(text, secrets).split())
    return clip(text, 200)
