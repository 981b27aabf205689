"""SentimentService: positioning readings into time-windowed sentiment metrics.

The seed kept its history in memory (lost on every restart) and measured
its windows in rows, so a gap in the data stretched "the last hour" to any
length. Here the readings and the metrics live in SQL, windows are time
(:class:`tickvisor.store.sentiment.SentimentAggregator`), and every reading
is processed exactly once through a persisted cursor.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, Engine

from tickvisor.actors.incremental import IncrementalService
from tickvisor.config import SentimentServiceConfig
from tickvisor.store.inputs import symbols_with_sentiment
from tickvisor.store.sentiment import SentimentAggregator


class SentimentService(IncrementalService):
    """Keeps ``sentiment_metrics`` up to date with ``sentiment_raw``."""

    rows_metric = "readings_processed"
    config_type = SentimentServiceConfig
    written_metric = "metrics_written"
    config: SentimentServiceConfig
    job: SentimentAggregator

    @classmethod
    def build_job(
        cls,
        engine: Engine,
        service: str,
        config: SentimentServiceConfig,
        now: Callable[[], int] | None,
    ) -> SentimentAggregator:
        return SentimentAggregator(
            engine,
            service=service,
            contrarian_upper=config.contrarian_upper,
            contrarian_lower=config.contrarian_lower,
            bullish_above=config.bullish_above,
            bearish_below=config.bearish_below,
            max_age_seconds=config.max_age_seconds,
            batch_rows=config.batch_rows,
            now_ms=now,
        )

    @staticmethod
    def symbols_in(conn: Connection) -> list[str]:
        return symbols_with_sentiment(conn)
