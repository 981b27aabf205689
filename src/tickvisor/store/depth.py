"""Order-book snapshots to depth metrics, incrementally and exactly once.

Per symbol, a progress cursor holds the position of the last snapshot
already processed. One *fold* claims the next batch of snapshots past the
cursor and, all in one transaction:

1. reads the batch with one SELECT and judges every snapshot: a bad one is
   quarantined into ``depth_quarantine`` with its reason, once;
2. writes one ``depth_metrics`` row per good snapshot, one ``executemany``
   upsert keyed by the snapshot id, so a fold redone after a crash
   overwrites instead of doubling;
3. recomputes every minute of ``depth_metrics_1m`` the batch touched **from
   all the metrics rows in it**, old and new, in one ``INSERT ... SELECT ...
   ON CONFLICT DO UPDATE``: a late snapshot lands in its old minute correctly;
4. moves the cursor past the batch, quarantined snapshots included.

Unlike candles, step 1 cannot happen in SQL: the sides are JSON text, and
SQLite and PostgreSQL share no JSON functions that could judge them. It is
the one place Python touches every row, so it is built to touch each row as
little as possible. A side that is a non-empty list of ``[number, number]``
pairs, which is every well-formed side, is recognised by a compiled regular
expression; the numbers of all such sides of the batch are then parsed at
once by pandas' C reader, and sorting, top-N sums and metrics are numpy
operations over the whole batch. ``json.loads`` runs only on sides the
expression rejects, to say what is wrong with them. A bad snapshot never
fails the fold; a database fault does, so the caller's breaker sees it.

Which reason a snapshot gets when several things are wrong with it: first
the sides' text and types (``malformed_json``, ``bad_level``,
``non_numeric``, ``empty_side``; bids before asks; level by level), then
their values (``non_numeric`` for a number too large for a double,
``non_positive_price``, ``negative_size``; each reason checked on both sides
before the next), then ``crossed_book``, and last ``non_numeric`` again when
the numbers are so large that a metric overflows a double.
"""

from __future__ import annotations

import io
import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from itertools import repeat
from operator import methodcaller
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    FromClause,
    Integer,
    Select,
    String,
    and_,
    func,
    literal,
    literal_column,
    select,
    true,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from tickvisor.logs import get_logger
from tickvisor.store.catchup import CatchUpReport, SymbolProgress, round_robin
from tickvisor.store.claims import claim_end, position_range, visible_horizon, write_transaction
from tickvisor.store.cursors import get_position, set_position
from tickvisor.store.fencing import Fence
from tickvisor.store.schema import (
    depth_metrics,
    depth_metrics_1m,
    depth_quarantine,
    depth_snapshots,
    upsert,
)

#: Levels per side summed into ``bid_depth``/``ask_depth``: the seed's default.
DEFAULT_LEVELS = 10
#: Snapshots claimed per transaction. The work is vectorised over the batch,
#: so a batch must be large enough to amortise it; past 10,000 the benchmark
#: gains nothing more, and a smaller batch holds SQLite's single write lock
#: for less time (about 0.2 s of ten-level books).
DEFAULT_BATCH_SNAPSHOTS = 10_000

#: Every reason code ``depth_quarantine.reason`` can hold.
REASONS = (
    "malformed_json",
    "bad_level",
    "non_numeric",
    "empty_side",
    "non_positive_price",
    "negative_size",
    "crossed_book",
)

_MINUTE_MS = 60_000
_DETAIL_CHARS = 200
_EXCERPT_CHARS = 80

_METRIC_COLUMNS = (
    "snapshot_id",
    "symbol",
    "ts_ms",
    "best_bid",
    "best_ask",
    "mid",
    "spread",
    "spread_bps",
    "bid_depth",
    "ask_depth",
    "imbalance",
    "microprice",
    "updated_ms",
)
_ROLLUP_VALUES = (
    "spread_mean",
    "spread_max",
    "imbalance_mean",
    "last_mid",
    "snapshot_count",
    "updated_ms",
)

# A non-empty JSON array of [number, number] pairs, to the letter of RFC 8259
# (its whitespace, its number grammar: no NaN, no leading zeros, no "+1").
# Possessive quantifiers: the grammar never needs to backtrack, so the engine
# is told not to keep the state for it, which halves the matching time. The
# compact spelling (no whitespace, as ``json.dumps(separators=(",", ":"))``
# and most feeds write it) is tried first: it matches in half the time again.
_WS = r"[ \t\n\r]*+"
_NUMBER = r"-?+(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][+-]?+[0-9]++)?+"
_LEVEL = rf"\[{_WS}{_NUMBER}{_WS},{_WS}{_NUMBER}{_WS}\]"
_PLAIN_SIDE = re.compile(rf"{_WS}\[{_WS}{_LEVEL}{_WS}(?:,{_WS}{_LEVEL}{_WS})*+\]{_WS}")
_COMPACT_SIDE = re.compile(rf"\[\[{_NUMBER},{_NUMBER}(?:\],\[{_NUMBER},{_NUMBER})*+\]\]")
_count_levels = methodcaller("count", "[")

# pandas 3 parses floats correctly rounded by default (and deprecates the
# option); pandas 2's default parser may be off by an ulp, its round_trip is not.
_EXACT_FLOATS: dict[str, Any] = (
    {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}
)

_Floats = npt.NDArray[np.float64]
_Ints = npt.NDArray[np.int64]
_Bools = npt.NDArray[np.bool_]


class DepthAggregator:
    """The depth job itself: the actor's iteration and ``tickvisor aggregate`` both run it.

    Each fold is its own transaction, so a backlog of any size is caught up
    in bounded memory and bounded lock time, and a fold killed before its
    commit leaves nothing behind: the next one redoes it.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        service: str = "depth",
        levels: int = DEFAULT_LEVELS,
        batch_snapshots: int = DEFAULT_BATCH_SNAPSHOTS,
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        if batch_snapshots < 1:
            raise ValueError(f"batch_snapshots must be >= 1, got {batch_snapshots}")
        self.engine = engine
        self.service = service
        self.levels = levels
        self.batch_snapshots = batch_snapshots
        self._now_ms = now_ms or (lambda: time.time_ns() // 1_000_000)
        self._log = get_logger("tickvisor.depth", service=service)

    def catch_up(
        self,
        symbols: Sequence[str],
        *,
        fence: Fence | None = None,
        budget_seconds: float | None = None,
    ) -> CatchUpReport:
        """Process every symbol up to its newest snapshot; one symbol's fault spares the rest.

        Symbols take turns, one fold each (:func:`~tickvisor.store.catchup.round_robin`).
        With ``budget_seconds``, the pass stops after the fold that crosses
        it and lists the symbols with snapshots left in ``report.unfinished``.
        With ``fence``, every fold that claimed something checks it last
        before committing. A database fault or a lost fence is raised at
        once; a bad snapshot is never an error, it is quarantined and counted
        in ``report.quarantined``.
        """

        def fold(progress: SymbolProgress) -> bool:
            return self._fold_and_commit(progress, fence)

        return round_robin(
            symbols,
            fold,
            log=self._log,
            failure_event="depth.symbol_failed",
            budget_seconds=budget_seconds,
        )

    def _fold_and_commit(self, progress: SymbolProgress, fence: Fence | None) -> bool:
        """One fold in its own transaction; True when the symbol has caught up."""
        with write_transaction(self.engine) as conn:
            claimed = self._fold_once(conn, progress)
            if claimed < self.batch_snapshots:
                progress.lag_ms = depth_lag_ms(conn, progress.symbol)
            if claimed and fence is not None:
                fence.check(conn)  # last statement before the commit
        return claimed < self.batch_snapshots

    def _fold_once(self, conn: Connection, progress: SymbolProgress) -> int:
        """Claim, judge, write, roll up, move the cursor; returns snapshots claimed."""
        symbol = progress.symbol
        start = get_position(conn, self.service, symbol)
        horizon = visible_horizon(conn)
        end = claim_end(
            conn, depth_snapshots, symbol, start, horizon=horizon, batch=self.batch_snapshots
        )
        if end is None:
            return 0
        now = self._now_ms()
        s = depth_snapshots.c
        claimed = position_range(depth_snapshots, symbol, start, end, by_txid=horizon is not None)
        rows = conn.execute(select(s.id, s.ts_ms, s.bids, s.asks).where(claimed)).all()
        if not rows:  # only if the claimed rows were deleted in between
            set_position(conn, self.service, symbol, end, now)
            return 0
        ids, stamps, bids, asks = zip(*rows, strict=True)
        book = _assess(bids, asks, self.levels)

        if book.problems:
            self._quarantine(
                conn, symbol=symbol, ids=ids, stamps=stamps, problems=book.problems, now=now
            )
        written = 0
        if len(book.good):
            written += _write_metrics(
                conn, symbol=symbol, ids=ids, stamps=stamps, book=book, now=now
            )
            written += upsert(
                conn,
                depth_metrics_1m,
                _minute_rollup(
                    symbol,
                    claimed,
                    now,
                    lateral=conn.dialect.name == "postgresql",
                    skip_quarantined=bool(book.problems),
                ),
                ("symbol", "ts_ms"),
                _ROLLUP_VALUES,
            )
        set_position(conn, self.service, symbol, end, now)
        progress.rows += len(rows)
        progress.written += written
        progress.quarantined += len(book.problems)
        return len(rows)

    def _quarantine(
        self,
        conn: Connection,
        *,
        symbol: str,
        ids: Sequence[int],
        stamps: Sequence[int],
        problems: dict[int, tuple[str, str]],
        now: int,
    ) -> None:
        """Set the bad snapshots aside, once each; log counts, never payloads."""
        entries = [
            {
                "snapshot_id": ids[row],
                "symbol": symbol,
                "ts_ms": stamps[row],
                "reason": reason,
                "detail": detail[:_DETAIL_CHARS],
                "quarantined_ms": now,
            }
            for row, (reason, detail) in sorted(problems.items())
        ]
        upsert(conn, depth_quarantine, entries, ("snapshot_id",), ())
        first = entries[0]
        self._log.warning(
            "depth.quarantined",
            symbol=symbol,
            count=len(entries),
            reasons=dict(Counter(str(e["reason"]) for e in entries)),
            first_snapshot_id=first["snapshot_id"],
            first_detail=first["detail"],
        )


def depth_lag_ms(conn: Connection, symbol: str) -> int | None:
    """Newest snapshot time minus the newest snapshot processed, in ms.

    A quarantined snapshot counts as processed: the service is not behind
    on it, it has dealt with it. None when the symbol has no snapshots, or
    none processed yet (then there is no output to trail by anything).
    """
    newest = conn.execute(
        select(func.max(depth_snapshots.c.ts_ms)).where(depth_snapshots.c.symbol == symbol)
    ).scalar_one()
    if newest is None:
        return None
    done = [
        conn.execute(select(func.max(t.c.ts_ms)).where(t.c.symbol == symbol)).scalar_one()
        for t in (depth_metrics, depth_quarantine)
    ]
    known = [int(v) for v in done if v is not None]
    if not known:
        return None
    return max(0, int(newest) - max(known))


# --- judging and measuring a batch -----------------------------------------------------


@dataclass
class _Book:
    """What :func:`_assess` made of a batch: metrics of the good rows, reasons for the rest."""

    #: Row indexes (into the batch) of the good snapshots, ascending.
    good: _Ints
    #: Per good snapshot, in the order of ``good``.
    best_bid: _Floats
    best_ask: _Floats
    mid: _Floats
    spread: _Floats
    spread_bps: _Floats
    bid_depth: _Floats
    ask_depth: _Floats
    #: NaN where the value is NULL (both depths, or both top sizes, are zero).
    imbalance: _Floats
    microprice: _Floats
    #: Row index -> (reason, detail) of each bad snapshot.
    problems: dict[int, tuple[str, str]]


def _assess(bids: Sequence[str], asks: Sequence[str], levels: int) -> _Book:
    """Judge every snapshot of a batch and measure the good ones, vectorised over the batch."""
    n = len(bids)
    texts, problems = _screen([*bids, *asks], n)
    kept = np.array([r for r in range(n) if r not in problems], dtype=np.int64)
    if problems:
        texts = [texts[r] for r in kept] + [texts[n + r] for r in kept]
    if not len(kept):
        return _empty_book(problems)

    counts = np.fromiter(map(_count_levels, texts), dtype=np.int64, count=len(texts)) - 1
    values = _parse_numbers(texts)
    split = int(counts[: len(kept)].sum())
    sides = {
        "bids": _Side(values[:split, 0], values[:split, 1], counts[: len(kept)]),
        "asks": _Side(values[split:, 0], values[split:, 1], counts[len(kept) :]),
    }
    best_bid, bid_top, bid_depth = sides["bids"].summary(levels, descending=True)
    best_ask, ask_top, ask_depth = sides["asks"].summary(levels, descending=False)
    with np.errstate(all="ignore"):
        mid = (best_bid + best_ask) / 2.0
        spread = best_ask - best_bid
        spread_bps = spread / mid * 10_000.0
        total = bid_depth + ask_depth
        imbalance = (bid_depth - ask_depth) / total
        top = bid_top + ask_top
        weighted = best_bid * ask_top + best_ask * bid_top
        microprice = weighted / top
    imbalance[total == 0] = np.nan
    microprice[top == 0] = np.nan

    # The first rule each snapshot breaks, in precedence order (0: none).
    rules: list[tuple[str, str | None, _Bools]] = [
        (reason, name, side.breaks(reason))
        for reason in ("non_numeric", "non_positive_price", "negative_size")
        for name, side in sides.items()
    ]
    rules.append(("crossed_book", None, best_bid >= best_ask))
    finite = (
        np.isfinite(mid)
        & np.isfinite(spread_bps)
        & np.isfinite(total)
        & np.isfinite(top)
        & np.isfinite(weighted)
    )
    rules.append(("non_numeric", None, ~finite))
    broken = np.zeros(len(kept), dtype=np.int8)
    for number, (_, _, flags) in enumerate(rules, start=1):
        broken[(broken == 0) & flags] = number
    for j in np.flatnonzero(broken).tolist():
        reason, name, _ = rules[int(broken[j]) - 1]
        if name is not None:
            detail = sides[name].detail(reason, name, j)
        elif reason == "crossed_book":
            detail = f"best bid {float(best_bid[j])!r} >= best ask {float(best_ask[j])!r}"
        else:
            detail = "prices or sizes so large that the metrics overflow a double"
        problems[int(kept[j])] = (reason, detail)

    ok = broken == 0
    return _Book(
        good=kept[ok],
        best_bid=best_bid[ok],
        best_ask=best_ask[ok],
        mid=mid[ok],
        spread=spread[ok],
        spread_bps=spread_bps[ok],
        bid_depth=bid_depth[ok],
        ask_depth=ask_depth[ok],
        imbalance=imbalance[ok],
        microprice=microprice[ok],
        problems=problems,
    )


def _screen(texts: list[str], n: int) -> tuple[list[str], dict[int, tuple[str, str]]]:
    """Compact sides for the rows whose text and types are right; the reasons of the others.

    ``texts`` are the ``n`` bids then the ``n`` asks. The common case, every
    side compact and well-formed, costs one C-level pass of the expression.
    """
    problems: dict[int, tuple[str, str]] = {}
    if all(map(_COMPACT_SIDE.fullmatch, texts)):
        return texts, problems
    texts = list(texts)
    for i, text in enumerate(texts):
        row = i % n
        if row in problems or _COMPACT_SIDE.fullmatch(text):
            continue
        if _PLAIN_SIDE.fullmatch(text):
            texts[i] = "".join(text.split())  # JSON whitespace only, none inside a token
            continue
        verdict = _inspect_side(text, "bids" if i < n else "asks")
        if isinstance(verdict, tuple):
            problems[row] = verdict
        else:  # valid after all (a safety net: the expressions accept every valid side)
            texts[i] = verdict
    return texts, problems


def _empty_book(problems: dict[int, tuple[str, str]]) -> _Book:
    none = np.empty(0, dtype=np.float64)
    return _Book(
        good=np.empty(0, dtype=np.int64),
        best_bid=none,
        best_ask=none,
        mid=none,
        spread=none,
        spread_bps=none,
        bid_depth=none,
        ask_depth=none,
        imbalance=none,
        microprice=none,
        problems=problems,
    )


@dataclass
class _Side:
    """One side of every snapshot in a batch: its levels end to end, in arrival order."""

    prices: _Floats
    sizes: _Floats
    #: Levels per snapshot (at least 1: the expressions require a level).
    counts: _Ints

    @cached_property
    def starts(self) -> _Ints:
        return np.concatenate(([0], np.cumsum(self.counts)[:-1]))

    def faults(self, reason: str) -> _Bools:
        """Per level: does it break ``reason``'s rule?"""
        if reason == "non_numeric":  # a number too large for a double
            return ~(np.isfinite(self.prices) & np.isfinite(self.sizes))
        if reason == "non_positive_price":
            return self.prices <= 0
        return self.sizes < 0

    def breaks(self, reason: str) -> _Bools:
        """Per snapshot: does any of its levels break ``reason``'s rule?"""
        return np.logical_or.reduceat(self.faults(reason), self.starts)

    def detail(self, reason: str, name: str, row: int) -> str:
        """Name the first level of snapshot ``row`` that breaks ``reason``'s rule."""
        lo = int(self.starts[row])
        level = int(np.argmax(self.faults(reason)[lo : lo + int(self.counts[row])]))
        price, size = float(self.prices[lo + level]), float(self.sizes[lo + level])
        if reason == "non_numeric":
            which = "price" if not math.isfinite(price) else "size"
            return f"{name} level {level}: {which} is too large for a double"
        if reason == "non_positive_price":
            return f"{name} level {level}: price {price!r} is not positive"
        return f"{name} level {level}: size {size!r} is negative"

    def summary(self, levels: int, *, descending: bool) -> tuple[_Floats, _Floats, _Floats]:
        """Best price, its size, and the size summed over the best ``levels`` levels.

        Everything runs over the whole batch at once. Feeds send sorted
        books, so the sort is skipped when every snapshot is in order
        already; otherwise one stable sort by (snapshot, price) keeps equal
        prices in arrival order. Only the best ``levels`` of each snapshot
        are spread into a (snapshots, levels) array, so a book thousands of
        levels deep costs no more memory than its levels, and the sums add
        the levels best first, the same way whatever the batch held.
        """
        n, counts, starts = len(self.counts), self.counts, self.starts
        key = -self.prices if descending else self.prices
        size = self.sizes
        row = np.repeat(np.arange(n), counts)
        in_order = key[1:] >= key[:-1]
        in_order[starts[1:] - 1] = True  # across two snapshots: no order to keep
        if not in_order.all():
            order = np.lexsort((key, row))
            key, size = key[order], size[order]
        width = min(levels, int(counts.max()))
        if (counts == counts[0]).all():
            top = size.reshape(n, int(counts[0]))[:, :width]
        else:
            rank = np.arange(len(key)) - np.repeat(starts, counts)
            keep = rank < width
            top = np.zeros((n, width))
            top[row[keep], rank[keep]] = size[keep]
        depth = top[:, 0].copy()
        with np.errstate(over="ignore"):  # an overflowing sum is quarantined by the caller
            for level in range(1, width):
                depth += top[:, level]
        best = -key[starts] if descending else key[starts]
        return best, size[starts], depth


def _parse_numbers(texts: list[str]) -> _Floats:
    """Every ``[price, size]`` of ``texts`` (each matched by ``_COMPACT_SIDE``), as an (M, 2) array.

    The sides become one line per level, ``price,size``, and pandas' C
    reader parses them all in one call: four times faster than numpy's
    text parsers and six times faster than ``json.loads``, and correctly
    rounded, so every number is the double ``json.loads`` would give.
    """
    body = "\n".join([text[2:-2] for text in texts]).replace("],[", "\n")
    frame = pd.read_csv(
        io.StringIO(body),
        header=None,
        names=["price", "size"],
        dtype=np.float64,
        na_filter=False,
        engine="c",
        **_EXACT_FLOATS,
    )
    values: _Floats = frame.to_numpy(dtype=np.float64)
    return values


def _inspect_side(text: str, side: str) -> tuple[str, str] | str:
    """Why ``text`` is not a usable book side, as ``(reason, detail)``; or the side, normalised.

    The slow path, for the sides the fast expression rejected: it parses
    with ``json.loads`` to say precisely what is wrong and where.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return "malformed_json", f"{side} is not valid JSON ({exc.msg} at {exc.pos}): " + _excerpt(
            text
        )
    except RecursionError:
        return "bad_level", f"{side} is nested too deeply to be a list of [price, size] levels"
    except ValueError as exc:  # an integer with more digits than Python converts
        return "non_numeric", f"{side} holds a number too long to convert ({exc})"
    if not isinstance(value, list):
        return "bad_level", f"{side} is {_kind(value)}, not a list of [price, size] levels"
    if not value:
        return "empty_side", f"{side} has no levels"
    for index, level in enumerate(value):
        if not isinstance(level, list) or len(level) != 2:
            return "bad_level", f"{side} level {index} is not a [price, size] pair: " + _excerpt(
                json.dumps(level)
            )
        for name, number in zip(("price", "size"), level, strict=True):
            if isinstance(number, bool) or not isinstance(number, int | float):
                return "non_numeric", (
                    f"{side} level {index}: {name} is {_kind(number)}, not a number: "
                    + _excerpt(json.dumps(number))
                )
            try:
                finite = math.isfinite(float(number))
            except OverflowError:
                finite = False
            if not finite:
                return "non_numeric", (
                    f"{side} level {index}: {name} is not a finite number: "
                    + _excerpt(json.dumps(number))
                )
    return "[" + ",".join(f"[{float(p)!r},{float(s)!r}]" for p, s in value) + "]"


def _kind(value: Any) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return kinds.get(type(value), "a number")


def _excerpt(text: str) -> str:
    """At most ``_EXCERPT_CHARS`` of ``text``: enough to find the fault, never a whole payload."""
    clipped = text if len(text) <= _EXCERPT_CHARS else text[: _EXCERPT_CHARS - 3] + "..."
    return repr(clipped)


# --- statements ------------------------------------------------------------------------


def _write_metrics(
    conn: Connection,
    *,
    symbol: str,
    ids: Sequence[int],
    stamps: Sequence[int],
    book: _Book,
    now: int,
) -> int:
    """One executemany upsert of every good snapshot's metrics row.

    The rows go to the driver as plain tuples, under the statement
    :func:`~tickvisor.store.schema.upsert` would build, compiled once:
    SQLAlchemy's per-row parameter handling would otherwise cost as much
    as the driver's own work.
    """
    if len(book.good) < len(ids):
        good = book.good.tolist()
        ids = [ids[i] for i in good]
        stamps = [stamps[i] for i in good]
    rows = list(
        zip(
            ids,
            repeat(symbol),
            stamps,
            book.best_bid.tolist(),
            book.best_ask.tolist(),
            book.mid.tolist(),
            book.spread.tolist(),
            book.spread_bps.tolist(),
            book.bid_depth.tolist(),
            book.ask_depth.tolist(),
            _nullable(book.imbalance),
            _nullable(book.microprice),
            repeat(now),
        )
    )
    result = conn.exec_driver_sql(_metrics_upsert_sql(conn.dialect), rows)
    return result.rowcount if result.rowcount >= 0 else len(rows)


@lru_cache(maxsize=8)
def _metrics_upsert_sql(dialect: Dialect) -> str:
    """The metrics upsert as SQL text with positional parameters in ``_METRIC_COLUMNS`` order."""
    if dialect.name == "sqlite":
        stmt: Any = sqlite.insert(depth_metrics)
        compiler: Dialect = dialect
    elif dialect.name == "postgresql":
        stmt = postgresql.insert(depth_metrics)
        # psycopg takes "%s" as well as "%(name)s"; positional lets rows be tuples.
        positional: Any = type(dialect)
        compiler = positional(paramstyle="format")
    else:
        raise NotImplementedError(f"depth: unsupported database dialect {dialect.name!r}")
    stmt = stmt.on_conflict_do_update(
        index_elements=["snapshot_id"],
        set_={name: stmt.excluded[name] for name in _METRIC_COLUMNS[1:]},
    )
    compiled = stmt.compile(dialect=compiler, column_keys=list(_METRIC_COLUMNS))
    if list(compiled.positiontup or ()) != list(_METRIC_COLUMNS):
        raise RuntimeError(f"depth: unexpected parameter order {compiled.positiontup}")
    return str(compiled)


def _nullable(values: _Floats) -> list[float | None]:
    """NaN -> None: SQLite would store NaN as NULL anyway, PostgreSQL as a NaN."""
    out: list[float | None] = values.tolist()
    if np.isnan(values).any():
        out = [None if v != v else v for v in out]  # noqa: PLR0124 - NaN test
    return out


def _minute_rollup(
    symbol: str,
    claimed: ColumnElement[bool],
    now_ms: int,
    *,
    lateral: bool,
    skip_quarantined: bool,
) -> Select[Any]:
    """Every minute a good claimed snapshot falls in, recomputed from all its metrics rows.

    A minute whose claimed snapshots were all quarantined did not change,
    so it is left alone (and its ``updated_ms`` with it). ``last_mid`` is one
    indexed lookup per minute, cheaper than numbering every row with a
    window. As for candles, PostgreSQL gets ``JOIN LATERAL`` so that stale
    statistics during a catch-up cannot make it scan the symbol's whole
    history per fold.
    """
    width = literal_column(str(_MINUTE_MS), BigInteger)
    ts = depth_snapshots.c.ts_ms
    touched = select((ts - ts % width).label("b")).where(claimed)
    if skip_quarantined:
        q = depth_quarantine.c
        touched = touched.where(
            ~select(q.snapshot_id).where(q.snapshot_id == depth_snapshots.c.id).exists()
        )
    minutes = touched.distinct().subquery("minutes")
    start = minutes.c.b

    def in_minute(t: FromClause) -> ColumnElement[bool]:
        return and_(t.c.symbol == symbol, t.c.ts_ms >= start, t.c.ts_ms < start + width)

    newest = depth_metrics.alias("newest")
    last_mid = (
        select(newest.c.mid)
        .where(in_minute(newest))
        .order_by(newest.c.ts_ms.desc(), newest.c.snapshot_id.desc())
        .limit(1)
        .scalar_subquery()
    )
    m = depth_metrics
    aggregates: dict[str, ColumnElement[Any]] = {
        "spread_mean": func.avg(m.c.spread),
        "spread_max": func.max(m.c.spread),
        "imbalance_mean": func.avg(m.c.imbalance),
        "snapshot_count": func.count(),
    }
    fixed = (
        literal(symbol, String(32)).label("symbol"),
        start.label("ts_ms"),
        last_mid.label("last_mid"),
        literal(now_ms, BigInteger).label("updated_ms"),
    )
    if lateral:
        per_minute = (
            select(*(expr.label(name) for name, expr in aggregates.items()))
            .where(in_minute(m))
            .lateral("per_minute")
        )
        return (
            select(*fixed, *(per_minute.c[name] for name in aggregates))
            .select_from(minutes.join(per_minute, true()))
            .where(per_minute.c.snapshot_count > literal(0, Integer))
        )
    return (
        select(*fixed, *(expr.label(name) for name, expr in aggregates.items()))
        .select_from(minutes.join(m, in_minute(m)))
        # SQLite needs a WHERE in INSERT ... SELECT ... ON CONFLICT, or it
        # reads ON CONFLICT as the join's ON clause.
        .where(m.c.symbol == symbol)
        .group_by(start)
    )


__all__ = [
    "DEFAULT_BATCH_SNAPSHOTS",
    "DEFAULT_LEVELS",
    "REASONS",
    "DepthAggregator",
    "depth_lag_ms",
]
