"""Prometheus metrics, counted by the code where each thing happens.

Actors must not import the admin API (imports go downwards only), yet the
admin API exposes what actors count. So the metric objects live here, below
both: a service increments ``ITERATIONS`` in its iteration, a supervisor
``CHILD_RESTARTS`` when it restarts a child, a channel ``ALERTS_SENT`` when a
receiver accepted a delivery, and :mod:`tickvisor.admin.metrics` only renders
:data:`REGISTRY`.

The registry is a dedicated :class:`~prometheus_client.CollectorRegistry`,
not the library's global default: nothing else in the process (or a test)
can collide with it, and tests read exactly what the admin API serves.
Series are labelled by ``service`` (or ``supervisor``/``child``,
``channel``), so several trees in one process stay apart by name; counters
are process totals, so a restarted service carries on counting where its
previous instance stopped, as Prometheus expects of a counter.

Two things are read, not pushed, because pushing would cost their hot path:
a symbol-cache hit is a few hundred nanoseconds and a Prometheus ``inc()``
alone costs more, so the cache keeps counting hits and misses in its own
fields (at the event, under its lock) and :class:`SymbolCacheCollector`
reads them at scrape time, along with each cache's age.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = [
    "ALERTS_DEAD_LETTERED",
    "ALERTS_FAILED",
    "ALERTS_SENT",
    "BREAKER_STATE",
    "BREAKER_STATE_VALUES",
    "BREAKER_TRANSITIONS",
    "CANDLE_LAG",
    "CHILD_RESTARTS",
    "ERRORS",
    "ITERATIONS",
    "ITERATION_SECONDS",
    "REGISTRY",
    "SYMBOL_CACHES",
    "SymbolCacheCollector",
    "breaker_state_value",
]

REGISTRY = CollectorRegistry(auto_describe=True)

# --- services (counted in actors/base.py) ------------------------------------------

ITERATIONS = Counter(
    "tickvisor_service_iterations",
    "Iterations a service ran, succeeded or failed (skipped ones are not counted).",
    ["service"],
    registry=REGISTRY,
)
ERRORS = Counter(
    "tickvisor_service_errors",
    "Iterations of a service that failed.",
    ["service"],
    registry=REGISTRY,
)
ITERATION_SECONDS = Histogram(
    "tickvisor_iteration_duration_seconds",
    "How long one iteration of a service took, succeeded or failed.",
    ["service"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
    registry=REGISTRY,
)
CANDLE_LAG = Gauge(
    "tickvisor_candle_lag_seconds",
    "How far a service's output lags its input, per symbol, after its last pass "
    "(the candle service: newest candle vs newest tick).",
    ["service", "symbol"],
    registry=REGISTRY,
)

# --- breakers (counted in actors/base.py, where a service publishes transitions) ---

#: Gauge values: FORCED_OPEN denies calls as OPEN does; DISABLED lets them through.
BREAKER_STATE_VALUES: Mapping[str, float] = {
    "closed": 0.0,
    "half_open": 1.0,
    "open": 2.0,
    "forced_open": 2.0,
    "disabled": 0.0,
}
BREAKER_STATE = Gauge(
    "tickvisor_breaker_state",
    "A service's circuit breaker: 0 closed (or disabled), 1 half_open, 2 open (or forced_open).",
    ["service"],
    registry=REGISTRY,
)
BREAKER_TRANSITIONS = Counter(
    "tickvisor_breaker_transitions",
    "Circuit breaker state changes, by the state entered.",
    ["service", "to_state"],
    registry=REGISTRY,
)

# --- supervision (counted in supervision/supervisor.py) ----------------------------

CHILD_RESTARTS = Counter(
    "tickvisor_child_restarts",
    "Children restarted by their supervisor: after a crash, a hang, a breaker policy, "
    "with a sibling, or on an operator's request.",
    ["supervisor", "child"],
    registry=REGISTRY,
)

# --- alert delivery (counted in alerts/channel_actor.py) ---------------------------

ALERTS_SENT = Counter(
    "tickvisor_alerts_sent",
    "Notifications a channel's receiver accepted.",
    ["channel"],
    registry=REGISTRY,
)
ALERTS_FAILED = Counter(
    "tickvisor_alerts_failed",
    "Notifications whose delivery try failed (each is retried later or dead-lettered).",
    ["channel"],
    registry=REGISTRY,
)
ALERTS_DEAD_LETTERED = Counter(
    "tickvisor_alerts_dead_lettered",
    "Notifications a channel gave up on (permanent error, too many tries, too old, "
    "or endpoint gone).",
    ["channel"],
    registry=REGISTRY,
)


def breaker_state_value(state: str) -> float:
    """The gauge value of a breaker state name (an unknown name reads as open: fail safe)."""
    return BREAKER_STATE_VALUES.get(state, 2.0)


# --- symbol caches (read at scrape time) -------------------------------------------


class _CacheStats(Protocol):
    """What the collector needs of a cache: :meth:`SymbolCache.stats`."""

    def stats(self) -> Mapping[str, Any]: ...


class SymbolCacheCollector(Collector):
    """Hits, misses and age of every tracked symbol cache, read when scraped.

    A service tracks its cache while it runs. When it stops, the cache's
    final hit and miss counts are folded into a per-service total, so the
    exported counters never go backwards across a restart.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, tuple[str, _CacheStats]] = {}
        self._retired: dict[str, tuple[int, int]] = {}
        self._next = 0

    def track(self, service: str, cache: _CacheStats) -> Callable[[], None]:
        """Export ``cache`` under ``service`` until the returned function is called."""
        with self._lock:
            self._next += 1
            key = self._next
            self._live[key] = (service, cache)

        def untrack() -> None:
            with self._lock:
                entry = self._live.pop(key, None)
            if entry is None:
                return  # already untracked
            stats = entry[1].stats()
            with self._lock:
                hits, misses = self._retired.get(service, (0, 0))
                self._retired[service] = (hits + stats["hits"], misses + stats["misses"])

        return untrack

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            live = list(self._live.values())
            totals = {service: [hits, misses] for service, (hits, misses) in self._retired.items()}
        ages: dict[str, float] = {}
        for service, cache in live:
            stats = cache.stats()
            counts = totals.setdefault(service, [0, 0])
            counts[0] += stats["hits"]
            counts[1] += stats["misses"]
            age = stats.get("age_seconds")
            if age is not None:
                # Two trees in one process may both run a "candles": the fresher one wins.
                ages[service] = min(age, ages.get(service, age))
        hits, misses, age_family = self._families()
        for service, (hit_count, miss_count) in sorted(totals.items()):
            hits.add_metric([service], hit_count)
            misses.add_metric([service], miss_count)
        for service, age in sorted(ages.items()):
            age_family.add_metric([service], age)
        yield from (hits, misses, age_family)

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, CounterMetricFamily, GaugeMetricFamily]:
        return (
            CounterMetricFamily(
                "tickvisor_symbol_cache_hits",
                "Symbol lookups a service's cache answered without reloading.",
                labels=["service"],
            ),
            CounterMetricFamily(
                "tickvisor_symbol_cache_misses",
                "Symbol lookups that found the cache stale, empty or invalidated.",
                labels=["service"],
            ),
            GaugeMetricFamily(
                "tickvisor_symbol_cache_age_seconds",
                "Seconds since a service's symbol list was last loaded "
                "(absent for inline symbols, which are never loaded).",
                labels=["service"],
            ),
        )


SYMBOL_CACHES = SymbolCacheCollector()
REGISTRY.register(SYMBOL_CACHES)
