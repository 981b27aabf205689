"""Depth metrics through the public API, against a pandas oracle, on both dialects."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, delete, event, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from structlog.testing import capture_logs

from depth_oracle import assert_matches_oracle, stored
from tickvisor.store import (
    CatchUpFailed,
    get_position,
    make_engine,
    open_database,
    visible_horizon,
)
from tickvisor.store.depth import DepthAggregator, depth_lag_ms
from tickvisor.store.fencing import FencedOut, claim_fence
from tickvisor.store.inputs import insert_depth_snapshots
from tickvisor.store.schema import (
    depth_metrics,
    depth_metrics_1m,
    depth_quarantine,
    depth_snapshots,
    progress_cursors,
)

SERVICE = "depth"
SYMBOLS = ("EUR/USD", "BTC-USD", "XAU/USD")
# Not aligned to a minute, so the first and last minutes are partial.
BASE_TS = 1_700_000_123_456
GOOD_BIDS = [[1.0998, 3.0], [1.0999, 1.5], [1.0997, 2]]
GOOD_ASKS = [[1.1002, 2.0], [1.1001, 0.5]]
TABLES = (depth_snapshots, depth_metrics, depth_metrics_1m, depth_quarantine, progress_cursors)


# --- helpers ------------------------------------------------------------------


def clear(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in TABLES:
            conn.execute(delete(table))


def aggregator(engine: Engine, **kwargs: Any) -> DepthAggregator:
    kwargs.setdefault("service", SERVICE)
    kwargs.setdefault("now_ms", lambda: 1)
    return DepthAggregator(engine, **kwargs)


def insert(engine: Engine, rows: list[dict[str, Any]]) -> None:
    """Insert, then wait until a job can claim the rows.

    On PostgreSQL a job claims only rows below the oldest transaction still
    running anywhere on the server (:func:`visible_horizon`), and other test
    sessions may share the server: without this wait, a pass could find
    nothing yet and the test would see a lag, not a fault.
    """
    with engine.begin() as conn:
        insert_depth_snapshots(conn, rows)
        newest = conn.execute(select(func.max(depth_snapshots.c.txid))).scalar_one()
    if engine.dialect.name != "postgresql":
        return
    deadline = time.monotonic() + 60
    while True:
        with engine.connect() as conn:
            if (visible_horizon(conn) or 0) > newest:
                return
        assert time.monotonic() < deadline, "another session's transaction stayed open for 60 s"
        time.sleep(0.005)


def snap(
    symbol: str,
    offset_ms: int,
    bids: Any = None,
    asks: Any = None,
    provider: str = "p",
) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "ts_ms": BASE_TS + offset_ms,
        "provider": provider,
        "bids": GOOD_BIDS if bids is None else bids,
        "asks": GOOD_ASKS if asks is None else asks,
    }


def everything(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every depth table, updated_ms included, in a stable order."""
    with engine.connect() as conn:
        return {
            table.name: sorted(tuple(r) for r in conn.execute(select(table)).all())
            for table in TABLES
        }


def processed_ids(engine: Engine) -> set[int]:
    with engine.connect() as conn:
        done = set(conn.execute(select(depth_metrics.c.snapshot_id)).scalars())
        return done | set(conn.execute(select(depth_quarantine.c.snapshot_id)).scalars())


def assert_consistent(engine: Engine, symbols: tuple[str, ...]) -> None:
    """Exactly the snapshots up to each cursor are processed: no fold half-committed."""
    expected: set[int] = set()
    with engine.connect() as conn:
        for symbol in symbols:
            cursor = get_position(conn, SERVICE, symbol)
            rows = conn.execute(
                select(depth_snapshots.c.id, depth_snapshots.c.txid).where(
                    depth_snapshots.c.symbol == symbol
                )
            ).all()
            expected |= {i for i, txid in rows if (txid, i) <= tuple(cursor)}
    assert processed_ids(engine) == expected


class Killed(BaseException):
    """Stands for the process dying: raised before the Nth statement reaches the database."""


@contextmanager
def killed_at_statement(engine: Engine, number: int) -> Iterator[None]:
    seen = 0

    def maybe_die(*_: Any) -> None:
        nonlocal seen
        seen += 1
        if seen == number:
            raise Killed(f"killed before statement {number}")

    event.listen(engine, "before_cursor_execute", maybe_die)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", maybe_die)


@contextmanager
def count_statements(engine: Engine) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def mixed_rows() -> list[dict[str, Any]]:
    """Two symbols over three minutes, some late, some bad, levels in no order."""
    rows = []
    for i in range(14):
        symbol = SYMBOLS[i % 2]
        offset = (i * 17_000) % 150_000  # not in time order
        bids: Any = [[1.0 + 0.001 * ((i + k) % 5), float(k + i % 3)] for k in range(1 + i % 4)]
        asks: Any = [[1.2 - 0.001 * ((i * k) % 7), 0.5 * k] for k in range(1 + i % 6)]
        if i % 5 == 3:
            bids = "[[1.0, 2]"  # malformed
        if i % 7 == 4:
            asks = [[0.9, 1.0]]  # crossed
        rows.append(snap(symbol, offset, bids, asks))
    return rows


# --- the oracle, on random books ------------------------------------------------

_price_digits = st.sampled_from([None, 2, 4, 6])


def _prices(low: float, high: float) -> st.SearchStrategy[float | int]:
    floats = st.tuples(st.floats(low, high), _price_digits).map(
        lambda t: t[0] if t[1] is None else round(t[0], t[1]) or low
    )
    return st.one_of(floats, st.integers(int(low) + 1, int(high)))


_sizes = st.one_of(
    st.just(0),
    st.integers(0, 10**6),
    st.floats(0, 1e6).map(lambda x: round(x, 3)),
    st.floats(1e-9, 1e-3),
)

# Bids below 100, asks mostly above: a few books cross and are quarantined.
_bid_levels = st.lists(st.tuples(_prices(0.5, 99.0), _sizes), min_size=1, max_size=15)
_ask_levels = st.lists(st.tuples(_prices(97.0, 200.0), _sizes), min_size=1, max_size=15)
_bad_side = st.sampled_from(
    ["[]", "[[1, 2]", '[["1", 2]]', "[[0, 1]]", "[[1, -1]]", "[[1, 2, 3]]", "[[NaN, 1]]", "{}"]
)


def _render(levels: list[tuple[Any, Any]], style: str) -> Any:
    pairs = [list(level) for level in levels]
    if style == "list":
        return pairs  # insert_depth_snapshots writes compact JSON
    if style == "spaced":
        return json.dumps(pairs)
    return json.dumps(pairs, indent=1)


@st.composite
def _side(draw: st.DrawFn, levels: st.SearchStrategy[list[tuple[Any, Any]]]) -> Any:
    if draw(st.integers(0, 19)) == 0:
        return draw(_bad_side)
    return _render(draw(levels), draw(st.sampled_from(["list", "list", "spaced", "pretty"])))


_snapshot = st.builds(
    lambda symbol, offset, provider, bids, asks: snap(symbol, offset, bids, asks, provider),
    st.sampled_from(SYMBOLS),
    st.integers(0, 4 * 60_000),
    st.sampled_from(["a", "b"]),
    _side(_bid_levels),
    _side(_ask_levels),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    imports=st.lists(st.lists(_snapshot, min_size=1, max_size=12), min_size=1, max_size=3),
    levels=st.sampled_from([10, 3]),
    batch=st.integers(1, 8),
)
def test_metrics_and_minutes_match_the_oracle(
    engine: Engine, imports: list[list[dict[str, Any]]], levels: int, batch: int
) -> None:
    """Unsorted levels of 1-15, several symbols, late rows, several imports, split batches."""
    clear(engine)
    job = aggregator(engine, levels=levels, batch_snapshots=batch)
    for rows in imports:  # each import is followed by a pass; later imports hold older times
        insert(engine, rows)
        report = job.catch_up(SYMBOLS)
        assert not report.failed and not report.unfinished
    assert_matches_oracle(engine, levels)
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(depth_snapshots)).scalar_one()
    assert len(processed_ids(engine)) == total


def test_levels_are_sorted_and_only_the_top_n_summed(engine: Engine) -> None:
    bids = [[1.0, 1], [1.3, 2], [1.1, 4], [1.2, 8]]
    asks = [[1.7, 1], [1.4, 2], [1.6, 4], [1.5, 8]]
    insert(engine, [snap("EUR/USD", 0, bids, asks)])
    aggregator(engine, levels=2).catch_up(["EUR/USD"])
    metrics, minutes, bad = stored(engine)
    row = metrics.iloc[0]
    assert (row["best_bid"], row["best_ask"]) == (1.3, 1.4)
    assert (row["bid_depth"], row["ask_depth"]) == (10.0, 10.0)  # 2 + 8 each
    assert row["imbalance"] == 0.0
    assert row["microprice"] == pytest.approx((1.3 * 2 + 1.4 * 2) / 4)
    assert row["spread"] == pytest.approx(0.1)
    assert row["spread_bps"] == pytest.approx(0.1 / 1.35 * 10_000)
    assert minutes.iloc[0]["snapshot_count"] == 1 and not bad


def test_a_deep_unsorted_book_beside_shallow_ones(engine: Engine) -> None:
    """Thousands of levels in one snapshot; ties in price keep their arrival order."""
    deep_bids = [[round(1.0 - 0.0001 * ((k * 7919) % 3000), 4), k % 13] for k in range(3000)]
    deep_asks = [[round(1.1 + 0.0001 * ((k * 104729) % 2500), 4), 1 + k % 5] for k in range(3000)]
    insert(
        engine,
        [
            snap("EUR/USD", 0),
            snap("EUR/USD", 1_000, deep_bids, deep_asks),
            snap("EUR/USD", 2_000, [[1.05, 1]], [[1.06, 2]]),
        ],
    )
    aggregator(engine, levels=25).catch_up(["EUR/USD"])
    assert_matches_oracle(engine, 25)


def test_zero_sizes_give_null_imbalance_and_microprice(engine: Engine) -> None:
    insert(engine, [snap("EUR/USD", 0, [[1.0, 0]], [[1.1, 0.0]])])
    aggregator(engine).catch_up(["EUR/USD"])
    with engine.connect() as conn:
        row = conn.execute(select(depth_metrics)).one()
        minute = conn.execute(select(depth_metrics_1m)).one()
    assert row.imbalance is None and row.microprice is None
    assert row.bid_depth == 0.0 and row.mid == pytest.approx(1.05)
    assert minute.imbalance_mean is None and minute.snapshot_count == 1


def test_a_late_snapshot_updates_its_old_minute(engine: Engine) -> None:
    job = aggregator(engine)
    insert(engine, [snap("EUR/USD", 1_000), snap("EUR/USD", 61_000)])
    job.catch_up(["EUR/USD"])
    late_asks = [[1.2, 1.0]]  # a wider spread, and the minute's last mid
    insert(engine, [snap("EUR/USD", 2_000, asks=late_asks)])
    report = job.catch_up(["EUR/USD"])
    assert report.rows == 1
    _, minutes, _ = stored(engine)
    first = minutes.loc[("EUR/USD", (BASE_TS + 1_000) // 60_000 * 60_000)]
    assert first["snapshot_count"] == 2
    assert first["last_mid"] == pytest.approx((1.0999 + 1.2) / 2)
    assert first["spread_max"] == pytest.approx(1.2 - 1.0999)
    assert_matches_oracle(engine, 10)


# --- quarantine -----------------------------------------------------------------

BAD_ROWS = [
    ("malformed_json", "[[1.0, 2]", None, "bids"),
    ("malformed_json", None, "not json", "asks"),
    ("bad_level", "[[1.0, 2.0, 3.0]]", None, "bids level 0"),
    ("bad_level", "[1.0, 2.0]", None, "bids level 0"),
    ("bad_level", None, '{"1.1": 2}', "asks"),
    ("non_numeric", '[[1.0, 1], ["1.05", 2.0]]', None, "bids level 1: price"),
    ("non_numeric", None, "[[1.2, true]]", "asks level 0: size"),
    ("non_numeric", "[[NaN, 1]]", None, "bids level 0: price"),
    ("non_numeric", None, "[[1.2, Infinity]]", "asks level 0: size"),
    ("non_numeric", "[[1e400, 1]]", None, "bids level 0: price"),
    ("non_numeric", "[[1.0, null]]", None, "bids level 0: size"),
    ("non_numeric", "[[1.0, 1e308], [0.9, 1e308]]", None, "overflow"),
    ("non_positive_price", "[[1.0, 1], [0, 1]]", None, "bids level 1: price 0.0"),
    ("non_positive_price", None, "[[-1.2, 1]]", "asks level 0: price -1.2"),
    ("negative_size", "[[1.0, -0.5]]", None, "bids level 0: size -0.5"),
    ("empty_side", "[]", None, "bids"),
    ("empty_side", None, " [ ] ", "asks"),
    ("crossed_book", "[[1.3, 1]]", "[[1.2, 1], [1.4, 1]]", "best bid 1.3 >= best ask 1.2"),
    ("crossed_book", "[[1.2, 1]]", "[[1.2, 1]]", "best bid 1.2 >= best ask 1.2"),
]


@pytest.mark.parametrize(
    ("reason", "bids", "asks", "named"),
    BAD_ROWS,
    ids=[f"{r[0]}-{i}" for i, r in enumerate(BAD_ROWS)],
)
def test_a_bad_snapshot_is_quarantined_once_and_its_neighbours_processed(
    engine: Engine, reason: str, bids: str | None, asks: str | None, named: str
) -> None:
    insert(
        engine,
        [
            snap("EUR/USD", 0),
            snap("EUR/USD", 1_000, bids, asks),
            snap("EUR/USD", 2_000),
        ],
    )
    job = aggregator(engine)
    report = job.catch_up(["EUR/USD"])
    assert report.quarantined == 1 and report.rows == 3 and not report.failed
    with engine.connect() as conn:
        (row,) = conn.execute(select(depth_quarantine)).all()
        bad_id = conn.execute(
            select(depth_snapshots.c.id).where(depth_snapshots.c.ts_ms == BASE_TS + 1_000)
        ).scalar_one()
    assert (row.snapshot_id, row.symbol, row.ts_ms, row.reason) == (
        bad_id,
        "EUR/USD",
        BASE_TS + 1_000,
        reason,
    )
    assert named in row.detail
    metrics, minutes, _ = stored(engine)
    assert len(metrics) == 2 and bad_id not in metrics.index
    assert minutes["snapshot_count"].sum() == 2
    assert_matches_oracle(engine, 10)

    again = job.catch_up(["EUR/USD"])
    assert again.quarantined == 0 and again.rows == 0
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(depth_quarantine)).scalar_one() == 1
    with engine.begin() as conn:  # even processed again from the start, nothing doubles
        conn.execute(delete(progress_cursors))
    assert job.catch_up(["EUR/USD"]).quarantined == 1
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(depth_quarantine)).scalar_one() == 1
        assert conn.execute(select(func.count()).select_from(depth_metrics)).scalar_one() == 2


def test_quarantine_is_logged_with_counts_and_never_the_whole_payload(engine: Engine) -> None:
    payload = "[[1.0, 2.0]," + " " * 5_000 + "oops]"
    insert(
        engine,
        [
            snap("EUR/USD", 0, payload),
            snap("EUR/USD", 1_000, "[]"),
            snap("EUR/USD", 2_000, asks="[]"),
            snap("EUR/USD", 3_000),
        ],
    )
    with capture_logs() as logs:
        report = aggregator(engine).catch_up(["EUR/USD"])
    assert report.quarantined == 3
    (line,) = [entry for entry in logs if entry["event"] == "depth.quarantined"]
    assert line["log_level"] == "warning" and line["symbol"] == "EUR/USD"
    assert line["reasons"] == {"malformed_json": 1, "empty_side": 2}
    assert line["count"] == 3
    assert len(repr(logs)) < 2_000
    with engine.connect() as conn:
        details = conn.execute(select(depth_quarantine.c.detail)).scalars().all()
    assert all(len(d) <= 200 for d in details)


# --- exactly once through faults ------------------------------------------------


def test_catching_up_twice_changes_nothing(engine: Engine) -> None:
    insert(engine, mixed_rows())
    job = aggregator(engine, batch_snapshots=3)
    job.catch_up(SYMBOLS)
    before = everything(engine)
    report = job.catch_up(SYMBOLS)
    assert report.rows == report.written == report.quarantined == 0
    assert everything(engine) == before
    assert_matches_oracle(engine, 10)


def test_a_pass_killed_at_any_statement_resumes_exactly(engine: Engine) -> None:
    rows = mixed_rows()
    insert(engine, rows)
    with count_statements(engine) as statements:
        aggregator(engine, batch_snapshots=4).catch_up(SYMBOLS[:2])
    total = len(statements)
    for number in range(1, total + 1, max(1, total // 12)):
        clear(engine)
        insert(engine, rows)
        with killed_at_statement(engine, number), pytest.raises(Killed):
            aggregator(engine, batch_snapshots=4).catch_up(SYMBOLS[:2])
        assert_consistent(engine, SYMBOLS[:2])
        aggregator(engine, batch_snapshots=4).catch_up(SYMBOLS[:2])
        assert_matches_oracle(engine, 10)


class _FailingAggregator(DepthAggregator):
    """Raises after its Nth fold has written everything, before the commit."""

    def __init__(self, engine: Engine, fail_on: int, **kwargs: Any) -> None:
        super().__init__(engine, **kwargs)
        self.fail_on = fail_on
        self.folds = 0

    def _fold_once(self, conn: Connection, progress: Any) -> int:
        claimed = super()._fold_once(conn, progress)
        self.folds += 1
        if self.folds == self.fail_on:
            raise RuntimeError("injected after the writes")
        return claimed


def test_a_fold_failing_before_its_commit_leaves_nothing_behind(engine: Engine) -> None:
    insert(engine, mixed_rows())
    job = _FailingAggregator(engine, fail_on=3, service=SERVICE, batch_snapshots=2)
    report = job.catch_up(SYMBOLS[:2])
    (failed,) = report.failed
    assert "injected" in (report.symbols[failed].error or "")
    assert_consistent(engine, SYMBOLS[:2])
    aggregator(engine, batch_snapshots=2).catch_up(SYMBOLS[:2])
    assert_matches_oracle(engine, 10)


def test_a_fenced_out_instance_commits_nothing(engine: Engine) -> None:
    old = claim_fence(engine, SERVICE, 0)
    insert(engine, mixed_rows()[:6])
    assert not aggregator(engine).catch_up(SYMBOLS, fence=old).failed
    insert(engine, mixed_rows()[6:])
    new = claim_fence(engine, SERVICE, 1)
    before = everything(engine)
    with pytest.raises(FencedOut):
        aggregator(engine, batch_snapshots=2).catch_up(SYMBOLS, fence=old)
    assert everything(engine) == before
    aggregator(engine, batch_snapshots=2).catch_up(SYMBOLS, fence=new)
    assert_matches_oracle(engine, 10)


# --- database faults ------------------------------------------------------------


@contextmanager
def _database_fault(engine: Engine, db_url: str) -> Iterator[None]:
    """A real fault of the database under the next fold.

    SQLite: another connection holds the write lock (busy timeout cut to 0,
    so the fold fails at once instead of waiting). PostgreSQL: the server
    ends the fold's connection as it writes the metrics.
    """
    if engine.dialect.name == "sqlite":
        locker = sqlite3.connect(make_url(db_url).database or "")
        locker.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            locker.rollback()
            locker.close()
        return
    killer = make_engine(db_url)
    fired = False

    def terminate(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        nonlocal fired
        if not fired and statement.startswith("INSERT INTO depth_metrics "):
            fired = True
            pid = conn.connection.dbapi_connection.info.backend_pid
            with killer.connect() as other:
                other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

    event.listen(engine, "before_cursor_execute", terminate)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", terminate)
        killer.dispose()
    assert fired


def _fault_engine(db_url: str) -> Engine:
    engine = open_database(db_url)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _no_wait(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute("PRAGMA busy_timeout=0")

        engine.dispose()  # reconnect with the listener in place
    return engine


def test_a_database_fault_is_raised_not_swallowed(db_url: str) -> None:
    engine = _fault_engine(db_url)
    try:
        insert(engine, mixed_rows())
        before = everything(engine)
        with _database_fault(engine, db_url), pytest.raises(OperationalError):
            aggregator(engine).catch_up(SYMBOLS)
        assert everything(engine) == before
        report = aggregator(engine).catch_up(SYMBOLS)  # the database is back: so is the job
        assert not report.failed
        assert_matches_oracle(engine, 10)
    finally:
        engine.dispose()


def test_a_missing_output_table_fails_the_pass(engine: Engine) -> None:
    insert(engine, mixed_rows())
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE depth_metrics_1m"))
    try:
        with pytest.raises((OperationalError, CatchUpFailed)):
            aggregator(engine).catch_up(SYMBOLS[:2])
        assert processed_ids(engine) == set()
    finally:
        depth_metrics_1m.create(engine)


# --- budget and lag ---------------------------------------------------------------


def test_a_zero_budget_leaves_work_for_the_next_pass(engine: Engine) -> None:
    insert(engine, mixed_rows())
    job = aggregator(engine, batch_snapshots=2)
    first = job.catch_up(SYMBOLS[:2], budget_seconds=0)
    assert sorted(first.unfinished) == sorted(SYMBOLS[:2])
    assert first.rows == 4  # one fold per symbol
    second = job.catch_up(SYMBOLS[:2])
    assert second.unfinished == [] and first.rows + second.rows == len(mixed_rows())
    assert_matches_oracle(engine, 10)


def test_lag_is_newest_snapshot_minus_newest_processed(engine: Engine) -> None:
    with engine.connect() as conn:
        assert depth_lag_ms(conn, "EUR/USD") is None
    job = aggregator(engine)
    insert(engine, [snap("EUR/USD", 0), snap("EUR/USD", 5_000)])
    with engine.connect() as conn:
        assert depth_lag_ms(conn, "EUR/USD") is None  # nothing processed yet
    report = job.catch_up(["EUR/USD"])
    assert report.symbols["EUR/USD"].lag_ms == 0
    insert(engine, [snap("EUR/USD", 9_000)])
    with engine.connect() as conn:
        assert depth_lag_ms(conn, "EUR/USD") == 4_000
    insert(engine, [snap("EUR/USD", 12_000, bids="[]")])  # quarantined still counts as done
    assert job.catch_up(["EUR/USD"]).symbols["EUR/USD"].lag_ms == 0


def test_arguments_are_checked(engine: Engine) -> None:
    with pytest.raises(ValueError, match="levels"):
        DepthAggregator(engine, levels=0)
    with pytest.raises(ValueError, match="batch_snapshots"):
        DepthAggregator(engine, batch_snapshots=0)
