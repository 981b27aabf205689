"""The seed's helpers: blocking sends return whether delivered; notifiers never block."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tickvisor.actors.breaker import CircuitBreaker
from tickvisor.alerts.helpers import (
    BackgroundSender,
    background_sender,
    create_email_notifier,
    create_slack_notifier,
    send_email_alert,
    send_slack_alert,
    send_webhook_alert,
)
from tickvisor.alerts.retry import RetryPolicy
from tickvisor.logs import configure_logging
from tickvisor.testing import FakeSlack, Reply, SmtpReceiver, Stall, WebhookReceiver

#: Retries without waiting, so a transient failure costs no test time.
QUICK = RetryPolicy(max_attempts=3, initial_wait=0, max_seconds=5)


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("json", "DEBUG", stream=stream)
    yield stream
    configure_logging("json", "INFO")


def events(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as server:
        yield server


def test_send_slack_alert_delivers(slack: FakeSlack, logs: io.StringIO) -> None:
    assert send_slack_alert(slack.url, "Feed down", "no ticks for 5 min", service="feed")
    message = slack.delivered[0].body_json
    assert "Feed down" in message["text"]
    assert message["attachments"][0]["color"] == "#daa038"  # default severity: warning
    assert "alert.delivered" in [e["event"] for e in events(logs)]
    assert slack.secret_path not in logs.getvalue()


def test_send_slack_alert_retries_a_transient_error(slack: FakeSlack) -> None:
    slack.script(Reply(503, "busy"))
    assert send_slack_alert(slack.url, "t", "m", policy=QUICK)
    assert [r.status_answered for r in slack.requests] == [503, 200]


def test_send_slack_alert_returns_false_on_permanent_error(
    slack: FakeSlack, logs: io.StringIO
) -> None:
    slack.script(Reply(404, "channel_not_found"))
    assert not send_slack_alert(slack.url, "t", "m", policy=QUICK)
    assert len(slack.requests) == 1  # never retried
    (dead,) = [e for e in events(logs) if e["event"] == "alert.dead_lettered"]
    assert dead["channel"] == "slack"
    assert "channel_not_found" in dead["error"]
    assert slack.secret_path not in logs.getvalue()


def test_send_slack_alert_rejects_a_bad_url_quietly(logs: io.StringIO) -> None:
    assert not send_slack_alert("hooks.slack.com/services/SECRET", "t", "m")
    assert "SECRET" not in logs.getvalue()


def test_slack_notifier_never_blocks_the_breaker(slack: FakeSlack) -> None:
    stall = 1.5
    slack.script(Stall(stall))
    notifier = create_slack_notifier(slack.url, "candles")
    breaker = CircuitBreaker(failure_threshold=1, on_open=notifier)
    started = time.monotonic()
    breaker.record_failure()  # opens the breaker: runs the callback
    returned_after = time.monotonic() - started
    assert returned_after < stall / 3
    assert slack.wait_for(1, timeout=stall + 5)
    (message,) = [r.body_json for r in slack.delivered]
    assert "candles" in message["text"]
    assert message["attachments"][0]["color"] == "#d00000"
    assert background_sender().drain(5)


def test_notifier_accepts_and_ignores_any_arguments(slack: FakeSlack) -> None:
    worker = BackgroundSender()
    notifier = create_slack_notifier(slack.url, "depth", severity="warning", worker=worker)
    notifier("old", "new", breaker=object())
    assert worker.drain(5)
    assert len(slack.delivered) == 1


def test_background_sender_drops_when_full(logs: io.StringIO) -> None:
    worker = BackgroundSender(maxsize=1)
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def blocking() -> None:
        started.set()
        release.wait(5)
        ran.append("first")

    assert worker.submit(blocking)
    assert started.wait(5)  # the worker holds the first job; the queue is empty
    assert worker.submit(lambda: ran.append("second"))
    assert not worker.submit(lambda: ran.append("third"))  # queue full: dropped
    release.set()
    assert worker.drain(5)
    assert ran == ["first", "second"]
    assert "alert.dropped" in [e["event"] for e in events(logs)]


def test_background_sender_survives_a_failing_job(logs: io.StringIO) -> None:
    worker = BackgroundSender()
    ran: list[int] = []

    def broken() -> None:
        raise RuntimeError("boom")

    worker.submit(broken)
    worker.submit(lambda: ran.append(1))
    assert worker.drain(5)
    assert ran == [1]
    assert "alert.background_failed" in [e["event"] for e in events(logs)]


def test_send_email_alert_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with SmtpReceiver("plain") as smtp:
        monkeypatch.setenv("ALERT_EMAIL", "ops@example.test, oncall@example.test")
        monkeypatch.setenv("SMTP_HOST", smtp.host)
        monkeypatch.setenv("SMTP_PORT", str(smtp.port))
        monkeypatch.setenv("SMTP_SECURITY", "none")
        monkeypatch.delenv("SMTP_USER", raising=False)
        monkeypatch.delenv("SMTP_PASSWORD", raising=False)
        assert send_email_alert("Depth stale", "no snapshots", severity="critical")
        (message,) = smtp.messages
        assert message["Subject"] == "[CRITICAL] Depth stale"
        assert smtp.envelopes[0].rcpt_tos == ("ops@example.test", "oncall@example.test")


def test_send_email_alert_over_starttls_with_login(monkeypatch: pytest.MonkeyPatch) -> None:
    password = "s3cret-smtp-pw"
    with SmtpReceiver("starttls", auth=("bot", password)) as smtp:
        monkeypatch.setenv("SMTP_PASSWORD", password)
        assert send_email_alert(
            "s",
            "b",
            to="ops@example.test",
            host=smtp.host,
            port=smtp.port,
            user="bot",
            ssl_context=smtp.client_ssl_context(),
        )
        assert smtp.envelopes[0].login == "bot"


def test_send_email_alert_without_settings_is_false(
    monkeypatch: pytest.MonkeyPatch, logs: io.StringIO
) -> None:
    for name in ("ALERT_EMAIL", "SMTP_HOST", "SMTP_PORT", "SMTP_SECURITY"):
        monkeypatch.delenv(name, raising=False)
    assert not send_email_alert("s", "b")
    (line,) = [e for e in events(logs) if e["event"] == "alert.misconfigured"]
    assert "ALERT_EMAIL" in line["error"]


def test_send_email_alert_wrong_password_is_false_and_not_logged(logs: io.StringIO) -> None:
    with SmtpReceiver("starttls", auth=("bot", "right")) as smtp:
        assert not send_email_alert(
            "s",
            "b",
            to="ops@example.test",
            host=smtp.host,
            port=smtp.port,
            user="bot",
            password="wrong-and-secret",
            ssl_context=smtp.client_ssl_context(),
            policy=QUICK,
        )
    assert "wrong-and-secret" not in logs.getvalue()
    assert "alert.dead_lettered" in [e["event"] for e in events(logs)]


def test_email_notifier_sends_in_the_background() -> None:
    worker = BackgroundSender()
    with SmtpReceiver("plain") as smtp:
        notifier = create_email_notifier(
            "sentiment",
            to=["ops@example.test"],
            host=smtp.host,
            port=smtp.port,
            security="none",
            worker=worker,
        )
        notifier()
        assert worker.drain(5)
        (message,) = smtp.messages
        assert "sentiment" in message["Subject"]


def test_send_webhook_alert(logs: io.StringIO) -> None:
    secret = "whsec_" + "aGVscGVyLXRlc3Q="
    with WebhookReceiver(secret) as receiver:
        assert send_webhook_alert(receiver.url, secret, "Feed down", "m", service="feed")
        body = receiver.accepted[0].json()
        assert (body["title"], body["service"], body["type"]) == (
            "Feed down",
            "feed",
            "alert.manual",
        )
        receiver.script(Reply(410))
        assert not send_webhook_alert(receiver.url, secret, "t", "m", policy=QUICK)
    assert secret not in logs.getvalue()
