"""Child specs: what a supervisor knows about a child, as plain data (OTP style)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import pykka

#: Starts one instance of a child: given the supervisor's ref and the new
#: instance's generation number, returns the started actor's ref.
ChildFactory = Callable[[pykka.ActorRef[Any], int], pykka.ActorRef[Any]]


class RestartType(StrEnum):
    """When a child is restarted (Erlang/OTP's three restart types)."""

    PERMANENT = "permanent"  # always
    TRANSIENT = "transient"  # only after an abnormal exit
    TEMPORARY = "temporary"  # never

    def should_restart(self, abnormal: bool) -> bool:
        return self is RestartType.PERMANENT or (self is RestartType.TRANSIENT and abnormal)


class BreakerPolicy(StrEnum):
    """What the supervisor does when the child's circuit breaker opens."""

    PAUSE = "pause"  # hold iterations while open; trial at the end; resume on close
    RESTART = "restart"  # replace the child once the open period ends
    IGNORE = "ignore"  # the breaker alone decides (iterations are skipped while open)


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """One child of a supervisor; the supervisor is a loop over a list of these.

    ``hang_timeout`` turns on hung-child detection: the supervisor pings the
    child every check, and a child that has not answered for this long (an
    iteration stuck in I/O) is abandoned and replaced. None: never.
    """

    name: str
    factory: ChildFactory
    restart: RestartType = RestartType.PERMANENT
    shutdown_timeout: float = 5.0
    start_timeout: float = 10.0
    on_breaker_open: BreakerPolicy = BreakerPolicy.PAUSE
    is_supervisor: bool = False
    hang_timeout: float | None = None

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"child name must be non-empty and without '/', got {self.name!r}")
        for field in ("shutdown_timeout", "start_timeout"):
            value = getattr(self, field)
            if not value > 0:
                raise ValueError(f"child {self.name!r}: {field} must be > 0, got {value}")
        if self.hang_timeout is not None and not self.hang_timeout > 0:
            raise ValueError(
                f"child {self.name!r}: hang_timeout must be > 0 or None, got {self.hang_timeout}"
            )
