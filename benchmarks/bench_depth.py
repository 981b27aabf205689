"""Depth catch-up throughput: tickvisor's folds against a pandas job over the same snapshots.

The baseline is what one would write without tickvisor: read every snapshot
with one SELECT, ``json.loads`` both sides, compute the same per-snapshot
metrics (levels sorted, top-N sums, imbalance, microprice) and the same 1m
aggregates with pandas/numpy, and upsert both outputs with ``executemany``.
It skips what tickvisor does on top (validation and quarantine, cursors,
batches in their own transactions, recomputing minutes from the stored
rows), so the comparison is, if anything, in the baseline's favour.

Both start from the same 200,000 snapshots (4 symbols x 50,000, 10 levels a
side, compact JSON as :func:`~tickvisor.store.inputs.insert_depth_snapshots`
writes it) with empty output tables, in the same process, alternating; the
figure is snapshots per second and the ratio is tickvisor's rate over the
baseline's (higher is better). Goal: at least 1x on both dialects.
PostgreSQL runs when ``TICKVISOR_BENCH_PG_URL`` or ``TICKVISOR_TEST_PG_URL``
is set.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, delete, text

from benchmarks._harness import Result, pg_schema
from tickvisor.store import open_database
from tickvisor.store.depth import DEFAULT_LEVELS, DepthAggregator
from tickvisor.store.schema import (
    depth_metrics,
    depth_metrics_1m,
    depth_quarantine,
    metadata,
    progress_cursors,
)

BASE_TS = 1_704_067_200_000  # 2024-01-01 00:00 UTC
REPEATS = 3
SYMBOLS = 4
PER_SYMBOL = 50_000
LEVELS_PER_SIDE = 10
GOAL = 1.0

UPSERT_METRICS = """
INSERT INTO depth_metrics (snapshot_id, symbol, ts_ms, best_bid, best_ask, mid, spread,
                           spread_bps, bid_depth, ask_depth, imbalance, microprice, updated_ms)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (snapshot_id) DO UPDATE SET
    symbol = excluded.symbol, ts_ms = excluded.ts_ms, best_bid = excluded.best_bid,
    best_ask = excluded.best_ask, mid = excluded.mid, spread = excluded.spread,
    spread_bps = excluded.spread_bps, bid_depth = excluded.bid_depth,
    ask_depth = excluded.ask_depth, imbalance = excluded.imbalance,
    microprice = excluded.microprice, updated_ms = excluded.updated_ms
"""

UPSERT_MINUTES = """
INSERT INTO depth_metrics_1m (symbol, ts_ms, spread_mean, spread_max, imbalance_mean,
                              last_mid, snapshot_count, updated_ms)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (symbol, ts_ms) DO UPDATE SET
    spread_mean = excluded.spread_mean, spread_max = excluded.spread_max,
    imbalance_mean = excluded.imbalance_mean, last_mid = excluded.last_mid,
    snapshot_count = excluded.snapshot_count, updated_ms = excluded.updated_ms
"""


def _symbols() -> list[str]:
    return [f"S{i:02d}/USD" for i in range(SYMBOLS)]


def _side(prices: np.ndarray[Any, Any], sizes: np.ndarray[Any, Any]) -> str:
    return json.dumps(
        [[p, s] for p, s in zip(prices.tolist(), sizes.tolist(), strict=True)],
        separators=(",", ":"),
    )


def load_snapshots(engine: Engine, seed: int = 11) -> None:
    """Random-walk books 1-499 ms apart, levels 1-3 pips apart, sizes to 4 decimals."""
    metadata.drop_all(engine)
    metadata.create_all(engine)
    rng = np.random.default_rng(seed)
    raw: Any = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for symbol in _symbols():
            n, k = PER_SYMBOL, LEVELS_PER_SIDE
            ts = BASE_TS + np.cumsum(rng.integers(1, 500, n))
            mid = 1.1 + np.cumsum(rng.normal(0, 2e-5, n))
            half = rng.integers(1, 4, n) * 1e-5
            steps = np.cumsum(rng.integers(1, 4, (n, k)) * 1e-5, axis=1)
            bid_px = np.round(mid[:, None] - half[:, None] - steps + 1e-5, 5)
            ask_px = np.round(mid[:, None] + half[:, None] + steps - 1e-5, 5)
            bid_sz = np.round(rng.random((n, k)) * 10, 4)
            ask_sz = np.round(rng.random((n, k)) * 10, 4)
            rows = [
                (
                    symbol,
                    int(ts[i]),
                    "bench",
                    _side(bid_px[i], bid_sz[i]),
                    _side(ask_px[i], ask_sz[i]),
                )
                for i in range(n)
            ]
            columns = "symbol, ts_ms, provider, bids, asks"
            if engine.dialect.name == "postgresql":
                with cursor.copy(f"COPY depth_snapshots ({columns}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            else:
                cursor.executemany(
                    f"INSERT INTO depth_snapshots ({columns}) VALUES (?,?,?,?,?)", rows
                )
        raw.commit()
    finally:
        raw.close()
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("ANALYZE depth_snapshots"))


def reset_outputs(engine: Engine) -> None:
    """Empty outputs for each run; TRUNCATE on PostgreSQL, so no dead rows carry over."""
    tables = (depth_metrics, depth_metrics_1m, depth_quarantine, progress_cursors)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(t.name for t in tables)}"))
        else:
            for table in tables:
                conn.execute(delete(table))


def tickvisor_catch_up(engine: Engine) -> int:
    report = DepthAggregator(engine).catch_up(_symbols())
    if report.failed or report.quarantined:
        raise RuntimeError(f"catch-up failed for {report.failed}, quarantined {report.quarantined}")
    return report.rows


def _top_of_book(sides: list[Any], descending: bool) -> pd.DataFrame:
    """Best price, its size and the top-N size per snapshot, from parsed sides."""
    counts = np.fromiter(map(len, sides), dtype=np.int64, count=len(sides))
    flat = np.array(list(chain.from_iterable(sides)), dtype=np.float64)
    levels = pd.DataFrame(
        {
            "row": np.repeat(np.arange(len(sides)), counts),
            "price": flat[:, 0],
            "size": flat[:, 1],
        }
    ).sort_values(["row", "price"], ascending=[True, not descending], kind="stable")
    rank = levels.groupby("row").cumcount()
    best = levels[rank == 0].set_index("row")
    return pd.DataFrame(
        {
            "best": best["price"],
            "top_size": best["size"],
            "depth": levels[rank < DEFAULT_LEVELS].groupby("row")["size"].sum(),
        }
    )


def pandas_catch_up(engine: Engine) -> int:
    """The baseline: one SELECT, json.loads, pandas metrics and 1m groupby, executemany."""
    now = int(time.time() * 1000)
    with engine.connect() as conn:
        frame = pd.read_sql_query(
            text("SELECT id, symbol, ts_ms, bids, asks FROM depth_snapshots"), conn
        )
    bids = _top_of_book([json.loads(s) for s in frame["bids"]], descending=True)
    asks = _top_of_book([json.loads(s) for s in frame["asks"]], descending=False)
    m = pd.DataFrame(
        {"snapshot_id": frame["id"], "symbol": frame["symbol"], "ts_ms": frame["ts_ms"]}
    )
    m["best_bid"] = bids["best"].to_numpy()
    m["best_ask"] = asks["best"].to_numpy()
    m["mid"] = (m["best_bid"] + m["best_ask"]) / 2
    m["spread"] = m["best_ask"] - m["best_bid"]
    m["spread_bps"] = m["spread"] / m["mid"] * 10_000
    m["bid_depth"] = bids["depth"].to_numpy()
    m["ask_depth"] = asks["depth"].to_numpy()
    total = m["bid_depth"] + m["ask_depth"]
    m["imbalance"] = ((m["bid_depth"] - m["ask_depth"]) / total).where(total != 0)
    bid_top, ask_top = bids["top_size"].to_numpy(), asks["top_size"].to_numpy()
    top = pd.Series(bid_top + ask_top)
    m["microprice"] = ((m["best_bid"] * ask_top + m["best_ask"] * bid_top) / top).where(top != 0)
    m["updated_ms"] = now

    m["minute"] = m["ts_ms"] - m["ts_ms"] % 60_000
    m = m.sort_values(["symbol", "ts_ms", "snapshot_id"], kind="stable")
    minutes = (
        m.groupby(["symbol", "minute"], sort=False)
        .agg(
            spread_mean=("spread", "mean"),
            spread_max=("spread", "max"),
            imbalance_mean=("imbalance", "mean"),
            last_mid=("mid", "last"),
            snapshot_count=("spread", "size"),
        )
        .reset_index()
    )
    minutes["updated_ms"] = now
    metrics = m[
        [
            "snapshot_id",
            "symbol",
            "ts_ms",
            "best_bid",
            "best_ask",
            "mid",
            "spread",
            "spread_bps",
            "bid_depth",
            "ask_depth",
            "imbalance",
            "microprice",
            "updated_ms",
        ]
    ]
    metric_rows = _rows(metrics)
    minute_rows = _rows(
        minutes[
            [
                "symbol",
                "minute",
                "spread_mean",
                "spread_max",
                "imbalance_mean",
                "last_mid",
                "snapshot_count",
                "updated_ms",
            ]
        ]
    )
    upsert_metrics, upsert_minutes = UPSERT_METRICS, UPSERT_MINUTES
    if engine.dialect.name == "postgresql":
        upsert_metrics = upsert_metrics.replace("?", "%s")
        upsert_minutes = upsert_minutes.replace("?", "%s")
    raw: Any = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.executemany(upsert_metrics, metric_rows)
        cursor.executemany(upsert_minutes, minute_rows)
        raw.commit()
    finally:
        raw.close()
    return len(frame)


def _rows(frame: pd.DataFrame) -> list[tuple[Any, ...]]:
    """Plain Python values, NaN as None, for the DBAPI's executemany."""
    cells = frame.astype(object).where(frame.notna(), None)
    return list(cells.itertuples(index=False, name=None))


def _time(engine: Engine, job: Callable[[Engine], int]) -> float:
    reset_outputs(engine)
    started = time.perf_counter()
    snapshots = job(engine)
    elapsed = time.perf_counter() - started
    return snapshots / elapsed


def measure(url: str) -> Result:
    engine = open_database(url)
    try:
        load_snapshots(engine)
        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(REPEATS):
            ours.append(_time(engine, tickvisor_catch_up))
            theirs.append(_time(engine, pandas_catch_up))
    finally:
        engine.dispose()
    rate, base = statistics.median(ours), statistics.median(theirs)
    dialect = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}[engine.dialect.name]
    total = SYMBOLS * PER_SYMBOL
    return Result(
        benchmark=f"depth catch-up, {dialect}, {total:,} snapshots x {LEVELS_PER_SIDE} levels",
        measured=f"{rate:,.0f} snapshots/s",
        baseline=f"SELECT + json.loads + pandas + executemany: {base:,.0f} snapshots/s",
        ratio=rate / base,
        goal=f">= {GOAL:g}x baseline snapshots/s",
        met=rate / base >= GOAL,
    )


def run() -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="tickvisor-bench-") as folder:
        results.append(measure(f"sqlite:///{Path(folder) / 'depth.db'}"))
    pg = os.environ.get("TICKVISOR_BENCH_PG_URL") or os.environ.get("TICKVISOR_TEST_PG_URL")
    if pg:
        with pg_schema(pg) as engine:
            results.append(measure(engine.url.render_as_string(hide_password=False)))
    return results


if __name__ == "__main__":
    for result in run():
        print(result)
