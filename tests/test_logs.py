"""JSON logs: every line parses, foreign records and tracebacks included, secrets masked."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from tickvisor.logs import configure_logging, get_logger


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("json", "DEBUG", stream=stream)
    yield stream
    configure_logging("json", "INFO")


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]  # every line must parse


def test_structlog_event_has_standard_keys_and_context(captured: io.StringIO) -> None:
    get_logger("t", service="candles").info("service.started", symbol="EUR/USD", interval=5)
    (line,) = lines(captured)
    assert list(line)[:3] == ["timestamp", "level", "event"]
    assert line["event"] == "service.started"
    assert line["level"] == "info"
    assert line["service"] == "candles"
    assert line["symbol"] == "EUR/USD"
    assert line["timestamp"].endswith("Z")  # ISO 8601 UTC


def test_stdlib_pykka_and_sqlalchemy_records_are_json(captured: io.StringIO) -> None:
    logging.getLogger("some.library").warning("plain %s message", "stdlib")
    logging.getLogger("pykka").warning("pykka says hello")
    logging.getLogger("sqlalchemy.engine").error("sqlalchemy says hello")
    records = lines(captured)
    events = [r["event"] for r in records]
    assert "plain stdlib message" in events
    assert "pykka says hello" in events
    assert "sqlalchemy says hello" in events
    assert all({"timestamp", "level", "event"} <= set(r) for r in records)


def test_tracebacks_become_a_field(captured: io.StringIO) -> None:
    try:
        _ = 1 / 0
    except ZeroDivisionError:
        get_logger("t").exception("service.iteration_failed")
        logging.getLogger("foreign").exception("foreign failure")
    ours, foreign = lines(captured)
    assert "ZeroDivisionError" in ours["exception"]
    assert "Traceback" in ours["exception"]
    assert "ZeroDivisionError" in foreign["exception"]


def test_crashing_actor_and_thread_log_json_only(captured: io.StringIO) -> None:
    class Crasher(pykka.ThreadingActor):
        def on_receive(self, message: Any) -> Any:
            raise RuntimeError("actor bug")

    ref = Crasher.start()
    ref.tell("boom")
    assert ref.actor_stopped.wait(5)

    thread = threading.Thread(target=lambda: 1 / 0, name="doomed")
    thread.start()
    thread.join(5)
    records = lines(captured)
    assert any("actor bug" in r.get("exception", "") for r in records)
    crash = next(r for r in records if r["event"] == "thread.uncaught_exception")
    assert crash["thread"] == "doomed"
    assert "ZeroDivisionError" in crash["exception"]


def test_secret_keys_are_masked(captured: io.StringIO) -> None:
    get_logger("t").info(
        "alert.configured", webhook_url="https://hooks.example/T000/SECRET", token="abc"
    )
    (line,) = lines(captured)
    assert line["webhook_url"] == "***"
    assert line["token"] == "***"
    assert "SECRET" not in captured.getvalue()


def test_level_filters_and_console_mode() -> None:
    stream = io.StringIO()
    configure_logging("json", "WARNING", stream=stream)
    get_logger("t").info("hidden")
    get_logger("t").warning("shown")
    assert [r["event"] for r in lines(stream)] == ["shown"]

    console = io.StringIO()
    configure_logging("console", "INFO", stream=console)
    get_logger("t").info("service.started", service="candles")
    assert "service.started" in console.getvalue()
    assert not console.getvalue().startswith("{")
    configure_logging("json", "INFO")


def test_bad_level_and_format_are_named() -> None:
    with pytest.raises(ValueError, match="--log-level"):
        configure_logging("json", "LOUD")
    with pytest.raises(ValueError, match="--log-format"):
        configure_logging("xml", "INFO")  # type: ignore[arg-type]
