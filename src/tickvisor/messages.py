"""Every message that crosses an actor boundary: frozen dataclasses, never dicts.

Control messages go *to* a service; events come *from* one (or from a
supervisor) and are fanned out to whoever subscribed (its supervisor, the
alerts actor). Being frozen, a message can be shared between threads without
copying and logged without fear that someone changes it afterwards.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import pykka

if TYPE_CHECKING:
    from tickvisor.alerts.notification import Notification

# --- control messages (to a service) ----------------------------------------


@dataclass(frozen=True, slots=True)
class Iterate:
    """Run one iteration now.

    ``scheduled_at`` (monotonic) lets the service coalesce: an Iterate queued
    while an iteration was running becomes a single ``catch_up`` Iterate sent
    to the back of the inbox, behind any control message already waiting.
    """

    scheduled_at: float
    catch_up: bool = False
    #: Sent by the supervisor when a breaker's open period ends: runs even
    #: while the service is paused, so the half-open trial can happen.
    trial: bool = False


@dataclass(frozen=True, slots=True)
class Pause:
    """Stop iterating until :class:`Resume`; control messages are still answered."""

    reason: str = "operator"


@dataclass(frozen=True, slots=True)
class Resume:
    reason: str = "operator"


@dataclass(frozen=True, slots=True)
class InvalidateCache:
    """Drop the symbol cache so the next iteration reloads the symbol list."""


@dataclass(frozen=True, slots=True)
class ResetBreaker:
    """Force the breaker back to CLOSED (operator override)."""


@dataclass(frozen=True, slots=True)
class ApplyConfig:
    """Take over the parts of a reloaded service config that are safe to change live.

    The interval, the breaker's settings (its state is kept), the symbol
    source and the iteration deadline. Job settings (timeframes, levels,
    batch sizes, thresholds) are not: the supervisor restarts the service
    with the new config for those (:class:`ReconfigureChild` with ``restart``).
    Answered with ``{"applied": [keys], "not_applied": [keys]}``. ``config``
    is a :class:`~tickvisor.config.ServiceConfig`, typed ``object`` because a
    supervisor forwards it without looking inside.
    """

    config: object


@dataclass(frozen=True, slots=True)
class Ping:
    """Answered with True by every tickvisor actor once its ``on_start`` has run.

    pykka's ``start()`` returns before ``on_start`` runs; a supervisor asks
    Ping so that children start strictly in order, as in OTP.
    """


@dataclass(frozen=True, slots=True)
class GetMetrics:
    """Ask for the service's metrics dict (answered between iterations)."""


@dataclass(frozen=True, slots=True)
class InjectFailures:
    """Make the next ``count`` iterations fail (chaos drills and the demo)."""

    count: int
    reason: str = "injected failure"


@dataclass(frozen=True, slots=True)
class Crash:
    """Make the receiving actor raise, so pykka stops it (chaos drills and the demo).

    This is how a bug in a message handler looks to a supervisor: the actor
    is gone, its ``on_failure`` ran, and only supervision brings it back.
    """

    reason: str = "injected crash"


class CrashRequested(RuntimeError):
    """What an actor raises when it receives :class:`Crash`."""


@dataclass(frozen=True, slots=True)
class GenerateTicks:
    """Write the next synthetic batch; ``scheduled_at`` (monotonic) dates the batch.

    The feed stamps the batch with the time it was *due*, not the time it is
    handled, so a feed that falls behind still produces evenly spaced ticks.
    """

    scheduled_at: float


# --- events (from a service or a supervisor) --------------------------------


@dataclass(frozen=True, slots=True)
class BreakerTransition:
    """A circuit breaker changed state.

    ``at`` is wall time in epoch seconds; ``failure_count`` is the count at
    the moment of the change, which is what an operator wants in an alert.
    """

    service: str
    from_state: str
    to_state: str
    failure_count: int
    reason: str
    at: float
    #: The open period, on transitions to ``open``: when the half-open trial is due.
    retry_in_seconds: float | None = None
    #: Which instance of the service published it (0: not set by a supervised service).
    generation: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ChildExited:
    """A supervised actor stopped; ``error`` is None for a normal exit.

    ``generation`` identifies which instance exited, so a late report from a
    replaced instance is not mistaken for one from the current instance.
    """

    child: str
    generation: int
    error: str | None
    error_type: str | None = None

    @property
    def abnormal(self) -> bool:
        return self.error is not None


def report_exit(parent: pykka.ActorRef[Any] | None, exited: ChildExited) -> None:
    """Tell a child's supervisor that it stopped; without a parent, or with a dead one, no-op.

    Every supervised actor calls this from its ``on_stop`` and ``on_failure``:
    pykka itself tells nobody when an actor stops.
    """
    if parent is None:
        return
    with contextlib.suppress(pykka.ActorDeadError):  # the parent is gone: nobody to tell
        parent.tell(exited)


@dataclass(frozen=True, slots=True)
class SupervisorEvent:
    """A supervisor's decision about a child, published for the log and for alerting.

    ``kind`` is one of the stable event names: ``child.restarted``,
    ``child.paused``, ``child.resumed``, ``child.hung``, ``child.exited``,
    ``child.abandoned``, ``supervisor.escalated``. ``supervisor`` is the
    deciding supervisor's path (``root/services``); ``child`` is the child's
    name (the service name for services).
    """

    kind: str
    supervisor: str
    child: str | None
    generation: int
    reason: str
    at: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ConfigRejected:
    """A reloaded config file could not be used; the running config stays in force.

    ``error`` is the :class:`~tickvisor.config.ConfigError` text, which never
    shows a secret value. Published on the event bus: the alerts actor turns
    it into a warning alert, since nothing is broken yet but the next start
    from that file would fail.
    """

    file: str
    error: str
    at: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- supervisor requests (to a supervisor) -----------------------------------


@dataclass(frozen=True, slots=True)
class RouteToChild:
    """Deliver ``message`` to the child called ``child`` and return its reply.

    A restarted child is a new actor with a new ref, so callers address
    children by name through their supervisor rather than holding refs.
    """

    child: str
    message: object
    timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class WhichChildren:
    """Ask a supervisor for its children: name, generation, alive, restart type."""


@dataclass(frozen=True, slots=True)
class CountChildren:
    """Ask a supervisor for counts: specs, active, supervisors, workers (OTP's count_children)."""


@dataclass(frozen=True, slots=True)
class GetStatus:
    """Ask a supervisor for its own status node and its children's (one level deep)."""


@dataclass(frozen=True, slots=True)
class WhereIs:
    """Ask a supervisor for the current ref of a running child (OTP's ``whereis``)."""

    child: str


@dataclass(frozen=True, slots=True)
class PauseChild:
    """Operator pause: the child stops iterating until :class:`ResumeChild`, across restarts."""

    child: str
    reason: str = "operator"


@dataclass(frozen=True, slots=True)
class ResumeChild:
    """Lift an operator pause (a breaker hold lifts itself when the breaker closes)."""

    child: str
    reason: str = "operator"


@dataclass(frozen=True, slots=True)
class RestartChild:
    """Replace a running child with a new instance, or start a stopped one again."""

    child: str
    reason: str = "operator"


@dataclass(frozen=True, slots=True)
class StartChild:
    """Start a stopped child by name, or add and start a new one from ``spec`` (a ChildSpec).

    ``spec`` is typed ``object`` here because messages sit below supervision
    in the import order; the supervisor checks its type.
    """

    child: str
    spec: object | None = None


@dataclass(frozen=True, slots=True)
class ReconfigureChild:
    """Give a child a new config, for now and for every later restart.

    The supervisor rebuilds the child's spec from ``config`` (with the
    builder it was started with), so a restarted instance starts with the
    new config, not the one the tree was built from. The running instance
    is then told :class:`ApplyConfig`, or, with ``restart``, replaced by a
    new instance (not counted against the restart intensity: the operator
    asked for it by saving the file). ``config`` is typed ``object`` because
    the supervisor does not look inside it.
    """

    child: str
    config: object
    restart: bool = False
    reason: str = "config_reloaded"


@dataclass(frozen=True, slots=True)
class TerminateChild:
    """Stop a child and keep its spec; it is not restarted until started again."""

    child: str
    reason: str = "operator"


@dataclass(frozen=True, slots=True)
class DeleteChild:
    """Forget a stopped child's spec (OTP's ``delete_child``)."""

    child: str


# --- alerting (between the alerts actor and its channel actors) ---------------


@dataclass(frozen=True, slots=True)
class DeliverNotifications:
    """To a channel actor: deliver these (already in the outbox as pending for it)."""

    notifications: tuple[Notification, ...]
    #: Tries already made, per notification id (from the outbox).
    attempts: tuple[int, ...] = ()
    #: When each was first queued, epoch ms (for the max-age dead-letter rule).
    created_ms: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ChannelDisabled:
    """From a channel actor: its endpoint is gone for good (HTTP 410); tell the others."""

    channel: str
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class FlushAlerts:
    """To the alerts actor: send every waiting group now (shutdown, demos, tests)."""
