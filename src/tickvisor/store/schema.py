"""The tables, in SQLAlchemy Core, and the one dialect-aware upsert.

Everything lives on one :data:`metadata` so ``create_all`` builds the whole
database and tests can drop it in one call. Timestamps are integer UTC
milliseconds (BIGINT): they compare, bucket and index the same way on SQLite
and PostgreSQL, with no time-zone or driver conversion in between.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    DDL,
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    event,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite

#: Explicit constraint names, so a later migration can refer to them by name.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# SQLite only turns ``INTEGER PRIMARY KEY`` (not BIGINT) into an auto-assigned rowid.
_Id = BigInteger().with_variant(Integer, "sqlite")
# Float(53) is a double on both dialects, so prices survive a round trip bit for bit.
_Double = Float(53)

ticks = Table(
    "ticks",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("symbol", String(32), nullable=False),
    Column("ts_ms", BigInteger, nullable=False),
    Column("bid", _Double, nullable=False),
    Column("ask", _Double, nullable=False),
    Column("price", _Double, nullable=True),
    Column("volume", _Double, nullable=True),
    Column("source", String(64), nullable=True),
    # A hash of (bid, ask, price, volume): with symbol and ts_ms it identifies a
    # tick, so importing a file twice inserts nothing the second time while two
    # different ticks in the same millisecond are both kept.
    Column("tick_key", BigInteger, nullable=False),
    # The writing transaction's id on PostgreSQL (0 on SQLite, where writers are
    # serialised and ids become visible in order). PostgreSQL hands out ids
    # from a sequence that does not commit in order, so an "id > cursor" scan
    # could skip a tick committed late; (txid, id) below the oldest running
    # transaction is a position nothing can still appear behind.
    Column("txid", BigInteger, nullable=False, server_default=text("0")),
    Index(None, "symbol", "ts_ms", "tick_key", unique=True),
    Index(None, "symbol", "txid", "id"),
    # Incremental consumers keep "last id seen" cursors; without AUTOINCREMENT,
    # SQLite may hand a deleted max id out again and a cursor would skip the row.
    sqlite_autoincrement=True,
)


def _record_writing_transaction(table: Table) -> None:
    """On PostgreSQL every input row records the id of the transaction that wrote it.

    That is what lets a job's cursor skip nothing: see
    :func:`tickvisor.store.claims.visible_horizon`.
    """
    event.listen(
        table,
        "after_create",
        DDL(  # type: ignore[no-untyped-call]
            f"ALTER TABLE {table.name} ALTER COLUMN txid "
            "SET DEFAULT (pg_current_xact_id()::text::bigint)"
        ).execute_if(dialect="postgresql"),
    )


_record_writing_transaction(ticks)

tick_quarantine = Table(
    "tick_quarantine",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("source", String(512), nullable=False),
    Column("line", BigInteger, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("detail", String(500), nullable=True),
    Column("raw", String(1000), nullable=True),
    Column("imported_ms", BigInteger, nullable=False),
    # Re-importing a file quarantines each bad line once, not once per import.
    Index(None, "source", "line", unique=True),
)

candles = Table(
    "candles",
    metadata,
    Column("symbol", String(32), primary_key=True),
    Column("timeframe", String(8), primary_key=True),
    Column("ts_ms", BigInteger, primary_key=True),
    Column("open", _Double, nullable=False),
    Column("high", _Double, nullable=False),
    Column("low", _Double, nullable=False),
    Column("close", _Double, nullable=False),
    Column("volume", _Double, nullable=False, server_default=text("0")),
    Column("tick_count", Integer, nullable=False),
    # Time of the candle's last (closing) tick: how far into its bucket a
    # still-open candle has got, and what freshness lag is measured against.
    Column("last_tick_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=True),
)

# --- order-book depth -------------------------------------------------------------

#: Raw order-book snapshots as producers wrote them. ``bids`` and ``asks`` are
#: JSON text (lists of ``[price, size]``), kept as text on purpose: a producer
#: that writes malformed JSON must not fail its insert, the depth service
#: quarantines the row with its reason instead.
depth_snapshots = Table(
    "depth_snapshots",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("symbol", String(32), nullable=False),
    Column("ts_ms", BigInteger, nullable=False),
    Column("provider", String(64), nullable=False, server_default=text("''")),
    Column("bids", Text, nullable=False),
    Column("asks", Text, nullable=False),
    Column("txid", BigInteger, nullable=False, server_default=text("0")),
    # One snapshot per symbol, time and provider: importing a file twice adds nothing.
    Index(None, "symbol", "ts_ms", "provider", unique=True),
    Index(None, "symbol", "txid", "id"),
    sqlite_autoincrement=True,
)
_record_writing_transaction(depth_snapshots)

#: One row per processed snapshot (keyed by its id, so reprocessing overwrites).
depth_metrics = Table(
    "depth_metrics",
    metadata,
    Column("snapshot_id", BigInteger, primary_key=True, autoincrement=False),
    Column("symbol", String(32), nullable=False),
    Column("ts_ms", BigInteger, nullable=False),
    Column("best_bid", _Double, nullable=False),
    Column("best_ask", _Double, nullable=False),
    Column("mid", _Double, nullable=False),
    Column("spread", _Double, nullable=False),
    Column("spread_bps", _Double, nullable=False),
    Column("bid_depth", _Double, nullable=False),
    Column("ask_depth", _Double, nullable=False),
    #: (bid_depth - ask_depth) / (bid_depth + ask_depth); null when both are 0.
    Column("imbalance", _Double, nullable=True),
    #: Size-weighted mid of the top level; null when both top sizes are 0.
    Column("microprice", _Double, nullable=True),
    Column("updated_ms", BigInteger, nullable=False),
    Index(None, "symbol", "ts_ms"),
)

#: Per symbol and minute (``ts_ms`` is the minute's start), from ``depth_metrics``.
depth_metrics_1m = Table(
    "depth_metrics_1m",
    metadata,
    Column("symbol", String(32), primary_key=True),
    Column("ts_ms", BigInteger, primary_key=True),
    Column("spread_mean", _Double, nullable=False),
    Column("spread_max", _Double, nullable=False),
    Column("imbalance_mean", _Double, nullable=True),
    #: Mid of the minute's last snapshot by (ts_ms, snapshot id).
    Column("last_mid", _Double, nullable=False),
    Column("snapshot_count", Integer, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

#: Snapshots the depth service could not use, once each, with the reason.
depth_quarantine = Table(
    "depth_quarantine",
    metadata,
    Column("snapshot_id", BigInteger, primary_key=True, autoincrement=False),
    Column("symbol", String(32), nullable=False),
    Column("ts_ms", BigInteger, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("detail", String(500), nullable=True),
    Column("quarantined_ms", BigInteger, nullable=False),
    Index(None, "symbol", "reason"),
)

# --- sentiment ----------------------------------------------------------------------

#: Retail positioning as providers report it: the share of traders long and short.
#: Values are kept as written; out-of-range rows are quarantined by the service.
sentiment_raw = Table(
    "sentiment_raw",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("symbol", String(32), nullable=False),
    Column("ts_ms", BigInteger, nullable=False),
    Column("provider", String(64), nullable=False, server_default=text("''")),
    Column("long_pct", _Double, nullable=True),
    Column("short_pct", _Double, nullable=True),
    Column("total_traders", BigInteger, nullable=True),
    Column("txid", BigInteger, nullable=False, server_default=text("0")),
    Index(None, "symbol", "ts_ms", "provider", unique=True),
    Index(None, "symbol", "txid", "id"),
    sqlite_autoincrement=True,
)
_record_writing_transaction(sentiment_raw)

#: Per symbol and raw timestamp (providers reporting the same millisecond are averaged).
sentiment_metrics = Table(
    "sentiment_metrics",
    metadata,
    Column("symbol", String(32), primary_key=True),
    Column("ts_ms", BigInteger, primary_key=True),
    Column("long_pct", _Double, nullable=False),
    Column("short_pct", _Double, nullable=False),
    Column("total_traders", BigInteger, nullable=True),
    Column("providers", Integer, nullable=False),
    Column("ma_5m", _Double, nullable=False),
    Column("ma_15m", _Double, nullable=False),
    Column("ma_1h", _Double, nullable=False),
    #: long_pct minus long_pct as of one hour earlier; null when the hour is not covered.
    Column("change_1h", _Double, nullable=True),
    #: Contrarian signal: -1 when the crowd is heavily long, +1 when heavily short, else 0.
    Column("signal", Integer, nullable=False),
    Column("label", String(16), nullable=False),
    #: True once the row is older than ``max_age_seconds`` (refreshed every iteration).
    Column("stale", Boolean, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    # Only the rows not yet stale: what each pass's stale refresh looks at.
    # Small (the last max_age_seconds of readings) and ordered by time, so
    # marking rows stale never touches pages of older history.
    Index(
        "ix_sentiment_metrics_fresh_ts_ms",
        "ts_ms",
        sqlite_where=text("stale = 0"),
        postgresql_where=text("NOT stale"),
    ),
)

#: Raw sentiment rows the service could not use, once each, with the reason.
sentiment_quarantine = Table(
    "sentiment_quarantine",
    metadata,
    Column("raw_id", BigInteger, primary_key=True, autoincrement=False),
    Column("symbol", String(32), nullable=False),
    Column("ts_ms", BigInteger, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("detail", String(500), nullable=True),
    Column("quarantined_ms", BigInteger, nullable=False),
    Index(None, "symbol", "reason"),
)

progress_cursors = Table(
    "progress_cursors",
    metadata,
    Column("service", String(64), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("position", BigInteger, nullable=False),
    # Second half of a (txid, id) tick position; 0 where a plain id suffices.
    Column("txid", BigInteger, nullable=False, server_default=text("0")),
    Column("updated_ms", BigInteger, nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("ts_ms", BigInteger, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("service", String(64), nullable=True),
    Column("payload", JSON, nullable=False),
    Index(None, "ts_ms"),
)

#: One row per alert, written before anything else happens to it: the alert
#: actor's durable inbox. ``pending`` alerts wait in their group; a flush turns
#: them into a notification and marks them ``notified`` in the same transaction.
alert_outbox = Table(
    "alert_outbox",
    metadata,
    Column("alert_id", String(64), primary_key=True),
    Column("created_ms", BigInteger, nullable=False),
    Column("severity", String(16), nullable=False),
    Column("service", String(64), nullable=True),
    Column("group_key", String(200), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False, server_default=text("'pending'")),
    Column("notification_id", String(64), nullable=True),
    Column("updated_ms", BigInteger, nullable=False),
    Index(None, "status", "created_ms"),
    Index(None, "notification_id"),
)

#: What was (or is to be) sent: one row per notification, its rendered content.
alert_notifications = Table(
    "alert_notifications",
    metadata,
    Column("notification_id", String(64), primary_key=True),
    Column("created_ms", BigInteger, nullable=False),
    Column("group_key", String(200), nullable=False),
    Column("payload", JSON, nullable=False),
)

#: Per notification and channel: pending until delivered, dead-lettered or disabled.
alert_deliveries = Table(
    "alert_deliveries",
    metadata,
    Column("notification_id", String(64), primary_key=True),
    Column("channel", String(32), primary_key=True),
    Column("status", String(16), nullable=False, server_default=text("'pending'")),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_ms", BigInteger, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Column("last_error", String(500), nullable=True),
    Index(None, "status", "next_attempt_ms"),
)

service_generations = Table(
    "service_generations",
    metadata,
    Column("service", String(64), primary_key=True),
    Column("generation", BigInteger, nullable=False),
    Column("started_ms", BigInteger, nullable=True),
)


def upsert(
    conn: Connection,
    table: Table,
    values: Mapping[str, Any] | Sequence[Mapping[str, Any]] | Select[Any],
    index_elements: Sequence[str],
    update_columns: Sequence[str],
) -> int:
    """Insert rows, or overwrite ``update_columns`` where ``index_elements`` collide.

    Every write in tickvisor must be idempotent, and ``ON CONFLICT DO UPDATE``
    is how both supported dialects say so in one round trip. ``values`` may
    be a row, a list of rows (executemany), or a SELECT whose selected column
    names match the table's (``INSERT ... SELECT``), so per-row writes and the
    set-based candle aggregation share this one helper. Returns the driver's
    row count (rows inserted or updated).
    """
    dialect = conn.dialect.name
    if dialect == "sqlite":
        stmt: Any = sqlite.insert(table)
    elif dialect == "postgresql":
        stmt = postgresql.insert(table)
    else:
        raise NotImplementedError(f"upsert: unsupported database dialect {dialect!r}")
    # Without this, SQLAlchemy closes an INSERT's cursor before the row count is
    # read, and psycopg then reports -1.
    stmt = stmt.execution_options(preserve_rowcount=True)

    if isinstance(values, Select):
        stmt = stmt.from_select([c.name for c in values.selected_columns], values)
        return int(conn.execute(_on_conflict(stmt, index_elements, update_columns)).rowcount)
    if isinstance(values, Mapping):
        stmt = stmt.values(dict(values))
        return int(conn.execute(_on_conflict(stmt, index_elements, update_columns)).rowcount)
    rows = [dict(row) for row in values]
    if not rows:
        return 0
    result = conn.execute(_on_conflict(stmt, index_elements, update_columns), rows)
    # Some drivers report -1 for an executemany; every row was then written or updated.
    return int(result.rowcount) if result.rowcount >= 0 else len(rows)


def _on_conflict(stmt: Any, index_elements: Sequence[str], update_columns: Sequence[str]) -> Any:
    if not update_columns:
        return stmt.on_conflict_do_nothing(index_elements=list(index_elements))
    return stmt.on_conflict_do_update(
        index_elements=list(index_elements),
        set_={name: stmt.excluded[name] for name in update_columns},
    )


__all__ = [
    "alert_deliveries",
    "alert_notifications",
    "alert_outbox",
    "candles",
    "depth_metrics",
    "depth_metrics_1m",
    "depth_quarantine",
    "depth_snapshots",
    "events",
    "metadata",
    "progress_cursors",
    "sentiment_metrics",
    "sentiment_quarantine",
    "sentiment_raw",
    "service_generations",
    "tick_quarantine",
    "ticks",
    "upsert",
]
