"""Engines for the two supported databases, set up so they behave the same.

The point of this module is that every command (``run``, ``import``,
``aggregate``, ...) gets an engine that is ready for concurrent use, and that
a wrong or unreachable ``--db`` produces one clear line instead of a driver
traceback, without ever echoing the password.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import StaticPool

#: An SQLite file in the working folder: ``tickvisor demo`` works with no set-up.
DEFAULT_DB_URL = "sqlite:///tickvisor.db"

_CONNECT_TIMEOUT_S = 5
_SQLITE_BUSY_TIMEOUT_MS = 5000
_MIN_SCRUB_LENGTH = 4
_BACKENDS = ("sqlite", "postgresql")


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached or used; the message is safe to print and log."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"database unavailable at {url}: {reason}")


def safe_url(url: str | URL) -> str:
    """The URL as text with its password replaced by ``***``, for messages and logs."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    if (url.split("/")[2:3] and url.split("/")[2].count("@") > 1) or "://" not in url:
        # An unencoded "@" in the password (or a forgotten scheme) makes the
        # parser split in the wrong place; mask up to the last "@" by hand.
        return _mask_unparsed(url)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return _mask_unparsed(url)


def _mask_unparsed(url: str) -> str:
    # A URL SQLAlchemy cannot parse may still carry "user:password@"; mask it by hand.
    # Up to the LAST "@", with or without a "scheme://" in front: a forgotten
    # scheme or an unencoded "@" in the password must not leak any of it.
    return re.sub(r"^((?:[^:/@]+://)?[^/:@]*:).*@", r"\1***@", url)


def _first_line(exc: BaseException, url: URL | None = None) -> str:
    """The driver's own reason, first line only, with the password scrubbed out."""
    source: BaseException = exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc
    lines = str(source).strip().splitlines()
    reason = lines[0].strip() if lines else type(source).__name__
    # A safety net (drivers do not echo passwords); too short a password would
    # only garble the message, e.g. "b" inside "MySQLdb".
    if url is not None and url.password and len(str(url.password)) >= _MIN_SCRUB_LENGTH:
        reason = reason.replace(str(url.password), "***")
    return reason


def _parse(url: str | URL) -> URL:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise DatabaseUnavailable(
            safe_url(str(url)),
            "not a valid database URL (expected e.g. sqlite:///tickvisor.db or "
            "postgresql+psycopg://user:password@host:5432/dbname)",
        ) from exc
    if parsed.drivername in ("postgresql", "postgres"):
        # psycopg 3 is the driver we ship and test; plain "postgresql://" would
        # otherwise ask SQLAlchemy for psycopg2.
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def make_engine(url: str | URL | None = None) -> Engine:
    """An engine configured for its dialect; does not connect yet."""
    parsed = _parse(DEFAULT_DB_URL if url is None else url)
    backend = parsed.get_backend_name()
    if backend not in _BACKENDS:
        raise DatabaseUnavailable(
            safe_url(parsed),
            f"unsupported database {backend!r} (use sqlite:///FILE or postgresql+psycopg://...)",
        )
    kwargs: dict[str, Any] = {
        # Tick rows in an exception message are noise at best and may be data
        # that must not reach the logs; the statement itself is kept.
        "hide_parameters": True,
    }
    if backend == "sqlite":
        _prepare_sqlite(parsed, kwargs)
    elif backend == "postgresql":
        kwargs["pool_pre_ping"] = True
        kwargs["connect_args"] = {"connect_timeout": _CONNECT_TIMEOUT_S}
    try:
        engine = create_engine(parsed, **kwargs)
    except (SQLAlchemyError, ImportError, ValueError, TypeError) as exc:
        raise DatabaseUnavailable(safe_url(parsed), _first_line(exc, parsed)) from exc
    if backend == "sqlite":
        event.listen(engine, "connect", _set_sqlite_pragmas)
    return engine


def _prepare_sqlite(url: URL, kwargs: dict[str, Any]) -> None:
    # Actors run on their own threads and share the pool; SQLite's own locking
    # (WAL + busy_timeout) is what serialises writers, not thread affinity.
    kwargs["connect_args"] = {"check_same_thread": False}
    database = url.database or ""
    if database in ("", ":memory:"):
        # One shared connection, or every thread would see its own empty database.
        kwargs["poolclass"] = StaticPool
        return
    if database.startswith("file:"):
        return  # an SQLite URI filename: SQLite resolves (and reports) it itself
    folder = Path(database).absolute().parent
    if not folder.is_dir():
        raise DatabaseUnavailable(
            safe_url(url), f"folder {str(folder)!r} for the SQLite file does not exist"
        )


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """Make SQLite fit for one writer and many readers on several threads.

    WAL lets readers run beside the writer; ``synchronous=NORMAL`` is durable
    across application crashes in WAL mode at a fraction of FULL's fsyncs;
    ``busy_timeout`` makes a second writer wait instead of failing at once.
    """
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def check_connection(engine: Engine) -> None:
    """Round-trip one query so a bad ``--db`` fails at start-up, not mid-iteration."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError) as exc:
        raise DatabaseUnavailable(safe_url(engine.url), _first_line(exc, engine.url)) from exc


def ensure_schema(engine: Engine) -> None:
    """Create the schema on an empty database, or check it is the one this tickvisor needs.

    Safe from racing processes (they take turns under a lock). A database at an
    older or unknown revision, or made before migrations, raises
    :class:`tickvisor.store.migrate.SchemaMismatch` naming the command to run:
    only ``tickvisor db upgrade`` changes an existing schema. See
    :mod:`tickvisor.store.migrate`.
    """
    # Imported here: migrate builds on this module (DatabaseUnavailable, safe_url).
    from tickvisor.store import migrate

    migrate.ensure_schema(engine)


def is_database_fault(exc: BaseException) -> bool:
    """True when ``exc`` says the database itself failed, not the statement or its data.

    Lost connections, timeouts, locks, a full disk: any other statement would
    fail the same way, so work must stop and the circuit breaker must see it.
    An integrity or data error, by contrast, belongs to the rows at hand.
    """
    return isinstance(
        exc,
        OperationalError | InterfaceError | DisconnectionError | PoolTimeout | DatabaseUnavailable,
    )


def open_database(url: str | URL | None = None, *, migrate: bool = True) -> Engine:
    """A connected engine with the schema in place: what every command starts with.

    ``migrate=False`` only checks the schema (raising
    :class:`tickvisor.store.migrate.SchemaMismatch` unless it is at head, an
    empty database included), for callers that must not write.
    """
    engine = make_engine(url)
    try:
        check_connection(engine)
        if migrate:
            ensure_schema(engine)
        else:
            from tickvisor.store.migrate import check_schema

            check_schema(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


__all__ = [
    "DEFAULT_DB_URL",
    "DatabaseUnavailable",
    "check_connection",
    "ensure_schema",
    "is_database_fault",
    "make_engine",
    "open_database",
    "safe_url",
]
