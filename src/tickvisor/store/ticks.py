"""Writing ticks: the input every candle is computed from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import Connection, insert, select

from tickvisor.store.schema import ticks

_REQUIRED = ("symbol", "ts_ms", "bid", "ask")
_OPTIONAL = ("price", "volume", "source")


def insert_ticks(conn: Connection, rows: Sequence[Mapping[str, object]]) -> int:
    """Insert ``rows`` in one executemany; returns how many were written.

    Optional keys are filled with None first, because an executemany takes
    its column list from the first row and would reject a later row that
    lacks one of them.
    """
    if not rows:
        return 0
    params: list[dict[str, object]] = []
    for index, row in enumerate(rows):
        missing = [key for key in _REQUIRED if row.get(key) is None]
        if missing:
            raise ValueError(f"insert_ticks: row {index} lacks required {', '.join(missing)}")
        params.append(
            {key: row[key] for key in _REQUIRED} | {key: row.get(key) for key in _OPTIONAL}
        )
    conn.execute(insert(ticks), params)
    return len(params)


__all__ = ["insert_ticks"]


def symbols_with_ticks(conn: Connection) -> list[str]:
    """Every symbol that has at least one tick, sorted: the discovered symbol list."""
    rows = conn.execute(select(ticks.c.symbol).distinct().order_by(ticks.c.symbol))
    return [row[0] for row in rows]
