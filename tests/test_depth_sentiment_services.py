"""DepthService and SentimentService as actors: real pykka, real databases, stepped time.

The store-level tests check every number against pandas; these check what
the actor adds: symbols discovered from the data, bad rows counted without
failing an iteration, a database fault failing it so the breaker opens, and
the supervision tree and the synthetic feed running all three services.
"""

from __future__ import annotations

from typing import Any

import pykka
import pytest
from sqlalchemy import Engine, func, select, text

from actor_helpers import metrics, wait_first_iteration, wait_for
from tickvisor.actors.depth import DepthService
from tickvisor.actors.feed import FeedActor
from tickvisor.actors.incremental import IncrementalService
from tickvisor.actors.sentiment import SentimentService
from tickvisor.clock import FakeClock, SteppedScheduler
from tickvisor.config import BreakerConfig, DepthServiceConfig, SentimentServiceConfig
from tickvisor.messages import GetMetrics
from tickvisor.store.inputs import insert_depth_snapshots, insert_sentiment_rows
from tickvisor.store.schema import (
    depth_metrics,
    depth_metrics_1m,
    depth_quarantine,
    sentiment_metrics,
    sentiment_quarantine,
)

BASE_TS = 1_704_067_200_000
GOOD_BOOK = {"bids": [[1.0999, 2.0], [1.1000, 1.0]], "asks": [[1.1002, 3.0], [1.1001, 1.0]]}


def book(symbol: str, offset_ms: int, **sides: Any) -> dict[str, Any]:
    return {"symbol": symbol, "ts_ms": BASE_TS + offset_ms, "provider": "test"} | (
        sides or GOOD_BOOK
    )


def reading(symbol: str, offset_ms: int, long_pct: float, short_pct: float) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "ts_ms": BASE_TS + offset_ms,
        "provider": "test",
        "long_pct": long_pct,
        "short_pct": short_pct,
        "total_traders": 1000,
    }


def start(
    service: type[IncrementalService],
    engine: Engine,
    clock: FakeClock,
    scheduler: SteppedScheduler,
    config: Any,
) -> pykka.ActorRef[Any]:
    ref = service.start(
        service.__name__.removesuffix("Service").lower(),
        config,
        engine=engine,
        clock=clock,
        scheduler=scheduler,
    )
    wait_first_iteration(ref)
    return ref


def iterate_until(
    ref: pykka.ActorRef[Any], scheduler: SteppedScheduler, key: str, value: int
) -> dict[str, Any]:
    """Step iterations until ``metrics[key] == value``.

    On PostgreSQL a row becomes processable once no older transaction is
    still open anywhere on the server (see ``visible_horizon``), so under a
    concurrent load it may take an iteration more than on SQLite.
    """
    for _ in range(50):
        current = metrics(ref)
        if current[key] == value:
            return current
        scheduler.advance(1.0)  # the next ask is answered after the Iterate it queues
    raise AssertionError(f"{key} never reached {value}: {metrics(ref)[key]}")


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_depth_service_discovers_symbols_and_quarantines_without_failing(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler
) -> None:
    with engine.begin() as conn:
        insert_depth_snapshots(
            conn,
            [
                book("EUR/USD", 0),
                book("EUR/USD", 1_000, bids=[[1.2, 1.0]], asks=[[1.1, 1.0]]),  # crossed
                book("USD/JPY", 500, bids="[[150.0, 1.0]", asks="[[150.1, 1.0]]"),  # bad JSON
            ],
        )
    ref = start(DepthService, engine, clock, scheduler, DepthServiceConfig(interval_seconds=1.0))
    m = iterate_until(ref, scheduler, "snapshots_processed", 3)
    assert m["metrics_written"] >= 1
    assert m["quarantined"] == 2
    assert m["per_symbol"]["USD/JPY"]["quarantined"] == 1
    assert m["error_count"] == 0
    assert m["circuit_breaker_state"] == "closed"
    assert sorted(m["symbols"]) == ["EUR/USD", "USD/JPY"]
    assert count(engine, depth_metrics) == 1
    assert count(engine, depth_quarantine) == 2

    with engine.begin() as conn:  # new input is picked up by the next iteration
        insert_depth_snapshots(conn, [book("EUR/USD", 61_000)])
    iterate_until(ref, scheduler, "snapshots_processed", 4)
    assert count(engine, depth_metrics) == 2
    assert count(engine, depth_metrics_1m) == 2


def test_sentiment_service_processes_readings_and_quarantines_bad_ones(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler
) -> None:
    with engine.begin() as conn:
        insert_sentiment_rows(
            conn,
            [
                reading("EUR/USD", 0, 60.0, 40.0),
                reading("EUR/USD", 60_000, 61.0, 39.0),
                reading("EUR/USD", 120_000, 120.0, -20.0),  # out of range
                reading("EUR/USD", 180_000, 50.0, 40.0),  # does not sum to 100
            ],
        )
    config = SentimentServiceConfig(interval_seconds=1.0, symbols=["EUR/USD"])
    ref = start(SentimentService, engine, clock, scheduler, config)
    m = iterate_until(ref, scheduler, "readings_processed", 4)
    assert m["quarantined"] == 2
    assert m["error_count"] == 0
    assert m["circuit_breaker_state"] == "closed"
    assert count(engine, sentiment_metrics) == 2
    assert count(engine, sentiment_quarantine) == 2


@pytest.mark.parametrize(
    ("service", "config", "output", "row"),
    [
        (DepthService, DepthServiceConfig, "depth_metrics", book("EUR/USD", 0)),
        (
            SentimentService,
            SentimentServiceConfig,
            "sentiment_metrics",
            reading("EUR/USD", 0, 60, 40),
        ),
    ],
)
def test_a_database_fault_fails_the_iteration_and_opens_the_breaker(
    engine: Engine,
    clock: FakeClock,
    scheduler: SteppedScheduler,
    service: type[IncrementalService],
    config: type[Any],
    output: str,
    row: dict[str, Any],
) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {output}"))
        if service is DepthService:
            insert_depth_snapshots(conn, [row])
        else:
            insert_sentiment_rows(conn, [row])
    ref = start(
        service,
        engine,
        clock,
        scheduler,
        config(interval_seconds=1.0, breaker=BreakerConfig(failure_threshold=2, timeout=30.0)),
    )
    scheduler.advance(1.0)
    wait_for(lambda: metrics(ref)["circuit_breaker_state"] == "open", "the breaker to open")
    m = metrics(ref)
    assert m["error_count"] == 2
    assert m["metrics_written"] == 0


def test_the_feed_writes_books_and_readings_the_services_consume(
    engine: Engine, clock: FakeClock, scheduler: SteppedScheduler
) -> None:
    feed = FeedActor.start(
        engine,
        clock,
        scheduler,
        ["EUR/USD", "USD/JPY"],
        interval_seconds=1.0,
        seed=3,
        depth_snapshots=True,
        sentiment_readings=True,
    )
    depth = start(DepthService, engine, clock, scheduler, DepthServiceConfig(interval_seconds=1.0))
    sentiment = start(
        SentimentService, engine, clock, scheduler, SentimentServiceConfig(interval_seconds=1.0)
    )
    for _ in range(5):
        scheduler.advance(1.0)  # moves the fake clock too
    written = feed.ask(GetMetrics(), timeout=10)
    feed.stop()
    assert written["snapshots_written"] == 10  # one book per symbol and batch
    assert written["readings_written"] == 10
    iterate_until(depth, scheduler, "snapshots_processed", 10)
    iterate_until(sentiment, scheduler, "readings_processed", 10)
    assert count(engine, depth_metrics) == 10
    assert count(engine, sentiment_metrics) == 10
    assert count(engine, depth_quarantine) == 0  # the feed's books are well-formed
    assert count(engine, sentiment_quarantine) == 0
