"""Grouping, de-duplication, flapping and resolved notifications, on a fake clock."""

from __future__ import annotations

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from tickvisor.alerts.grouping import Flushed, Grouper, GroupingPolicy
from tickvisor.alerts.model import Alert, alert_from_event
from tickvisor.clock import FakeClock
from tickvisor.messages import BreakerTransition, SupervisorEvent

POLICY = GroupingPolicy(
    group_wait=30, group_interval=300, repeat_interval=3600, flap_transitions=3, flap_window=600
)


def breaker(service: str, frm: str, to: str, at: float, failures: int = 5) -> Alert:
    alert = alert_from_event(BreakerTransition(service, frm, to, failures, "test", at, 60.0, 1))
    assert alert is not None
    return alert


def decision(kind: str, service: str, at: float, generation: int = 2) -> Alert:
    alert = alert_from_event(
        SupervisorEvent(kind, "root/services", service, generation, "test", at)
    )
    assert alert is not None
    return alert


class Rig:
    def __init__(self, policy: GroupingPolicy = POLICY) -> None:
        self.clock = FakeClock(start=1_800_000_000.0)
        self.grouper = Grouper(policy)

    def add(self, alert: Alert) -> None:
        self.grouper.add(alert, self.clock.monotonic())

    def advance(self, seconds: float) -> list[Flushed]:
        self.clock.advance(seconds)
        return self.grouper.due(self.clock.monotonic())

    def now(self) -> float:
        return self.clock.time()


def test_alerts_within_group_wait_are_one_notification_sent_when_the_wait_ends() -> None:
    rig = Rig()
    rig.add(breaker("candles", "closed", "open", rig.now()))
    assert rig.advance(10) == []
    rig.add(decision("child.paused", "candles", rig.now()))
    assert rig.advance(19.9) == []
    [flushed] = rig.advance(0.1)
    n = flushed.notification
    assert n.severity == "critical" and n.to_state == "open" and not n.resolved
    assert n.count == 2 and len(flushed.alert_ids) == 2
    assert n.time_until_half_open == 60.0
    assert n.title == "candles: breaker open"
    assert "closed -> open after 5 failures" in n.text


def test_later_alerts_wait_for_the_group_interval_and_a_close_resolves() -> None:
    rig = Rig()
    rig.add(breaker("candles", "closed", "open", rig.now()))
    [first] = rig.advance(30)
    rig.add(breaker("candles", "open", "half_open", rig.now()))
    rig.add(breaker("candles", "half_open", "closed", rig.now()))
    assert rig.advance(299) == []  # 299 s after the first flush
    [second] = rig.advance(1)
    n = second.notification
    assert n.resolved and n.severity == "info" and n.to_state == "closed"
    assert n.title == "candles: breaker closed"
    assert n.id != first.notification.id
    assert rig.advance(10_000) == []  # resolved: no reminders


def test_a_group_still_firing_is_reminded_every_repeat_interval() -> None:
    rig = Rig()
    rig.add(breaker("depth", "closed", "open", rig.now()))
    rig.advance(30)
    assert rig.advance(3599) == []
    [reminder] = rig.advance(1)
    assert reminder.notification.kind == "alert.reminder"
    assert reminder.notification.count == 0 and reminder.alert_ids == ()
    assert "still open" in reminder.notification.text
    [again] = rig.advance(3600)
    assert again.notification.kind == "alert.reminder"


def test_open_and_close_inside_one_wait_is_one_resolved_notification() -> None:
    rig = Rig()
    rig.add(breaker("candles", "closed", "open", rig.now()))
    rig.add(breaker("candles", "open", "half_open", rig.now() + 1))
    rig.add(breaker("candles", "half_open", "closed", rig.now() + 2))
    [flushed] = rig.advance(30)
    assert flushed.notification.resolved and flushed.notification.count == 3


def test_a_flapping_breaker_is_one_line_not_pairs() -> None:
    rig = Rig(GroupingPolicy(group_wait=30, group_interval=60, flap_transitions=3, flap_window=600))
    for i in range(4):
        at = rig.now() + i
        rig.add(breaker("sentiment", "closed", "open", at))
        rig.add(breaker("sentiment", "open", "half_open", at + 0.3))
        rig.add(breaker("sentiment", "half_open", "closed", at + 0.6))
    [flushed] = rig.advance(30)
    n = flushed.notification
    assert n.kind == "breaker.flapping"
    assert [line.kind for line in n.alerts] == ["breaker.flapping"]
    assert n.alerts[0].count == 12 and n.count == 12
    assert "opened 4 times" in n.text
    assert n.resolved  # it ended closed


def test_the_same_event_twice_is_one_alert_and_repeats_become_one_line_with_a_count() -> None:
    rig = Rig()
    event = decision("child.restarted", "candles", rig.now())
    rig.add(event)
    rig.add(event)
    for generation in range(3, 7):
        rig.add(decision("child.restarted", "candles", rig.now(), generation))
    [flushed] = rig.advance(30)
    [line] = flushed.notification.alerts
    assert line.count == 5 and line.text.endswith("(x5)")
    assert flushed.notification.severity == "warning"


def test_an_event_seen_again_after_its_group_was_sent_is_not_sent_twice() -> None:
    """Found by the property test: a replayed event right after a flush."""
    rig = Rig()
    event = breaker("depth", "closed", "open", rig.now())
    rig.add(event)
    [first] = rig.advance(30)
    rig.add(event)
    later = rig.advance(10_000)
    assert all(event.id not in f.alert_ids for f in later)
    assert all(f.notification.kind == "alert.reminder" for f in later)
    assert first.alert_ids == (event.id,)


def test_groups_are_per_service_by_default_and_group_by_is_configurable() -> None:
    rig = Rig()
    rig.add(breaker("candles", "closed", "open", rig.now()))
    rig.add(breaker("depth", "closed", "open", rig.now()))
    assert {f.notification.service for f in rig.advance(30)} == {"candles", "depth"}

    rig = Rig(GroupingPolicy(group_by=("severity",), group_wait=30))
    rig.add(breaker("candles", "closed", "open", rig.now()))
    rig.add(breaker("depth", "closed", "open", rig.now()))
    assert len(rig.advance(30)) == 1


def test_restored_group_state_still_resolves_after_a_restart() -> None:
    rig = Rig()
    rig.add(breaker("candles", "closed", "open", rig.now()))
    [opened] = rig.advance(30)
    restarted = Rig()
    restarted.grouper.restore(
        opened.notification.group_key, "candles", opened.notification, restarted.clock.monotonic()
    )
    restarted.add(breaker("candles", "half_open", "closed", restarted.now()))
    [closed] = restarted.advance(300)
    assert closed.notification.resolved


events_strategy = st.lists(
    st.tuples(
        st.sampled_from(["candles", "depth", "sentiment"]),
        st.sampled_from(["open", "half_open", "closed", "child.restarted", "child.paused"]),
        st.floats(min_value=0, max_value=120, allow_nan=False),  # seconds since the last event
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(events=events_strategy, duplicates=st.integers(0, 3))
def test_every_alert_is_represented_exactly_once(
    events: list[tuple[str, str, float]], duplicates: int
) -> None:
    """Against a pandas oracle: per service, the notifications' counts equal the distinct alerts."""
    rig = Rig(GroupingPolicy(group_wait=10, group_interval=45, repeat_interval=200))
    added: dict[str, str] = {}  # alert id -> service (the same event twice is one alert)
    flushed: list[Flushed] = []
    for service, what, gap in events:
        flushed += rig.advance(gap)
        if what.startswith("child."):
            alert = decision(what, service, rig.now(), generation=len(added))
        else:
            alert = breaker(service, "closed", what, rig.now(), failures=len(added))
        for _ in range(1 + duplicates):
            rig.add(alert)
        added[alert.id] = service
    flushed += rig.advance(10_000)

    ids = [alert_id for f in flushed for alert_id in f.alert_ids]
    assert sorted(ids) == sorted(added)
    expected = (
        pd.DataFrame(list(added.items()), columns=["id", "service"])
        .groupby("service")["id"]
        .nunique()
    )
    got = (
        pd.DataFrame(
            [(f.notification.service, f.notification.count) for f in flushed],
            columns=["service", "count"],
        )
        .groupby("service")["count"]
        .sum()
    )
    got = got[got > 0]
    pd.testing.assert_series_equal(
        got.sort_index(), expected.sort_index(), check_names=False, check_dtype=False
    )
