"""The engine factory, schema set-up, cursors and tick inserts, on real databases."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, func, inspect, select, text

from tickvisor.store import (
    DEFAULT_DB_URL,
    DatabaseUnavailable,
    ensure_schema,
    get_cursor,
    insert_ticks,
    make_engine,
    metadata,
    open_database,
    safe_url,
    set_cursor,
    upsert,
)
from tickvisor.store.schema import progress_cursors, ticks

TABLES = {
    "ticks",
    "candles",
    "progress_cursors",
    "events",
    "alert_outbox",
    "alert_notifications",
    "alert_deliveries",
    "service_generations",
}


def _drop_everything(url: str) -> None:
    eng = create_engine(url)
    try:
        metadata.drop_all(eng)
    finally:
        eng.dispose()


# --- schema -----------------------------------------------------------------


def test_schema_is_created_on_first_use_and_is_idempotent(db_url: str) -> None:
    _drop_everything(db_url)
    first = open_database(db_url)
    try:
        assert set(inspect(first).get_table_names()) >= TABLES
        with first.begin() as conn:
            insert_ticks(conn, [{"symbol": "EURUSD", "ts_ms": 1, "bid": 1.0, "ask": 1.1}])
        ensure_schema(first)
        ensure_schema(first)
    finally:
        first.dispose()
    second = open_database(db_url)
    try:
        with second.connect() as conn:
            assert conn.execute(select(func.count()).select_from(ticks)).scalar_one() == 1
    finally:
        second.dispose()


def test_schema_creation_survives_racing_starts(db_url: str) -> None:
    _drop_everything(db_url)
    engines = [make_engine(db_url) for _ in range(4)]
    barrier = threading.Barrier(len(engines))
    errors: list[BaseException] = []

    def start(eng: Engine) -> None:
        try:
            barrier.wait(timeout=10)
            ensure_schema(eng)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(eng,)) for eng in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    try:
        assert errors == []
        assert set(inspect(engines[0]).get_table_names()) >= TABLES
    finally:
        for eng in engines:
            eng.dispose()


def test_sqlite_connections_get_wal_and_busy_timeout(tmp_path: Path) -> None:
    eng = open_database(f"sqlite:///{tmp_path / 'pragmas.db'}")
    try:
        # Two connections at once: pragmas are per connection, so both must have them.
        with eng.connect() as a, eng.connect() as b:
            for conn in (a, b):
                assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
                assert conn.execute(text("PRAGMA synchronous")).scalar_one() == 1
                assert conn.execute(text("PRAGMA busy_timeout")).scalar_one() == 5000
                assert conn.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
    finally:
        eng.dispose()


def test_sqlite_in_memory_is_shared_between_threads() -> None:
    eng = open_database("sqlite://")
    try:
        seen: list[int] = []

        def count() -> None:
            with eng.connect() as conn:
                seen.append(conn.execute(select(func.count()).select_from(ticks)).scalar_one())

        with eng.begin() as conn:
            insert_ticks(conn, [{"symbol": "X", "ts_ms": 1, "bid": 1.0, "ask": 2.0}])
        thread = threading.Thread(target=count)
        thread.start()
        thread.join(timeout=10)
        assert seen == [1]
    finally:
        eng.dispose()


# --- engine URLs and failures -------------------------------------------------


def test_default_url_is_a_sqlite_file_in_the_working_folder() -> None:
    eng = make_engine(None)
    try:
        assert DEFAULT_DB_URL == "sqlite:///tickvisor.db"
        assert eng.url.get_backend_name() == "sqlite"
        assert eng.url.database == "tickvisor.db"
    finally:
        eng.dispose()


def test_plain_postgresql_url_uses_psycopg() -> None:
    eng = make_engine("postgresql://user:pw@127.0.0.1:5432/db")
    try:
        assert eng.url.drivername == "postgresql+psycopg"
    finally:
        eng.dispose()


def test_safe_url_masks_the_password() -> None:
    masked = safe_url("postgresql+psycopg://alice:s3cret@db.example:5432/ticks")
    assert masked == "postgresql+psycopg://alice:***@db.example:5432/ticks"
    assert safe_url(make_engine("sqlite:///x.db").url) == "sqlite:///x.db"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://alice:s3cret-pw@127.0.0.1:1/test",
        "postgresql://alice:s3cret-pw@127.0.0.1:1/test",
    ],
)
def test_unreachable_postgres_is_one_clear_line_without_the_password(url: str) -> None:
    with pytest.raises(DatabaseUnavailable) as info:
        open_database(url)
    message = str(info.value)
    assert "s3cret-pw" not in message
    assert "postgresql+psycopg://alice:***@127.0.0.1:1/test" in message
    assert "\n" not in message
    # The driver's reason is there, not just "failed".
    assert "refused" in message.lower() or "failed" in message.lower()


def test_sqlite_file_in_a_missing_folder_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "folder"
    with pytest.raises(DatabaseUnavailable) as info:
        open_database(f"sqlite:///{missing / 'x.db'}")
    message = str(info.value)
    assert str(missing) in message
    assert "does not exist" in message


@pytest.mark.parametrize("url", ["not a url at all", "postgresql://bob:hunter2@host:notaport/db"])
def test_unparseable_url_is_named_without_its_password(url: str) -> None:
    with pytest.raises(DatabaseUnavailable) as info:
        make_engine(url)
    message = str(info.value)
    assert "hunter2" not in message
    assert "not a valid database URL" in message
    assert url.replace("hunter2", "***") in message


# --- cursors and the upsert helper -------------------------------------------


def test_cursor_round_trip(engine: Engine) -> None:
    with engine.begin() as conn:
        assert get_cursor(conn, "candles", "EURUSD") is None
        set_cursor(conn, "candles", "EURUSD", 5, now_ms=100)
        set_cursor(conn, "depth", "EURUSD", 7, now_ms=100)
    with engine.begin() as conn:
        assert get_cursor(conn, "candles", "EURUSD") == 5
        set_cursor(conn, "candles", "EURUSD", 9, now_ms=200)
    with engine.connect() as conn:
        assert get_cursor(conn, "candles", "EURUSD") == 9
        assert get_cursor(conn, "depth", "EURUSD") == 7
        assert get_cursor(conn, "candles", "USDJPY") is None
        rows = conn.execute(
            select(progress_cursors.c.position, progress_cursors.c.updated_ms).where(
                progress_cursors.c.service == "candles"
            )
        ).all()
    assert [tuple(row) for row in rows] == [(9, 200)]


def test_upsert_accepts_one_row_many_rows_or_none(engine: Engine) -> None:
    key = ("service", "key")
    cols = ("position", "updated_ms")
    with engine.begin() as conn:
        assert upsert(conn, progress_cursors, [], key, cols) == 0
        upsert(
            conn,
            progress_cursors,
            {"service": "s", "key": "a", "position": 1, "updated_ms": 1},
            key,
            cols,
        )
        upsert(
            conn,
            progress_cursors,
            [
                {"service": "s", "key": "a", "position": 2, "updated_ms": 2},
                {"service": "s", "key": "b", "position": 3, "updated_ms": 2},
            ],
            key,
            cols,
        )
        # No update columns: an existing row is left alone.
        upsert(
            conn,
            progress_cursors,
            {"service": "s", "key": "b", "position": 99, "updated_ms": 3},
            key,
            (),
        )
    with engine.connect() as conn:
        assert get_cursor(conn, "s", "a") == 2
        assert get_cursor(conn, "s", "b") == 3


# --- ticks --------------------------------------------------------------------


def test_insert_ticks_fills_optional_columns(engine: Engine) -> None:
    rows: list[dict[str, object]] = [
        {"symbol": "EURUSD", "ts_ms": 1_000, "bid": 1.08, "ask": 1.0802},
        {
            "symbol": "EURUSD",
            "ts_ms": 2_000,
            "bid": 1.081,
            "ask": 1.0812,
            "price": 1.0811,
            "volume": 3.5,
            "source": "test",
        },
    ]
    with engine.begin() as conn:
        assert insert_ticks(conn, rows) == 2
        assert insert_ticks(conn, []) == 0
    with engine.connect() as conn:
        got = conn.execute(
            select(ticks.c.ts_ms, ticks.c.price, ticks.c.volume, ticks.c.source).order_by(
                ticks.c.id
            )
        ).all()
    assert [tuple(row) for row in got] == [(1_000, None, None, None), (2_000, 1.0811, 3.5, "test")]


def test_insert_ticks_names_the_bad_row(engine: Engine) -> None:
    with engine.begin() as conn, pytest.raises(ValueError, match=r"row 1 lacks required ask"):
        insert_ticks(
            conn,
            [
                {"symbol": "EURUSD", "ts_ms": 1, "bid": 1.0, "ask": 1.1},
                {"symbol": "EURUSD", "ts_ms": 2, "bid": 1.0},
            ],
        )


def test_unsupported_database_is_refused_by_name() -> None:
    with pytest.raises(DatabaseUnavailable, match=r"unsupported database 'mysql'") as info:
        make_engine("mysql://bob:hunter2@host/db")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    ["trader:s3cr3t-pw@db.example/markets", "postgresql://trader:p@ss-w0rd@db.example/markets"],
)
def test_unparseable_urls_never_leak_the_password(url: str) -> None:
    masked = safe_url(url)
    assert "s3cr3t" not in masked and "ss-w0rd" not in masked and "p@ss" not in masked
    assert "db.example/markets" in masked
