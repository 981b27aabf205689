"""Hot config reload against a real tree: real actors, a real config file, real databases.

Most tests drive :meth:`Reloader.reload_now` on the fake clock and stepped
scheduler, so they depend on no timing. Two use the real watchdog observers
(native, and the polling fallback) and wait, bounded, for the service to
show the new config.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy import Engine
from structlog.testing import capture_logs
from watchdog.observers.api import BaseObserver

from actor_helpers import wait_for
from tickvisor.actors.breaker import CircuitBreaker
from tickvisor.clock import FakeClock, SteppedScheduler
from tickvisor.config import TickvisorConfig
from tickvisor.eventbus import EventBus
from tickvisor.messages import InjectFailures, Ping
from tickvisor.reload import ConfigWatcher, Reloader, load_like_start
from tickvisor.store import insert_ticks
from tickvisor.store.schema import candles, events
from tickvisor.supervision import Control
from tickvisor.supervision.tree import build_tree

ASK = 10.0
CANDLES = "services/candles"
BASE_TS = 1_704_067_200_000
SECRET = "hunter2-not-for-logs"


def base_config() -> dict[str, Any]:
    return {
        "supervisor": {"check_interval_seconds": 1, "backoff": {"max_seconds": 0}},
        "services": {
            "candles": {
                "interval_seconds": 5,
                "symbols_file": "symbols.yaml",
                "breaker": {"failure_threshold": 5, "timeout": 60},
            }
        },
    }


def save(path: Path, content: str) -> None:
    """Save as editors do: write a temporary file, then rename it over the original."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(content, encoding="utf-8")
    os.replace(temporary, path)


class Tree:
    """The whole tree of ``tickvisor run`` built from a config file in ``folder``."""

    def __init__(
        self, engine: Engine, clock: FakeClock, scheduler: SteppedScheduler, folder: Path
    ) -> None:
        self.engine, self.clock, self.scheduler = engine, clock, scheduler
        self.path = folder / "tickvisor.yaml"
        self.symbols = folder / "symbols.yaml"
        save(self.symbols, "[EUR/USD]\n")
        self.write(base_config())
        self.config: TickvisorConfig = load_like_start(self.path)
        self.bus = EventBus()
        self.root = build_tree(
            self.config, engine=engine, clock=clock, scheduler=scheduler, bus=self.bus
        )
        self.root.ask(Ping(), timeout=ASK)  # answered once the whole tree has started
        self.control = Control(self.root, timeout=ASK)
        self.reloader = Reloader(self.path, self.control, self.bus, self.config, clock)

    def write(self, data: dict[str, Any]) -> None:
        save(self.path, yaml.safe_dump(data))

    def metrics(self) -> dict[str, Any]:
        return self.control.metrics(CANDLES)

    def node(self) -> dict[str, Any]:
        return next(c for c in self.control.which_children("services") if c["name"] == "candles")

    def step(self, seconds: float) -> dict[str, Any]:
        """Let fake time pass a second at a time, as real time would.

        Each metrics ask queues behind the iterations that second caused, so
        an iteration is over before the clock moves on (and is not coalesced).
        """
        metrics = self.metrics()
        for _ in range(round(seconds)):
            self.scheduler.advance(1.0)
            metrics = self.metrics()
        return metrics


@pytest.fixture(autouse=True)
def _no_alert_channels_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SLACK_WEBHOOK_URL", "ALERT_WEBHOOK_URL", "ALERT_EMAIL"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def tree(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler, tmp_path: Path
) -> Iterator[Tree]:
    built = Tree(engine, clock, scheduler, tmp_path)
    yield built
    built.root.stop(block=True, timeout=ASK)


def reloaded_lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in logs if line["event"] == "config.reloaded"]


# --- applied live ---------------------------------------------------------------------


def test_interval_and_breaker_apply_live_keep_the_breaker_state_and_survive_a_restart(
    tree: Tree,
) -> None:
    tree.control.send(CANDLES, InjectFailures(2))
    before = tree.step(10)  # two failing iterations; threshold 5: still closed
    assert before["circuit_breaker_stats"]["failure_count"] == 2
    assert before["circuit_breaker_state"] == "closed"

    data = base_config()
    candles_config = data["services"]["candles"]
    candles_config["interval_seconds"] = 2
    candles_config["breaker"] = {"failure_threshold": 3, "timeout": 30}
    candles_config["on_breaker_open"] = "ignore"
    tree.write(data)
    with capture_logs() as logs:
        result = tree.reloader.reload_now()

    assert result.status == "reloaded"
    assert sorted(result.applied) == [
        "services.candles.breaker.failure_threshold",
        "services.candles.breaker.timeout",
        "services.candles.interval_seconds",
        "services.candles.on_breaker_open",
    ]
    assert result.restarted == [] and result.needs_restart == []
    [line] = reloaded_lines(logs)
    assert line["changes"]["services.candles.interval_seconds"] == {"from": 5.0, "to": 2.0}
    after = tree.metrics()
    assert after["generation"] == before["generation"], "applied without a restart"
    assert after["interval_seconds"] == 2
    stats = after["circuit_breaker_stats"]
    assert (stats["failure_threshold"], stats["timeout"], stats["failure_count"]) == (3, 30, 2)
    assert tree.node()["on_breaker_open"] == "ignore"

    tree.control.send(CANDLES, InjectFailures(1))
    opened = tree.step(2)
    assert opened["iteration_count"] == after["iteration_count"] + 1, "every 2 s now"
    assert opened["circuit_breaker_state"] == "open", "the third failure opens at threshold 3"

    restarted = tree.control.restart(CANDLES)
    assert restarted["generation"] == before["generation"] + 1
    fresh = tree.metrics()
    assert fresh["interval_seconds"] == 2
    assert fresh["circuit_breaker_stats"]["failure_threshold"] == 3
    assert fresh["circuit_breaker_state"] == "closed"
    assert tree.node()["on_breaker_open"] == "ignore"

    tree.control.restart("services")  # a new services supervisor, new specs: still the new config
    assert tree.metrics()["interval_seconds"] == 2
    assert tree.node()["on_breaker_open"] == "ignore"


def test_switching_the_breaker_policy_to_ignore_lifts_a_breaker_hold(tree: Tree) -> None:
    tree.control.send(CANDLES, InjectFailures(5))
    assert tree.step(25)["circuit_breaker_state"] == "open"
    assert tree.node()["paused_by"] == ["breaker"]

    data = base_config()
    data["services"]["candles"]["on_breaker_open"] = "ignore"
    tree.write(data)
    assert tree.reloader.reload_now().applied == ["services.candles.on_breaker_open"]

    node = tree.node()
    assert (node["state"], node["paused_by"]) == ("running", [])
    assert tree.metrics()["paused"] is False


def test_a_changed_symbols_file_reaches_the_service_at_its_next_iteration(tree: Tree) -> None:
    assert tree.metrics()["symbols"] == ["EUR/USD"]
    save(tree.symbols, "[EUR/USD, usd-jpy]\n")
    assert tree.step(5)["symbols"] == ["EUR/USD"], "the 300 s cache still holds the old list"

    result = tree.reloader.reload_now()

    assert result.changed == ["services.candles.symbols_file"]
    assert result.applied == ["services.candles.symbols_file"]
    assert tree.step(5)["symbols"] == ["EUR/USD", "USD/JPY"]
    assert tree.reloader.reload_now().status == "unchanged"


# --- rejected -------------------------------------------------------------------------


def alert_kinds(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(events.c.kind).order_by(events.c.id)).scalars())


def test_an_invalid_file_is_rejected_the_running_config_stays_and_a_warning_is_raised(
    tree: Tree,
) -> None:
    with capture_logs() as logs:
        save(tree.path, "services:\n  candles: [unclosed\n")
        bad_yaml = tree.reloader.reload_now()
        data = base_config()
        data["services"]["candles"]["interval_seconds"] = -1
        tree.write(data)
        bad_value = tree.reloader.reload_now()
        again = tree.reloader.reload_now()  # the same broken file saved again
        wait_for(lambda: alert_kinds(tree.engine).count("config.rejected") == 2, "two alerts")

    assert (bad_yaml.status, bad_value.status, again.status) == ("rejected",) * 3
    assert bad_yaml.error is not None and "invalid YAML" in bad_yaml.error
    assert bad_value.error is not None
    assert "services.candles.interval_seconds: Input should be greater than 0" in bad_value.error
    rejected = [line for line in logs if line["event"] == "config.rejected"]
    assert len(rejected) == 3, "every rejection is logged"
    assert all(line["file"] == str(tree.path) for line in rejected)
    raised = [line for line in logs if line["event"] == "alert.raised"]
    assert [(a["kind"], a["severity"]) for a in raised] == [("config.rejected", "warning")] * 2
    assert "the running config stays" in raised[0]["text"]
    metrics = tree.metrics()
    assert metrics["interval_seconds"] == 5, "the old config stays in force"
    assert tree.reloader.current == tree.config


# --- restarted, or needs a restart ---------------------------------------------------


def test_job_settings_restart_the_service_and_the_rest_is_reported_as_needing_a_restart(
    tree: Tree,
) -> None:
    generation = tree.metrics()["generation"]
    data = base_config()
    data["services"]["candles"]["timeframes"] = ["1m", "1h"]
    data["database"] = {"url": f"postgresql+psycopg://tickvisor:{SECRET}@db.invalid/market"}
    data["supervisor"]["max_restarts"] = 9
    data["services"]["depth"] = {"symbols": ["EUR/USD"]}
    tree.write(data)
    with capture_logs() as logs:
        result = tree.reloader.reload_now()

    assert result.restarted == ["services.candles.timeframes"]
    assert sorted(result.needs_restart) == [
        "database.url",
        "services.depth",
        "supervisor.max_restarts",
    ]
    assert SECRET not in repr(logs)
    [line] = reloaded_lines(logs)
    assert line["changes"]["database.url"] == {"from": None, "to": "***"}
    assert tree.metrics()["generation"] == generation + 1
    assert [c["name"] for c in tree.control.which_children("services")] == ["candles"]

    with tree.engine.begin() as conn:
        insert_ticks(
            conn,
            [
                {"symbol": "EUR/USD", "ts_ms": BASE_TS + i * 60_000, "bid": 1.1, "ask": 1.1002}
                for i in range(130)
            ],
        )
    tree.step(5)
    tree.control.restart(CANDLES)  # and the new timeframes survive a restart
    tree.step(5)
    with tree.engine.connect() as conn:
        built = set(conn.execute(sa.select(candles.c.timeframe).distinct()).scalars())
    assert built == {"1m", "1h"}


# --- the watcher ------------------------------------------------------------------------


def interval_config(seconds: float) -> dict[str, Any]:
    data = base_config()
    data["services"]["candles"]["interval_seconds"] = seconds
    return data


def test_the_watcher_sees_a_save_through_rename_of_the_config_and_of_the_symbols_file(
    tree: Tree,
) -> None:
    watcher = ConfigWatcher(tree.reloader, debounce_seconds=0.1).start()
    try:
        assert watcher.observer_kind == "native"
        tree.write(interval_config(2))
        wait_for(lambda: tree.metrics()["interval_seconds"] == 2, "the reload of the config")
        save(tree.symbols, "[EUR/USD, GBP/USD]\n")
        wait_for(
            lambda: tree.step(2)["symbols"] == ["EUR/USD", "GBP/USD"],
            "the reload of the symbols file",
        )
    finally:
        watcher.stop()


def test_the_watcher_falls_back_to_polling_when_the_native_observer_cannot_start(
    tree: Tree,
) -> None:
    def exhausted() -> BaseObserver:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    with capture_logs() as logs:
        watcher = ConfigWatcher(
            tree.reloader, debounce_seconds=0.1, poll_interval=0.1, observer_factory=exhausted
        ).start()
    try:
        assert watcher.observer_kind == "polling"
        assert [line["observer"] for line in logs if line["event"] == "config.watching"] == [
            "polling"
        ]
        tree.write(interval_config(3))
        wait_for(lambda: tree.metrics()["interval_seconds"] == 3, "the reload by polling")
    finally:
        watcher.stop()


# --- the breaker's settings -------------------------------------------------------------


def breaker_settings(**overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "failure_threshold": 2,
        "timeout": 10.0,
        "half_open_max_calls": 1,
        "success_threshold": 1,
        "backoff_factor": 1.0,
        "max_timeout": 600.0,
        "sliding_window_size": 0,
        "minimum_calls": 10,
        "failure_rate_threshold": 50.0,
        "slow_call_seconds": None,
    }
    return settings | overrides


def test_a_reconfigured_breaker_keeps_its_open_period_and_uses_the_new_settings_next_time(
    clock: FakeClock,
) -> None:
    breaker = CircuitBreaker(clock=clock, service_name="svc", **breaker_settings())
    breaker.record_failure()
    breaker.record_failure()
    clock.advance(4)
    breaker.reconfigure(**breaker_settings(failure_threshold=3, timeout=30.0))
    stats = breaker.get_stats()
    assert stats["state"] == "open"
    assert stats["time_until_half_open"] == pytest.approx(6.0), "the running period is kept"

    clock.advance(6)
    assert breaker.can_execute()
    breaker.record_success()
    assert breaker.state == "closed"
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state == "closed", "the new threshold is 3"
    breaker.record_failure()
    assert breaker.get_stats()["time_until_half_open"] == pytest.approx(30.0)
    with pytest.raises(ValueError, match="success_threshold"):
        breaker.reconfigure(**breaker_settings(success_threshold=2))
    assert breaker.get_stats()["failure_threshold"] == 3, "a refused change changes nothing"
