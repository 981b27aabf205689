"""A supervisor actor: starts children in order, restarts them, stops them in reverse.

pykka has no supervision: an actor that crashes on a ``tell`` is simply gone.
Children here report their exit (:class:`~tickvisor.messages.ChildExited`,
sent from their ``on_stop``/``on_failure``) and the supervisor applies the
child's restart type, one_for_one, bounded by restart intensity: more than
``max_restarts`` within ``within_seconds`` and it stops every child and
escalates. A restarted child is a new actor with a new ref and a higher
generation; callers reach children by name through :class:`RouteToChild`.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pykka

from tickvisor.clock import Clock
from tickvisor.logs import bind_context, get_logger
from tickvisor.messages import (
    BreakerTransition,
    ChildExited,
    Ping,
    RouteToChild,
    WhichChildren,
)
from tickvisor.supervision.spec import ChildSpec

log = get_logger(__name__)


@dataclass
class _Child:
    spec: ChildSpec
    ref: pykka.ActorRef[Any] | None = None
    generation: int = 0


class Supervisor(pykka.ThreadingActor):
    """A one_for_one supervisor with restart intensity and ordered shutdown.

    ``on_escalate`` is called (on the supervisor's thread) when the restart
    intensity is exceeded and no ``parent`` exists: the process entrypoint uses
    it to exit non-zero so systemd or Kubernetes restarts the whole process.
    """

    def __init__(
        self,
        name: str,
        specs: Sequence[ChildSpec],
        *,
        clock: Clock,
        max_restarts: int = 5,
        within_seconds: float = 30.0,
        parent: pykka.ActorRef[Any] | None = None,
        generation: int = 1,
        on_escalate: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"supervisor {name!r}: duplicate child names in {names}")
        self.name = name
        self.clock = clock
        self.max_restarts = max_restarts
        self.within_seconds = within_seconds
        self.parent = parent
        self.generation = generation
        self.on_escalate = on_escalate
        self._children = [_Child(spec) for spec in specs]
        self._restarts: deque[float] = deque()
        self._stopping = False
        self.log = get_logger("tickvisor.supervisor", supervisor=name)

    # --- lifecycle -------------------------------------------------------------

    def on_start(self) -> None:
        bind_context(supervisor=self.name)
        for child in self._children:
            self._start(child)
        self.log.info("supervisor.started", children=[c.spec.name for c in self._children])

    def on_stop(self) -> None:
        self._stopping = True
        self._stop_children()
        self.log.info("supervisor.stopped")
        if self.parent is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                self.parent.tell(ChildExited(self.name, self.generation, None))

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """A supervisor that crashes still stops its children and tells its parent."""
        reason = f"{exception_type.__name__ if exception_type else 'crash'}: {exception_value}"
        self.log.critical("supervisor.crashed", error=reason)
        self._give_up(reason, "Crash")

    def on_receive(self, message: Any) -> Any:
        match message:
            case ChildExited():
                self._on_child_exited(message)
                return None
            case BreakerTransition():
                # Breaker policies (pause / restart / ignore) arrive with the
                # supervision issue; the transition is logged by the service.
                return None
            case RouteToChild(child=name, message=inner, timeout=timeout):
                ref = self._ref(name)
                return ref.ask(inner, timeout=timeout)
            case Ping():
                return True
            case WhichChildren():
                return [
                    {
                        "name": c.spec.name,
                        "generation": c.generation,
                        "alive": c.ref is not None and c.ref.is_alive(),
                        "restart": c.spec.restart.value,
                        "is_supervisor": c.spec.is_supervisor,
                    }
                    for c in self._children
                ]
            case _:
                self.log.warning("supervisor.unknown_message", message_type=type(message).__name__)
                return None

    # --- children ---------------------------------------------------------------

    def _ref(self, name: str) -> pykka.ActorRef[Any]:
        for child in self._children:
            if child.spec.name == name:
                if child.ref is None or not child.ref.is_alive():
                    raise LookupError(f"child {name!r} of {self.name!r} is not running")
                return child.ref
        raise KeyError(f"supervisor {self.name!r} has no child {name!r}")

    def _start(self, child: _Child) -> None:
        """Start one child and wait (bounded) until its ``on_start`` has run."""
        child.generation += 1
        child.ref = child.spec.factory(self.actor_ref, child.generation)
        try:
            child.ref.ask(Ping(), timeout=child.spec.start_timeout)
        except pykka.Timeout:
            self.log.error(
                "child.start_timeout",
                child=child.spec.name,
                timeout=child.spec.start_timeout,
                generation=child.generation,
            )
        except pykka.ActorDeadError:
            self.log.error("child.start_failed", child=child.spec.name, generation=child.generation)

    def _on_child_exited(self, exited: ChildExited) -> None:
        child = next((c for c in self._children if c.spec.name == exited.child), None)
        if child is None or exited.generation != child.generation or self._stopping:
            return  # a stale report from a replaced instance, or our own shutdown
        child.ref = None
        if not child.spec.restart.should_restart(exited.abnormal):
            self.log.info("child.exited", child=child.spec.name, error=exited.error)
            return
        if self._intensity_exceeded():
            self._escalate(f"child {child.spec.name!r} exceeded restart intensity")
            return
        self._start(child)
        self.log.warning(
            "child.restarted",
            child=child.spec.name,
            generation=child.generation,
            reason=exited.error or "normal exit",
        )

    def _intensity_exceeded(self) -> bool:
        now = self.clock.monotonic()
        self._restarts.append(now)
        while self._restarts and now - self._restarts[0] > self.within_seconds:
            self._restarts.popleft()
        return len(self._restarts) > self.max_restarts

    def _escalate(self, reason: str) -> None:
        self.log.critical(
            "supervisor.escalated",
            reason=reason,
            max_restarts=self.max_restarts,
            within_seconds=self.within_seconds,
        )
        self._give_up(reason, "Escalation")
        self.actor_ref.stop(block=False)

    def _give_up(self, reason: str, error_type: str) -> None:
        """Stop every child, then hand the failure up: to the parent, or at the root, out."""
        self._stopping = True
        self._stop_children()
        if self.parent is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                self.parent.tell(ChildExited(self.name, self.generation, reason, error_type))
        elif self.on_escalate is not None:
            self.on_escalate(reason)

    def _stop_children(self) -> None:
        """Stop children in reverse start order, each within its shutdown timeout."""
        for child in reversed(self._children):
            ref, child.ref = child.ref, None
            if ref is None or not ref.is_alive():
                continue
            try:
                ref.stop(block=True, timeout=child.spec.shutdown_timeout)
            except pykka.Timeout:
                self.log.error(
                    "child.stop_timeout",
                    child=child.spec.name,
                    timeout=child.spec.shutdown_timeout,
                    generation=child.generation,
                )


def route(
    supervisor: pykka.ActorRef[Any], path: Sequence[str], message: object, timeout: float = 5.0
) -> Any:
    """Ask the actor at ``path`` (child names from ``supervisor`` down) and return its reply.

    Each hop's timeout is a little longer than the one below it, so the
    innermost timeout fires first and its error is the one the caller sees.
    """
    wrapped, hop_timeout = message, timeout
    for name in reversed(path):
        wrapped = RouteToChild(name, wrapped, timeout=hop_timeout)
        hop_timeout += 1.0
    return supervisor.ask(wrapped, timeout=hop_timeout)
