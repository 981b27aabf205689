"""Catch-up throughput: tickvisor's SQL folds against pandas over the same ticks.

The baseline is what one would write without tickvisor: read the ticks with
one SELECT, ``resample`` them into the seven timeframes with pandas, and
upsert the candles with ``executemany``. Both start from the same ticks with
no candles, in the same process, alternating; the figure is ticks per second
and the ratio is tickvisor's rate over the baseline's (higher is better).

Goals (issue 3): at least 2x the baseline on SQLite, 1.5x on PostgreSQL.
PostgreSQL runs when ``TICKVISOR_BENCH_PG_URL`` or ``TICKVISOR_TEST_PG_URL``
is set.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, delete, text

from benchmarks._candles_baseline import UPSERT_CANDLES, pandas_candles
from benchmarks._harness import Result, pg_schema
from tickvisor.store import CandleAggregator, open_database, tick_keys
from tickvisor.store.schema import candles, metadata, progress_cursors

BASE_TS = 1_704_067_200_000  # 2024-01-01 00:00 UTC
REPEATS = 3
SCENARIOS = {"1 symbol x 1,000,000": (1, 1_000_000), "10 symbols x 100,000": (10, 100_000)}
GOALS = {"sqlite": 2.0, "postgresql": 1.5}


def _symbols(count: int) -> list[str]:
    return [f"S{i:02d}/USD" for i in range(count)]


def load_ticks(engine: Engine, symbols: int, per_symbol: int, seed: int = 7) -> None:
    """Random-walk ticks 0-1.5 s apart: about 9 days per 500,000 ticks."""
    metadata.drop_all(engine)
    metadata.create_all(engine)
    rng = np.random.default_rng(seed)
    raw: Any = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for symbol in _symbols(symbols):
            ts = BASE_TS + np.cumsum(rng.integers(0, 1500, per_symbol))
            bid = 1.1 + np.cumsum(rng.normal(0, 1e-5, per_symbol))
            ask = bid + 0.0001
            volume = rng.random(per_symbol)
            keys = tick_keys(bid, ask, np.full(per_symbol, np.nan), volume)
            rows = zip(
                [symbol] * per_symbol,
                ts.tolist(),
                bid.tolist(),
                ask.tolist(),
                volume.tolist(),
                keys.tolist(),
                strict=True,
            )
            columns = "symbol, ts_ms, bid, ask, volume, tick_key"
            if engine.dialect.name == "postgresql":
                with cursor.copy(f"COPY ticks ({columns}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            else:
                cursor.executemany(f"INSERT INTO ticks ({columns}) VALUES (?,?,?,?,?,?)", rows)
        raw.commit()
    finally:
        raw.close()
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("ANALYZE ticks"))


def reset_candles(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(delete(candles))
        conn.execute(delete(progress_cursors))


def tickvisor_catch_up(engine: Engine, symbols: list[str]) -> int:
    report = CandleAggregator(engine).catch_up(symbols)
    if report.failed:
        raise RuntimeError(f"catch-up failed for {report.failed}")
    return report.rows


def pandas_catch_up(engine: Engine, symbols: list[str]) -> int:
    """The baseline: one SELECT, pandas resample, executemany upsert."""
    with engine.connect() as conn:
        frame = pd.read_sql_query(
            text(
                "SELECT symbol, ts_ms, bid, ask, price, volume FROM ticks "
                "ORDER BY symbol, ts_ms, id"
            ),
            conn,
        )
    frame["price"] = frame["price"].astype(float)
    frame["volume"] = frame["volume"].astype(float)
    rows = pandas_candles(frame, int(time.time() * 1000))
    upsert = UPSERT_CANDLES
    if engine.dialect.name == "postgresql":
        upsert = upsert.replace("?", "%s")
    raw: Any = engine.raw_connection()
    try:
        raw.cursor().executemany(upsert, rows)
        raw.commit()
    finally:
        raw.close()
    return len(frame)


def _time(engine: Engine, job: Callable[[Engine, list[str]], int], symbols: list[str]) -> float:
    reset_candles(engine)
    started = time.perf_counter()
    ticks = job(engine, symbols)
    elapsed = time.perf_counter() - started
    return ticks / elapsed


def measure(url: str, scenario: str) -> Result:
    count, per_symbol = SCENARIOS[scenario]
    engine = open_database(url)
    try:
        load_ticks(engine, count, per_symbol)
        symbols = _symbols(count)
        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(REPEATS):
            ours.append(_time(engine, tickvisor_catch_up, symbols))
            theirs.append(_time(engine, pandas_catch_up, symbols))
    finally:
        engine.dispose()
    rate, base = statistics.median(ours), statistics.median(theirs)
    dialect = engine.dialect.name
    goal = GOALS[dialect]
    return Result(
        benchmark=f"candle catch-up, {dialect}, {scenario} ticks, 7 timeframes",
        measured=f"{rate:,.0f} ticks/s",
        baseline=f"SELECT + pandas resample + executemany: {base:,.0f} ticks/s",
        ratio=rate / base,
        goal=f">= {goal}x baseline ticks/s",
        met=rate / base >= goal,
    )


def run() -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="tickvisor-bench-") as folder:
        url = f"sqlite:///{Path(folder) / 'catchup.db'}"
        results.extend(measure(url, scenario) for scenario in SCENARIOS)
    pg = os.environ.get("TICKVISOR_BENCH_PG_URL") or os.environ.get("TICKVISOR_TEST_PG_URL")
    if pg:
        for scenario in SCENARIOS:
            with pg_schema(pg) as engine:
                results.append(measure(engine.url.render_as_string(hide_password=False), scenario))
    return results


if __name__ == "__main__":
    for result in run():
        print(result)
