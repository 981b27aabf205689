"""Per-service progress cursors: how far an incremental job has got.

A cursor is written in the same transaction as the work it covers, so after
a crash or a restart the job resumes exactly where its last commit left it:
never skipping input, and never counting it twice.
"""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import Connection, select

from tickvisor.store.schema import progress_cursors, upsert


class TickPosition(NamedTuple):
    """A place in the ``ticks`` table, ordered as ``(txid, id)``.

    On SQLite ``txid`` is always 0 and the id alone orders ticks as they
    became visible. On PostgreSQL it is the writing transaction's id: see
    :func:`tickvisor.store.claims.visible_horizon` for why that matters.
    """

    txid: int
    id: int


#: Before the first tick: a service that never ran starts here.
START = TickPosition(0, 0)


def get_cursor(conn: Connection, service: str, key: str) -> int | None:
    """The stored position, or None when the service has never processed ``key``."""
    position = conn.execute(
        select(progress_cursors.c.position).where(
            progress_cursors.c.service == service, progress_cursors.c.key == key
        )
    ).scalar_one_or_none()
    return None if position is None else int(position)


def set_cursor(conn: Connection, service: str, key: str, position: int, now_ms: int) -> None:
    """Record ``position`` for (service, key), creating the cursor on first use."""
    set_position(conn, service, key, TickPosition(0, position), now_ms)


def get_position(conn: Connection, service: str, key: str) -> TickPosition:
    """The tick position a service has consumed ``key`` up to (:data:`START` if never)."""
    row = conn.execute(
        select(progress_cursors.c.txid, progress_cursors.c.position).where(
            progress_cursors.c.service == service, progress_cursors.c.key == key
        )
    ).one_or_none()
    return START if row is None else TickPosition(int(row[0]), int(row[1]))


def set_position(
    conn: Connection, service: str, key: str, position: TickPosition, now_ms: int
) -> None:
    """Record ``position`` for (service, key), creating the cursor on first use."""
    upsert(
        conn,
        progress_cursors,
        {
            "service": service,
            "key": key,
            "position": position.id,
            "txid": position.txid,
            "updated_ms": now_ms,
        },
        index_elements=("service", "key"),
        update_columns=("position", "txid", "updated_ms"),
    )


__all__ = ["START", "TickPosition", "get_cursor", "get_position", "set_cursor", "set_position"]
