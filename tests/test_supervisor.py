"""The minimal supervisor: ordered start/stop, restarts by restart type, intensity, routing."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import pykka
import pytest

from tickvisor.clock import FakeClock
from tickvisor.messages import ChildExited, Crash, Ping, WhichChildren
from tickvisor.supervision import ChildSpec, RestartType, Supervisor, route

ASK = 5.0


class Worker(pykka.ThreadingActor):
    """A child that records its lifecycle and crashes when told "crash"."""

    def __init__(
        self, name: str, journal: list[str], parent: pykka.ActorRef[Any], gen: int
    ) -> None:
        super().__init__()
        self.name, self.journal, self.parent, self.generation = name, journal, parent, gen

    def on_start(self) -> None:
        self.journal.append(f"start {self.name}#{self.generation}")

    def on_stop(self) -> None:
        self.journal.append(f"stop {self.name}#{self.generation}")
        with contextlib.suppress(pykka.ActorDeadError):
            self.parent.tell(ChildExited(self.name, self.generation, None))

    def on_failure(self, *exc_info: Any) -> None:
        self.journal.append(f"crash {self.name}#{self.generation}")
        self.parent.tell(ChildExited(self.name, self.generation, "boom", "RuntimeError"))

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("boom")
        if isinstance(message, Ping):
            return True
        return (self.name, self.generation)


def spec(name: str, journal: list[str], **kwargs: Any) -> ChildSpec:
    return ChildSpec(
        name=name,
        factory=lambda parent, gen: Worker.start(name, journal, parent, gen),
        **kwargs,
    )


def children(sup: pykka.ActorRef[Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in sup.ask(WhichChildren(), timeout=ASK)}


def wait_for_generation(sup: pykka.ActorRef[Any], name: str, generation: int) -> None:
    # The restart happens on the supervisor's thread; asking it is the sync point.
    for _ in range(200):
        if children(sup)[name]["generation"] >= generation:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"{name} never reached generation {generation}")


def test_children_start_in_order_and_stop_in_reverse() -> None:
    journal: list[str] = []
    sup = Supervisor.start(
        "s", [spec("a", journal), spec("b", journal), spec("c", journal)], clock=FakeClock()
    )
    sup.ask(Ping(), timeout=ASK)
    assert journal == ["start a#1", "start b#1", "start c#1"]
    sup.stop(timeout=ASK)
    assert journal[3:] == ["stop c#1", "stop b#1", "stop a#1"]


def test_crashed_child_is_restarted_as_a_new_actor_reached_by_name() -> None:
    journal: list[str] = []
    sup = Supervisor.start("s", [spec("a", journal)], clock=FakeClock())
    assert route(sup, ["a"], "who") == ("a", 1)
    route_ref = children(sup)["a"]
    assert route_ref["alive"]
    sup.ask(Ping(), timeout=ASK)
    # Crash it through a direct tell, as a bug in a message handler would.
    first = next(r for r in pykka.ActorRegistry.get_all() if r.actor_class is Worker)
    first.tell("crash")
    wait_for_generation(sup, "a", 2)
    assert route(sup, ["a"], "who") == ("a", 2)
    assert "crash a#1" in journal


def test_restart_types() -> None:
    journal: list[str] = []
    sup = Supervisor.start(
        "s",
        [
            spec("temp", journal, restart=RestartType.TEMPORARY),
            spec("trans", journal, restart=RestartType.TRANSIENT),
        ],
        clock=FakeClock(),
    )
    sup.ask(Ping(), timeout=ASK)
    refs = {r.proxy().name.get(timeout=ASK): r for r in pykka.ActorRegistry.get_by_class(Worker)}
    refs["temp"].tell("crash")
    refs["trans"].stop(timeout=ASK)  # a normal exit: transient children stay down
    sup.ask(Ping(), timeout=ASK)
    state = children(sup)
    assert state["temp"]["generation"] == 1 and not state["temp"]["alive"]
    assert state["trans"]["generation"] == 1 and not state["trans"]["alive"]


def test_restart_intensity_stops_children_and_escalates() -> None:
    journal: list[str] = []
    escalated = threading.Event()
    reasons: list[str] = []

    def on_escalate(reason: str) -> None:
        reasons.append(reason)
        escalated.set()

    clock = FakeClock()
    sup = Supervisor.start(
        "root",
        [spec("a", journal), spec("b", journal)],
        clock=clock,
        max_restarts=2,
        within_seconds=30.0,
        on_escalate=on_escalate,
    )
    for generation in (1, 2, 3):
        sup.ask(Ping(), timeout=ASK)
        ref = next(
            r
            for r in pykka.ActorRegistry.get_by_class(Worker)
            if r.proxy().name.get(timeout=ASK) == "a"
        )
        ref.tell("crash")
        if generation < 3:
            wait_for_generation(sup, "a", generation + 1)
    assert escalated.wait(ASK)
    assert "exceeded the restart intensity" in reasons[0]
    assert sup.actor_stopped.wait(ASK)
    assert "stop b#1" in journal


def test_restarts_outside_the_window_do_not_escalate() -> None:
    journal: list[str] = []
    clock = FakeClock()
    escalated: list[str] = []
    sup = Supervisor.start(
        "s",
        [spec("a", journal)],
        clock=clock,
        max_restarts=1,
        within_seconds=10.0,
        on_escalate=escalated.append,
    )
    for generation in (1, 2, 3):
        sup.ask(Ping(), timeout=ASK)
        ref = pykka.ActorRegistry.get_by_class(Worker)[0]
        ref.tell("crash")
        wait_for_generation(sup, "a", generation + 1)
        clock.advance(11.0)
    assert escalated == []


def test_duplicate_child_names_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate child names"):
        Supervisor("s", [spec("a", []), spec("a", [])], clock=FakeClock())


def test_a_crashed_supervisor_still_stops_its_children_and_escalates() -> None:
    journal: list[str] = []
    reasons: list[str] = []
    escalated = threading.Event()

    def on_escalate(reason: str) -> None:
        reasons.append(reason)
        escalated.set()

    sup = Supervisor.start("s", [spec("a", journal)], clock=FakeClock(), on_escalate=on_escalate)
    sup.ask(Ping(), timeout=ASK)
    sup.tell(Crash("no-such-child"))  # raises inside the supervisor
    assert escalated.wait(ASK)  # called after the children were stopped
    assert "stop a#1" in journal
    assert reasons and "no-such-child" in reasons[0]
