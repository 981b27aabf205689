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


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """One child of a supervisor; the supervisor is a loop over a list of these."""

    name: str
    factory: ChildFactory
    restart: RestartType = RestartType.PERMANENT
    shutdown_timeout: float = 5.0
    start_timeout: float = 10.0
    is_supervisor: bool = False
