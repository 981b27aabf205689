"""CandleService: ticks into OHLCV candles, one SQL pass per timeframe per iteration.

The actor only moves cursors and keys; the database does the crunching
(:func:`tickvisor.store.candles.aggregate_candles`). Each iteration commits
its candles and its cursor in one transaction, so an iteration that fails or
is killed half-way leaves nothing behind and the next one redoes it.
"""

from __future__ import annotations

from typing import Any

from tickvisor.actors.base import ServiceActor
from tickvisor.clock import now_ms
from tickvisor.config import CandleServiceConfig
from tickvisor.store.candles import aggregate_candles
from tickvisor.store.ticks import symbols_with_ticks


class CandleService(ServiceActor):
    """Keeps ``candles`` up to date with ``ticks`` for the configured timeframes."""

    config: CandleServiceConfig

    def __init__(self, name: str, config: CandleServiceConfig, **kwargs: Any) -> None:
        super().__init__(name, config, **kwargs)
        self.timeframes = list(config.timeframes)

    def process_symbols(self, symbols: list[str]) -> int:
        with self.engine.begin() as conn:
            written = aggregate_candles(
                conn, self.name, symbols, self.timeframes, now_ms(self.clock)
            )
        return sum(written.values())

    def discover_symbols(self) -> list[str]:
        """Every symbol that has ticks: a new symbol starts aggregating without a restart."""
        with self.engine.connect() as conn:
            return symbols_with_ticks(conn)
