"""Sentiment catch-up throughput: tickvisor's SQL folds against pandas over the same readings.

The baseline is what one would write without tickvisor: read every reading
with one SELECT, drop the invalid ones, merge providers per timestamp with
``groupby``, compute the time-based moving averages with ``rolling``,
change_1h with ``merge_asof``, signal, label and stale with numpy, and upsert
the rows into ``sentiment_metrics`` with ``executemany``. It skips what
tickvisor does on top (quarantine rows, cursors, batches in their own
transactions), so the comparison is, if anything, in the baseline's favour.

Both start from the same 200,000 readings (20 symbols x 10,000, one provider,
one a minute, a random walk of long_pct) with empty output tables, in the
same process, alternating; the figure is readings per second and the ratio is
tickvisor's rate over the baseline's (higher is better). Goal: at least 1x
on both dialects. PostgreSQL runs when ``TICKVISOR_BENCH_PG_URL`` or
``TICKVISOR_TEST_PG_URL`` is set.

Every reading here is years old, so every row is written stale: the
``(stale, ts_ms)`` index then interleaves the symbols' rows, and each
per-symbol transaction dirties pages all over it (the baseline's single
transaction dirties each once). Measured once: with a partial index of the
fresh rows in its place, the ratio went from 1.08x to 1.33x on SQLite and
from 1.24x to 1.46x on PostgreSQL.
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

from benchmarks._harness import Result, pg_schema
from tickvisor.store import open_database
from tickvisor.store.schema import (
    metadata,
    progress_cursors,
    sentiment_metrics,
    sentiment_quarantine,
)
from tickvisor.store.sentiment import SentimentAggregator

BASE_TS = 1_704_067_200_000  # 2024-01-01 00:00 UTC
MINUTE = 60_000
HOUR = 3_600_000
REPEATS = 3
SYMBOLS = 20
PER_SYMBOL = 10_000
GOAL = 1.0
# The aggregator's defaults, spelled out for the baseline.
UPPER, LOWER, BULLISH, BEARISH, MAX_AGE_MS = 70.0, 30.0, 55.0, 45.0, HOUR

UPSERT_METRICS = """
INSERT INTO sentiment_metrics (symbol, ts_ms, long_pct, short_pct, total_traders, providers,
                               ma_5m, ma_15m, ma_1h, change_1h, signal, label, stale, updated_ms)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (symbol, ts_ms) DO UPDATE SET
    long_pct = excluded.long_pct, short_pct = excluded.short_pct,
    total_traders = excluded.total_traders, providers = excluded.providers,
    ma_5m = excluded.ma_5m, ma_15m = excluded.ma_15m, ma_1h = excluded.ma_1h,
    change_1h = excluded.change_1h, signal = excluded.signal, label = excluded.label,
    stale = excluded.stale, updated_ms = excluded.updated_ms
"""


def _symbols() -> list[str]:
    return [f"S{i:02d}/USD" for i in range(SYMBOLS)]


def load_readings(engine: Engine, seed: int = 5) -> None:
    """One reading a minute per symbol; long_pct a random walk kept inside [5, 95]."""
    metadata.drop_all(engine)
    metadata.create_all(engine)
    rng = np.random.default_rng(seed)
    raw: Any = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for symbol in _symbols():
            n = PER_SYMBOL
            ts = BASE_TS + np.arange(n, dtype=np.int64) * MINUTE
            walk = 50.0 + np.cumsum(rng.normal(0, 0.8, n))
            long_pct = np.round(5.0 + np.abs((walk - 5.0) % 180.0 - 90.0), 2)
            rows = zip(
                [symbol] * n,
                ts.tolist(),
                ["bench"] * n,
                long_pct.tolist(),
                np.round(100.0 - long_pct, 2).tolist(),
                rng.integers(1_000, 50_000, n).tolist(),
                strict=True,
            )
            columns = "symbol, ts_ms, provider, long_pct, short_pct, total_traders"
            if engine.dialect.name == "postgresql":
                with cursor.copy(f"COPY sentiment_raw ({columns}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            else:
                cursor.executemany(
                    f"INSERT INTO sentiment_raw ({columns}) VALUES (?,?,?,?,?,?)", rows
                )
        raw.commit()
    finally:
        raw.close()
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("ANALYZE sentiment_raw"))


def reset_outputs(engine: Engine) -> None:
    """Empty outputs for each run; TRUNCATE on PostgreSQL, so no dead rows carry over."""
    tables = (sentiment_metrics, sentiment_quarantine, progress_cursors)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(t.name for t in tables)}"))
        else:
            for table in tables:
                conn.execute(delete(table))


def tickvisor_catch_up(engine: Engine) -> int:
    report = SentimentAggregator(engine).catch_up(_symbols())
    if report.failed or report.quarantined:
        raise RuntimeError(f"catch-up failed for {report.failed}, quarantined {report.quarantined}")
    return report.rows


def pandas_metrics(frame: pd.DataFrame, now_ms: int) -> pd.DataFrame:
    """The same metrics as the aggregator, from the raw readings, with pandas."""
    long_, short = frame["long_pct"], frame["short_pct"]
    traders = frame["total_traders"]
    valid = (
        long_.between(0.0, 100.0)
        & short.between(0.0, 100.0)
        & ((long_ + short - 100.0).abs() <= 1.0)
        & (traders.isna() | (traders >= 0))
    )
    grouped = frame[valid].groupby(["symbol", "ts_ms"], sort=True)
    m = pd.DataFrame(
        {
            "long_pct": grouped["long_pct"].mean(),
            "short_pct": grouped["short_pct"].mean(),
            "total_traders": grouped["total_traders"].sum(min_count=1),
            "providers": grouped.size(),
        }
    ).reset_index()
    timed = m.set_index(pd.to_datetime(m["ts_ms"], unit="ms")).groupby("symbol")["long_pct"]
    for name, window in (("ma_5m", "5min"), ("ma_15m", "15min"), ("ma_1h", "1h")):
        m[name] = timed.rolling(window, closed="right").mean().to_numpy()
    at = pd.DataFrame({"symbol": m["symbol"], "at": m["ts_ms"] - HOUR, "row": np.arange(len(m))})
    ref = pd.merge_asof(
        at.sort_values("at"),
        m[["symbol", "ts_ms", "long_pct"]].sort_values("ts_ms"),
        left_on="at",
        right_on="ts_ms",
        by="symbol",
        direction="backward",
    ).sort_values("row")
    m["change_1h"] = m["long_pct"].to_numpy() - ref["long_pct"].to_numpy()
    lp = m["long_pct"].to_numpy()
    m["signal"] = np.where(lp > UPPER, -1, np.where(lp < LOWER, 1, 0))
    m["label"] = np.where(lp >= BULLISH, "bullish", np.where(lp <= BEARISH, "bearish", "neutral"))
    m["stale"] = (now_ms - m["ts_ms"]) > MAX_AGE_MS
    m["updated_ms"] = now_ms
    return m


def pandas_catch_up(engine: Engine) -> int:
    """The baseline: one SELECT, pandas metrics, executemany upsert."""
    with engine.connect() as conn:
        frame = pd.read_sql_query(
            text("SELECT id, symbol, ts_ms, long_pct, short_pct, total_traders FROM sentiment_raw"),
            conn,
        )
    m = pandas_metrics(frame, int(time.time() * 1000))
    columns = [
        "symbol",
        "ts_ms",
        "long_pct",
        "short_pct",
        "total_traders",
        "providers",
        "ma_5m",
        "ma_15m",
        "ma_1h",
        "change_1h",
        "signal",
        "label",
        "stale",
        "updated_ms",
    ]
    out = m[columns].astype(object).where(m[columns].notna(), None)
    out["total_traders"] = [None if v is None else int(v) for v in out["total_traders"]]
    rows = list(out.itertuples(index=False, name=None))
    upsert = UPSERT_METRICS
    if engine.dialect.name == "postgresql":
        upsert = upsert.replace("?", "%s")
    raw: Any = engine.raw_connection()
    try:
        raw.cursor().executemany(upsert, rows)
        raw.commit()
    finally:
        raw.close()
    return len(frame)


def _time(engine: Engine, job: Callable[[Engine], int]) -> float:
    reset_outputs(engine)
    started = time.perf_counter()
    rows = job(engine)
    elapsed = time.perf_counter() - started
    return rows / elapsed


def measure(url: str) -> Result:
    engine = open_database(url)
    try:
        load_readings(engine)
        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(REPEATS):
            ours.append(_time(engine, tickvisor_catch_up))
            theirs.append(_time(engine, pandas_catch_up))
    finally:
        engine.dispose()
    rate, base = statistics.median(ours), statistics.median(theirs)
    dialect = "PostgreSQL" if engine.dialect.name == "postgresql" else "SQLite"
    return Result(
        benchmark=f"sentiment catch-up, {dialect}, {SYMBOLS * PER_SYMBOL:,} rows",
        measured=f"{rate:,.0f} rows/s",
        baseline=f"SELECT + pandas rolling/merge_asof + executemany: {base:,.0f} rows/s",
        ratio=rate / base,
        goal=f">= {GOAL:g}x baseline rows/s",
        met=rate / base >= GOAL,
    )


def run() -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="tickvisor-bench-") as folder:
        results.append(measure(f"sqlite:///{Path(folder) / 'sentiment.db'}"))
    pg = os.environ.get("TICKVISOR_BENCH_PG_URL") or os.environ.get("TICKVISOR_TEST_PG_URL")
    if pg:
        with pg_schema(pg) as engine:
            results.append(measure(engine.url.render_as_string(hide_password=False)))
    return results


if __name__ == "__main__":
    for result in run():
        print(result)
