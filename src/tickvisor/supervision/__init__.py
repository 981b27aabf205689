"""Supervision: OTP-style supervisors over pykka actors.

The public face: :class:`ChildSpec` and its policies, the three strategies,
:class:`Supervisor`, :func:`route`, and :class:`Control` for operators.
"""

from tickvisor.supervision.control import Control
from tickvisor.supervision.policy import Backoff, Intensity
from tickvisor.supervision.spec import BreakerPolicy, ChildFactory, ChildSpec, RestartType
from tickvisor.supervision.strategy import (
    ONE_FOR_ALL,
    ONE_FOR_ONE,
    REST_FOR_ONE,
    Strategy,
    strategy_named,
)
from tickvisor.supervision.supervisor import (
    ChildState,
    InvalidChildState,
    NoSuchChild,
    Supervisor,
    route,
)

__all__ = [
    "ONE_FOR_ALL",
    "ONE_FOR_ONE",
    "REST_FOR_ONE",
    "Backoff",
    "BreakerPolicy",
    "ChildFactory",
    "ChildSpec",
    "ChildState",
    "Control",
    "Intensity",
    "InvalidChildState",
    "NoSuchChild",
    "RestartType",
    "Strategy",
    "Supervisor",
    "route",
    "strategy_named",
]
