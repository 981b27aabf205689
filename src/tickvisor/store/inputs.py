"""Writing order-book snapshots and sentiment readings: the depth and sentiment inputs.

Like ticks, each input row has an identity, (symbol, ts_ms, provider), and
every write goes through ``ON CONFLICT DO NOTHING`` on it, so re-importing a
file or re-sending a feed batch inserts nothing twice. Values are stored as
given: judging them is the services' job, which quarantines a bad row with
its reason instead of losing it or stopping on it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Table, select

from tickvisor.store.schema import depth_snapshots, sentiment_raw, upsert

_IDENTITY = ("symbol", "ts_ms", "provider")


def _book_side(value: Any) -> str:
    """A side as JSON text: lists are serialised, text is kept as the producer wrote it."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), allow_nan=True)


def insert_depth_snapshots(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert snapshots (symbol, ts_ms, provider, bids, asks), skipping ones already stored.

    ``bids``/``asks`` may be lists of ``[price, size]`` or JSON text. Returns rows sent.
    """
    params = [
        {
            "symbol": _required(row, "symbol", index),
            "ts_ms": int(_required(row, "ts_ms", index)),
            "provider": row.get("provider") or "",
            "bids": _book_side(_required(row, "bids", index)),
            "asks": _book_side(_required(row, "asks", index)),
        }
        for index, row in enumerate(rows)
    ]
    if params:
        upsert(conn, depth_snapshots, params, index_elements=_IDENTITY, update_columns=())
    return len(params)


def insert_sentiment_rows(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert readings (symbol, ts_ms, provider, long_pct, short_pct, total_traders).

    Readings already stored for the same (symbol, ts_ms, provider) are kept
    as they are. Returns rows sent.
    """
    params = [
        {
            "symbol": _required(row, "symbol", index),
            "ts_ms": int(_required(row, "ts_ms", index)),
            "provider": row.get("provider") or "",
            "long_pct": row.get("long_pct"),
            "short_pct": row.get("short_pct"),
            "total_traders": row.get("total_traders"),
        }
        for index, row in enumerate(rows)
    ]
    if params:
        upsert(conn, sentiment_raw, params, index_elements=_IDENTITY, update_columns=())
    return len(params)


def symbols_with_snapshots(conn: Connection) -> list[str]:
    """Every symbol that has a depth snapshot, sorted: the depth service's discovered list."""
    return _symbols(conn, depth_snapshots)


def symbols_with_sentiment(conn: Connection) -> list[str]:
    """Every symbol that has a sentiment reading, sorted."""
    return _symbols(conn, sentiment_raw)


def _symbols(conn: Connection, table: Table) -> list[str]:
    rows = conn.execute(select(table.c.symbol).distinct().order_by(table.c.symbol))
    return [row[0] for row in rows]


def _required(row: Mapping[str, Any], key: str, index: int) -> Any:
    value = row.get(key)
    if value is None:
        raise ValueError(f"row {index} lacks required {key}")
    return value


__all__ = [
    "insert_depth_snapshots",
    "insert_sentiment_rows",
    "symbols_with_sentiment",
    "symbols_with_snapshots",
]
