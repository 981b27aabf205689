"""Claiming the next batch of an append-only input table, exactly once, on both dialects.

Every input table (``ticks``, ``depth_snapshots``, ``sentiment_raw``) has
``symbol``, an autoincrement ``id`` and the writing transaction's ``txid``,
indexed as (symbol, txid, id). A job's cursor is a :class:`TickPosition` in
that order; a batch is "the next N rows past the cursor", and the job moves
the cursor to the batch's last row in the transaction that writes the
batch's results. This module holds that claim logic once for every job.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Table,
    and_,
    literal,
    or_,
    select,
    text,
    tuple_,
)

from tickvisor.store.cursors import TickPosition


def visible_horizon(conn: Connection) -> int | None:
    """The oldest transaction id still running on PostgreSQL; None on SQLite.

    PostgreSQL hands out ids from a sequence when a row is inserted, not
    when its transaction commits, so a row with a *lower* id can become
    visible after one with a higher id, and an "id > last id seen" cursor
    would skip it for ever. Every transaction older than this horizon has
    finished, so rows written by one can never appear later: consuming only
    rows with ``txid`` below it, in (txid, id) order, misses nothing. On
    SQLite writers are serialised and ids become visible in order.
    """
    if conn.dialect.name != "postgresql":
        return None
    horizon = conn.execute(
        text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
    ).scalar_one()
    return int(horizon)


def position_range(
    table: Table,
    symbol: str,
    after: TickPosition,
    through: TickPosition | None,
    by_txid: bool,
) -> ColumnElement[bool]:
    """Rows of ``symbol`` past ``after`` (and up to ``through``), in index-friendly form.

    Without transaction ids (SQLite: every ``txid`` is 0) the id alone orders
    rows; spelling that out as ``txid = 0 AND id > ?`` lets SQLite seek the
    (symbol, txid, id) index, which it does not do for a row-value range.
    PostgreSQL seeks a row comparison directly.
    """
    c = table.c
    if not by_txid:
        bounds = [c.txid == after.txid, c.id > after.id]
        if through is not None:
            bounds.append(c.id <= through.id)
        return and_(c.symbol == symbol, *bounds)
    if through is None:
        position = tuple_(c.txid, c.id)
        return and_(
            c.symbol == symbol,
            c.txid >= after.txid,
            position > tuple_(literal(after.txid), literal(after.id)),
        )
    # Spelled out as index ranges, not row comparisons: PostgreSQL estimates
    # a two-sided row comparison at one row and picks a plan five times slower.
    if after.txid == through.txid:  # the usual case: one writing transaction
        return and_(c.symbol == symbol, c.txid == after.txid, c.id > after.id, c.id <= through.id)
    return and_(
        c.symbol == symbol,
        or_(
            and_(c.txid == after.txid, c.id > after.id),
            and_(c.txid > after.txid, c.txid < through.txid),
            and_(c.txid == through.txid, c.id <= through.id),
        ),
    )


def claim_end(
    conn: Connection,
    table: Table,
    symbol: str,
    after: TickPosition,
    *,
    horizon: int | None,
    batch: int,
) -> TickPosition | None:
    """The position of the last row the next batch claims, or None when there is none."""
    c = table.c
    query = select(c.txid, c.id).where(
        position_range(table, symbol, after, None, by_txid=horizon is not None)
    )
    if horizon is not None:
        query = query.where(c.txid < horizon)
    row = conn.execute(query.order_by(c.txid, c.id).offset(batch - 1).limit(1)).first()
    if row is None:
        row = conn.execute(query.order_by(c.txid.desc(), c.id.desc()).limit(1)).first()
    return None if row is None else TickPosition(int(row[0]), int(row[1]))


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction set up for a job's read-then-write statements."""
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            # Take the write lock first. A deferred transaction that reads and
            # then writes fails at once with "database is locked" when another
            # connection (the feed, an import) committed in between; waiting
            # for the lock up front lets busy_timeout do its job instead.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            # These statements are many and short; PostgreSQL's cost model
            # overrates them and spends more time JIT-compiling than running.
            conn.execute(text("SET LOCAL jit = off"))
            # Two jobs on one symbol (cron beside the service) wait for each
            # other's rows; bounded, so a stuck one fails the pass instead.
            conn.execute(text("SET LOCAL lock_timeout = '30s'"))
        yield conn


__all__ = ["claim_end", "position_range", "visible_horizon", "write_transaction"]
