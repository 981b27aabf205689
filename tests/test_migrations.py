"""Schema migrations on real SQLite and PostgreSQL databases.

What matters to users: a new database gets the schema on first use; a
database this tickvisor was not written for is refused with the command that
fixes it, and is not touched; ``tickvisor db upgrade`` brings any database a
tickvisor ever made to the current schema without losing a row.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import make_url

from tickvisor.logs import configure_logging
from tickvisor.store import insert_ticks
from tickvisor.store import migrate as migrations
from tickvisor.store.engine import DatabaseUnavailable, make_engine, open_database
from tickvisor.store.migrate import (
    BASELINE,
    VERSION_TABLE,
    SchemaMismatch,
    check_schema,
    current,
    head,
    schema_state,
    upgrade,
)
from tickvisor.store.schema import metadata, ticks

#: Tables whose ``txid`` defaults to the writing transaction on PostgreSQL.
TXID_TABLES = {"ticks", "depth_snapshots", "sentiment_raw"}


# --- helpers ------------------------------------------------------------------------


@pytest.fixture
def other_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    """A second empty database of the same dialect as ``db_url``."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'other.db'}"
        return
    admin = make_engine(os.environ["TICKVISOR_TEST_PG_URL"])
    schema = f"tickvisor_mig_{uuid.uuid4().hex[:12]}"
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(admin.url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def raw(db_url: str) -> Iterator[Engine]:
    """An engine on ``db_url`` that has not touched the schema."""
    eng = make_engine(db_url)
    try:
        yield eng
    finally:
        eng.dispose()


def differences_from_metadata(conn: Connection) -> list[Any]:
    """``compare_metadata`` against the live schema, defaults and types included.

    Two things are told to alembic rather than ignored blindly:

    - the version table is the context's, so alembic does not report it as a
      table the metadata lacks (``MigrationContext.configure(conn)`` alone
      would: the table is not Alembic's default ``alembic_version``);
    - on PostgreSQL the metadata says ``txid`` defaults to 0 while the database
      defaults to ``pg_current_xact_id()``: schema.py sets that default with an
      ``after_create`` DDL event, which metadata comparison cannot see. Those
      columns are skipped here and checked by :func:`txid_defaults` instead.
    """

    def compare_server_default(
        _context: Any,
        _inspected: Any,
        metadata_column: Column[Any],
        _inspected_default: Any,
        _metadata_default: Any,
        _rendered: Any,
    ) -> bool | None:
        if (
            conn.dialect.name == "postgresql"
            and metadata_column.name == "txid"
            and metadata_column.table.name in TXID_TABLES
        ):
            return False
        return None  # alembic's own comparison

    context = MigrationContext.configure(
        conn,
        opts={
            "version_table": VERSION_TABLE,
            "compare_type": True,
            "compare_server_default": compare_server_default,
        },
    )
    return list(compare_metadata(context, metadata))


def txid_defaults(conn: Connection) -> dict[str, str]:
    found = {}
    for name in TXID_TABLES:
        column = next(c for c in inspect(conn).get_columns(name) if c["name"] == "txid")
        found[name] = str(column["default"])
    return found


def catalog(conn: Connection) -> list[tuple[Any, ...]]:
    """Everything the database itself says about the tickvisor tables, comparable across schemas."""
    if conn.dialect.name == "sqlite":
        rows = conn.execute(
            text(
                "SELECT type, name, tbl_name, sql FROM sqlite_master "
                "WHERE name NOT LIKE 'sqlite_%' AND tbl_name != :version ORDER BY type, name"
            ),
            {"version": VERSION_TABLE},
        )
        return [tuple(row) for row in rows]
    schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    queries = [
        "SELECT table_name, column_name, ordinal_position, data_type, "
        "character_maximum_length, numeric_precision, is_nullable, column_default "
        "FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name != :version ORDER BY table_name, ordinal_position",
        "SELECT tablename, indexname, replace(indexdef, :prefix, '') FROM pg_indexes "
        "WHERE schemaname = current_schema() AND tablename != :version "
        "ORDER BY tablename, indexname",
        "SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid) "
        "FROM pg_constraint WHERE connamespace = current_schema()::regnamespace "
        "AND conrelid::regclass::text != :version ORDER BY 1, 2",
        "SELECT sequence_name, data_type FROM information_schema.sequences "
        "WHERE sequence_schema = current_schema() ORDER BY 1",
    ]
    found: list[tuple[Any, ...]] = []
    for query in queries:
        params = {"version": VERSION_TABLE, "prefix": f"{schema}."}
        found.extend(tuple(row) for row in conn.execute(text(query), params))
    return found


def legacy(url: str) -> None:
    """A database as tickvisor made it before migrations: create_all, no revision."""
    eng = create_engine(url)
    try:
        metadata.create_all(eng)
    finally:
        eng.dispose()


def has_version_table(eng: Engine) -> bool:
    return VERSION_TABLE in inspect(eng).get_table_names()


def tick_count(eng: Engine) -> int:
    with eng.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(ticks)).scalar_one())


def add_tick(eng: Engine) -> None:
    with eng.begin() as conn:
        insert_ticks(conn, [{"symbol": "EURUSD", "ts_ms": 1, "bid": 1.0, "ask": 1.1}])


@pytest.fixture
def second_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This tickvisor, but with a revision 0002 after the baseline (adds ``events.probe``)."""
    folder = tmp_path / "migrations"
    shutil.copytree(migrations.MIGRATIONS, folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "versions" / "0002_probe.py").write_text(
        '"""A probe column, to test upgrades past the baseline."""\n'
        "import sqlalchemy as sa\n"
        "from alembic import op\n\n"
        'revision = "0002"\n'
        'down_revision = "0001"\n'
        "branch_labels = None\n"
        "depends_on = None\n\n\n"
        "def upgrade() -> None:\n"
        '    with op.batch_alter_table("events") as batch:\n'
        '        batch.add_column(sa.Column("probe", sa.Integer(), nullable=True))\n\n\n'
        "def downgrade() -> None:\n"
        '    with op.batch_alter_table("events") as batch:\n'
        '        batch.drop_column("probe")\n'
    )
    monkeypatch.setattr(migrations, "MIGRATIONS", folder)
    migrations._script.cache_clear()
    yield
    migrations._script.cache_clear()


# --- a new database -----------------------------------------------------------------


def test_the_scripts_have_one_head_the_baseline() -> None:
    assert head() == BASELINE == "0001"
    assert (migrations.MIGRATIONS / "env.py").is_file()
    assert (migrations.MIGRATIONS / "script.py.mako").is_file()


def test_an_empty_database_is_migrated_to_head_on_first_use(db_url: str) -> None:
    eng = open_database(db_url)
    try:
        assert current(eng) == head()
        assert schema_state(eng).kind == "head"
        with eng.connect() as conn:
            assert differences_from_metadata(conn) == []
            if conn.dialect.name == "postgresql":
                for default in txid_defaults(conn).values():
                    assert "pg_current_xact_id()" in default
    finally:
        eng.dispose()


def test_the_migrated_schema_is_what_create_all_makes(db_url: str, other_url: str) -> None:
    """Byte for byte in the catalogs: AUTOINCREMENT, partial index, txid defaults, names."""
    migrated = open_database(db_url)
    made = create_engine(other_url)
    try:
        metadata.create_all(made)
        with migrated.connect() as a, made.connect() as b:
            assert catalog(a) == catalog(b)
            assert len(catalog(a)) > 16
    finally:
        migrated.dispose()
        made.dispose()


def test_the_baseline_replayed_as_metadata_matches_a_migrated_database(db_url: str) -> None:
    eng = open_database(db_url)
    try:
        with eng.connect() as conn:
            baseline = migrations.baseline_metadata(conn.dialect.name)
            assert set(baseline.tables) == set(metadata.tables)
            assert migrations._differences(conn, baseline) == []
    finally:
        eng.dispose()


def test_upgrade_twice_is_a_no_op(raw: Engine) -> None:
    assert upgrade(raw) == head()
    add_tick(raw)
    with raw.connect() as conn:
        before = catalog(conn)
    assert upgrade(raw) == head()
    assert upgrade(raw) == head()
    with raw.connect() as conn:
        assert catalog(conn) == before
        versions = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    assert versions == [head()]
    assert tick_count(raw) == 1


def test_racing_starts_on_an_empty_database_all_succeed(db_url: str) -> None:
    engines = [make_engine(db_url) for _ in range(4)]
    barrier = threading.Barrier(len(engines))
    errors: list[BaseException] = []

    def start(eng: Engine) -> None:
        try:
            barrier.wait(timeout=10)
            open_database(eng.url).dispose()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(eng,)) for eng in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert errors == []
        assert current(engines[0]) == head()
        with engines[0].connect() as conn:
            rows = conn.execute(text(f"SELECT count(*) FROM {VERSION_TABLE}")).scalar_one()
        assert rows == 1
    finally:
        for eng in engines:
            eng.dispose()


def test_a_table_dropped_at_head_is_recreated_on_start(db_url: str) -> None:
    eng = open_database(db_url)
    try:
        ticks.drop(eng)
        assert schema_state(eng).missing == ("ticks",)
        open_database(db_url).dispose()
        assert schema_state(eng).missing == ()
        with eng.connect() as conn:
            assert differences_from_metadata(conn) == []
    finally:
        eng.dispose()


def test_check_only_refuses_an_empty_database_and_creates_nothing(raw: Engine) -> None:
    with pytest.raises(SchemaMismatch, match="no tickvisor schema yet") as caught:
        open_database(raw.url, migrate=False)
    assert "tickvisor db upgrade --db" in str(caught.value)
    assert inspect(raw).get_table_names() == []
    assert current(raw) is None
    upgrade(raw)
    open_database(raw.url, migrate=False).dispose()
    check_schema(raw)


# --- a database this tickvisor was not written for ----------------------------------


def test_an_older_revision_is_refused_then_upgraded(
    raw: Engine, second_revision: None, db_url: str
) -> None:
    with raw.begin() as conn:
        # What the released tickvisor (head 0001) would have made.
        command.upgrade(migrations.alembic_config(conn), BASELINE)
    add_tick(raw)

    with pytest.raises(SchemaMismatch) as caught:
        open_database(db_url)
    message = str(caught.value)
    assert "is at revision 0001 but this tickvisor needs 0002" in message
    assert "run `tickvisor db upgrade --db " in message
    assert isinstance(caught.value, DatabaseUnavailable)
    assert (caught.value.found, caught.value.needed) == ("0001", "0002")
    assert current(raw) == "0001"  # refused, not touched

    assert upgrade(raw) == "0002"
    assert current(raw) == "0002"
    assert "probe" in {c["name"] for c in inspect(raw).get_columns("events")}
    assert tick_count(raw) == 1
    open_database(db_url).dispose()
    assert upgrade(raw) == "0002"


def test_an_unknown_revision_is_refused_by_start_and_by_upgrade(raw: Engine, db_url: str) -> None:
    upgrade(raw)
    with raw.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = 'f00d'"))
    for attempt in (lambda: open_database(db_url), lambda: upgrade(raw)):
        with pytest.raises(
            SchemaMismatch, match="revision f00d, which this tickvisor does not know"
        ):
            attempt()
    assert current(raw) == "f00d"
    assert schema_state(raw).kind == "unknown"


def test_the_message_never_shows_the_password(db_url: str) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite URLs carry no password")
    url = make_url(db_url)
    # A server that trusts the test user ignores a password it did not ask for.
    password = url.password or "s3cret-pw"
    url = url.set(password=password)
    legacy(url.render_as_string(hide_password=False))
    with pytest.raises(SchemaMismatch) as caught:
        open_database(url)
    assert str(password) not in str(caught.value)
    assert "***" in str(caught.value)


def test_migrating_logs_only_dotted_tickvisor_events(
    raw: Engine, second_revision: None, db_url: str
) -> None:
    """Alembic's own free-text INFO lines must not reach the JSON log."""
    with raw.begin() as conn:
        command.upgrade(migrations.alembic_config(conn), BASELINE)
    stream = io.StringIO()
    configure_logging("json", "DEBUG", stream=stream)
    try:
        upgrade(raw)
        open_database(db_url).dispose()
    finally:
        configure_logging("json", "INFO")
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    ours = [e for e in events if e.get("logger", "").startswith("tickvisor")]
    assert [e["event"] for e in ours] == ["schema.upgraded"]
    assert (ours[0]["from_revision"], ours[0]["to_revision"]) == ("0001", "0002")
    assert not [e for e in events if e.get("logger", "").startswith("alembic")]


# --- a database made before migrations ----------------------------------------------


def test_a_pre_migration_database_is_refused_on_start_and_left_alone(
    db_url: str, raw: Engine
) -> None:
    legacy(db_url)
    add_tick(raw)
    with pytest.raises(SchemaMismatch) as caught:
        open_database(db_url)
    message = str(caught.value)
    assert "no schema revision" in message
    assert "before migrations" in message
    assert "run `tickvisor db upgrade --db " in message
    assert caught.value.found is None
    assert not has_version_table(raw)


def test_upgrade_adopts_a_pre_migration_database_that_matches_the_baseline(
    db_url: str, raw: Engine
) -> None:
    legacy(db_url)
    add_tick(raw)
    assert upgrade(raw) == head()
    assert current(raw) == head()
    assert tick_count(raw) == 1
    open_database(db_url).dispose()
    with raw.connect() as conn:
        assert differences_from_metadata(conn) == []


def _as_before_the_alerting_change(eng: Engine) -> None:
    """alert_outbox in its first layout; later tables missing; the old sentiment index."""
    with eng.begin() as conn:
        for name in ("alert_outbox", "alert_notifications", "alert_deliveries", "depth_metrics_1m"):
            conn.execute(text(f"DROP TABLE {name}"))
        conn.execute(text("DROP INDEX ix_sentiment_metrics_fresh_ts_ms"))
        conn.execute(
            text(
                "CREATE INDEX ix_sentiment_metrics_stale_ts_ms ON sentiment_metrics (stale, ts_ms)"
            )
        )
        old = MetaData()
        Table(
            "alert_outbox",
            old,
            Column("alert_id", String(64), primary_key=True),
            Column("created_ms", BigInteger, nullable=False),
            Column("severity", String(16), nullable=False),
            Column("service", String(64), nullable=True),
            Column("payload", JSON, nullable=False),
            Column("status", String(16), nullable=False, server_default=text("'pending'")),
            Column("attempts", Integer, nullable=False, server_default=text("0")),
            Column("updated_ms", BigInteger, nullable=False),
            Index("ix_alert_outbox_status_created_ms", "status", "created_ms"),
        )
        old.create_all(conn)


def migrated_catalog(url: str) -> list[tuple[Any, ...]]:
    eng = open_database(url)
    try:
        with eng.connect() as conn:
            return catalog(conn)
    finally:
        eng.dispose()


def test_upgrade_repairs_a_database_from_before_the_alerting_change(
    db_url: str, raw: Engine, other_url: str
) -> None:
    legacy(db_url)
    add_tick(raw)
    _as_before_the_alerting_change(raw)

    assert upgrade(raw) == head()
    assert tick_count(raw) == 1
    assert "group_key" in {c["name"] for c in inspect(raw).get_columns("alert_outbox")}
    with raw.connect() as conn:
        assert differences_from_metadata(conn) == []
        assert catalog(conn) == migrated_catalog(other_url)
    open_database(db_url).dispose()


def test_upgrade_restores_the_where_of_a_partial_index(
    db_url: str, raw: Engine, other_url: str
) -> None:
    """Alembic does not compare WHERE clauses; adoption checks them itself."""
    legacy(db_url)
    with raw.begin() as conn:
        conn.execute(text("DROP INDEX ix_sentiment_metrics_fresh_ts_ms"))
        conn.execute(
            text("CREATE INDEX ix_sentiment_metrics_fresh_ts_ms ON sentiment_metrics (ts_ms)")
        )
    upgrade(raw)
    with raw.connect() as conn:
        assert catalog(conn) == migrated_catalog(other_url)


def test_an_old_alert_outbox_with_rows_is_refused_and_nothing_changes(
    db_url: str, raw: Engine
) -> None:
    legacy(db_url)
    _as_before_the_alerting_change(raw)
    with raw.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO alert_outbox (alert_id, created_ms, severity, payload, updated_ms) "
                "VALUES ('a1', 1, 'critical', '{}', 1)"
            )
        )
    with raw.connect() as conn:
        before = catalog(conn)

    with pytest.raises(SchemaMismatch, match="alert_outbox has the layout from before") as caught:
        upgrade(raw)
    assert "1 rows" in str(caught.value)
    with raw.connect() as conn:
        assert catalog(conn) == before  # the missing tables were not created either
    assert not has_version_table(raw)


def test_an_unrepairable_pre_migration_database_is_refused_with_the_differences(
    db_url: str, raw: Engine
) -> None:
    """The very first ticks layout had neither tick_key nor txid: no safe way to fill them."""
    legacy(db_url)
    with raw.begin() as conn:
        conn.execute(text("DROP TABLE ticks"))
        conn.execute(
            text(
                "CREATE TABLE ticks (id INTEGER PRIMARY KEY, symbol VARCHAR(32) NOT NULL, "
                "ts_ms BIGINT NOT NULL, bid FLOAT NOT NULL, ask FLOAT NOT NULL, price FLOAT, "
                "volume FLOAT, source VARCHAR(64))"
            )
        )
    with raw.connect() as conn:
        before = catalog(conn)

    with pytest.raises(SchemaMismatch) as caught:
        upgrade(raw)
    message = str(caught.value)
    assert "column ticks.tick_key is missing" in message
    assert "column ticks.txid is missing" in message
    assert "tickvisor db upgrade --db" in message
    with raw.connect() as conn:
        assert catalog(conn) == before
    assert not has_version_table(raw)
