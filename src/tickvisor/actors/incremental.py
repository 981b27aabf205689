"""The shape every incremental service shares: a job run in budgeted passes, tallied.

Candles, depth and sentiment differ only in their job (the store module
that folds input rows into output rows) and in what their rows are called
in the metrics. This base runs the job's pass each iteration under the
service's fence and time budget, asks for another iteration at once when
the budget ran out with work left, and keeps per-symbol counts for
``get_metrics`` (and so for the admin API and the status tree).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol

from sqlalchemy import Connection, Engine

from tickvisor.actors.base import ServiceActor
from tickvisor.clock import now_ms
from tickvisor.config import ServiceConfig
from tickvisor.store.catchup import CatchUpReport
from tickvisor.store.fencing import Fence


class CatchUpJob(Protocol):
    """A store-level job: ``CandleAggregator``, ``DepthAggregator``, ``SentimentAggregator``."""

    def catch_up(
        self,
        symbols: Sequence[str],
        *,
        fence: Fence | None = None,
        budget_seconds: float | None = None,
    ) -> CatchUpReport: ...


class IncrementalService(ServiceActor):
    """A service whose iteration is one pass of its :class:`CatchUpJob` over its symbols."""

    #: Metric names for input rows consumed and output rows written, e.g.
    #: ("ticks_processed", "candles_written"): the seed's names, kept for its users.
    rows_metric: ClassVar[str] = "rows_processed"
    written_metric: ClassVar[str] = "rows_written"
    #: The service's config model, whose defaults apply when the config leaves it out.
    config_type: ClassVar[type[ServiceConfig]] = ServiceConfig

    def __init__(self, name: str, config: ServiceConfig, **kwargs: Any) -> None:
        super().__init__(name, config, **kwargs)
        self.job = self.build_job(self.engine, name, config, lambda: now_ms(self.clock))
        self._rows = 0
        self._written = 0
        self._quarantined = 0
        self._per_symbol: dict[str, dict[str, Any]] = {}

    # --- what subclasses implement -------------------------------------------

    @classmethod
    def build_job(
        cls, engine: Engine, service: str, config: Any, now: Callable[[], int] | None
    ) -> CatchUpJob:
        """The job for ``config``: the actor and ``tickvisor aggregate`` build it the same way."""
        raise NotImplementedError

    @staticmethod
    def symbols_in(conn: Connection) -> list[str]:
        """Every symbol with input rows: what the service processes when no list is configured."""
        raise NotImplementedError

    # --- the iteration ----------------------------------------------------------

    def discover_symbols(self) -> list[str]:
        """A new symbol in the input is picked up at the next cache refresh, without a restart."""
        with self.engine.connect() as conn:
            return self.symbols_in(conn)

    def process_symbols(self, symbols: list[str]) -> int:
        report = self.job.catch_up(
            symbols, fence=self.fence, budget_seconds=self.iteration_budget_seconds
        )
        self._account(report)
        if report.unfinished:
            self.continue_soon()
        return report.written

    def get_metrics(self) -> dict[str, Any]:
        metrics = super().get_metrics()
        with self._metrics_lock:
            metrics[self.rows_metric] = self._rows
            metrics[self.written_metric] = self._written
            metrics["quarantined"] = self._quarantined
            metrics["per_symbol"] = {s: dict(m) for s, m in self._per_symbol.items()}
        lags = [m["freshness_lag_seconds"] for m in metrics["per_symbol"].values()]
        known = [lag for lag in lags if lag is not None]
        metrics["max_freshness_lag_seconds"] = max(known) if known else None
        return metrics

    def _account(self, report: CatchUpReport) -> None:
        with self._metrics_lock:
            self._rows += report.rows
            self._written += report.written
            self._quarantined += report.quarantined
            for symbol, progress in report.symbols.items():
                entry = self._per_symbol.setdefault(
                    symbol,
                    {
                        self.rows_metric: 0,
                        self.written_metric: 0,
                        "quarantined": 0,
                        "errors": 0,
                        "freshness_lag_seconds": None,
                    },
                )
                entry[self.rows_metric] += progress.rows
                entry[self.written_metric] += progress.written
                entry["quarantined"] += progress.quarantined
                if progress.lag_ms is not None:
                    entry["freshness_lag_seconds"] = progress.lag_ms / 1000
                    self.observe_lag(symbol, progress.lag_ms / 1000)
                if progress.error is not None:
                    entry["errors"] += 1
                    entry["last_error"] = progress.error


__all__ = ["CatchUpJob", "IncrementalService"]
