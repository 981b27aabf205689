"""The admin API's bearer token: where it comes from, where a generated one goes, how it is checked.

The control routes can pause and restart services, so they never run open:
``TICKVISOR_ADMIN_TOKEN`` wins (secrets belong in the environment), then the
config's ``admin.token``; with neither, a fresh random token is generated at
every start and written to a file only its owner can read, so an operator
on the same machine (or ``tickvisor ctl``) can pick it up without it ever
being printed. The log says *where* the file is, never what is in it.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from tickvisor.config import MIN_ADMIN_TOKEN_LENGTH, TickvisorConfig
from tickvisor.store.engine import DEFAULT_DB_URL

__all__ = [
    "TOKEN_ENV",
    "TOKEN_FILE_NAME",
    "AdminToken",
    "AdminTokenError",
    "default_token_file",
    "resolve_token",
    "token_matches",
    "write_token_file",
]

TOKEN_ENV = "TICKVISOR_ADMIN_TOKEN"
TOKEN_FILE_NAME = "tickvisor-admin.token"


class AdminTokenError(ValueError):
    """The token cannot be used (too short, or its file cannot be written); safe to print."""


class AdminToken(NamedTuple):
    """``(token, source, file)``: source is ``env``, ``config`` or ``generated``.

    ``file`` is where a generated token was written (None otherwise). The
    repr hides the token, so logging or printing this never leaks it.
    """

    token: str
    source: str
    file: Path | None

    def __repr__(self) -> str:
        return f"AdminToken(token='***', source={self.source!r}, file={self.file!r})"


def resolve_token(
    config: TickvisorConfig, db_url: str | None, env: Mapping[str, str] | None = None
) -> AdminToken:
    """The token the admin API accepts; generates and writes one when none is configured.

    ``db_url`` is the database the process uses (None: the default SQLite
    file); a generated token is written next to an SQLite file, or into the
    working folder for other databases, unless ``admin.token_file`` says where.
    """
    env = os.environ if env is None else env
    from_env = env.get(TOKEN_ENV, "").strip()
    if from_env:
        if len(from_env) < MIN_ADMIN_TOKEN_LENGTH:
            raise AdminTokenError(
                f"{TOKEN_ENV} must be at least {MIN_ADMIN_TOKEN_LENGTH} characters; "
                "unset it to have one generated"
            )
        return AdminToken(from_env, "env", None)
    if config.admin.token is not None:
        return AdminToken(config.admin.token.get_secret_value().strip(), "config", None)
    token = secrets.token_urlsafe(32)
    path = config.admin.token_file or default_token_file(db_url)
    write_token_file(path, token)
    return AdminToken(token, "generated", path)


def default_token_file(db_url: str | None) -> Path:
    """``tickvisor-admin.token`` beside the SQLite file, or in the working folder."""
    folder = Path.cwd()
    try:
        url = make_url(db_url or DEFAULT_DB_URL)
    except (ArgumentError, ValueError):
        return folder / TOKEN_FILE_NAME
    database = url.database or ""
    if url.get_backend_name() == "sqlite" and database not in ("", ":memory:"):
        if database.startswith("file:"):  # an SQLite URI filename
            database = database.removeprefix("file:").split("?", 1)[0]
        if database and database != ":memory:":
            folder = Path(database).expanduser().absolute().parent
    return folder / TOKEN_FILE_NAME


def write_token_file(path: Path, token: str) -> None:
    """Write ``token`` so that only its owner can ever read it, and replace the file atomically.

    The temporary file is created with mode 0600 and ``O_EXCL`` (it can
    never be a file someone else created or a symlink planted there), then
    renamed over ``path``: a reader sees the old token or the new one,
    never a half-written or world-readable file.
    """
    folder = path.parent
    temp = folder / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise AdminTokenError(
            f"cannot write the admin token file in {str(folder)!r}: {exc.strerror}; "
            f"set admin.token_file or {TOKEN_ENV}"
        ) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)  # the umask only removes bits; be exact anyway
            handle.write(token + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise AdminTokenError(
            f"cannot write the admin token file {str(path)!r}: {exc.strerror}"
        ) from None


def token_matches(expected: str, presented: str | None) -> bool:
    """Constant-time comparison, so response timing tells nothing about the token."""
    if presented is None or not expected:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), presented.encode("utf-8"))
