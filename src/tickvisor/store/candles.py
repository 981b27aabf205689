"""Ticks to OHLCV candles, incrementally and exactly once, with the database doing the work.

Per symbol, a progress cursor holds the :class:`TickPosition` of the last
tick already folded into the candles. One *fold* claims the next batch of
ticks past the cursor, and then, all in one transaction:

1. notes the distinct 1m buckets those ticks fall in (a temporary table);
2. recomputes those 1m candles **from every tick in them**, old and new, in
   one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE``;
3. rolls each higher timeframe up from the 1m candles of the buckets that
   changed, again one statement per timeframe;
4. moves the cursor to the last claimed tick.

Recomputing instead of adding deltas is what makes a fold idempotent and
lets a late tick land in an old bucket correctly; a fold that is killed
before its commit leaves nothing behind, and the next one redoes it. Python
only ever sees positions and counts, never the ticks themselves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Connection,
    Engine,
    Float,
    FromClause,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    and_,
    delete,
    func,
    insert,
    literal,
    literal_column,
    select,
    true,
)
from sqlalchemy.schema import CreateTable

from tickvisor.logs import get_logger
from tickvisor.store.buckets import (
    BASE_TIMEFRAME,
    TIMEFRAMES,
    check_rollover,
    check_timeframes,
    day_bounds,
    is_calendar,
)
from tickvisor.store.catchup import CatchUpReport, SymbolProgress, round_robin
from tickvisor.store.claims import claim_end, position_range, visible_horizon, write_transaction
from tickvisor.store.cursors import TickPosition, get_position, set_position
from tickvisor.store.fencing import Fence
from tickvisor.store.schema import candles, progress_cursors, ticks, upsert

#: Ticks claimed per transaction: long enough to amortise the per-fold work,
#: short enough that SQLite's single write lock is never held for long.
DEFAULT_BATCH_TICKS = 100_000

_CANDLE_KEY = ("symbol", "timeframe", "ts_ms")
_CANDLE_VALUES = (
    "open",
    "high",
    "low",
    "close",
    "volume",
    "tick_count",
    "last_tick_ms",
    "updated_ms",
)

# Scratch tables, private to a connection (named with a version, so a
# connection that outlives an upgrade never reuses an old shape). On SQLite an INTEGER PRIMARY KEY
# is the rowid, so scanning the changed buckets yields them in order and the
# GROUP BY over them needs no sort.
_scratch = MetaData()
_Bucket = BigInteger().with_variant(Integer, "sqlite")
changed_buckets = Table(
    "tv_changed_buckets_v2",
    _scratch,
    Column("b", _Bucket, primary_key=True, autoincrement=False),
    Column("n", BigInteger, nullable=False),  # claimed ticks in the bucket
    prefixes=["TEMPORARY"],
)
calendar_buckets = Table(
    "tv_calendar_buckets",
    _scratch,
    Column("start", _Bucket, primary_key=True, autoincrement=False),
    Column("end", BigInteger, nullable=False),
    prefixes=["TEMPORARY"],
)


#: Cursor-table key prefix under which the timeframe layout in force is kept.
LAYOUT_KEY = "__layout__:"


class CandleAggregator:
    """The candle job itself: the actor's iteration and ``tickvisor aggregate`` both run it.

    ``timeframes`` always gains ``1m``, because every other timeframe is
    rolled up from it. Each fold is its own transaction, so a backlog of any
    size is caught up in bounded memory and bounded lock time.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        service: str = "candles",
        timeframes: Sequence[str] = tuple(TIMEFRAMES),
        rollover: str = "utc",
        batch_ticks: int = DEFAULT_BATCH_TICKS,
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        check_timeframes(list(timeframes))
        check_rollover(rollover)
        if batch_ticks < 1:
            raise ValueError(f"batch_ticks must be >= 1, got {batch_ticks}")
        self.engine = engine
        self.service = service
        self.rollups = [tf for tf in TIMEFRAMES if tf in timeframes and tf != BASE_TIMEFRAME]
        self.rollover = rollover
        self.batch_ticks = batch_ticks
        self._now_ms = now_ms or (lambda: time.time_ns() // 1_000_000)
        self._log = get_logger("tickvisor.candles", service=service)

    def catch_up(
        self,
        symbols: Sequence[str],
        *,
        fence: Fence | None = None,
        budget_seconds: float | None = None,
    ) -> CatchUpReport:
        """Fold every symbol up to the newest visible tick; one symbol's fault spares the rest.

        Symbols take turns, one fold each, so a symbol with a huge backlog
        does not starve the others. With ``budget_seconds``, the pass stops
        after the fold that crosses it and lists the symbols with ticks left
        in ``report.unfinished``; the caller runs another pass. With
        ``fence``, every fold checks it before committing
        (:mod:`tickvisor.store.fencing`) and :class:`FencedOut` ends the pass.

        A fault of the database itself (connection lost, locked, disk full)
        is raised at once: no other symbol would fare better, and the
        caller's circuit breaker has to see it. Any other error is recorded
        against its symbol, and raised only if every symbol failed.
        """
        self._reconcile_layout(fence)

        def fold(progress: SymbolProgress) -> bool:
            return self._fold_and_commit(progress, fence)

        return round_robin(
            symbols,
            fold,
            log=self._log,
            failure_event="candles.symbol_failed",
            budget_seconds=budget_seconds,
        )

    def _reconcile_layout(self, fence: Fence | None) -> None:
        """Rebuild the timeframes whose buckets the config changed, from the 1m candles.

        Folds only rewrite buckets that new ticks touch, so switching
        ``daily_rollover`` would otherwise leave old days in the old
        alignment beside new ones, and a timeframe added later would never
        get its history. The layout in force is kept as a cursor row; when
        it differs, the affected timeframes are dropped and rolled up again
        for every symbol, once. A timeframe removed from the config keeps
        its rows but is no longer updated.
        """
        layout = f"{LAYOUT_KEY}{self.rollover}:{','.join(self.rollups)}"
        with write_transaction(self.engine) as conn:
            stored = conn.execute(
                select(progress_cursors.c.key).where(
                    progress_cursors.c.service == self.service,
                    progress_cursors.c.key.startswith(LAYOUT_KEY, autoescape=True),
                )
            ).scalar_one_or_none()
            if stored == layout:
                return
            if stored is not None:
                old_rollover, _, old_list = stored.removeprefix(LAYOUT_KEY).partition(":")
                old = set(old_list.split(",")) if old_list else set()
                stale = [
                    tf
                    for tf in self.rollups
                    if tf not in old or (tf == "1d" and old_rollover != self.rollover)
                ]
                if stale:
                    self._rebuild(conn, stale)
                conn.execute(
                    delete(progress_cursors).where(
                        progress_cursors.c.service == self.service,
                        progress_cursors.c.key == stored,
                    )
                )
            set_position(conn, self.service, layout, TickPosition(0, 0), self._now_ms())
            if fence is not None:
                fence.check(conn)  # last statement before the commit

    def _rebuild(self, conn: Connection, timeframes: list[str]) -> None:
        conn.execute(delete(candles).where(candles.c.timeframe.in_(timeframes)))
        symbols = conn.execute(
            select(candles.c.symbol).where(candles.c.timeframe == BASE_TIMEFRAME).distinct()
        ).scalars()
        now = self._now_ms()
        lateral = conn.dialect.name == "postgresql"
        for symbol in list(symbols):
            _reset_scratch(conn, changed_buckets)
            conn.execute(
                insert(changed_buckets).from_select(
                    ["b", "n"],
                    select(candles.c.ts_ms, candles.c.tick_count).where(
                        candles.c.symbol == symbol, candles.c.timeframe == BASE_TIMEFRAME
                    ),
                )
            )
            for timeframe in timeframes:
                buckets = self._changed_buckets(conn, timeframe)
                upsert(
                    conn,
                    candles,
                    _rolled_up(symbol, timeframe, buckets, now, lateral),
                    _CANDLE_KEY,
                    _CANDLE_VALUES,
                )

    def _fold_and_commit(self, progress: SymbolProgress, fence: Fence | None) -> bool:
        """One fold in its own transaction; True when the symbol has caught up."""
        with write_transaction(self.engine) as conn:
            claimed = self._fold_once(conn, progress)
            if claimed and fence is not None:
                fence.check(conn)  # last statement before the commit
            if claimed < self.batch_ticks:
                progress.lag_ms = freshness_lag_ms(conn, progress.symbol)
                return True
        return False

    def _fold_once(self, conn: Connection, progress: SymbolProgress) -> int:
        symbol = progress.symbol
        start = get_position(conn, self.service, symbol)
        horizon = visible_horizon(conn)
        end = claim_end(conn, ticks, symbol, start, horizon=horizon, batch=self.batch_ticks)
        if end is None:
            return 0
        now = self._now_ms()
        claimed = position_range(ticks, symbol, start, end, by_txid=horizon is not None)

        _reset_scratch(conn, changed_buckets)
        minute = _floor(ticks.c.ts_ms, BASE_TIMEFRAME)
        conn.execute(
            insert(changed_buckets).from_select(
                ["b", "n"], select(minute, func.count()).where(claimed).group_by(minute)
            )
        )
        count = conn.execute(select(func.sum(changed_buckets.c.n))).scalar_one()
        lateral = conn.dialect.name == "postgresql"
        written = upsert(
            conn, candles, _minute_candles(symbol, now, lateral), _CANDLE_KEY, _CANDLE_VALUES
        )
        for timeframe in self.rollups:
            buckets = self._changed_buckets(conn, timeframe)
            written += upsert(
                conn,
                candles,
                _rolled_up(symbol, timeframe, buckets, now, lateral),
                _CANDLE_KEY,
                _CANDLE_VALUES,
            )
        set_position(conn, self.service, symbol, end, now)
        progress.rows += int(count)
        progress.written += written
        return int(count)

    def _changed_buckets(self, conn: Connection, timeframe: str) -> FromClause:
        """``(start, end)`` of each ``timeframe`` bucket holding a changed 1m bucket."""
        minute = changed_buckets.c.b
        if not is_calendar(timeframe, self.rollover):
            start = _floor(minute, timeframe)
            width = literal_column(str(TIMEFRAMES[timeframe]), BigInteger)
            return select(start.label("start"), (start + width).label("end")).distinct().subquery()
        # Days of 23 or 25 hours: their bounds come from the tz database, for
        # just the span the changed minutes cover (a handful of rows).
        first, last = conn.execute(select(func.min(minute), func.max(minute))).one()
        _reset_scratch(conn, calendar_buckets)
        conn.execute(
            insert(calendar_buckets),
            [{"start": s, "end": e} for s, e in day_bounds(int(first), int(last), self.rollover)],
        )
        day = calendar_buckets
        return (
            select(day.c.start, day.c.end)
            .distinct()
            .select_from(changed_buckets.join(day, and_(minute >= day.c.start, minute < day.c.end)))
            .subquery()
        )


def freshness_lag_ms(conn: Connection, symbol: str) -> int | None:
    """Newest tick time minus the newest tick the 1m candles include (None without ticks).

    A live candle's bucket *end* lies in the future, so it cannot say how
    far behind the candles are; the time of its last tick can.
    """
    newest_tick = conn.execute(
        select(func.max(ticks.c.ts_ms)).where(ticks.c.symbol == symbol)
    ).scalar_one()
    if newest_tick is None:
        return None
    newest_folded = conn.execute(
        select(func.max(candles.c.last_tick_ms)).where(
            candles.c.symbol == symbol, candles.c.timeframe == BASE_TIMEFRAME
        )
    ).scalar_one()
    if newest_folded is None:
        return None
    return max(0, int(newest_tick) - int(newest_folded))


# --- statements ------------------------------------------------------------------------


def _floor(ts: ColumnElement[Any], timeframe: str) -> ColumnElement[Any]:
    """The SQL twin of fixed-width :func:`~tickvisor.store.buckets.bucket_start`.

    Timestamps are non-negative epoch milliseconds, for which SQL's ``%``
    (truncating) and Python's (flooring) agree. The width is inlined: it
    comes from :data:`TIMEFRAMES`, never from input, and a literal keeps
    PostgreSQL's integer typing (bigint % integer) exact.
    """
    width = literal_column(str(TIMEFRAMES[timeframe]), BigInteger)
    return ts - ts % width


def _reset_scratch(conn: Connection, table: Table) -> None:
    # IF NOT EXISTS: one statement per fold, not a catalog lookup and a create.
    conn.execute(CreateTable(table, if_not_exists=True))
    conn.execute(delete(table))


def _price(t: FromClause) -> ColumnElement[Any]:
    """The tick's trade price, or its mid when it has none."""
    return func.coalesce(t.c.price, (t.c.bid + t.c.ask) / literal_column("2.0", Float))


def _minute_candles(symbol: str, now_ms: int, lateral: bool) -> Select[Any]:
    """Every changed 1m candle of ``symbol``, recomputed from all of its ticks.

    ``open``/``close`` are the first/last tick by (ts_ms, id): one indexed
    lookup per bucket, cheaper than numbering every row with a window.
    """
    bucket = changed_buckets.c.b
    width = literal_column(str(TIMEFRAMES[BASE_TIMEFRAME]), BigInteger)

    def in_bucket(t: FromClause) -> ColumnElement[bool]:
        return and_(t.c.symbol == symbol, t.c.ts_ms >= bucket, t.c.ts_ms < bucket + width)

    def edge(descending: bool) -> Any:
        t = ticks.alias("edge")
        order = (t.c.ts_ms.desc(), t.c.id.desc()) if descending else (t.c.ts_ms, t.c.id)
        return select(_price(t)).where(in_bucket(t)).order_by(*order).limit(1).scalar_subquery()

    price = _price(ticks)
    return _per_bucket(
        symbol,
        BASE_TIMEFRAME,
        buckets=changed_buckets,
        start=bucket,
        bucket_key=(bucket,),
        source=ticks,
        in_bucket=in_bucket(ticks),
        edges=(edge(descending=False), edge(descending=True)),
        aggregates={
            "high": func.max(price),
            "low": func.min(price),
            "volume": func.sum(func.coalesce(ticks.c.volume, literal_column("0.0", Float))),
            "tick_count": func.count(),
            "last_tick_ms": func.max(ticks.c.ts_ms),
        },
        now_ms=now_ms,
        lateral=lateral,
    )


def _rolled_up(
    symbol: str, timeframe: str, buckets: FromClause, now_ms: int, lateral: bool
) -> Select[Any]:
    """``timeframe`` candles of the changed ``buckets``, from the 1m candles inside them."""

    def in_bucket(c: FromClause) -> ColumnElement[bool]:
        return and_(
            c.c.symbol == symbol,
            c.c.timeframe == BASE_TIMEFRAME,
            c.c.ts_ms >= buckets.c.start,
            c.c.ts_ms < buckets.c.end,
        )

    def edge(column: str, descending: bool) -> Any:
        c = candles.alias("edge")
        order = c.c.ts_ms.desc() if descending else c.c.ts_ms
        return select(c.c[column]).where(in_bucket(c)).order_by(order).limit(1).scalar_subquery()

    minute = candles.alias("minute")
    return _per_bucket(
        symbol,
        timeframe,
        buckets=buckets,
        start=buckets.c.start,
        bucket_key=(buckets.c.start, buckets.c.end),
        source=minute,
        in_bucket=in_bucket(minute),
        edges=(edge("open", descending=False), edge("close", descending=True)),
        aggregates={
            "high": func.max(minute.c.high),
            "low": func.min(minute.c.low),
            "volume": func.sum(minute.c.volume),
            "tick_count": func.sum(minute.c.tick_count),
            "last_tick_ms": func.max(minute.c.last_tick_ms),
        },
        now_ms=now_ms,
        lateral=lateral,
    )


def _per_bucket(
    symbol: str,
    timeframe: str,
    *,
    buckets: FromClause,
    start: ColumnElement[Any],
    bucket_key: tuple[ColumnElement[Any], ...],
    source: FromClause,
    in_bucket: ColumnElement[bool],
    edges: tuple[Any, Any],
    aggregates: dict[str, ColumnElement[Any]],
    now_ms: int,
    lateral: bool,
) -> Select[Any]:
    """One candle row per bucket in ``buckets``, aggregated from the ``source`` rows inside it.

    Two spellings of the same query, because the planners differ. SQLite
    walks the buckets in key order and range-scans the index for each, so a
    plain join with GROUP BY is fastest there. PostgreSQL plans the join
    from statistics, and during a catch-up those are stale (the candles
    table was empty at the last ANALYZE): it then scans every 1m candle of
    the symbol per fold. ``JOIN LATERAL`` pins the plan PostgreSQL should
    use whatever its statistics say: per bucket, one index range scan.
    """
    fixed = (
        literal(symbol, String(32)).label("symbol"),
        literal(timeframe, String(8)).label("timeframe"),
        start.label("ts_ms"),
        edges[0].label("open"),
        edges[1].label("close"),
        literal(now_ms, BigInteger).label("updated_ms"),
    )
    if lateral:
        per_bucket = (
            select(*(expr.label(name) for name, expr in aggregates.items()))
            .where(in_bucket)
            .lateral("per_bucket")
        )
        return (
            select(*fixed, *(per_bucket.c[name] for name in aggregates))
            .select_from(buckets.join(per_bucket, true()))
            .where(per_bucket.c.tick_count > 0)
        )
    return (
        select(*fixed, *(expr.label(name) for name, expr in aggregates.items()))
        .select_from(buckets.join(source, in_bucket))
        # SQLite needs a WHERE in INSERT ... SELECT ... ON CONFLICT, or it
        # reads ON CONFLICT as the join's ON clause.
        .where(source.c.symbol == symbol)
        .group_by(*bucket_key)
    )


__all__ = [
    "DEFAULT_BATCH_TICKS",
    "LAYOUT_KEY",
    "CandleAggregator",
    "freshness_lag_ms",
]
