"""The synthetic feed: a reproducible generator and an actor driven by a stepped clock."""

from __future__ import annotations

from typing import Any

import pykka
import pytest
from sqlalchemy import Engine, func, select
from structlog.testing import capture_logs

from tickvisor.actors.feed import FeedActor, SyntheticTickGenerator
from tickvisor.clock import FakeClock, SteppedScheduler, now_ms
from tickvisor.messages import GenerateTicks, GetMetrics
from tickvisor.store import ensure_schema
from tickvisor.store.schema import ticks

ASK_TIMEOUT = 10.0
SYMBOLS = ["EURUSD", "USDJPY", "GBPUSD", "XAUEUR"]


def metrics(ref: pykka.ActorRef[Any]) -> dict[str, Any]:
    answer = ref.ask(GetMetrics(), timeout=ASK_TIMEOUT)
    assert isinstance(answer, dict)
    return answer


def tick_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(ticks)).scalar_one())


# --- generator ----------------------------------------------------------------


def test_generator_is_deterministic_for_a_seed() -> None:
    def run(seed: int) -> list[list[dict[str, object]]]:
        gen = SyntheticTickGenerator(SYMBOLS, seed=seed)
        return [gen.next_batch(1_700_000_000_000 + i * 1_000, 25) for i in range(5)]

    assert run(42) == run(42)
    assert run(42) != run(43)


def test_generator_produces_plausible_quotes() -> None:
    gen = SyntheticTickGenerator(SYMBOLS, seed=1, interval_ms=1_000)
    start = 1_700_000_000_000
    last_ts: dict[str, int] = {}
    previous_now = start - 1_000
    for i in range(50):
        now = start + i * 1_000
        batch = gen.next_batch(now, 22)
        assert len(batch) == 22
        assert [t["ts_ms"] for t in batch] == sorted(t["ts_ms"] for t in batch)  # type: ignore[type-var]
        for t in batch:
            symbol, ts = str(t["symbol"]), t["ts_ms"]
            bid, ask, volume = t["bid"], t["ask"], t["volume"]
            assert isinstance(ts, int) and isinstance(bid, float) and isinstance(ask, float)
            assert isinstance(volume, float) and volume > 0
            assert 0 < bid < ask
            assert previous_now < ts <= now
            assert ts > last_ts.get(symbol, 0)
            last_ts[symbol] = ts
            assert t["source"] == "synthetic"
        previous_now = now
    by_symbol = {str(t["symbol"]): t for t in gen.next_batch(start + 60_000, 4)}
    assert set(by_symbol) == set(SYMBOLS)
    expectations = {"EURUSD": 1.08, "USDJPY": 150.0, "GBPUSD": 1.27, "XAUEUR": 1.0}
    for symbol, centre in expectations.items():
        bid = by_symbol[symbol]["bid"]
        assert isinstance(bid, float)
        assert bid == pytest.approx(centre, rel=0.02), symbol
        ask = by_symbol[symbol]["ask"]
        assert isinstance(ask, float)
        # Spreads of a few pips, never a crossed or absurd quote.
        assert 0 < (ask - bid) / bid < 0.001


def test_generator_spreads_a_batch_over_its_symbols() -> None:
    gen = SyntheticTickGenerator(["A", "B", "C"], seed=3)
    batch = gen.next_batch(10_000, 20)
    counts = {s: sum(1 for t in batch if t["symbol"] == s) for s in "ABC"}
    assert counts == {"A": 7, "B": 7, "C": 6}
    assert gen.next_batch(11_000, 0) == []


def test_generator_keeps_timestamps_distinct_when_the_clock_stands_still() -> None:
    gen = SyntheticTickGenerator(["EURUSD"], seed=5)
    first = gen.next_batch(5_000, 10)
    second = gen.next_batch(5_000, 10)
    stamps = [t["ts_ms"] for t in first + second]
    assert len(set(stamps)) == 20
    assert stamps == sorted(stamps)  # type: ignore[type-var]


# --- actor ----------------------------------------------------------------------


def start_feed(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler, **kwargs: Any
) -> pykka.ActorRef[Any]:
    return FeedActor.start(
        engine, clock, scheduler, ["EURUSD", "USDJPY"], interval_seconds=1.0, seed=7, **kwargs
    )


def test_feed_writes_one_batch_per_interval(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler
) -> None:
    started_ms = now_ms(clock)
    ref = start_feed(engine, clock, scheduler, ticks_per_interval=20)

    assert scheduler.advance(3.0) == 3
    answer = metrics(ref)

    assert answer["batches_written"] == 3
    assert answer["ticks_written"] == 60
    assert answer["insert_failures"] == 0
    assert tick_count(engine) == 60
    with engine.connect() as conn:
        low, high = conn.execute(select(func.min(ticks.c.ts_ms), func.max(ticks.c.ts_ms))).one()
    # Each batch is dated when it was due, on the fake clock, not the real one.
    assert started_ms < low <= high <= now_ms(clock)
    assert answer["last_batch_ms"] == now_ms(clock)


def test_stopping_the_feed_cancels_its_timer(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler
) -> None:
    ref = start_feed(engine, clock, scheduler)
    assert scheduler.pending() == 1
    scheduler.advance(1.0)
    metrics(ref)

    ref.stop(timeout=ASK_TIMEOUT)

    assert scheduler.pending() == 0
    assert scheduler.advance(5.0) == 0
    assert tick_count(engine) == 20


def test_feed_survives_a_database_error(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler
) -> None:
    ticks.drop(engine)
    with capture_logs() as logs:
        ref = start_feed(engine, clock, scheduler, ticks_per_interval=5)
        scheduler.advance(1.0)
        failed = metrics(ref)

        ensure_schema(engine)
        scheduler.advance(1.0)
        recovered = metrics(ref)

    assert failed["insert_failures"] == 1
    assert failed["batches_written"] == 0
    assert failed["last_error"]
    assert recovered["batches_written"] == 1
    assert recovered["ticks_written"] == 5
    assert ref.is_alive()
    failures = [entry for entry in logs if entry["event"] == "feed.insert_failed"]
    assert len(failures) == 1
    assert failures[0]["log_level"] == "error"
    assert failures[0]["service"] == "feed"
    assert failures[0]["error_type"]
    assert isinstance(failures[0]["exc_info"], BaseException)
    assert any(entry["event"] == "feed.started" for entry in logs)


def test_feed_answers_a_direct_generate_message(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler
) -> None:
    ref = start_feed(engine, clock, scheduler, ticks_per_interval=4)
    ref.tell(GenerateTicks(scheduled_at=clock.monotonic()))
    assert metrics(ref)["ticks_written"] == 4
    assert ref.ask("something else", timeout=ASK_TIMEOUT) is None
