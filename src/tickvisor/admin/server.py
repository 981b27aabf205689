"""The admin API served by uvicorn on a daemon thread, beside the supervision tree.

The socket is bound here, on the caller's thread, before the server thread
starts: a port already in use is an immediate, clear error for ``run``
rather than a log line from a thread nobody waits on, and port 0 yields the
real port at once. :func:`start_admin` returns after uvicorn reports that
it serves (bounded by ``start_timeout``); :meth:`AdminServer.stop` asks it
to exit and waits (bounded) for the thread, so shutdown never hangs on an
HTTP client that keeps its connection open.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pykka
import uvicorn
from sqlalchemy import Engine

from tickvisor.admin.app import create_app
from tickvisor.admin.auth import AdminToken
from tickvisor.admin.redact import config_secrets
from tickvisor.config import TickvisorConfig
from tickvisor.logs import get_logger

__all__ = ["AdminServer", "AdminStartError", "start_admin"]

log = get_logger("tickvisor.admin")

#: How long open connections may finish their responses once a stop is asked.
_GRACEFUL_SECONDS = 2.0


class AdminStartError(RuntimeError):
    """The admin API could not start (address in use, bad host); the message is safe to print."""


@dataclass
class AdminServer:
    """A running admin API; ``url`` is where it answers (with the real port)."""

    host: str
    port: int
    _server: uvicorn.Server = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving; returns within about ``timeout`` seconds whatever the clients do."""
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(1.0)
        log.info("admin.stopped", url=self.url, stopped=not self._thread.is_alive())


def start_admin(
    root: pykka.ActorRef[Any],
    config: TickvisorConfig,
    *,
    token: AdminToken | str,
    host: str | None = None,
    port: int | None = None,
    engine: Engine | None = None,
    ask_timeout: float = 5.0,
    start_timeout: float = 10.0,
) -> AdminServer:
    """Serve the admin API for the tree under ``root``; ``host``/``port`` override the config.

    ``token`` is what :func:`~tickvisor.admin.auth.resolve_token` returned
    (or a plain string). Pass the ``config`` the tree runs with, alert
    environment applied, so its secrets are masked in every response.
    """
    resolved = token if isinstance(token, AdminToken) else AdminToken(token, "argument", None)
    host = config.admin.host if host is None else host
    port = config.admin.port if port is None else port
    app = create_app(
        root,
        token=resolved.token,
        ask_timeout=ask_timeout,
        engine=engine,
        secrets=config_secrets(config),
    )
    sock = _bind(host, port)
    bound_port = int(sock.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_config=None,  # our structlog handlers render uvicorn's records too
            log_level=logging.WARNING,
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=int(_GRACEFUL_SECONDS),
        )
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="tickvisor-admin", daemon=True
    )
    thread.start()
    admin = AdminServer(host, bound_port, server, thread)
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(_GRACEFUL_SECONDS)
            sock.close()
            raise AdminStartError(
                f"the admin API on {admin.url} did not start within {start_timeout:g}s"
            )
        time.sleep(0.01)
    log.info(
        "admin.started",
        url=admin.url,
        host=host,
        port=bound_port,
        token_source=resolved.source,
        token_file=str(resolved.file) if resolved.file is not None else None,
    )
    return admin


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise AdminStartError(f"admin.host {host!r} cannot be resolved: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise AdminStartError(
            f"the admin API cannot listen on {host}:{port}: {exc.strerror}; "
            "choose another admin.port (or --admin-port)"
        ) from None
    return sock
