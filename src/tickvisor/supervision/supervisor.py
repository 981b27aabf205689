"""The supervisor actor: a generic loop over child specs, a restart log and a strategy.

pykka has no supervision: an actor that crashes on a ``tell`` is simply gone.
Children here report their exit (:class:`~tickvisor.messages.ChildExited`,
sent from their ``on_stop``/``on_failure``); a periodic check finds those
that vanish without a report and those that stop answering (hung). The
supervisor then applies the child's restart type and the strategy, waits
the backoff, and counts the restart against its intensity; one restart too
many and it stops every child and escalates to its parent.

A restarted child is a new actor with a new ref and a higher generation:
callers reach children by name (:class:`RouteToChild`, :class:`WhereIs`),
and reports from an old generation are recognised and ignored.

Everything the supervisor waits for (a child's start, a child's stop) is
bounded by the child's own timeout; backoff, breaker trials and checks are
scheduled on the injected scheduler, so tests drive them with a fake clock.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any

import pykka

from tickvisor import telemetry
from tickvisor.clock import Clock, Scheduler, Timer
from tickvisor.logs import bind_context, get_logger
from tickvisor.messages import (
    ApplyConfig,
    BreakerTransition,
    ChildExited,
    CountChildren,
    Crash,
    CrashRequested,
    DeleteChild,
    GetStatus,
    Iterate,
    Pause,
    PauseChild,
    Ping,
    ReconfigureChild,
    RestartChild,
    Resume,
    ResumeChild,
    RouteToChild,
    StartChild,
    SupervisorEvent,
    TerminateChild,
    WhereIs,
    WhichChildren,
    report_exit,
)
from tickvisor.supervision.directory import Listing, resolve
from tickvisor.supervision.policy import NO_BACKOFF, Backoff, Intensity, RestartLog
from tickvisor.supervision.spec import BreakerPolicy, ChildSpec, RestartType
from tickvisor.supervision.strategy import ONE_FOR_ONE, Strategy

EventSink = Any  # anything with ``tell(event)``: an ActorRef or an EventBus
#: Builds a child's spec from a new config (:class:`ReconfigureChild`): name, config -> spec.
SpecBuilder = Callable[[str, object], ChildSpec]


class ChildState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"
    STOPPED = "stopped"  # exited normally, or terminated on request
    FAILED = "failed"  # exited abnormally and not restarted


class NoSuchChild(LookupError):
    """The supervisor has no child of that name (HTTP 404 in the admin API)."""


class InvalidChildState(RuntimeError):
    """The request does not apply to the child as it is now (HTTP 409 in the admin API)."""


@dataclass(frozen=True, slots=True)
class _Check:
    """Periodic: find children that vanished without a report, or stopped answering."""


@dataclass(frozen=True, slots=True)
class _RestartDue:
    """A backoff (or a breaker's open period) has passed: restart these children now."""

    failed: str
    children: tuple[str, ...]
    reason: str
    token: int


@dataclass(frozen=True, slots=True)
class _TrialDue:
    """The breaker of ``child`` may go half-open now: let one iteration through."""

    child: str
    generation: int


@dataclass(eq=False)
class _Child:
    spec: ChildSpec
    #: Where the child's current ref is published for :func:`route`.
    listing: Listing
    _ref: pykka.ActorRef[Any] | None = None
    generation: int = 0
    state: ChildState = ChildState.STOPPED
    started_at: float | None = None  # monotonic
    failures: int = 0  # consecutive, for the backoff
    restart_times: list[float] = field(default_factory=list)
    operator_paused: bool = False
    breaker_hold: bool = False  # paused because the breaker opened
    breaker_state: str | None = None
    held: bool = False  # whether the running instance was last told Pause
    probe: pykka.Future[Any] | None = None
    probe_sent: float = 0.0
    pending: int = 0  # token of the scheduled restart; 0 when none
    timer: Timer | None = None
    last_exit: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def ref(self) -> pykka.ActorRef[Any] | None:
        return self._ref

    @ref.setter
    def ref(self, ref: pykka.ActorRef[Any] | None) -> None:
        self._ref = ref
        self.listing.publish(self.name, None if ref is _DEAD else ref)

    @property
    def alive(self) -> bool:
        return self.ref is not None and self.ref.is_alive()


class Supervisor(pykka.ThreadingActor):
    """Starts children in order, restarts them by strategy, stops them in reverse.

    ``on_escalate`` is called (on the supervisor's thread) when the restart
    intensity is exceeded and no ``parent`` exists: the process entrypoint
    uses it to exit non-zero so systemd or Kubernetes restarts the process.
    ``events`` receives a :class:`SupervisorEvent` for every decision.
    ``reconfigure`` builds a child's spec from a new config; without it the
    supervisor refuses :class:`ReconfigureChild`.
    """

    use_daemon_thread = True

    def __init__(
        self,
        name: str,
        specs: Sequence[ChildSpec],
        *,
        clock: Clock,
        scheduler: Scheduler | None = None,
        strategy: Strategy = ONE_FOR_ONE,
        intensity: Intensity | None = None,
        max_restarts: int | None = None,
        within_seconds: float | None = None,
        backoff: Backoff = NO_BACKOFF,
        check_interval: float | None = 1.0,
        parent: pykka.ActorRef[Any] | None = None,
        path: str | None = None,
        generation: int = 1,
        events: EventSink | None = None,
        on_escalate: Callable[[str], None] | None = None,
        seed: int | None = None,
        reconfigure: SpecBuilder | None = None,
    ) -> None:
        super().__init__()
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"supervisor {name!r}: duplicate child names in {names}")
        if backoff.enabled and scheduler is None:
            raise ValueError(f"supervisor {name!r}: a restart backoff needs a scheduler")
        base = intensity or Intensity()
        self.intensity = Intensity(
            base.max_restarts if max_restarts is None else max_restarts,
            base.within_seconds if within_seconds is None else within_seconds,
        )
        self.name = name
        self.path = path or name
        self.clock = clock
        self.scheduler = scheduler
        self.strategy = strategy
        self.backoff = backoff
        self.check_interval = check_interval
        self.parent = parent
        self.generation = generation
        self.events = events
        self.on_escalate = on_escalate
        self.reconfigure = reconfigure
        self._listing = Listing(self.actor_urn)
        self._children = [_Child(spec, self._listing) for spec in specs]
        self._restarts = RestartLog(self.intensity)
        self._random = random.Random(seed).random
        self._tokens = 0
        self._abandoned: list[pykka.ActorRef[Any]] = []
        self._abandoned_total = 0
        self._stopping = False
        self._started_at = clock.monotonic()
        self._check_timer: Timer | None = None
        self.log = get_logger("tickvisor.supervisor", supervisor=self.path)

    # --- lifecycle -------------------------------------------------------------

    def on_start(self) -> None:
        bind_context(supervisor=self.path)
        for child in self._children:
            self._start(child)
        if self.scheduler is not None and self.check_interval:
            self._check_timer = self.scheduler.tell_every(
                self.check_interval, self.actor_ref, _Check
            )
        self.log.info(
            "supervisor.started",
            strategy=self.strategy.name,
            children=[c.name for c in self._children],
            generation=self.generation,
        )

    def on_stop(self) -> None:
        self._stopping = True
        self._cancel_timers()
        self._stop_children(self._children)
        self._listing.close()
        self.log.info("supervisor.stopped", generation=self.generation)
        report_exit(self.parent, ChildExited(self.name, self.generation, None))

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """A supervisor that crashes still stops its children and tells its parent."""
        reason = f"{exception_type.__name__ if exception_type else 'crash'}: {exception_value}"
        self.log.critical("supervisor.crashed", error=reason)
        self._give_up(reason, "SupervisorCrashed")

    def on_receive(self, message: Any) -> Any:
        """Handle one message; a bad request is *returned* as its error, never raised.

        Raising would crash the supervisor when the request came by ``tell``
        (pykka calls ``on_failure``), taking the whole subtree down for a
        typo in a child's name. :func:`route` and the control API raise the
        returned error on the caller's side instead.
        """
        try:
            return self._dispatch(message)
        except (NoSuchChild, InvalidChildState, ValueError) as exc:
            self.log.info(
                "supervisor.request_refused", request=type(message).__name__, error=str(exc)
            )
            return exc

    def _dispatch(self, message: Any) -> Any:
        match message:
            case ChildExited():
                self._on_child_exited(message)
            case BreakerTransition():
                self._on_breaker(message)
            case _Check():
                self._check_children()
            case _RestartDue():
                self._on_restart_due(message)
            case _TrialDue():
                self._on_trial_due(message)
            case _BreakerRestart():
                self._on_breaker_restart(message)
            case Crash(reason=reason):
                raise CrashRequested(reason)
            case RouteToChild(child=name, message=inner):
                # Forward without waiting: the reply is the child's future, which
                # the caller unwraps, so a slow child never blocks its supervisor.
                return self._running(name).ask(inner, block=False)
            case WhereIs(child=name):
                return self._running(name)
            case Ping():
                return True
            case WhichChildren():
                return [self._child_info(c) for c in self._children]
            case CountChildren():
                return self._count_children()
            case GetStatus():
                return self.status()
            case PauseChild(child=name, reason=reason):
                return self._pause(self._named(name), reason)
            case ResumeChild(child=name, reason=reason):
                return self._resume(self._named(name), reason)
            case RestartChild(child=name, reason=reason):
                return self._restart_on_request(self._named(name), reason)
            case StartChild(child=name, spec=spec):
                return self._start_on_request(name, spec)
            case TerminateChild(child=name, reason=reason):
                return self._terminate(self._named(name), reason)
            case ReconfigureChild(child=name, config=config, restart=restart, reason=reason):
                return self._reconfigure(self._named(name), config, restart=restart, reason=reason)
            case DeleteChild(child=name):
                return self._delete(self._named(name))
            case _:
                self.log.warning("supervisor.unknown_message", message_type=type(message).__name__)
        return None

    # --- starting and stopping ------------------------------------------------

    def _start(self, child: _Child) -> bool:
        """Start one instance and wait (bounded) until its ``on_start`` has run.

        A child that fails to start is reported to ourselves as an abnormal
        exit, so it goes through intensity and backoff like any crash,
        instead of recursing here.
        """
        child.generation += 1
        child.probe = None
        child.held = False
        child.breaker_hold = False
        child.breaker_state = None
        child.pending = 0
        try:
            child.ref = child.spec.factory(self.actor_ref, child.generation)
            if child.operator_paused:
                # Queued ahead of the start probe, so a paused child never iterates.
                child.held = True
                child.ref.tell(Pause("operator"))
            child.ref.ask(Ping(), timeout=child.spec.start_timeout)
        except pykka.Timeout:
            # Not fatal by itself: the hang check replaces it if it never answers.
            self.log.error(
                "child.start_timeout",
                child=child.name,
                timeout=child.spec.start_timeout,
                generation=child.generation,
            )
        except Exception as exc:
            self.log.error(
                "child.start_failed",
                child=child.name,
                generation=child.generation,
                error=f"{type(exc).__name__}: {exc}",
            )
            child.state = ChildState.RESTARTING
            self.actor_ref.tell(
                ChildExited(child.name, child.generation, f"start failed: {exc}", "StartFailed")
            )
            child.ref = _DEAD
            return False
        child.state = ChildState.RUNNING
        child.started_at = self.clock.monotonic()
        if child.operator_paused:
            self._sync_hold(child)
        return True

    def _stop_children(self, children: Sequence[_Child]) -> None:
        """Stop children in reverse start order, each within its shutdown timeout."""
        for child in reversed(children):
            ref, child.ref = child.ref, None
            child.probe = None
            if ref is None or ref is _DEAD or not ref.is_alive():
                continue
            try:
                ref.stop(block=True, timeout=child.spec.shutdown_timeout)
            except pykka.Timeout:
                self._abandon(child, ref, f"did not stop within {child.spec.shutdown_timeout}s")

    def _abandon(self, child: _Child, ref: pykka.ActorRef[Any], reason: str) -> None:
        """Give up on an instance whose thread is stuck: it may never end, so count it."""
        with contextlib.suppress(pykka.ActorDeadError):
            ref.stop(block=False)  # it stops by itself if it ever gets unstuck
        self._abandoned.append(ref)
        self._abandoned_total += 1
        self.log.error(
            "child.abandoned", child=child.name, generation=child.generation, reason=reason
        )
        self._publish("child.abandoned", child, reason)

    # --- failures ----------------------------------------------------------------

    def _on_child_exited(self, exited: ChildExited) -> None:
        child = self._find(exited.child)
        if child is None or exited.generation != child.generation or self._stopping:
            return  # a stale report from a replaced instance, or our own shutdown
        if child.ref is None:
            return  # stopped by us on purpose (terminate, group restart)
        child.ref = None
        child.probe = None
        self._child_failed(child, exited.abnormal, exited.error or "normal exit")

    def _child_failed(self, child: _Child, abnormal: bool, reason: str) -> None:
        """Apply restart type, intensity, strategy and backoff to one exited child."""
        child.last_exit = reason
        if abnormal:
            self.log.error(
                "child.exited", child=child.name, generation=child.generation, reason=reason
            )
            self._publish("child.exited", child, reason)
        else:
            self.log.info(
                "child.exited", child=child.name, generation=child.generation, reason=reason
            )
        if not child.spec.restart.should_restart(abnormal):
            child.state = ChildState.FAILED if abnormal else ChildState.STOPPED
            return
        if self._restarts.record(self.clock.monotonic()):
            self._escalate(f"child {child.name!r} exceeded the restart intensity ({reason})")
            return
        child.restart_times.append(self.clock.monotonic())
        group = [
            self._named(n)
            for n in self.strategy.affected([c.name for c in self._children], child.name)
        ]
        # Siblings go down in reverse start order (OTP), then all come back in order.
        self._stop_children([c for c in group if c is not child and c.ref is not None])
        self._schedule_restart(child, group, reason)

    def _schedule_restart(self, failed: _Child, group: list[_Child], reason: str) -> None:
        now = self.clock.monotonic()
        if failed.started_at is not None and now - failed.started_at >= (
            self.backoff.reset_after_seconds
        ):
            failed.failures = 0  # it ran long enough: the next failure starts from min again
        delay = self.backoff.delay(failed.failures, self._random)
        failed.failures += 1
        self._tokens += 1
        for child in group:
            child.state = ChildState.RESTARTING
            child.pending = self._tokens
        due = _RestartDue(failed.name, tuple(c.name for c in group), reason, self._tokens)
        if delay > 0 and self.scheduler is not None:
            self.log.info(
                "child.restart_scheduled",
                child=failed.name,
                delay_seconds=round(delay, 6),
                attempt=failed.failures,
            )
            failed.timer = self.scheduler.tell_later(delay, self.actor_ref, due)
        else:
            self._on_restart_due(due)

    def _on_restart_due(self, due: _RestartDue) -> None:
        if self._stopping:
            return
        for name in due.children:
            child = self._find(name)
            if child is None or child.pending != due.token:
                continue  # deleted, terminated or restarted meanwhile
            child.timer = None
            if name != due.failed and child.spec.restart is RestartType.TEMPORARY:
                child.state = ChildState.STOPPED  # OTP: temporary siblings stay down
                child.pending = 0
                continue
            if self._start(child):
                why = due.reason if name == due.failed else f"sibling {due.failed!r}: {due.reason}"
                self._restarted(child, why)

    def _restarted(self, child: _Child, reason: str) -> None:
        telemetry.CHILD_RESTARTS.labels(supervisor=self.path, child=child.name).inc()
        self.log.warning(
            "child.restarted",
            child=child.name,
            generation=child.generation,
            reason=reason,
            strategy=self.strategy.name,
        )
        self._publish("child.restarted", child, reason)

    def _escalate(self, reason: str) -> None:
        self.log.critical(
            "supervisor.escalated",
            reason=reason,
            max_restarts=self.intensity.max_restarts,
            within_seconds=self.intensity.within_seconds,
            generation=self.generation,
        )
        if self.events is not None:
            self.events.tell(
                SupervisorEvent(
                    "supervisor.escalated",
                    self.path,
                    None,
                    self.generation,
                    reason,
                    self.clock.time(),
                )
            )
        self._give_up(reason, "Escalated")
        self.actor_ref.stop(block=False)

    def _give_up(self, reason: str, error_type: str) -> None:
        """Stop every child, then hand the failure up: to the parent, or at the root, out."""
        self._stopping = True
        self._cancel_timers()
        self._stop_children(self._children)
        self._listing.close()
        if self.parent is not None:
            report_exit(self.parent, ChildExited(self.name, self.generation, reason, error_type))
        elif self.on_escalate is not None:
            self.on_escalate(reason)

    # --- the periodic check: vanished and hung children -------------------------

    def _check_children(self) -> None:
        if self._stopping:
            return
        now = self.clock.monotonic()
        self._abandoned = [ref for ref in self._abandoned if ref.is_alive()]
        for child in list(self._children):
            ref = child.ref
            if ref is None or ref is _DEAD or child.state is ChildState.RESTARTING:
                continue
            if not ref.is_alive():
                # Its thread ended and no ChildExited came (or has not come yet,
                # in which case the report arrives later and is stale).
                child.ref = None
                self._child_failed(child, True, "stopped without reporting its exit")
                continue
            timeout = child.spec.hang_timeout
            if timeout is None:
                continue
            if child.probe is not None and not _done(child.probe):
                if now - child.probe_sent > timeout:
                    self._hung(child, ref, now - child.probe_sent)
                continue
            try:
                child.probe = ref.ask(Ping(), block=False)
                child.probe_sent = now
            except pykka.ActorDeadError:
                child.probe = None

    def _hung(self, child: _Child, ref: pykka.ActorRef[Any], silent_for: float) -> None:
        reason = f"no reply for {silent_for:.1f}s (hang_timeout {child.spec.hang_timeout}s)"
        self.log.error("child.hung", child=child.name, generation=child.generation, reason=reason)
        self._publish("child.hung", child, reason)
        child.ref = None
        child.probe = None
        self._abandon(child, ref, "hung")
        self._child_failed(child, True, f"hung: {reason}")

    # --- breaker events ------------------------------------------------------------

    def _on_breaker(self, event: BreakerTransition) -> None:
        child = self._find(event.service)
        if child is None or (event.generation and event.generation != child.generation):
            return
        child.breaker_state = event.to_state
        policy = child.spec.on_breaker_open
        if policy is BreakerPolicy.IGNORE or child.ref is None:
            return
        if event.to_state == "open":
            if policy is BreakerPolicy.RESTART:
                self._restart_after_open(child, event)
                return
            newly = not child.breaker_hold
            child.breaker_hold = True
            self._sync_hold(child)
            if newly:
                self._decided("child.paused", child, "breaker_open")
            if event.retry_in_seconds is not None and self.scheduler is not None:
                child.timer = self.scheduler.tell_later(
                    event.retry_in_seconds, self.actor_ref, _TrialDue(child.name, child.generation)
                )
        elif event.to_state == "forced_open" and policy is BreakerPolicy.PAUSE:
            child.breaker_hold = True  # until an operator resets it: no trial is scheduled
            self._sync_hold(child)
            self._decided("child.paused", child, "breaker_forced_open")
        elif event.to_state == "half_open":
            self._sync_hold(child)  # the hold lifts while trials run
        elif event.to_state in ("closed", "disabled") and child.breaker_hold:
            child.breaker_hold = False
            self._sync_hold(child)
            self._decided("child.resumed", child, f"breaker_{event.to_state}")

    def _restart_after_open(self, child: _Child, event: BreakerTransition) -> None:
        if child.pending:
            return
        child.breaker_hold = True
        self._sync_hold(child)  # no trial: the replacement starts with a closed breaker
        if self._restarts.record(self.clock.monotonic()):
            self._escalate(f"child {child.name!r} exceeded the restart intensity (breaker open)")
            return
        child.restart_times.append(self.clock.monotonic())
        self._tokens += 1
        child.pending = self._tokens
        due = _RestartDue(child.name, (child.name,), "breaker_open", self._tokens)
        delay = event.retry_in_seconds or 0.0
        self.log.info("child.restart_scheduled", child=child.name, delay_seconds=delay)
        if delay > 0 and self.scheduler is not None:
            child.timer = self.scheduler.tell_later(delay, self.actor_ref, _BreakerRestart(due))
        else:
            self._on_breaker_restart(_BreakerRestart(due))

    def _on_breaker_restart(self, message: _BreakerRestart) -> None:
        child = self._find(message.due.failed)
        if child is None or child.pending != message.due.token or self._stopping:
            return
        child.state = ChildState.RESTARTING
        self._stop_children([child])
        self._on_restart_due(message.due)

    def _on_trial_due(self, trial: _TrialDue) -> None:
        child = self._find(trial.child)
        if child is None or child.generation != trial.generation or child.ref is None:
            return
        if child.breaker_hold and child.breaker_state == "open":
            with contextlib.suppress(pykka.ActorDeadError):
                child.ref.tell(Iterate(self.clock.monotonic(), trial=True))

    def _sync_hold(self, child: _Child) -> None:
        """Tell the instance Pause or Resume when whether it should iterate has changed."""
        hold = child.operator_paused or (
            child.breaker_hold and child.breaker_state in ("open", "forced_open")
        )
        if child.state in (ChildState.RUNNING, ChildState.PAUSED):
            child.state = ChildState.PAUSED if hold else ChildState.RUNNING
        if hold == child.held or child.ref is None or child.ref is _DEAD:
            return
        child.held = hold
        reason = "operator" if child.operator_paused else "breaker"
        with contextlib.suppress(pykka.ActorDeadError):
            child.ref.tell(Pause(reason) if hold else Resume(reason))

    # --- control requests ------------------------------------------------------------

    def _pause(self, child: _Child, reason: str) -> dict[str, Any]:
        if child.state in (ChildState.STOPPED, ChildState.FAILED):
            raise InvalidChildState(f"{self.path}/{child.name} is {child.state}; start it first")
        if child.operator_paused:
            raise InvalidChildState(f"{self.path}/{child.name} is already paused")
        child.operator_paused = True
        self._sync_hold(child)
        self._decided("child.paused", child, reason)
        return self._child_info(child)

    def _resume(self, child: _Child, reason: str) -> dict[str, Any]:
        if not child.operator_paused:
            raise InvalidChildState(f"{self.path}/{child.name} is not paused by an operator")
        child.operator_paused = False
        self._sync_hold(child)
        self._decided("child.resumed", child, reason)
        return self._child_info(child)

    def _restart_on_request(self, child: _Child, reason: str) -> dict[str, Any]:
        """Operator restart: a fresh instance now; not counted against intensity."""
        self._cancel_child_timer(child)
        self._stop_children([child])
        child.failures = 0
        if self._start(child):
            self._restarted(child, reason)
        return self._child_info(child)

    def _start_on_request(self, name: str, spec: object | None) -> dict[str, Any]:
        if spec is not None:
            if not isinstance(spec, ChildSpec) or spec.name != name:
                raise ValueError(f"start_child: expected a ChildSpec named {name!r}, got {spec!r}")
            if self._find(name) is not None:
                raise InvalidChildState(f"{self.path} already has a child named {name!r}")
            child = _Child(spec, self._listing)
            self._children.append(child)
        else:
            child = self._named(name)
            if child.state not in (ChildState.STOPPED, ChildState.FAILED):
                raise InvalidChildState(f"{self.path}/{name} is {child.state}, not stopped")
        if self._start(child):
            self.log.info("child.started", child=name, generation=child.generation)
        return self._child_info(child)

    def _reconfigure(
        self, child: _Child, config: object, *, restart: bool, reason: str
    ) -> dict[str, Any]:
        """Adopt a child's new config: the spec first, so every later start uses it.

        Then the running instance takes the live part over (:class:`ApplyConfig`,
        queued behind whatever it is doing) or, with ``restart``, is replaced
        now like an operator restart. A child that is stopped or waiting for
        its backoff simply starts with the new spec when it next starts.
        """
        if self.reconfigure is None:
            raise InvalidChildState(f"{self.path} cannot reconfigure its children")
        spec = self.reconfigure(child.name, config)
        if not isinstance(spec, ChildSpec) or spec.name != child.name:
            raise ValueError(
                f"reconfigure: expected a ChildSpec named {child.name!r}, got {spec!r}"
            )
        previous = child.spec.on_breaker_open
        child.spec = spec
        if (
            spec.on_breaker_open is BreakerPolicy.IGNORE
            and previous is not BreakerPolicy.IGNORE
            and child.breaker_hold
        ):
            # Under "ignore" no breaker event lifts a hold any more: lift it now.
            child.breaker_hold = False
            self._sync_hold(child)
            self._decided("child.resumed", child, "breaker_policy_ignore")
        running = child.state in (ChildState.RUNNING, ChildState.PAUSED) and child.alive
        self.log.info(
            "child.reconfigured",
            child=child.name,
            generation=child.generation,
            reason=reason,
            restart=restart and running,
        )
        if running and restart:
            return self._restart_on_request(child, reason)
        if running and child.ref is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                child.ref.tell(ApplyConfig(config))
        return self._child_info(child)

    def _terminate(self, child: _Child, reason: str) -> dict[str, Any]:
        if child.state in (ChildState.STOPPED, ChildState.FAILED):
            raise InvalidChildState(f"{self.path}/{child.name} is already {child.state}")
        self._cancel_child_timer(child)
        self._stop_children([child])
        child.state = ChildState.STOPPED
        child.pending = 0
        self.log.info(
            "child.terminated", child=child.name, generation=child.generation, reason=reason
        )
        return self._child_info(child)

    def _delete(self, child: _Child) -> dict[str, Any]:
        if child.state not in (ChildState.STOPPED, ChildState.FAILED):
            raise InvalidChildState(
                f"{self.path}/{child.name} is {child.state}; terminate it first"
            )
        self._children.remove(child)
        self.log.info("child.deleted", child=child.name)
        return {"name": child.name, "deleted": True}

    # --- views ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """This supervisor's node and its children's (supervisor children without theirs)."""
        now = self.clock.monotonic()
        return {
            "name": self.name,
            "path": self.path,
            "kind": "supervisor",
            "state": "stopped" if self._stopping else "running",
            "generation": self.generation,
            "strategy": self.strategy.name,
            "restarts": self._restarts.in_window(now),
            "max_restarts": self.intensity.max_restarts,
            "within_seconds": self.intensity.within_seconds,
            "uptime_seconds": round(now - self._started_at, 3),
            "abandoned_threads": sum(1 for ref in self._abandoned if ref.is_alive()),
            "abandoned_total": self._abandoned_total,
            "children": [self._child_info(c) for c in self._children],
        }

    def _child_info(self, child: _Child) -> dict[str, Any]:
        now = self.clock.monotonic()
        window = self.intensity.within_seconds
        child.restart_times = [t for t in child.restart_times if now - t <= window]
        running = child.state in (ChildState.RUNNING, ChildState.PAUSED)
        return {
            "name": child.name,
            "path": f"{self.path}/{child.name}",
            "kind": "supervisor" if child.spec.is_supervisor else "worker",
            "state": child.state.value,
            "generation": child.generation,
            "alive": child.alive,
            "restart": child.spec.restart.value,
            "on_breaker_open": child.spec.on_breaker_open.value,
            "is_supervisor": child.spec.is_supervisor,
            "restarts": len(child.restart_times),
            "breaker_state": child.breaker_state,
            "paused_by": [
                who
                for who, on in (
                    ("operator", child.operator_paused),
                    ("breaker", child.breaker_hold),
                )
                if on
            ],
            "uptime_seconds": round(now - child.started_at, 3)
            if running and child.started_at is not None
            else None,
            "last_exit": child.last_exit,
        }

    def _count_children(self) -> dict[str, int]:
        return {
            "specs": len(self._children),
            "active": sum(1 for c in self._children if c.alive),
            "supervisors": sum(1 for c in self._children if c.spec.is_supervisor),
            "workers": sum(1 for c in self._children if not c.spec.is_supervisor),
        }

    # --- small helpers ---------------------------------------------------------------

    def _find(self, name: str) -> _Child | None:
        return next((c for c in self._children if c.name == name), None)

    def _named(self, name: str) -> _Child:
        child = self._find(name)
        if child is None:
            raise NoSuchChild(f"supervisor {self.path!r} has no child {name!r}")
        return child

    def _running(self, name: str) -> pykka.ActorRef[Any]:
        child = self._named(name)
        if child.ref is None or child.ref is _DEAD or not child.ref.is_alive():
            raise InvalidChildState(f"child {self.path}/{name} is not running ({child.state})")
        return child.ref

    def _decided(self, kind: str, child: _Child, reason: str) -> None:
        self.log.info(kind, child=child.name, generation=child.generation, reason=reason)
        self._publish(kind, child, reason)

    def _publish(self, kind: str, child: _Child, reason: str) -> None:
        if self.events is not None:
            self.events.tell(
                SupervisorEvent(
                    kind, self.path, child.name, child.generation, reason, self.clock.time()
                )
            )

    def _cancel_child_timer(self, child: _Child) -> None:
        if child.timer is not None:
            child.timer.cancel()
            child.timer = None
        child.pending = 0

    def _cancel_timers(self) -> None:
        if self._check_timer is not None:
            self._check_timer.cancel()
        for child in self._children:
            self._cancel_child_timer(child)


@dataclass(frozen=True, slots=True)
class _BreakerRestart:
    """The open period of a child with ``on_breaker_open: restart`` has ended."""

    due: _RestartDue


class _DeadRef:
    """Stands in for the ref of an instance that failed to start."""

    def is_alive(self) -> bool:
        return False


_DEAD: Any = _DeadRef()


def _done(future: pykka.Future[Any]) -> bool:
    try:
        future.get(timeout=0)
    except pykka.Timeout:
        return False
    except Exception:  # an answer, even an error, means it is not hung
        return True
    return True


def route(
    supervisor: pykka.ActorRef[Any], path: Sequence[str], message: object, timeout: float = 5.0
) -> Any:
    """Ask the actor at ``path`` (child names from ``supervisor`` down) and return its reply.

    The supervisors' listings (:mod:`~tickvisor.supervision.directory`) say
    where the child runs now, so it is asked directly, like a registered
    name in Erlang. If a hop is unknown, not running, or the instance dies
    before it answers, the supervisors are asked instead: each forwards the
    message and replies with the next hop's future at once, and this
    unwraps the futures against one deadline (or raises their precise error).
    """
    target = resolve(supervisor, path)
    if target is not None:
        try:
            return _raise_refusal(target.ask(message, timeout=timeout))
        except pykka.ActorDeadError:
            pass  # replaced meanwhile: the supervisors know where it runs now
    wrapped = message
    for name in reversed(path):
        wrapped = RouteToChild(name, wrapped, timeout=timeout)
    deadline = time.monotonic() + timeout
    reply: Any = supervisor.ask(wrapped, block=False)
    while isinstance(reply, pykka.Future):
        reply = reply.get(timeout=max(0.0, deadline - time.monotonic()))
    return _raise_refusal(reply)


def _raise_refusal(reply: Any) -> Any:
    """A supervisor answers a bad request with the error as its reply: raise it here."""
    if isinstance(reply, (NoSuchChild, InvalidChildState, ValueError)):
        raise reply
    return reply
