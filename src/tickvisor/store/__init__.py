"""The database layer: schema, engines, and the set-based queries services run.

Services import from here; they never build engines or schema themselves.
The tables themselves are imported from :mod:`tickvisor.store.schema`: two of
them (``ticks``, ``candles``) share their names with modules of this package,
so re-exporting them here would make ``tickvisor.store.ticks`` mean the table
or the module depending on import order.
"""

from tickvisor.store.buckets import TIMEFRAMES, bucket_start, day_bounds
from tickvisor.store.candles import CandleAggregator
from tickvisor.store.catchup import CatchUpFailed, CatchUpReport, SymbolProgress
from tickvisor.store.claims import visible_horizon
from tickvisor.store.cursors import TickPosition, get_cursor, get_position, set_cursor
from tickvisor.store.engine import (
    DEFAULT_DB_URL,
    DatabaseUnavailable,
    check_connection,
    ensure_schema,
    is_database_fault,
    make_engine,
    open_database,
    safe_url,
)
from tickvisor.store.schema import metadata, upsert
from tickvisor.store.ticks import insert_ticks, tick_keys

__all__ = [
    "DEFAULT_DB_URL",
    "TIMEFRAMES",
    "CandleAggregator",
    "CatchUpFailed",
    "CatchUpReport",
    "DatabaseUnavailable",
    "SymbolProgress",
    "TickPosition",
    "bucket_start",
    "check_connection",
    "day_bounds",
    "ensure_schema",
    "get_cursor",
    "get_position",
    "insert_ticks",
    "is_database_fault",
    "make_engine",
    "metadata",
    "open_database",
    "safe_url",
    "set_cursor",
    "tick_keys",
    "upsert",
    "visible_horizon",
]
