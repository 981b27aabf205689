"""Real receivers on 127.0.0.1 for tests and benchmarks: Slack, a webhook endpoint, SMTP.

Channels are tested against real sockets rather than mocks of requests or
smtplib, so that timeouts, refused connections, TLS and the wire format are
the real thing. Each receiver listens on a free port (port 0), is a context
manager, can be scripted to answer badly (``.script(...)`` /
``.fail_next(...)``), and records what it received under a lock, with a
bounded ``wait_for`` so a test never sleeps to wait.

aiosmtpd and trustme are development dependencies: they are imported only
when an SMTP receiver or a test CA is made, so ``import tickvisor.testing``
works without them.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import secrets
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, Self, cast

from tickvisor.alerts.signing import DEFAULT_TOLERANCE, InvalidSignature, verify

if TYPE_CHECKING:
    import trustme
    from aiosmtpd.controller import Controller

# --------------------------------------------------------------------------- HTTP


class _Receiver:
    """A server that runs until ``close()``; as a context manager, closed on the way out."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True)
class Reply:
    """Answer with this status, body and headers."""

    status: int
    body: str = ""
    headers: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Stall:
    """Wait ``seconds``, then answer as "ok" would (503 if the receiver closes meanwhile)."""

    seconds: float


Behaviour = Literal["ok"] | Reply | Stall


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it, and what it answered."""

    at_monotonic: float
    body_json: Any
    headers: dict[str, str]
    status_answered: int
    body: bytes = b""


class Accepted(NamedTuple):
    """A webhook call that passed verification and was answered 2xx."""

    webhook_id: str
    timestamp: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: _HttpReceiver


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.owner._handle(self, body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr line."""


class _HttpReceiver(_Receiver):
    """A scripted HTTP server recording every request; the base of the fakes below."""

    path: ClassVar[str] = "/"

    def __init__(self, *, default: Behaviour = "ok", delay_seconds: float = 0.0) -> None:
        self.default: Behaviour = default
        self.delay_seconds = delay_seconds
        self._script: deque[Behaviour] = deque()
        self._records: list[Received] = []
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self.port}",
            daemon=True,
        )
        self._thread.start()

    # -- scripting -------------------------------------------------------------
    def script(self, *behaviours: Behaviour) -> None:
        """Answer the next requests with these behaviours, in order, then ``default``."""
        with self._cond:
            self._script.extend(behaviours)

    def _next_behaviour(self) -> Behaviour:
        with self._cond:
            return self._script.popleft() if self._script else self.default

    # -- records ---------------------------------------------------------------
    @property
    def requests(self) -> list[Received]:
        with self._cond:
            return list(self._records)

    @property
    def delivered(self) -> list[Received]:
        """The requests answered 2xx."""
        with self._cond:
            return [r for r in self._records if 200 <= r.status_answered <= 299]

    def wait_for(self, n: int, timeout: float = 5.0) -> bool:
        """Wait (at most ``timeout`` s) until ``n`` requests were delivered."""
        with self._cond:
            return self._cond.wait_for(
                lambda: sum(200 <= r.status_answered <= 299 for r in self._records) >= n,
                timeout,
            )

    def _record(self, received: Received) -> None:
        with self._cond:
            self._records.append(received)
            self._cond.notify_all()

    # -- serving ---------------------------------------------------------------
    def _handle(self, handler: _Handler, body: bytes) -> None:
        raise NotImplementedError

    def _pause(self, seconds: float) -> bool:
        """Sleep that ends at once when the receiver closes; True if it was cut short."""
        return seconds > 0 and self._closing.wait(seconds)

    def _answer(
        self,
        handler: _Handler,
        status: int,
        body: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        data = body.encode("utf-8")
        try:
            handler.send_response(status)
            for key, value in (headers or {}).items():
                handler.send_header(key, value)
            handler.send_header("Content-Type", "text/plain; charset=utf-8")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:
            pass  # the client gave up (a timeout test): nothing to answer

    def _decide(self, ok_status: int, ok_body: str) -> Reply:
        """Apply the delay and the next behaviour: what to answer.

        A wait cut short because the receiver is closing answers 503: the
        request was not handled, so it must not count as delivered.
        """
        closing = Reply(503, "receiver closing")
        if self._pause(self.delay_seconds):
            return closing
        behaviour = self._next_behaviour()
        if isinstance(behaviour, Reply):
            return behaviour
        if isinstance(behaviour, Stall) and self._pause(behaviour.seconds):
            return closing
        return Reply(ok_status, ok_body)

    # -- lifecycle -------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _headers(handler: _Handler) -> dict[str, str]:
    return {key.lower(): value for key, value in handler.headers.items()}


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


class FakeSlack(_HttpReceiver):
    """A Slack incoming webhook: answers ``200 ok``, or what it was scripted to.

    Like Slack, it answers ``400 invalid_payload`` to a body that is not JSON
    and ``400 no_text`` to a message with neither text nor attachments. The
    URL path is random per instance, standing in for the webhook's secret.
    """

    def __init__(self, *, default: Behaviour = "ok", delay_seconds: float = 0.0) -> None:
        self.secret_path = f"/services/T000/B000/{secrets.token_hex(12)}"
        super().__init__(default=default, delay_seconds=delay_seconds)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.secret_path}"

    def _handle(self, handler: _Handler, body: bytes) -> None:
        arrived = time.monotonic()
        message = _parse_json(body)
        if handler.path != self.secret_path:
            reply = Reply(404, "no_service")
        elif not isinstance(message, dict):
            reply = Reply(400, "invalid_payload")
        elif not message.get("text") and not message.get("attachments"):
            reply = Reply(400, "no_text")
        else:
            reply = self._decide(200, "ok")
        # Recorded before answering, so a client that got its answer finds the record.
        self._record(Received(arrived, message, _headers(handler), reply.status, body))
        self._answer(handler, reply.status, reply.body, reply.headers)


@dataclass(frozen=True)
class Rejected:
    """A webhook call refused before the script was consulted (bad signature, stale)."""

    reason: str
    headers: dict[str, str]
    body: bytes = field(repr=False)


class WebhookReceiver(_HttpReceiver):
    """A Standard Webhooks endpoint: verifies each call, then answers as scripted.

    A call with a bad signature or a timestamp outside ``tolerance`` of
    ``now()`` gets ``400`` and lands in :attr:`rejected` with the reason; it
    does not use up a scripted behaviour.
    """

    path: ClassVar[str] = "/hooks/tickvisor"

    def __init__(
        self,
        secret: str,
        *,
        tolerance: float = DEFAULT_TOLERANCE,
        now: Callable[[], float] = time.time,
        default: Behaviour = "ok",
        delay_seconds: float = 0.0,
    ) -> None:
        self.secret = secret
        self.tolerance = tolerance
        self.now = now
        self._rejected: list[Rejected] = []
        self._accepted: list[Accepted] = []
        super().__init__(default=default, delay_seconds=delay_seconds)

    @property
    def rejected(self) -> list[Rejected]:
        with self._cond:
            return list(self._rejected)

    @property
    def accepted(self) -> list[Accepted]:
        with self._cond:
            return list(self._accepted)

    def ids(self) -> list[str]:
        """The ``webhook-id`` of every accepted call, in arrival order."""
        return [a.webhook_id for a in self.accepted]

    def _handle(self, handler: _Handler, body: bytes) -> None:
        arrived = time.monotonic()
        headers = _headers(handler)
        try:
            verify(
                self.secret,
                headers.get("webhook-id"),
                headers.get("webhook-timestamp"),
                headers.get("webhook-signature"),
                body,
                now=self.now(),
                tolerance=self.tolerance,
            )
        except InvalidSignature as exc:
            with self._cond:
                self._rejected.append(Rejected(str(exc), headers, body))
            self._record(Received(arrived, _parse_json(body), headers, 400, body))
            self._answer(handler, 400, str(exc))
            return
        reply = self._decide(200, "")
        if 200 <= reply.status <= 299:
            with self._cond:
                self._accepted.append(
                    Accepted(headers["webhook-id"], int(headers["webhook-timestamp"]), body)
                )
        self._record(Received(arrived, _parse_json(body), headers, reply.status, body))
        self._answer(handler, reply.status, reply.body, reply.headers)


# --------------------------------------------------------------------------- TLS


def test_ca() -> trustme.CA:
    """A throw-away certificate authority for TLS tests (trustme)."""
    import trustme

    return trustme.CA()


test_ca.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    """A server-side context presenting a certificate for 127.0.0.1 and localhost."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A verifying client context that trusts ``ca`` (and nothing else)."""
    # Given cadata, create_default_context loads no system CAs.
    return ssl.create_default_context(cadata=ca.cert_pem.bytes().decode("ascii"))


# --------------------------------------------------------------------------- SMTP

SmtpMode = Literal["plain", "starttls", "ssl"]


@dataclass(frozen=True)
class _Failure:
    code: int
    message: str
    stage: Literal["RCPT", "DATA"]


class _SmtpHandler:
    """aiosmtpd handler: records messages, or fails as scripted."""

    def __init__(self, owner: SmtpReceiver) -> None:
        self.owner = owner

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        if self.owner.auth is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        failure = self.owner._take_failure("RCPT")
        if failure is not None:
            return f"{failure.code} {failure.message}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.owner._take_disconnect():
            server.transport.close()
            return "421 closing"
        failure = self.owner._take_failure("DATA")
        if failure is not None:
            return f"{failure.code} {failure.message}"
        raw = envelope.original_content or envelope.content
        message = email.message_from_bytes(raw, policy=email.policy.default)
        login = getattr(session, "auth_data", None)
        self.owner._store(message, envelope, login)
        return "250 Message accepted for delivery"


@dataclass(frozen=True)
class Envelope:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    login: str | None


class SmtpReceiver(_Receiver):
    """An SMTP server (aiosmtpd) in a thread: plain, STARTTLS or SMTPS, optional AUTH.

    - ``starttls``: the server requires STARTTLS before MAIL;
    - ``ssl``: TLS from the first byte (SMTPS);
    - ``auth=(user, password)``: AUTH is required, and offered only over TLS
      (plain mode: never offered, as a careful relay would do).

    The server certificate comes from ``ca`` (a new :func:`test_ca` if not
    given); :meth:`client_ssl_context` trusts it.
    """

    def __init__(
        self,
        mode: SmtpMode = "plain",
        *,
        auth: tuple[str, str] | None = None,
        ca: trustme.CA | None = None,
    ) -> None:
        if mode not in ("plain", "starttls", "ssl"):
            raise ValueError(f"mode must be plain, starttls or ssl, got {mode!r}")
        self.mode = mode
        self.auth = auth
        self.ca = ca if ca is not None or mode == "plain" else test_ca()
        self._cond = threading.Condition()
        self._messages: list[EmailMessage] = []
        self._envelopes: list[Envelope] = []
        self._failures: deque[_Failure] = deque()
        self._disconnects = 0
        self._auth_attempts: list[str] = []
        self._controller = self._make_controller()
        self._controller.start()
        self.host = "127.0.0.1"
        self.port: int = self._controller.port

    def _make_controller(self) -> Controller:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        class _PortZeroController(Controller):
            """Binds port 0, then learns the port before aiosmtpd's start-up probe."""

            def _trigger_server(self) -> None:
                server = cast(asyncio.Server, self.server)
                self.port = server.sockets[0].getsockname()[1]
                super()._trigger_server()  # type: ignore[no-untyped-call]

        def authenticator(
            server: Any, session: Any, envelope: Any, mechanism: str, data: Any
        ) -> AuthResult:
            if not isinstance(data, LoginPassword) or self.auth is None:
                return AuthResult(success=False, handled=False)
            login = data.login.decode("utf-8", "replace")
            with self._cond:
                self._auth_attempts.append(login)
            ok = (login, data.password.decode("utf-8", "replace")) == self.auth
            return AuthResult(success=ok, handled=False, auth_data=login if ok else None)

        kwargs: dict[str, Any] = {}
        tls = server_context(self.ca) if self.ca is not None and self.mode != "plain" else None
        if self.mode == "starttls":
            kwargs.update(tls_context=tls, require_starttls=True)
        if self.auth is not None:
            # AUTH is enforced at MAIL by the handler rather than by aiosmtpd's
            # auth_required, which over SMTPS would need auth_require_tls=False
            # (aiosmtpd does not see TLS that wraps the whole connection).
            kwargs.update(authenticator=authenticator, auth_require_tls=self.mode != "ssl")
        return _PortZeroController(
            _SmtpHandler(self),
            hostname="127.0.0.1",
            port=0,
            ssl_context=tls if self.mode == "ssl" else None,
            ready_timeout=10.0,
            **kwargs,
        )

    # -- scripting -------------------------------------------------------------
    def fail_next(
        self, code: int, message: str | None = None, *, at: Literal["RCPT", "DATA"] = "DATA"
    ) -> None:
        """Answer the next message (at RCPT or DATA) with this SMTP reply code."""
        text = message or ("4.3.0 Try again later" if code < 500 else "5.7.1 Rejected")
        with self._cond:
            self._failures.append(_Failure(code, text, at))

    def disconnect_next(self) -> None:
        """Drop the connection at the next DATA, without a proper reply."""
        with self._cond:
            self._disconnects += 1

    def _take_failure(self, stage: str) -> _Failure | None:
        with self._cond:
            if self._failures and self._failures[0].stage == stage:
                return self._failures.popleft()
            return None

    def _take_disconnect(self) -> bool:
        with self._cond:
            if self._disconnects:
                self._disconnects -= 1
                return True
            return False

    # -- records ---------------------------------------------------------------
    def _store(self, message: EmailMessage, envelope: Any, login: Any) -> None:
        with self._cond:
            self._messages.append(message)
            self._envelopes.append(
                Envelope(
                    str(envelope.mail_from),
                    tuple(envelope.rcpt_tos),
                    None if login is None else str(login),
                )
            )
            self._cond.notify_all()

    @property
    def messages(self) -> list[EmailMessage]:
        with self._cond:
            return list(self._messages)

    @property
    def auth_attempts(self) -> list[str]:
        """The user name of every AUTH attempt, successful or not."""
        with self._cond:
            return list(self._auth_attempts)

    @property
    def envelopes(self) -> list[Envelope]:
        with self._cond:
            return list(self._envelopes)

    def wait_for(self, n: int, timeout: float = 5.0) -> bool:
        """Wait (at most ``timeout`` s) until ``n`` messages were accepted."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._messages) >= n, timeout)

    def client_ssl_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts this server's test CA."""
        if self.ca is None:
            raise ValueError("a plain SMTP receiver has no certificate authority")
        return client_context(self.ca)

    # -- lifecycle -------------------------------------------------------------
    def close(self) -> None:
        self._controller.stop()
