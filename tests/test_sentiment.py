"""Sentiment metrics against a pandas oracle, quarantine, staleness and faults, on both dialects."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, event, func, select
from sqlalchemy.exc import OperationalError

from sentiment_oracle import (
    HOUR,
    Settings,
    assert_matches_oracle,
    stored,
    stored_quarantine,
)
from tickvisor.store import CatchUpFailed, get_position, make_engine, visible_horizon
from tickvisor.store.fencing import FencedOut, claim_fence
from tickvisor.store.inputs import insert_sentiment_rows
from tickvisor.store.schema import (
    progress_cursors,
    sentiment_metrics,
    sentiment_quarantine,
    sentiment_raw,
)
from tickvisor.store.sentiment import SentimentAggregator, sentiment_lag_ms

SERVICE = "sentiment"
SYMBOLS = ("EUR/USD", "USD/JPY", "GBP/USD")
MINUTE = 60_000
BASE_TS = 1_700_000_123_456


# --- helpers ------------------------------------------------------------------


class Now:
    """An injected clock the test moves by hand."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def clear(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in (sentiment_metrics, sentiment_quarantine, progress_cursors, sentiment_raw):
            conn.execute(delete(table))


def aggregator(engine: Engine, now: Now | None = None, **kwargs: Any) -> SentimentAggregator:
    kwargs.setdefault("service", SERVICE)
    return SentimentAggregator(engine, now_ms=now or Now(BASE_TS), **kwargs)


def insert(engine: Engine, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        insert_sentiment_rows(conn, rows)
    settle(engine)


def settle(engine: Engine) -> None:
    """Wait until the rows just committed are claimable (PostgreSQL).

    A fold claims only rows written by transactions older than every running
    one (:func:`~tickvisor.store.claims.visible_horizon`), and the server is
    shared: a transaction of another session, begun just before our insert,
    would hold our rows back until the next pass. Tests that expect one pass
    to consume everything wait for that first (milliseconds).
    """
    if engine.dialect.name != "postgresql":
        return
    with engine.connect() as conn:
        newest = conn.execute(select(func.max(sentiment_raw.c.txid))).scalar_one()
    deadline = time.monotonic() + 30
    while newest is not None:
        with engine.connect() as conn:
            horizon = visible_horizon(conn)
        if horizon is not None and horizon > newest:
            return
        assert time.monotonic() < deadline, f"a transaction older than {newest} is still open"
        time.sleep(0.002)


def reading(
    symbol: str,
    offset_ms: int,
    long_pct: float | None = 50.0,
    short_pct: float | None = None,
    provider: str = "p",
    total_traders: int | None = 100,
) -> dict[str, Any]:
    if short_pct is None and long_pct is not None and not math.isnan(long_pct):
        short_pct = 100.0 - long_pct
    return {
        "symbol": symbol,
        "ts_ms": BASE_TS + offset_ms,
        "provider": provider,
        "long_pct": long_pct,
        "short_pct": short_pct,
        "total_traders": total_traders,
    }


def snapshot(engine: Engine) -> tuple[list[tuple[Any, ...]], ...]:
    """Every metrics, quarantine and cursor column, including the *_ms stamps."""
    with engine.connect() as conn:
        return tuple(
            [tuple(r) for r in conn.execute(select(t).order_by(*t.primary_key.columns)).all()]
            for t in (sentiment_metrics, sentiment_quarantine, progress_cursors)
        )


def metric(engine: Engine, symbol: str, offset_ms: int) -> dict[str, Any]:
    """Every column of one metrics row."""
    m = sentiment_metrics.c
    with engine.connect() as conn:
        row = conn.execute(
            select(sentiment_metrics).where(m.symbol == symbol, m.ts_ms == BASE_TS + offset_ms)
        ).one()
    return row._asdict()


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


# --- strategies ---------------------------------------------------------------

# Mostly anywhere within eight hours (so gaps over an hour happen), often on a
# minute grid or one ms short of a 5-minute mark, so timestamps exactly one
# window width apart (in or out of the window by one ms) are common.
offsets = (
    st.integers(0, 8 * HOUR)
    | st.integers(0, 480).map(lambda k: k * MINUTE)
    | st.integers(1, 96).map(lambda k: k * 5 * MINUTE - 1)
    | st.sampled_from([0, HOUR, 2 * HOUR + 1, 20 * HOUR])
)
# Exact grid values (the default thresholds among them) or any double in range.
long_pcts = st.sampled_from([0.0, 12.5, 29.5, 30.0, 45.0, 50.0, 55.0, 70.0, 70.5, 100.0]) | (
    st.floats(0.0, 100.0)
)
sum_errors = st.sampled_from([0.0, 0.0, 1.0, -1.0, 0.5]) | st.floats(-1.0, 1.0)
traders = st.none() | st.integers(0, 100_000)
KINDS = ["good"] * 10 + ["missing", "nan", "out_of_range", "bad_sum", "negative_traders"]


@st.composite
def readings(draw: st.DrawFn) -> dict[str, Any]:
    long_pct: float | None = draw(long_pcts)
    assert long_pct is not None
    short_pct: float | None = 100.0 - long_pct + draw(sum_errors)
    total = draw(traders)
    kind = draw(st.sampled_from(KINDS))
    if kind == "missing":
        long_pct, short_pct = draw(st.sampled_from([(None, 50.0), (50.0, None), (None, None)]))
    elif kind == "nan":
        long_pct = math.nan
    elif kind == "out_of_range":
        long_pct, short_pct = draw(
            st.sampled_from([(100.5, -0.5), (-1.0, 101.0), (math.inf, 0.0), (50.0, -math.inf)])
        )
    elif kind == "bad_sum":
        short_pct = 100.0 - long_pct + draw(st.sampled_from([1.5, -2.0, 30.0]))
        if not 0.0 <= short_pct <= 100.0:
            short_pct = None  # keep the row bad either way
    elif kind == "negative_traders":
        total = -draw(st.integers(1, 10))
    return {
        "symbol": draw(st.sampled_from(SYMBOLS)),
        "ts_ms": BASE_TS + draw(offsets),
        "provider": draw(st.sampled_from(["a", "b", "c"])),
        "long_pct": long_pct,
        "short_pct": short_pct,
        "total_traders": total,
    }


# Several imports in arrival order, each with the time of the pass after it;
# each import may hold readings older than earlier ones, or more providers
# for a timestamp already processed.
imports_strategy = st.lists(
    st.tuples(st.lists(readings(), min_size=0, max_size=25), st.integers(0, 10 * HOUR)),
    min_size=1,
    max_size=4,
)


# --- the oracle property ------------------------------------------------------------


def test_incremental_metrics_match_pandas(engine: Engine) -> None:
    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )
    @given(imports=imports_strategy, batch=st.integers(1, 12))
    def check(imports: list[tuple[list[dict[str, Any]], int]], batch: int) -> None:
        clear(engine)
        now = Now(BASE_TS)
        job = aggregator(engine, now, batch_rows=batch)
        for rows, now_offset in imports:
            insert(engine, rows)
            now.ms = BASE_TS + now_offset
            report = job.catch_up(SYMBOLS)
            assert report.failed == []
            assert report.unfinished == []
            # After every pass, not just the last: a later import may hold late
            # readings that must rewrite windows an earlier pass already wrote.
            assert_matches_oracle(engine, now.ms)
        with engine.connect() as conn:
            for symbol in SYMBOLS:
                newest = conn.execute(
                    select(func.max(sentiment_raw.c.id)).where(sentiment_raw.c.symbol == symbol)
                ).scalar_one()
                assert get_position(conn, SERVICE, symbol).id == (newest or 0)

    check()


# --- rules, one by one ------------------------------------------------------------------


def test_windows_are_time_and_exclude_their_left_edge(engine: Engine) -> None:
    insert(
        engine,
        [
            reading("EUR/USD", 0, 10.0),
            reading("EUR/USD", 1, 20.0),
            reading("EUR/USD", 300_000, 30.0),  # exactly 5 minutes after the first
            reading("EUR/USD", 300_001, 60.0),  # exactly 5 minutes after the second
        ],
    )
    aggregator(engine).catch_up(["EUR/USD"])
    assert metric(engine, "EUR/USD", 300_000)["ma_5m"] == pytest.approx(25.0)  # (20 + 30) / 2
    assert metric(engine, "EUR/USD", 300_001)["ma_5m"] == pytest.approx(45.0)  # (30 + 60) / 2
    assert metric(engine, "EUR/USD", 300_001)["ma_15m"] == pytest.approx(30.0)  # all four
    assert metric(engine, "EUR/USD", 0)["ma_1h"] == 10.0


def test_a_gap_shortens_the_window_instead_of_reaching_back(engine: Engine) -> None:
    insert(engine, [reading("EUR/USD", 0, 90.0), reading("EUR/USD", 2 * HOUR, 40.0)])
    aggregator(engine).catch_up(["EUR/USD"])
    after_gap = metric(engine, "EUR/USD", 2 * HOUR)
    assert (after_gap["ma_5m"], after_gap["ma_15m"], after_gap["ma_1h"]) == (40.0, 40.0, 40.0)
    # The change still has a reference: the latest reading at least an hour before.
    assert after_gap["change_1h"] == pytest.approx(-50.0)


def test_change_1h_needs_a_reading_at_least_an_hour_old(engine: Engine) -> None:
    insert(
        engine,
        [
            reading("EUR/USD", 0, 40.0),
            reading("EUR/USD", 30 * MINUTE, 50.0),
            reading("EUR/USD", HOUR - 1, 55.0),
            reading("EUR/USD", HOUR, 65.0),
            reading("EUR/USD", 3 * HOUR, 35.0),
        ],
    )
    aggregator(engine).catch_up(["EUR/USD"])
    assert metric(engine, "EUR/USD", 30 * MINUTE)["change_1h"] is None
    assert metric(engine, "EUR/USD", HOUR - 1)["change_1h"] is None
    assert metric(engine, "EUR/USD", HOUR)["change_1h"] == pytest.approx(25.0)  # vs t = 0
    assert metric(engine, "EUR/USD", 3 * HOUR)["change_1h"] == pytest.approx(-30.0)  # vs 1 h


def test_providers_at_one_timestamp_are_merged(engine: Engine) -> None:
    insert(
        engine,
        [
            reading("EUR/USD", 0, 60.0, provider="a", total_traders=100),
            reading("EUR/USD", 0, 70.0, provider="b", total_traders=None),
            reading("EUR/USD", 0, 80.0, provider="c", total_traders=50),
            reading("EUR/USD", MINUTE, 50.0, provider="a", total_traders=None),
            reading("EUR/USD", MINUTE, 40.0, provider="b", total_traders=None),
        ],
    )
    aggregator(engine).catch_up(["EUR/USD"])
    first = metric(engine, "EUR/USD", 0)
    assert (first["long_pct"], first["short_pct"]) == (pytest.approx(70.0), pytest.approx(30.0))
    assert (first["total_traders"], first["providers"]) == (150, 3)
    second = metric(engine, "EUR/USD", MINUTE)
    assert (second["total_traders"], second["providers"]) == (None, 2)
    assert second["ma_5m"] == pytest.approx(57.5)  # per-timestamp values, not per reading


def test_a_late_provider_rewrites_its_timestamp_and_the_windows_after_it(engine: Engine) -> None:
    now = Now(BASE_TS + 2 * HOUR)
    job = aggregator(engine, now)
    insert(engine, [reading("EUR/USD", m * 10 * MINUTE, 50.0) for m in range(12)])
    job.catch_up(["EUR/USD"])
    insert(engine, [reading("EUR/USD", 0, 70.0, provider="late")])
    assert job.catch_up(["EUR/USD"]).written > 0
    assert metric(engine, "EUR/USD", 0)["long_pct"] == pytest.approx(60.0)
    assert metric(engine, "EUR/USD", HOUR)["change_1h"] == pytest.approx(-10.0)
    assert_matches_oracle(engine, now.ms)


def test_signal_and_label_follow_the_default_thresholds(engine: Engine) -> None:
    cases = {70.0: (0, "bullish"), 70.5: (-1, "bullish"), 30.0: (0, "bearish")}
    cases |= {29.5: (1, "bearish"), 55.0: (0, "bullish"), 45.0: (0, "bearish")}
    cases |= {50.0: (0, "neutral"), 54.9: (0, "neutral")}
    insert(engine, [reading("EUR/USD", i * MINUTE, v) for i, v in enumerate(cases)])
    aggregator(engine).catch_up(["EUR/USD"])
    for i, (value, want) in enumerate(cases.items()):
        row = metric(engine, "EUR/USD", i * MINUTE)
        assert (row["signal"], row["label"]) == want, value


def test_thresholds_are_configurable(engine: Engine) -> None:
    insert(engine, [reading("EUR/USD", 0, 62.0), reading("EUR/USD", MINUTE, 41.0)])
    custom = Settings(contrarian_upper=60, contrarian_lower=42, bullish_above=65, bearish_below=40)
    aggregator(
        engine,
        contrarian_upper=60,
        contrarian_lower=42,
        bullish_above=65,
        bearish_below=40,
    ).catch_up(["EUR/USD"])
    assert (metric(engine, "EUR/USD", 0)["signal"], metric(engine, "EUR/USD", 0)["label"]) == (
        -1,
        "neutral",
    )
    assert metric(engine, "EUR/USD", MINUTE)["signal"] == 1
    assert_matches_oracle(engine, BASE_TS, custom)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"contrarian_upper": 30, "contrarian_lower": 30}, "contrarian_lower"),
        ({"bullish_above": 40}, "bearish_below"),
        ({"batch_rows": 0}, "batch_rows"),
        ({"max_age_seconds": 0}, "max_age_seconds"),
        ({"max_age_seconds": math.nan}, "max_age_seconds"),
    ],
)
def test_inconsistent_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    engine = make_engine("sqlite://")
    try:
        with pytest.raises(ValueError, match=message):
            SentimentAggregator(engine, **kwargs)
    finally:
        engine.dispose()


def test_cursors_are_per_service_and_lag_is_reported(engine: Engine) -> None:
    insert(engine, [reading("EUR/USD", 0), reading("EUR/USD", 30_000)])
    job = aggregator(engine, batch_rows=1)
    report = job.catch_up(["EUR/USD", "NO/DATA"])
    assert report.rows == 2 and report.symbols["EUR/USD"].lag_ms == 0
    assert report.symbols["NO/DATA"].lag_ms is None
    insert(engine, [reading("EUR/USD", 90_000)])
    with engine.connect() as conn:
        assert sentiment_lag_ms(conn, "EUR/USD") == 60_000
        assert sentiment_lag_ms(conn, "NO/DATA") is None
    replay = aggregator(engine, service="replay")
    assert replay.catch_up(["EUR/USD"]).rows == 3
    assert replay.catch_up(["EUR/USD"]).rows == 0
    assert job.catch_up(["EUR/USD"]).rows == 1


# --- quarantine ----------------------------------------------------------------------

BAD_ROWS: dict[str, tuple[dict[str, Any], str, str]] = {
    "long missing": ({"long_pct": None, "short_pct": 50.0}, "missing", "long_pct"),
    "short missing": ({"long_pct": 50.0, "short_pct": None}, "missing", "short_pct"),
    "long above 100": ({"long_pct": 101.0, "short_pct": -1.0}, "out_of_range", "101"),
    "short below 0": ({"long_pct": 100.0, "short_pct": -0.5}, "out_of_range", "-0.5"),
    "infinite": ({"long_pct": math.inf, "short_pct": 0.0}, "out_of_range", "long_pct"),
    # SQLite has no NaN: it stores one as NULL, so there it is simply missing.
    "nan": ({"long_pct": math.nan, "short_pct": 50.0}, "nan", "long_pct"),
    "bad sum": ({"long_pct": 60.0, "short_pct": 41.5}, "bad_sum", "101.5"),
    "negative traders": (
        {"long_pct": 60.0, "short_pct": 40.0, "total_traders": -3},
        "negative_traders",
        "-3",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_a_bad_row_is_quarantined_once_and_the_good_ones_still_count(
    engine: Engine, case: str
) -> None:
    values, reason, named = BAD_ROWS[case]
    if reason == "nan":
        reason = "out_of_range" if engine.dialect.name == "postgresql" else "missing"
    bad: dict[str, Any] = {
        "symbol": "EUR/USD",
        "ts_ms": BASE_TS,
        "provider": "bad",
        "total_traders": 10,
    }
    insert(engine, [reading("EUR/USD", 0, 40.0, provider="good"), bad | values])
    job = aggregator(engine)
    report = job.catch_up(["EUR/USD"])
    assert (report.failed, report.rows, report.quarantined) == ([], 2, 1)
    row = metric(engine, "EUR/USD", 0)
    assert (row["long_pct"], row["providers"], row["total_traders"]) == (40.0, 1, 100)
    with engine.connect() as conn:
        (quarantined,) = conn.execute(select(sentiment_quarantine)).all()
        newest = conn.execute(select(func.max(sentiment_raw.c.id))).scalar_one()
        assert get_position(conn, SERVICE, "EUR/USD").id == newest  # moved past it
    assert (quarantined.raw_id, quarantined.reason) == (newest, reason)
    assert named in quarantined.detail
    assert_matches_oracle(engine, BASE_TS)

    # Not again: neither on a re-run nor by another service reading the same rows.
    assert job.catch_up(["EUR/USD"]).quarantined == 0
    assert aggregator(engine, service="replay").catch_up(["EUR/USD"]).quarantined == 1
    assert stored_quarantine(engine) == {newest: reason}


def test_a_timestamp_with_only_bad_rows_gets_no_metrics_row(engine: Engine) -> None:
    insert(
        engine,
        [reading("EUR/USD", 0, 40.0), reading("EUR/USD", MINUTE, 99.0, short_pct=99.0)],
    )
    report = aggregator(engine).catch_up(["EUR/USD"])
    assert (report.rows, report.quarantined) == (2, 1)
    assert sorted(ts - BASE_TS for _, ts in stored(engine)) == [0]
    with engine.connect() as conn:
        assert sentiment_lag_ms(conn, "EUR/USD") == 0  # the bad reading is not lag


# --- stale -------------------------------------------------------------------------------


def test_the_newest_row_turns_stale_after_max_age_without_new_readings(engine: Engine) -> None:
    now = Now(BASE_TS + MINUTE)
    job = aggregator(engine, now, max_age_seconds=3600)
    insert(engine, [reading("EUR/USD", 0), reading("EUR/USD", MINUTE)])
    job.catch_up(["EUR/USD"])
    assert [metric(engine, "EUR/USD", t)["stale"] for t in (0, MINUTE)] == [False, False]

    now.ms = BASE_TS + MINUTE + HOUR  # the newest is exactly max_age old: not yet stale
    assert job.catch_up(["EUR/USD"]).rows == 0
    assert [metric(engine, "EUR/USD", t)["stale"] for t in (0, MINUTE)] == [True, False]
    now.ms += 1
    job.catch_up(["EUR/USD"])
    assert metric(engine, "EUR/USD", MINUTE)["stale"] is True
    assert metric(engine, "EUR/USD", MINUTE)["updated_ms"] == now.ms
    assert_matches_oracle(engine, now.ms)

    # A fresh reading is written fresh; the old ones stay stale.
    insert(engine, [reading("EUR/USD", MINUTE + HOUR)])
    job.catch_up(["EUR/USD"])
    assert metric(engine, "EUR/USD", MINUTE + HOUR)["stale"] is False
    assert_matches_oracle(engine, now.ms)

    # A longer max_age (a config reload) makes rows fresh again.
    longer = aggregator(engine, now, max_age_seconds=2 * 3600)
    longer.catch_up(["EUR/USD"])
    assert_matches_oracle(engine, now.ms, Settings(max_age_ms=2 * HOUR))
    assert metric(engine, "EUR/USD", 0)["stale"] is False


def test_the_stale_refresh_touches_only_the_pass_symbols(engine: Engine) -> None:
    now = Now(BASE_TS)
    job = aggregator(engine, now)
    insert(engine, [reading("EUR/USD", 0), reading("USD/JPY", 0)])
    job.catch_up(["EUR/USD", "USD/JPY"])
    now.ms += 2 * HOUR
    job.catch_up(["EUR/USD"])
    assert metric(engine, "EUR/USD", 0)["stale"] is True
    assert metric(engine, "USD/JPY", 0)["stale"] is False


# --- kills, fences, faults -------------------------------------------------------------


def _first_and_late() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    first = [reading("EUR/USD", i * 20 * MINUTE, 30.0 + 5 * i) for i in range(6)]
    first += [reading("USD/JPY", i * 20 * MINUTE, 80.0 - i) for i in range(3)]
    late = [
        reading("EUR/USD", 5, 75.0, provider="late"),
        reading("EUR/USD", 7, None, provider="late"),
        reading("USD/JPY", 3 * HOUR, 20.0),
    ]
    return first, late


def test_a_kill_at_any_statement_loses_and_doubles_nothing(engine: Engine) -> None:
    first, late = _first_and_late()
    now = Now(BASE_TS + 2 * HOUR)
    number = 0
    while True:
        number += 1
        clear(engine)
        insert(engine, first)
        job = aggregator(engine, now, batch_rows=2)
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
        assert_matches_oracle(engine, now.ms)
    assert number > 10


def test_a_failure_inside_a_fold_leaves_nothing_of_it(engine: Engine) -> None:
    class Crashing(SentimentAggregator):
        def _recompute(self, conn: Any, symbol: str, lo: int, top: int, now: int) -> int:
            written = super()._recompute(conn, symbol, lo, top, now)
            if symbol == "USD/JPY":
                raise RuntimeError("crashed after writing")
            return written

    first, late = _first_and_late()
    insert(engine, first + late)
    report = Crashing(engine, service=SERVICE, now_ms=Now(BASE_TS)).catch_up(["EUR/USD", "USD/JPY"])
    assert report.failed == ["USD/JPY"]
    assert "crashed after writing" in (report.symbols["USD/JPY"].error or "")
    assert {s for s, _ in stored(engine)} == {"EUR/USD"}  # one symbol's fault spares the rest
    with engine.connect() as conn:
        assert get_position(conn, SERVICE, "USD/JPY").id == 0
    aggregator(engine).catch_up(["EUR/USD", "USD/JPY"])
    assert_matches_oracle(engine, BASE_TS)


def test_a_fenced_out_instance_writes_nothing(engine: Engine) -> None:
    first, late = _first_and_late()
    insert(engine, first + late)
    old = claim_fence(engine, SERVICE, BASE_TS)
    new = claim_fence(engine, SERVICE, BASE_TS)
    before = snapshot(engine)
    with pytest.raises(FencedOut):
        aggregator(engine).catch_up(["EUR/USD", "USD/JPY"], fence=old)
    assert snapshot(engine) == before
    aggregator(engine).catch_up(["EUR/USD", "USD/JPY"], fence=new)
    assert_matches_oracle(engine, BASE_TS)


def test_a_fenced_out_instance_cannot_flip_stale_flags(engine: Engine) -> None:
    insert(engine, [reading("EUR/USD", 0)])
    now = Now(BASE_TS)
    fence = claim_fence(engine, SERVICE, BASE_TS)
    aggregator(engine, now).catch_up(["EUR/USD"], fence=fence)
    claim_fence(engine, SERVICE, BASE_TS)
    now.ms += 2 * HOUR
    with pytest.raises(FencedOut):
        aggregator(engine, now).catch_up(["EUR/USD"], fence=fence)
    assert metric(engine, "EUR/USD", 0)["stale"] is False


def test_a_rerun_without_new_readings_changes_nothing(engine: Engine) -> None:
    first, late = _first_and_late()
    insert(engine, first + late)
    job = aggregator(engine, Now(BASE_TS + HOUR), batch_rows=4)
    job.catch_up(["EUR/USD", "USD/JPY"])
    before = snapshot(engine)
    assert before[0] and before[1] and before[2]
    report = job.catch_up(["EUR/USD", "USD/JPY"])
    assert (report.rows, report.written, report.quarantined) == (0, 0, 0)
    assert snapshot(engine) == before  # updated_ms included: nothing was rewritten


def test_a_database_fault_fails_the_pass_at_once(engine: Engine) -> None:
    insert(engine, [reading(s, 0) for s in ("EUR/USD", "USD/JPY")])
    seen: list[str] = []

    def disk_fails(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)
        if statement.lstrip().upper().startswith("INSERT INTO SENTIMENT_METRICS"):
            raise OperationalError(statement, {}, Exception("disk I/O error"))

    event.listen(engine, "before_cursor_execute", disk_fails)
    try:
        with pytest.raises(OperationalError, match="disk I/O error"):
            aggregator(engine).catch_up(["EUR/USD", "USD/JPY"])
    finally:
        event.remove(engine, "before_cursor_execute", disk_fails)
    assert stored(engine) == {}
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(progress_cursors)).scalar() == 0


def test_an_unreachable_database_fails_the_pass() -> None:
    unreachable = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    try:
        with pytest.raises(OperationalError):
            SentimentAggregator(unreachable).catch_up(["EUR/USD"])
    finally:
        unreachable.dispose()


def test_a_bug_in_every_symbol_fails_the_pass(engine: Engine) -> None:
    class Broken(SentimentAggregator):
        def _recompute(self, conn: Any, symbol: str, lo: int, top: int, now: int) -> int:
            raise RuntimeError("bug")

    insert(engine, [reading("EUR/USD", 0)])
    with pytest.raises(CatchUpFailed, match="bug"):
        Broken(engine, now_ms=Now(BASE_TS)).catch_up(["EUR/USD"])


def test_a_zero_budget_leaves_the_rest_for_the_next_pass(engine: Engine) -> None:
    insert(engine, [reading(s, i * MINUTE) for s in ("EUR/USD", "USD/JPY") for i in range(5)])
    job = aggregator(engine, batch_rows=2)
    report = job.catch_up(["EUR/USD", "USD/JPY"], budget_seconds=0)
    assert report.unfinished == ["EUR/USD", "USD/JPY"]
    assert report.rows == 4
    while report.unfinished:
        report = job.catch_up(report.unfinished, budget_seconds=0)
    assert_matches_oracle(engine, BASE_TS)
