"""Tick import rate: ``tickvisor import`` of a csv file against a bare executemany.

SQLite (the issue's goal): a 1,000,000-row csv file imported into a fresh
database, against the baseline of a bare ``sqlite3`` ``executemany`` of the
same rows, already parsed (tick keys included), into another fresh database
with the same schema. The import does strictly more (read, parse, validate,
key, quarantine, commit per batch) and must still reach 0.7x the baseline's
rows per second.

PostgreSQL (reported, no goal): when ``TICKVISOR_BENCH_PG_URL`` or
``TICKVISOR_TEST_PG_URL`` is set, the same comparison against psycopg's
``executemany`` (pipelined) of the parsed rows, each side in a schema of
its own that is dropped afterwards.

Rows per second are ``rows / seconds``; the ratio is tickvisor / baseline,
so here higher is better. Medians over interleaved repeats.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks._harness import Result, pg_schema
from tickvisor.ingest import import_file, open_tick_file
from tickvisor.ingest.validate import check
from tickvisor.ingest.writer import SQLITE_COLUMNS, TickRows
from tickvisor.logs import configure_logging
from tickvisor.store.engine import open_database

PG_ENV = ("TICKVISOR_BENCH_PG_URL", "TICKVISOR_TEST_PG_URL")
GOAL = 0.7


def write_csv(path: Path, rows: int, seed: int = 7) -> None:
    """A realistic tick file: ISO stamps in UTC, three pairs, bid/ask/volume."""
    rng = np.random.default_rng(seed)
    ts = 1_704_153_600_000 + np.cumsum(rng.integers(0, 300, rows))
    symbols = np.array(["EURUSD", "USDJPY", "GBPUSD"])[rng.integers(0, 3, rows)]
    bid = np.round(1.1 + np.cumsum(rng.normal(0, 1e-5, rows)), 5)
    ask = np.round(bid + rng.integers(1, 30, rows) * 1e-5, 5)
    stamps = pd.to_datetime(ts, unit="ms", utc=True).strftime("%Y-%m-%dT%H:%M:%S.%f")
    frame = pd.DataFrame(
        {
            "ts": stamps.str[:-3] + "Z",
            "symbol": symbols,
            "bid": bid,
            "ask": ask,
            "volume": rng.integers(1, 1000, rows) / 10,
        }
    )
    frame.to_csv(path, index=False)


def parsed_rows(path: Path) -> list[tuple[Any, ...]]:
    """The file's ticks as the tuples the baseline inserts, parsed by tickvisor's parser."""
    out: list[tuple[Any, ...]] = []
    with open_tick_file(path, "csv") as tick_file:
        for lines in tick_file.batches(100_000):
            batch = tick_file.layout.parse(lines)
            check(batch)
            rows = TickRows.from_batch(batch)
            symbols = np.asarray(rows.symbols, dtype=object)[rows.symbol_code].tolist()
            price = [None if np.isnan(p) else p for p in rows.price.tolist()]
            volume = [None if np.isnan(v) else v for v in rows.volume.tolist()]
            out.extend(
                zip(
                    symbols,
                    rows.ts_ms.tolist(),
                    rows.bid.tolist(),
                    rows.ask.tolist(),
                    price,
                    volume,
                    ["csv"] * len(rows),
                    rows.tick_key.tolist(),
                    strict=True,
                )
            )
    return out


def _insert_sql(placeholder: str) -> str:
    marks = ", ".join([placeholder] * len(SQLITE_COLUMNS))
    return (
        f"INSERT INTO ticks ({', '.join(SQLITE_COLUMNS)}) VALUES ({marks}) "
        "ON CONFLICT (symbol, ts_ms, tick_key) DO NOTHING"
    )


def _fresh_sqlite(folder: Path, name: str) -> Path:
    path = folder / f"{name}-{uuid.uuid4().hex[:6]}.db"
    open_database(f"sqlite:///{path}").dispose()  # the tickvisor schema, nothing else
    return path


def _time_sqlite_import(csv_path: Path, folder: Path) -> float:
    engine = open_database(f"sqlite:///{_fresh_sqlite(folder, 'tickvisor')}")
    try:
        started = time.perf_counter()
        import_file(csv_path, "csv", engine)
        return time.perf_counter() - started
    finally:
        engine.dispose()


def _time_sqlite_baseline(rows: list[tuple[Any, ...]], folder: Path) -> float:
    conn = sqlite3.connect(_fresh_sqlite(folder, "baseline"))
    try:
        started = time.perf_counter()
        conn.executemany(_insert_sql("?"), rows)
        conn.commit()
        return time.perf_counter() - started
    finally:
        conn.close()


def run(rows: int = 1_000_000, repeats: int = 3) -> Result:
    configure_logging("json", "WARNING")  # the import's own log lines are not the point here
    with tempfile.TemporaryDirectory(prefix="tickvisor-bench-import-") as tmp:
        folder = Path(tmp)
        csv_path = folder / "ticks.csv"
        write_csv(csv_path, rows)
        parsed = parsed_rows(csv_path)
        assert len(parsed) == rows
        ours: list[float] = []
        base: list[float] = []
        for _ in range(repeats):
            ours.append(_time_sqlite_import(csv_path, folder))
            base.append(_time_sqlite_baseline(parsed, folder))
    ours_rate = rows / statistics.median(ours)
    base_rate = rows / statistics.median(base)
    ratio = ours_rate / base_rate
    print(
        f"tick import into SQLite ({rows:,} csv rows): tickvisor {ours_rate:,.0f} rows/s, "
        f"bare executemany {base_rate:,.0f} rows/s, ratio {ratio:.2f}x (goal >= {GOAL}x)"
    )
    return Result(
        benchmark=f"tick import, csv -> SQLite, {rows:,} rows (rows/s; higher is better)",
        measured=f"{ours_rate:,.0f} rows/s (file read, parsed, checked, inserted)",
        baseline=f"bare sqlite3 executemany of the parsed rows: {base_rate:,.0f} rows/s",
        ratio=ratio,
        goal=f">= {GOAL}x baseline rows/s",
        met=ratio >= GOAL,
    )


def run_postgres(rows: int = 300_000, repeats: int = 2) -> list[Result]:
    """The PostgreSQL comparison, or nothing when no server is configured."""
    raw_url = next((os.environ[name] for name in PG_ENV if os.environ.get(name)), None)
    if raw_url is None:
        print("tick import into PostgreSQL: skipped (set TICKVISOR_BENCH_PG_URL)")
        return []
    configure_logging("json", "WARNING")
    with tempfile.TemporaryDirectory(prefix="tickvisor-bench-import-") as tmp:
        csv_path = Path(tmp) / "ticks.csv"
        write_csv(csv_path, rows)
        parsed = parsed_rows(csv_path)
        ours: list[float] = []
        base: list[float] = []
        for _ in range(repeats):
            with pg_schema(raw_url) as engine:
                started = time.perf_counter()
                import_file(csv_path, "csv", engine)
                ours.append(time.perf_counter() - started)
            with pg_schema(raw_url) as engine, engine.connect() as conn:
                driver: Any = conn.connection.driver_connection
                started = time.perf_counter()
                with driver.cursor() as cur:
                    cur.executemany(_insert_sql("%s"), parsed)
                driver.commit()
                base.append(time.perf_counter() - started)
    ours_rate = rows / statistics.median(ours)
    base_rate = rows / statistics.median(base)
    ratio = ours_rate / base_rate
    print(
        f"tick import into PostgreSQL ({rows:,} csv rows): tickvisor (COPY) {ours_rate:,.0f} "
        f"rows/s, psycopg executemany {base_rate:,.0f} rows/s, ratio {ratio:.2f}x"
    )
    return [
        Result(
            benchmark=f"tick import, csv -> PostgreSQL, {rows:,} rows (rows/s; higher is better)",
            measured=f"{ours_rate:,.0f} rows/s (binary COPY + INSERT ... SELECT)",
            baseline=f"psycopg executemany of the parsed rows: {base_rate:,.0f} rows/s",
            ratio=ratio,
            goal="none (reported)",
            met=True,
        )
    ]


if __name__ == "__main__":
    run()
    run_postgres()
