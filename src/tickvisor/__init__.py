"""tickvisor: a fault-tolerant runtime for market-data services.

The public face is small on purpose (as in pykka): the building blocks users
compose are re-exported here; everything else lives in private-by-convention
modules one job each.
"""

from tickvisor.actors.base import ServiceActor
from tickvisor.actors.breaker import CircuitBreaker, CircuitState
from tickvisor.actors.symbol_cache import SymbolCache
from tickvisor.clock import FakeClock, RealClock, SteppedScheduler, ThreadScheduler

__all__ = [
    "CircuitBreaker",
    "CircuitState",
    "FakeClock",
    "RealClock",
    "ServiceActor",
    "SteppedScheduler",
    "SymbolCache",
    "ThreadScheduler",
]

__version__ = "0.1.0"
