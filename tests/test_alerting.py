"""The alerting subtree end to end, against real receivers on loopback.

Slack is a real HTTP server that answers like Slack, the webhook receiver
verifies Standard Webhooks signatures, the SMTP server is aiosmtpd. Time is
real here (short group waits); the grouping rules themselves are tested on
a fake clock in test_alert_grouping.py.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest
import sqlalchemy as sa

from tickvisor.alerts.outbox import Outbox
from tickvisor.clock import RealClock, ThreadScheduler
from tickvisor.config import TickvisorConfig
from tickvisor.eventbus import EventBus
from tickvisor.messages import BreakerTransition, Ping, SupervisorEvent
from tickvisor.store.engine import open_database
from tickvisor.store.schema import alert_deliveries, alert_outbox
from tickvisor.supervision.tree import start_alerting
from tickvisor.testing.receivers import FakeSlack, Reply, SmtpReceiver, Stall, WebhookReceiver

REPO = Path(__file__).resolve().parent.parent
SECRET = "whsec_" + base64.b64encode(b"tickvisor-test-secret-0123456789").decode()
FOOTER_ID = re.compile(r"tickvisor alert ([0-9a-f]{32})")


def fast_alerts(**channels: Any) -> dict[str, Any]:
    return {
        "group_wait_seconds": 0.2,
        "group_interval_seconds": 0.5,
        "delivery": {
            "attempts_per_try": 2,
            "try_seconds": 3.0,
            "retry_interval_seconds": 0.5,
            "sweep_interval_seconds": 0.2,
        },
        **channels,
    }


class Alerting:
    """The alerts subtree started in this process, and a way to publish to it."""

    def __init__(self, db: str, alerts: dict[str, Any]) -> None:
        self.config = TickvisorConfig.model_validate({"alerts": alerts})
        self.engine = open_database(db)
        self.clock = RealClock()
        self.scheduler = ThreadScheduler(self.clock)
        self.bus = EventBus()
        self.closing = threading.Event()
        self.root = start_alerting(
            self.config,
            engine=self.engine,
            clock=self.clock,
            scheduler=self.scheduler,
            bus=self.bus,
            closing=self.closing,
        )
        self.root.ask(Ping(), timeout=10)  # answered once every child has started

    def breaker(self, service: str, frm: str, to: str) -> None:
        self.bus.tell(BreakerTransition(service, frm, to, 5, "test", self.clock.time(), 30.0, 1))

    def deliveries(self) -> dict[tuple[str, str], int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    alert_deliveries.c.channel, alert_deliveries.c.status, sa.func.count()
                ).group_by(alert_deliveries.c.channel, alert_deliveries.c.status)
            ).all()
        return {(r[0], r[1]): int(r[2]) for r in rows}

    def wait(self, condition: Any, what: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {self.deliveries()}")
            time.sleep(0.05)

    def close(self) -> None:
        self.closing.set()
        self.root.stop(block=True, timeout=10)
        self.scheduler.stop()
        self.engine.dispose()


@pytest.fixture
def alerting(tmp_path: Path) -> Iterator[Any]:
    started: list[Alerting] = []

    def start(alerts: dict[str, Any]) -> Alerting:
        rig = Alerting(f"sqlite:///{tmp_path / 'alerts.db'}", alerts)
        started.append(rig)
        return rig

    yield start
    for rig in started:
        rig.close()


def footer_ids(slack: FakeSlack) -> set[str]:
    return {m for r in slack.delivered for m in FOOTER_ID.findall(json.dumps(r.body_json))}


# --- the demo, with every channel -------------------------------------------------------


def test_demo_delivers_the_open_and_the_resolved_alert_everywhere_and_leaks_no_secret() -> None:
    with (
        FakeSlack() as slack,
        WebhookReceiver(SECRET) as hook,
        SmtpReceiver("plain") as smtp,
    ):
        env = {
            **os.environ,
            "SLACK_WEBHOOK_URL": slack.url,
            "ALERT_WEBHOOK_URL": hook.url,
            "ALERT_WEBHOOK_SECRET": SECRET,
            "ALERT_EMAIL": "ops@example.com",
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp.port),
            "SMTP_SECURITY": "none",  # a local relay, named explicitly
        }
        proc = subprocess.run(
            [sys.executable, "-m", "tickvisor.cli", "demo", "--seconds", "8", "--admin-port", "0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    bodies = [a.json() for a in hook.accepted]
    opened = [b for b in bodies if b["to_state"] == "open" and b["severity"] == "critical"]
    resolved = [b for b in bodies if b["resolved"] and b["to_state"] == "closed"]
    assert opened and resolved, [(b["type"], b["to_state"], b["resolved"]) for b in bodies]
    assert not hook.rejected
    titles = [a["title"] for r in slack.delivered for a in r.body_json["attachments"]]
    assert any("breaker open" in t for t in titles) and any("RESOLVED" in t for t in titles)
    subjects = [m["Subject"] for m in smtp.messages]
    assert any("RESOLVED" in s for s in subjects), subjects
    assert {m["Message-ID"] for m in smtp.messages} >= {f"<{b['id']}@tickvisor>" for b in opened}
    output = proc.stdout + proc.stderr
    for secret in (slack.url.split("/services/")[1], SECRET):
        assert secret not in output
    assert "notifications" in proc.stderr and "slack delivered" in proc.stderr


# --- channels fail independently ------------------------------------------------------------


def test_a_permanent_slack_error_dead_letters_at_once_and_the_webhook_still_gets_it(
    alerting: Any,
) -> None:
    with FakeSlack(default=Reply(400, "invalid_payload")) as slack, WebhookReceiver(SECRET) as hook:
        rig = alerting(
            fast_alerts(
                slack={"webhook_url": slack.url, "min_interval_seconds": 0},
                webhook={"url": hook.url, "secret": SECRET},
            )
        )
        rig.breaker("candles", "closed", "open")
        rig.wait(
            lambda: (
                rig.deliveries().get(("slack", "dead")) == 1
                and rig.deliveries().get(("webhook", "delivered")) == 1
            ),
            "slack dead-lettered, webhook delivered",
        )
        assert len(slack.requests) == 1, "a permanent error is never retried"


def test_a_slow_slack_never_delays_the_webhook(alerting: Any) -> None:
    with FakeSlack(default=Stall(3.0)) as slack, WebhookReceiver(SECRET) as hook:
        rig = alerting(
            fast_alerts(
                slack={"webhook_url": slack.url, "timeout_seconds": 10},
                webhook={"url": hook.url, "secret": SECRET},
            )
        )
        rig.breaker("candles", "closed", "open")
        rig.wait(lambda: len(hook.accepted) == 1, "the webhook delivery")
        assert not slack.delivered, "the webhook arrived while Slack was still stalling"
        rig.wait(lambda: rig.deliveries().get(("slack", "delivered")) == 1, "slack, eventually")


def test_a_retired_webhook_is_disabled_and_the_other_channels_are_told(alerting: Any) -> None:
    with FakeSlack() as slack, WebhookReceiver(SECRET, default=Reply(410, "gone")) as hook:
        rig = alerting(
            fast_alerts(
                slack={"webhook_url": slack.url, "min_interval_seconds": 0},
                webhook={"url": hook.url, "secret": SECRET},
            )
        )
        rig.breaker("candles", "closed", "open")
        rig.wait(
            lambda: any(
                "was disabled" in a.get("text", "")
                for r in slack.delivered
                for a in r.body_json["attachments"]
            ),
            "the channel.disabled alert on Slack",
        )
        assert rig.deliveries().get(("webhook", "dead")) == 1
        rig.breaker("candles", "open", "half_open")
        time.sleep(1.0)  # past a group interval: the webhook is not tried again
        assert len(hook.requests) == 1


def test_transient_failures_are_retried_until_delivered_honouring_retry_after(
    alerting: Any,
) -> None:
    with FakeSlack() as slack:
        slack.script(Reply(500, "oops"), Reply(429, "slow down", {"Retry-After": "1"}), "ok")
        rig = alerting(fast_alerts(slack={"webhook_url": slack.url, "min_interval_seconds": 0}))
        rig.breaker("candles", "closed", "open")
        rig.wait(lambda: rig.deliveries().get(("slack", "delivered")) == 1, "delivery")
        times = [r.at_monotonic for r in slack.requests]
        assert len(times) == 3
        assert times[2] - times[1] >= 0.95, "Retry-After: 1 was honoured"


def test_a_storm_is_grouped_and_paced(alerting: Any) -> None:
    with FakeSlack() as slack:
        rig = alerting(
            {
                **fast_alerts(slack={"webhook_url": slack.url, "min_interval_seconds": 0.3}),
                "group_wait_seconds": 0.5,
                "group_interval_seconds": 5.0,
            }
        )
        services = [f"svc{i:02d}" for i in range(20)]
        sent = 0
        for cycle in range(3):
            for service in services:
                for frm, to in (("closed", "open"), ("open", "half_open"), ("half_open", "closed")):
                    rig.bus.tell(
                        BreakerTransition(service, frm, to, 5, f"c{cycle}", time.time(), 1.0, 1)
                    )
                    sent += 1
        rig.bus.tell(SupervisorEvent("child.restarted", "root/services", "svc00", 2, "x", 1.0))
        rig.wait(
            lambda: (
                rig.deliveries().get(("slack", "pending"), 0) == 0
                and sum(v for (c, _), v in rig.deliveries().items() if c == "slack") >= 20
            ),
            "every group delivered",
            timeout=30,
        )
        counts = [
            int(found.group(1))
            for r in slack.delivered
            for a in r.body_json["attachments"]
            if (found := re.search(r"(\d+) transitions", a.get("text", "")))
        ]
        assert sum(counts) == sent, "every transition is represented in a message"
        assert len(slack.delivered) <= 5, "20 groups went out in a few batched messages"
        gaps = [b.at_monotonic - a.at_monotonic for a, b in itertools.pairwise(slack.delivered)]
        assert all(gap >= 0.25 for gap in gaps), gaps


# --- nothing is lost to a SIGKILL ------------------------------------------------------------


def test_sigkill_during_a_storm_loses_no_alert(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'storm.db'}"
    with FakeSlack(delay_seconds=0.2) as slack, WebhookReceiver(SECRET, delay_seconds=0.05) as hook:
        settings = {
            "db": db,
            "transitions": 300,
            "services": 30,
            "config": {
                "alerts": fast_alerts(
                    slack={"webhook_url": slack.url, "min_interval_seconds": 0.2},
                    webhook={"url": hook.url, "secret": SECRET},
                )
            },
        }
        script = str(REPO / "tests" / "alert_storm_process.py")

        def launch(mode: str) -> subprocess.Popen[str]:
            return subprocess.Popen(
                [sys.executable, script, json.dumps(settings), mode],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                cwd=REPO,
            )

        storm = launch("storm")
        try:
            assert storm.stdout is not None
            assert storm.stdout.readline().startswith("started")
            assert storm.stdout.readline().startswith("published 300")
            assert slack.wait_for(1, timeout=20) and hook.wait_for(1, timeout=20)
        finally:
            storm.send_signal(signal.SIGKILL)  # mid-storm, or on the way out of a failure
            storm.wait(10)
        engine = open_database(db)

        def unfinished() -> int:
            counts = Outbox(engine).counts()
            return counts.get("pending", 0) + counts["alerts_waiting"]

        assert unfinished() > 0, "the kill came mid-storm"
        drain = launch("drain")
        try:
            deadline = time.monotonic() + 60
            while unfinished():
                assert time.monotonic() < deadline, "the restarted process drained the outbox"
                time.sleep(0.2)
        finally:
            drain.send_signal(signal.SIGKILL)
            drain.wait(10)
        with engine.connect() as conn:
            alerts = conn.execute(sa.select(alert_outbox.c.notification_id)).scalars().all()
            statuses = conn.execute(sa.select(alert_deliveries.c.status).distinct()).scalars().all()
        engine.dispose()
        assert len(alerts) == 300 and all(alerts)
        assert set(statuses) == {"delivered"}
        notified = set(alerts)
        assert notified <= set(hook.ids()), "every alert reached the webhook receiver"
        assert notified <= footer_ids(slack), "every alert reached Slack"
        assert not hook.rejected


@pytest.fixture(autouse=True)
def _no_actor_left() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(block=True, timeout=10)
