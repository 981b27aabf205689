"""pandas ``resample`` as the independent oracle for candles: shared by the candle tests."""

from __future__ import annotations

import pandas as pd
import pytest
from sqlalchemy import Engine, select

from tickvisor.store import TIMEFRAMES
from tickvisor.store.schema import candles, ticks

# pandas resample rules for the fixed-width timeframes.
RULES = {"1m": "1min", "5m": "5min", "15m": "15min", "30m": "30min", "1h": "1h", "4h": "4h"}

Key = tuple[str, str, int]
Row = tuple[float, float, float, float, float, int]


def stored(engine: Engine) -> dict[Key, Row]:
    with engine.connect() as conn:
        result = conn.execute(select(candles))
        return {
            (r.symbol, r.timeframe, r.ts_ms): (
                r.open,
                r.high,
                r.low,
                r.close,
                r.volume,
                r.tick_count,
            )
            for r in result
        }


def oracle(
    engine: Engine, rollover: str = "utc", timeframes: tuple[str, ...] = tuple(TIMEFRAMES)
) -> dict[Key, Row]:
    """Candles from pandas ``resample``, sharing nothing with the SQL but the ticks."""
    with engine.connect() as conn:
        frame = pd.DataFrame(
            conn.execute(
                select(
                    ticks.c.id,
                    ticks.c.symbol,
                    ticks.c.ts_ms,
                    ticks.c.bid,
                    ticks.c.ask,
                    ticks.c.price,
                    ticks.c.volume,
                )
            ).all(),
            columns=["id", "symbol", "ts_ms", "bid", "ask", "price", "volume"],
        )
    if frame.empty:
        return {}
    frame["px"] = frame["price"].astype(float).fillna((frame["bid"] + frame["ask"]) / 2)
    frame["vol"] = frame["volume"].astype(float).fillna(0.0)
    frame = frame.sort_values(["ts_ms", "id"], kind="stable")
    frame.index = pd.to_datetime(frame["ts_ms"], unit="ms", utc=True)
    expected: dict[Key, Row] = {}
    for symbol, group in frame.groupby("symbol"):
        for timeframe in timeframes:
            if timeframe == "1d" and rollover == "new_york_17":
                # FX days: 17:00 New York. The 7 hours from 17:00 to midnight
                # never hold a clock change, so shifting by 7 absolute hours and
                # taking the local date labels each tick with its trading day.
                local = group.index.tz_convert("America/New_York")
                label = (local + pd.Timedelta(hours=7)).normalize() - pd.Timedelta(hours=7)
                resampled = group.groupby(label, sort=True)
            else:
                rule = RULES.get(timeframe, "1D")
                resampled = group.resample(rule, closed="left", label="left")
            ohlc = resampled["px"].ohlc()
            ohlc["volume"] = resampled["vol"].sum()
            ohlc["count"] = resampled["px"].count()
            for label_ts, row in ohlc[ohlc["count"] > 0].iterrows():
                ts_ms = int(pd.Timestamp(label_ts).timestamp() * 1000)
                expected[(str(symbol), timeframe, ts_ms)] = (
                    float(row["open"]),
                    float(row["high"]),
                    float(row["low"]),
                    float(row["close"]),
                    float(row["volume"]),
                    int(row["count"]),
                )
    return expected


def assert_matches_oracle(
    engine: Engine, rollover: str = "utc", timeframes: tuple[str, ...] = tuple(TIMEFRAMES)
) -> None:
    got = stored(engine)
    want = oracle(engine, rollover, timeframes)
    assert set(got) == set(want)
    for key, expected in want.items():
        actual = got[key]
        # Same doubles, same comparisons: prices and counts match exactly. A
        # sum's rounding depends on the order it adds in, so volume is approximate.
        assert actual[:4] + actual[5:] == expected[:4] + expected[5:], key
        assert actual[4] == pytest.approx(expected[4], rel=1e-9, abs=1e-9), key
