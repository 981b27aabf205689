"""Schema migrations: numbered Alembic revisions, run on tickvisor's own engine.

Before migrations, every start ran ``metadata.create_all``. That creates
missing tables but never changes an existing one, so a database made by an
older tickvisor silently kept an old layout (``alert_outbox`` before the
alerting change) and failed once tickvisor wrote to it. Now each
schema change is a revision under ``migrations/versions``, the database
records the revision it is at (table :data:`VERSION_TABLE`), and tickvisor
refuses a schema it was not written for instead of running on it.

Who changes what:

- :func:`ensure_schema` (what :func:`tickvisor.store.engine.open_database`
  runs for every command) creates the schema on an empty database, so a
  first ``tickvisor demo`` needs no set-up, and otherwise only checks. It
  never alters an existing schema: that would be a surprise, done by whichever
  process happened to start first.
- :func:`upgrade` (``tickvisor db upgrade``) is the one place an existing
  schema changes, including adopting a database made before migrations.
- :func:`current` and :func:`head` answer ``tickvisor db current``.

Changes are made under a lock (an advisory lock on PostgreSQL, ``BEGIN
IMMEDIATE`` on SQLite) and in one transaction: processes starting together
on an empty database take turns instead of failing, and a change that fails
half-way leaves nothing behind (both dialects have transactional DDL).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.autogenerate import produce_migrations
from alembic.config import Config
from alembic.operations import Operations
from alembic.operations.ops import (
    AddColumnOp,
    AlterColumnOp,
    CreateIndexOp,
    CreateTableOp,
    DropColumnOp,
    DropIndexOp,
    DropTableOp,
    MigrateOperation,
    ModifyTableOps,
)
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, Index, MetaData, func, inspect, select, table, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from tickvisor.logs import get_logger
from tickvisor.store.engine import DatabaseUnavailable, _first_line, safe_url
from tickvisor.store.schema import metadata

#: The Alembic script folder, inside the package so it installs with the code.
MIGRATIONS = Path(__file__).parent / "migrations"

#: Where the database records its revision. Not Alembic's default
#: ``alembic_version``: tickvisor often shares a database (and schema) with the
#: user's own applications, which may well keep their own Alembic history there.
VERSION_TABLE = "tickvisor_alembic_version"

#: The revision that describes the schema as it was before migrations existed.
BASELINE = "0001"

_LOCK_NAME = "tickvisor.schema:"

#: Indexes older tickvisor releases created that the baseline replaced; safe to
#: drop when adopting a database, unlike an index someone added on purpose.
_RETIRED_INDEXES = frozenset({"ix_sentiment_metrics_stale_ts_ms"})

#: ``alert_outbox`` as created before the alerting change (retry counting on the
#: alert itself, no grouping). No release wrote a row into it.
_OLD_ALERT_OUTBOX = frozenset(
    {"alert_id", "created_ms", "severity", "service", "payload", "status", "attempts", "updated_ms"}
)

Kind = Literal["empty", "head", "behind", "legacy", "unknown"]

log = get_logger("tickvisor.store.migrate")


class SchemaMismatch(DatabaseUnavailable):
    """The schema is not the one this tickvisor needs; the message says what to run.

    A :class:`DatabaseUnavailable`, so every command that opens the database
    reports it in one line and exits 2, like an unreachable database.
    """

    def __init__(self, url: str, reason: str, *, found: str | None, needed: str) -> None:
        super().__init__(url, reason)
        self.found = found
        self.needed = needed
        # The reason names the database itself; "database unavailable at" would
        # say it twice and suggest it cannot be reached.
        self.args = (reason,)


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands against this tickvisor's revisions."""

    #: ``empty``: no tickvisor table and no revision (a new database);
    #: ``head``: at the revision this tickvisor needs; ``behind``: at an older
    #: revision; ``legacy``: tickvisor tables but no revision (made before
    #: migrations); ``unknown``: at a revision this tickvisor does not have.
    kind: Kind
    #: The revision recorded in the database, None when it records none.
    current: str | None
    #: The revision this tickvisor needs.
    head: str
    #: Tables of the current schema the database lacks.
    missing: tuple[str, ...]


def head() -> str:
    """The revision this tickvisor's schema is at."""
    heads = _script().get_heads()
    if len(heads) != 1:  # pragma: no cover - a packaging mistake, caught by the tests
        raise RuntimeError(f"tickvisor's migrations have {len(heads)} heads: {heads}")
    return heads[0]


def current(engine: Engine) -> str | None:
    """The revision the database records, None when it records none."""
    return schema_state(engine).current


def schema_state(engine: Engine) -> SchemaState:
    """Read (never change) where the database stands."""
    try:
        with engine.connect() as conn:
            return _state(conn)
    except SQLAlchemyError as exc:
        raise _unavailable(engine.url, "could not read the schema revision", exc) from exc


def check_schema(engine: Engine) -> None:
    """Raise :class:`SchemaMismatch` unless the database is at :func:`head`."""
    state = schema_state(engine)
    if state.kind != "head":
        raise _mismatch(engine.url, state)


def ensure_schema(engine: Engine) -> None:
    """Create the schema on an empty database; otherwise insist it is at head.

    This runs on every start, so the usual case (already at head) is a couple of
    reads without the lock. A table missing at head (dropped by hand) is created
    again from the live metadata, which a test keeps identical to the head
    revision: what every start did before migrations.
    """
    try:
        state: SchemaState | None = schema_state(engine)
    except DatabaseUnavailable:
        # SQLite answers "locked" to a reader while a racing start creates the
        # schema or switches the file to WAL; decide under the lock instead.
        state = None
    if state is not None:
        if state.kind == "head" and not state.missing:
            return
        if state.kind not in ("empty", "head"):
            raise _mismatch(engine.url, state)
    try:
        with _locked(engine) as conn:
            # Another process may have got there while this one waited.
            state = _state(conn)
            if state.kind == "empty":
                command.upgrade(alembic_config(conn), "head")
                # Debug: creating the schema on first use is routine (every demo,
                # every test) and was silent before migrations; a command's first
                # line stays its own "started" event.
                log.debug("schema.created", revision=state.head, db=safe_url(engine.url))
            elif state.kind == "head":
                _create_missing(conn, state.missing, engine.url)
            else:
                raise _mismatch(engine.url, state)
    except (SQLAlchemyError, CommandError) as exc:
        raise _unavailable(engine.url, "could not create the schema", exc) from exc


def upgrade(engine: Engine) -> str:
    """Bring the database to :func:`head` and return it; a no-op when already there.

    A database made before migrations is adopted: the differences older
    releases are known to have left are repaired (missing tables created, the
    pre-alerting ``alert_outbox`` rebuilt while empty, a retired index
    replaced), it is stamped :data:`BASELINE` and upgraded from there. Any
    other difference is refused with the list, and nothing is changed.
    """
    url = engine.url
    try:
        with _locked(engine) as conn:
            state = _state(conn)
            if state.kind == "unknown":
                raise _mismatch(url, state)
            if state.kind == "legacy":
                repaired = _adopt(conn, url)
                command.stamp(alembic_config(conn), BASELINE)
                log.info("schema.adopted", revision=BASELINE, repaired=repaired, db=safe_url(url))
            if state.kind == "head":
                _create_missing(conn, state.missing, url)
            else:
                command.upgrade(alembic_config(conn), "head")
    except (SQLAlchemyError, CommandError) as exc:
        raise _unavailable(url, "could not upgrade the schema", exc) from exc
    if state.kind != "head":
        log.info(
            "schema.upgraded", from_revision=state.current, to_revision=state.head, db=safe_url(url)
        )
    return state.head


def baseline_metadata(dialect_name: str) -> MetaData:
    """The tables revision :data:`BASELINE` creates, as a ``MetaData`` for ``dialect_name``.

    Replayed from the revision itself (its ``create`` function, run against
    operations that only take notes) so that judging a database made before
    migrations never depends on the live schema, which will have moved on.
    """
    return _baseline_metadata(dialect_name)


# --- internals ----------------------------------------------------------------------


@functools.cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(None))


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config with no ini file: the script folder and ``connection``.

    For ``alembic.command`` calls, e.g. drafting a revision (see
    :mod:`tickvisor.store.migrations`). Alembic neither connects nor commits
    on its own: it runs inside the caller's transaction on ``connection``.
    """
    config = Config()
    # configparser interpolates "%" in values.
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    return config


def _context(conn: Connection, **opts: Any) -> MigrationContext:
    return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE, **opts})


def _state(conn: Connection) -> SchemaState:
    tables = set(inspect(conn).get_table_names())
    # Tables any tickvisor made: the current ones and those of the baseline,
    # which is what a database from before migrations has.
    ours = set(metadata.tables) | set(baseline_metadata(conn.dialect.name).tables)
    present = tables & ours
    heads = tuple(_context(conn).get_current_heads())
    target = head()
    found = ",".join(heads) if heads else None
    kind: Kind
    if not heads:
        kind = "legacy" if present else "empty"
    elif heads == (target,):
        kind = "head"
    elif all(_known(rev) for rev in heads):
        kind = "behind"
    else:
        kind = "unknown"
    missing = tuple(sorted(set(metadata.tables) - tables))
    return SchemaState(kind=kind, current=found, head=target, missing=missing)


def _known(revision: str) -> bool:
    try:
        return _script().get_revision(revision) is not None
    except CommandError:
        return False


def _mismatch(url: URL, state: SchemaState) -> SchemaMismatch:
    where = safe_url(url)
    run = f"run `tickvisor db upgrade --db {where}`"
    if state.kind == "empty":
        reason = (
            f"database {where} has no tickvisor schema yet "
            f"(this tickvisor needs revision {state.head}); {run}"
        )
    elif state.kind == "behind":
        reason = (
            f"database schema at {where} is at revision {state.current} "
            f"but this tickvisor needs {state.head}; {run}"
        )
    elif state.kind == "legacy":
        reason = (
            f"database {where} has tickvisor tables but no schema revision "
            f"(made by a tickvisor from before migrations; this one needs revision "
            f"{state.head}); {run} to adopt it"
        )
    else:
        reason = (
            f"database schema at {where} is at revision {state.current}, which this "
            f"tickvisor does not know (it needs {state.head}): a newer tickvisor has "
            f"migrated it; run that version or a newer one"
        )
    return SchemaMismatch(where, reason, found=state.current, needed=state.head)


def _unavailable(url: URL, doing: str, exc: BaseException) -> DatabaseUnavailable:
    return DatabaseUnavailable(safe_url(url), f"{doing}: {_first_line(exc, url)}")


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """One transaction that holds the schema lock until it commits."""
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            # Takes the write lock now, waiting up to busy_timeout for it; a
            # plain BEGIN would fail at its first write if another process wrote first.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            # Per schema: test runs (and tenants) sharing one database do not queue.
            lock = "SELECT pg_advisory_xact_lock(hashtext(:name || coalesce(current_schema(), '')))"
            conn.execute(text(lock), {"name": _LOCK_NAME})
        yield conn
        conn.commit()


def _create_missing(conn: Connection, missing: Sequence[str], url: URL) -> None:
    if not missing:
        return
    metadata.create_all(conn, tables=[metadata.tables[name] for name in missing])
    log.warning("schema.tables_recreated", tables=list(missing), db=safe_url(url))


# --- adopting a database made before migrations ----------------------------------------


class _Recorder(Operations):
    """Operations that only note what a revision asks for; nothing reaches a database."""

    def __init__(self, context: MigrationContext) -> None:
        super().__init__(context)
        self.recorded: list[MigrateOperation] = []

    def invoke(self, operation: MigrateOperation) -> Any:
        self.recorded.append(operation)
        if isinstance(operation, CreateTableOp):
            return operation.to_table(self.migration_context)
        return None


@functools.cache
def _baseline_metadata(dialect_name: str) -> MetaData:
    revision = _script().get_revision(BASELINE)
    assert revision is not None
    context = MigrationContext.configure(dialect_name=dialect_name, opts={"as_sql": True})
    recorder = _Recorder(context)
    revision.module.create(recorder)
    target = MetaData()
    for operation in recorder.recorded:
        if isinstance(operation, CreateTableOp):
            operation.to_table(context).to_metadata(target)
        elif isinstance(operation, CreateIndexOp):
            owner = target.tables[operation.table_name]
            columns = [owner.c[str(name)] for name in operation.columns]
            Index(operation.index_name, *columns, unique=bool(operation.unique), **operation.kw)
        else:
            raise TypeError(f"cannot replay {type(operation).__name__} from the baseline")
    return target


def _differences(conn: Connection, target: MetaData) -> list[MigrateOperation]:
    """What it would take to turn the database's tickvisor tables into ``target``'s.

    Only ``target``'s tables are looked at: anything else in the database (the
    user's own tables, the version table) is none of tickvisor's business.
    """
    names = set(target.tables)

    def include_name(name: str | None, type_: str, _parents: Any) -> bool:
        return type_ != "table" or name in names

    context = _context(
        conn, compare_type=True, compare_server_default=True, include_name=include_name
    )
    ops = produce_migrations(context, target).upgrade_ops
    assert ops is not None
    return list(ops.ops)


@dataclass(frozen=True)
class _Repair:
    """One change that removes one difference from the baseline."""

    description: str
    apply: Callable[[], None]


def _adopt(conn: Connection, url: URL) -> list[str]:
    """Repair the known leftovers of releases before migrations, or refuse with the list.

    Everything is judged before anything changes, so a refusal leaves the
    database exactly as it was (and the transaction would undo it anyway).
    """
    baseline = baseline_metadata(conn.dialect.name)
    repairs: list[_Repair] = []
    problems: list[str] = []
    for operation in _differences(conn, baseline):
        fix = _repair_for(conn, baseline, operation)
        if isinstance(fix, str):
            problems.append(fix)
        elif fix is not None:
            repairs.append(fix)
    repairs += _partial_index_repairs(conn, baseline)
    if problems:
        where = safe_url(url)
        raise SchemaMismatch(
            where,
            f"database {where} has tickvisor tables but no schema revision, and they "
            f"differ from revision {BASELINE} in ways tickvisor cannot repair: "
            + "; ".join(problems)
            + f". Change those by hand, then run `tickvisor db upgrade --db {where}`",
            found=None,
            needed=head(),
        )
    for repair in repairs:
        repair.apply()
    left = [_describe(op) for op in _differences(conn, baseline)]
    left += [repair.description for repair in _partial_index_repairs(conn, baseline)]
    if left:  # pragma: no cover - a repair that does not repair is a bug in this module
        raise RuntimeError(f"adopting the database left differences: {'; '.join(left)}")
    return [repair.description for repair in repairs]


def _repair_for(
    conn: Connection, baseline: MetaData, operation: MigrateOperation
) -> _Repair | str | None:
    """The repair for one difference; why there is none (str); None when nothing is needed."""
    if isinstance(operation, CreateTableOp):
        # A table added by a later release than the one that made the database
        # (releases before migrations created missing tables on start).
        created = baseline.tables[operation.table_name]
        return _Repair(f"created table {created.name}", lambda: created.create(conn))
    if not isinstance(operation, ModifyTableOps):
        return _describe(operation)
    name = operation.table_name
    wanted = baseline.tables[name]
    if not inspect(conn).has_table(name):
        return None  # the indexes of a table created above: Table.create makes them too
    columns = {c["name"] for c in inspect(conn).get_columns(name)}
    if name == "alert_outbox" and columns == _OLD_ALERT_OUTBOX:
        rows = conn.execute(select(func.count()).select_from(table(name))).scalar_one()
        if rows:
            return (
                f"alert_outbox has the layout from before the alerting change and {rows} "
                "rows no tickvisor release wrote; move them elsewhere and drop the table"
            )

        def rebuild() -> None:
            conn.execute(text(f"DROP TABLE {_quote(conn, name)}"))
            wanted.create(conn)

        return _Repair("rebuilt the empty alert_outbox from before the alerting change", rebuild)
    retired = [
        op
        for op in operation.ops
        if isinstance(op, DropIndexOp) and op.index_name in _RETIRED_INDEXES
    ]
    added = [op for op in operation.ops if isinstance(op, CreateIndexOp)]
    unfixable = [op for op in operation.ops if op not in retired and op not in added]
    if unfixable:
        return "; ".join(_describe(op, table_name=name) for op in unfixable)

    def reindex() -> None:
        for old in retired:
            conn.execute(text(f"DROP INDEX {_quote(conn, str(old.index_name))}"))
        for new in added:
            next(i for i in wanted.indexes if i.name == new.index_name).create(conn)

    changes = [f"dropped index {op.index_name}" for op in retired]
    changes += [f"created index {op.index_name}" for op in added]
    return _Repair(", ".join(changes), reindex)


def _partial_index_repairs(conn: Connection, baseline: MetaData) -> list[_Repair]:
    """Indexes whose WHERE clause is there on one side only, which Alembic does not compare.

    Recreating an index changes no data, so these are always repaired.
    """
    option = f"{conn.dialect.name}_where"
    inspector = inspect(conn)
    repairs: list[_Repair] = []
    for wanted in baseline.sorted_tables:
        if not inspector.has_table(wanted.name):
            continue
        found = {i["name"]: i for i in inspector.get_indexes(wanted.name)}
        for index in wanted.indexes:
            reflected = found.get(str(index.name))
            if reflected is None:
                continue  # missing altogether: Alembic reports that one
            partial = index.dialect_options[conn.dialect.name]["where"] is not None
            if partial == (reflected.get("dialect_options", {}).get(option) is not None):
                continue

            def recreate(index: Index = index) -> None:
                conn.execute(text(f"DROP INDEX {_quote(conn, str(index.name))}"))
                index.create(conn)

            how = "with" if partial else "without"
            repairs.append(_Repair(f"recreated index {index.name} {how} its WHERE", recreate))
    return repairs


def _quote(conn: Connection, name: str) -> str:
    return str(conn.dialect.identifier_preparer.quote(name))


def _describe(operation: MigrateOperation, table_name: str | None = None) -> str:
    """One difference in words, as the refusal lists it."""
    if isinstance(operation, ModifyTableOps):
        return "; ".join(_describe(op, operation.table_name) for op in operation.ops)
    if isinstance(operation, CreateTableOp):
        return f"table {operation.table_name} is missing"
    if isinstance(operation, DropTableOp):
        return f"table {operation.table_name} is not in the schema"
    if isinstance(operation, AddColumnOp):
        return f"column {operation.table_name}.{operation.column.name} is missing"
    if isinstance(operation, DropColumnOp):
        return f"column {operation.table_name}.{operation.column_name} is not in the schema"
    if isinstance(operation, CreateIndexOp):
        return f"index {operation.index_name} on {operation.table_name} is missing"
    if isinstance(operation, DropIndexOp):
        return f"index {operation.index_name} on {table_name} is not in the schema"
    if isinstance(operation, AlterColumnOp):
        where = f"column {operation.table_name}.{operation.column_name}"
        parts = []
        if operation.modify_type is not None:
            parts.append(f"is {operation.existing_type} instead of {operation.modify_type}")
        if operation.modify_nullable is not None:
            parts.append("is nullable" if not operation.modify_nullable else "is NOT NULL")
        if operation.modify_server_default is not False:
            parts.append("has a different default")
        return f"{where} " + " and ".join(parts or ["differs"])
    return f"{type(operation).__name__} on {table_name or 'the schema'}"


__all__ = [
    "BASELINE",
    "MIGRATIONS",
    "VERSION_TABLE",
    "SchemaMismatch",
    "SchemaState",
    "alembic_config",
    "baseline_metadata",
    "check_schema",
    "current",
    "ensure_schema",
    "head",
    "schema_state",
    "upgrade",
]
