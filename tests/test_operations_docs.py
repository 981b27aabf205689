"""docs/operations.md and the files it ships cannot drift from what tickvisor does.

Every ``tickvisor_*`` name in the page, the alert rules, the scrape config
and the Grafana dashboard must be one a running admin API serves (scraped
from a real server, not read from the source), and every metric it serves
must be documented with its labels. The deploy files are checked as far as
this machine allows: the config loads, the unit's stop timeout covers the
shutdown budget, the Dockerfile's HEALTHCHECK command is run against a live
server, and promtool and systemd-analyze check their files when installed.
"""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from actor_helpers import wait_for
from admin_helpers import AdminRig
from tickvisor.clock import FakeClock, SteppedScheduler
from tickvisor.config import TickvisorConfig, load_config, with_alert_env
from tickvisor.store import insert_ticks
from tickvisor.store.engine import open_database
from tickvisor.supervision.tree import shutdown_budget

DOCS = Path(__file__).resolve().parent.parent / "docs"
OPERATIONS = DOCS / "operations.md"
ALERTS = DOCS / "prometheus" / "alerts.yml"
SCRAPE = DOCS / "prometheus" / "prometheus.yml"
DASHBOARD = DOCS / "grafana" / "tickvisor.json"
UNIT = DOCS / "deploy" / "tickvisor.service"
DOCKERFILE = DOCS / "deploy" / "Dockerfile"
DEPLOY_CONFIG = DOCS / "deploy" / "tickvisor.yaml"
METRIC_NAME = re.compile(r"\btickvisor_[a-z0-9_]*[a-z0-9]")
BASE_TS = 1_704_067_200_000


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


@pytest.fixture
def rig(tmp_path: Path, clock: FakeClock, scheduler: SteppedScheduler) -> Iterator[AdminRig]:
    """A tree whose every metric family has been fed: iterations, a restart, a lagging symbol."""
    engine = open_database(f"sqlite:///{tmp_path / 'docs.db'}")
    with engine.begin() as conn:
        insert_ticks(
            conn,
            [
                {"symbol": "EUR/USD", "ts_ms": BASE_TS + i * 7_000, "bid": 1.1, "ask": 1.1002}
                for i in range(20)
            ],
        )
    config = TickvisorConfig.model_validate(
        {
            "supervisor": {"backoff": {"max_seconds": 0}},
            "services": {"candles": {"interval_seconds": 1}},
            "alerts": {"group_wait_seconds": 3600},
        }
    )
    rig = AdminRig(config, engine=engine, clock=clock, scheduler=scheduler)
    try:
        wait_for(lambda: rig.iterations() >= 1, "the first iteration")
        rig.step(times=2)
        assert rig.http.post("/control/candles/restart", headers=rig.auth).status_code == 200
        yield rig
    finally:
        rig.close()
        engine.dispose()


def served_names(text: str) -> tuple[set[str], dict[str, str]]:
    """Every series name a scrape can contain, and each family's type, from ``# TYPE`` lines.

    Families are declared even before their first sample (a counter nobody
    incremented yet), so the names come from the declarations, with the
    suffixes the exposition format gives each type.
    """
    types = dict(
        line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE tickvisor_")
    )
    names: set[str] = set()
    for name, kind in types.items():
        names.add(name)
        if kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    return names, types


def documented_metrics() -> dict[str, set[str]]:
    """The metrics table of operations.md: name -> its labels."""
    table: dict[str, set[str]] = {}
    for line in OPERATIONS.read_text().splitlines():
        match = re.match(r"\| `(tickvisor_[a-z0-9_]+)` \| (\w+) \|([^|]*)\|", line)
        if match:
            table[match.group(1)] = set(re.findall(r"`([a-z_]+)`", match.group(3)))
    return table


def test_every_metric_name_in_the_docs_is_one_the_server_serves(rig: AdminRig) -> None:
    scraped = rig.http.get("/metrics").text
    served, _ = served_names(scraped)
    sources = {
        OPERATIONS: OPERATIONS.read_text(),
        ALERTS: ALERTS.read_text(),
        SCRAPE: SCRAPE.read_text(),
        DASHBOARD: DASHBOARD.read_text(),
    }
    for path, text in sources.items():
        unknown = sorted(set(METRIC_NAME.findall(text)) - served)
        assert not unknown, f"{path.name} names metrics the server does not serve: {unknown}"
    used = set(METRIC_NAME.findall(sources[ALERTS] + sources[DASHBOARD]))
    assert len(used) >= 14, used  # the rules and panels cover (nearly) every family


def test_every_served_metric_is_documented_with_its_labels(rig: AdminRig) -> None:
    scraped = rig.http.get("/metrics").text
    _, types = served_names(scraped)
    families = {name for name in types if not name.endswith("_created")}
    table = documented_metrics()
    assert set(table) == families, "the metrics table of operations.md and /metrics differ"
    for kind_line in OPERATIONS.read_text().splitlines():
        for name in families:
            if kind_line.startswith(f"| `{name}` |"):
                assert kind_line.split("|")[2].strip() == types[name], name

    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(scraped):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            name = family.name + ("_total" if family.type == "counter" else "")
            labels.setdefault(name, set()).update(set(sample.labels) - {"le"})
    checked = 0
    for name, seen in labels.items():
        if name in table and seen:
            assert table[name] == seen, f"{name}: documented {table[name]}, served {seen}"
            checked += 1
    assert checked >= 9  # every family this tree feeds (alert channels have none here)


def test_the_grafana_dashboard_is_importable(dashboard: dict[str, Any]) -> None:
    for key in ("title", "uid", "panels", "schemaVersion", "templating", "time"):
        assert key in dashboard, key
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names[0] == "datasource" and {"instance", "service"} <= set(names)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]


def test_the_alert_rules_are_well_formed_and_documented() -> None:
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    page = OPERATIONS.read_text()
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["expr"], rule["alert"]
        assert f"| `{rule['alert']}` |" in page, f"{rule['alert']} is not in operations.md"
    for topic in ("tickvisor_breaker_state", "tickvisor_child_restarts_total",
                  "tickvisor_alerts_dead_lettered_total", "tickvisor_alert_outbox_pending",
                  "tickvisor_candle_lag_seconds", "tickvisor_service_errors_total",
                  "tickvisor_service_iterations_total", "probe_success"):  # fmt: skip
        assert any(topic in r["expr"] for r in rules), topic


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules_the_scrape_config_and_every_panel_query(
    dashboard: dict[str, Any], tmp_path: Path
) -> None:
    for args in (["check", "config", str(SCRAPE)], ["check", "rules", str(ALERTS)]):
        result = subprocess.run(["promtool", *args], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
    # Each panel query, its Grafana variables filled in, as a recording rule promtool parses.
    queries = [
        t["expr"]
        .replace("$__rate_interval", "1m")
        .replace('"$instance"', '".*"')
        .replace('"$service"', '".*"')
        .replace('"$job"', '".*"')
        for p in dashboard["panels"]
        for t in p.get("targets", ())
    ]
    rules = {
        "groups": [
            {
                "name": "panels",
                "rules": [{"record": f"panel:q{i}", "expr": q} for i, q in enumerate(queries)],
            }
        ]
    }
    file = tmp_path / "panels.yml"
    file.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        ["promtool", "check", "rules", str(file)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- deploy files


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_the_page_shows_the_unit_file_as_it_is() -> None:
    page = OPERATIONS.read_text()
    block = page.split("## Running under systemd", 1)[1].split("```ini\n", 1)[1].split("```", 1)[0]
    assert block == UNIT.read_text()


def test_the_unit_stops_within_its_timeout_and_restarts_on_failure() -> None:
    service = unit()["Service"]
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert service["EnvironmentFile"].lstrip("-") == "/etc/tickvisor/tickvisor.env"
    assert service["ExecStart"].endswith("run --config /etc/tickvisor/tickvisor.yaml")
    # Worst case with every alert channel configured: the drain (3 s), the tree's
    # budget, the final stop of stray actors (10 s) and the admin API (6 s).
    env = {
        "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/x",
        "ALERT_WEBHOOK_URL": "https://example.com/hook",
        "ALERT_WEBHOOK_SECRET": "whsec_c2VjcmV0LXNlY3JldA==",
        "ALERT_EMAIL": "ops@example.com",
        "SMTP_HOST": "smtp.example.com",
    }
    config = with_alert_env(load_config(DEPLOY_CONFIG, env={}), env)
    assert len(config.alerts.channels()) == 3
    worst = 3 + shutdown_budget(config) + 10 + 6
    assert int(service["TimeoutStopSec"]) > worst


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # The binary must exist for verify to pass: point the unit at this venv's.
    tickvisor = Path(sys.executable).parent / "tickvisor"
    if not tickvisor.exists():
        pytest.skip("the tickvisor script is not installed in this environment")
    copy = tmp_path / "tickvisor.service"
    copy.write_text(UNIT.read_text().replace("/opt/tickvisor/bin/tickvisor", str(tickvisor)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_deploy_config_loads_with_and_without_its_environment() -> None:
    plain = load_config(DEPLOY_CONFIG, env={})
    assert plain.admin.host == "127.0.0.1" and plain.admin.port == 8787
    assert str(plain.admin.token_file) == "/var/lib/tickvisor/tickvisor-admin.token"
    assert plain.database.url == "sqlite:////var/lib/tickvisor/tickvisor.db"
    assert plain.services.candles is not None and plain.services.sentiment is not None
    container = load_config(
        DEPLOY_CONFIG,
        env={"TICKVISOR_ADMIN_HOST": "0.0.0.0", "TICKVISOR_DB_URL": "postgresql+psycopg://u@db/m"},
    )
    assert container.admin.host == "0.0.0.0"
    assert container.database.url == "postgresql+psycopg://u@db/m"


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_the_dockerfile_copies_files_that_exist_and_matches_the_config() -> None:
    root = DOCS.parent
    instructions = dockerfile_instructions()
    for op, rest in instructions:
        if op == "COPY" and not rest.startswith("--from"):
            *sources, _ = rest.split()
            for source in sources:
                assert (root / source).exists(), f"COPY {source}: no such file"
    given = dict(instructions[::-1])  # the last of each instruction
    assert given["EXPOSE"] == str(load_config(DEPLOY_CONFIG, env={}).admin.port)
    assert given["STOPSIGNAL"] == "SIGTERM"
    assert json.loads(given["CMD"]) == ["run", "--config", "/etc/tickvisor/tickvisor.yaml"]
    assert "TICKVISOR_ADMIN_HOST=0.0.0.0" in given["ENV"]


def test_the_dockerfile_healthcheck_passes_while_running_and_fails_once_stopped(
    rig: AdminRig,
) -> None:
    check = dict(dockerfile_instructions())["HEALTHCHECK"]
    command = json.loads(check.split(" CMD ", 1)[1])
    assert command[0] == "python" and "/health" in command[-1]
    probe = [sys.executable, *command[1:-1], command[-1].replace(":8787", f":{rig.server.port}")]

    def run() -> int:
        return subprocess.run(probe, capture_output=True, timeout=30, check=False).returncode

    assert run() == 0
    rig.root.stop(block=True, timeout=10)  # /health answers 503
    assert run() != 0
    rig.server.stop()  # nothing listens
    assert run() != 0
