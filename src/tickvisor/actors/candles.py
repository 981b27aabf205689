"""CandleService: ticks into OHLCV candles, the database doing the crunching.

The actor only decides *when* to fold and reports what happened; the work is
:class:`tickvisor.store.candles.CandleAggregator`, the same code ``tickvisor
aggregate`` runs. Each fold commits its candles and its cursor in one
transaction, so an iteration that fails or is killed half-way leaves nothing
behind and the next one redoes it.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, Engine

from tickvisor.actors.incremental import IncrementalService
from tickvisor.config import CandleServiceConfig
from tickvisor.store.candles import CandleAggregator
from tickvisor.store.ticks import symbols_with_ticks


class CandleService(IncrementalService):
    """Keeps ``candles`` up to date with ``ticks`` for the configured timeframes."""

    rows_metric = "ticks_processed"
    config_type = CandleServiceConfig
    written_metric = "candles_written"
    config: CandleServiceConfig
    job: CandleAggregator

    @classmethod
    def build_job(
        cls,
        engine: Engine,
        service: str,
        config: CandleServiceConfig,
        now: Callable[[], int] | None,
    ) -> CandleAggregator:
        return CandleAggregator(
            engine,
            service=service,
            timeframes=config.timeframes,
            rollover=config.daily_rollover,
            batch_ticks=config.batch_ticks,
            now_ms=now,
        )

    @staticmethod
    def symbols_in(conn: Connection) -> list[str]:
        return symbols_with_ticks(conn)
