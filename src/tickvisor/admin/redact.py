"""A last line of defence: no admin response ever carries a secret.

Responses are built from status trees and metrics that hold exception
messages and endpoint descriptions, written by code that knows nothing of
HTTP. Secrets are kept out of those at their source; this module makes
sure anyway, by replacing every known secret value (the admin token, the
config's webhook URLs, signing secrets and passwords, the database
password) and any ``scheme://user:password@`` credentials with ``***``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import BaseModel, SecretStr
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from tickvisor.config import TickvisorConfig

__all__ = ["Redactor", "config_secrets"]

MASK = "***"
#: Shorter values would garble ordinary words and are no real secret anyway.
_MIN_LENGTH = 4
_URL_CREDENTIALS = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@")


class Redactor:
    """Replaces known secret values, and URL credentials, in text and JSON-like data."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is masked whole.
        unique = {s for s in secrets if s and len(s) >= _MIN_LENGTH}
        self._secrets = sorted(unique, key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return _URL_CREDENTIALS.sub(rf"\1{MASK}@", value)

    def data(self, value: Any) -> Any:
        """A copy of ``value`` (dicts, lists, strings, numbers) with every string redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {
                self.data(k) if isinstance(k, str) else k: self.data(v) for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        return value


def config_secrets(config: TickvisorConfig) -> list[str]:
    """Every secret value in ``config``: each SecretStr, and the database URL's password."""
    found = [secret.get_secret_value() for secret in _secret_fields(config)]
    if config.database.url:
        try:
            password = make_url(config.database.url).password
        except (ArgumentError, ValueError):
            password = None
        if password:
            found.append(str(password))
    return found


def _secret_fields(value: Any) -> Iterator[SecretStr]:
    if isinstance(value, SecretStr):
        yield value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secret_fields(getattr(value, name))
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _secret_fields(item)
