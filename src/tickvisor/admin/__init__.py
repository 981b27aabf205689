"""The admin HTTP API: health, readiness, status, Prometheus metrics and control.

It sits above the tree (``cli`` -> ``admin`` -> ``supervision``): it reads
the tree through :class:`~tickvisor.supervision.Control`, with a timeout on
every call, and the metrics the actors count in :mod:`tickvisor.telemetry`.

::

    token = resolve_token(config, db_url)
    server = start_admin(root, config, token=token, engine=engine)
    ...
    server.stop()
"""

from tickvisor.admin.app import ACTIONS, create_app
from tickvisor.admin.auth import TOKEN_ENV, AdminToken, AdminTokenError, resolve_token
from tickvisor.admin.server import AdminServer, AdminStartError, start_admin

__all__ = [
    "ACTIONS",
    "TOKEN_ENV",
    "AdminServer",
    "AdminStartError",
    "AdminToken",
    "AdminTokenError",
    "create_app",
    "resolve_token",
    "start_admin",
]
