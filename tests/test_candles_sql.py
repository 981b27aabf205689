"""The SQL candle aggregation against an independent pandas oracle, on both dialects."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, event, select

from tickvisor.store import TIMEFRAMES, aggregate_candles, bucket_start, get_cursor, insert_ticks
from tickvisor.store.schema import candles, progress_cursors, ticks

SERVICE = "candles"
SYMBOLS = ("EURUSD", "USDJPY", "GBPUSD")
ALL_TF = list(TIMEFRAMES)
DAY = 86_400_000
# Deliberately not aligned to any bucket, so the first and last buckets are partial.
BASE_TS = 1_700_000_123_456

Key = tuple[str, str, int]
Row = tuple[float, float, float, float, float, int]


# --- helpers ------------------------------------------------------------------


def clear(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in (candles, progress_cursors, ticks):
            conn.execute(delete(table))


def aggregate(engine: Engine, now_ms: int = 1) -> dict[str, int]:
    with engine.begin() as conn:
        return aggregate_candles(conn, SERVICE, SYMBOLS, ALL_TF, now_ms)


def insert(engine: Engine, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        insert_ticks(conn, rows)


def stored(engine: Engine) -> dict[Key, Row]:
    with engine.connect() as conn:
        result = conn.execute(select(candles))
        return {
            (r.symbol, r.timeframe, r.ts_ms): (
                r.open,
                r.high,
                r.low,
                r.close,
                r.volume,
                r.tick_count,
            )
            for r in result
        }


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


def oracle(engine: Engine) -> dict[Key, Row]:
    """Candles recomputed from scratch in pandas, sharing nothing with the SQL but the ticks."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                ticks.c.id,
                ticks.c.symbol,
                ticks.c.ts_ms,
                ticks.c.bid,
                ticks.c.ask,
                ticks.c.price,
                ticks.c.volume,
            )
        ).all()
    if not rows:
        return {}
    frame = pd.DataFrame(
        {
            "id": [r.id for r in rows],
            "symbol": [r.symbol for r in rows],
            "ts_ms": [r.ts_ms for r in rows],
            "px": [r.price if r.price is not None else (r.bid + r.ask) / 2 for r in rows],
            "vol": [r.volume if r.volume is not None else 0.0 for r in rows],
        }
    ).sort_values(["ts_ms", "id"], kind="stable")
    expected: dict[Key, Row] = {}
    for timeframe, width in TIMEFRAMES.items():
        frame["bucket"] = frame["ts_ms"] // width * width
        grouped = frame.groupby(["symbol", "bucket"], sort=True).agg(
            open=("px", "first"),
            high=("px", "max"),
            low=("px", "min"),
            close=("px", "last"),
            volume=("vol", "sum"),
            tick_count=("px", "size"),
        )
        for (symbol, bucket), g in grouped.iterrows():
            expected[(str(symbol), timeframe, int(bucket))] = (
                float(g["open"]),
                float(g["high"]),
                float(g["low"]),
                float(g["close"]),
                float(g["volume"]),
                int(g["tick_count"]),
            )
    return expected


def assert_matches_oracle(engine: Engine) -> None:
    got = stored(engine)
    want = oracle(engine)
    assert set(got) == set(want)
    for key, expected in want.items():
        actual = got[key]
        # Same doubles, same arithmetic: prices and counts must match exactly;
        # a sum's rounding depends on the order it adds in, so volume is approximate.
        assert actual[:4] + actual[5:] == expected[:4] + expected[5:], key
        assert actual[4] == pytest.approx(expected[4], rel=1e-9, abs=1e-9), key


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


def tick(
    symbol: str,
    offset_ms: int,
    price: float | None = None,
    volume: float | None = None,
    bid: float = 1.0,
    ask: float = 1.5,
) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "ts_ms": BASE_TS + offset_ms,
        "bid": bid,
        "ask": ask,
        "price": price,
        "volume": volume,
    }


# --- strategies ---------------------------------------------------------------

prices = st.floats(min_value=0.5, max_value=200.0, allow_nan=False, allow_infinity=False)
spreads = st.floats(min_value=0.0, max_value=0.5, allow_nan=False, allow_infinity=False)
volumes = st.none() | st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)
# Mostly anywhere within three days; sometimes a bucket edge, so duplicates and
# boundary ticks (last ms of a bucket, first ms of the next) are common.
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


batches_strategy = st.lists(
    st.lists(ticks_strategy(), min_size=0, max_size=30), min_size=1, max_size=3
)


# --- tests --------------------------------------------------------------------


def test_incremental_aggregation_matches_pandas(engine: Engine) -> None:
    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(batches=batches_strategy)
    def check(batches: list[list[dict[str, Any]]]) -> None:
        clear(engine)
        for number, batch in enumerate(batches):
            insert(engine, batch)
            aggregate(engine, now_ms=number + 1)
            # After every run, not just the last: batches may hold late ticks
            # that must rewrite buckets an earlier run already wrote.
            assert_matches_oracle(engine)
        with engine.connect() as conn:
            for symbol in SYMBOLS:
                max_id = conn.execute(
                    select(ticks.c.id)
                    .where(ticks.c.symbol == symbol)
                    .order_by(ticks.c.id.desc())
                    .limit(1)
                ).scalar()
                assert get_cursor(conn, SERVICE, symbol) == max_id

    check()


def test_late_tick_rewrites_its_old_bucket(engine: Engine) -> None:
    insert(engine, [tick("EURUSD", 0, price=1.0), tick("EURUSD", DAY, price=2.0)])
    aggregate(engine)
    # Older than everything so far, and the new low: open and low of day one change.
    insert(engine, [tick("EURUSD", -1, price=0.5, volume=3.0)])
    assert aggregate(engine)["EURUSD"] > 0
    assert_matches_oracle(engine)
    day_one = bucket_start(BASE_TS - 1, "1d")
    open_, _, low, close, volume, count = stored(engine)[("EURUSD", "1d", day_one)]
    assert (open_, low, close, volume, count) == (0.5, 0.5, 1.0, 3.0, 2)


def test_open_and_close_break_timestamp_ties_by_id(engine: Engine) -> None:
    insert(engine, [tick("GBPUSD", 0, price=p) for p in (3.0, 1.0, 2.0)])
    aggregate(engine)
    key = ("GBPUSD", "1m", bucket_start(BASE_TS, "1m"))
    assert stored(engine)[key] == (3.0, 3.0, 1.0, 2.0, 0.0, 3)


def test_mid_price_is_used_when_there_is_no_trade_price(engine: Engine) -> None:
    insert(engine, [tick("USDJPY", 0, bid=150.0, ask=150.02)])
    aggregate(engine)
    key = ("USDJPY", "1h", bucket_start(BASE_TS, "1h"))
    mid = (150.0 + 150.02) / 2
    assert stored(engine)[key] == (mid, mid, mid, mid, 0.0, 1)


def test_run_without_new_ticks_writes_nothing(engine: Engine) -> None:
    insert(engine, [tick("EURUSD", i * 7_000, price=1.0 + i / 100) for i in range(50)])
    aggregate(engine, now_ms=1_000)
    before = snapshot(engine)
    assert before[0] and before[1]

    with capture_sql(engine) as statements:
        assert aggregate(engine, now_ms=2_000) == dict.fromkeys(SYMBOLS, 0)
    writes = [
        s for s in statements if s.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))
    ]
    assert writes == []
    assert snapshot(engine) == before  # updated_ms included: nothing was rewritten


def test_aborted_transaction_leaves_candles_and_cursor_unchanged(engine: Engine) -> None:
    insert(engine, [tick("EURUSD", i * 61_000, price=1.0 + i) for i in range(10)])
    aggregate(engine, now_ms=1_000)
    before = snapshot(engine)

    insert(engine, [tick("EURUSD", 5, price=0.25), tick("USDJPY", 10, price=150.0)])
    with pytest.raises(RuntimeError, match="killed"), engine.begin() as conn:
        written = aggregate_candles(conn, SERVICE, SYMBOLS, ALL_TF, 2_000)
        assert written["EURUSD"] > 0 and written["USDJPY"] > 0
        raise RuntimeError("killed before commit")
    assert snapshot(engine) == before

    aggregate(engine, now_ms=3_000)
    assert_matches_oracle(engine)


def test_cursors_are_per_service(engine: Engine) -> None:
    insert(engine, [tick("EURUSD", 0, price=1.0)])
    aggregate(engine)
    with engine.begin() as conn:
        assert aggregate_candles(conn, "replay", ["EURUSD"], ["1m"], 5) == {"EURUSD": 1}
        assert aggregate_candles(conn, "replay", ["EURUSD"], ["1m"], 6) == {"EURUSD": 0}


def test_unknown_timeframe_is_refused_before_any_work(engine: Engine) -> None:
    insert(engine, [tick("EURUSD", 0, price=1.0)])
    with pytest.raises(ValueError, match=r"'2m'.*expected some of 1m, 5m"), engine.begin() as conn:
        aggregate_candles(conn, SERVICE, ["EURUSD"], ["1m", "2m"], 1)
    assert stored(engine) == {}


def test_daily_buckets_start_at_utc_midnight() -> None:
    # 2023-11-14T22:13:20Z
    assert bucket_start(1_700_000_000_000, "1d") == 1_699_920_000_000
    assert bucket_start(1_700_000_000_000, "4h") == 1_699_992_000_000
    assert bucket_start(1_699_920_000_000, "1d") == 1_699_920_000_000
