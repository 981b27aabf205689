"""E-mail through an SMTP relay: STARTTLS, SMTPS, or plain for a local relay.

TLS certificates are verified by default (``ssl.create_default_context()``)
because the relay sees the SMTP password; a verification failure is a
configuration problem, so it is permanent, with a message that says so.
The password is only ever sent after TLS is up, unless the operator
explicitly chose ``security="none"`` (a relay on localhost).

SMTP replies classify themselves: 4xx means "try later" (greylisting, a full
queue), 5xx means "this will not work" (unknown recipient, bad credentials).
Each message carries ``Message-ID: <{notification.id}@tickvisor>`` so a
mail system can drop the duplicates that a retry may produce.
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Literal, get_args

from tickvisor.alerts.channels.base import clip, human_seconds, iso_utc, scrub, severity_tag
from tickvisor.alerts.notification import (
    DeliveryError,
    Notification,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from tickvisor.logs import get_logger

Security = Literal["starttls", "ssl", "none"]
SECURITIES: tuple[Security, ...] = get_args(Security)

log = get_logger("tickvisor.alerts.email")


def _one_line(text: str) -> str:
    """Header-safe text: no CR/LF (header injection), no runs of whitespace."""
    return " ".join(text.split())


def subject_of(notification: Notification) -> str:
    return clip(f"[{severity_tag(notification)}] {_one_line(notification.title)}", 200)


def body_of(notification: Notification) -> str:
    """Plain text: the text, the alert lines, then the facts as ``Key: value`` lines."""
    parts = [notification.text.rstrip(), ""] if notification.text else []
    if notification.alerts:
        for line in notification.alerts:
            times = f" (x{line.count})" if line.count > 1 else ""
            parts.append(f"- {iso_utc(line.at)} [{line.severity}] {line.text}{times}")
        parts.append("")
    facts = [("Service", notification.service)]
    if notification.from_state and notification.to_state:
        facts.append(("Transition", f"{notification.from_state} -> {notification.to_state}"))
    if notification.failure_count is not None:
        facts.append(("Failures", str(notification.failure_count)))
    if notification.time_until_half_open is not None and not notification.resolved:
        facts.append(("Time until half-open", human_seconds(notification.time_until_half_open)))
    facts.append(("At", iso_utc(notification.at)))
    facts.append(("Alert id", notification.id))
    parts.extend(f"{key}: {value}" for key, value in facts if value)
    return "\n".join(parts) + "\n"


def build_email(notification: Notification, sender: str, recipients: Sequence[str]) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = subject_of(notification)
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    # The notification's time, not the send time: every retry is the same message.
    message["Date"] = format_datetime(datetime.fromtimestamp(notification.at, UTC))
    message["Message-ID"] = f"<{notification.id}@tickvisor>"
    message["X-Tickvisor-Alert-Id"] = notification.id
    message.set_content(body_of(notification))
    return message


class EmailChannel:
    """Sends each notification as one e-mail through one SMTP relay."""

    name = "email"
    min_interval_seconds = 0.0
    max_batch = 1

    def __init__(
        self,
        host: str,
        port: int,
        *,
        sender: str,
        recipients: Sequence[str],
        security: Security = "starttls",
        user: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if security not in SECURITIES:
            raise ValueError(f"security must be one of {', '.join(SECURITIES)}, got {security!r}")
        if not host:
            raise ValueError("SMTP host is empty")
        if not recipients:
            raise ValueError("e-mail channel needs at least one recipient")
        if not sender:
            raise ValueError("e-mail channel needs a sender address")
        if user and password is None:
            raise ValueError("SMTP user is set but the password is not")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.host = host
        self.port = port
        self.sender = sender
        self.recipients = tuple(recipients)
        self.security: Security = security
        self._user = user or None
        self._password = password
        self._timeout = timeout
        self._context = ssl_context if ssl_context is not None else ssl.create_default_context()

    def describe(self) -> str:
        return f"email {self.host}:{self.port} ({self.security})"

    def __repr__(self) -> str:
        return f"EmailChannel({self.host!r}, {self.port}, security={self.security!r})"

    def send(self, notifications: Sequence[Notification]) -> None:
        """One SMTP session sending one e-mail per notification (normally exactly one)."""
        if not notifications:
            return
        try:
            self._send(notifications)
        except OSError as exc:  # smtplib's and ssl's errors are OSErrors too
            error = self._classify(exc)
        else:
            return
        # Raised outside the handler: no __context__, so a traceback shows only our words.
        raise error

    def _classify(self, exc: OSError) -> DeliveryError:
        """What a failed SMTP session means: try later, or give up."""
        where = self.describe()
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            return self._refused(exc)
        if isinstance(exc, smtplib.SMTPResponseException):
            return self._reply(exc.smtp_code, exc.smtp_error)
        if isinstance(exc, smtplib.SMTPServerDisconnected):
            # smtplib reports a read timeout as a disconnect; say which it was.
            if isinstance(exc.__context__, TimeoutError):
                return TransientDeliveryError(f"{where}: no answer within {self._timeout:g} s")
            return TransientDeliveryError(f"{where}: the server closed the connection")
        if isinstance(exc, smtplib.SMTPNotSupportedError):
            return PermanentDeliveryError(
                f"{where}: the server does not support what we need: {self._safe(exc)}"
            )
        if isinstance(exc, smtplib.SMTPException):
            return PermanentDeliveryError(f"{where}: {self._safe(exc)}")
        if isinstance(exc, ssl.SSLCertVerificationError):
            return PermanentDeliveryError(
                f"{where}: TLS certificate verification failed "
                f"({exc.verify_message or exc.reason}); give the relay a trusted certificate, "
                "or configure an ssl_context that trusts its CA"
            )
        if isinstance(exc, ssl.SSLEOFError):
            return TransientDeliveryError(
                f"{where}: the connection closed during the TLS handshake"
            )
        if isinstance(exc, ssl.SSLError):
            return PermanentDeliveryError(
                f"{where}: TLS failed ({exc.reason or type(exc).__name__}); "
                f"is {self.security!r} the right security for this port?"
            )
        if isinstance(exc, TimeoutError):
            return TransientDeliveryError(f"{where}: no answer within {self._timeout:g} s")
        return TransientDeliveryError(f"{where}: {exc.strerror or type(exc).__name__}")

    def _send(self, notifications: Sequence[Notification]) -> None:
        smtp: smtplib.SMTP
        if self.security == "ssl":
            smtp = smtplib.SMTP_SSL(
                self.host, self.port, timeout=self._timeout, context=self._context
            )
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self._timeout)
        with smtp:
            smtp.ehlo()
            if self.security == "starttls":
                smtp.starttls(context=self._context)
                smtp.ehlo()
            if self._user is not None and self._password is not None:
                smtp.login(self._user, self._password)
            for notification in notifications:
                message = build_email(notification, self.sender, self.recipients)
                refused = smtp.send_message(message)
                if refused:
                    log.warning(
                        "alert.recipients_refused",
                        channel=self.name,
                        alert_id=notification.id,
                        refused=sorted(refused),
                    )

    def _safe(self, exc: BaseException) -> str:
        return clip(scrub(_one_line(str(exc)), [self._password]), 200)

    def _reply_text(self, error: bytes | str) -> str:
        text = error.decode("utf-8", "replace") if isinstance(error, bytes) else str(error)
        return clip(scrub(_one_line(text), [self._password]), 200)

    def _reply(self, code: int, error: bytes | str) -> DeliveryError:
        said = f"{self.describe()}: SMTP {code} {self._reply_text(error)}".rstrip()
        if 400 <= code <= 499:
            return TransientDeliveryError(said)
        return PermanentDeliveryError(said)

    def _refused(self, exc: smtplib.SMTPRecipientsRefused) -> DeliveryError:
        """Every recipient refused: transient only if every refusal was a 4xx."""
        codes = sorted({code for code, _ in exc.recipients.values()})
        _, first_error = next(iter(exc.recipients.values()), (550, b""))
        said = (
            f"{self.describe()}: all recipients refused (SMTP {', '.join(map(str, codes))}: "
            f"{self._reply_text(first_error)})"
        )
        if codes and all(400 <= code <= 499 for code in codes):
            return TransientDeliveryError(said)
        return PermanentDeliveryError(said)
