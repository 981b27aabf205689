"""Shared fixtures: real databases, never mocks.

PostgreSQL tests run in a schema of their own (created per test session and
dropped at its end), so several people or CI jobs can share one server and
one database without dropping each other's tables.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from tickvisor.clock import FakeClock, SteppedScheduler
from tickvisor.store.engine import make_engine, open_database
from tickvisor.store.migrate import VERSION_TABLE
from tickvisor.store.schema import metadata

PG_URL_ENV = "TICKVISOR_TEST_PG_URL"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose ``search_path`` is a fresh schema for this session.

    Skips the test when ``TICKVISOR_TEST_PG_URL`` is unset.
    """
    raw = os.environ.get(PG_URL_ENV)
    if not raw:
        pytest.skip(f"{PG_URL_ENV} is not set")
    schema = f"tickvisor_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = make_engine(raw)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(admin.url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL per dialect; each test starts with an empty database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tickvisor.db'}"
    url: str = request.getfixturevalue("pg_url")
    reset = create_engine(url)
    try:
        # Empty like the SQLite file: tables made here by create_all would have
        # no schema revision, and open_database refuses those as pre-migration.
        metadata.drop_all(reset)
        with reset.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))
    finally:
        reset.dispose()
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """``open_database(db_url)``: connected, schema in place, disposed afterwards."""
    eng = open_database(db_url)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def clock() -> FakeClock:
    """Time that moves only when the test says so."""
    return FakeClock()


@pytest.fixture
def scheduler(clock: FakeClock) -> Iterator[SteppedScheduler]:
    """Timers that fire only when the test steps them."""
    sched = SteppedScheduler(clock)
    yield sched
    sched.stop()


@pytest.fixture(autouse=True)
def _no_actor_left_behind() -> Iterator[None]:
    """Every test ends with every pykka actor stopped, whatever it asserted."""
    yield
    pykka.ActorRegistry.stop_all(block=True, timeout=10)
