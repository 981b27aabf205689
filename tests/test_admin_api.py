"""The admin HTTP API against a running tree: real uvicorn, real HTTP, real actors.

Each tree runs on the fake clock and stepped scheduler (iterations happen
when a test steps time), with a candle service on the ``engine`` fixture's
database (SQLite and PostgreSQL). Metrics are read from ``GET /metrics`` with
prometheus_client's own parser; the process keeps one registry, so counts
are compared before and after what a test does.
"""

from __future__ import annotations

import io
import json
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pykka
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from sqlalchemy import Engine

from actor_helpers import wait_for
from admin_helpers import ASK, TOKEN, AdminRig, sample
from tickvisor.admin import (
    TOKEN_ENV,
    AdminStartError,
    AdminToken,
    AdminTokenError,
    resolve_token,
    start_admin,
)
from tickvisor.admin.auth import TOKEN_FILE_NAME, token_matches
from tickvisor.admin.health import overall_status, readiness_problems, service_health
from tickvisor.admin.redact import Redactor, config_secrets
from tickvisor.alerts.channel_actor import ChannelActor
from tickvisor.alerts.channels import SlackChannel
from tickvisor.alerts.notification import AlertLine, Notification
from tickvisor.alerts.outbox import Outbox
from tickvisor.clock import FakeClock, RealClock, SteppedScheduler
from tickvisor.config import AlertDeliveryConfig, TickvisorConfig
from tickvisor.logs import configure_logging
from tickvisor.messages import DeliverNotifications, InjectFailures, WhereIs
from tickvisor.store import insert_ticks
from tickvisor.store.engine import open_database
from tickvisor.supervision.tree import build_tree
from tickvisor.testing import FakeSlack, Reply

BASE_TS = 1_704_067_200_000
ACTIONS = ["pause", "resume", "restart", "invalidate-cache", "reset-breaker"]
WEBHOOK_SECRET = "whsec_c2VjcmV0LXNlY3JldA=="
SLACK_SECRET = "T0SECRET/B0SECRET/w3bh00k-s3cr3t-d0-n0t-l3ak"


def make_config(**candles: Any) -> TickvisorConfig:
    """One candle service that discovers its symbols (so they go through its cache)."""
    return TickvisorConfig.model_validate(
        {
            "supervisor": {"backoff": {"max_seconds": 0}, "check_interval_seconds": 1},
            "services": {
                "candles": {
                    "interval_seconds": 1,
                    "breaker": {"failure_threshold": 2, "timeout": 30},
                    **candles,
                }
            },
            # Nothing is flushed to a channel within a test's few fake seconds.
            "alerts": {"group_wait_seconds": 3600},
        }
    )


def add_ticks(engine: Engine, symbol: str = "EUR/USD") -> None:
    rows = [
        {"symbol": symbol, "ts_ms": BASE_TS + i * 7_000, "bid": 1.1, "ask": 1.1002, "volume": 1.0}
        for i in range(20)
    ]
    with engine.begin() as conn:
        insert_ticks(conn, rows)


@pytest.fixture
def make_rig(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler
) -> Iterator[Callable[..., AdminRig]]:
    rigs: list[AdminRig] = []

    def make(config: TickvisorConfig | None = None, **candles: Any) -> AdminRig:
        add_ticks(engine)
        rig = AdminRig(
            config or make_config(**candles), engine=engine, clock=clock, scheduler=scheduler
        )
        rigs.append(rig)
        wait_for(lambda: rig.iterations() >= 1, "the first iteration")
        return rig

    yield make
    for rig in rigs:
        rig.close()


@pytest.fixture
def rig(make_rig: Callable[..., AdminRig]) -> AdminRig:
    return make_rig()


# --------------------------------------------------------------------------- health, ready


def test_health_is_200_while_the_root_runs_and_503_once_it_stopped(rig: AdminRig) -> None:
    response = rig.http.get("/health")
    assert (response.status_code, response.json()["status"]) == (200, "ok")

    rig.root.stop(block=True, timeout=ASK)
    response = rig.http.get("/health")
    assert (response.status_code, response.json()["status"]) == (503, "down")
    assert rig.http.get("/ready").status_code == 503
    for path in ("/status", "/health/services"):
        gone = rig.http.get(path)
        assert gone.status_code == 503, (path, gone.text)
        assert "not running" in gone.json()["detail"]


def test_ready_is_503_naming_a_paused_service_until_it_is_resumed(rig: AdminRig) -> None:
    assert rig.http.get("/ready").json() == {"ready": True, "reasons": []}

    rig.control.pause("services/candles")
    response = rig.http.get("/ready")
    assert response.status_code == 503
    assert response.json()["reasons"] == [{"service": "candles", "reason": "paused by operator"}]

    rig.control.resume("services/candles")
    assert rig.http.get("/ready").status_code == 200


def test_an_open_breaker_makes_the_service_degraded_and_not_ready(rig: AdminRig) -> None:
    before = rig.scrape()
    rig.control.send("services/candles", InjectFailures(2, "test"))
    rig.step(times=2)  # threshold 2: the breaker opens, the supervisor pauses the service
    rig.wait_state("paused")

    ready = rig.http.get("/ready")
    assert ready.status_code == 503
    reasons = ready.json()["reasons"]
    assert {"service": "candles", "reason": "paused by breaker"} in reasons
    assert {"service": "candles", "reason": "circuit breaker open"} in reasons

    health = rig.http.get("/health/services").json()
    candles = health["services"]["candles"]
    assert health["status"] == "degraded"
    assert candles["status"] == "degraded"
    assert "circuit breaker open" in candles["reasons"]
    assert candles["breaker"]["state"] == "open"
    assert candles["errors"] >= 2 and candles["last_error"]["type"] == "InjectedFailure"

    after = rig.scrape()
    opened = {"service": "candles", "to_state": "open"}
    assert sample(after, "tickvisor_breaker_transitions_total", **opened) == (
        sample(before, "tickvisor_breaker_transitions_total", **opened) + 1
    )
    assert sample(after, "tickvisor_breaker_state", service="candles") == 2.0
    assert sample(after, "tickvisor_service_errors_total", service="candles") == (
        sample(before, "tickvisor_service_errors_total", service="candles") + 2
    )

    # An operator resets the breaker: closed again, resumed, ready.
    reset = rig.http.post("/control/candles/reset-breaker", headers=rig.auth)
    assert reset.status_code == 200 and reset.json()["result"]["state"] == "closed"
    rig.wait_state("running")
    assert rig.http.get("/ready").status_code == 200
    closed = {"service": "candles", "to_state": "closed"}
    assert rig.value("tickvisor_breaker_transitions_total", **closed) == (
        sample(before, "tickvisor_breaker_transitions_total", **closed) + 1
    )
    assert rig.value("tickvisor_breaker_state", service="candles") == 0.0


def test_a_service_that_only_fails_is_degraded_though_its_breaker_stays_closed(
    make_rig: Callable[..., AdminRig],
) -> None:
    rig = make_rig(on_breaker_open="ignore", breaker={"failure_threshold": 1000})
    rig.control.send("services/candles", InjectFailures(100, "test"))
    rig.step(times=4)

    candles = rig.http.get("/health/services").json()["services"]["candles"]
    assert candles["state"] == "running" and candles["breaker_state"] == "closed"
    assert candles["status"] == "degraded"
    assert candles["recent_error_rate"] == pytest.approx(4 / 5)  # 4 failures after 1 success
    assert any("of the last 5 iterations failed" in r for r in candles["reasons"])
    assert candles["error_rate"] == pytest.approx(4 / 5)
    # Still running with a closed breaker: the supervisor alone calls it ready.
    assert rig.http.get("/ready").status_code == 200


def test_health_services_reports_each_service(rig: AdminRig) -> None:
    rig.step(times=2)
    body = rig.http.get("/health/services").json()
    assert body["status"] == "healthy" and body["reasons"] == []
    candles = body["services"]["candles"]
    assert candles["status"] == "healthy"
    assert candles["iterations"] == 3 and candles["errors"] == 0
    assert candles["error_rate"] == 0.0
    assert candles["breaker"]["state"] == "closed"
    assert candles["symbol_cache_age_seconds"] == pytest.approx(2.0)

    rig.control.pause("services/candles")
    paused = rig.http.get("/health/services").json()
    assert paused["services"]["candles"]["status"] == "paused"
    assert paused["status"] == "degraded"

    rig.control.stop("services/candles")
    stopped = rig.http.get("/health/services").json()
    assert stopped["services"]["candles"]["status"] == "stopped"
    assert stopped["services"]["candles"]["metrics_error"] is None
    assert stopped["status"] == "stopped"


def test_status_is_the_supervision_tree(rig: AdminRig) -> None:
    tree = rig.http.get("/status").json()
    assert tree["name"] == "root" and tree["state"] == "running"
    services = next(c for c in tree["children"] if c["name"] == "services")
    assert [c["path"] for c in services["children"]] == ["root/services/candles"]
    assert services["children"][0]["state"] == "running"


# --------------------------------------------------------------------------- metrics


def test_metrics_count_what_happened(rig: AdminRig) -> None:
    names = rig.families()
    for family in (
        "tickvisor_service_iterations",
        "tickvisor_service_errors",
        "tickvisor_iteration_duration_seconds",
        "tickvisor_breaker_state",
        "tickvisor_breaker_transitions",
        "tickvisor_symbol_cache_hits",
        "tickvisor_symbol_cache_misses",
        "tickvisor_symbol_cache_age_seconds",
        "tickvisor_child_restarts",
        "tickvisor_alerts_sent",
        "tickvisor_alerts_failed",
        "tickvisor_alerts_dead_lettered",
        "tickvisor_alert_outbox_pending",
        "tickvisor_candle_lag_seconds",
    ):
        assert family in names, family

    svc = {"service": "candles"}
    before = rig.scrape()
    rig.step(times=3)
    after = rig.scrape()

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("tickvisor_service_iterations_total", **svc) == 3
    assert delta("tickvisor_iteration_duration_seconds_count", **svc) == 3
    assert delta("tickvisor_service_errors_total", **svc) == 0
    # Symbols loaded at the first iteration; the next three are cache hits.
    assert delta("tickvisor_symbol_cache_hits_total", **svc) == 3
    assert delta("tickvisor_symbol_cache_misses_total", **svc) == 0
    assert sample(after, "tickvisor_symbol_cache_age_seconds", **svc) == pytest.approx(3.0)

    # invalidate-cache: the next lookup misses and reloads.
    assert rig.http.post("/control/candles/invalidate-cache", headers=rig.auth).status_code == 200
    rig.step()
    assert rig.value("tickvisor_symbol_cache_misses_total", **svc) == (
        sample(after, "tickvisor_symbol_cache_misses_total", **svc) + 1
    )
    assert rig.value("tickvisor_symbol_cache_age_seconds", **svc) == pytest.approx(0.0)

    # A restart is counted, and the cache counters do not go back with the new instance.
    restarts = {"supervisor": "root/services", "child": "candles"}
    hits = rig.value("tickvisor_symbol_cache_hits_total", **svc)
    response = rig.http.post("/control/candles/restart", headers=rig.auth)
    assert response.status_code == 200 and response.json()["result"]["generation"] == 2
    restarted = rig.scrape()
    assert sample(restarted, "tickvisor_child_restarts_total", **restarts) == (
        sample(before, "tickvisor_child_restarts_total", **restarts) + 1
    )
    assert sample(restarted, "tickvisor_symbol_cache_hits_total", **svc) >= hits
    assert sample(restarted, "tickvisor_breaker_state", **svc) == 0.0

    # The outbox gauge comes from the database: the restart's alert waits in its group.
    assert sample(restarted, "tickvisor_alert_outbox_pending") == 0
    wait_for(
        lambda: rig.value("tickvisor_alert_outbox_alerts_waiting") >= 1, "the alert in the outbox"
    )


def test_candle_lag_is_set_by_the_service(rig: AdminRig) -> None:
    """``observe_lag`` is the hook a pass calls with each symbol's measured lag."""
    ref: pykka.ActorRef[Any] = rig.control.send("services", WhereIs("candles"))
    ref.proxy().observe_lag("EUR/USD", 2.5).get(timeout=ASK)
    lag = {"service": "candles", "symbol": "EUR/USD"}
    assert rig.value("tickvisor_candle_lag_seconds", **lag) == 2.5


def notification(id_: str) -> Notification:
    line = AlertLine(id=id_, kind="breaker.transition", severity="critical", at=1.0, text="t")
    return Notification(
        id=id_,
        group_key="breaker:candles",
        service="candles",
        severity="critical",
        kind="breaker.transition",
        title="candles breaker opened",
        text="test",
        at=1.0,
        alerts=(line,),
    )


@pytest.mark.parametrize(
    ("reply", "counter"),
    [
        (None, "tickvisor_alerts_sent_total"),
        (Reply(500, "boom"), "tickvisor_alerts_failed_total"),
        (Reply(400, "invalid_payload"), "tickvisor_alerts_dead_lettered_total"),
    ],
)
def test_alert_deliveries_are_counted_by_their_channel(
    rig: AdminRig, reply: Reply | None, counter: str
) -> None:
    with FakeSlack(default=reply or "ok") as slack:
        before = rig.value(counter, channel="slack")
        channel = ChannelActor.start(
            SlackChannel(slack.url, timeout=1.0),
            Outbox(rig.engine),
            clock=RealClock(),
            delivery=AlertDeliveryConfig(attempts_per_try=1, try_seconds=1.0),
            closing=threading.Event(),
        )
        try:
            channel.tell(DeliverNotifications((notification(f"n-{counter}"),)))
            wait_for(lambda: rig.value(counter, channel="slack") == before + 1, counter)
        finally:
            channel.stop(block=True, timeout=ASK)
        assert len(slack.requests) == 1


# --------------------------------------------------------------------------- control


@pytest.mark.parametrize("action", ACTIONS)
def test_every_control_route_needs_the_token(rig: AdminRig, action: str) -> None:
    path = f"/control/candles/{action}"
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-of-the-right-length!"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ):
        refused = rig.http.post(path, headers=headers)
        assert refused.status_code == 401, (headers, refused.text)
        assert refused.headers["www-authenticate"] == "Bearer"
        assert TOKEN not in refused.text
    if action == "resume":
        rig.control.pause("services/candles")
    accepted = rig.http.post(path, headers=rig.auth)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["service"] == "candles" and accepted.json()["action"] == action


def test_control_answers_what_it_did(rig: AdminRig) -> None:
    paused = rig.http.post("/control/candles/pause", headers=rig.auth).json()
    assert paused["result"]["state"] == "paused" and paused["result"]["paused_by"] == ["operator"]
    assert rig.metrics()["paused"] is True
    resumed = rig.http.post("/control/candles/resume", headers=rig.auth).json()
    assert resumed["result"]["state"] == "running"


def test_unknown_service_or_action_is_404(rig: AdminRig) -> None:
    for path in ("/control/nosuch/pause", "/control/nosuch/reset-breaker", "/control/candles/fly"):
        response = rig.http.post(path, headers=rig.auth)
        assert response.status_code == 404, (path, response.text)
    assert "nosuch" in rig.http.post("/control/nosuch/pause", headers=rig.auth).json()["detail"]
    # Unauthenticated, nothing is revealed about what exists.
    assert rig.http.post("/control/nosuch/pause").status_code == 401


def test_an_action_that_does_not_fit_the_state_is_409(rig: AdminRig) -> None:
    def post(action: str) -> int:
        return rig.http.post(f"/control/candles/{action}", headers=rig.auth).status_code

    assert post("resume") == 409  # not paused
    assert post("pause") == 200
    assert post("pause") == 409  # already paused
    assert post("resume") == 200

    rig.control.stop("services/candles")
    for action in ("pause", "resume", "invalidate-cache", "reset-breaker"):
        response = rig.http.post(f"/control/candles/{action}", headers=rig.auth)
        assert response.status_code == 409, (action, response.text)
        assert "candles" in response.json()["detail"]
    assert post("restart") == 200  # a stopped service can be restarted
    rig.wait_state("running")


# --------------------------------------------------------------------------- the token


def test_the_token_comes_from_the_environment_then_the_config(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    configured = TickvisorConfig.model_validate({"admin": {"token": "c" * 24}})
    env_token = "e" * 24
    assert resolve_token(configured, url, {TOKEN_ENV: env_token}) == (env_token, "env", None)
    assert resolve_token(configured, url, {}) == ("c" * 24, "config", None)
    assert not list(tmp_path.iterdir())  # nothing generated, nothing written
    with pytest.raises(AdminTokenError, match="at least 16"):
        resolve_token(configured, url, {TOKEN_ENV: "short"})
    assert "c" * 24 not in repr(resolve_token(configured, url, {}))


def test_a_generated_token_is_written_owner_only_next_to_the_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    token, source, file = resolve_token(TickvisorConfig(), url, {})
    assert source == "generated" and file == tmp_path / TOKEN_FILE_NAME
    assert len(token) >= 40
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert file.read_text().strip() == token

    again = resolve_token(TickvisorConfig(), url, {})  # a new token each start, same file
    assert again.token != token and again.file == file
    assert file.read_text().strip() == again.token
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [TOKEN_FILE_NAME]  # no temp file left


def test_the_token_file_goes_where_configured_or_in_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    pg = "postgresql+psycopg://tickvisor:pw@127.0.0.1:5432/ticks"
    assert resolve_token(TickvisorConfig(), pg, {}).file == tmp_path / TOKEN_FILE_NAME
    chosen = tmp_path / "secrets" / "admin.token"
    chosen.parent.mkdir(mode=0o700)
    config = TickvisorConfig.model_validate({"admin": {"token_file": str(chosen)}})
    token, _, file = resolve_token(config, pg, {})
    assert file == chosen and chosen.read_text().strip() == token
    with pytest.raises(AdminTokenError, match="cannot write"):
        resolve_token(
            TickvisorConfig.model_validate({"admin": {"token_file": str(tmp_path / "no" / "t")}}),
            pg,
            {},
        )


def test_the_start_up_line_names_the_token_file_never_the_token(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler, tmp_path: Path
) -> None:
    config = make_config()
    token = resolve_token(config, f"sqlite:///{tmp_path / 'x.db'}", {})
    root = build_tree(config, engine=engine, clock=clock, scheduler=scheduler)
    stream = io.StringIO()
    configure_logging("json", "INFO", stream=stream)
    try:
        server = start_admin(root, config, token=token, port=0)
        server.stop()
    finally:
        configure_logging("json", "INFO")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    started = next(line for line in lines if line["event"] == "admin.started")
    assert started["token_source"] == "generated"
    assert started["token_file"] == str(tmp_path / TOKEN_FILE_NAME)
    assert started["port"] == server.port and started["host"] == "127.0.0.1"
    assert token.token not in stream.getvalue()


def test_token_comparison() -> None:
    assert token_matches(TOKEN, TOKEN)
    assert not token_matches(TOKEN, TOKEN[:-1])
    assert not token_matches(TOKEN, None)
    assert not token_matches("", "")  # an empty token never opens anything
    assert not token_matches(TOKEN, "é" + TOKEN[1:])  # non-ASCII compares, never raises


# --------------------------------------------------------------------------- secrets


def test_no_response_carries_a_secret(make_rig: Callable[..., AdminRig]) -> None:
    webhook = f"https://hooks.slack.example/services/{SLACK_SECRET}"
    config = make_config().model_copy(
        update={
            "alerts": TickvisorConfig.model_validate(
                {"alerts": {"group_wait_seconds": 3600, "slack": {"webhook_url": webhook}}}
            ).alerts
        }
    )
    rig = make_rig(config)
    rig.control.pause("services/candles")  # an alert, and a channel actor with an endpoint
    bodies = [
        rig.http.get(path).text
        for path in (
            "/health",
            "/ready",
            "/health/services",
            "/status",
            "/metrics",
            "/openapi.json",
        )
    ]
    bodies += [
        rig.http.post("/control/candles/pause", headers=rig.auth).text,  # 409, with a message
        rig.http.post("/control/candles/pause").text,
        rig.http.post("/control/candles/resume", headers=rig.auth).text,
    ]
    for body in bodies:
        assert TOKEN not in body
        assert SLACK_SECRET not in body and "w3bh00k" not in body


def test_the_redactor_masks_known_secrets_and_url_credentials() -> None:
    config = TickvisorConfig.model_validate(
        {
            "database": {"url": "postgresql+psycopg://u:db-pa55word@h/d"},
            "alerts": {
                "webhook": {
                    "url": "https://example.test/hook",
                    "secret": "whsec_c2VjcmV0LXNlY3JldA==",
                }
            },
        }
    )
    secrets = config_secrets(config)
    assert {"db-pa55word", "https://example.test/hook", WEBHOOK_SECRET} <= set(secrets)
    redactor = Redactor([*secrets, TOKEN])
    data = {
        "error": f"failed at postgresql://other:hunter22@db/x with {TOKEN}",
        "nested": [{"why": "posting to https://example.test/hook failed"}],
        "n": 3,
    }
    masked = redactor.data(data)
    text = json.dumps(masked)
    assert "hunter22" not in text and TOKEN not in text and "example.test/hook" not in text
    assert masked["n"] == 3 and "postgresql://other:***@db/x" in masked["error"]


# --------------------------------------------------------------------------- health rules


def test_health_rules() -> None:
    running = {"state": "running", "alive": True, "paused_by": [], "breaker_state": None}
    ok = {"circuit_breaker_state": "closed", "recent_error_rate": 0.5, "recent_iterations": 4}
    assert service_health(running, ok)["status"] == "healthy"  # 50% is not over 50%
    failing = {**ok, "recent_error_rate": 0.75}
    assert service_health(running, failing)["status"] == "degraded"
    half_open = {**ok, "circuit_breaker_state": "half_open"}
    assert service_health(running, half_open)["reasons"] == ["circuit breaker half_open"]
    assert service_health({**running, "state": "restarting"}, None)["status"] == "restarting"
    assert service_health({**running, "state": "failed"}, None)["status"] == "stopped"
    operator = {**running, "state": "paused", "paused_by": ["operator", "breaker"]}
    assert service_health(operator, ok)["status"] == "paused"
    # Metrics that did not come back in time do not make a service unhealthy by themselves.
    unread = service_health(running, None, "no answer")
    assert (unread["status"], unread["metrics_error"]) == ("healthy", "no answer")

    assert overall_status([]) == "healthy"
    assert overall_status(["healthy", "paused"]) == "degraded"
    assert overall_status(["stopped", "stopped"]) == "stopped"

    tree = {"children": [{"name": "services", "state": "restarting", "alive": False}]}
    assert readiness_problems(tree) == [
        {"service": "services", "reason": "the services supervisor is restarting"}
    ]
    assert readiness_problems({"children": []})[0]["service"] == "services"


# --------------------------------------------------------------------------- server


def test_a_port_in_use_is_a_clear_error(rig: AdminRig) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(AdminStartError, match=f"cannot listen on 127.0.0.1:{port}"):
            start_admin(rig.root, rig.config, token=TOKEN, port=port)


def test_the_server_stops_and_frees_its_port(rig: AdminRig) -> None:
    port = rig.server.port
    rig.server.stop()
    assert not rig.server.running
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))


def test_a_token_object_or_string_is_accepted(rig: AdminRig) -> None:
    other = start_admin(rig.root, rig.config, token=AdminToken("o" * 20, "config", None), port=0)
    try:
        response = httpx.post(
            f"{other.url}/control/candles/invalidate-cache",
            headers={"Authorization": "Bearer " + "o" * 20},
            timeout=ASK,
        )
        assert response.status_code == 200
    finally:
        other.stop()


# --------------------------------------------------------------------------- contract


@pytest.fixture
def fuzz_rig(tmp_path: Path, clock: FakeClock, scheduler: SteppedScheduler) -> Iterator[AdminRig]:
    engine = open_database(f"sqlite:///{tmp_path / 'fuzz.db'}")
    add_ticks(engine)
    rig = AdminRig(make_config(), engine=engine, clock=clock, scheduler=scheduler)
    try:
        yield rig
    finally:
        rig.close()
        engine.dispose()


def test_the_openapi_contract_holds_under_fuzzing(fuzz_rig: AdminRig) -> None:
    """Schemathesis generates requests from /openapi.json; no answer may be a 5xx."""
    url = fuzz_rig.server.url
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} == {
        ("GET", "/health"),
        ("GET", "/ready"),
        ("GET", "/health/services"),
        ("GET", "/status"),
        ("GET", "/metrics"),
        ("POST", "/control/{service}/{action}"),
    }
    seen: dict[str, set[int]] = {}

    def fuzz(operation: Any, headers: dict[str, str]) -> None:
        @given(case=operation.as_strategy())
        @settings(
            max_examples=12,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def call(case: Any) -> None:
            response = case.call_and_validate(
                base_url=url, headers=headers, checks=[not_a_server_error]
            )
            seen.setdefault(operation.path, set()).add(response.status_code)

        call()

    for operation in operations:
        fuzz(operation, fuzz_rig.auth)
        fuzz(operation, {})
    assert seen["/control/{service}/{action}"] >= {401, 404}
    assert fuzz_rig.root.is_alive()
