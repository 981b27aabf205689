"""The command line as a user runs it: real subprocesses, real files, real databases."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tickvisor.store.engine import open_database
from tickvisor.store.inputs import insert_depth_snapshots, insert_sentiment_rows
from tickvisor.store.ticks import insert_ticks

TICKVISOR = [sys.executable, "-m", "tickvisor.cli"]


def run(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TICKVISOR, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def json_lines(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines()]  # every line must parse


def test_check_config_accepts_the_shipped_example(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "tickvisor.yaml"
    result = run("check-config", str(example), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stderr


def test_check_config_rejects_with_key_path_and_no_traceback(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("services:\n  candles:\n    breaker:\n      timeout: -1\n")
    result = run("check-config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "services.candles.breaker.timeout" in result.stderr
    assert "bad.yaml" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    json_lines(result.stdout)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("feed:\n  enabled: true\n  symbols: [EUR/USD\n")
    result = run("check-config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "broken.yaml:" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_database_is_one_clear_line_without_password(tmp_path: Path) -> None:
    url = "postgresql+psycopg://trader:hunter2@127.0.0.1:1/markets"
    result = run("demo", "--seconds", "1", "--db", url, cwd=tmp_path)
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()
    assert len(message) == 1
    assert "127.0.0.1:1/markets" in message[0]
    assert "hunter2" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    json_lines(result.stdout)


def test_run_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "tickvisor.yaml"
    config.write_text(
        "feed:\n  enabled: true\n  interval_seconds: 0.2\n"
        "services:\n  candles:\n    interval_seconds: 0.5\n"
    )
    proc = subprocess.Popen(
        [
            *TICKVISOR,
            "run",
            "--config",
            str(config),
            "--db",
            f"sqlite:///{tmp_path / 'r.db'}",
            "--admin-port",
            "0",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        started = json.loads(proc.stdout.readline())
        assert started["event"] == "tickvisor.started"
        # Wait (bounded) for the first candle iteration to be logged as started.
        deadline = time.monotonic() + 30
        seen: list[dict[str, object]] = [started]
        while time.monotonic() < deadline:
            line = json.loads(proc.stdout.readline())
            seen.append(line)
            if line["event"] == "supervisor.started" and line.get("supervisor") == "root":
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    records = seen + json_lines(out)
    events = [r["event"] for r in records]
    assert "service.started" in events
    # Stopped in reverse order of start: services before the feed, feed before root.
    stopped = [e for e in events if e in ("service.stopped", "feed.stopped", "supervisor.stopped")]
    assert stopped.index("service.stopped") < stopped.index("feed.stopped")
    assert events[-1] == "tickvisor.stopped"
    assert records[-1]["threads_left"] == []  # nothing non-daemon left running
    # The admin API came up with a generated token, written to an owner-only
    # file next to the database; the log says where, never what.
    (admin,) = [r for r in records if r["event"] == "admin.started"]
    token_file = Path(str(admin["token_file"]))
    assert token_file.parent == tmp_path
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert token_file.read_text().strip() not in out


def test_run_reloads_a_saved_config_and_rejects_a_broken_one(tmp_path: Path) -> None:
    config = tmp_path / "tickvisor.yaml"
    original = "services:\n  candles:\n    interval_seconds: 0.5\n"
    config.write_text(original)
    proc = subprocess.Popen(
        [
            *TICKVISOR,
            "run",
            "--config",
            str(config),
            "--db",
            f"sqlite:///{tmp_path / 'r.db'}",
            "--admin-port",
            "0",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def wait_for_event(name: str) -> dict[str, object]:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = json.loads(proc.stdout.readline())
            if line["event"] == name:
                return line
        raise AssertionError(f"no {name} line within 30 s")

    def save(text: str) -> None:  # as editors do: write a temporary file, rename it over
        temporary = tmp_path / ".tickvisor.yaml.swp"
        temporary.write_text(text)
        os.replace(temporary, config)

    try:
        wait_for_event("config.watching")
        save(original.replace("0.5", "2"))
        reloaded = wait_for_event("config.reloaded")
        assert "services.candles.interval_seconds" in str(reloaded["applied"])
        save("services:\n  candles:\n    interval_seconds: -1\n")
        rejected = wait_for_event("config.rejected")
        assert "services.candles.interval_seconds" in str(rejected["error"])
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0


def test_demo_shows_the_breaker_cycle_in_pure_json(tmp_path: Path) -> None:
    result = run("demo", "--seconds", "12", "--admin-port", "0", cwd=tmp_path, timeout=90)
    assert result.returncode == 0, result.stderr
    records = json_lines(result.stdout)
    cycle = [
        (r["from_state"], r["to_state"]) for r in records if r["event"] == "breaker.transition"
    ]
    assert cycle[:3] == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    assert "breaker cycle" in result.stderr
    # The crash drill is seen restarted; the breaker opening pauses, closing resumes.
    decisions = [
        (r["event"], r["generation"])
        for r in records
        if r["event"] in ("child.restarted", "child.paused", "child.resumed")
    ]
    assert decisions == [("child.restarted", 2), ("child.paused", 2), ("child.resumed", 2)]
    # The candle service worked beside the feed (no "database is locked").
    (written,) = [line for line in result.stderr.splitlines() if "candles written" in line]
    assert int(written.split(":")[1]) > 0
    # Depth and sentiment ran beside it on the feed's books and readings.
    for name in ("depth snapshots", "sentiment readings"):
        (line,) = [row for row in result.stderr.splitlines() if name in row]
        produced, consumed = (int(n.split()[0]) for n in line.split(":")[1].split("->"))
        assert produced > 0 and consumed > 0, line
    assert not [
        r
        for r in records
        if r["event"] == "service.iteration_failed" and r.get("error_type") != "InjectedFailure"
    ]
    assert not list(tmp_path.iterdir()), "the demo must not leave files in the working folder"


def test_demo_moves_to_a_free_port_when_the_default_admin_port_is_taken(tmp_path: Path) -> None:
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 8787))
    except OSError:
        holder.close()
        pytest.skip("port 8787 is in use here already")
    holder.listen()
    try:
        result = run("demo", "--seconds", "1", cwd=tmp_path, timeout=90)
    finally:
        holder.close()
    assert result.returncode == 0, result.stderr
    events = {r["event"]: r for r in json_lines(result.stdout)}
    assert "admin.port_busy" in events
    assert events["admin.started"]["port"] != 8787


def test_aggregate_is_one_idempotent_pass(tmp_path: Path, db_url: str) -> None:
    engine = open_database(db_url)
    with engine.begin() as conn:
        insert_ticks(
            conn, [{"symbol": "EUR/USD", "ts_ms": 1_700_000_000_000, "bid": 1.0, "ask": 1.1}]
        )
    engine.dispose()
    written = []
    for _ in range(2):
        result = run("aggregate", "--service", "candles", "--db", db_url, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        (line,) = [r for r in json_lines(result.stdout) if r["event"] == "aggregate.completed"]
        written.append(line["candles_written"])
    assert written == [7, 0]  # one candle per timeframe, then nothing new


def test_aggregate_all_runs_every_service_once(tmp_path: Path, db_url: str) -> None:
    engine = open_database(db_url)
    ts = 1_700_000_000_000
    with engine.begin() as conn:
        insert_ticks(conn, [{"symbol": "EUR/USD", "ts_ms": ts, "bid": 1.0, "ask": 1.1}])
        insert_depth_snapshots(
            conn,
            [
                {"symbol": "EUR/USD", "ts_ms": ts, "bids": [[1.0, 1]], "asks": [[1.1, 2]]},
                {"symbol": "EUR/USD", "ts_ms": ts + 1, "bids": [[1.2, 1]], "asks": [[1.1, 2]]},
            ],
        )
        insert_sentiment_rows(
            conn, [{"symbol": "EUR/USD", "ts_ms": ts, "long_pct": 71.0, "short_pct": 29.0}]
        )
    engine.dispose()
    result = run("aggregate", "--db", db_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = {
        r["service"]: r for r in json_lines(result.stdout) if r["event"] == "aggregate.completed"
    }
    assert lines["candles"]["candles_written"] == 7
    assert lines["depth"]["snapshots_processed"] == 2
    assert lines["depth"]["metrics_written"] >= 1
    assert lines["depth"]["quarantined"] == 1  # the crossed book
    assert lines["sentiment"]["readings_processed"] == 1
    again = run("aggregate", "--service", "depth", "--db", db_url, cwd=tmp_path)
    (line,) = [r for r in json_lines(again.stdout) if r["event"] == "aggregate.completed"]
    assert (line["service"], line["snapshots_processed"]) == ("depth", 0)


def test_import_books_and_readings_then_aggregate(tmp_path: Path) -> None:
    books = tmp_path / "books.jsonl"
    books.write_text(
        '{"symbol": "EURUSD", "ts": "2024-01-01T00:00:00Z", "provider": "p",'
        ' "bids": [[1.0, 2], [1.1, 1]], "asks": [[1.3, 1], [1.2, 3]]}\n'
        "not json\n",
        encoding="utf-8",
    )
    readings = tmp_path / "positioning.csv"
    readings.write_text(
        "symbol,ts,long_pct,short_pct,total_traders,provider\n"
        "EUR/USD,1704067200000,72.5,27.5,1000,p\n",
        encoding="utf-8",
    )
    url = f"sqlite:///{tmp_path / 'data.db'}"
    for path, fmt in ((books, "depth-jsonl"), (readings, "sentiment-csv")):
        result = run("import", str(path), "--format", fmt, "--db", url, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        (summary,) = [r for r in json_lines(result.stdout) if r["event"] == "import.completed"]
        assert summary["inserted"] == 1
    assert summary["rejected"] == 0
    result = run("aggregate", "--db", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    engine = open_database(url)
    with engine.connect() as conn:
        mid = conn.execute(text("SELECT mid FROM depth_metrics")).scalar_one()
        contrarian = conn.execute(text("SELECT signal FROM sentiment_metrics")).scalar_one()
    engine.dispose()
    assert mid == pytest.approx(1.15)  # best bid 1.1, best ask 1.2 after sorting
    assert contrarian == -1  # the crowd is more than 70 % long


def test_db_current_and_upgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    current = run("db", "current", "--db", url, cwd=tmp_path)
    assert current.returncode == 1  # an upgrade is needed
    (line,) = [r for r in json_lines(current.stdout) if r["event"] == "db.current"]
    assert (line["state"], line["revision"]) == ("empty", None)
    upgraded = run("db", "upgrade", "--db", url, cwd=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    again = run("db", "current", "--db", url, cwd=tmp_path)
    assert again.returncode == 0
    (line,) = [r for r in json_lines(again.stdout) if r["event"] == "db.current"]
    assert line["state"] == "head" and line["revision"] == line["head"]


def test_run_refuses_a_schema_it_does_not_match_and_says_what_to_run(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:  # tickvisor tables, but no schema revision
        conn.execute(text("CREATE TABLE ticks (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    config = tmp_path / "tickvisor.yaml"
    config.write_text("services:\n  candles: {}\n")
    result = run("run", "--config", str(config), "--db", url, "--admin-port", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert "tickvisor db upgrade" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_is_exit_2(tmp_path: Path) -> None:
    result = run("run", "--config", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert result.returncode == 2
    assert "nope.yaml" in result.stderr
    assert "Traceback" not in result.stderr
