"""What ``GET /metrics`` serves: the process's counters plus this server's own gauges.

The counters, histograms and symbol-cache readings are counted by the
actors themselves into :data:`tickvisor.telemetry.REGISTRY`. What belongs
to one running tree rather than to the process (its alert outbox, read
from its database) is collected here, per admin server, so two trees in one
process never register the same metric twice.

Reading the outbox is a query, and a scrape must not hang on a locked or
unreachable database: it runs on a daemon thread and is given up after a
short timeout, in which case the gauge is simply absent from that scrape.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from tickvisor import telemetry
from tickvisor.alerts.outbox import PENDING, Outbox
from tickvisor.logs import get_logger

__all__ = ["OutboxCollector", "build_registry", "render"]

log = get_logger("tickvisor.admin")
T = TypeVar("T")


class _Process(Collector):
    """Everything the actors count, re-exported as is."""

    def collect(self) -> Iterator[Metric]:
        yield from telemetry.REGISTRY.collect()


class OutboxCollector(Collector):
    """``tickvisor_alert_outbox_pending``: deliveries not yet delivered nor dead-lettered."""

    def __init__(self, outbox: Outbox, timeout: float) -> None:
        self.outbox = outbox
        self.timeout = timeout
        self._busy = threading.Lock()  # held while a query runs: scrapes never pile up threads

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        counts = _bounded(self.outbox.counts, self.timeout, self._busy)
        if counts is None:
            return
        pending, waiting = self._families()
        pending.add_metric([], counts.get(PENDING, 0))
        waiting.add_metric([], counts.get("alerts_waiting", 0))
        yield from (pending, waiting)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "tickvisor_alert_outbox_pending",
                "Alert deliveries in the outbox still to be made (retries included).",
            ),
            GaugeMetricFamily(
                "tickvisor_alert_outbox_alerts_waiting",
                "Alerts in the outbox still waiting in their group for a notification.",
            ),
        )


def build_registry(engine: Engine | None, timeout: float) -> CollectorRegistry:
    """What one admin server renders: the process's metrics and, given ``engine``, its outbox."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Process())
    if engine is not None:
        registry.register(OutboxCollector(Outbox(engine), timeout))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """Prometheus text exposition format."""
    return generate_latest(registry)


def _bounded(fn: Callable[[], T], timeout: float, busy: threading.Lock) -> T | None:
    """``fn()`` on a daemon thread; None if it fails, runs over ``timeout`` s, or one still runs."""
    if not busy.acquire(blocking=False):
        return None
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn()
        except Exception as exc:
            box["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        finally:
            busy.release()
            done.set()

    threading.Thread(target=run, name="tickvisor-admin-outbox", daemon=True).start()
    if not done.wait(timeout):
        log.warning("admin.outbox_read_slow", timeout_seconds=timeout)
        return None
    if "error" in box:
        log.warning("admin.outbox_read_failed", error=box["error"][:300])
        return None
    value: T = box["value"]
    return value
