"""The supervisor's costs: restart latency, routing overhead, and a thousand children.

Measured against raw pykka doing the same by hand, in the same process run:

- **Restart latency**: from telling a child :class:`~tickvisor.messages.Crash`
  to its replacement handling its first message (the supervisor's start
  ``Ping``), no backoff. Baseline: the caller waits for the crashed actor to
  stop, starts a new one and asks it ``Ping``. Goal, absolute: p50 <= 2 ms,
  p99 <= 10 ms.
- **Control round trip**: :func:`~tickvisor.supervision.route` and
  ``Control.send`` through one supervisor to a child, against ``ask`` on the
  child's ref. Goal: at most 2x. The two-level path (root -> services ->
  child) is reported for information.
- **1,000 children** under one supervisor: started (every child's
  ``on_start`` has run, in order) within 1 s and stopped within 2 s; baseline:
  raw pykka starting and stopping the same 1,000 actors in the same order.
- **No thread left** after 10,000 restarts: the thread count is back where it
  started once the supervisor is stopped. Baseline: the same 10,000 crashes
  replaced by hand (the ratio is the time per restart).

The supervisor logs the way production does (JSON, INFO), into a null stream,
so the cost of its log lines is part of what is measured.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

import pykka
import structlog

from benchmarks._harness import Result, interleaved_medians
from tickvisor.clock import RealClock
from tickvisor.logs import configure_logging
from tickvisor.messages import (
    ChildExited,
    Crash,
    CrashRequested,
    GetStatus,
    Ping,
    WhereIs,
    report_exit,
)
from tickvisor.supervision import ChildSpec, Control, Intensity, Supervisor, route

ASK = 5.0
#: Never escalate during a benchmark: restarts are the point.
UNLIMITED = Intensity(max_restarts=1_000_000, within_seconds=1.0)


class Probe:
    """Where child instances note when they handled their first message, and their ref."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.first: dict[tuple[str, int], float] = {}
        self.refs: dict[str, pykka.ActorRef[Any]] = {}

    def first_message(self, name: str, generation: int, ref: pykka.ActorRef[Any]) -> None:
        now = time.perf_counter()
        with self._changed:
            self.first[(name, generation)] = now
            self.refs[name] = ref
            self._changed.notify_all()

    def wait_first(self, name: str, generation: int) -> float:
        """When instance ``generation`` of ``name`` handled its first message."""
        key = (name, generation)
        with self._changed:
            if not self._changed.wait_for(lambda: key in self.first, ASK):
                raise TimeoutError(f"{name}#{generation} never handled a message")
            return self.first[key]

    def wait_all(self, keys: Sequence[tuple[str, int]]) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: all(k in self.first for k in keys), ASK):
                raise TimeoutError(f"not every instance of {len(keys)} started")


class Child(pykka.ThreadingActor):
    """A minimal supervised actor: answers ``Ping``, raises on ``Crash``, reports its exit."""

    use_daemon_thread = True

    def __init__(
        self,
        name: str,
        generation: int,
        parent: pykka.ActorRef[Any] | None,
        probe: Probe | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.generation = generation
        self.parent = parent
        self.probe = probe
        self.seen = False

    def on_receive(self, message: Any) -> Any:
        if not self.seen:
            self.seen = True
            if self.probe is not None:
                self.probe.first_message(self.name, self.generation, self.actor_ref)
        if isinstance(message, Ping):
            return True
        if isinstance(message, Crash):
            raise CrashRequested(message.reason)
        return self.generation

    def on_stop(self) -> None:
        report_exit(self.parent, ChildExited(self.name, self.generation, None))

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        kind = exception_type.__name__ if exception_type else "crash"
        report_exit(
            self.parent, ChildExited(self.name, self.generation, f"{kind}: {exception_value}", kind)
        )


def child_spec(name: str, probe: Probe | None = None) -> ChildSpec:
    def factory(parent: pykka.ActorRef[Any], generation: int) -> pykka.ActorRef[Any]:
        return Child.start(name, generation, parent, probe)

    return ChildSpec(name=name, factory=factory)


def start_supervisor(name: str, specs: Sequence[ChildSpec]) -> pykka.ActorRef[Any]:
    return Supervisor.start(
        name, specs, clock=RealClock(), scheduler=None, check_interval=None, intensity=UNLIMITED
    )


@contextlib.contextmanager
def production_logging() -> Iterator[None]:
    """Log as the service does (JSON, INFO) into a null stream; put things back after."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    noisy = {name: logging.getLogger(name).level for name in ("sqlalchemy", "pykka", "urllib3")}
    saved_structlog = structlog.get_config() if structlog.is_configured() else None
    saved_hooks = (sys.excepthook, threading.excepthook)
    with open(os.devnull, "w") as null:
        configure_logging("json", "INFO", stream=null)
        try:
            yield
        finally:
            for handler in list(root.handlers):
                root.removeHandler(handler)
            for handler in saved_handlers:
                root.addHandler(handler)
            root.setLevel(saved_level)
            for name, level in noisy.items():
                logging.getLogger(name).setLevel(level)
            if saved_structlog is None:
                structlog.reset_defaults()
            else:
                structlog.configure(**saved_structlog)
            sys.excepthook, threading.excepthook = saved_hooks


def wait_threads(target: int, timeout: float = 5.0) -> int:
    """Wait (bounded) for the thread count to fall to ``target``; return the count."""
    deadline = time.monotonic() + timeout
    while threading.active_count() > target and time.monotonic() < deadline:
        time.sleep(0.01)
    return threading.active_count()


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# --- 1. restart latency ---------------------------------------------------------------


def restart_latency(crashes: int = 2_000, warmup: int = 50) -> Result:
    probe, raw_probe = Probe(), Probe()
    sup = start_supervisor("bench", [child_spec("a", probe)])
    sup.ask(Ping(), timeout=ASK)
    raw = Child.start("a", 1, None, raw_probe)
    raw.ask(Ping(), timeout=ASK)
    generation = raw_generation = 1

    def ours() -> float:
        nonlocal generation
        ref = probe.refs["a"]
        started = time.perf_counter()
        ref.tell(Crash("bench"))
        generation += 1
        first = probe.wait_first("a", generation)
        sup.ask(Ping(), timeout=ASK)  # the supervisor has finished the restart
        return first - started

    def baseline() -> float:
        nonlocal raw, raw_generation
        started = time.perf_counter()
        raw.tell(Crash("bench"))
        raw.actor_stopped.wait(ASK)
        raw_generation += 1
        raw = Child.start("a", raw_generation, None, raw_probe)
        raw.ask(Ping(), timeout=ASK)
        return raw_probe.first[("a", raw_generation)] - started

    ours_s: list[float] = []
    raw_s: list[float] = []
    for i in range(warmup + crashes):
        if i % 2:  # alternate which goes first
            a = ours()
            b = baseline()
        else:
            b = baseline()
            a = ours()
        if i >= warmup:
            ours_s.append(a)
            raw_s.append(b)
    sup.stop(block=True, timeout=ASK)
    raw.stop(block=True, timeout=ASK)

    p50, p99 = percentile(ours_s, 50) * 1e3, percentile(ours_s, 99) * 1e3
    raw50, raw99 = percentile(raw_s, 50) * 1e3, percentile(raw_s, 99) * 1e3
    ratio = p50 / raw50
    print(
        f"restart latency ({crashes} crashes): supervisor p50 {p50:.3f} ms p99 {p99:.3f} ms "
        f"max {max(ours_s) * 1e3:.3f} ms; raw pykka p50 {raw50:.3f} ms p99 {raw99:.3f} ms; "
        f"ratio {ratio:.2f}x"
    )
    return Result(
        benchmark=f"restart latency, crash to the replacement's first message ({crashes} crashes)",
        measured=f"p50 {p50:.2f} ms, p99 {p99:.2f} ms",
        baseline=f"raw pykka wait-stop/start/ask: p50 {raw50:.2f} ms, p99 {raw99:.2f} ms",
        ratio=ratio,
        goal="p50 <= 2 ms, p99 <= 10 ms absolute",
        met=p50 <= 2.0 and p99 <= 10.0,
    )


# --- 2. control round trip ---------------------------------------------------------------


def control_round_trip(calls: int = 2_000, repeats: int = 7) -> Result:
    sup = start_supervisor("bench", [child_spec("a")])
    root = start_supervisor(
        "root",
        [
            ChildSpec(
                name="services",
                factory=lambda parent, generation: Supervisor.start(
                    "services",
                    [child_spec("a")],
                    clock=RealClock(),
                    check_interval=None,
                    intensity=UNLIMITED,
                    parent=parent,
                    path="root/services",
                    generation=generation,
                ),
                is_supervisor=True,
            )
        ],
    )
    root.ask(Ping(), timeout=ASK)
    child_ref: pykka.ActorRef[Any] = sup.ask(WhereIs("a"), block=True, timeout=ASK)
    control = Control(sup, timeout=ASK)
    ping = Ping()
    candidates: dict[str, Callable[[], object]] = {
        "ask": lambda: child_ref.ask(ping, timeout=ASK),
        "route": lambda: route(sup, ["a"], ping, timeout=ASK),
        "control": lambda: control.send("a", ping),
        "two levels": lambda: route(root, ["services", "a"], ping, timeout=ASK),
    }
    for fn in candidates.values():
        assert fn() is True
    medians = interleaved_medians(candidates, calls, repeats)
    sup.stop(block=True, timeout=ASK)
    root.stop(block=True, timeout=ASK)

    us = {name: seconds * 1e6 for name, seconds in medians.items()}
    route_ratio = us["route"] / us["ask"]
    control_ratio = us["control"] / us["ask"]
    ratio = max(route_ratio, control_ratio)
    print(
        f"control round trip: ask {us['ask']:.1f} us, route {us['route']:.1f} us "
        f"({route_ratio:.2f}x), Control.send {us['control']:.1f} us ({control_ratio:.2f}x), "
        f"two levels {us['two levels']:.1f} us ({us['two levels'] / us['ask']:.2f}x)"
    )
    return Result(
        benchmark="control round trip to a child through one supervisor (worse of the two)",
        measured=(
            f"`route`: {us['route']:.0f} us, `Control.send`: {us['control']:.0f} us "
            f"(two levels: {us['two levels']:.0f} us)"
        ),
        baseline=f"pykka `ask` to the child: {us['ask']:.0f} us",
        ratio=ratio,
        goal="<= 2x",
        met=ratio <= 2.0,
    )


# --- 3. a thousand children, and no thread left after many restarts -----------------------


def thousand_children(children: int = 1_000, repeats: int = 3) -> list[Result]:
    names = [f"c{i:04d}" for i in range(children)]
    specs = [child_spec(name) for name in names]
    before = threading.active_count()
    timings: dict[str, list[float]] = {"start": [], "stop": [], "raw start": [], "raw stop": []}
    active = 0
    for _ in range(repeats):
        started = time.perf_counter()
        sup = start_supervisor("bench", specs)
        sup.ask(Ping(), timeout=60)  # answered once on_start has started every child
        timings["start"].append(time.perf_counter() - started)
        active = sum(
            1 for c in sup.ask(GetStatus(), block=True, timeout=ASK)["children"] if c["alive"]
        )
        started = time.perf_counter()
        sup.stop(block=True, timeout=60)
        timings["stop"].append(time.perf_counter() - started)
        wait_threads(before)

        started = time.perf_counter()
        refs = []
        for name in names:
            ref = Child.start(name, 1, None)
            ref.ask(Ping(), timeout=ASK)
            refs.append(ref)
        timings["raw start"].append(time.perf_counter() - started)
        started = time.perf_counter()
        for ref in reversed(refs):
            ref.stop(block=True, timeout=ASK)
        timings["raw stop"].append(time.perf_counter() - started)
        wait_threads(before)

    s = {name: statistics.median(values) for name, values in timings.items()}
    print(
        f"{children} children ({active} alive): start {s['start']:.3f} s "
        f"(raw {s['raw start']:.3f} s), stop {s['stop']:.3f} s (raw {s['raw stop']:.3f} s)"
    )
    return [
        Result(
            benchmark=f"start {children} children under one supervisor, in order",
            measured=f"{s['start']:.3f} s ({active} alive)",
            baseline=f"raw pykka start + ask each: {s['raw start']:.3f} s",
            ratio=s["start"] / s["raw start"],
            goal="<= 1 s absolute",
            met=s["start"] <= 1.0 and active == children,
        ),
        Result(
            benchmark=f"stop a supervisor of {children} children (`stop(block=True)`)",
            measured=f"{s['stop']:.3f} s",
            baseline=f"raw pykka stop each, in reverse: {s['raw stop']:.3f} s",
            ratio=s["stop"] / s["raw stop"],
            goal="<= 2 s absolute",
            met=s["stop"] <= 2.0,
        ),
    ]


def no_thread_left(restarts: int = 10_000, children: int = 50) -> Result:
    names = [f"c{i:02d}" for i in range(children)]
    before = threading.active_count()

    probe = Probe()
    sup = start_supervisor("bench", [child_spec(name, probe) for name in names])
    sup.ask(Ping(), timeout=ASK)
    generations = dict.fromkeys(names, 1)
    probe.wait_all([(name, 1) for name in names])
    peak = threading.active_count()
    started = time.perf_counter()
    done = 0
    while done < restarts:
        batch = names[: min(children, restarts - done)]
        for name in batch:
            probe.refs[name].tell(Crash("bench"))
            generations[name] += 1
        probe.wait_all([(name, generations[name]) for name in batch])
        done += len(batch)
    sup.ask(Ping(), timeout=ASK)
    elapsed = time.perf_counter() - started
    status = sup.ask(GetStatus(), block=True, timeout=ASK)
    total = sum(c["generation"] - 1 for c in status["children"])
    sup.stop(block=True, timeout=ASK)
    after = wait_threads(before)

    raw_probe = Probe()
    refs = {name: Child.start(name, 1, None, raw_probe) for name in names}
    for ref in refs.values():
        ref.ask(Ping(), timeout=ASK)
    raw_generations = dict.fromkeys(names, 1)
    started = time.perf_counter()
    done = 0
    while done < restarts:
        batch = names[: min(children, restarts - done)]
        for name in batch:
            refs[name].tell(Crash("bench"))
        for name in batch:
            refs[name].actor_stopped.wait(ASK)
            raw_generations[name] += 1
            refs[name] = Child.start(name, raw_generations[name], None, raw_probe)
            refs[name].ask(Ping(), timeout=ASK)
        done += len(batch)
    raw_elapsed = time.perf_counter() - started
    for ref in reversed(refs.values()):
        ref.stop(block=True, timeout=ASK)
    raw_after = wait_threads(before)

    left, raw_left = after - before, raw_after - before
    per, raw_per = elapsed / restarts * 1e3, raw_elapsed / restarts * 1e3
    print(
        f"{total} restarts of {children} children: {elapsed:.2f} s ({per:.3f} ms each), "
        f"threads {before} before, {peak} running, {after} after "
        f"(abandoned {status['abandoned_total']}); raw pykka {raw_elapsed:.2f} s "
        f"({raw_per:.3f} ms each), {raw_after} after"
    )
    return Result(
        benchmark=f"threads left after {restarts:,} restarts ({children} children, in batches)",
        measured=f"{left} left ({before} before, {after} after); {per:.2f} ms per restart",
        baseline=f"raw pykka replacing by hand: {raw_left} left; {raw_per:.2f} ms per restart",
        ratio=per / raw_per,
        goal="0 threads left",
        met=left == 0 and total == restarts,
    )


def run() -> list[Result]:
    with production_logging():
        before = threading.active_count()
        results = [restart_latency(), control_round_trip()]
        wait_threads(before)
        results += thousand_children()
        results.append(no_thread_left())
    return results


if __name__ == "__main__":
    run()
