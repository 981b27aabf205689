"""``tickvisor ctl`` against a running admin API: real uvicorn, real HTTP, real actors.

Most cases run the command in-process (its output read with capsys) against
the tree of ``AdminRig``; two run it as a subprocess against a real
``tickvisor run`` process that generated its own token file, as an
operator would on the same machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import Engine

from actor_helpers import wait_for
from admin_helpers import TOKEN, AdminRig
from tickvisor import cli
from tickvisor.admin.auth import TOKEN_ENV, TOKEN_FILE_NAME, write_token_file
from tickvisor.clock import FakeClock, SteppedScheduler
from tickvisor.config import TickvisorConfig
from tickvisor.ctl import URL_ENV, CtlError, add_ctl_parser, admin_url, find_token
from tickvisor.messages import InjectFailures
from tickvisor.store import insert_ticks
from tickvisor.store.engine import open_database

BASE_TS = 1_704_067_200_000


def _cli_has_ctl() -> bool:
    """Once cli.py registers ``ctl``, the end-to-end cases run ``tickvisor ctl`` itself.

    The in-process cases build the same parser as cli.py but call the handler
    directly: ``cli.main`` would reconfigure the process's logging mid-session.
    """
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            cli._parser().parse_args(["ctl", "status"])
        except SystemExit:
            return False
    return True


CLI_HAS_CTL = _cli_has_ctl()


def ctl_parser() -> argparse.ArgumentParser:
    """The parser cli.py builds: the shared --log-* and --db parents on every action."""
    parser = argparse.ArgumentParser(prog="tickvisor")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-format", choices=["json", "console"], default=None)
    common.add_argument("--log-level", default=None)
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument("--db", metavar="URL", default=None)
    add_ctl_parser(parser.add_subparsers(dest="command", required=True), [common, db])
    return parser


Run = Callable[..., tuple[int, str, str]]
#: The tree runs in the test's process and logs to the same stdout as the command prints.
_LOG_LINE = re.compile(r'^(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d|\{"timestamp": )')


def _without_logs(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not _LOG_LINE.match(line))


@pytest.fixture
def ctl(capsys: pytest.CaptureFixture[str]) -> Run:
    """``ctl("pause", "candles", ...)`` -> (exit code, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        args = ctl_parser().parse_args(["ctl", *argv])
        code = args.handler(args)
        out, err = capsys.readouterr()
        return code, _without_logs(out), _without_logs(err)

    return run


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No token or URL from the developer's shell, no token file found in the repository."""
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv(URL_ENV, raising=False)
    monkeypatch.chdir(tmp_path)


def two_services() -> TickvisorConfig:
    return TickvisorConfig.model_validate(
        {
            "supervisor": {"backoff": {"max_seconds": 0}, "check_interval_seconds": 1},
            "services": {
                "candles": {"interval_seconds": 1, "breaker": {"failure_threshold": 2}},
                "depth": {"interval_seconds": 1},
            },
            "alerts": {"group_wait_seconds": 3600},
        }
    )


@contextlib.contextmanager
def running_rig(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler
) -> Iterator[AdminRig]:
    rows = [
        {"symbol": "EUR/USD", "ts_ms": BASE_TS + i * 7_000, "bid": 1.1, "ask": 1.1002, "volume": 1}
        for i in range(20)
    ]
    with engine.begin() as conn:
        insert_ticks(conn, rows)
    rig = AdminRig(two_services(), engine=engine, clock=clock, scheduler=scheduler)
    try:
        wait_for(lambda: rig.iterations() >= 1, "the first iteration")
        wait_for(lambda: rig.iterations("depth") >= 1, "the first depth iteration")
        yield rig
    finally:
        rig.close()


@pytest.fixture
def rig(tmp_path: Path, clock: FakeClock, scheduler: SteppedScheduler) -> Iterator[AdminRig]:
    """On SQLite: ctl only speaks HTTP, so the database behind the tree is beside the point."""
    engine = open_database(f"sqlite:///{tmp_path / 'ctl.db'}")
    try:
        with running_rig(engine, clock, scheduler) as rig:
            yield rig
    finally:
        engine.dispose()


@pytest.fixture
def db_rig(engine: Engine, clock: FakeClock, scheduler: SteppedScheduler) -> Iterator[AdminRig]:
    """On each database of the ``engine`` fixture (PostgreSQL too, when configured)."""
    with running_rig(engine, clock, scheduler) as rig:
        yield rig


@pytest.fixture
def authorised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- status


def test_status_is_an_aligned_table(db_rig: AdminRig, ctl: Run) -> None:
    rig = db_rig
    rig.step(times=2)
    code, out, err = ctl("status", "--url", rig.server.url)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"tickvisor at {rig.server.url}: healthy"
    header, candles, depth = lines[1:4]
    assert header.split() == [
        "SERVICE",
        "STATUS",
        "STATE",
        "BREAKER",
        "GEN",
        "RESTARTS",
        "ITERATIONS",
        "ERRORS",
        "ERROR",
        "RATE",
        "RECENT",
        "CACHE",
        "AGE",
        "UPTIME",
    ]
    assert candles.split()[:8] == ["candles", "healthy", "running", "closed", "1", "0", "3", "0"]
    assert depth.split()[:4] == ["depth", "healthy", "running", "closed"]
    # Aligned: every column starts where its header does (left) or ends where it ends (right).
    assert candles.index("healthy") == header.index("STATUS") == depth.index("healthy")
    end = header.index("ITERATIONS") + len("ITERATIONS")
    assert candles[:end].endswith(" 3")
    assert "0.0%" in candles
    assert lines[-1] == "tree: root running, alerts running, services running"


def test_status_json_is_the_servers_answer_plus_the_tree(rig: AdminRig, ctl: Run) -> None:
    code, out, _ = ctl("status", "--url", rig.server.url, "--json")
    assert code == 0
    body = json.loads(out)
    assert body["status"] == "healthy"
    assert set(body["services"]) == {"candles", "depth"}
    assert body["services"]["candles"]["iterations"] == rig.metrics()["iteration_count"]
    assert body["tree"]["name"] == "root"

    code, out, _ = ctl("status", "candles", "--url", rig.server.url, "--json")
    one = json.loads(out)
    assert (code, one["service"], one["status"]) == (0, "candles", "healthy")


def test_status_of_one_service_and_of_an_unknown_one(rig: AdminRig, ctl: Run) -> None:
    code, out, _ = ctl("status", "depth", "--url", rig.server.url)
    assert code == 0
    rows = out.splitlines()[2:]
    assert rows[0].startswith("depth ") and not any(r.startswith("candles") for r in rows)

    code, out, err = ctl("status", "nosuch", "--url", rig.server.url)
    assert (code, out) == (1, "")
    assert err.strip() == "tickvisor ctl: no service 'nosuch' (services: candles, depth)"


def test_status_says_why_a_service_is_not_healthy(rig: AdminRig, ctl: Run) -> None:
    rig.control.send("services/candles", InjectFailures(2, "disk on fire"))
    rig.step(times=2)  # threshold 2: the breaker opens, the supervisor pauses candles
    rig.wait_state("paused")
    code, out, _ = ctl("status", "--url", rig.server.url)
    assert code == 0
    assert out.splitlines()[0].endswith(": degraded")
    candles = next(line for line in out.splitlines() if line.startswith("candles "))
    assert candles.split()[:4] == ["candles", "degraded", "paused", "open"]
    assert "candles: held by its supervisor while its breaker is open; circuit breaker open" in out
    assert "candles: last error InjectedFailure: injected failure" in out


def test_a_stopped_tree_is_a_refusal_not_a_crash(rig: AdminRig, ctl: Run) -> None:
    rig.root.stop(block=True, timeout=10)
    code, out, err = ctl("status", "--url", rig.server.url)
    assert (code, out) == (1, "")
    assert "cannot answer that now: the supervision tree is not running" in err


# --------------------------------------------------------------------------- control


def test_pause_and_resume_round_trip_shows_in_status(
    db_rig: AdminRig, ctl: Run, authorised: None
) -> None:
    rig = db_rig
    url = rig.server.url
    code, out, err = ctl("pause", "candles", "--url", url)
    assert (code, err) == (0, "")
    assert out.strip() == (
        "candles paused (generation 1); `tickvisor ctl resume candles` lets it run again"
    )
    _, table, _ = ctl("status", "--url", url)
    row = next(line for line in table.splitlines() if line.startswith("candles "))
    assert row.split()[1:3] == ["paused", "paused"]
    assert "candles: paused by an operator" in table
    assert rig.http.get("/ready").status_code == 503

    code, out, _ = ctl("resume", "candles", "--url", url)
    assert (code, out.strip()) == (0, "candles resumed (generation 1): running")
    _, body, _ = ctl("status", "--url", url, "--json")
    assert json.loads(body)["services"]["candles"]["status"] == "healthy"
    assert rig.http.get("/ready").status_code == 200


def test_every_action_says_what_happened(rig: AdminRig, ctl: Run, authorised: None) -> None:
    url = rig.server.url
    assert ctl("restart", "candles", "--url", url)[:2] == (
        0,
        "candles restarted (generation 2): running\n",
    )
    assert ctl("invalidate-cache", "depth", "--url", url)[:2] == (
        0,
        "depth: symbol cache invalidated; the next iteration re-reads its symbols\n",
    )
    assert ctl("reset-breaker", "depth", "--url", url)[:2] == (
        0,
        "depth: circuit breaker reset (closed)\n",
    )
    code, out, _ = ctl("pause", "depth", "--url", url, "--json")
    assert code == 0
    assert json.loads(out)["result"]["paused_by"] == ["operator"]


def test_an_action_that_does_not_fit_is_the_servers_reason(
    rig: AdminRig, ctl: Run, authorised: None
) -> None:
    code, out, err = ctl("resume", "candles", "--url", rig.server.url)
    assert (code, out) == (1, "")
    assert err.strip() == (
        "tickvisor ctl: cannot resume candles: root/services/candles is not paused by an operator"
    )


def test_an_unknown_service_names_the_ones_there_are(
    rig: AdminRig, ctl: Run, authorised: None
) -> None:
    for name in ("nosuch", "a/b"):
        code, out, err = ctl("pause", name, "--url", rig.server.url)
        assert (code, out) == (1, "")
        assert err.strip() == f"tickvisor ctl: no service {name!r} (services: candles, depth)"


# --------------------------------------------------------------------------- the token


def test_a_wrong_token_is_unauthorised_and_never_printed(
    rig: AdminRig, ctl: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "wrong-token-of-the-right-length-x"
    monkeypatch.setenv(TOKEN_ENV, wrong)
    code, out, err = ctl("pause", "candles", "--url", rig.server.url)
    assert (code, out) == (2, "")
    assert err.startswith(
        f"tickvisor ctl: unauthorised: the admin API at {rig.server.url} refused the token "
        f"from {TOKEN_ENV} (set {TOKEN_ENV}, or pass the --config"
    )
    assert wrong not in err and TOKEN not in err
    assert rig.metrics()["paused"] is False


def test_no_token_anywhere_says_where_it_looked(rig: AdminRig, ctl: Run, tmp_path: Path) -> None:
    code, _, err = ctl("pause", "candles", "--url", rig.server.url)
    assert code == 2
    assert "unauthorised: no admin token found" in err
    assert str(tmp_path / TOKEN_FILE_NAME) in err  # the working folder: the default database's


def test_the_token_file_next_to_the_sqlite_database_is_found(
    rig: AdminRig, ctl: Run, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_token_file(data / TOKEN_FILE_NAME, TOKEN)  # as `run --db sqlite:///data/ticks.db` does
    code, out, err = ctl(
        "pause", "candles", "--url", rig.server.url, "--db", f"sqlite:///{data / 'ticks.db'}"
    )
    assert (code, err) == (0, "")
    assert out.startswith("candles paused")
    assert TOKEN not in out


def test_the_config_gives_the_url_and_the_token_file(
    rig: AdminRig, ctl: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only admin and database are read: a secret the operator's shell lacks is no obstacle."""
    (tmp_path / "secret").mkdir(mode=0o700)
    write_token_file(tmp_path / "secret" / "admin.token", TOKEN)
    config = tmp_path / "tickvisor.yaml"
    config.write_text(
        "database:\n  url: sqlite:///elsewhere.db\n"
        "alerts:\n  slack:\n    webhook_url: ${SLACK_WEBHOOK_URL_NOT_SET_HERE}\n"
        f"admin:\n  port: {rig.server.port}\n  token_file: secret/admin.token\n"
    )
    code, out, err = ctl("invalidate-cache", "candles", "--config", str(config))
    assert (code, err) == (0, "")
    assert out.startswith("candles: symbol cache invalidated")

    # admin.token in the config; the environment still wins over it, as in the server.
    config.write_text(f"admin:\n  port: {rig.server.port}\n  token: {TOKEN}\n")
    assert ctl("reset-breaker", "candles", "--config", str(config))[0] == 0
    monkeypatch.setenv(TOKEN_ENV, "x" * 20)
    code, _, err = ctl("reset-breaker", "candles", "--config", str(config))
    assert code == 2 and f"refused the token from {TOKEN_ENV}" in err


def test_a_bad_config_is_a_usage_error(ctl: Run, tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("admin:\n  port: 99999\n")
    code, _, err = ctl("status", "--config", str(config))
    assert code == 2 and "bad.yaml" in err and "admin.port" in err
    config.write_text("admin: [\n")
    code, _, err = ctl("status", "--config", str(config))
    assert code == 2 and "bad.yaml:" in err and "Traceback" not in err
    code, _, err = ctl("status", "--config", str(tmp_path / "missing.yaml"))
    assert code == 2 and "config file not found" in err


def test_find_token_follows_the_servers_order(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'x.db'}"
    write_token_file(tmp_path / TOKEN_FILE_NAME, "f" * 24)
    configured = TickvisorConfig.model_validate({"admin": {"token": "c" * 24}})
    assert find_token(configured, db, env={TOKEN_ENV: "e" * 24}).token == "e" * 24
    assert find_token(configured, db, env={}).token == "c" * 24
    from_file = find_token(None, db, env={})
    assert (from_file.token, from_file.where) == (
        "f" * 24,
        f"the token file {tmp_path}/{TOKEN_FILE_NAME}",
    )
    assert "f" * 24 not in repr(from_file)
    (tmp_path / TOKEN_FILE_NAME).chmod(0)
    if os.geteuid() != 0:  # root reads any file
        unreadable = find_token(None, db, env={})
        assert unreadable.token is None and "cannot read the token file" in str(unreadable.problem)


# --------------------------------------------------------------------------- unreachable


def test_not_running_is_one_clear_line(ctl: Run, authorised: None) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for argv in (("status",), ("pause", "candles")):
        code, out, err = ctl(*argv, "--url", url)
        assert (code, out) == (2, "")
        assert err == (
            f"tickvisor ctl: tickvisor is not running at {url} "
            "(start it with `tickvisor run --config FILE`, or pass --url)\n"
        )


def test_the_url_from_the_environment(ctl: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv(URL_ENV, f"127.0.0.1:{port}")
    code, _, err = ctl("status")
    assert code == 2 and f"not running at http://127.0.0.1:{port} " in err


def test_a_server_that_never_answers_times_out(ctl: Run) -> None:
    with socket.socket() as silent:  # listens, never accepts: the connection waits in the backlog
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        code, _, err = ctl("status", "--url", url, "--timeout", "0.3")
    assert time.monotonic() - started < 5
    assert code == 2
    assert f"tickvisor at {url} took the request but did not answer within 0.3s" in err


def test_something_else_on_the_port_is_named_as_such(ctl: Run) -> None:
    class Html(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html>hello</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Html)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        code, _, err = ctl("status", "--url", url)
    finally:
        server.shutdown()
        server.server_close()
    assert code == 2
    assert "answered HTTP 200 (text/html), not the tickvisor admin API's JSON" in err


def test_admin_url_resolution() -> None:
    def config(**admin: Any) -> TickvisorConfig:
        return TickvisorConfig.model_validate({"admin": admin})

    assert admin_url(None, None, env={}) == "http://127.0.0.1:8787"
    assert admin_url(None, None, env={URL_ENV: "http://h:1/"}) == "http://h:1"
    assert admin_url("h:2", None, env={URL_ENV: "http://h:1"}) == "http://h:2"
    assert admin_url(None, config(port=9000), env={}) == "http://127.0.0.1:9000"
    assert admin_url(None, config(host="0.0.0.0", port=1), env={}) == "http://127.0.0.1:1"
    assert admin_url(None, config(host="::", port=1), env={}) == "http://[::1]:1"
    assert admin_url(None, config(host="fd00::5", port=1), env={}) == "http://[fd00::5]:1"
    with pytest.raises(CtlError, match=r"admin\.port is 0"):
        admin_url(None, config(port=0), env={})
    for bad in ("ftp://h:1", "http://", "http://h:port"):
        with pytest.raises(CtlError) as info:
            admin_url(bad, None, env={})
        assert info.value.code == 2


def test_usage_errors_exit_2(ctl: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ctl("status", "--timeout", "0")[0] == 2
    monkeypatch.setenv(TOKEN_ENV, "tökentökentökentöken")  # never reaches a header
    code, _, err = ctl("pause", "candles", "--url", f"http://127.0.0.1:{free_port()}")
    assert code == 2 and "characters an HTTP header cannot carry" in err
    assert "tökentöken" not in err
    parser = ctl_parser()
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit) as info:
        parser.parse_args(["ctl", "pause"])  # SERVICE missing
    assert info.value.code == 2


# --------------------------------------------------------------------------- end to end


class RunningTickvisor:
    """``tickvisor run`` in a subprocess; ``url`` from its ``admin.started`` log line."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.db = f"sqlite:///{folder / 'ticks.db'}"
        config = folder / "tickvisor.yaml"
        config.write_text(
            "feed:\n  enabled: true\n  interval_seconds: 0.2\n"
            "services:\n  candles:\n    interval_seconds: 0.5\n"
        )
        env = {k: v for k, v in os.environ.items() if k not in (TOKEN_ENV, URL_ENV)}
        self.proc = subprocess.Popen(
            [*TICKVISOR, "run", "--config", str(config), "--db", self.db, "--admin-port", "0"],
            cwd=folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        threading.Thread(target=lambda: [lines.put(x) for x in stdout], daemon=True).start()
        deadline = time.monotonic() + 30
        self.url = ""
        while not self.url:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise AssertionError("tickvisor run never logged admin.started") from None
            event = json.loads(line)
            if event["event"] == "admin.started":
                self.url = event["url"]
                assert event["token_file"] == str(folder / TOKEN_FILE_NAME)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


TICKVISOR = [sys.executable, "-m", "tickvisor.cli"]
CTL = [*TICKVISOR, "ctl"] if CLI_HAS_CTL else [sys.executable, "-m", "tickvisor.ctl"]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningTickvisor]:
    process = RunningTickvisor(tmp_path_factory.mktemp("run"))
    try:
        yield process
    finally:
        assert process.stop() == 0


def ctl_process(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in (TOKEN_ENV, URL_ENV)}
    return subprocess.run(
        [*CTL, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_end_to_end_status_and_pause_with_the_generated_token(
    running: RunningTickvisor, tmp_path: Path
) -> None:
    status = ctl_process("status", "--url", running.url, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith(f"tickvisor at {running.url}: ")
    assert "candles " in status.stdout and "feed running" in status.stdout

    # From another folder, --db locates the token file `run` wrote beside the database.
    token = (running.folder / TOKEN_FILE_NAME).read_text().strip()
    paused = ctl_process("pause", "candles", "--url", running.url, "--db", running.db, cwd=tmp_path)
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.startswith("candles paused")
    after = requests.get(f"{running.url}/health/services", timeout=10).json()
    assert after["services"]["candles"]["status"] == "paused"
    resumed = requests.post(
        f"{running.url}/control/candles/resume",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert resumed.status_code == 200
    for result in (status, paused):
        assert token not in result.stdout + result.stderr


def test_end_to_end_without_the_token_is_unauthorised(
    running: RunningTickvisor, tmp_path: Path
) -> None:
    refused = ctl_process("restart", "candles", "--url", running.url, cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stdout == ""
    assert refused.stderr.startswith("tickvisor ctl: unauthorised: no admin token found")
    assert "Traceback" not in refused.stderr
