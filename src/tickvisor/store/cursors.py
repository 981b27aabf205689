"""Per-service progress cursors: how far an incremental job has got.

A cursor is written in the same transaction as the work it covers, so after
a crash or a restart the job resumes exactly where its last commit left it:
never skipping input, and never counting it twice.
"""

from __future__ import annotations

from sqlalchemy import Connection, select

from tickvisor.store.schema import progress_cursors, upsert


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
    upsert(
        conn,
        progress_cursors,
        {"service": service, "key": key, "position": position, "updated_ms": now_ms},
        index_elements=("service", "key"),
        update_columns=("position", "updated_ms"),
    )


__all__ = ["get_cursor", "set_cursor"]
