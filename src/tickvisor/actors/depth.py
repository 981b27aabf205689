"""DepthService: order-book snapshots into depth metrics, each snapshot exactly once.

The seed's depth service looked only at the newest snapshot, so every other
snapshot stayed unprocessed for ever, and it swallowed every error, so its
breaker could never open. Here every snapshot past the persisted cursor is
processed (:class:`tickvisor.store.depth.DepthAggregator`); a bad snapshot
is quarantined with its reason and never fails the iteration, while a
database fault does, so the breaker sees it.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, Engine

from tickvisor.actors.incremental import IncrementalService
from tickvisor.config import DepthServiceConfig
from tickvisor.store.depth import DepthAggregator
from tickvisor.store.inputs import symbols_with_snapshots


class DepthService(IncrementalService):
    """Keeps ``depth_metrics`` and ``depth_metrics_1m`` up to date with ``depth_snapshots``."""

    rows_metric = "snapshots_processed"
    config_type = DepthServiceConfig
    written_metric = "metrics_written"
    config: DepthServiceConfig
    job: DepthAggregator

    @classmethod
    def build_job(
        cls,
        engine: Engine,
        service: str,
        config: DepthServiceConfig,
        now: Callable[[], int] | None,
    ) -> DepthAggregator:
        return DepthAggregator(
            engine,
            service=service,
            levels=config.levels,
            batch_snapshots=config.batch_snapshots,
            now_ms=now,
        )

    @staticmethod
    def symbols_in(conn: Connection) -> list[str]:
        return symbols_with_snapshots(conn)
