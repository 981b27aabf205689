"""CandleService as an actor: real pykka, real databases, the fake clock and stepped scheduler."""

from __future__ import annotations

from typing import Any

import pykka
from sqlalchemy import Engine, text

from actor_helpers import wait_first_iteration
from candle_oracle import assert_matches_oracle
from tickvisor.actors.candles import CandleService
from tickvisor.clock import FakeClock, SteppedScheduler
from tickvisor.config import CandleServiceConfig
from tickvisor.messages import GetMetrics
from tickvisor.store import insert_ticks

ASK = 10.0
BASE_TS = 1_704_067_200_000


def start(engine: Engine, clock: FakeClock, scheduler: SteppedScheduler, **config: Any) -> Any:
    config.setdefault("interval_seconds", 1.0)
    ref = CandleService.start(
        "candles",
        CandleServiceConfig(**config),
        engine=engine,
        clock=clock,
        scheduler=scheduler,
    )
    wait_first_iteration(ref)
    return ref


def metrics(ref: pykka.ActorRef[Any]) -> dict[str, Any]:
    result: dict[str, Any] = ref.ask(GetMetrics(), timeout=ASK)
    return result


def ticks_at(symbol: str, *offsets_ms: int) -> list[dict[str, Any]]:
    return [
        {"symbol": symbol, "ts_ms": BASE_TS + off, "bid": 1.0 + off / 1e7, "ask": 1.1}
        for off in offsets_ms
    ]


def test_each_iteration_folds_what_arrived_and_reports_per_symbol_metrics(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler
) -> None:
    with engine.begin() as conn:
        insert_ticks(conn, ticks_at("EUR/USD", 0, 1_000) + ticks_at("USD/JPY", 500))
    ref = start(engine, clock, scheduler)  # no symbols configured: discovered from ticks
    first = metrics(ref)
    assert first["ticks_processed"] == 3
    assert first["per_symbol"]["EUR/USD"]["ticks_processed"] == 2
    assert first["per_symbol"]["EUR/USD"]["freshness_lag_seconds"] == 0.0
    assert first["candles_written"] == 14  # one candle per timeframe per symbol

    with engine.begin() as conn:
        insert_ticks(conn, ticks_at("EUR/USD", 90_000))  # the next minute
    scheduler.advance(1.0)
    second = metrics(ref)
    assert second["ticks_processed"] == 4
    assert second["per_symbol"]["EUR/USD"]["ticks_processed"] == 3
    assert second["max_freshness_lag_seconds"] == 0.0
    assert_matches_oracle(engine)


def test_a_faulty_symbol_is_counted_and_the_others_proceed(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler
) -> None:
    with engine.begin() as conn:
        if conn.dialect.name != "sqlite":
            conn.execute(
                text(
                    "CREATE OR REPLACE FUNCTION refuse_bad() RETURNS trigger "
                    "LANGUAGE plpgsql AS $$ BEGIN IF NEW.symbol = 'BAD/SYM' THEN "
                    "RAISE EXCEPTION 'corrupt'; END IF; RETURN NEW; END $$"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_bad BEFORE INSERT ON candles "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_bad()"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_bad BEFORE INSERT ON candles "
                    "WHEN NEW.symbol = 'BAD/SYM' BEGIN SELECT RAISE(ABORT, 'corrupt'); END"
                )
            )
        insert_ticks(conn, ticks_at("EUR/USD", 0) + ticks_at("BAD/SYM", 0))
    ref = start(engine, clock, scheduler, symbols=["EUR/USD", "BAD/SYM"])
    result = metrics(ref)
    assert result["error_count"] == 0  # the iteration itself succeeded
    assert result["circuit_breaker_state"] == "closed"
    assert result["per_symbol"]["BAD/SYM"]["errors"] == 1
    assert "corrupt" in result["per_symbol"]["BAD/SYM"]["last_error"]
    assert result["per_symbol"]["EUR/USD"]["candles_written"] == 7
