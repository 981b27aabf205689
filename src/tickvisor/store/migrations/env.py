"""What Alembic runs for every command: migrate on the connection tickvisor hands over.

tickvisor opens the engine itself (with its SQLite pragmas, its PostgreSQL
timeouts, a password that never reaches a log) and holds the schema lock on
that connection, so the URL never comes from an ``alembic.ini`` and Alembic
must neither connect on its own nor commit: see :mod:`tickvisor.store.migrate`.
"""

from __future__ import annotations

from alembic import context

from tickvisor.store.migrate import VERSION_TABLE
from tickvisor.store.schema import metadata

if context.is_offline_mode():
    raise RuntimeError(
        "tickvisor's migrations run online only: use `tickvisor db upgrade --db URL`"
    )

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "tickvisor's migrations need a connection from tickvisor.store.migrate: "
        "use `tickvisor db upgrade --db URL`, not the alembic command"
    )

context.configure(
    connection=connection,
    # Only autogenerate (drafting a new revision) reads the live metadata;
    # an upgrade runs the frozen revisions as written.
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    # SQLite cannot ALTER most things in place; batch mode rebuilds the table
    # there and is a plain ALTER on PostgreSQL, so one revision fits both.
    render_as_batch=True,
    compare_server_default=True,
)

with context.begin_transaction():
    context.run_migrations()
