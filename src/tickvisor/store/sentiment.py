"""Raw positioning readings to time-windowed sentiment metrics, incrementally, in SQL.

Input is ``sentiment_raw``: per symbol, timestamp and provider, the share of
traders long and short. Output is one ``sentiment_metrics`` row per symbol
and raw timestamp. The rules, fixed so that every consumer (the service,
``tickvisor aggregate``, the tests' pandas oracle) agrees on them:

- **Validity.** A reading is quarantined into ``sentiment_quarantine`` (once,
  keyed by its raw id; a second service reading the same rows adds nothing)
  with the first reason that applies, in this order: ``missing`` (long_pct or
  short_pct NULL; SQLite stores a NaN as NULL, so a NaN lands here there),
  ``out_of_range`` (either outside [0, 100], NaN and infinities included),
  ``bad_sum`` (``|long_pct + short_pct - 100| > 1``), ``negative_traders``
  (``total_traders < 0``). The detail names the offending value. A
  quarantined reading contributes nothing, and the cursor moves past it: a
  bad row never fails a pass.
- **Several providers at one (symbol, ts_ms)** make one metrics row: the mean
  of their long_pct and short_pct, the sum of their total_traders (NULL when
  all are NULL), and ``providers`` = the number of valid readings.
- **Moving averages are over time, not rows.** ``ma_5m`` at t is the mean of
  the per-timestamp long_pct over timestamps in (t - 5 min, t], i.e.
  ``>= t - 299_999``; likewise ``ma_15m`` and ``ma_1h``. A gap in the data
  therefore shortens a window instead of stretching it back in time (the
  seed's row-count windows did the latter).
- **change_1h** at t is long_pct(t) - long_pct(r), r being the latest
  timestamp <= t - 1 h of the same symbol; NULL when there is none.
- **signal** (contrarian): -1 when long_pct > ``contrarian_upper`` (the crowd
  is heavily long), +1 when long_pct < ``contrarian_lower``, else 0.
- **label** (the crowd's positioning): ``bullish`` when long_pct >=
  ``bullish_above``, ``bearish`` when <= ``bearish_below``, else ``neutral``.
- **stale**: ``now_ms - ts_ms > max_age_ms``. Set when a row is written; every
  pass then refreshes it for its symbols with two UPDATEs that touch only the
  rows whose side of the cutoff changed (a partial index on fresh rows finds
  them), so for the newest row it reads "no reading for ``max_age_seconds``".

**Incremental and exactly once.** Per symbol, a cursor (key = symbol, under
the service's name) holds the (txid, id) position of the last raw row
consumed. One *fold* claims the next batch past it and, in one transaction:

1. quarantines the batch's invalid rows (``INSERT ... SELECT ... WHERE
   invalid ... ON CONFLICT DO NOTHING``);
2. rewrites every metrics row the batch's valid rows can change: ts in
   [lo, hi], lo = the lowest new timestamp, hi = (the first timestamp with a
   valid reading after the highest new one, or that highest one) + 1 h. A
   value at x sits inside the windows of [x, x + 1 h) and is the change_1h
   reference of the rows up to 1 h after the next timestamp. The rows are
   recomputed **from the readings**, in one ``INSERT ... SELECT ... ON
   CONFLICT DO UPDATE``: providers merged with GROUP BY over the readings
   from the reference of lo up to hi, the windows as ``avg`` over ``RANGE
   BETWEEN 299999 PRECEDING AND CURRENT ROW`` (and 15 min, 1 h), the
   reference as ``last_value`` over ``RANGE BETWEEN UNBOUNDED PRECEDING AND
   3600000 PRECEDING``;
3. moves the cursor.

Recomputing from the stored readings instead of adding deltas is what makes
a fold idempotent and a late reading land correctly in old windows; a fold
killed before its commit leaves nothing, and the next pass redoes it. Step 2
may write a row whose readings are visible but not claimed yet (a later
batch, or on PostgreSQL a transaction younger than the claim horizon): that
row is then simply recomputed again when they are claimed, since every
reading rewrites everything it can influence. Python moves positions, bounds
and counts, never the readings.
"""

from __future__ import annotations

import math
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
    Numeric,
    String,
    Table,
    and_,
    case,
    cast,
    delete,
    false,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.schema import CreateTable

from tickvisor.logs import get_logger
from tickvisor.store.catchup import CatchUpReport, SymbolProgress, round_robin
from tickvisor.store.claims import claim_end, position_range, visible_horizon, write_transaction
from tickvisor.store.cursors import get_position, set_position
from tickvisor.store.fencing import Fence
from tickvisor.store.schema import sentiment_metrics, sentiment_quarantine, sentiment_raw, upsert

#: Raw rows claimed per transaction: enough to amortise the per-fold statements,
#: few enough that SQLite's single write lock is never held for long.
DEFAULT_BATCH_ROWS = 50_000

HOUR_MS = 3_600_000
#: Window widths in ms; a window at t covers timestamps in (t - width, t].
WINDOWS_MS = {"ma_5m": 300_000, "ma_15m": 900_000, "ma_1h": HOUR_MS}

_METRIC_KEY = ("symbol", "ts_ms")
_VALUES = (
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
    "updated_ms",
)

_Double = Float(53)


class SentimentAggregator:
    """The sentiment job: the service's iteration and ``tickvisor aggregate`` both run it.

    Thresholds are data, checked here once so a bad config fails at start-up
    (or is rejected on reload) instead of producing nonsense labels.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        service: str = "sentiment",
        contrarian_upper: float = 70.0,
        contrarian_lower: float = 30.0,
        bullish_above: float = 55.0,
        bearish_below: float = 45.0,
        max_age_seconds: float = 3600.0,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        if not contrarian_lower < contrarian_upper:
            raise ValueError(
                f"contrarian_lower ({contrarian_lower}) must be below "
                f"contrarian_upper ({contrarian_upper})"
            )
        if not bearish_below < bullish_above:
            raise ValueError(
                f"bearish_below ({bearish_below}) must be below bullish_above ({bullish_above})"
            )
        if not (math.isfinite(max_age_seconds) and max_age_seconds > 0):
            raise ValueError(f"max_age_seconds must be a positive number, got {max_age_seconds}")
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
        self.engine = engine
        self.service = service
        self.contrarian_upper = float(contrarian_upper)
        self.contrarian_lower = float(contrarian_lower)
        self.bullish_above = float(bullish_above)
        self.bearish_below = float(bearish_below)
        self.max_age_ms = round(max_age_seconds * 1000)
        self.batch_rows = batch_rows
        self._now_ms = now_ms or (lambda: time.time_ns() // 1_000_000)
        self._log = get_logger("tickvisor.sentiment", service=service)

    def catch_up(
        self,
        symbols: Sequence[str],
        *,
        fence: Fence | None = None,
        budget_seconds: float | None = None,
    ) -> CatchUpReport:
        """Fold every symbol up to its newest visible reading, then refresh ``stale``.

        Symbols take turns, one fold each (:func:`round_robin`); with
        ``budget_seconds`` the pass stops after the fold that crosses it and
        lists the symbols left in ``report.unfinished``. A database fault or
        :class:`~tickvisor.store.fencing.FencedOut` is raised at once, so the
        caller's breaker sees it; any other error is recorded against its
        symbol. A bad reading is never an error: it is quarantined.
        """

        def fold(progress: SymbolProgress) -> bool:
            return self._fold_and_commit(progress, fence)

        report = round_robin(
            symbols,
            fold,
            log=self._log,
            failure_event="sentiment.symbol_failed",
            budget_seconds=budget_seconds,
        )
        self._refresh_stale(list(report.symbols), fence)
        return report

    # --- one fold ----------------------------------------------------------------------

    def _fold_and_commit(self, progress: SymbolProgress, fence: Fence | None) -> bool:
        """One fold in its own transaction; True when the symbol has caught up."""
        with write_transaction(self.engine) as conn:
            claimed = self._fold_once(conn, progress)
            caught_up = claimed < self.batch_rows
            if caught_up:
                progress.lag_ms = sentiment_lag_ms(conn, progress.symbol)
            if claimed and fence is not None:
                fence.check(conn)  # last statement before the commit
        return caught_up

    def _fold_once(self, conn: Connection, progress: SymbolProgress) -> int:
        """Claim, quarantine, recompute, move the cursor; returns the rows claimed."""
        symbol = progress.symbol
        start = get_position(conn, self.service, symbol)
        horizon = visible_horizon(conn)
        end = claim_end(conn, sentiment_raw, symbol, start, horizon=horizon, batch=self.batch_rows)
        if end is None:
            return 0
        now = self._now_ms()
        claimed = position_range(sentiment_raw, symbol, start, end, by_txid=horizon is not None)

        raw = sentiment_raw
        # Two scans, so each row's validity is judged once; the count reads the index only.
        count = int(conn.execute(select(func.count()).where(claimed)).scalar_one())
        good, lo, top = conn.execute(
            select(func.count(), func.min(raw.c.ts_ms), func.max(raw.c.ts_ms)).where(
                claimed, _valid(raw)
            )
        ).one()
        if good < count:
            progress.quarantined += self._quarantine(conn, symbol, claimed, now)
        if lo is not None:
            progress.written += self._recompute(conn, symbol, int(lo), int(top), now)
        set_position(conn, self.service, symbol, end, now)
        progress.rows += count
        return count

    def _quarantine(
        self, conn: Connection, symbol: str, claimed: ColumnElement[bool], now: int
    ) -> int:
        """Set the batch's invalid readings aside with their reason; returns how many.

        The count is of the batch's invalid readings, also those another
        service (a replay under another name) already set aside: it says what
        this pass skipped, and the log line says why.
        """
        raw = sentiment_raw
        reason = _reason(raw)
        bad = select(
            raw.c.id.label("raw_id"),
            raw.c.symbol,
            raw.c.ts_ms,
            reason.label("reason"),
            _detail(raw).label("detail"),
            literal(now, BigInteger).label("quarantined_ms"),
        ).where(claimed, ~_valid(raw))
        upsert(conn, sentiment_quarantine, bad, ("raw_id",), ())
        counts = {
            str(r): int(n)
            for r, n in conn.execute(
                select(reason, func.count()).where(claimed, ~_valid(raw)).group_by(reason)
            )
        }
        total = sum(counts.values())
        self._log.warning("sentiment.quarantined", symbol=symbol, count=total, reasons=counts)
        return total

    def _recompute(self, conn: Connection, symbol: str, lo: int, top: int, now: int) -> int:
        """Rewrite every metrics row that valid readings at [lo, top] can change; returns rows.

        Those are the rows at [lo, hi]: see the module docstring for hi. Each
        is recomputed entirely from the stored readings (providers merged,
        windows, reference), in one statement, so each row is written once.
        """
        raw = sentiment_raw
        after = conn.execute(
            select(func.min(raw.c.ts_ms)).where(
                raw.c.symbol == symbol, raw.c.ts_ms > top, _valid(raw)
            )
        ).scalar_one()
        hi = (top if after is None else int(after)) + HOUR_MS
        # The change_1h reference of lo; every later row's reference is at or after it.
        reference = conn.execute(
            select(func.max(raw.c.ts_ms)).where(
                raw.c.symbol == symbol, raw.c.ts_ms <= lo - HOUR_MS, _valid(raw)
            )
        ).scalar_one()
        first = lo - HOUR_MS if reference is None else int(reference)

        per_ts = self._per_timestamp(conn, symbol, first, hi)
        windowed = _windowed(per_ts, postgresql=conn.dialect.name == "postgresql")
        w = windowed.c
        rows = select(
            literal(symbol, String(32)).label("symbol"),
            w.ts_ms,
            w.long_pct,
            w.short_pct,
            w.total_traders,
            w.providers,
            w.ma_5m,
            w.ma_15m,
            w.ma_1h,
            (w.long_pct - w.reference).label("change_1h"),
            self._signal(w.long_pct).label("signal"),
            self._label(w.long_pct).label("label"),
            (w.ts_ms < literal(now - self.max_age_ms, BigInteger)).label("stale"),
            literal(now, BigInteger).label("updated_ms"),
        ).where(w.ts_ms >= lo)  # after the windows: earlier rows only feed them
        return upsert(conn, sentiment_metrics, rows, _METRIC_KEY, _VALUES)

    def _per_timestamp(self, conn: Connection, symbol: str, first: int, hi: int) -> FromClause:
        """The merged per-timestamp readings of ``symbol`` in [first, hi], in time order.

        On SQLite they go through a scratch table keyed by ts_ms (its rowid):
        the window passes then read them in order, with no sort, and copy two
        columns per row instead of five (the rest is joined back by rowid),
        which is most of a fold's cost there. PostgreSQL's planner sorts and
        carries tuples cheaply, so it gets a plain subquery.
        """
        raw = sentiment_raw
        merged = (
            select(
                raw.c.ts_ms,
                func.avg(raw.c.long_pct).label("long_pct"),
                func.avg(raw.c.short_pct).label("short_pct"),
                func.sum(raw.c.total_traders).label("total_traders"),
                func.count().label("providers"),
            )
            .where(raw.c.symbol == symbol, raw.c.ts_ms >= first, raw.c.ts_ms <= hi, _valid(raw))
            .group_by(raw.c.ts_ms)
        )
        if conn.dialect.name != "sqlite":
            return merged.subquery("per_ts")
        conn.execute(CreateTable(per_timestamp, if_not_exists=True))
        conn.execute(delete(per_timestamp))
        conn.execute(insert(per_timestamp).from_select(list(_PER_TS_COLUMNS), merged))
        return per_timestamp

    def _signal(self, long_pct: ColumnElement[Any]) -> ColumnElement[Any]:
        return case(
            (long_pct > literal(self.contrarian_upper, _Double), literal_column("-1", Integer)),
            (long_pct < literal(self.contrarian_lower, _Double), literal_column("1", Integer)),
            else_=literal_column("0", Integer),
        )

    def _label(self, long_pct: ColumnElement[Any]) -> ColumnElement[Any]:
        return case(
            (long_pct >= literal(self.bullish_above, _Double), literal("bullish", String(16))),
            (long_pct <= literal(self.bearish_below, _Double), literal("bearish", String(16))),
            else_=literal("neutral", String(16)),
        )

    # --- staleness ---------------------------------------------------------------------

    def _refresh_stale(self, symbols: list[str], fence: Fence | None) -> None:
        """Flip ``stale`` on exactly the rows of ``symbols`` whose side of the cutoff changed.

        Time passing makes fresh rows stale: those are found through the
        partial index on the *fresh* rows' ``ts_ms``, which holds only the
        last ``max_age_seconds`` of readings however long the history is.
        The symbol test is written ``symbol || ''`` so that no planner
        answers it from the primary key instead, which would read every old
        row of the symbol on every pass. A longer ``max_age_seconds`` after
        a reload makes stale rows fresh again: those are the newest rows of
        each symbol, a primary-key range.
        """
        if not symbols:
            return
        m = sentiment_metrics
        now = self._now_ms()
        cutoff = literal(now - self.max_age_ms, BigInteger)
        aged = (
            update(m)
            .where(
                m.c.stale == false(),
                m.c.ts_ms < cutoff,
                (m.c.symbol + literal_column("''")).in_(symbols),
            )
            .values(stale=true(), updated_ms=now)
            .execution_options(preserve_rowcount=True)
        )
        renewed = (
            update(m)
            .where(m.c.symbol.in_(symbols), m.c.ts_ms >= cutoff, m.c.stale == true())
            .values(stale=false(), updated_ms=now)
            .execution_options(preserve_rowcount=True)
        )
        with write_transaction(self.engine) as conn:
            flipped = conn.execute(aged).rowcount + conn.execute(renewed).rowcount
            if flipped and fence is not None:
                fence.check(conn)  # last statement before the commit


# --- statements -------------------------------------------------------------------------

_PER_TS_COLUMNS = ("ts_ms", "long_pct", "short_pct", "total_traders", "providers")

# Scratch table, private to an SQLite connection; named with a version, so a
# connection that outlives an upgrade never reuses an old shape. INTEGER
# PRIMARY KEY makes ts_ms the rowid: rows are stored, and scanned, in time order.
_scratch = MetaData()
per_timestamp = Table(
    "tv_sentiment_per_ts_v1",
    _scratch,
    Column("ts_ms", Integer, primary_key=True, autoincrement=False),
    Column("long_pct", _Double, nullable=False),
    Column("short_pct", _Double, nullable=False),
    Column("total_traders", BigInteger, nullable=True),
    Column("providers", Integer, nullable=False),
    prefixes=["TEMPORARY"],
)


def _windowed(per_ts: FromClause, *, postgresql: bool) -> FromClause:
    """``per_ts`` plus the moving averages and the change_1h reference of every row.

    The dialects get different spellings of the same values, each measured
    (``benchmarks/bench_sentiment.py``):

    - PostgreSQL has no inverse transition for a double's ``avg``, so a
      moving frame would re-add its whole window for every row (rows x window
      work: 3,600 additions a row for one reading a second over an hour).
      ``numeric`` has one: each row is added once and removed once.
      Converting a double to numeric keeps 15 significant digits, far inside
      the 1e-9 the results are checked to. The reference is ``last_value``
      over ``RANGE BETWEEN UNBOUNDED PRECEDING AND 3600000 PRECEDING``.
    - On SQLite ``avg`` already slides, but every window pass copies its
      input once more, which is most of a fold's cost there. So the passes
      carry two columns, the other ones are joined back by rowid, and the
      reference is one rowid seek in the scratch table instead of a fourth
      pass.
    """
    p = per_ts.c
    value: ColumnElement[Any] = cast(p.long_pct, Numeric) if postgresql else p.long_pct

    def moving_average(width_ms: int) -> ColumnElement[Any]:
        average: ColumnElement[Any] = func.avg(value).over(
            order_by=p.ts_ms, range_=(-(width_ms - 1), 0)
        )
        return cast(average, _Double) if postgresql else average

    averages = [moving_average(width).label(name) for name, width in WINDOWS_MS.items()]
    others = [p[name] for name in _PER_TS_COLUMNS[1:]]
    if postgresql:
        last = func.last_value(p.long_pct).over(order_by=p.ts_ms, range_=(None, -HOUR_MS))
        return select(p.ts_ms, *averages, last.label("reference"), *others).subquery("windowed")
    windows = select(p.ts_ms, *averages).subquery("windows")
    earlier = per_ts.alias("earlier")
    reference = (
        select(earlier.c.long_pct)
        .where(earlier.c.ts_ms <= p.ts_ms - HOUR_MS)
        .order_by(earlier.c.ts_ms.desc())
        .limit(1)
        .scalar_subquery()
    )
    return (
        select(windows, reference.label("reference"), *others)
        .select_from(windows.join(per_ts, p.ts_ms == windows.c.ts_ms))
        .subquery("windowed")
    )


def sentiment_lag_ms(conn: Connection, symbol: str) -> int | None:
    """Newest raw timestamp minus newest metrics timestamp; None without rows.

    Only valid readings count as "raw" here: a quarantined reading never
    reaches the metrics, so counting it would report a lag that no amount of
    catching up could close.
    """
    raw, m = sentiment_raw, sentiment_metrics
    newest_raw = conn.execute(
        select(func.max(raw.c.ts_ms)).where(raw.c.symbol == symbol, _valid(raw))
    ).scalar_one()
    if newest_raw is None:
        return None
    newest_metric = conn.execute(
        select(func.max(m.c.ts_ms)).where(m.c.symbol == symbol)
    ).scalar_one()
    if newest_metric is None:
        return None
    return max(0, int(newest_raw) - int(newest_metric))


# --- validity --------------------------------------------------------------------------

_ZERO = literal_column("0.0", _Double)
_HUNDRED = literal_column("100.0", _Double)
_ONE = literal_column("1.0", _Double)


def _in_range(value: ColumnElement[Any]) -> ColumnElement[bool]:
    # Spelled as two comparisons, not BETWEEN-with-NOT: PostgreSQL sorts NaN above
    # every number, so ``NaN <= 100`` is false and a NaN is out of range on both
    # dialects (SQLite has already stored it as NULL).
    return and_(value >= _ZERO, value <= _HUNDRED)


def _valid(t: FromClause) -> ColumnElement[bool]:
    """True for a usable reading; never NULL, so ``NOT valid`` is its exact complement."""
    c = t.c
    return and_(
        c.long_pct.is_not(None),
        c.short_pct.is_not(None),
        _in_range(c.long_pct),
        _in_range(c.short_pct),
        func.abs(c.long_pct + c.short_pct - _HUNDRED) <= _ONE,
        or_(c.total_traders.is_(None), c.total_traders >= literal_column("0", BigInteger)),
    )


def _reason(t: FromClause) -> ColumnElement[Any]:
    """The quarantine code of an invalid reading: the first rule it breaks."""
    c = t.c
    return case(
        (or_(c.long_pct.is_(None), c.short_pct.is_(None)), literal("missing", String(32))),
        (
            ~and_(_in_range(c.long_pct), _in_range(c.short_pct)),
            literal("out_of_range", String(32)),
        ),
        (
            func.abs(c.long_pct + c.short_pct - _HUNDRED) > _ONE,
            literal("bad_sum", String(32)),
        ),
        else_=literal("negative_traders", String(32)),
    )


def _detail(t: FromClause) -> ColumnElement[Any]:
    """A human line naming the offending value, for whoever reads the quarantine."""
    c = t.c

    def text(value: ColumnElement[Any]) -> ColumnElement[Any]:
        return cast(value, String)

    def words(s: str) -> ColumnElement[Any]:
        return literal(s, String)

    return case(
        (c.long_pct.is_(None), words("long_pct is NULL")),
        (c.short_pct.is_(None), words("short_pct is NULL")),
        (
            ~_in_range(c.long_pct),
            words("long_pct=") + text(c.long_pct) + words(" is outside [0, 100]"),
        ),
        (
            ~_in_range(c.short_pct),
            words("short_pct=") + text(c.short_pct) + words(" is outside [0, 100]"),
        ),
        (
            func.abs(c.long_pct + c.short_pct - _HUNDRED) > _ONE,
            words("long_pct + short_pct = ")
            + text(c.long_pct + c.short_pct)
            + words(", not within 1 of 100"),
        ),
        else_=words("total_traders=") + text(c.total_traders) + words(" is negative"),
    )


__all__ = [
    "DEFAULT_BATCH_ROWS",
    "WINDOWS_MS",
    "SentimentAggregator",
    "sentiment_lag_ms",
]
