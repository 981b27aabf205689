"""Fencing: a replaced instance of a service can never commit a write again.

A hung service instance (stuck in I/O) is abandoned and replaced, but its
thread may wake up later and carry on where it stopped. Each instance
therefore claims a fencing token when it starts: the service's row in
``service_generations`` is incremented atomically, and the new value is the
instance's token. Every write transaction of the service checks, inside the
same transaction and just before it commits, that the stored value is still
its token. Once a replacement has claimed, the old token no longer matches
and the old instance's transaction rolls back with :class:`FencedOut`.

On PostgreSQL the check reads the row ``FOR SHARE``: a claim that comes in
between the check and the commit waits for the commit, so "checked" and
"committed" are one step. On SQLite every write transaction holds the
database's write lock (``BEGIN IMMEDIATE``), which serialises the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, Engine, select
from sqlalchemy.dialects import postgresql, sqlite

from tickvisor.store.schema import service_generations


class FencedOut(RuntimeError):
    """This instance was replaced; its write is rolled back and it must stop."""

    def __init__(self, service: str, token: int, current: int | None) -> None:
        super().__init__(
            f"service {service!r}: instance with fencing token {token} was replaced "
            f"(current token {current}); its write was rolled back"
        )
        self.service = service
        self.token = token
        self.current = current


@dataclass(frozen=True, slots=True)
class Fence:
    """One instance's claim: ``check`` inside each write transaction before commit."""

    service: str
    token: int

    def check(self, conn: Connection) -> None:
        query = select(service_generations.c.generation).where(
            service_generations.c.service == self.service
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(read=True)
        current = conn.execute(query).scalar_one_or_none()
        if current != self.token:
            raise FencedOut(self.service, self.token, current)


def claim_fence(engine: Engine, service: str, now_ms: int) -> Fence:
    """Take the next fencing token of ``service``; every earlier instance is fenced out."""
    dialect = engine.dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(service_generations).values(service=service, generation=1, started_ms=now_ms)
    claim = stmt.on_conflict_do_update(
        index_elements=[service_generations.c.service],
        set_={
            "generation": service_generations.c.generation + 1,
            "started_ms": now_ms,
        },
    ).returning(service_generations.c.generation)
    with engine.begin() as conn:
        token = int(conn.execute(claim).scalar_one())
    return Fence(service, token)
