"""CandleService: ticks into OHLCV candles, the database doing the crunching.

The actor only decides *when* to fold and reports what happened; the work is
:class:`tickvisor.store.candles.CandleAggregator`, the same code ``tickvisor
aggregate`` runs. Each fold commits its candles and its cursor in one
transaction, so an iteration that fails or is killed half-way leaves nothing
behind and the next one redoes it.
"""

from __future__ import annotations

from typing import Any

from tickvisor.actors.base import ServiceActor
from tickvisor.clock import now_ms
from tickvisor.config import CandleServiceConfig
from tickvisor.store.candles import CandleAggregator
from tickvisor.store.catchup import CatchUpReport
from tickvisor.store.ticks import symbols_with_ticks


class CandleService(ServiceActor):
    """Keeps ``candles`` up to date with ``ticks`` for the configured timeframes."""

    config: CandleServiceConfig

    def __init__(self, name: str, config: CandleServiceConfig, **kwargs: Any) -> None:
        super().__init__(name, config, **kwargs)
        self.aggregator = CandleAggregator(
            self.engine,
            service=name,
            timeframes=config.timeframes,
            rollover=config.daily_rollover,
            batch_ticks=config.batch_ticks,
            now_ms=lambda: now_ms(self.clock),
        )
        self._ticks_processed = 0
        self._candles_written = 0
        self._per_symbol: dict[str, dict[str, Any]] = {}

    def process_symbols(self, symbols: list[str]) -> int:
        report = self.aggregator.catch_up(
            symbols, fence=self.fence, budget_seconds=self.iteration_budget_seconds
        )
        self._account(report)
        if report.unfinished:
            self.continue_soon()
        return report.written

    def discover_symbols(self) -> list[str]:
        """Every symbol that has ticks: a new symbol starts aggregating without a restart."""
        with self.engine.connect() as conn:
            return symbols_with_ticks(conn)

    def get_metrics(self) -> dict[str, Any]:
        metrics = super().get_metrics()
        with self._metrics_lock:
            metrics["ticks_processed"] = self._ticks_processed
            metrics["candles_written"] = self._candles_written
            metrics["per_symbol"] = {s: dict(m) for s, m in self._per_symbol.items()}
        lags = [m["freshness_lag_seconds"] for m in metrics["per_symbol"].values()]
        known = [lag for lag in lags if lag is not None]
        metrics["max_freshness_lag_seconds"] = max(known) if known else None
        return metrics

    def _account(self, report: CatchUpReport) -> None:
        with self._metrics_lock:
            self._ticks_processed += report.rows
            self._candles_written += report.written
            for symbol, progress in report.symbols.items():
                entry = self._per_symbol.setdefault(
                    symbol,
                    {
                        "ticks_processed": 0,
                        "candles_written": 0,
                        "errors": 0,
                        "freshness_lag_seconds": None,
                    },
                )
                entry["ticks_processed"] += progress.rows
                entry["candles_written"] += progress.written
                if progress.lag_ms is not None:
                    entry["freshness_lag_seconds"] = progress.lag_ms / 1000
                if progress.error is not None:
                    entry["errors"] += 1
                    entry["last_error"] = progress.error
