"""What can be wrong with a tick line, the rules that find it, and its quarantine record.

A line is either imported or quarantined under exactly one reason, the first
problem found: parsing problems field by field from left to right, then the
value rules in the order of :func:`check`. Problems are small integer codes
in a numpy array beside the batch's columns, so a million lines are judged
with a handful of vectorised comparisons; only the lines actually rejected
get a Python-level description (their detail text), which keeps a clean file
fast and a dirty one merely slower.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from tickvisor.ingest.reader import LineBatch
from tickvisor.symbols import SymbolError, normalize_symbol

Int64Array = npt.NDArray[np.int64]
Float64Array = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Accepted tick times, UTC milliseconds: [1970-01-01, 2100-01-01). Anything
#: outside is a unit mix-up (seconds or microseconds for milliseconds) or junk.
TS_MIN_MS = 0
TS_MAX_MS = 4_102_444_800_000

#: Longest detail and raw text kept in ``tick_quarantine`` (its column sizes).
DETAIL_LIMIT = 500
RAW_LIMIT = 1000
SOURCE_LIMIT = 512

PRICE_COLUMNS = ("bid", "ask", "price")
VOLUME_COLUMNS = ("volume", "ask_volume", "bid_volume")


class Problem(enum.IntEnum):
    """Why a line is not imported; ``OK`` lines are, ``BLANK`` ones are skipped."""

    OK = 0
    WRONG_FIELD_COUNT = 1
    EMPTY_FIELD = 2
    BAD_NUMBER = 3
    BAD_TIMESTAMP = 4
    NO_UTC_OFFSET = 5
    BAD_SYMBOL = 6
    TIMESTAMP_OUT_OF_RANGE = 7
    NON_FINITE_PRICE = 8
    NON_POSITIVE_PRICE = 9
    ASK_BELOW_BID = 10
    BAD_VOLUME = 11
    BLANK = 255


#: The ``reason`` stored in ``tick_quarantine`` and counted in the summary.
REASON: dict[Problem, str] = {
    Problem.WRONG_FIELD_COUNT: "unparseable",
    Problem.EMPTY_FIELD: "unparseable",
    Problem.BAD_NUMBER: "unparseable",
    Problem.BAD_TIMESTAMP: "unparseable",
    Problem.NO_UTC_OFFSET: "unparseable",
    Problem.BAD_SYMBOL: "bad_symbol",
    Problem.TIMESTAMP_OUT_OF_RANGE: "timestamp_out_of_range",
    Problem.NON_FINITE_PRICE: "non_finite_price",
    Problem.NON_POSITIVE_PRICE: "non_positive_price",
    Problem.ASK_BELOW_BID: "ask_below_bid",
    Problem.BAD_VOLUME: "bad_volume",
}

#: Every quarantine reason, in the order problems are looked for.
REASONS: tuple[str, ...] = tuple(dict.fromkeys(REASON.values()))

_UNPARSEABLE = np.zeros(256, dtype=np.bool_)
for _problem, _reason in REASON.items():
    _UNPARSEABLE[_problem] = _reason == "unparseable"


@dataclass
class TickBatch:
    """The ticks parsed from one :class:`LineBatch`, one array slot per line.

    Lines that could not be parsed keep placeholder values; ``problem`` says
    which lines are good. ``problem_field`` names (by position in ``columns``) the
    field a problem was found in, and ``nan_field`` the first number field
    whose text was a literal NaN: NaN also means "no price/volume given", so
    a written-out ``nan`` has to be remembered separately to be rejected.
    """

    lines: LineBatch
    columns: tuple[str, ...]
    timestamp_hint: str
    ts_ms: Int64Array
    bid: Float64Array
    ask: Float64Array
    price: Float64Array
    volume: Float64Array
    symbol_code: Int64Array
    symbols: list[str]
    problem: npt.NDArray[np.uint8]
    problem_field: npt.NDArray[np.int8]
    nan_field: npt.NDArray[np.int8]
    numbers: dict[str, Float64Array] = field(default_factory=dict)

    @classmethod
    def blank(cls, lines: LineBatch, columns: tuple[str, ...], timestamp_hint: str) -> TickBatch:
        n = len(lines)
        return cls(
            lines=lines,
            columns=columns,
            timestamp_hint=timestamp_hint,
            ts_ms=np.zeros(n, dtype=np.int64),
            bid=np.full(n, np.nan),
            ask=np.full(n, np.nan),
            price=np.full(n, np.nan),
            volume=np.full(n, np.nan),
            symbol_code=np.full(n, -1, dtype=np.int64),
            symbols=[],
            problem=np.zeros(n, dtype=np.uint8),
            problem_field=np.full(n, -1, dtype=np.int8),
            nan_field=np.full(n, -1, dtype=np.int8),
        )

    def __len__(self) -> int:
        return len(self.problem)

    def flag(self, mask: BoolArray, problem: Problem, column: str | None = None) -> None:
        """Give ``problem`` to the lines in ``mask`` that have none yet."""
        hit = mask & (self.problem == Problem.OK)
        if not hit.any():
            return
        self.problem[hit] = problem
        self.problem_field[hit] = self.columns.index(column) if column in self.columns else -1

    @property
    def valid(self) -> BoolArray:
        return np.asarray(self.problem == Problem.OK, dtype=np.bool_)

    @property
    def rejected(self) -> BoolArray:
        return np.asarray((self.problem != Problem.OK) & (self.problem != Problem.BLANK), np.bool_)

    @property
    def data_lines(self) -> int:
        """Lines that count as rows read: every line but the blank ones."""
        return int(np.count_nonzero(self.problem != Problem.BLANK))

    def unparseable(self) -> BoolArray:
        return np.asarray(_UNPARSEABLE[self.problem], dtype=np.bool_)


def check(batch: TickBatch) -> None:
    """Apply the value rules to the lines that parsed; the first rule broken wins."""
    ts_index = batch.columns.index("ts")
    in_range = (batch.ts_ms >= TS_MIN_MS) & (batch.ts_ms < TS_MAX_MS)
    batch.flag(~in_range, Problem.TIMESTAMP_OUT_OF_RANGE, batch.columns[ts_index])

    for name in PRICE_COLUMNS:
        if name not in batch.columns:
            continue
        values = getattr(batch, name)
        # A missing (NaN) optional price is fine; a written-out NaN is not.
        bad = np.isinf(values) if name == "price" else ~np.isfinite(values)
        bad |= batch.nan_field == batch.columns.index(name)
        batch.flag(bad, Problem.NON_FINITE_PRICE, name)
    for name in PRICE_COLUMNS:
        if name in batch.columns:
            batch.flag(getattr(batch, name) <= 0.0, Problem.NON_POSITIVE_PRICE, name)
    batch.flag(batch.ask < batch.bid, Problem.ASK_BELOW_BID)

    for name in VOLUME_COLUMNS:
        if name not in batch.columns:
            continue
        values = batch.numbers[name]
        bad = np.isinf(values) | (values < 0.0) | (batch.nan_field == batch.columns.index(name))
        batch.flag(bad, Problem.BAD_VOLUME, name)


def rejected_by_reason(batch: TickBatch) -> dict[str, int]:
    """How many lines of the batch each reason rejected (reasons with none left out)."""
    counts = np.bincount(batch.problem, minlength=256)
    out: dict[str, int] = {}
    for problem, reason in REASON.items():
        if counts[problem]:
            out[reason] = out.get(reason, 0) + int(counts[problem])
    return out


def quarantine_records(batch: TickBatch, source: str, imported_ms: int) -> list[dict[str, Any]]:
    """One ``tick_quarantine`` row per rejected line: where, why, and the line itself."""
    records: list[dict[str, Any]] = []
    line_numbers = batch.lines.line_numbers()
    for index in np.flatnonzero(batch.rejected).tolist():
        raw = batch.lines.text(index)
        records.append(
            {
                "source": source,
                "line": int(line_numbers[index]),
                "reason": REASON[Problem(int(batch.problem[index]))],
                "detail": _clip(describe(batch, index, raw), DETAIL_LIMIT),
                "raw": _clip(raw, RAW_LIMIT),
                "imported_ms": imported_ms,
            }
        )
    return records


def describe(batch: TickBatch, index: int, raw: str) -> str:
    """The detail text of a rejected line: which field, which value, what was expected."""
    problem = Problem(int(batch.problem[index]))
    column_index = int(batch.problem_field[index])
    name = batch.columns[column_index] if column_index >= 0 else ""
    fields = raw.split(",")
    value = fields[column_index] if 0 <= column_index < len(fields) else ""
    if problem is Problem.WRONG_FIELD_COUNT:
        return (
            f"expected {len(batch.columns)} comma-separated fields "
            f"({','.join(batch.columns)}), found {len(fields)}"
        )
    if problem is Problem.EMPTY_FIELD:
        return f"{name} is empty"
    if problem is Problem.BAD_NUMBER:
        return f"{name} {value!r} is not a number"
    if problem is Problem.BAD_TIMESTAMP:
        return f"{name} {value!r} is not a timestamp of the form {batch.timestamp_hint}"
    if problem is Problem.NO_UTC_OFFSET:
        return f"{name} {value!r} has no UTC offset (end it with Z or +hh:mm)"
    if problem is Problem.BAD_SYMBOL:
        try:
            normalize_symbol(value)
        except SymbolError as exc:
            return str(exc)
        return f"invalid symbol {value!r}"
    if problem is Problem.TIMESTAMP_OUT_OF_RANGE:
        return f"{name} {value!r} is {_utc_text(int(batch.ts_ms[index]))}, outside " + (
            "1970-01-01..2100-01-01 UTC"
        )
    if problem is Problem.NON_FINITE_PRICE:
        return f"{name} {value!r} is not a finite number"
    if problem is Problem.NON_POSITIVE_PRICE:
        return f"{name} {value!r} is not positive"
    if problem is Problem.ASK_BELOW_BID:
        ask, bid = (fields[batch.columns.index(c)] for c in ("ask", "bid"))
        return f"ask {ask!r} is below bid {bid!r}"
    if problem is Problem.BAD_VOLUME:
        return f"{name} {value!r} is negative or not finite"
    return problem.name.lower()


def _utc_text(ms: int) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms since 1970-01-01"


def _clip(text: str, limit: int) -> str:
    # PostgreSQL text cannot hold NUL; a binary line must not fail the whole batch.
    text = text.replace("\x00", "\ufffd")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clip_source(path: str) -> str:
    """A file path that fits ``tick_quarantine.source``, keeping its most specific end."""
    return path if len(path) <= SOURCE_LIMIT else "..." + path[-(SOURCE_LIMIT - 3) :]


__all__ = [
    "REASON",
    "REASONS",
    "TS_MAX_MS",
    "TS_MIN_MS",
    "Problem",
    "TickBatch",
    "check",
    "clip_source",
    "quarantine_records",
    "rejected_by_reason",
]
