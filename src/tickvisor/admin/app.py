"""The admin HTTP API as a FastAPI app: health, readiness, status, metrics and control.

Every handler is a plain ``def``: FastAPI runs those on its threadpool, so
the asks they make of the tree (each bounded by ``ask_timeout``) never
block the event loop, and a slow or wedged actor costs one worker thread
for at most that long, never the server. Errors from the tree map to HTTP
the same way everywhere: no such child 404, a request that does not fit the
child's state 409, no answer in time 504, a tree that is gone 503.

Only the control routes change anything, and only with the bearer token.
Every JSON body goes through :class:`~tickvisor.admin.redact.Redactor`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Annotated, Any

import pykka
from fastapi import Depends, FastAPI
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4 as CONTENT_TYPE
from sqlalchemy import Engine

from tickvisor import __version__
from tickvisor.admin.auth import token_matches
from tickvisor.admin.health import (
    overall_status,
    readiness_problems,
    service_health,
    services_node,
)
from tickvisor.admin.metrics import build_registry, render
from tickvisor.admin.redact import Redactor
from tickvisor.supervision.control import Control, InvalidChildState, NoSuchChild
from tickvisor.supervision.tree import SERVICES

__all__ = ["ACTIONS", "create_app"]

#: Control actions, in the order the docs list them.
ACTIONS = ("pause", "resume", "restart", "invalidate-cache", "reset-breaker")

_DESCRIPTION = """\
Health, readiness, status, Prometheus metrics and control of one tickvisor
process. Listens on 127.0.0.1 unless configured otherwise. The control
routes need `Authorization: Bearer <token>` (see `admin.token`)."""

_ERRORS: dict[int | str, dict[str, Any]] = {
    503: {"description": "the supervision tree is not running"},
    504: {"description": "the tree did not answer in time"},
}


#: Module level: FastAPI resolves the handlers' (string) annotations in this module's globals.
_BEARER = HTTPBearer(
    auto_error=False,
    description="The admin token: TICKVISOR_ADMIN_TOKEN, admin.token, or the generated file.",
)
_Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]


class _Refused(Exception):
    """A request the tree answered with an error, as the HTTP status and body to send."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def create_app(
    root: pykka.ActorRef[Any],
    *,
    token: str,
    ask_timeout: float = 5.0,
    engine: Engine | None = None,
    secrets: Iterable[str] = (),
) -> FastAPI:
    """The admin app for the tree under ``root``.

    ``token`` guards the control routes; ``engine`` (the tree's database)
    adds the outbox gauges to ``/metrics``; ``secrets`` are masked in every
    response, as is ``token`` itself.
    """
    if not token:
        raise ValueError("the admin API needs a non-empty token")
    control = Control(root, timeout=ask_timeout)
    registry = build_registry(engine, timeout=min(ask_timeout, 2.0))
    redactor = Redactor([token, *secrets])
    app = FastAPI(
        title="tickvisor admin API",
        version=__version__,
        description=_DESCRIPTION,
        redoc_url=None,
    )

    def reply(body: Any, status: int = 200) -> JSONResponse:
        return JSONResponse(redactor.data(body), status_code=status)

    def ask(call: Callable[[], Any]) -> Any:
        """Run one Control call, turning the tree's errors into :class:`_Refused`."""
        try:
            return call()
        except NoSuchChild as exc:
            raise _Refused(404, str(exc)) from None
        except InvalidChildState as exc:
            raise _Refused(409, str(exc)) from None
        except pykka.Timeout:
            raise _Refused(504, f"the tree did not answer within {ask_timeout:g}s") from None
        except pykka.ActorDeadError:
            raise _Refused(503, "the supervision tree is not running") from None
        except ValueError as exc:
            raise _Refused(400, str(exc)) from None

    def authorized(credentials: _Credentials) -> None:
        presented = None if credentials is None else credentials.credentials
        if not token_matches(token, presented):
            raise _Refused(401, "a valid bearer token is required")

    @app.exception_handler(_Refused)
    def refused(_request: Any, exc: _Refused) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        body = redactor.data({"detail": exc.detail})
        return JSONResponse(body, status_code=exc.status, headers=headers)

    @app.get(
        "/health",
        summary="Liveness: 200 while the root supervisor runs",
        responses={503: {"description": "the root supervisor has stopped"}},
    )
    def health() -> JSONResponse:
        alive = root.is_alive()
        return reply({"status": "ok" if alive else "down", "root": alive}, 200 if alive else 503)

    @app.get(
        "/ready",
        summary="Readiness: every service running with its breaker closed",
        responses={503: {"description": "not ready; `reasons` names each service and why"}},
    )
    def ready() -> JSONResponse:
        if not root.is_alive():
            return reply(
                {"ready": False, "reasons": [{"service": "root", "reason": "stopped"}]}, 503
            )
        try:
            tree = ask(control.status)
        except _Refused as exc:
            return reply(
                {"ready": False, "reasons": [{"service": "root", "reason": exc.detail}]}, 503
            )
        problems = readiness_problems(tree)
        return reply({"ready": not problems, "reasons": problems}, 503 if problems else 200)

    @app.get(
        "/health/services",
        summary="Each service's health, iterations, errors, breaker and cache age",
        responses=_ERRORS,
    )
    def services_health() -> JSONResponse:
        tree = ask(control.status)
        node = services_node(tree)
        if node is None or node.get("state") != "running" or "children" not in node:
            state = "missing" if node is None else node.get("state")
            status = "restarting" if state == "restarting" else "stopped"
            why = f"the services supervisor is {state}"
            return reply({"status": status, "reasons": [why], "services": {}})
        services: dict[str, Any] = {}
        for child in node.get("children", ()):
            name = child["name"]
            metrics: dict[str, Any] | None = None
            error: str | None = None
            if child.get("alive"):
                try:
                    metrics = ask(functools.partial(control.metrics, f"{SERVICES}/{name}"))
                except _Refused as exc:
                    error = exc.detail
            services[name] = service_health(child, metrics, error)
        status = overall_status(s["status"] for s in services.values())
        reasons = [f"{name}: {why}" for name, s in services.items() for why in s["reasons"]]
        return reply({"status": status, "reasons": reasons, "services": services})

    @app.get("/status", summary="The supervision tree, supervisors with children nested")
    def status() -> JSONResponse:
        return reply(ask(control.status))

    @app.get(
        "/metrics",
        summary="Prometheus metrics (text exposition format)",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}},
    )
    def metrics() -> Response:
        text = redactor.text(render(registry).decode("utf-8"))
        return Response(text, media_type=CONTENT_TYPE)

    handlers: dict[str, Callable[[str], Any]] = {
        "pause": control.pause,
        "resume": control.resume,
        "restart": control.restart,
        "invalidate-cache": control.invalidate_cache,
        "reset-breaker": control.reset_breaker,
    }

    @app.post(
        "/control/{service}/{action}",
        summary="Pause, resume, restart a service, invalidate its cache or reset its breaker",
        dependencies=[Depends(authorized)],
        responses={
            401: {"description": "missing or wrong bearer token"},
            404: {"description": "no such service or action"},
            409: {"description": "the action does not fit the service's state now"},
            **_ERRORS,
        },
    )
    def control_service(
        service: Annotated[str, PathParam(description="a service name, e.g. candles")],
        action: Annotated[
            str,
            PathParam(description="what to do", json_schema_extra={"enum": list(ACTIONS)}),
        ],
    ) -> JSONResponse:
        handler = handlers.get(action)
        if handler is None:
            raise _Refused(404, f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
        path = f"{SERVICES}/{service}"
        result = ask(functools.partial(handler, path))
        return reply({"service": service, "action": action, "result": result})

    return app
