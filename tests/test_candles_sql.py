"""The candle aggregation against pandas ``resample`` as an independent oracle, on both dialects."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, event, select, text
from sqlalchemy.exc import OperationalError

from candle_oracle import assert_matches_oracle, stored
from tickvisor.store import (
    CandleAggregator,
    bucket_start,
    day_bounds,
    get_position,
    insert_ticks,
    make_engine,
)
from tickvisor.store.schema import candles, progress_cursors, ticks

SERVICE = "candles"
SYMBOLS = ("EUR/USD", "USD/JPY", "GBP/USD")
DAY = 86_400_000
HOUR = 3_600_000
# Deliberately not aligned to any bucket, so the first and last buckets are partial.
BASE_TS = 1_700_000_123_456


# --- helpers ------------------------------------------------------------------


def clear(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in (candles, progress_cursors, ticks):
            conn.execute(delete(table))


def aggregator(engine: Engine, **kwargs: Any) -> CandleAggregator:
    kwargs.setdefault("service", SERVICE)
    kwargs.setdefault("now_ms", lambda: 1)
    return CandleAggregator(engine, **kwargs)


def insert(engine: Engine, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        insert_ticks(conn, rows)


def snapshot(engine: Engine) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every candle and cursor column, including updated_ms."""
    with engine.connect() as conn:
        candle_rows = conn.execute(
            select(candles).order_by(candles.c.symbol, candles.c.timeframe, candles.c.ts_ms)
        ).all()
        cursor_rows = conn.execute(
            select(progress_cursors).order_by(progress_cursors.c.service, progress_cursors.c.key)
        ).all()
    return [tuple(r) for r in candle_rows], [tuple(r) for r in cursor_rows]


@contextmanager
def capture_sql(engine: Engine) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


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


def tick(
    symbol: str,
    offset_ms: int,
    price: float | None = None,
    volume: float | None = None,
    bid: float = 1.0,
    ask: float = 1.5,
    base: int = BASE_TS,
) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "ts_ms": base + offset_ms,
        "bid": bid,
        "ask": ask,
        "price": price,
        "volume": volume,
    }


# --- strategies ---------------------------------------------------------------

prices = st.floats(min_value=0.5, max_value=200.0, allow_nan=False, allow_infinity=False)
spreads = st.floats(min_value=0.0, max_value=0.5, allow_nan=False, allow_infinity=False)
volumes = st.none() | st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)
# Mostly anywhere within three days; often a bucket edge or an exact repeat,
# so same-millisecond ticks and boundary ticks (the last ms of a bucket, the
# first of the next) are common.
offsets = st.integers(0, 3 * DAY) | st.sampled_from(
    [0, 1, 59_999 - BASE_TS % 60_000, 60_000 - BASE_TS % 60_000, DAY - BASE_TS % DAY, 2 * DAY]
)


@st.composite
def ticks_strategy(draw: st.DrawFn) -> dict[str, Any]:
    bid = draw(prices)
    return {
        "symbol": draw(st.sampled_from(SYMBOLS)),
        "ts_ms": BASE_TS + draw(offsets),
        "bid": bid,
        "ask": bid + draw(spreads),
        "price": draw(st.none() | prices),
        "volume": draw(volumes),
    }


# Several imports in arrival order; each may hold ticks older than earlier ones.
imports_strategy = st.lists(
    st.lists(ticks_strategy(), min_size=0, max_size=30), min_size=1, max_size=4
)


# --- the oracle property ------------------------------------------------------------


def test_incremental_aggregation_matches_pandas_resample(engine: Engine) -> None:
    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(imports=imports_strategy, batch=st.integers(1, 40))
    def check(imports: list[list[dict[str, Any]]], batch: int) -> None:
        clear(engine)
        job = aggregator(engine, batch_ticks=batch)
        for rows in imports:
            insert(engine, rows)
            report = job.catch_up(SYMBOLS)
            assert report.failed == []
            # After every pass, not just the last: a later import may hold late
            # ticks that must rewrite buckets an earlier pass already wrote.
            assert_matches_oracle(engine)
        with engine.connect() as conn:
            for symbol in SYMBOLS:
                newest = conn.execute(
                    select(ticks.c.id).where(ticks.c.symbol == symbol).order_by(ticks.c.id.desc())
                ).first()
                position = get_position(conn, SERVICE, symbol)
                assert position.id == (newest[0] if newest else 0)

    check()


def test_new_york_rollover_matches_pandas_across_daylight_saving(engine: Engine) -> None:
    # 2024-03-10 07:00 UTC (02:00 EST -> 03:00 EDT) and 2024-11-03 06:00 UTC.
    spring = int(datetime(2024, 3, 8, tzinfo=UTC).timestamp() * 1000)
    autumn = int(datetime(2024, 11, 1, tzinfo=UTC).timestamp() * 1000)

    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        base=st.sampled_from([spring, autumn]),
        offsets_ms=st.lists(st.integers(0, 4 * DAY), min_size=1, max_size=60),
        batch=st.integers(1, 25),
    )
    def check(base: int, offsets_ms: list[int], batch: int) -> None:
        clear(engine)
        rows = [
            tick("EUR/USD", off, price=1.0 + i / 100, base=base) for i, off in enumerate(offsets_ms)
        ]
        insert(engine, rows)
        aggregator(engine, rollover="new_york_17", batch_ticks=batch).catch_up(["EUR/USD"])
        assert_matches_oracle(engine, rollover="new_york_17")

    check()


# --- rules, one by one ------------------------------------------------------------------


def test_new_york_days_start_at_five_pm_local_whatever_the_season() -> None:
    def ms(*args: int) -> int:
        return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)

    # Winter (EST, UTC-5): 17:00 New York is 22:00 UTC.
    assert bucket_start(ms(2024, 1, 10, 21, 59), "1d", "new_york_17") == ms(2024, 1, 9, 22)
    assert bucket_start(ms(2024, 1, 10, 22, 0), "1d", "new_york_17") == ms(2024, 1, 10, 22)
    # Summer (EDT, UTC-4): 21:00 UTC.
    assert bucket_start(ms(2024, 7, 10, 21, 0), "1d", "new_york_17") == ms(2024, 7, 10, 21)
    # The day holding the spring change is 23 hours long, the autumn one 25.
    spring = day_bounds(ms(2024, 3, 9, 12), ms(2024, 3, 11, 12), "new_york_17")
    assert [(e - s) // HOUR for s, e in spring] == [24, 23, 24]
    assert spring[1][0] == ms(2024, 3, 9, 22) and spring[1][1] == ms(2024, 3, 10, 21)
    autumn = day_bounds(ms(2024, 11, 2, 12), ms(2024, 11, 3, 21), "new_york_17")
    assert [(e - s) // HOUR for s, e in autumn] == [24, 25]
    # UTC days and fixed buckets stay on the epoch grid.
    assert bucket_start(1_700_000_000_000, "1d") == 1_699_920_000_000
    assert bucket_start(1_700_000_000_000, "4h") == 1_699_992_000_000


def test_late_tick_rewrites_its_old_bucket(engine: Engine) -> None:
    job = aggregator(engine)
    insert(engine, [tick("EUR/USD", 0, price=1.0), tick("EUR/USD", DAY, price=2.0)])
    job.catch_up(["EUR/USD"])
    # Older than everything so far, and the new low: open and low of day one change.
    insert(engine, [tick("EUR/USD", -1, price=0.5, volume=3.0)])
    assert job.catch_up(["EUR/USD"]).written > 0
    assert_matches_oracle(engine)
    day_one = bucket_start(BASE_TS - 1, "1d")
    open_, _, low, close, volume, count = stored(engine)[("EUR/USD", "1d", day_one)]
    assert (open_, low, close, volume, count) == (0.5, 0.5, 1.0, 3.0, 2)


def test_open_and_close_break_timestamp_ties_by_id(engine: Engine) -> None:
    insert(engine, [tick("GBP/USD", 0, price=p) for p in (3.0, 1.0, 2.0)])
    aggregator(engine).catch_up(["GBP/USD"])
    key = ("GBP/USD", "1m", bucket_start(BASE_TS, "1m"))
    assert stored(engine)[key] == (3.0, 3.0, 1.0, 2.0, 0.0, 3)


def test_mid_price_is_used_when_there_is_no_trade_price(engine: Engine) -> None:
    insert(engine, [tick("USD/JPY", 0, bid=150.0, ask=150.02)])
    aggregator(engine).catch_up(["USD/JPY"])
    key = ("USD/JPY", "1h", bucket_start(BASE_TS, "1h"))
    mid = (150.0 + 150.02) / 2
    assert stored(engine)[key] == (mid, mid, mid, mid, 0.0, 1)


def test_empty_buckets_get_no_rows(engine: Engine) -> None:
    friday = int(datetime(2024, 1, 5, 21, 59, tzinfo=UTC).timestamp() * 1000)
    monday = int(datetime(2024, 1, 8, 0, 1, tzinfo=UTC).timestamp() * 1000)
    insert(engine, [tick("EUR/USD", 0, base=friday), tick("EUR/USD", 0, base=monday)])
    aggregator(engine).catch_up(["EUR/USD"])
    days = sorted(ts for (_, tf, ts) in stored(engine) if tf == "1d")
    assert days == [bucket_start(friday, "1d"), bucket_start(monday, "1d")]


def test_one_minute_candles_are_kept_even_when_not_configured(engine: Engine) -> None:
    insert(engine, [tick("EUR/USD", i * 61_000, price=1.0 + i) for i in range(5)])
    aggregator(engine, timeframes=["1h"]).catch_up(["EUR/USD"])
    assert {tf for (_, tf, _) in stored(engine)} == {"1m", "1h"}


def test_run_without_new_ticks_writes_nothing(engine: Engine) -> None:
    insert(engine, [tick("EUR/USD", i * 7_000, price=1.0 + i / 100) for i in range(50)])
    aggregator(engine, now_ms=lambda: 1_000).catch_up(SYMBOLS)
    before = snapshot(engine)
    assert before[0] and before[1]

    with capture_sql(engine) as statements:
        report = aggregator(engine, now_ms=lambda: 2_000).catch_up(SYMBOLS)
    assert (report.rows, report.written) == (0, 0)
    writes = [
        s for s in statements if s.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))
    ]
    assert writes == []
    assert snapshot(engine) == before  # updated_ms included: nothing was rewritten


def test_a_kill_before_any_statement_loses_and_doubles_nothing(engine: Engine) -> None:
    first = [tick("EUR/USD", i * 61_000, price=1.0 + i) for i in range(6)]
    late = [tick("EUR/USD", 5, price=0.25), tick("USD/JPY", 10, price=150.0)]
    number = 0
    while True:
        number += 1
        clear(engine)
        insert(engine, first)
        job = aggregator(engine, batch_ticks=3)
        job.catch_up(["EUR/USD", "USD/JPY"])
        insert(engine, late)
        with killed_at_statement(engine, number):
            try:
                job.catch_up(["EUR/USD", "USD/JPY"])
            except Killed:
                pass
            else:
                break  # the pass ran to its end before statement `number`: all covered
        job.catch_up(["EUR/USD", "USD/JPY"])
        assert_matches_oracle(engine)
    assert number > 10


def test_cursors_are_per_service(engine: Engine) -> None:
    insert(engine, [tick("EUR/USD", 0, price=1.0)])
    aggregator(engine).catch_up(["EUR/USD"])
    replay = aggregator(engine, service="replay", timeframes=["1m"])
    assert replay.catch_up(["EUR/USD"]).rows == 1
    assert replay.catch_up(["EUR/USD"]).rows == 0


def test_unknown_timeframe_or_rollover_is_refused_before_any_work(engine: Engine) -> None:
    with pytest.raises(ValueError, match=r"'2m'.*expected some of 1m, 5m"):
        aggregator(engine, timeframes=["1m", "2m"])
    with pytest.raises(ValueError, match="rollover 'tokyo'"):
        aggregator(engine, rollover="tokyo")


def test_freshness_lag_is_newest_tick_minus_newest_folded_tick(engine: Engine) -> None:
    insert(engine, [tick("EUR/USD", 0), tick("EUR/USD", 30_000)])
    job = aggregator(engine)
    assert job.catch_up(["EUR/USD"]).symbols["EUR/USD"].lag_ms == 0
    assert job.catch_up(["NO/TICKS"]).symbols["NO/TICKS"].lag_ms is None


# --- faults ------------------------------------------------------------------------------

_BAD = "BAD/SYM"


def _fail_candles_of(engine: Engine, symbol: str) -> None:
    """A database-side fault for one symbol only: a trigger that refuses its candles."""
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_bad BEFORE INSERT ON candles "
                    f"WHEN NEW.symbol = '{symbol}' BEGIN SELECT RAISE(ABORT, 'corrupt symbol'); END"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE OR REPLACE FUNCTION refuse_bad() RETURNS trigger "
                    "LANGUAGE plpgsql AS $$ "
                    f"BEGIN IF NEW.symbol = '{symbol}' THEN RAISE EXCEPTION 'corrupt symbol'; "
                    "END IF; RETURN NEW; END $$"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_bad BEFORE INSERT ON candles "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_bad()"
                )
            )


def test_a_fault_in_one_symbol_spares_the_others(engine: Engine) -> None:
    _fail_candles_of(engine, _BAD)
    insert(engine, [tick(s, 0, price=1.0) for s in ("EUR/USD", _BAD, "USD/JPY")])
    report = aggregator(engine).catch_up(["EUR/USD", _BAD, "USD/JPY"])
    assert report.failed == [_BAD]
    assert "corrupt symbol" in (report.symbols[_BAD].error or "")
    assert {s for (s, _, _) in stored(engine)} == {"EUR/USD", "USD/JPY"}
    with engine.connect() as conn:
        assert get_position(conn, SERVICE, _BAD).id == 0  # retried on the next pass


def test_every_symbol_failing_fails_the_pass(engine: Engine) -> None:
    _fail_candles_of(engine, _BAD)
    insert(engine, [tick(_BAD, 0, price=1.0)])
    with pytest.raises(Exception, match="corrupt symbol"):
        aggregator(engine).catch_up([_BAD])


def test_a_database_fault_fails_the_pass_at_once() -> None:
    unreachable = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    try:
        with pytest.raises(OperationalError):
            CandleAggregator(unreachable).catch_up(["EUR/USD", "USD/JPY"])
    finally:
        unreachable.dispose()


@pytest.mark.postgres
def test_a_tick_committed_after_a_higher_id_is_not_skipped(pg_url: str) -> None:
    """PostgreSQL sequences do not commit in order; the (txid, id) cursor must not care."""
    engine = make_engine(pg_url)
    try:
        clear(engine)
        slow = engine.connect()
        slow_tx = slow.begin()
        insert_ticks(slow, [tick("EUR/USD", 0, price=1.0)])  # takes the lower id
        insert(engine, [tick("EUR/USD", 1_000, price=2.0)])  # higher id, committed first
        job = aggregator(engine)
        job.catch_up(["EUR/USD"])  # the slow writer is still open
        assert stored(engine) == {}  # nothing claimed past a transaction still running
        slow_tx.commit()
        slow.close()
        job.catch_up(["EUR/USD"])
        key = ("EUR/USD", "1m", bucket_start(BASE_TS, "1m"))
        assert stored(engine)[key][5] == 2  # both ticks, whatever order they committed in
        assert_matches_oracle(engine)
    finally:
        engine.dispose()


def test_folds_run_beside_a_busy_writer(engine: Engine) -> None:
    """The feed or an import commits while a fold runs: no "database is locked", nothing lost."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        number = 0
        try:
            while not stop.is_set():
                number += 1
                insert(engine, [tick(s, number * 997, price=1.0 + number / 1e4) for s in SYMBOLS])
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    job = aggregator(engine, batch_ticks=50)
    try:
        for _ in range(30):
            assert job.catch_up(SYMBOLS).failed == []
    finally:
        stop.set()
        thread.join(timeout=30)
    assert errors == []
    job.catch_up(SYMBOLS)
    assert_matches_oracle(engine)


def test_changing_the_rollover_or_adding_a_timeframe_rebuilds_from_one_minute(
    engine: Engine,
) -> None:
    day_one = int(datetime(2024, 1, 2, tzinfo=UTC).timestamp() * 1000)
    insert(engine, [tick("EUR/USD", h * HOUR, price=1.0 + h, base=day_one) for h in range(24)])
    aggregator(engine, timeframes=["1m", "1h", "1d"]).catch_up(["EUR/USD"])
    assert_matches_oracle(engine, timeframes=("1m", "1h", "1d"))

    # New York days and a new 4h timeframe: no new ticks, yet history must follow.
    aggregator(engine, timeframes=["1m", "1h", "4h", "1d"], rollover="new_york_17").catch_up(
        ["EUR/USD"]
    )
    assert_matches_oracle(engine, rollover="new_york_17", timeframes=("1m", "1h", "4h", "1d"))
    insert(engine, [tick("EUR/USD", 30 * HOUR, price=9.0, base=day_one)])
    job = aggregator(engine, timeframes=["1m", "1h", "4h", "1d"], rollover="new_york_17")
    job.catch_up(["EUR/USD"])
    assert_matches_oracle(engine, rollover="new_york_17", timeframes=("1m", "1h", "4h", "1d"))
