"""Alembic's script folder for tickvisor's schema, shipped inside the package.

A package (not a loose folder) so it installs with tickvisor like any other
code and ``mypy --strict`` checks the revisions too. Run it through
:mod:`tickvisor.store.migrate`, never with an ``alembic.ini``: the database
URL comes from tickvisor's own engine.

Drafting the next revision, after changing :mod:`tickvisor.store.schema`,
against a database at the current head::

    from alembic import command
    from tickvisor.store.engine import open_database
    from tickvisor.store.migrate import alembic_config

    engine = open_database("sqlite:///draft.db")
    with engine.begin() as conn:
        command.revision(
            alembic_config(conn), message="why it changes", rev_id="0002", autogenerate=True
        )

Draft on SQLite: on PostgreSQL the ``txid`` defaults that schema.py sets
through DDL events look like differences to autogenerate. Then edit the
draft by hand until it is frozen: names spelled out, nothing imported from
``tickvisor.store.schema``, and a test that a database upgraded from the
previous revision keeps its rows.
"""
