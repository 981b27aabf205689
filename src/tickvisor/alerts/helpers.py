"""The seed's alert helpers, kept by name, now on top of the channels.

Two kinds, for two kinds of caller:

- ``send_slack_alert`` / ``send_email_alert`` / ``send_webhook_alert`` block
  their caller through the retries (bounded by the :class:`RetryPolicy`) and
  return whether the alert was delivered. For scripts and one-off jobs.
- ``create_slack_notifier`` / ``create_email_notifier`` return callbacks for
  a circuit breaker (``on_open=notifier``). The seed sent from inside the
  callback, so a slow Slack stalled the very service whose breaker had just
  opened; these hand the send to one small shared background thread with a
  bounded queue, and when that queue is full they drop the alert with a log
  line rather than block or grow without bound.

None of this goes through the alert actor's outbox: a process that dies may
lose what these helpers had queued. Services run under ``tickvisor run`` get
durable alerts from the alert actor instead.
"""

from __future__ import annotations

import os
import queue
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import tenacity

from tickvisor.alerts.channels import EmailChannel, SlackChannel, WebhookChannel
from tickvisor.alerts.channels.base import Channel, require_http_url
from tickvisor.alerts.channels.email import SECURITIES, Security
from tickvisor.alerts.notification import DeliveryError, Notification, Severity
from tickvisor.alerts.retry import RetryPolicy
from tickvisor.logs import get_logger

log = get_logger("tickvisor.alerts")

#: The policy the helpers use unless given one: 5 attempts within 60 s.
DEFAULT_POLICY = RetryPolicy()

#: SMTP port per security mode, when SMTP_PORT is not set.
DEFAULT_SMTP_PORTS: dict[Security, int] = {"starttls": 587, "ssl": 465, "none": 25}


def make_notification(
    title: str,
    message: str,
    *,
    severity: Severity = "warning",
    service: str | None = None,
    kind: str = "alert.manual",
) -> Notification:
    """A one-off notification with a fresh id (the helpers do no grouping)."""
    return Notification(
        id=str(uuid.uuid4()),
        group_key=f"{kind}:{service or '-'}",
        service=service,
        severity=severity,
        kind=kind,
        title=title,
        text=message,
        at=time.time(),
    )


def deliver(
    channel: Channel,
    notification: Notification,
    *,
    policy: RetryPolicy = DEFAULT_POLICY,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Send with retries; log the outcome (never a secret); return whether delivered."""
    context = {"channel": channel.name, "alert_id": notification.id}

    def retrying(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "alert.retrying",
            **context,
            endpoint=channel.describe(),
            attempt=state.attempt_number,
            wait_seconds=round(state.upcoming_sleep, 3),
            error=str(error),
        )

    try:
        policy.retrying(sleep=sleep, before_sleep=retrying)(channel.send, [notification])
    except DeliveryError as exc:
        # Channel errors are written to be safe to log: host only, no password.
        log.error(
            "alert.dead_lettered",
            **context,
            endpoint=channel.describe(),
            error=str(exc),
            error_type=type(exc).__name__,
        )
        return False
    except Exception as exc:
        # Not a channel error, so its text is unknown: log only its type.
        log.error(
            "alert.dead_lettered",
            **context,
            endpoint=channel.describe(),
            error_type=type(exc).__name__,
        )
        return False
    log.info("alert.delivered", **context, endpoint=channel.describe())
    return True


def send_slack_alert(
    webhook_url: str,
    title: str,
    message: str,
    *,
    severity: Severity = "warning",
    service: str | None = None,
    timeout: float = 10.0,
    policy: RetryPolicy = DEFAULT_POLICY,
) -> bool:
    """Post one alert to a Slack incoming webhook, retrying; True when delivered."""
    return _send_once(
        "slack",
        lambda: SlackChannel(webhook_url, timeout=timeout),
        make_notification(title, message, severity=severity, service=service),
        policy,
    )


def send_webhook_alert(
    url: str,
    secret: str,
    title: str,
    message: str,
    *,
    severity: Severity = "warning",
    service: str | None = None,
    timeout: float = 10.0,
    policy: RetryPolicy = DEFAULT_POLICY,
) -> bool:
    """POST one signed alert (Standard Webhooks), retrying; True when delivered."""
    return _send_once(
        "webhook",
        lambda: WebhookChannel(url, secret, timeout=timeout),
        make_notification(title, message, severity=severity, service=service),
        policy,
    )


def _send_once(
    name: str,
    build: Callable[[], SlackChannel | WebhookChannel],
    notification: Notification,
    policy: RetryPolicy,
) -> bool:
    """Build the channel (a bad setting is logged, not raised), deliver, close its session."""
    try:
        channel = build()
    except ValueError as exc:
        log.error("alert.misconfigured", channel=name, error=str(exc))
        return False
    try:
        return deliver(channel, notification, policy=policy)
    finally:
        channel.close()


def email_channel_from_env(
    *,
    to: str | Sequence[str] | None = None,
    host: str | None = None,
    port: int | None = None,
    user: str | None = None,
    password: str | None = None,
    security: str | None = None,
    sender: str | None = None,
    timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
) -> EmailChannel:
    """An :class:`EmailChannel` from arguments, falling back to the seed's variables.

    ``ALERT_EMAIL`` (recipients, comma-separated), ``SMTP_HOST``,
    ``SMTP_PORT``, ``SMTP_USER``, ``SMTP_PASSWORD``, ``SMTP_SECURITY``
    (starttls | ssl | none; default starttls) and ``ALERT_EMAIL_FROM`` (the
    sender; default ``SMTP_USER``, else ``tickvisor@localhost``). Raises
    ValueError naming what is missing.
    """
    env = os.environ
    recipients_raw: str | Sequence[str] = to if to is not None else env.get("ALERT_EMAIL", "")
    if isinstance(recipients_raw, str):
        recipients = [r.strip() for r in recipients_raw.split(",") if r.strip()]
    else:
        recipients = [r.strip() for r in recipients_raw if r.strip()]
    if not recipients:
        raise ValueError("no e-mail recipients: pass to= or set ALERT_EMAIL")
    host = host or env.get("SMTP_HOST")
    if not host:
        raise ValueError("no SMTP host: pass host= or set SMTP_HOST")
    checked = _security(security or env.get("SMTP_SECURITY") or "starttls")
    if port is None:
        raw_port = env.get("SMTP_PORT")
        try:
            port = int(raw_port) if raw_port else DEFAULT_SMTP_PORTS[checked]
        except ValueError:
            raise ValueError(f"SMTP_PORT must be an integer, got {raw_port!r}") from None
    user = user if user is not None else (env.get("SMTP_USER") or None)
    password = password if password is not None else env.get("SMTP_PASSWORD")
    sender = sender or env.get("ALERT_EMAIL_FROM") or user or "tickvisor@localhost"
    return EmailChannel(
        host,
        port,
        sender=sender,
        recipients=recipients,
        security=checked,
        user=user,
        password=password,
        timeout=timeout,
        ssl_context=ssl_context,
    )


def _security(value: str) -> Security:
    mode = value.strip().lower()
    for known in SECURITIES:
        if mode == known:
            return known
    raise ValueError(f"SMTP_SECURITY must be one of {', '.join(SECURITIES)}, got {value!r}")


def send_email_alert(
    subject: str,
    body: str,
    *,
    to: str | Sequence[str] | None = None,
    severity: Severity = "warning",
    service: str | None = None,
    host: str | None = None,
    port: int | None = None,
    user: str | None = None,
    password: str | None = None,
    security: str | None = None,
    sender: str | None = None,
    timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    policy: RetryPolicy = DEFAULT_POLICY,
) -> bool:
    """Send one alert e-mail, retrying; True when delivered.

    Unset arguments come from the environment (see :func:`email_channel_from_env`).
    """
    try:
        channel = email_channel_from_env(
            to=to,
            host=host,
            port=port,
            user=user,
            password=password,
            security=security,
            sender=sender,
            timeout=timeout,
            ssl_context=ssl_context,
        )
    except ValueError as exc:
        log.error("alert.misconfigured", channel="email", error=str(exc))
        return False
    notification = make_notification(subject, body, severity=severity, service=service)
    return deliver(channel, notification, policy=policy)


# --------------------------------------------------------------------------- background


class BackgroundSender:
    """One daemon thread running queued sends, so a callback never waits on the network.

    The queue is bounded: when it is full, :meth:`submit` drops the job and
    says so in the log, because a breaker callback must return at once and an
    alert storm must not grow memory without bound.
    """

    def __init__(self, maxsize: int = 100, *, name: str = "tickvisor-alert-sender") -> None:
        self._queue: queue.Queue[Callable[[], object]] = queue.Queue(maxsize=maxsize)
        self._name = name
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._idle = threading.Condition()
        self._pending = 0

    def submit(self, job: Callable[[], object], *, what: str = "alert") -> bool:
        """Queue ``job``; False (and a log line) when the queue is full."""
        with self._idle:
            self._pending += 1
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self._done()
            log.warning("alert.dropped", reason="background queue full", what=what)
            return False
        self._ensure_thread()
        return True

    def drain(self, timeout: float = 5.0) -> bool:
        """Wait (bounded) until every queued job has run; True if they all did."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def _done(self) -> None:
        with self._idle:
            self._pending -= 1
            self._idle.notify_all()

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                job()
            except Exception as exc:
                log.error("alert.background_failed", error_type=type(exc).__name__)
            finally:
                self._done()


_shared: BackgroundSender | None = None
_shared_lock = threading.Lock()


def background_sender() -> BackgroundSender:
    """The process-wide sender the notifiers use (created on first use)."""
    global _shared  # noqa: PLW0603 - one lazily created worker per process
    with _shared_lock:
        if _shared is None:
            _shared = BackgroundSender()
        return _shared


def _opened_text(service_name: str) -> str:
    return (
        f"The circuit breaker of {service_name} opened: calls are refused until it "
        "lets a trial call through."
    )


def create_slack_notifier(
    webhook_url: str,
    service_name: str,
    *,
    severity: Severity = "critical",
    title: str | None = None,
    message: str | None = None,
    timeout: float = 10.0,
    policy: RetryPolicy = DEFAULT_POLICY,
    worker: BackgroundSender | None = None,
) -> Callable[..., None]:
    """A breaker callback (``on_open=notifier``) that posts to Slack in the background.

    It accepts and ignores any arguments and returns at once: the send, with
    its retries, runs on the shared :func:`background_sender` (or ``worker``).
    """
    require_http_url(webhook_url, "Slack webhook URL")  # fail at set-up, not in the background
    alert_title = title or f"Circuit breaker opened: {service_name}"
    text = message or _opened_text(service_name)

    def send() -> bool:
        return send_slack_alert(
            webhook_url,
            alert_title,
            text,
            severity=severity,
            service=service_name,
            timeout=timeout,
            policy=policy,
        )

    def notify(*_args: Any, **_kwargs: Any) -> None:
        (worker or background_sender()).submit(send, what=f"slack alert for {service_name}")

    return notify


def create_email_notifier(
    service_name: str,
    *,
    severity: Severity = "critical",
    subject: str | None = None,
    message: str | None = None,
    to: str | Sequence[str] | None = None,
    host: str | None = None,
    port: int | None = None,
    user: str | None = None,
    password: str | None = None,
    security: str | None = None,
    sender: str | None = None,
    timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    policy: RetryPolicy = DEFAULT_POLICY,
    worker: BackgroundSender | None = None,
) -> Callable[..., None]:
    """A breaker callback that e-mails in the background (settings as :func:`send_email_alert`).

    Settings left unset are read from the environment when the alert is sent.
    """
    alert_subject = subject or f"Circuit breaker opened: {service_name}"
    text = message or _opened_text(service_name)

    def send() -> bool:
        return send_email_alert(
            alert_subject,
            text,
            to=to,
            severity=severity,
            service=service_name,
            host=host,
            port=port,
            user=user,
            password=password,
            security=security,
            sender=sender,
            timeout=timeout,
            ssl_context=ssl_context,
            policy=policy,
        )

    def notify(*_args: Any, **_kwargs: Any) -> None:
        (worker or background_sender()).submit(send, what=f"e-mail alert for {service_name}")

    return notify
