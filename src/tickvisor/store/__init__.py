"""The database layer: schema, engines, and the set-based queries services run.

Services import from here; they never build engines or schema themselves.
The tables themselves are imported from :mod:`tickvisor.store.schema`: two of
them (``ticks``, ``candles``) share their names with modules of this package,
so re-exporting them here would make ``tickvisor.store.ticks`` mean the table
or the module depending on import order.
"""

from tickvisor.store.candles import TIMEFRAMES, aggregate_candles, bucket_start
from tickvisor.store.cursors import get_cursor, set_cursor
from tickvisor.store.engine import (
    DEFAULT_DB_URL,
    DatabaseUnavailable,
    check_connection,
    ensure_schema,
    make_engine,
    open_database,
    safe_url,
)
from tickvisor.store.schema import metadata, upsert
from tickvisor.store.ticks import insert_ticks

__all__ = [
    "DEFAULT_DB_URL",
    "TIMEFRAMES",
    "DatabaseUnavailable",
    "aggregate_candles",
    "bucket_start",
    "check_connection",
    "ensure_schema",
    "get_cursor",
    "insert_ticks",
    "make_engine",
    "metadata",
    "open_database",
    "safe_url",
    "set_cursor",
    "upsert",
]
