"""Memory: peak RSS of ``tickvisor aggregate`` catching up 10,000,000 ticks.

Goal: below 300 MB. Baseline, in the same run and on the same SQLite file:
the pandas job (one SELECT of every tick into a DataFrame, ``resample`` to the
seven timeframes, ``executemany`` upsert of the candles).

Each side runs as its own child process, started from a clean slate (no
candles, no progress cursors), and its peak RSS is the kernel's high-water
mark for that process, read with ``os.wait4`` by a small launcher process
(Linux carries the high-water mark over ``exec``, so the launcher keeps
this process's own size out of it). Both sides' candles are then compared, so the
benchmark also says whether the two produced the same result.

The 10M-tick file takes about half a minute to build and is cached under
``/tmp/tickvisor-bench/`` keyed by its parameters; ``TICKVISOR_BENCH_MEMORY_TICKS``
and ``TICKVISOR_BENCH_MEMORY_BASELINE_TICKS`` shrink the runs (the baseline's
memory grows linearly with its input, so a smaller baseline is scaled up,
and says so).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks._candles_baseline import UPSERT_CANDLES, pandas_candles
from benchmarks._harness import Result
from tickvisor.store.engine import open_database

GOAL_MB = 300
TICKS = int(os.environ.get("TICKVISOR_BENCH_MEMORY_TICKS", "10000000"))
#: Ticks the pandas baseline reads. Its peak RSS is linear in this; it needs
#: several GB and over a minute at 10M ticks, so it can be shrunk and scaled.
BASELINE_TICKS = int(os.environ.get("TICKVISOR_BENCH_MEMORY_BASELINE_TICKS", str(TICKS)))
SYMBOLS = ("EUR/USD", "GBP/USD", "USD/JPY", "AUD/USD", "USD/CHF")
START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
CACHE = Path(tempfile.gettempdir()) / "tickvisor-bench"
REPO = Path(__file__).resolve().parent.parent
_FORMAT = 2  # bump when the generated data changes


def run_baseline(path: Path, limit: int) -> dict[str, Any]:
    """One pandas catch-up of the first ``limit`` ticks: SELECT, resample, executemany."""
    started = time.perf_counter()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        ticks = pd.read_sql_query(
            "SELECT symbol, ts_ms, bid, ask, price, volume FROM ticks ORDER BY id LIMIT ?",
            conn,
            params=(limit,),
        )
        ticks = ticks.sort_values("ts_ms", kind="stable")  # (ts_ms, id) order
        rows = pandas_candles(ticks, time.time_ns() // 1_000_000)
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(UPSERT_CANDLES, rows)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return {"ticks": len(ticks), "candles": len(rows), "seconds": time.perf_counter() - started}


# --- the data ------------------------------------------------------------------------


def tick_database(ticks: int) -> Path:
    """The cached SQLite file holding ``ticks`` ticks over :data:`SYMBOLS`; built if missing.

    Symbols take turns, and a tick follows the previous one by 20-100 ms, so
    each symbol sees a tick every 100-500 ms (300 ms on average): 10M ticks
    span about a week. Prices are a random walk; ``price`` is NULL (FX quotes,
    so the mid is used) and every tick has a volume.
    """
    path = CACHE / f"candles-memory-{ticks}t-{len(SYMBOLS)}s-v{_FORMAT}.db"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    building = path.with_suffix(".building")
    for stale in (building, Path(f"{building}-wal"), Path(f"{building}-shm")):
        stale.unlink(missing_ok=True)
    open_database(f"sqlite:///{building}").dispose()  # tickvisor's own schema
    conn = sqlite3.connect(building, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA synchronous=OFF")
        # Indexes are built once after the load, which is several times faster.
        # No ANALYZE afterwards, as in a database tickvisor filled itself: with
        # sqlite_stat1 present, SQLite plans the 1m-candle join with an
        # automatic index over all of a symbol's ticks, rebuilt on every fold
        # (1M ticks: 1.4 s without statistics, 101 s with them).
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master "
            "WHERE type = 'index' AND tbl_name = 'ticks' AND sql IS NOT NULL"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        symbol = "CASE n % {} {} END".format(
            len(SYMBOLS), " ".join(f"WHEN {i} THEN '{s}'" for i, s in enumerate(SYMBOLS))
        )
        conn.execute("BEGIN")
        conn.execute(
            f"""
            INSERT INTO ticks (symbol, ts_ms, bid, ask, price, volume, source, tick_key, txid)
            WITH RECURSIVE g(n, ts, mid) AS (
                SELECT 0, {START_MS}, 1.0
                UNION ALL
                SELECT n + 1, ts + 20 + abs(random()) % 81,
                       mid + (abs(random()) % 201 - 100) * 1e-6
                FROM g WHERE n < ?
            )
            SELECT {symbol}, ts, mid * (1 + n % 5) - 5e-5, mid * (1 + n % 5) + 5e-5,
                   NULL, 1000.0 * (1 + abs(random()) % 10), 'bench', n, 0
            FROM g
            """,
            (ticks - 1,),
        )
        conn.execute("COMMIT")
        for _, sql in indexes:
            conn.execute(sql)
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()
    building.rename(path)
    return path


def reset_candles(path: Path) -> None:
    """No candles and no cursors: each measured run starts from scratch."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM candles")
        conn.execute("DELETE FROM progress_cursors")
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def candle_summary(path: Path) -> dict[str, tuple[Any, ...]]:
    """Per timeframe: candles, ticks, OHLC and volume sums, newest tick: a cheap fingerprint."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT timeframe, count(*), sum(tick_count), round(sum(open + high + low + close), 4),"
            " round(sum(volume)), max(last_tick_ms) FROM candles GROUP BY timeframe"
        ).fetchall()
    finally:
        conn.close()
    return {row[0]: tuple(row[1:]) for row in rows}


# --- measuring ------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_rss_mb: float
    stdout: str


#: Runs the measured command and writes its peak RSS (KiB) to the file named
#: first. Linux carries ``ru_maxrss`` over ``execve``, so a command forked
#: straight from this (large) benchmark process would report this process's
#: size; forked from this small launcher instead, it reports its own.
_LAUNCHER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measure(command: list[str]) -> Measured:
    """Run ``command`` to completion; its wall time and its own peak RSS (``ru_maxrss``)."""
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r") as rss,
    ):
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, rss.name, *command],
            stdout=out,
            stderr=err,
            cwd=REPO,
            check=False,
        )
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
        peak_kib = int(rss.read() or 0)
    if proc.returncode != 0:
        raise RuntimeError(f"{command} exited {proc.returncode}: {stderr[-2000:]}")
    return Measured(seconds, peak_kib / 1024, stdout)  # ru_maxrss is in KiB on Linux


def tickvisor_command(url: str) -> list[str]:
    script = Path(sys.executable).with_name("tickvisor")
    prefix = [str(script)] if script.exists() else [sys.executable, "-m", "tickvisor.cli"]
    return [*prefix, "aggregate", "--service", "candles", "--db", url]


def run() -> Result:
    t0 = time.perf_counter()
    path = tick_database(TICKS)
    built = time.perf_counter() - t0

    reset_candles(path)
    ours = measure(tickvisor_command(f"sqlite:///{path}"))
    completed = [
        json.loads(line)
        for line in ours.stdout.splitlines()
        if line.startswith("{") and '"aggregate.completed"' in line
    ]
    ours_ticks = completed[-1]["ticks_processed"] if completed else TICKS
    ours_summary = candle_summary(path)

    limit = min(BASELINE_TICKS, TICKS)
    reset_candles(path)
    baseline_command = [sys.executable, "-m", "benchmarks.bench_candles_memory", "--baseline"]
    theirs = measure([*baseline_command, str(path), str(limit)])
    theirs_summary = candle_summary(path)
    reset_candles(path)
    scaled = limit < TICKS
    # Peak RSS of the pandas job is linear in the ticks it holds; scale a subset up.
    theirs_mb = theirs.peak_rss_mb * (TICKS / limit if scaled else 1)
    same = ours_summary == theirs_summary if not scaled else None

    ratio = ours.peak_rss_mb / theirs_mb
    met = ours.peak_rss_mb < GOAL_MB
    print(
        f"candles memory, {ours_ticks:,} ticks: tickvisor aggregate peak RSS "
        f"{ours.peak_rss_mb:.0f} MB in {ours.seconds:.1f} s "
        f"({ours_ticks / ours.seconds:,.0f} ticks/s); pandas baseline "
        f"{theirs.peak_rss_mb:.0f} MB in {theirs.seconds:.1f} s on {limit:,} ticks"
        + (f" (scaled to {theirs_mb:.0f} MB)" if scaled else "")
        + f"; ratio {ratio:.3f}x; candles identical: {same}; data file built in {built:.0f} s"
    )
    if same is False:
        print(f"  tickvisor candles: {ours_summary}\n  pandas candles:    {theirs_summary}")
    baseline = (
        f"pandas (one SELECT, resample, executemany): {theirs_mb:,.0f} MB peak RSS, "
        f"{theirs.seconds:.1f} s"
    )
    if scaled:
        baseline += f" (measured {theirs.peak_rss_mb:,.0f} MB on {limit:,} ticks, scaled)"
    return Result(
        benchmark=f"candle catch-up peak memory, {TICKS:,} ticks, SQLite (`tickvisor aggregate`)",
        measured=f"{ours.peak_rss_mb:.0f} MB peak RSS, {ours.seconds:.1f} s",
        baseline=baseline,
        ratio=ratio,
        goal=f"< {GOAL_MB} MB peak RSS",
        met=met,
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--baseline":
        print(json.dumps(run_baseline(Path(sys.argv[2]), int(sys.argv[3]))))
    else:
        run()
