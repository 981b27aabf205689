"""pandas as the independent oracle for depth metrics: shared by the depth tests.

It shares nothing with :mod:`tickvisor.store.depth` but the input table:
``json.loads`` and plain Python decide which snapshots are usable, the levels
are exploded into one long frame, sorted and ranked with pandas, and the
minute aggregates come from a pandas ``groupby``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, select

from tickvisor.store.schema import (
    depth_metrics,
    depth_metrics_1m,
    depth_quarantine,
    depth_snapshots,
)

METRICS = (
    "best_bid",
    "best_ask",
    "mid",
    "spread",
    "spread_bps",
    "bid_depth",
    "ask_depth",
    "imbalance",
    "microprice",
)
MINUTE = ("spread_mean", "spread_max", "imbalance_mean", "last_mid", "snapshot_count")


def usable_side(text: str) -> list[tuple[float, float]] | None:
    """The side's levels, or None when the snapshot must be quarantined for this side."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, list) or not value:
        return None
    levels = []
    for level in value:
        if not isinstance(level, list) or len(level) != 2:
            return None
        if any(isinstance(x, bool) or not isinstance(x, int | float) for x in level):
            return None
        try:
            price, size = float(level[0]), float(level[1])
        except OverflowError:
            return None
        if not (math.isfinite(price) and math.isfinite(size)) or price <= 0 or size < 0:
            return None
        levels.append((price, size))
    return levels


def snapshots(engine: Engine) -> pd.DataFrame:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                depth_snapshots.c.id,
                depth_snapshots.c.symbol,
                depth_snapshots.c.ts_ms,
                depth_snapshots.c.bids,
                depth_snapshots.c.asks,
            )
        ).all()
    return pd.DataFrame(rows, columns=["id", "symbol", "ts_ms", "bids", "asks"])


def _top(frame: pd.DataFrame, descending: bool, levels: int) -> pd.DataFrame:
    """Best price, its size and the top-``levels`` size per snapshot, by pandas ranking."""
    ranked = frame.sort_values(["id", "price"], ascending=[True, not descending], kind="stable")
    ranked["rank"] = ranked.groupby("id").cumcount()
    best = ranked[ranked["rank"] == 0].set_index("id")
    depth = ranked[ranked["rank"] < levels].groupby("id")["size"].sum()
    return pd.DataFrame({"best": best["price"], "top": best["size"], "depth": depth})


def oracle(engine: Engine, levels: int) -> tuple[pd.DataFrame, pd.DataFrame, set[int]]:
    """(per-snapshot metrics indexed by id, minute rows indexed by (symbol, ts_ms), bad ids)."""
    snaps = snapshots(engine)
    long: dict[str, list[Any]] = {"side": [], "id": [], "price": [], "size": []}
    bad: set[int] = set()
    for row in snaps.itertuples(index=False):
        sides = {"bids": usable_side(row.bids), "asks": usable_side(row.asks)}
        bids, asks = sides["bids"], sides["asks"]
        if bids is None or asks is None or max(p for p, _ in bids) >= min(p for p, _ in asks):
            bad.add(int(row.id))
            continue
        for side, side_levels in (("bids", bids), ("asks", asks)):
            for price, size in side_levels:
                long["side"].append(side)
                long["id"].append(int(row.id))
                long["price"].append(price)
                long["size"].append(size)
    frame = pd.DataFrame(long)
    good = snaps[~snaps["id"].isin(bad)].set_index("id")
    if good.empty:
        return pd.DataFrame(columns=list(METRICS)), pd.DataFrame(columns=list(MINUTE)), bad
    with np.errstate(over="ignore"):  # sizes summing past a double's range: see below
        b = _top(frame[frame["side"] == "bids"], descending=True, levels=levels).loc[good.index]
        a = _top(frame[frame["side"] == "asks"], descending=False, levels=levels).loc[good.index]
    m = pd.DataFrame(index=good.index)
    m["symbol"] = good["symbol"]
    m["ts_ms"] = good["ts_ms"]
    m["best_bid"] = b["best"]
    m["best_ask"] = a["best"]
    m["mid"] = (m["best_bid"] + m["best_ask"]) / 2
    m["spread"] = m["best_ask"] - m["best_bid"]
    m["spread_bps"] = m["spread"] / m["mid"] * 10_000
    m["bid_depth"] = b["depth"]
    m["ask_depth"] = a["depth"]
    total = m["bid_depth"] + m["ask_depth"]
    m["imbalance"] = ((m["bid_depth"] - m["ask_depth"]) / total).where(total != 0)
    top = b["top"] + a["top"]
    weighted = m["best_bid"] * a["top"] + m["best_ask"] * b["top"]
    m["microprice"] = (weighted / top).where(top != 0)
    # Numbers so large that a metric overflows a double: quarantined too.
    finite = np.isfinite(pd.concat([m["mid"], m["spread_bps"], total, top, weighted], axis=1))
    overflow = ~finite.all(axis=1)
    bad |= {int(i) for i in m.index[overflow]}
    m = m[~overflow]

    ordered = m.reset_index().sort_values(["symbol", "ts_ms", "id"], kind="stable")
    ordered["minute"] = ordered["ts_ms"] // 60_000 * 60_000
    minutes = ordered.groupby(["symbol", "minute"]).agg(
        spread_mean=("spread", "mean"),
        spread_max=("spread", "max"),
        imbalance_mean=("imbalance", "mean"),
        last_mid=("mid", "last"),
        snapshot_count=("spread", "size"),
    )
    minutes.index = minutes.index.set_names(["symbol", "ts_ms"])
    return m, minutes, bad


def stored(engine: Engine) -> tuple[pd.DataFrame, pd.DataFrame, set[int]]:
    """What tickvisor wrote, shaped like :func:`oracle`'s result."""
    with engine.connect() as conn:
        metrics = pd.DataFrame(conn.execute(select(depth_metrics)).mappings().all())
        minutes = pd.DataFrame(conn.execute(select(depth_metrics_1m)).mappings().all())
        bad = set(conn.execute(select(depth_quarantine.c.snapshot_id)).scalars())
    if not metrics.empty:
        metrics = metrics.set_index("snapshot_id").rename_axis("id")
    if not minutes.empty:
        minutes = minutes.set_index(["symbol", "ts_ms"])
    return metrics, minutes, bad


def _close(got: Any, want: Any, abs_tol: float) -> bool:
    if want is None or (isinstance(want, float) and np.isnan(want)):
        return got is None or (isinstance(got, float) and np.isnan(got))
    if got is None:
        return False
    return math.isclose(float(got), float(want), rel_tol=1e-9, abs_tol=abs_tol)


def assert_matches_oracle(engine: Engine, levels: int) -> None:
    """Every metrics row, minute row and quarantined id as the oracle has them."""
    want_m, want_1m, want_bad = oracle(engine, levels)
    got_m, got_1m, got_bad = stored(engine)
    assert got_bad == want_bad, (got_bad - want_bad, want_bad - got_bad)
    got_ids, want_ids = set(got_m.index), set(want_m.index)
    assert got_ids == want_ids and len(got_m) == len(want_m), got_ids ^ want_ids
    for sid, want in want_m.iterrows():
        got = got_m.loc[sid]
        assert got["symbol"] == want["symbol"] and got["ts_ms"] == want["ts_ms"], sid
        for name in METRICS:
            # Imbalance is a difference over a sum: near 0 only an absolute bound is meaningful.
            tol = 1e-9 if name == "imbalance" else 1e-12
            assert _close(got[name], want[name], tol), (sid, name, got[name], want[name])
    got_keys, want_keys = set(got_1m.index), set(want_1m.index)
    assert got_keys == want_keys and len(got_1m) == len(want_1m), got_keys ^ want_keys
    for key, want in want_1m.iterrows():
        got = got_1m.loc[key]
        for name in MINUTE:
            tol = 1e-9 if name == "imbalance_mean" else 1e-12
            assert _close(got[name], want[name], tol), (key, name, got[name], want[name])


__all__ = ["assert_matches_oracle", "oracle", "snapshots", "stored", "usable_side"]
