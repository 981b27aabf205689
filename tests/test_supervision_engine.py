"""The supervisor engine with plain pykka children: strategies, intensity, backoff, detection.

Children are tiny real actors that journal their lifecycle; time is the fake
clock, and backoff delays, hang checks and trials fire only when the
stepped scheduler is advanced.
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Any

import pykka
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actor_helpers import Collector, wait_for
from tickvisor.clock import FakeClock, SteppedScheduler
from tickvisor.messages import ChildExited, Crash, CrashRequested, Ping, SupervisorEvent
from tickvisor.supervision import (
    ONE_FOR_ALL,
    ONE_FOR_ONE,
    REST_FOR_ONE,
    Backoff,
    ChildSpec,
    Control,
    InvalidChildState,
    NoSuchChild,
    RestartType,
    Strategy,
    Supervisor,
    route,
)
from tickvisor.supervision.directory import resolve
from tickvisor.supervision.policy import Intensity, RestartLog

ASK = 5.0


class Worker(pykka.ThreadingActor):
    """Journals start/stop/crash, reports its exit, crashes on Crash, hangs on "hang"."""

    use_daemon_thread = True

    def __init__(
        self,
        name: str,
        journal: list[str],
        parent: pykka.ActorRef[Any],
        generation: int,
        *,
        report: bool = True,
        gate: threading.Event | None = None,
        stop_gate: threading.Event | None = None,
    ) -> None:
        super().__init__()
        self.name, self.journal, self.parent, self.generation = name, journal, parent, generation
        self.report, self.gate, self.stop_gate = report, gate, stop_gate

    def on_start(self) -> None:
        self.journal.append(f"start {self.name}#{self.generation}")

    def on_stop(self) -> None:
        if self.stop_gate is not None:
            self.stop_gate.wait(10)
        self.journal.append(f"stop {self.name}#{self.generation}")
        if self.report:
            with contextlib.suppress(pykka.ActorDeadError):
                self.parent.tell(ChildExited(self.name, self.generation, None))

    def on_failure(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.journal.append(f"crash {self.name}#{self.generation}")
        if self.report:
            with contextlib.suppress(pykka.ActorDeadError):
                self.parent.tell(ChildExited(self.name, self.generation, str(exc), "Crash"))

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Crash):
            raise CrashRequested(message.reason)
        if isinstance(message, Ping):
            return True
        if message == "hang":
            assert self.gate is not None
            self.gate.wait(30)
            return None
        return (self.name, self.generation)


def spec(name: str, journal: list[str], **kwargs: Any) -> ChildSpec:
    worker_args = {k: kwargs.pop(k) for k in ("report", "gate", "stop_gate") if k in kwargs}
    return ChildSpec(
        name=name,
        factory=lambda parent, gen: Worker.start(name, journal, parent, gen, **worker_args),
        **kwargs,
    )


def generation(control: Control, path: str) -> int:
    parent, _, name = path.rpartition("/")
    info = {c["name"]: c for c in control.which_children(parent)}[name]
    return int(info["generation"])


def crash(control: Control, path: str) -> None:
    control.tell(path, Crash("test crash"))


def wait_generation(control: Control, path: str, wanted: int) -> None:
    wait_for(lambda: generation(control, path) >= wanted, f"{path} at generation {wanted}")


def advance(scheduler: SteppedScheduler, sup: pykka.ActorRef[Any], seconds: float) -> None:
    """Move fake time, then wait until the supervisor has handled what came due."""
    scheduler.advance(seconds)
    sup.ask(Ping(), timeout=ASK)


def events_of(collector: pykka.ActorRef[Any]) -> list[SupervisorEvent]:
    result: list[SupervisorEvent] = collector.ask("events", timeout=ASK)
    return result


# --- strategies ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (ONE_FOR_ONE, ["crash b#1", "start b#2"]),
        (ONE_FOR_ALL, ["crash b#1", "stop c#1", "stop a#1", "start a#2", "start b#2", "start c#2"]),
        (REST_FOR_ONE, ["crash b#1", "stop c#1", "start b#2", "start c#2"]),
    ],
)
def test_each_strategy_restarts_its_group_stopping_in_reverse_and_starting_in_order(
    strategy: Strategy, expected: list[str]
) -> None:
    journal: list[str] = []
    sup = Supervisor.start(
        "s",
        [spec(n, journal) for n in "abc"],
        clock=FakeClock(),
        strategy=strategy,
        check_interval=None,
    )
    control = Control(sup)
    assert sup.ask(Ping(), timeout=ASK)  # answered once on_start has started every child
    assert journal == ["start a#1", "start b#1", "start c#1"]
    crash(control, "b")
    wait_generation(control, "b", 2)
    assert journal[3:] == expected
    assert route(sup, ["b"], "who") == ("b", 2)


def test_temporary_siblings_are_not_restarted_by_one_for_all() -> None:
    journal: list[str] = []
    sup = Supervisor.start(
        "s",
        [spec("a", journal), spec("t", journal, restart=RestartType.TEMPORARY)],
        clock=FakeClock(),
        strategy=ONE_FOR_ALL,
        check_interval=None,
    )
    control = Control(sup)
    crash(control, "a")
    wait_generation(control, "a", 2)
    states = {c["name"]: c["state"] for c in control.which_children()}
    assert states == {"a": "running", "t": "stopped"}
    assert "start t#2" not in journal


# --- intensity ---------------------------------------------------------------------


def test_intensity_escalates_through_two_levels_to_the_root_callback() -> None:
    """A supervisor over its intensity stops its children and fails as a child of its parent."""
    journal: list[str] = []
    clock = FakeClock()
    collector = Collector.start()
    escalated = threading.Event()
    reasons: list[str] = []

    def on_escalate(reason: str) -> None:
        reasons.append(reason)
        escalated.set()

    def start_mid(parent: pykka.ActorRef[Any], gen: int) -> pykka.ActorRef[Any]:
        return Supervisor.start(
            "mid",
            [spec("w", journal), spec("x", journal)],
            clock=clock,
            intensity=Intensity(max_restarts=1, within_seconds=30),
            check_interval=None,
            parent=parent,
            path="root/mid",
            generation=gen,
            events=collector,
        )

    root = Supervisor.start(
        "root",
        [spec("side", journal), ChildSpec("mid", start_mid, is_supervisor=True)],
        clock=clock,
        intensity=Intensity(max_restarts=1, within_seconds=30),
        check_interval=None,
        events=collector,
        on_escalate=on_escalate,
    )
    control = Control(root)
    crash(control, "mid/w")  # mid: restart 1 of 1
    wait_generation(control, "mid/w", 2)
    crash(control, "mid/w")  # mid: one too many -> escalates; root restarts mid (1 of 1)
    wait_generation(control, "mid", 2)
    assert generation(control, "mid/w") == 1  # a fresh mid starts fresh children
    assert journal.index("stop x#1") < journal.index("start w#1", 2)  # stopped, then anew
    crash(control, "mid/w")
    wait_generation(control, "mid/w", 2)
    crash(control, "mid/w")  # mid escalates again -> root's second restart is one too many
    assert escalated.wait(ASK)
    assert root.actor_stopped.wait(ASK)
    assert "exceeded the restart intensity" in reasons[0]
    assert "stop side#1" in journal  # root stopped its other children too
    escalations = [e.supervisor for e in events_of(collector) if e.kind == "supervisor.escalated"]
    assert escalations == ["root/mid", "root/mid", "root"]


def test_restart_log_forgets_restarts_outside_the_window() -> None:
    log = RestartLog(Intensity(max_restarts=2, within_seconds=10))
    assert not log.record(0.0)
    assert not log.record(5.0)
    assert log.record(9.0)  # three within 10 s
    assert not log.record(25.0)  # 0, 5 and 9 are more than 10 s ago
    assert log.in_window(25.0) == 1


# --- backoff -----------------------------------------------------------------------


def test_backoff_delays_double_up_to_the_cap_and_reset_after_a_quiet_run() -> None:
    journal: list[str] = []
    clock = FakeClock()
    scheduler = SteppedScheduler(clock)
    sup = Supervisor.start(
        "s",
        [spec("a", journal)],
        clock=clock,
        scheduler=scheduler,
        backoff=Backoff(min_seconds=1, max_seconds=4, factor=2, jitter=0, reset_after_seconds=60),
        intensity=Intensity(max_restarts=100, within_seconds=30),
        check_interval=None,
    )
    control = Control(sup)
    for expected_delay, gen in [(1, 2), (2, 3), (4, 4), (4, 5)]:
        crash(control, "a")
        wait_for(lambda: control.which_children()[0]["state"] == "restarting", "restarting state")
        scheduler.advance(expected_delay - 0.01)
        assert generation(control, "a") == gen - 1, f"restarted before {expected_delay}s"
        scheduler.advance(0.01)
        wait_generation(control, "a", gen)
    scheduler.advance(60)  # a quiet minute: the next failure starts from min again
    crash(control, "a")
    wait_for(lambda: control.which_children()[0]["state"] == "restarting", "restarting")
    scheduler.advance(1.0)
    wait_generation(control, "a", 6)


@given(
    min_seconds=st.floats(0.001, 10),
    spread=st.floats(1, 1000),
    factor=st.floats(1, 10),
    jitter=st.floats(0, 1),
    attempt=st.integers(0, 10_000),
    draw=st.floats(0, 1),
)
def test_backoff_delay_matches_the_textbook_formula(
    min_seconds: float, spread: float, factor: float, jitter: float, attempt: int, draw: float
) -> None:
    """Oracle: Akka's min(max, min * factor**n) * (1 + jitter * random), in plain floats."""
    max_seconds = min_seconds * spread
    backoff = Backoff(min_seconds, max_seconds, factor, jitter)
    try:
        base = min(max_seconds, min_seconds * factor**attempt)
    except OverflowError:
        base = max_seconds
    assert math.isclose(
        backoff.delay(attempt, lambda: draw), base * (1 + jitter * draw), rel_tol=1e-9
    )


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="min_seconds"):
        Backoff(min_seconds=5, max_seconds=1)
    with pytest.raises(ValueError, match="jitter"):
        Backoff(jitter=2)
    with pytest.raises(ValueError, match="scheduler"):
        Supervisor("s", [], clock=FakeClock(), backoff=Backoff(0.1, 1))


# --- failure detection ----------------------------------------------------------------


def test_a_child_gone_without_a_report_is_found_by_the_periodic_check() -> None:
    journal: list[str] = []
    clock = FakeClock()
    scheduler = SteppedScheduler(clock)
    sup = Supervisor.start(
        "s",
        [spec("silent", journal, report=False)],
        clock=clock,
        scheduler=scheduler,
        check_interval=1.0,
    )
    control = Control(sup)
    sup.ask(Ping(), timeout=ASK)
    (silent,) = pykka.ActorRegistry.get_by_class(Worker)
    silent.stop(timeout=ASK)  # gone, and nobody told the supervisor
    assert generation(control, "silent") == 1
    advance(scheduler, sup, 1.0)
    wait_generation(control, "silent", 2)
    info = control.which_children()[0]
    assert info["last_exit"] == "stopped without reporting its exit"


def test_a_hung_child_is_abandoned_replaced_and_counted() -> None:
    journal: list[str] = []
    gate = threading.Event()
    clock = FakeClock()
    scheduler = SteppedScheduler(clock)
    sup = Supervisor.start(
        "s",
        [spec("h", journal, gate=gate, hang_timeout=5.0)],
        clock=clock,
        scheduler=scheduler,
        check_interval=1.0,
    )
    control = Control(sup)
    control.tell("h", "hang")
    advance(scheduler, sup, 1.0)  # first probe sent; it cannot be answered
    advance(scheduler, sup, 4.0)
    assert generation(control, "h") == 1  # silent for 4 s: not yet
    advance(scheduler, sup, 2.0)  # silent for 6 s > 5 s
    wait_generation(control, "h", 2)
    status = control.status()
    assert status["abandoned_threads"] == 1
    assert status["children"][0]["last_exit"].startswith("hung:")
    assert route(sup, ["h"], "who") == ("h", 2)
    gate.set()  # the old instance wakes up, finds its stop request, and ends
    wait_for(lambda: control.status()["abandoned_threads"] == 0, "the abandoned thread to end")
    assert "stop h#1" in journal


def test_a_child_that_does_not_stop_in_time_is_abandoned_and_shutdown_goes_on() -> None:
    journal: list[str] = []
    stop_gate = threading.Event()
    sup = Supervisor.start(
        "s",
        [
            spec("a", journal),
            spec("slow", journal, stop_gate=stop_gate, shutdown_timeout=0.2),
            spec("c", journal),
        ],
        clock=FakeClock(),
        check_interval=None,
    )
    sup.ask(Ping(), timeout=ASK)
    sup.stop(block=True, timeout=ASK)
    assert journal[3] == "stop c#1"
    assert journal[4] == "stop a#1"  # slow was abandoned after 0.2 s, a still stopped
    stop_gate.set()


# --- dynamic children and control ----------------------------------------------------


def test_dynamic_children_start_terminate_restart_delete() -> None:
    journal: list[str] = []
    sup = Supervisor.start("s", [spec("a", journal)], clock=FakeClock(), check_interval=None)
    control = Control(sup)
    control.start_child("", spec("b", journal))
    assert [c["name"] for c in control.which_children()] == ["a", "b"]
    assert control.count_children() == {"specs": 2, "active": 2, "supervisors": 0, "workers": 2}
    with pytest.raises(InvalidChildState, match="already has"):
        control.start_child("", spec("b", journal))
    with pytest.raises(InvalidChildState, match="terminate it first"):
        control.delete_child("b")

    assert control.stop("b")["state"] == "stopped"
    assert control.count_children()["active"] == 1
    assert "stop b#1" in journal
    assert control.start("b")["generation"] == 2
    assert control.restart("b")["generation"] == 3  # operator restart: a fresh instance
    assert control.status()["restarts"] == 0  # not counted against intensity
    control.stop("b")
    assert control.delete_child("b") == {"name": "b", "deleted": True}
    assert [c["name"] for c in control.which_children()] == ["a"]
    with pytest.raises(NoSuchChild):
        control.restart("b")
    with pytest.raises(NoSuchChild):
        control.send("nope/a", Ping())


def test_route_reaches_the_current_instance_directly_and_never_a_stopped_one() -> None:
    journal: list[str] = []
    sup = Supervisor.start("s", [spec("a", journal)], clock=FakeClock(), check_interval=None)
    control = Control(sup)
    assert sup.ask(Ping(), timeout=ASK)  # answered once on_start has started every child
    first = resolve(sup, ["a"])
    assert first is not None and route(sup, ["a"], "who") == ("a", 1)
    control.restart("a")
    assert resolve(sup, ["a"]) is not first  # the listing follows the restart
    assert route(sup, ["a"], "who") == ("a", 2)
    control.stop("a")
    assert resolve(sup, ["a"]) is None
    with pytest.raises(InvalidChildState, match="not running"):
        route(sup, ["a"], "who")  # the supervisor's own answer, not a dead ref
    sup.stop(block=True, timeout=ASK)
    assert resolve(sup, []) is sup and resolve(sup, ["a"]) is None  # nothing left listed


def test_a_bad_request_by_tell_does_not_crash_the_supervisor() -> None:
    from tickvisor.messages import PauseChild, RouteToChild

    sup = Supervisor.start("s", [spec("a", [])], clock=FakeClock(), check_interval=None)
    sup.tell(RouteToChild("no-such-child", "hello"))
    sup.tell(PauseChild("no-such-child"))
    assert sup.ask(Ping(), timeout=ASK) is True
