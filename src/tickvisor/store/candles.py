"""Ticks to OHLCV candles, incrementally, with the database doing the work.

Per symbol, a progress cursor holds the last tick id already folded into the
candles. An iteration looks only at ticks past the cursor to decide *which*
buckets changed (those from the oldest new tick onward), then recomputes
those buckets *from the ticks table* in one ``INSERT ... SELECT ... ON
CONFLICT DO UPDATE`` per timeframe. Recomputing instead of merging deltas is
what makes the job idempotent and lets late ticks land in old buckets
correctly; doing it in SQL keeps millions of rows out of Python.

The caller wraps one call in one transaction, so the candles and the cursor
move together or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Float,
    Select,
    String,
    case,
    func,
    literal,
    literal_column,
    select,
)

from tickvisor.store.cursors import get_cursor, set_cursor
from tickvisor.store.schema import candles, ticks, upsert

#: Bucket width per timeframe, in ms; buckets are aligned to the UTC epoch.
TIMEFRAMES: dict[str, int] = {
    "1m": 60_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "4h": 14_400_000,
    "1d": 86_400_000,
}

_CANDLE_VALUES = ("open", "high", "low", "close", "volume", "tick_count", "updated_ms")


def bucket_start(ts_ms: int, timeframe: str) -> int:
    """The start of the ``timeframe`` bucket holding ``ts_ms`` (UTC-aligned)."""
    width = TIMEFRAMES[timeframe]
    return ts_ms - ts_ms % width


def _bucket_expr(ts: ColumnElement[Any], timeframe: str) -> ColumnElement[Any]:
    """The SQL twin of :func:`bucket_start`; the two must always agree.

    Timestamps are non-negative epoch milliseconds, for which SQL's ``%``
    (truncating) and Python's (flooring) give the same answer. The width is
    inlined as a literal: it comes from :data:`TIMEFRAMES`, never from input,
    and a literal keeps PostgreSQL's integer typing (bigint % integer) exact.
    """
    width = literal_column(str(TIMEFRAMES[timeframe]), BigInteger)
    return ts - ts % width


def _new_ticks(conn: Connection, symbol: str, cursor: int | None) -> tuple[int, int] | None:
    """(max id, min ts_ms) of the ticks past the cursor, or None if there are none."""
    query = select(func.max(ticks.c.id), func.min(ticks.c.ts_ms)).where(ticks.c.symbol == symbol)
    if cursor is not None:
        query = query.where(ticks.c.id > cursor)
    max_id, min_ts = conn.execute(query).one()
    if max_id is None:
        return None
    return int(max_id), int(min_ts)


def _candle_select(
    symbol: str, timeframe: str, start_ms: int, max_id: int, now_ms: int
) -> Select[Any]:
    """Every candle of ``symbol`` from bucket ``start_ms`` onward, built from ticks.

    ``open``/``close`` are the prices of the first/last tick by (ts_ms, id),
    picked with ROW_NUMBER so equal timestamps resolve the same way on both
    dialects. Ticks past ``max_id`` are left out, so the candles written are
    exactly those of the ticks the cursor will claim.
    """
    bucket = _bucket_expr(ticks.c.ts_ms, timeframe)
    price = func.coalesce(ticks.c.price, (ticks.c.bid + ticks.c.ask) / literal_column("2", Float))
    volume = func.coalesce(ticks.c.volume, literal_column("0.0", Float))
    priced = (
        select(
            bucket.label("bucket"),
            price.label("px"),
            volume.label("vol"),
            func.row_number()
            .over(partition_by=bucket, order_by=(ticks.c.ts_ms.asc(), ticks.c.id.asc()))
            .label("rn_first"),
            func.row_number()
            .over(partition_by=bucket, order_by=(ticks.c.ts_ms.desc(), ticks.c.id.desc()))
            .label("rn_last"),
        )
        .where(ticks.c.symbol == symbol, ticks.c.ts_ms >= start_ms, ticks.c.id <= max_id)
        .subquery("priced")
    )
    return (
        select(
            literal(symbol, String(32)).label("symbol"),
            literal(timeframe, String(8)).label("timeframe"),
            priced.c.bucket.label("ts_ms"),
            func.max(case((priced.c.rn_first == 1, priced.c.px))).label("open"),
            func.max(priced.c.px).label("high"),
            func.min(priced.c.px).label("low"),
            func.max(case((priced.c.rn_last == 1, priced.c.px))).label("close"),
            func.sum(priced.c.vol).label("volume"),
            func.count().label("tick_count"),
            literal(now_ms, BigInteger).label("updated_ms"),
        )
        # Redundant with the inner filter, but SQLite needs *some* WHERE in an
        # INSERT ... SELECT ... ON CONFLICT, or it parses ON as a join clause.
        .where(priced.c.bucket >= start_ms)
        .group_by(priced.c.bucket)
    )


def aggregate_candles(
    conn: Connection,
    service: str,
    symbols: Sequence[str],
    timeframes: Sequence[str],
    now_ms: int,
) -> dict[str, int]:
    """Fold the ticks that arrived since the last run into candles; returns rows per symbol.

    Run it inside one transaction (``with engine.begin() as conn``): a crash
    or an exception before the commit leaves both candles and cursors as
    they were, and the next run redoes the same work. A symbol with no new
    ticks costs one indexed read and writes nothing.
    """
    unknown = [tf for tf in timeframes if tf not in TIMEFRAMES]
    if unknown:
        raise ValueError(
            f"aggregate_candles: unknown timeframe(s) {', '.join(map(repr, unknown))}; "
            f"expected some of {', '.join(TIMEFRAMES)}"
        )
    written: dict[str, int] = {}
    for symbol in symbols:
        written[symbol] = 0
        cursor = get_cursor(conn, service, symbol)
        new = _new_ticks(conn, symbol, cursor)
        if new is None:
            continue
        max_id, min_ts = new
        for timeframe in timeframes:
            query = _candle_select(
                symbol, timeframe, bucket_start(min_ts, timeframe), max_id, now_ms
            )
            written[symbol] += upsert(
                conn,
                candles,
                query,
                index_elements=("symbol", "timeframe", "ts_ms"),
                update_columns=_CANDLE_VALUES,
            )
        set_cursor(conn, service, symbol, max_id, now_ms)
    return written


__all__ = ["TIMEFRAMES", "aggregate_candles", "bucket_start"]
