"""FX symbol normalisation and symbols files.

Ticks arrive from importers, feeds and hand-written config in every spelling a
data vendor has invented (``EURUSD``, ``eur/usd``, ``EUR_USD``). Every table is
keyed by symbol, so one canonical spelling (``BASE/QUOTE``, upper case) is
enforced at every entry point; otherwise ``EURUSD`` and ``EUR/USD`` would
become two series that never meet.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["SymbolError", "load_symbols_file", "normalize_symbol"]

# ASCII only on purpose: ``str.isalpha`` accepts any Unicode letter, and
# ``"ß".upper()`` is two characters, neither of which belongs in a ticker.
_COMPACT = re.compile(r"([A-Za-z]{3})([A-Za-z]{3})")
_SEPARATED = re.compile(r"([A-Za-z0-9]{2,6})[/\-_]([A-Za-z0-9]{2,6})")

_EXPECTED = (
    "expected six letters such as EURUSD, or two codes of 2 to 6 letters or digits "
    "joined by '/', '-' or '_' such as EUR/USD or BTC/USDT"
)


class SymbolError(ValueError):
    """A symbol or symbols file that cannot be used; the message says which and why."""


def _show(value: object, limit: int = 40) -> str:
    """Quote a rejected value without letting a huge one flood the message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def normalize_symbol(raw: str) -> str:
    """Return the canonical ``BASE/QUOTE`` spelling of ``raw``.

    Only a six-letter run is split without a separator: for anything else
    (``BTCUSDT``, ``XAUUSD`` vs ``XAUUSDT``) the split point is a guess, and a
    wrong guess would silently create a new series.
    """
    if not isinstance(raw, str):
        raise SymbolError(f"invalid symbol {_show(raw)}: expected a string")
    text = raw.strip()
    if not text:
        raise SymbolError(f"invalid symbol {_show(raw)}: it is empty")
    match = _SEPARATED.fullmatch(text) or _COMPACT.fullmatch(text)
    if match is None:
        raise SymbolError(f"invalid symbol {_show(raw)}: {_EXPECTED}")
    return f"{match.group(1).upper()}/{match.group(2).upper()}"


def yaml_kind(value: object) -> str:
    """Name a YAML value's type the way a person editing the file thinks of it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def load_symbols_file(path: Path) -> list[str]:
    """Read a YAML list of symbols, normalised and de-duplicated, in file order.

    The symbol cache calls this again whenever its TTL expires, so a file
    edited while the service runs is picked up; a file that went bad raises
    instead of returning a partial list, letting the caller keep the last
    good one. Duplicates are dropped rather than rejected because two
    spellings of one pair (``EURUSD`` and ``EUR/USD``) are harmless here.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SymbolError(f"{path}: symbols file not found") from None
    except IsADirectoryError:
        raise SymbolError(f"{path}: is a directory, expected a symbols file") from None
    except UnicodeDecodeError as exc:
        raise SymbolError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise SymbolError(f"{path}: cannot read symbols file: {exc.strerror}") from None

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data: Any = None if node is None else loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise SymbolError(f"{where}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise SymbolError(f"{path}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()

    if data is None:
        raise SymbolError(
            f"{path}: the file is empty; expected a YAML list of symbols such as [EUR/USD, USD/JPY]"
        )
    if not isinstance(data, list) or not isinstance(node, yaml.SequenceNode):
        raise SymbolError(
            f"{path}: expected a YAML list of symbols such as [EUR/USD, USD/JPY], "
            f"got {yaml_kind(data)}"
        )

    symbols: dict[str, None] = {}
    for index, (item, item_node) in enumerate(zip(data, node.value, strict=True)):
        mark = item_node.start_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}: item {index}"
        if not isinstance(item, str):
            raise SymbolError(f"{where}: expected a symbol string, got {yaml_kind(item)}")
        try:
            symbols[normalize_symbol(item)] = None
        except SymbolError as exc:
            raise SymbolError(f"{where}: {exc}") from None
    return list(symbols)
