"""A synthetic market-data feed, so the demo and the tests have live input to process.

Each batch writes ticks (for candles) and, when enabled, one order-book
snapshot per symbol (for depth) and one positioning reading per symbol (for
sentiment), all in one transaction.

The generator is plain, seeded Python (reproducible batches for tests); the
actor only decides *when* a batch is written and survives a database that
comes and goes, because a feed that dies on the first lock timeout would hide
exactly the failures the rest of the runtime exists to handle.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pykka
from sqlalchemy.exc import SQLAlchemyError

from tickvisor.clock import Clock, Scheduler, Timer, now_ms
from tickvisor.logs import get_logger
from tickvisor.messages import GenerateTicks, GetMetrics, Ping
from tickvisor.store.inputs import insert_depth_snapshots, insert_sentiment_rows
from tickvisor.store.ticks import insert_ticks

if TYPE_CHECKING:
    from types import TracebackType

    from sqlalchemy import Engine

SOURCE = "synthetic"

#: Rough mid prices, so demo candles look like the market an operator knows.
BASE_PRICES: dict[str, float] = {"EURUSD": 1.08, "USDJPY": 150.0, "GBPUSD": 1.27}
_DEFAULT_PRICE = 1.0
# Per-tick volatility of the mid, as a fraction of the price (~0.2 pip on EUR/USD).
_STEP_SIGMA = 0.00002
_MIN_SPREAD_POINTS = 3
_MAX_SPREAD_POINTS = 20
_LOT = 100_000.0
_MAX_LOTS = 50
BOOK_LEVELS = 10
# Positioning moves slowly: a step of about half a percentage point per reading.
_SENTIMENT_SIGMA = 0.5


@dataclass(slots=True)
class _Walk:
    mid: float
    digits: int
    last_ts: int | None = None
    long_pct: float = 50.0

    @property
    def point(self) -> float:
        return 10.0**-self.digits


def _normalise(symbol: str) -> str:
    return "".join(ch for ch in symbol.upper() if ch.isalnum())


def _walk_for(symbol: str) -> _Walk:
    key = _normalise(symbol)
    mid = BASE_PRICES.get(key, _DEFAULT_PRICE)
    # FX quoting convention: JPY crosses have 3 decimals, the others 5.
    digits = 3 if key.endswith("JPY") else 5
    return _Walk(mid=mid, digits=digits)


class SyntheticTickGenerator:
    """A seeded random walk of bid/ask quotes per symbol.

    Each batch covers the milliseconds since the previous one (``interval_ms``
    before the first), with timestamps increasing per symbol across batches,
    so candles built from it have the shape real quotes give them.
    """

    def __init__(
        self, symbols: Sequence[str], seed: int | None = None, *, interval_ms: int = 1000
    ) -> None:
        if not symbols:
            raise ValueError("SyntheticTickGenerator: needs at least one symbol")
        self.symbols = list(dict.fromkeys(symbols))
        self._rng = random.Random(seed)
        # Books and readings draw from their own stream, so adding them left
        # the seeded tick sequence (and every test built on it) unchanged.
        self._side_rng = random.Random(None if seed is None else seed + 1)
        self._walks = {symbol: _walk_for(symbol) for symbol in self.symbols}
        self._interval_ms = max(1, interval_ms)
        self._previous_now: int | None = None

    def next_batch(self, now_ms: int, count: int) -> list[dict[str, object]]:
        """``count`` ticks dated in (previous batch, ``now_ms``], sorted by time."""
        if count <= 0:
            return []
        window_start = (
            self._previous_now if self._previous_now is not None else now_ms - self._interval_ms
        )
        self._previous_now = max(now_ms, window_start)
        keyed: list[tuple[int, str, dict[str, object]]] = []
        per_symbol, extra = divmod(count, len(self.symbols))
        for index, symbol in enumerate(self.symbols):
            n = per_symbol + (1 if index < extra else 0)
            walk = self._walks[symbol]
            keyed.extend(
                (ts, symbol, self._tick(symbol, walk, ts))
                for ts in self._timestamps(walk, window_start, now_ms, n)
            )
        keyed.sort(key=lambda item: (item[0], item[1]))
        return [tick for _, _, tick in keyed]

    def depth_snapshots(self, now_ms: int) -> list[dict[str, object]]:
        """One order book per symbol at ``now_ms``, around the symbol's current mid."""
        rng = self._side_rng
        books: list[dict[str, object]] = []
        for symbol, walk in self._walks.items():
            point = walk.point
            half = rng.randint(_MIN_SPREAD_POINTS, _MAX_SPREAD_POINTS) * point / 2
            bids = [
                [round(walk.mid - half - level * point, walk.digits), self._lots(rng)]
                for level in range(BOOK_LEVELS)
            ]
            asks = [
                [round(walk.mid + half + level * point, walk.digits), self._lots(rng)]
                for level in range(BOOK_LEVELS)
            ]
            books.append(
                {"symbol": symbol, "ts_ms": now_ms, "provider": SOURCE, "bids": bids, "asks": asks}
            )
        return books

    def sentiment_readings(self, now_ms: int) -> list[dict[str, object]]:
        """One positioning reading per symbol at ``now_ms``: a bounded random walk of long %."""
        rng = self._side_rng
        readings: list[dict[str, object]] = []
        for symbol, walk in self._walks.items():
            walk.long_pct = min(95.0, max(5.0, walk.long_pct + rng.gauss(0.0, _SENTIMENT_SIGMA)))
            long_pct = round(walk.long_pct, 2)
            readings.append(
                {
                    "symbol": symbol,
                    "ts_ms": now_ms,
                    "provider": SOURCE,
                    "long_pct": long_pct,
                    "short_pct": round(100.0 - long_pct, 2),
                    "total_traders": rng.randint(1_000, 50_000),
                }
            )
        return readings

    @staticmethod
    def _lots(rng: random.Random) -> float:
        return rng.randint(1, _MAX_LOTS) * _LOT

    def _timestamps(self, walk: _Walk, window_start: int, now_ms: int, n: int) -> list[int]:
        """``n`` increasing timestamps after both the window start and the symbol's last tick."""
        if n == 0:
            return []
        low = window_start + 1
        if walk.last_ts is not None:
            low = max(low, walk.last_ts + 1)
        high = max(now_ms, low + n - 1)  # a clock that stood still still gets distinct ts
        stamps = sorted(self._rng.sample(range(low, high + 1), n))
        walk.last_ts = stamps[-1]
        return stamps

    def _tick(self, symbol: str, walk: _Walk, ts: int) -> dict[str, object]:
        walk.mid *= math.exp(self._rng.gauss(0.0, _STEP_SIGMA))
        point = walk.point
        spread = self._rng.randint(_MIN_SPREAD_POINTS, _MAX_SPREAD_POINTS)
        bid = round(walk.mid - spread * point / 2, walk.digits)
        ask = round(bid + spread * point, walk.digits)
        return {
            "symbol": symbol,
            "ts_ms": ts,
            "bid": bid,
            "ask": ask,
            # Quote feeds carry no trade price; candles fall back to the mid.
            "price": None,
            "volume": self._rng.randint(1, _MAX_LOTS) * _LOT,
            "source": SOURCE,
        }


class FeedActor(pykka.ThreadingActor):
    """Writes one generated batch per ``interval_seconds``, one transaction per batch."""

    use_daemon_thread = True  # an abandoned feed must not keep the process alive

    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        scheduler: Scheduler,
        symbols: Sequence[str],
        *,
        interval_seconds: float = 1.0,
        ticks_per_interval: int = 20,
        seed: int | None = None,
        depth_snapshots: bool = False,
        sentiment_readings: bool = False,
    ) -> None:
        super().__init__()
        if interval_seconds <= 0:
            raise ValueError(f"FeedActor: interval_seconds must be > 0, got {interval_seconds}")
        self.engine = engine
        self.clock = clock
        self.scheduler = scheduler
        self.interval_seconds = interval_seconds
        self.ticks_per_interval = ticks_per_interval
        self.write_depth = depth_snapshots
        self.write_sentiment = sentiment_readings
        self.generator = SyntheticTickGenerator(
            symbols, seed, interval_ms=round(interval_seconds * 1000)
        )
        # Bound here, not at import: binding freezes the logging configuration
        # in force at that moment, and the CLI configures logging after imports.
        self.log = get_logger(__name__, service="feed")
        self._timer: Timer | None = None
        self._ticks_written = 0
        self._snapshots_written = 0
        self._readings_written = 0
        self._batches_written = 0
        self._insert_failures = 0
        self._last_error: str | None = None
        self._last_batch_ms: int | None = None

    def on_start(self) -> None:
        clock = self.clock
        self._timer = self.scheduler.tell_every(
            self.interval_seconds,
            self.actor_ref,
            lambda: GenerateTicks(scheduled_at=clock.monotonic()),
        )
        self.log.info(
            "feed.started",
            symbols=self.generator.symbols,
            interval_seconds=self.interval_seconds,
            ticks_per_interval=self.ticks_per_interval,
        )

    def on_stop(self) -> None:
        self._cancel_timer()
        self.log.info("feed.stopped", ticks_written=self._ticks_written)

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._cancel_timer()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, GenerateTicks):
            self._write_batch(message)
            return None
        if isinstance(message, GetMetrics):
            return self.metrics()
        if isinstance(message, Ping):
            return True
        self.log.warning("feed.unknown_message", message_type=type(message).__name__)
        return None

    def metrics(self) -> dict[str, Any]:
        return {
            "service": "feed",
            "symbols": list(self.generator.symbols),
            "ticks_written": self._ticks_written,
            "snapshots_written": self._snapshots_written,
            "readings_written": self._readings_written,
            "batches_written": self._batches_written,
            "insert_failures": self._insert_failures,
            "last_error": self._last_error,
            "last_batch_ms": self._last_batch_ms,
        }

    def _write_batch(self, message: GenerateTicks) -> None:
        # Date the batch when it was due: a backlog then yields evenly spaced
        # ticks rather than a burst all stamped "now".
        lag_ms = max(0, round((self.clock.monotonic() - message.scheduled_at) * 1000))
        batch_ms = now_ms(self.clock) - lag_ms
        rows = self.generator.next_batch(batch_ms, self.ticks_per_interval)
        books = self.generator.depth_snapshots(batch_ms) if self.write_depth else []
        readings = self.generator.sentiment_readings(batch_ms) if self.write_sentiment else []
        try:
            with self.engine.begin() as conn:
                written = insert_ticks(conn, rows)
                snapshots = insert_depth_snapshots(conn, books)
                sentiment = insert_sentiment_rows(conn, readings)
        except SQLAlchemyError as exc:
            self._insert_failures += 1
            self._last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.log.error(
                "feed.insert_failed",
                error=self._last_error,
                error_type=type(exc).__name__,
                rows=len(rows),
                exc_info=exc,
            )
            return
        self._ticks_written += written
        self._snapshots_written += snapshots
        self._readings_written += sentiment
        self._batches_written += 1
        self._last_batch_ms = batch_ms

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


__all__ = ["BASE_PRICES", "FeedActor", "SyntheticTickGenerator"]
