"""Writing one batch of ticks and its quarantined lines, in one transaction.

Both writers insert with ``ON CONFLICT (symbol, ts_ms, tick_key) DO NOTHING``
and quarantine with ``ON CONFLICT (source, line) DO NOTHING``, and commit a
batch's ticks together with its quarantine rows. So an import killed half
way through and run again re-inserts nothing it had committed, and a file
imported twice changes nothing the second time.

Each dialect gets the fastest path its driver offers:

* SQLite: multi-row ``INSERT ... VALUES (...), (...)`` statements run with
  ``executemany`` on the sqlite3 connection itself, their parameters made
  by numpy. SQLAlchemy's per-row parameter processing, or one statement
  per row, would cost more than SQLite's inserting.
* PostgreSQL: the batch goes in as one binary ``COPY`` (built with numpy,
  no per-row Python) into a temporary staging table, then one
  ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` moves it into ``ticks``.
  COPY cannot skip conflicts itself, hence the staging table.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection

from tickvisor.ingest.validate import TickBatch
from tickvisor.store.schema import tick_quarantine, upsert
from tickvisor.store.ticks import tick_keys

Int64Array = npt.NDArray[np.int64]
Float64Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class TickRows:
    """The valid ticks of a batch, column by column; NaN price/volume means none."""

    symbols: list[str]
    symbol_code: Int64Array
    line: Int64Array
    ts_ms: Int64Array
    bid: Float64Array
    ask: Float64Array
    price: Float64Array
    volume: Float64Array
    tick_key: Int64Array

    @classmethod
    def from_batch(cls, batch: TickBatch) -> TickRows:
        ok = batch.valid
        bid, ask, price, volume = batch.bid[ok], batch.ask[ok], batch.price[ok], batch.volume[ok]
        return cls(
            symbols=batch.symbols,
            symbol_code=batch.symbol_code[ok],
            line=batch.lines.line_numbers()[ok],
            ts_ms=batch.ts_ms[ok],
            bid=bid,
            ask=ask,
            price=price,
            volume=volume,
            tick_key=tick_keys(bid, ask, price, volume),
        )

    def __len__(self) -> int:
        return len(self.ts_ms)


class BatchWriter(Protocol):
    def write(self, rows: TickRows, quarantine: Sequence[dict[str, Any]]) -> int:
        """Write the batch in one transaction; returns how many ticks were new."""
        ...


def writer_for(conn: Connection, source: str) -> BatchWriter:
    """The writer for ``conn``'s database; ``source`` fills ``ticks.source``."""
    dialect = conn.dialect.name
    if dialect == "sqlite":
        return SqliteWriter(conn, source)
    if dialect == "postgresql":
        return PostgresWriter(conn, source)
    raise NotImplementedError(f"tick import: unsupported database dialect {dialect!r}")


def _quarantine(conn: Connection, records: Sequence[dict[str, Any]]) -> None:
    if records:
        upsert(conn, tick_quarantine, records, index_elements=("source", "line"), update_columns=())


SQLITE_COLUMNS = ("symbol", "ts_ms", "bid", "ask", "price", "volume", "source", "tick_key")
#: Rows per INSERT statement, at most: fewer if the SQLite library allows fewer
#: parameters per statement (before 3.32 the limit was 999, i.e. 124 rows).
SQLITE_ROWS_PER_STATEMENT = 250


@functools.lru_cache(maxsize=8)
def sqlite_insert(rows: int) -> str:
    """An INSERT of ``rows`` rows in one multi-row VALUES list, skipping stored ticks."""
    values = ", ".join(["(" + ", ".join("?" * len(SQLITE_COLUMNS)) + ")"] * rows)
    return (
        f"INSERT INTO ticks ({', '.join(SQLITE_COLUMNS)}) VALUES {values} "
        "ON CONFLICT (symbol, ts_ms, tick_key) DO NOTHING"
    )


def sqlite_parameters(rows: TickRows, source: str) -> list[Any]:
    """The batch's values row after row in one flat list (NaN price/volume as None).

    Filling an object array column by column converts numpy values to the
    Python ints and floats sqlite3 binds, in C, without a Python loop.
    """
    cells = np.empty((len(rows), len(SQLITE_COLUMNS)), dtype=object)
    if len(rows.symbols) == 1:
        cells[:, 0] = rows.symbols[0]
    else:
        cells[:, 0] = np.asarray(rows.symbols, dtype=object)[rows.symbol_code]
    cells[:, 1] = rows.ts_ms
    cells[:, 2] = rows.bid
    cells[:, 3] = rows.ask
    for column, values in ((4, rows.price), (5, rows.volume)):
        missing = np.isnan(values)
        cells[:, column] = None if missing.all() else values
        if missing.any():
            cells[missing, column] = None
    cells[:, 6] = source
    cells[:, 7] = rows.tick_key
    return cells.ravel().tolist()


class SqliteWriter:
    """Multi-row INSERTs straight on the sqlite3 connection, in file order.

    One statement per row (a plain ``executemany``) spends more time in
    sqlite3's per-statement bookkeeping than in SQLite inserting the row;
    a few hundred rows per statement all but removes that overhead.
    """

    def __init__(self, conn: Connection, source: str) -> None:
        self._conn = conn
        self._source = source
        raw: Any = conn.connection.driver_connection
        limit = int(raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
        self._rows_per_statement = max(
            1, min(SQLITE_ROWS_PER_STATEMENT, limit // len(SQLITE_COLUMNS))
        )

    def write(self, rows: TickRows, quarantine: Sequence[dict[str, Any]]) -> int:
        with self._conn.begin():
            raw: Any = self._conn.connection.driver_connection
            before = int(raw.total_changes)
            if len(rows):
                flat = sqlite_parameters(rows, self._source)
                step = self._rows_per_statement * len(SQLITE_COLUMNS)
                whole = len(flat) - len(flat) % step
                raw.executemany(
                    sqlite_insert(self._rows_per_statement),
                    (flat[i : i + step] for i in range(0, whole, step)),
                )
                if whole < len(flat):
                    rest = flat[whole:]
                    raw.execute(sqlite_insert(len(rest) // len(SQLITE_COLUMNS)), rest)
            inserted = int(raw.total_changes) - before
            _quarantine(self._conn, quarantine)
        return inserted


STAGING = "tickvisor_import_staging"

# Binary COPY: a signature and header, then per row a field count and, per
# field, its byte length and big-endian value; then a trailer. Every staged
# column is fixed-width and never NULL (NaN stands for NULL and is turned
# back into NULL by the INSERT), so a whole batch is one numpy record array.
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_COPY_TRAILER = b"\xff\xff"
_STAGED = (
    ("line", ">i8", "bigint"),
    ("sym", ">i4", "integer"),
    ("ts_ms", ">i8", "bigint"),
    ("bid", ">f8", "double precision"),
    ("ask", ">f8", "double precision"),
    ("price", ">f8", "double precision"),
    ("volume", ">f8", "double precision"),
    ("tick_key", ">i8", "bigint"),
)
_RECORD = np.dtype(
    [("nfields", ">i2")]
    + [part for name, code, _ in _STAGED for part in ((f"{name}_len", ">i4"), (name, code))]
)

PG_CREATE_STAGING = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGING} ("
    + ", ".join(f"{name} {sql} NOT NULL" for name, _, sql in _STAGED)
    + ") ON COMMIT DELETE ROWS"
)
PG_COPY = f"COPY {STAGING} ({', '.join(n for n, _, _ in _STAGED)}) FROM STDIN (FORMAT BINARY)"
# ORDER BY line: ids follow the file's order, so same-millisecond ticks keep it.
PG_INSERT = (
    "INSERT INTO ticks (symbol, ts_ms, bid, ask, price, volume, source, tick_key) "
    "SELECT (%s::text[])[s.sym + 1], s.ts_ms, s.bid, s.ask, "
    "NULLIF(s.price, 'NaN'::float8), NULLIF(s.volume, 'NaN'::float8), %s, s.tick_key "
    f"FROM {STAGING} AS s ORDER BY s.line "
    "ON CONFLICT (symbol, ts_ms, tick_key) DO NOTHING"
)


def copy_payload(rows: TickRows) -> bytes:
    """The batch as one PostgreSQL binary COPY stream."""
    records = np.empty(len(rows), dtype=_RECORD)
    records["nfields"] = len(_STAGED)
    columns: dict[str, npt.NDArray[Any]] = {
        "line": rows.line,
        "sym": rows.symbol_code,
        "ts_ms": rows.ts_ms,
        "bid": rows.bid,
        "ask": rows.ask,
        "price": rows.price,
        "volume": rows.volume,
        "tick_key": rows.tick_key,
    }
    for name, code, _ in _STAGED:
        records[f"{name}_len"] = np.dtype(code).itemsize
        records[name] = columns[name]
    return _COPY_SIGNATURE + records.tobytes() + _COPY_TRAILER


class PostgresWriter:
    """Binary COPY into a session-private staging table, then one INSERT ... SELECT."""

    def __init__(self, conn: Connection, source: str) -> None:
        self._conn = conn
        self._source = source
        self._staging_ready = False

    def write(self, rows: TickRows, quarantine: Sequence[dict[str, Any]]) -> int:
        inserted = 0
        with self._conn.begin():
            raw: Any = self._conn.connection.driver_connection
            if len(rows):
                with raw.cursor() as cur:
                    if not self._staging_ready:
                        cur.execute(PG_CREATE_STAGING)
                    with cur.copy(PG_COPY) as copy:
                        copy.write(copy_payload(rows))
                    cur.execute(PG_INSERT, (rows.symbols, self._source))
                    inserted = max(0, int(cur.rowcount))
            _quarantine(self._conn, quarantine)
        # Only now is the staging table known to exist (its CREATE has committed).
        self._staging_ready = self._staging_ready or bool(len(rows))
        return inserted


__all__ = [
    "BatchWriter",
    "PostgresWriter",
    "SqliteWriter",
    "TickRows",
    "copy_payload",
    "writer_for",
]
