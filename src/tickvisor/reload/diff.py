"""What changed between two configs, as dotted key paths, safe to log.

The models are compared, not their JSON dumps: a dump shows every
``SecretStr`` as ``**********``, so a rotated webhook URL would compare
equal and go unnoticed. Values are masked only when they are *shown*
(:func:`shown`), never when they are compared.

A list is one value (``services.candles.symbols`` changed, from ``[...]`` to
``[...]``): an inserted symbol would otherwise shift every later index and
read as many changes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

__all__ = ["Change", "diff_configs", "shown"]

#: Key names whose values are never shown (as in :mod:`tickvisor.config`'s error messages).
SECRET_KEY_PARTS = ("url", "password", "passwd", "token", "secret", "api_key", "authorization")
#: A longer list is shown by its length only: a log line is not the place for 5000 symbols.
MAX_LIST_SHOWN = 20
MASK = "***"


@dataclass(frozen=True, slots=True)
class Change:
    """One key whose value differs; ``old``/``new`` are the raw values (secrets included)."""

    path: tuple[str, ...]
    old: Any
    new: Any

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    def shown(self) -> dict[str, Any]:
        """``{"from": ..., "to": ...}`` for a log line, secrets masked."""
        return {"from": shown(self.path, self.old), "to": shown(self.path, self.new)}


def diff_configs(old: BaseModel, new: BaseModel) -> list[Change]:
    """Every leaf key whose value differs, in the models' field order."""
    changes: list[Change] = []
    _diff(old, new, (), changes)
    return changes


def _diff(old: Any, new: Any, path: tuple[str, ...], out: list[Change]) -> None:
    if isinstance(old, BaseModel) and type(old) is type(new):
        for name in type(old).model_fields:
            _diff(getattr(old, name), getattr(new, name), (*path, name), out)
    elif old != new:  # SecretStr compares its secret values
        out.append(Change(path, old, new))


def is_secret(path: tuple[str, ...]) -> bool:
    """Whether the key at ``path`` may hold a credential (judged by its own name)."""
    return bool(path) and any(part in path[-1].lower() for part in SECRET_KEY_PARTS)


def shown(path: tuple[str, ...], value: Any) -> Any:
    """``value`` as a log line may show it: JSON-friendly, secrets masked, long lists counted."""
    if value is None:
        return None
    if isinstance(value, SecretStr) or is_secret(path):
        return MASK
    if isinstance(value, BaseModel):
        # A section that appeared or disappeared (a service added): say so, not its
        # contents, which may hold secrets deeper down.
        return "configured"
    if isinstance(value, list | tuple):
        if len(value) > MAX_LIST_SHOWN:
            return f"{len(value)} items"
        return [shown(path, item) for item in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)
