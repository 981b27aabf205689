"""``tickvisor aggregate`` killed with SIGKILL mid-run, then run again: nothing lost or doubled."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from candle_oracle import assert_matches_oracle
from tickvisor.store import insert_ticks, open_database
from tickvisor.store.schema import progress_cursors, ticks

SYMBOLS = ("EUR/USD", "USD/JPY", "GBP/USD", "AUD/USD")
BASE_TS = 1_704_067_200_000


def _aggregate(db_url: str, cwd: Path) -> subprocess.Popen[bytes]:
    # A tiny batch makes hundreds of commits, so the kill lands between two of them.
    return subprocess.Popen(
        [sys.executable, "-m", "tickvisor.cli", "aggregate", "--db", db_url, "--batch-ticks", "40"],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_sigkill_mid_catch_up_then_rerun_matches_the_oracle(tmp_path: Path, db_url: str) -> None:
    rng = random.Random(3)
    engine = open_database(db_url)
    try:
        rows = [
            {
                "symbol": rng.choice(SYMBOLS),
                # Arrival order is not time order: a quarter of the ticks are late.
                "ts_ms": BASE_TS + rng.randint(0, 2 * 86_400_000),
                "bid": 1.0 + rng.random(),
                "ask": 2.5,
                "volume": rng.choice([None, rng.random()]),
            }
            for _ in range(6_000)
        ]
        with engine.begin() as conn:
            insert_ticks(conn, rows)

        process = _aggregate(db_url, tmp_path)
        deadline = time.monotonic() + 60
        progressed = 0
        while progressed < 3 and time.monotonic() < deadline and process.poll() is None:
            with engine.connect() as conn:
                progressed = conn.execute(
                    select(func.count()).select_from(progress_cursors)
                ).scalar_one()
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
        with engine.connect() as conn:
            folded = conn.execute(select(func.sum(progress_cursors.c.position))).scalar_one()
            newest = conn.execute(select(func.max(ticks.c.id))).scalar_one()
        assert progressed >= 1 and folded is not None and folded < newest * len(SYMBOLS)

        rerun = _aggregate(db_url, tmp_path)
        assert rerun.wait(timeout=120) == 0
        assert_matches_oracle(engine)
    finally:
        engine.dispose()
