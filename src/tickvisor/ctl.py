"""``tickvisor ctl``: the admin HTTP API from a terminal.

An operator asks a running process how its services are doing and steers
them (pause, resume, restart, invalidate-cache, reset-breaker) without
writing curl lines or copying the bearer token around. It talks only HTTP,
so it works against a process on another host or in a container as well as
against one on this machine.

The token is found the way the server finds it (:mod:`tickvisor.admin.auth`):
``TICKVISOR_ADMIN_TOKEN``, then the config's ``admin.token``, then the file
the server wrote when it generated one (``admin.token_file``, else
``tickvisor-admin.token`` beside the SQLite database or in the working
folder). It is sent only as a bearer header and never printed; messages name
where it came from instead.

Exit codes follow the rest of the command line: 0 done, 1 the server
answered but refused or failed (no such service, an action that does not fit
the service's state, a tree that is not running), 2 nothing usable came back
(not running, unreachable, timed out, unauthorised, not the admin API) or
the command line was wrong. Results go to stdout, messages to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import requests
import yaml

from tickvisor.admin.app import ACTIONS
from tickvisor.admin.auth import TOKEN_ENV, default_token_file
from tickvisor.config import ConfigError, TickvisorConfig, load_config, parse_config

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "URL_ENV",
    "ClientToken",
    "CtlError",
    "add_ctl_parser",
    "admin_url",
    "cmd_ctl",
    "find_token",
    "main",
]

URL_ENV = "TICKVISOR_ADMIN_URL"
DEFAULT_URL = "http://127.0.0.1:8787"
#: Seconds per request. /health/services asks every service in turn, each ask
#: bounded by the server's own timeout (5 s), so this leaves room for a slow one.
DEFAULT_TIMEOUT = 10.0

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_UNREACHABLE = 2

_START_HINT = "start it with `tickvisor run --config FILE`, or pass --url"
_ACTION_HELP = {
    "pause": "stop a service's iterations until resumed (kept across restarts)",
    "resume": "lift an operator's pause",
    "restart": "replace a service with a fresh instance (a new generation)",
    "invalidate-cache": "make a service re-read its symbols at its next iteration",
    "reset-breaker": "close a service's circuit breaker now",
}
#: Columns of the status table: header, key in /health/services, formatter, right-aligned.
_Column = tuple[str, str, Callable[[Any], str], bool]


class CtlError(Exception):
    """What went wrong, worded for the operator, and the exit code it means."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ClientToken:
    """The token to present (None: none found) and, for messages, where it came from.

    ``where`` names the source (``TICKVISOR_ADMIN_TOKEN``, ``admin.token in
    FILE``, ``the token file FILE``) or, when none was found, says where it
    was looked for. The repr never shows the token.
    """

    token: str | None = field(repr=False)
    where: str
    problem: str | None = None


# --------------------------------------------------------------------------- the parser


def add_ctl_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: Sequence[argparse.ArgumentParser] = (),
) -> argparse.ArgumentParser:
    """Register ``ctl`` and its actions on ``subparsers``; every action takes ``parents``' options.

    Options sit on each action (``tickvisor ctl pause candles --url ...``),
    the way the usage line reads. ``--db`` is added unless a parent already
    defines it, so the command line's shared ``--db`` parent can be passed.
    """
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--url",
        default=None,
        metavar="URL",
        help=f"admin API (default: ${URL_ENV}, else admin.host/port of --config, "
        f"else {DEFAULT_URL})",
    )
    options.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="the config the server runs with: its admin section and database locate the "
        "admin API and the token",
    )
    options.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"per request (default {DEFAULT_TIMEOUT:g})",
    )
    options.add_argument("--json", action="store_true", help="print the server's JSON answer")

    ctl = subparsers.add_parser(
        "ctl",
        help="ask a running tickvisor for its status, or control its services",
        description="Talks to the admin HTTP API of a running `tickvisor run`. Exit codes: "
        "0 done; 1 the server refused (no such service, wrong state, tree down); "
        "2 not running, unreachable, unauthorised, or bad usage.",
    )
    ctl.set_defaults(handler=cmd_ctl)
    actions = ctl.add_subparsers(dest="ctl_action", required=True, metavar="ACTION")

    status = actions.add_parser(
        "status",
        parents=[*parents, options],
        help="each service's health as a table (or --json)",
    )
    status.add_argument("service", nargs="?", default=None, metavar="SERVICE")
    _add_db(status)
    status.set_defaults(handler=cmd_ctl)
    for action in ACTIONS:
        parser = actions.add_parser(
            action, parents=[*parents, options], help=_ACTION_HELP.get(action)
        )
        parser.add_argument("service", metavar="SERVICE", help="a service name, e.g. candles")
        _add_db(parser)
        parser.set_defaults(handler=cmd_ctl)
    return ctl


def _add_db(parser: argparse.ArgumentParser) -> None:
    with contextlib.suppress(argparse.ArgumentError):  # a parent already defines --db
        parser.add_argument(
            "--db",
            default=None,
            metavar="URL",
            help="the database the server uses (its SQLite file locates the token file)",
        )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tickvisor.ctl status`` runs ``tickvisor ctl status``, alone."""
    parser = argparse.ArgumentParser(prog="tickvisor")
    add_ctl_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["ctl", *(sys.argv[1:] if argv is None else argv)])
    return cmd_ctl(args)


# --------------------------------------------------------------------------- the command


def cmd_ctl(args: argparse.Namespace) -> int:
    """Run one ``ctl`` action; returns the exit code and prints why it is not 0."""
    try:
        if not args.timeout > 0:
            raise CtlError(f"--timeout must be > 0, got {args.timeout:g}", EXIT_UNREACHABLE)
        config = _load_admin_config(args.config) if args.config is not None else None
        url = admin_url(args.url, config, args.config)
        client = _Client(url, args.timeout)
        if args.ctl_action == "status":
            return _status(client, args.service, as_json=args.json)
        token = find_token(config, args.db or _config_db(config), config_file=args.config)
        return _control(client, token, args.service, args.ctl_action, as_json=args.json)
    except CtlError as exc:
        print(f"tickvisor ctl: {exc}", file=sys.stderr)
        return exc.code


def _status(client: _Client, service: str | None, *, as_json: bool) -> int:
    health = client.get("/health/services")
    services: dict[str, Any] = health.get("services") or {}
    if service is not None and service not in services:
        raise CtlError(_no_such_service(service, services), EXIT_REFUSED)
    try:
        tree: dict[str, Any] | None = client.get("/status")
    except CtlError:
        tree = None  # the services' health is what was asked; the tree only adds context
    if as_json:
        if service is not None:
            out: dict[str, Any] = {"service": service, **services[service]}
        else:
            out = {**health, "tree": tree}
        print(json.dumps(out, indent=2, sort_keys=False))
        return EXIT_OK
    shown = {service: services[service]} if service is not None else services
    print(render_status(client.url, health, shown, tree))
    return EXIT_OK


def _control(
    client: _Client, token: ClientToken, service: str, action: str, *, as_json: bool
) -> int:
    path = f"/control/{quote(service, safe='')}/{action}"
    try:
        body = client.post(path, token)
    except _HttpError as exc:
        names = _service_names(client) if exc.status == 404 else None
        if names is not None and service not in names:
            raise CtlError(_no_such_service(service, names), EXIT_REFUSED) from None
        if exc.status == 409:
            raise CtlError(f"cannot {action} {service}: {exc.detail}", EXIT_REFUSED) from None
        raise CtlError(exc.describe(client.url), EXIT_REFUSED) from None
    if as_json:
        print(json.dumps(body, indent=2))
    else:
        print(describe_result(service, action, body.get("result")))
    return EXIT_OK


def _no_such_service(service: str, services: Mapping[str, Any] | Sequence[str]) -> str:
    names = ", ".join(services) or "none running"
    return f"no service {service!r} (services: {names})"


def _service_names(client: _Client) -> list[str] | None:
    try:
        return list(client.get("/health/services").get("services") or {})
    except CtlError:
        return None


# --------------------------------------------------------------------------- where, and the token


def admin_url(
    url: str | None,
    config: TickvisorConfig | None,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """``--url``, else ``TICKVISOR_ADMIN_URL``, else the config's admin host and port, else 8787.

    A server listening on every address (``0.0.0.0``, ``::``) is reached on
    loopback; a bare ``host:port`` gets ``http://``.
    """
    env = os.environ if env is None else env
    chosen = url or env.get(URL_ENV, "").strip() or None
    if chosen is None and config is not None:
        admin = config.admin
        if admin.port == 0:
            raise CtlError(
                f"admin.port is 0 in {config_file}: the server picks a free port at start; "
                "pass --url with the one its admin.started log line names",
                EXIT_UNREACHABLE,
            )
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(admin.host, admin.host)
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        chosen = f"http://{host}:{admin.port}"
    chosen = (chosen or DEFAULT_URL).strip()
    if "://" not in chosen:
        chosen = f"http://{chosen}"
    parts = urlsplit(chosen)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CtlError(
            f"{chosen!r} is not an admin API URL; write it as http://HOST:PORT", EXIT_UNREACHABLE
        )
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise CtlError(
            f"{chosen!r} has a bad port; write http://HOST:PORT", EXIT_UNREACHABLE
        ) from None
    return chosen.rstrip("/")


def find_token(
    config: TickvisorConfig | None,
    db_url: str | None,
    *,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> ClientToken:
    """The token the server accepts, looked up in the server's own order.

    ``db_url`` is the database the server uses (``--db``, else the config's):
    a generated token is in ``admin.token_file``, else beside that SQLite
    file, else in the working folder (:func:`~tickvisor.admin.auth.default_token_file`).
    """
    env = os.environ if env is None else env
    from_env = env.get(TOKEN_ENV, "").strip()
    if from_env:
        return ClientToken(from_env, TOKEN_ENV)
    if config is not None and config.admin.token is not None:
        return ClientToken(
            config.admin.token.get_secret_value().strip(), f"admin.token in {config_file}"
        )
    path = (config.admin.token_file if config is not None else None) or default_token_file(db_url)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        unset = f"{TOKEN_ENV} is unset"
        if config_file is not None:
            unset += f", {config_file} sets no admin.token"
        return ClientToken(None, f"{unset} and there is no token file at {path}")
    except OSError as exc:
        return ClientToken(
            None,
            f"the token file {path}",
            problem=f"cannot read the token file {path}: {exc.strerror}; run as the user "
            f"tickvisor runs as, or set {TOKEN_ENV}",
        )
    if not token:
        return ClientToken(None, f"the token file {path} is empty")
    return ClientToken(token, f"the token file {path}")


def _load_admin_config(path: Path) -> TickvisorConfig:
    """Only the ``admin`` and ``database`` sections of ``path``, validated as ``run`` would.

    ``ctl`` runs in an operator's shell, which rarely has the service's
    secrets (``${SLACK_WEBHOOK_URL}``, ...) set: interpolating sections it
    never reads would fail for nothing. YAML errors get ``load_config``'s
    own message, with the line.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        data = None
    if not isinstance(data, dict):  # unreadable, not YAML, not a mapping: load_config says why
        try:
            return load_config(path)
        except ConfigError as exc:
            raise CtlError(str(exc), EXIT_UNREACHABLE) from None
    wanted = {k: v for k, v in data.items() if k in ("admin", "database")}
    try:
        return parse_config(
            yaml.safe_dump(wanted), source=str(path), base_dir=path.absolute().parent
        )
    except ConfigError as exc:
        raise CtlError(str(exc), EXIT_UNREACHABLE) from None


def _config_db(config: TickvisorConfig | None) -> str | None:
    return config.database.url if config is not None else None


# --------------------------------------------------------------------------- HTTP


class _HttpError(Exception):
    """The server answered with an error status; ``detail`` is its message."""

    def __init__(self, status: int, detail: str, path: str) -> None:
        super().__init__(detail)
        self.status, self.detail, self.path = status, detail, path

    def describe(self, url: str) -> str:
        if self.status == 503:
            return f"tickvisor at {url} cannot answer that now: {self.detail}"
        if self.status == 504:
            return f"tickvisor at {url} is running but {self.detail}"
        return f"{url}{self.path} answered HTTP {self.status}: {self.detail}"


class _Client:
    """One admin API: every request bounded by ``timeout``, every failure a :class:`CtlError`."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self.session = requests.Session()
        # No proxy from the environment (one meant for the internet must not
        # carry the admin token) and no ~/.netrc replacing the bearer header.
        self.session.trust_env = False

    def get(self, path: str) -> dict[str, Any]:
        try:
            return self._call("GET", path, None)
        except _HttpError as exc:
            raise CtlError(exc.describe(self.url), EXIT_REFUSED) from None

    def post(self, path: str, token: ClientToken) -> dict[str, Any]:
        """POST with the bearer token; 401 raises CtlError, other errors _HttpError."""
        return self._call("POST", path, token)

    def _call(self, method: str, path: str, token: ClientToken | None) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if token is not None and token.token is not None:
            if not token.token.isascii() or not token.token.isprintable():
                raise CtlError(
                    f"the admin token from {token.where} holds characters an HTTP header "
                    "cannot carry; a token is printable ASCII",
                    EXIT_UNREACHABLE,
                )
            headers["Authorization"] = f"Bearer {token.token}"
        try:
            response = self.session.request(
                method,
                self.url + path,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.exceptions.ConnectTimeout:
            raise CtlError(
                f"nothing answered at {self.url} within {self.timeout:g}s "
                f"(is the host right? {_START_HINT})",
                EXIT_UNREACHABLE,
            ) from None
        except requests.exceptions.ReadTimeout:
            raise CtlError(
                f"tickvisor at {self.url} took the request but did not answer within "
                f"{self.timeout:g}s; it may be overloaded or stuck (see its logs, or raise "
                "--timeout)",
                EXIT_UNREACHABLE,
            ) from None
        except requests.exceptions.SSLError as exc:
            raise CtlError(
                f"TLS with {self.url} failed: {_first_line(exc)}", EXIT_UNREACHABLE
            ) from None
        except requests.exceptions.ConnectionError as exc:
            text = str(exc)
            if "NameResolution" in text or "Name or service not known" in text:
                raise CtlError(
                    f"cannot resolve the host of {self.url}; check --url", EXIT_UNREACHABLE
                ) from None
            raise CtlError(
                f"tickvisor is not running at {self.url} ({_START_HINT})", EXIT_UNREACHABLE
            ) from None
        except requests.RequestException as exc:
            raise CtlError(
                f"cannot talk to {self.url}: {type(exc).__name__}", EXIT_UNREACHABLE
            ) from None
        return self._answer(response, path, token)

    def _answer(
        self, response: requests.Response, path: str, token: ClientToken | None
    ) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            kind = response.headers.get("content-type") or "no content type"
            raise CtlError(
                f"{self.url}{path} answered HTTP {response.status_code} ({kind}), not the "
                "tickvisor admin API's JSON; is --url right?",
                EXIT_UNREACHABLE,
            )
        if response.status_code == 401:
            raise CtlError(_unauthorised(self.url, token), EXIT_UNREACHABLE)
        if response.status_code >= 400:
            detail = body.get("detail")
            raise _HttpError(response.status_code, str(detail) if detail else response.reason, path)
        return body


def _unauthorised(url: str, token: ClientToken | None) -> str:
    fix = (
        f"set {TOKEN_ENV}, or pass the --config (and --db) the server runs with so the token "
        "file it wrote is found; a generated token changes at every start"
    )
    if token is None or token.token is None:
        if token is not None and token.problem:
            return f"unauthorised: the admin API at {url} needs a token, and {token.problem}"
        where = token.where if token is not None else f"{TOKEN_ENV} is unset"
        return f"unauthorised: no admin token found ({where}); {fix}"
    return f"unauthorised: the admin API at {url} refused the token from {token.where} ({fix})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


# --------------------------------------------------------------------------- rendering


def render_status(
    url: str,
    health: Mapping[str, Any],
    services: Mapping[str, Mapping[str, Any]],
    tree: Mapping[str, Any] | None,
) -> str:
    """The status as a person reads it: a headline, one aligned row per service, then why.

    Kept to plain text with no colours or box drawing, so it reads the same
    in a terminal, a pager, a ticket or an e-mail.
    """
    lines = [f"tickvisor at {url}: {health.get('status', 'unknown')}"]
    columns: list[_Column] = [
        ("SERVICE", "", str, False),
        ("STATUS", "status", _text, False),
        ("STATE", "state", _text, False),
        ("BREAKER", "breaker_state", _text, False),
        ("GEN", "generation", _text, True),
        ("RESTARTS", "restarts", _text, True),
        ("ITERATIONS", "iterations", _text, True),
        ("ERRORS", "errors", _text, True),
        ("ERROR RATE", "error_rate", _percent, True),
        ("RECENT", "recent_error_rate", _percent, True),
        ("CACHE AGE", "symbol_cache_age_seconds", _duration, True),
        ("UPTIME", "uptime_seconds", _duration, True),
    ]
    rows = [
        [name if not key else fmt(info.get(key)) for _, key, fmt, _ in columns]
        for name, info in services.items()
    ]
    if rows:
        lines += _table([c[0] for c in columns], rows, [c[3] for c in columns])
    else:
        lines.append("no services running")
    why: list[str] = []
    for name, info in services.items():
        if info.get("reasons"):
            why.append(f"{name}: {'; '.join(info['reasons'])}")
        last = info.get("last_error")
        if info.get("status") != "healthy" and isinstance(last, Mapping):
            why.append(f"{name}: last error {last.get('type')}: {last.get('message')}")
        if info.get("metrics_error"):
            why.append(f"{name}: metrics not read: {info['metrics_error']}")
    if not services:
        why += [str(r) for r in health.get("reasons") or ()]
    if why:
        lines.append("")
        lines += why
    others = _other_children(tree)
    if others:
        lines.append("")
        lines.append("tree: " + ", ".join(others))
    return "\n".join(lines)


def describe_result(service: str, action: str, result: Any) -> str:
    """One line saying what the action did, from the node or breaker the server returned."""
    node = result if isinstance(result, Mapping) else {}
    generation = node.get("generation")
    gen = f" (generation {generation})" if generation is not None else ""
    if action == "pause":
        return f"{service} paused{gen}; `tickvisor ctl resume {service}` lets it run again"
    if action == "resume":
        held = [who for who in node.get("paused_by") or () if who != "operator"]
        if held:
            return (
                f"{service} resumed by the operator{gen}, but still held by its "
                f"{' and '.join(held)} (state {node.get('state')})"
            )
        return f"{service} resumed{gen}: {node.get('state', 'running')}"
    if action == "restart":
        return f"{service} restarted{gen}: {node.get('state', 'running')}"
    if action == "invalidate-cache":
        return f"{service}: symbol cache invalidated; the next iteration re-reads its symbols"
    if action == "reset-breaker":
        return f"{service}: circuit breaker reset ({node.get('state', 'closed')})"
    return f"{service}: {action} done"


def _other_children(tree: Mapping[str, Any] | None) -> list[str]:
    """The root's children other than the services, which the table already shows."""
    if not tree:
        return []
    found = [f"root {tree.get('state')}"]
    for child in tree.get("children") or ():
        found.append(f"{child.get('name')} {child.get('state')}")
    return found


def _table(headers: list[str], rows: list[list[str]], right: list[bool]) -> list[str]:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        out = [
            cell.rjust(width) if align else cell.ljust(width)
            for cell, width, align in zip(cells, widths, right, strict=True)
        ]
        return "  ".join(out).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def _percent(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1%}"


def _duration(value: Any) -> str:
    if value is None:
        return "-"
    seconds = float(value)
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


if __name__ == "__main__":
    sys.exit(main())
