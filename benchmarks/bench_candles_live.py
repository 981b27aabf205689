"""Live: 50 symbols x 50 ticks/s, CandleService every 1 s: p99 freshness lag at most 2 s.

Two runs in this process, each on a fresh SQLite file, under the same load:

* a feeder thread writes 5 ticks per symbol every 100 ms (250 rows, one
  transaction, timestamped with the wall clock), i.e. 50 x 50 ticks/s;
* tickvisor: the real :class:`~tickvisor.actors.candles.CandleService` actor
  (``interval_seconds=1``, all seven timeframes, the 50 symbols inline,
  RealClock + ThreadScheduler);
* baseline: the naive pandas job in a plain thread every 1 s: find the ticks
  newer than the last id seen, SELECT every tick of the day they fall in,
  ``resample`` to the seven timeframes, ``executemany`` upsert.

A sampler thread reads, every 100 ms and in one statement (one snapshot),
each symbol's freshness lag from the database: its newest tick's ``ts_ms``
minus the newest ``last_tick_ms`` among its 1m candles (before its first
candle: minus its oldest tick). Every (sample, symbol) pair is one
observation. ``TICKVISOR_BENCH_LIVE_SECONDS`` (default 60) sets each run's length.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from benchmarks._candles_baseline import UPSERT_CANDLES, pandas_candles
from benchmarks._harness import Result
from tickvisor.actors.candles import CandleService
from tickvisor.clock import RealClock, ThreadScheduler
from tickvisor.config import CandleServiceConfig
from tickvisor.logs import configure_logging
from tickvisor.messages import GetMetrics
from tickvisor.store import TIMEFRAMES, insert_ticks, make_engine, open_database

GOAL_SECONDS = 2.0
SECONDS = float(os.environ.get("TICKVISOR_BENCH_LIVE_SECONDS", "60"))
SYMBOLS = [f"T{i:02d}/USD" for i in range(50)]
TICKS_PER_SECOND = 50  # per symbol
FEED_PERIOD = 0.1  # seconds between feeder transactions
SAMPLE_PERIOD = 0.1
INTERVAL = 1.0  # both aggregators

_DAY_MS = TIMEFRAMES["1d"]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _periodic(stop: threading.Event, period: float, work: Callable[[], None]) -> None:
    """Run ``work`` every ``period`` s at a fixed rate; overrun periods are skipped, not queued."""
    origin = time.monotonic()
    ticks = 0
    while not stop.is_set():
        work()
        ticks = max(ticks + 1, int((time.monotonic() - origin) / period) + 1)
        stop.wait(max(0.0, origin + ticks * period - time.monotonic()))


@dataclass
class Feeder:
    """Offers ``TICKS_PER_SECOND`` ticks per symbol per second, one transaction per period.

    Like a real feed, it never drops ticks: when a write is held up (the
    database is locked), the next transaction carries every period that fell
    due meanwhile, each tick keeping the timestamp it was generated at. How
    late ticks reach the database is recorded as ``delays``.
    """

    engine: Engine
    origin_ms: int = field(default_factory=_now_ms)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(7))
    mids: np.ndarray = field(default_factory=lambda: np.linspace(0.8, 150.0, len(SYMBOLS)))
    next_period: int = 0
    rows_written: int = 0
    #: Commit time minus the newest tick's timestamp, per transaction (seconds).
    delays: list[float] = field(default_factory=list)

    def feed_once(self) -> None:
        period_ms = round(FEED_PERIOD * 1000)
        per_symbol = round(TICKS_PER_SECOND * FEED_PERIOD)
        spacing = period_ms // per_symbol
        due = (_now_ms() - self.origin_ms) // period_ms  # periods ended by now
        rows: list[dict[str, Any]] = []
        for period in range(self.next_period, due):
            end = self.origin_ms + (period + 1) * period_ms
            steps = self.rng.normal(0.0, 2e-5, size=(len(SYMBOLS), per_symbol)).cumsum(axis=1)
            prices = self.mids[:, None] * (1.0 + steps)
            self.mids = prices[:, -1].copy()
            rows.extend(
                {
                    "symbol": symbol,
                    "ts_ms": end - (per_symbol - 1 - k) * spacing,
                    "bid": float(prices[i, k]) - 5e-5,
                    "ask": float(prices[i, k]) + 5e-5,
                    "volume": float(1 + (i + k) % 9),
                    "source": "bench",
                }
                for i, symbol in enumerate(SYMBOLS)
                for k in range(per_symbol)
            )
        if not rows:
            return
        with self.engine.begin() as conn:
            insert_ticks(conn, rows)
        self.delays.append((_now_ms() - rows[-1]["ts_ms"]) / 1000)
        self.rows_written += len(rows)
        self.next_period = due


class Sampler:
    """Every (sample, symbol) freshness lag in seconds, read from the database."""

    QUERY = """
        WITH s(symbol) AS (VALUES {values})
        SELECT s.symbol,
               (SELECT max(ts_ms) FROM ticks WHERE symbol = s.symbol),
               (SELECT min(ts_ms) FROM ticks WHERE symbol = s.symbol),
               (SELECT max(last_tick_ms) FROM candles
                 WHERE symbol = s.symbol AND timeframe = '1m')
        FROM s
    """.format(values=", ".join("(?)" for _ in SYMBOLS))

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lags: list[float] = []
        #: Wall clock at the sample minus the newest folded tick: lag plus feed delay.
        self.staleness: list[float] = []
        self._conn: sqlite3.Connection | None = None

    def sample_once(self) -> None:
        if self._conn is None:
            self._conn = sqlite3.connect(self.path, timeout=5, check_same_thread=False)
        rows = self._conn.execute(self.QUERY, SYMBOLS).fetchall()
        now = _now_ms()
        for _, newest, oldest, folded in rows:
            if newest is None:
                continue
            covered = folded if folded is not None else oldest
            self.lags.append(max(0, newest - covered) / 1000)
            self.staleness.append(max(0, now - covered) / 1000)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


@dataclass
class BaselineJob:
    """The naive pandas candle job: every run recomputes the whole day of new ticks."""

    path: Path
    last_id: int = 0
    runs: int = 0
    run_seconds: list[float] = field(default_factory=list)
    _conn: sqlite3.Connection | None = None

    def run_once(self) -> None:
        if self._conn is None:
            self._conn = sqlite3.connect(
                self.path, timeout=5, isolation_level=None, check_same_thread=False
            )
        conn = self._conn
        started = time.perf_counter()
        newest_id, oldest_ms = conn.execute(
            "SELECT max(id), min(ts_ms) FROM ticks WHERE id > ?", (self.last_id,)
        ).fetchone()
        if newest_id is None:
            return
        day_start = oldest_ms - oldest_ms % _DAY_MS
        ticks = pd.read_sql_query(
            "SELECT symbol, ts_ms, bid, ask, price, volume FROM ticks "
            "WHERE ts_ms >= ? AND id <= ? ORDER BY id",
            conn,
            params=(day_start, newest_id),
        )
        ticks = ticks.sort_values("ts_ms", kind="stable")
        rows = pandas_candles(ticks, _now_ms())
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(UPSERT_CANDLES, rows)
        conn.execute("COMMIT")
        self.last_id = newest_id
        self.runs += 1
        self.run_seconds.append(time.perf_counter() - started)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


@dataclass(frozen=True)
class LiveRun:
    p50: float
    p99: float
    max: float
    observations: int
    ticks: int
    feed_delay_p99: float
    staleness_p99: float
    detail: str = ""


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def load_and_observe(path: Path, seconds: float, results: Connection) -> None:
    """The feeder and the sampler, for ``seconds``; their summary goes back through ``results``.

    This runs in a child process of its own: the GIL of the process under
    test (the pandas baseline holds it for a second at a time) must neither
    slow the feed nor skip samples.
    """
    engine = make_engine(f"sqlite:///{path}")
    feeder, sampler = Feeder(engine), Sampler(path)
    stop = threading.Event()
    threads = [
        threading.Thread(target=_periodic, args=(stop, FEED_PERIOD, feeder.feed_once)),
        threading.Thread(target=_periodic, args=(stop, SAMPLE_PERIOD, sampler.sample_once)),
    ]
    for thread in threads:
        thread.start()
    try:
        stop.wait(seconds)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        sampler.close()
        engine.dispose()
    results.send(
        LiveRun(
            p50=_percentile(sampler.lags, 50),
            p99=_percentile(sampler.lags, 99),
            max=max(sampler.lags, default=float("nan")),
            observations=len(sampler.lags),
            ticks=feeder.rows_written,
            feed_delay_p99=_percentile(feeder.delays, 99),
            staleness_p99=_percentile(sampler.staleness, 99),
        )
    )
    results.close()


def _drive(path: Path) -> LiveRun:
    """Feed and sample ``path`` for :data:`SECONDS` from a child process; wait for its summary."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=load_and_observe, args=(path, SECONDS, sender), daemon=True)
    child.start()
    sender.close()
    try:
        if not receiver.poll(SECONDS + 120):
            raise RuntimeError("the feeder/sampler process did not report back")
        run: LiveRun = receiver.recv()
    finally:
        child.join(30)
        receiver.close()
    return run


def run_tickvisor(folder: Path) -> LiveRun:
    """The real CandleService actor, as ``tickvisor run`` starts it."""
    path = folder / "tickvisor.db"
    engine = open_database(f"sqlite:///{path}")
    clock = RealClock()
    scheduler = ThreadScheduler(clock)
    config = CandleServiceConfig(
        interval_seconds=INTERVAL, symbols=SYMBOLS, timeframes=list(TIMEFRAMES)
    )
    ref = CandleService.start("candles", config, engine=engine, clock=clock, scheduler=scheduler)
    try:
        run = _drive(path)
        metrics: dict[str, Any] = ref.ask(GetMetrics(), timeout=60)
    finally:
        ref.stop(timeout=60)
        scheduler.stop()
        engine.dispose()
    last = metrics["last_iteration_seconds"]
    detail = (
        f"{metrics['iteration_count']} iterations ({metrics['error_count']} failed, "
        f"{metrics['coalesced_iterations']} coalesced), last took "
        f"{'-' if last is None else f'{last:.2f} s'}, breaker "
        f"{metrics['circuit_breaker_state']}"
    )
    if metrics["recent_errors"]:
        detail += f", last error: {metrics['recent_errors'][-1]['message'].splitlines()[0]}"
    return replace(run, detail=detail)


def run_baseline(folder: Path) -> LiveRun:
    """The naive pandas job in a plain thread, every :data:`INTERVAL` s."""
    path = folder / "baseline.db"
    open_database(f"sqlite:///{path}").dispose()
    job = BaselineJob(path)
    stop = threading.Event()
    thread = threading.Thread(target=_periodic, args=(stop, INTERVAL, job.run_once))
    thread.start()
    try:
        run = _drive(path)
    finally:
        stop.set()
        thread.join()
        job.close()
    seconds = job.run_seconds or [float("nan")]
    detail = f"{job.runs} runs, median {statistics.median(seconds):.2f} s, last {seconds[-1]:.2f} s"
    return replace(run, detail=detail)


def _describe(r: LiveRun) -> str:
    return f"p99 {r.p99:.2f} s (p50 {r.p50:.2f} s, max {r.max:.2f} s)"


def run() -> Result:
    configure_logging("console", "WARNING")  # not a debug line per iteration
    with tempfile.TemporaryDirectory(prefix="tickvisor-bench-live-") as folder:
        ours = run_tickvisor(Path(folder))
        theirs = run_baseline(Path(folder))
    ratio = ours.p99 / theirs.p99
    label = f"{len(SYMBOLS)} symbols x {TICKS_PER_SECOND} ticks/s for {SECONDS:.0f} s"
    for name, r in (("tickvisor", ours), ("baseline ", theirs)):
        print(
            f"candles live, {label}: {name} freshness lag {_describe(r)} over "
            f"{r.observations:,} observations, {r.ticks:,} ticks fed "
            f"(p99 {r.feed_delay_p99:.2f} s from tick to commit; wall clock minus newest "
            f"folded tick p99 {r.staleness_p99:.2f} s); {r.detail}"
        )
    print(f"candles live: ratio {ratio:.2f}x")
    return Result(
        benchmark=f"live candle freshness lag, {label}, interval 1 s, SQLite",
        measured=_describe(ours),
        baseline=f"pandas job every 1 s (whole day re-read): {_describe(theirs)}",
        ratio=ratio,
        goal=f"p99 <= {GOAL_SECONDS:.0f} s",
        met=ours.p99 <= GOAL_SECONDS,
    )


if __name__ == "__main__":
    run()
