"""Writing ticks: the input every candle is computed from.

A tick is identified by (symbol, ts_ms, tick_key), where ``tick_key`` hashes
its prices and volume. Every write goes through ``ON CONFLICT DO NOTHING`` on
that identity, so re-importing a file or re-sending a feed batch inserts
nothing twice, while two different ticks in one millisecond are both kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, select

from tickvisor.store.schema import ticks, upsert

_REQUIRED = ("symbol", "ts_ms", "bid", "ask")
_OPTIONAL = ("price", "volume", "source")

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
# The key of a missing price or volume: a NaN payload no parser produces.
_NULL_BITS = np.uint64(0x7FF80000DEADBEEF)


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64's finaliser: every input bit flips about half the output bits."""
    x = (x + _GOLDEN) & _MASK
    x = ((x ^ (x >> np.uint64(30))) * _MIX1) & _MASK
    x = ((x ^ (x >> np.uint64(27))) * _MIX2) & _MASK
    return x ^ (x >> np.uint64(31))


def _bits(values: npt.ArrayLike) -> npt.NDArray[np.uint64]:
    floats = np.asarray(values, dtype=np.float64) + 0.0  # -0.0 and 0.0 are one price
    out = floats.view(np.uint64).copy()
    out[np.isnan(floats)] = _NULL_BITS
    return out


def tick_keys(
    bid: npt.ArrayLike, ask: npt.ArrayLike, price: npt.ArrayLike, volume: npt.ArrayLike
) -> npt.NDArray[np.int64]:
    """The ``tick_key`` of each tick, vectorised; NaN stands for a missing price/volume.

    The key only has to tell apart ticks of the same symbol in the same
    millisecond, so 64 bits make an accidental collision practically
    impossible. It is computed from the exact float bits, so the same file
    parsed twice gives the same keys.
    """
    with np.errstate(over="ignore"):
        key = _mix(_bits(bid))
        for column in (ask, price, volume):
            key = _mix(key ^ _bits(column))
    return key.view(np.int64)


def insert_ticks(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert ``rows`` in one executemany, skipping ticks already stored; returns rows sent.

    Optional keys are filled with None first, because an executemany takes
    its column list from the first row and would reject a later row that
    lacks one of them.
    """
    if not rows:
        return 0
    params: list[dict[str, Any]] = []
    for index, row in enumerate(rows):
        missing = [key for key in _REQUIRED if row.get(key) is None]
        if missing:
            raise ValueError(f"insert_ticks: row {index} lacks required {', '.join(missing)}")
        params.append(
            {key: row[key] for key in _REQUIRED} | {key: row.get(key) for key in _OPTIONAL}
        )
    keys = tick_keys(
        [p["bid"] for p in params],
        [p["ask"] for p in params],
        [np.nan if p["price"] is None else p["price"] for p in params],
        [np.nan if p["volume"] is None else p["volume"] for p in params],
    )
    for param, key in zip(params, keys.tolist(), strict=True):
        param["tick_key"] = key
    upsert(conn, ticks, params, index_elements=("symbol", "ts_ms", "tick_key"), update_columns=())
    return len(params)


def symbols_with_ticks(conn: Connection) -> list[str]:
    """Every symbol that has at least one tick, sorted: the discovered symbol list."""
    rows = conn.execute(select(ticks.c.symbol).distinct().order_by(ticks.c.symbol))
    return [row[0] for row in rows]


__all__ = ["insert_ticks", "symbols_with_ticks", "tick_keys"]
