"""Supervision: OTP-style supervisors over pykka actors."""

from tickvisor.supervision.spec import ChildFactory, ChildSpec, RestartType
from tickvisor.supervision.supervisor import Supervisor, route

__all__ = ["ChildFactory", "ChildSpec", "RestartType", "Supervisor", "route"]
