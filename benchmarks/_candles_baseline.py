"""The pandas candle job every candle benchmark compares against, written once.

One SELECT into a DataFrame, ``resample`` to the seven timeframes, one
``executemany`` upsert: what one would write without tickvisor. The price
rule is tickvisor's (the trade price, else the mid), so both sides' candles
can be compared.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

#: pandas resample rule per timeframe; buckets are [start, end), labelled by start.
RULES = {
    "1m": "1min",
    "5m": "5min",
    "15m": "15min",
    "30m": "30min",
    "1h": "1h",
    "4h": "4h",
    "1d": "1D",
}

UPSERT_CANDLES = """
INSERT INTO candles (symbol, timeframe, ts_ms, open, high, low, close, volume,
                     tick_count, last_tick_ms, updated_ms)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (symbol, timeframe, ts_ms) DO UPDATE SET
    open = excluded.open, high = excluded.high, low = excluded.low,
    close = excluded.close, volume = excluded.volume, tick_count = excluded.tick_count,
    last_tick_ms = excluded.last_tick_ms, updated_ms = excluded.updated_ms
"""


def pandas_candles(ticks: pd.DataFrame, now_ms: int) -> list[tuple[Any, ...]]:
    """Candle rows of every timeframe from ``ticks`` (symbol, ts_ms, bid, ask, price, volume).

    ``ticks`` must be in (ts_ms, id) order; the price rule is tickvisor's
    (the trade price, else the mid), so the two sides' candles can be compared.
    """
    frame = pd.DataFrame(
        {
            "symbol": ticks["symbol"],
            "ts": pd.to_datetime(ticks["ts_ms"], unit="ms"),
            "ts_ms": ticks["ts_ms"],
            "price": ticks["price"].fillna((ticks["bid"] + ticks["ask"]) / 2.0),
            "volume": ticks["volume"].fillna(0.0),
        }
    )
    rows: list[tuple[Any, ...]] = []
    for timeframe, rule in RULES.items():
        out = (
            frame.groupby("symbol")
            .resample(rule, on="ts", origin="epoch", closed="left", label="left")
            .agg(
                open=("price", "first"),
                high=("price", "max"),
                low=("price", "min"),
                close=("price", "last"),
                volume=("volume", "sum"),
                tick_count=("price", "count"),
                last_tick_ms=("ts_ms", "max"),
            )
        )
        out = out[out["tick_count"] > 0].reset_index()
        bucket_ms = out["ts"].astype("datetime64[ms]").astype("int64")
        rows.extend(
            zip(
                out["symbol"],
                [timeframe] * len(out),
                bucket_ms.tolist(),
                out["open"].tolist(),
                out["high"].tolist(),
                out["low"].tolist(),
                out["close"].tolist(),
                out["volume"].tolist(),
                out["tick_count"].astype("int64").tolist(),
                out["last_tick_ms"].astype("int64").tolist(),
                [now_ms] * len(out),
                strict=True,
            )
        )
    return rows
