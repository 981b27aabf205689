"""pandas as the independent oracle for sentiment metrics: shared by the sentiment tests.

It shares nothing with the SQL but the raw rows: validity is judged in
Python, providers are merged with ``groupby``, the windows are pandas'
time-based ``rolling(..., closed="right")`` and change_1h is ``merge_asof``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, select

from tickvisor.store.schema import sentiment_metrics, sentiment_quarantine, sentiment_raw

HOUR = 3_600_000
COLUMNS = (
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
)
APPROX = ("long_pct", "short_pct", "ma_5m", "ma_15m", "ma_1h", "change_1h")

Key = tuple[str, int]


@dataclass(frozen=True)
class Settings:
    contrarian_upper: float = 70.0
    contrarian_lower: float = 30.0
    bullish_above: float = 55.0
    bearish_below: float = 45.0
    max_age_ms: int = HOUR


def reason(long_pct: Any, short_pct: Any, total_traders: Any) -> str | None:
    """Why a raw reading is unusable (the module's codes), or None when it is fine."""
    if long_pct is None or short_pct is None:
        return "missing"
    if not all(0.0 <= v <= 100.0 for v in (long_pct, short_pct)):  # NaN fails too
        return "out_of_range"
    if abs(long_pct + short_pct - 100.0) > 1.0:
        return "bad_sum"
    if total_traders is not None and total_traders < 0:
        return "negative_traders"
    return None


def raw_rows(engine: Engine) -> list[dict[str, Any]]:
    c = sentiment_raw.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(c.id, c.symbol, c.ts_ms, c.long_pct, c.short_pct, c.total_traders)
        ).all()
    return [r._asdict() for r in rows]


def expected_quarantine(engine: Engine) -> dict[int, str]:
    """raw id -> reason, for every raw row that must be quarantined."""
    out: dict[int, str] = {}
    for r in raw_rows(engine):
        why = reason(r["long_pct"], r["short_pct"], r["total_traders"])
        if why is not None:
            out[int(r["id"])] = why
    return out


def stored_quarantine(engine: Engine) -> dict[int, str]:
    with engine.connect() as conn:
        rows = conn.execute(select(sentiment_quarantine.c.raw_id, sentiment_quarantine.c.reason))
        return {int(i): str(r) for i, r in rows}


def oracle(
    engine: Engine, now_ms: int, settings: Settings = Settings()
) -> dict[Key, dict[str, Any]]:
    """The metrics rows sentiment_metrics must hold, by (symbol, ts_ms)."""
    rows = [
        r
        for r in raw_rows(engine)
        if reason(r["long_pct"], r["short_pct"], r["total_traders"]) is None
    ]
    if not rows:
        return {}
    frame = pd.DataFrame(rows)
    frame["total_traders"] = frame["total_traders"].astype("Float64")
    grouped = frame.groupby(["symbol", "ts_ms"], sort=True)
    per_ts = pd.DataFrame(
        {
            "long_pct": grouped["long_pct"].mean(),
            "short_pct": grouped["short_pct"].mean(),
            "total_traders": grouped["total_traders"].sum(min_count=1),
            "providers": grouped.size(),
        }
    ).reset_index()

    expected: dict[Key, dict[str, Any]] = {}
    for symbol, unsorted in per_ts.groupby("symbol", sort=True):
        group = unsorted.sort_values("ts_ms").reset_index(drop=True)
        series = pd.Series(
            group["long_pct"].to_numpy(), index=pd.to_datetime(group["ts_ms"], unit="ms")
        )
        for name, window in (("ma_5m", "5min"), ("ma_15m", "15min"), ("ma_1h", "1h")):
            group[name] = series.rolling(window, closed="right").mean().to_numpy()
        left = pd.DataFrame({"ts_ms": group["ts_ms"], "at": group["ts_ms"] - HOUR})
        right = pd.DataFrame({"ref_ts": group["ts_ms"], "ref_long": group["long_pct"]})
        asof = pd.merge_asof(left, right, left_on="at", right_on="ref_ts", direction="backward")
        group["change_1h"] = group["long_pct"].to_numpy() - asof["ref_long"].to_numpy()
        long_pct = group["long_pct"].to_numpy()
        group["signal"] = np.where(
            long_pct > settings.contrarian_upper,
            -1,
            np.where(long_pct < settings.contrarian_lower, 1, 0),
        )
        group["label"] = np.where(
            long_pct >= settings.bullish_above,
            "bullish",
            np.where(long_pct <= settings.bearish_below, "bearish", "neutral"),
        )
        group["stale"] = (now_ms - group["ts_ms"]) > settings.max_age_ms
        for record in group.to_dict("records"):
            values = {name: record[name] for name in COLUMNS}
            total = values["total_traders"]
            values["total_traders"] = None if pd.isna(total) else int(total)
            change = values["change_1h"]
            values["change_1h"] = None if pd.isna(change) else float(change)
            values["providers"] = int(values["providers"])
            values["signal"] = int(values["signal"])
            values["stale"] = bool(values["stale"])
            expected[(str(symbol), int(record["ts_ms"]))] = values
    return expected


def stored(engine: Engine) -> dict[Key, dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(sentiment_metrics)).all()
    return {(r.symbol, int(r.ts_ms)): {name: getattr(r, name) for name in COLUMNS} for r in rows}


def _close(actual: Any, expected: Any) -> bool:
    if expected is None or actual is None:
        return actual is None and expected is None
    return bool(actual == pytest.approx(expected, rel=1e-9, abs=1e-9)) and math.isfinite(actual)


def assert_matches_oracle(engine: Engine, now_ms: int, settings: Settings = Settings()) -> None:
    """Every metrics row and every quarantined id is what pandas says, and nothing else."""
    got = stored(engine)
    want = oracle(engine, now_ms, settings)
    assert sorted(got) == sorted(want)
    for key, expected in want.items():
        actual = got[key]
        for name in COLUMNS:
            if name in APPROX:
                assert _close(actual[name], expected[name]), (key, name, actual, expected)
            else:
                assert actual[name] == expected[name], (key, name, actual, expected)
    assert stored_quarantine(engine) == expected_quarantine(engine)
