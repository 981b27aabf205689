"""Baseline: the schema tickvisor created with ``create_all`` before it had migrations.

Revision ID: 0001
Revises:
Create Date: 2026-11-20

Written out by hand and frozen: every type, default, index and constraint
name is spelled here rather than imported from :mod:`tickvisor.store.schema`,
because that module describes the newest schema and an old database must get
exactly what this revision created when it was released. A test checks that
a database migrated to head equals the live metadata, so the two cannot drift
apart unnoticed.

The statements go through :func:`create`, which takes the ``Operations`` to
use: :mod:`tickvisor.store.migrate` replays them into a ``MetaData`` to judge
whether a database made before migrations already has this layout (and so
can simply be stamped 0001).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from alembic.operations import Operations

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the whole schema on an empty database."""
    create(Operations(op.get_context()))


def downgrade() -> None:
    """Refuse: below the baseline there is no schema, so this would drop every table."""
    raise NotImplementedError(
        "tickvisor does not downgrade below its baseline (it would drop every table); "
        "restore a backup instead"
    )


def create(ops: Operations) -> None:
    """Every table and index of the baseline, in the dialect of ``ops``' context."""
    postgres = ops.get_context().dialect.name == "postgresql"
    # SQLite only turns ``INTEGER PRIMARY KEY`` (not BIGINT) into an auto-assigned rowid.
    id_type = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    # Float(53) is a double on both dialects, so prices survive a round trip bit for bit.
    double = sa.Float(53)
    # On PostgreSQL each input row records the id of the transaction that wrote
    # it (what lets an "after (txid, id)" cursor skip nothing; see
    # tickvisor.store.claims). SQLite serialises writers, so 0 does there.
    # schema.py sets the same default through an after_create DDL event.
    txid_default = sa.text("(pg_current_xact_id()::text::bigint)") if postgres else sa.text("0")

    ops.create_table(
        "ticks",
        sa.Column("id", id_type, autoincrement=True, nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("bid", double, nullable=False),
        sa.Column("ask", double, nullable=False),
        sa.Column("price", double, nullable=True),
        sa.Column("volume", double, nullable=True),
        sa.Column("source", sa.String(64), nullable=True),
        sa.Column("tick_key", sa.BigInteger(), nullable=False),
        sa.Column("txid", sa.BigInteger(), server_default=txid_default, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ticks"),
        # Without AUTOINCREMENT SQLite may hand a deleted max id out again,
        # and an "id > cursor" reader would skip the row.
        sqlite_autoincrement=True,
    )
    ops.create_index(
        "ix_ticks_symbol_ts_ms_tick_key", "ticks", ["symbol", "ts_ms", "tick_key"], unique=True
    )
    ops.create_index("ix_ticks_symbol_txid_id", "ticks", ["symbol", "txid", "id"])

    ops.create_table(
        "tick_quarantine",
        sa.Column("id", id_type, autoincrement=True, nullable=False),
        sa.Column("source", sa.String(512), nullable=False),
        sa.Column("line", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("detail", sa.String(500), nullable=True),
        sa.Column("raw", sa.String(1000), nullable=True),
        sa.Column("imported_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tick_quarantine"),
    )
    ops.create_index(
        "ix_tick_quarantine_source_line", "tick_quarantine", ["source", "line"], unique=True
    )

    ops.create_table(
        "candles",
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("timeframe", sa.String(8), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("open", double, nullable=False),
        sa.Column("high", double, nullable=False),
        sa.Column("low", double, nullable=False),
        sa.Column("close", double, nullable=False),
        sa.Column("volume", double, server_default=sa.text("0"), nullable=False),
        sa.Column("tick_count", sa.Integer(), nullable=False),
        sa.Column("last_tick_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("symbol", "timeframe", "ts_ms", name="pk_candles"),
    )

    ops.create_table(
        "depth_snapshots",
        sa.Column("id", id_type, autoincrement=True, nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("provider", sa.String(64), server_default=sa.text("''"), nullable=False),
        sa.Column("bids", sa.Text(), nullable=False),
        sa.Column("asks", sa.Text(), nullable=False),
        sa.Column("txid", sa.BigInteger(), server_default=txid_default, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_depth_snapshots"),
        sqlite_autoincrement=True,
    )
    ops.create_index(
        "ix_depth_snapshots_symbol_ts_ms_provider",
        "depth_snapshots",
        ["symbol", "ts_ms", "provider"],
        unique=True,
    )
    ops.create_index(
        "ix_depth_snapshots_symbol_txid_id", "depth_snapshots", ["symbol", "txid", "id"]
    )

    ops.create_table(
        "depth_metrics",
        sa.Column("snapshot_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("best_bid", double, nullable=False),
        sa.Column("best_ask", double, nullable=False),
        sa.Column("mid", double, nullable=False),
        sa.Column("spread", double, nullable=False),
        sa.Column("spread_bps", double, nullable=False),
        sa.Column("bid_depth", double, nullable=False),
        sa.Column("ask_depth", double, nullable=False),
        sa.Column("imbalance", double, nullable=True),
        sa.Column("microprice", double, nullable=True),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("snapshot_id", name="pk_depth_metrics"),
    )
    ops.create_index("ix_depth_metrics_symbol_ts_ms", "depth_metrics", ["symbol", "ts_ms"])

    ops.create_table(
        "depth_metrics_1m",
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("spread_mean", double, nullable=False),
        sa.Column("spread_max", double, nullable=False),
        sa.Column("imbalance_mean", double, nullable=True),
        sa.Column("last_mid", double, nullable=False),
        sa.Column("snapshot_count", sa.Integer(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("symbol", "ts_ms", name="pk_depth_metrics_1m"),
    )

    ops.create_table(
        "depth_quarantine",
        sa.Column("snapshot_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("detail", sa.String(500), nullable=True),
        sa.Column("quarantined_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("snapshot_id", name="pk_depth_quarantine"),
    )
    ops.create_index("ix_depth_quarantine_symbol_reason", "depth_quarantine", ["symbol", "reason"])

    ops.create_table(
        "sentiment_raw",
        sa.Column("id", id_type, autoincrement=True, nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("provider", sa.String(64), server_default=sa.text("''"), nullable=False),
        sa.Column("long_pct", double, nullable=True),
        sa.Column("short_pct", double, nullable=True),
        sa.Column("total_traders", sa.BigInteger(), nullable=True),
        sa.Column("txid", sa.BigInteger(), server_default=txid_default, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sentiment_raw"),
        sqlite_autoincrement=True,
    )
    ops.create_index(
        "ix_sentiment_raw_symbol_ts_ms_provider",
        "sentiment_raw",
        ["symbol", "ts_ms", "provider"],
        unique=True,
    )
    ops.create_index("ix_sentiment_raw_symbol_txid_id", "sentiment_raw", ["symbol", "txid", "id"])

    ops.create_table(
        "sentiment_metrics",
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("long_pct", double, nullable=False),
        sa.Column("short_pct", double, nullable=False),
        sa.Column("total_traders", sa.BigInteger(), nullable=True),
        sa.Column("providers", sa.Integer(), nullable=False),
        sa.Column("ma_5m", double, nullable=False),
        sa.Column("ma_15m", double, nullable=False),
        sa.Column("ma_1h", double, nullable=False),
        sa.Column("change_1h", double, nullable=True),
        sa.Column("signal", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("stale", sa.Boolean(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("symbol", "ts_ms", name="pk_sentiment_metrics"),
    )
    # Partial: only the rows not yet stale, which is all each pass's stale
    # refresh looks at, so marking rows stale never touches older history.
    ops.create_index(
        "ix_sentiment_metrics_fresh_ts_ms",
        "sentiment_metrics",
        ["ts_ms"],
        sqlite_where=sa.text("stale = 0"),
        postgresql_where=sa.text("NOT stale"),
    )

    ops.create_table(
        "sentiment_quarantine",
        sa.Column("raw_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("detail", sa.String(500), nullable=True),
        sa.Column("quarantined_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("raw_id", name="pk_sentiment_quarantine"),
    )
    ops.create_index(
        "ix_sentiment_quarantine_symbol_reason", "sentiment_quarantine", ["symbol", "reason"]
    )

    ops.create_table(
        "progress_cursors",
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("txid", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("service", "key", name="pk_progress_cursors"),
    )

    ops.create_table(
        "events",
        sa.Column("id", id_type, autoincrement=True, nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("service", sa.String(64), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    ops.create_index("ix_events_ts_ms", "events", ["ts_ms"])

    ops.create_table(
        "alert_outbox",
        sa.Column("alert_id", sa.String(64), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("service", sa.String(64), nullable=True),
        sa.Column("group_key", sa.String(200), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("notification_id", sa.String(64), nullable=True),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("alert_id", name="pk_alert_outbox"),
    )
    ops.create_index("ix_alert_outbox_status_created_ms", "alert_outbox", ["status", "created_ms"])
    ops.create_index("ix_alert_outbox_notification_id", "alert_outbox", ["notification_id"])

    ops.create_table(
        "alert_notifications",
        sa.Column("notification_id", sa.String(64), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("group_key", sa.String(200), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("notification_id", name="pk_alert_notifications"),
    )

    ops.create_table(
        "alert_deliveries",
        sa.Column("notification_id", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_attempt_ms", sa.BigInteger(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.PrimaryKeyConstraint("notification_id", "channel", name="pk_alert_deliveries"),
    )
    ops.create_index(
        "ix_alert_deliveries_status_next_attempt_ms",
        "alert_deliveries",
        ["status", "next_attempt_ms"],
    )

    ops.create_table(
        "service_generations",
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("started_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("service", name="pk_service_generations"),
    )
