"""The tick file formats: how each lays out its lines, and how a batch of lines is parsed.

A format only describes a file: which field is which, how its timestamps
read, where the symbol comes from. That description, a :class:`Layout`,
is settled once per file from its header (or first line) and the command
line; after that every format is parsed by the same vectorised code.

Parsing a batch tries the fast road first: pandas' C parser reads the number
columns straight into float64. One unreadable number anywhere makes that
raise for the whole batch, so the batch is then read again as text and
converted column by column, which finds exactly which lines are wrong. A
clean file never pays for the second read; a dirty batch pays for it once.
Both roads give bit-identical floats (correctly rounded), so a tick's
``tick_key`` does not depend on which road its batch took.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pandas as pd

from tickvisor.ingest.reader import LineBatch, split_fields
from tickvisor.ingest.validate import Problem, TickBatch
from tickvisor.symbols import SymbolError, normalize_symbol

Int64Array = npt.NDArray[np.int64]
Float64Array = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
ProblemArray = npt.NDArray[np.uint8]

_HOUR_MS = 3_600_000
_MS_PER_UNIT = {"s": 0, "ms": 1, "us": 1_000, "ns": 1_000_000}


class TickFileError(Exception):
    """The file itself cannot be imported: missing, unreadable, or not in the format given.

    The message names the file (and the line, where one is to blame).
    """

    def __init__(self, path: Path | str, problem: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{path}: line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


class ImportArgumentError(ValueError):
    """The command line does not fit the file (e.g. a symbol is needed and not given)."""


# --- timestamps -----------------------------------------------------------------------


class TimestampRule(Protocol):
    """How one format writes a tick's time; turns a column of them into UTC milliseconds."""

    @property
    def hint(self) -> str:
        """What a good value looks like, for quarantine details."""
        ...

    @property
    def dtype(self) -> str:
        """The pandas dtype the fast road reads the column as."""
        ...

    def parse(self, values: pd.Series[Any], widths: Int64Array) -> tuple[Int64Array, ProblemArray]:
        """UTC milliseconds per value, and OK / BAD_TIMESTAMP / NO_UTC_OFFSET per value."""
        ...


def _to_ms(parsed: pd.Series[Any]) -> tuple[Int64Array, BoolArray]:
    """Datetimes (naive = UTC) to integer milliseconds, flooring any finer digits."""
    index = pd.DatetimeIndex(parsed)
    missing = np.asarray(index.isna(), dtype=np.bool_)
    ints = np.asarray(index.asi8, dtype=np.int64)
    per_ms = _MS_PER_UNIT[str(index.unit)]
    ms = ints * 1000 if per_ms == 0 else ints // per_ms
    ms[missing] = 0
    return ms, missing


@dataclass(frozen=True)
class FixedWidthStamp:
    """Stamps of one exact width and ``strptime`` format, at a fixed or written-in offset.

    The width check matters: ``strptime`` happily reads ``00000012`` as
    ``HHMMSS`` plus 12 hundredths, where a histdata stamp that lost a digit
    should be rejected instead. It costs nothing, since field widths come
    from the byte positions already found.
    """

    format: str
    width: int
    hint: str
    #: Local time minus UTC, for formats that write local time without an offset.
    utc_offset_ms: int = 0
    #: The stamp carries its own ``%z`` offset.
    has_offset: bool = False
    dtype: str = "object"

    def parse(self, values: pd.Series[Any], widths: Int64Array) -> tuple[Int64Array, ProblemArray]:
        parsed = pd.to_datetime(values, format=self.format, errors="coerce", utc=self.has_offset)
        ms, missing = _to_ms(parsed)
        ms -= self.utc_offset_ms
        bad = missing | (widths != self.width)
        return ms, np.where(bad, Problem.BAD_TIMESTAMP, Problem.OK).astype(np.uint8)


# A date, a time (at least the hour), and then Z or a numeric offset.
_ISO_WITH_OFFSET = (
    r"\d{4}-?\d{2}-?\d{2}[T ]\d{2}(?::?\d{2}(?::?\d{2}(?:[.,]\d+)?)?)?"
    r"(?:[Zz]|[+-]\d{2}(?::?\d{2})?)"
)


@dataclass(frozen=True)
class IsoStamp:
    """ISO 8601 with a UTC offset (``Z`` or ``+hh:mm``); a stamp without one is rejected.

    A naive stamp is ambiguous (UTC? the exporter's local time?), and
    guessing wrong shifts every candle. Checking each stamp for an offset
    with a regex costs more than parsing it, so the common case (one offset
    throughout the batch) is recognised from pandas' result instead: a
    tz-aware column means every stamp that parsed had an offset.
    """

    hint: str = "ISO 8601 with an offset, e.g. 2024-01-02T00:00:00.123Z"
    dtype: str = "object"

    def parse(self, values: pd.Series[Any], widths: Int64Array) -> tuple[Int64Array, ProblemArray]:
        try:
            parsed = pd.to_datetime(values, format="ISO8601", errors="coerce")
            aware = isinstance(parsed.dtype, pd.DatetimeTZDtype)
        except (ValueError, TypeError):  # several offsets, or naive stamps among aware ones
            aware = False
        if aware:
            ms, missing = _to_ms(parsed)
            return ms, np.where(missing, Problem.BAD_TIMESTAMP, Problem.OK).astype(np.uint8)
        parsed = pd.to_datetime(values, format="ISO8601", errors="coerce", utc=True)
        ms, missing = _to_ms(parsed)
        with_offset = np.asarray(
            values.astype(object).str.fullmatch(_ISO_WITH_OFFSET).fillna(False), dtype=np.bool_
        )
        problems = np.where(
            missing, Problem.BAD_TIMESTAMP, np.where(with_offset, Problem.OK, Problem.NO_UTC_OFFSET)
        )
        return ms, problems.astype(np.uint8)


_EPOCH_MS = re.compile(r"\s*[+-]?\d{1,18}\s*")


@dataclass(frozen=True)
class EpochMillis:
    """Integer milliseconds since 1970-01-01 UTC; the fast road reads them as int64."""

    hint: str = "integer milliseconds since 1970-01-01 UTC"
    dtype: str = "int64"

    def parse(self, values: pd.Series[Any], widths: Int64Array) -> tuple[Int64Array, ProblemArray]:
        if values.dtype == np.int64:
            ms = np.asarray(values, dtype=np.int64)
            return ms, np.zeros(len(ms), dtype=np.uint8)
        texts = values.astype(object).tolist()
        ok = np.fromiter(
            (isinstance(t, str) and _EPOCH_MS.fullmatch(t) is not None for t in texts),
            dtype=np.bool_,
            count=len(texts),
        )
        ms = np.zeros(len(texts), dtype=np.int64)
        for i in np.flatnonzero(ok).tolist():
            ms[i] = int(texts[i])
        return ms, np.where(ok, Problem.OK, Problem.BAD_TIMESTAMP).astype(np.uint8)


# --- layouts --------------------------------------------------------------------------

#: Column names a layout can use; every other column of a file is a number.
_TEXT_COLUMNS = frozenset({"ts", "symbol"})
_NAN_WORDS = frozenset({"nan", "+nan", "-nan"})


@dataclass(frozen=True)
class Layout:
    """How the data lines of one particular file are laid out, and how to parse them.

    ``columns`` are canonical names in file order: ``ts``, ``symbol``,
    ``bid``, ``ask``, ``price``, ``volume``, ``ask_volume``, ``bid_volume``.
    ``symbol`` is the file's one symbol when it has no symbol column.
    ``volume_parts`` are summed into the tick's volume (dukascopy splits it).
    """

    format: str
    columns: tuple[str, ...]
    timestamp: TimestampRule
    symbol: str | None = None
    optional: frozenset[str] = frozenset()
    volume_parts: tuple[str, ...] = ()

    def parse(self, lines: LineBatch) -> TickBatch:
        """Parse a batch of lines; lines that cannot be parsed come back with a problem."""
        batch = TickBatch.blank(lines, self.columns, self.timestamp.hint)
        fields = split_fields(lines, len(self.columns))
        batch.problem[fields.blank] = Problem.BLANK
        batch.flag(~fields.good, Problem.WRONG_FIELD_COUNT)
        if self.symbol is not None:
            batch.symbols = [self.symbol]
            batch.symbol_code[:] = 0
        good = np.flatnonzero(fields.good)
        if len(good):
            self._parse_good(batch, good, fields.payload, fields.widths)
        else:
            batch.numbers = {c: batch.bid.copy() for c in self.columns if c not in _TEXT_COLUMNS}
        return batch

    def _parse_good(
        self, batch: TickBatch, good: Int64Array, payload: bytes, widths: Int64Array
    ) -> None:
        frame = self._read(payload)
        if len(frame) != len(good):
            raise AssertionError(
                f"{self.format}: parsed {len(frame)} rows from {len(good)} lines "
                f"(lines {batch.lines.first_line}..{batch.lines.first_line + len(batch) - 1})"
            )
        n = len(good)
        problem = np.zeros(n, dtype=np.uint8)
        at_field = np.full(n, -1, dtype=np.int8)
        nan_field = np.full(n, -1, dtype=np.int8)

        def flag(mask: BoolArray, code: Problem | int, column: int) -> None:
            hit = mask & (problem == Problem.OK)
            problem[hit] = code
            at_field[hit] = column

        numbers: dict[str, Float64Array] = {}
        for index, name in enumerate(self.columns):
            column = frame[name]
            width = widths[:, index]
            if name == "ts":
                ms, ts_problem = self.timestamp.parse(column, width)
                for code in (Problem.BAD_TIMESTAMP, Problem.NO_UTC_OFFSET):
                    flag(ts_problem == code, code, index)
                batch.ts_ms[good] = ms
            elif name == "symbol":
                codes, batch.symbols = _symbol_codes(column)
                flag(codes < 0, Problem.BAD_SYMBOL, index)
                batch.symbol_code[good] = codes
            else:
                values, unreadable, nan_word = _numbers(column)
                empty = width == 0
                if name not in self.optional:
                    flag(empty, Problem.EMPTY_FIELD, index)
                flag(unreadable & ~empty, Problem.BAD_NUMBER, index)
                nan_field[nan_word & (nan_field < 0)] = index
                numbers[name] = values

        batch.problem[good] = problem
        batch.problem_field[good] = at_field
        batch.nan_field[good] = nan_field
        for name, values in numbers.items():
            full = np.full(len(batch), np.nan)
            full[good] = values
            batch.numbers[name] = full
        batch.bid = batch.numbers["bid"]
        batch.ask = batch.numbers["ask"]
        if "price" in batch.numbers:
            batch.price = batch.numbers["price"]
        if self.volume_parts:
            volume = batch.numbers[self.volume_parts[0]].copy()
            for part in self.volume_parts[1:]:
                volume += batch.numbers[part]
            batch.volume = volume

    def _read(self, payload: bytes) -> pd.DataFrame:
        options: dict[str, Any] = {
            "header": None,
            "names": list(self.columns),
            "engine": "c",
            "quoting": csv.QUOTE_NONE,
            "lineterminator": "\n",
            "skip_blank_lines": False,
            "index_col": False,
            "encoding": "utf-8",
            "encoding_errors": "replace",
            "keep_default_na": False,
        }
        typed = {
            name: self.timestamp.dtype if name == "ts" else "object" if name == "symbol" else "f8"
            for name in self.columns
        }
        frame: pd.DataFrame
        try:
            if self.optional:
                frame = pd.read_csv(
                    io.BytesIO(payload),
                    dtype=typed,
                    na_values={name: [""] for name in self.optional},
                    **options,
                )
            else:
                frame = pd.read_csv(io.BytesIO(payload), dtype=typed, na_filter=False, **options)
        except (ValueError, OverflowError):
            # Some field does not read as its type: read everything as text and
            # let the column converters find which lines are to blame.
            frame = pd.read_csv(io.BytesIO(payload), dtype=object, na_filter=False, **options)
        return frame


def _numbers(column: pd.Series[Any]) -> tuple[Float64Array, BoolArray, BoolArray]:
    """Floats of a number column; which values were unreadable, and which said NaN."""
    if column.dtype == np.float64:
        values = np.asarray(column, dtype=np.float64)
        none = np.zeros(len(values), dtype=np.bool_)
        return values, none, none
    values = np.asarray(pd.to_numeric(column, errors="coerce"), dtype=np.float64)
    unreadable = np.isnan(values)
    nan_word = np.zeros(len(values), dtype=np.bool_)
    for i in np.flatnonzero(unreadable).tolist():
        if str(column.iat[i]).strip().lower() in _NAN_WORDS:
            unreadable[i] = False
            nan_word[i] = True
    return values, unreadable, nan_word


@functools.lru_cache(maxsize=4096)
def _canonical(raw: str) -> str | None:
    try:
        return normalize_symbol(raw)
    except SymbolError:
        return None


def _symbol_codes(column: pd.Series[Any]) -> tuple[Int64Array, list[str]]:
    """Per row, an index into the returned canonical symbols (-1 where it is no symbol).

    Symbols repeat endlessly in a tick file, so each distinct spelling is
    normalised once and the rows are mapped through integer codes.
    """
    codes, uniques = pd.factorize(column)
    symbols: list[str] = []
    position: dict[str, int] = {}
    remap = np.empty(len(uniques) + 1, dtype=np.int64)
    remap[-1] = -1  # factorize codes a missing value as -1
    for k, raw in enumerate(uniques.tolist()):
        canonical = _canonical(str(raw))
        if canonical is None:
            remap[k] = -1
            continue
        if canonical not in position:
            position[canonical] = len(symbols)
            symbols.append(canonical)
        remap[k] = position[canonical]
    return remap[np.asarray(codes, dtype=np.int64)], symbols


# --- the formats ----------------------------------------------------------------------

#: (path, header line or None, first data line or None, --symbol or None) -> Layout
Resolver = Callable[[Path, str | None, str | None, str | None], Layout]


@dataclass(frozen=True)
class TickFormat:
    """A supported file format: its name, whether it has a header, and how to lay it out."""

    name: str
    has_header: bool
    example: str
    resolve: Resolver


_HISTDATA_NAME = re.compile(r"DAT_ASCII_([A-Za-z]{6})_T_", re.IGNORECASE)


def _histdata(path: Path, header: str | None, first: str | None, symbol: str | None) -> Layout:
    if symbol is None:
        match = _HISTDATA_NAME.search(path.name)
        symbol = _canonical(match.group(1)) if match else None
    if symbol is None:
        raise ImportArgumentError(
            f"{path}: --symbol is required for histdata files whose name does not "
            "name the pair (like DAT_ASCII_EURUSD_T_202401.csv)"
        )
    return Layout(
        format="histdata",
        columns=("ts", "bid", "ask", "volume"),
        # EST all year round, no daylight saving: local = UTC - 5 h.
        timestamp=FixedWidthStamp(
            "%Y%m%d %H%M%S%f", 18, "YYYYMMDD HHMMSSNNN (EST, UTC-5)", utc_offset_ms=-5 * _HOUR_MS
        ),
        symbol=symbol,
        volume_parts=("volume",),
    )


def _truefx(path: Path, header: str | None, first: str | None, symbol: str | None) -> Layout:
    if symbol is not None:
        raise ImportArgumentError(
            f"{path}: --symbol does not apply to truefx files: every row names its symbol"
        )
    return Layout(
        format="truefx",
        columns=("symbol", "ts", "bid", "ask"),
        timestamp=FixedWidthStamp("%Y%m%d %H:%M:%S.%f", 21, "YYYYMMDD HH:MM:SS.mmm (UTC)"),
    )


_DUKASCOPY_COLUMNS = ("ask", "bid", "askvolume", "bidvolume")


def _dukascopy(path: Path, header: str | None, first: str | None, symbol: str | None) -> Layout:
    names = [name.strip().lower() for name in (header or "").split(",")]
    if names[0] == "gmt time":
        stamp = FixedWidthStamp("%d.%m.%Y %H:%M:%S.%f", 23, "DD.MM.YYYY HH:MM:SS.mmm (GMT)")
    elif names[0] == "local time":
        stamp = FixedWidthStamp(
            "%d.%m.%Y %H:%M:%S.%f GMT%z",
            32,
            "DD.MM.YYYY HH:MM:SS.mmm GMT+hhmm",
            has_offset=True,
        )
    else:
        stamp = None
    if stamp is None or tuple(names[1:]) != _DUKASCOPY_COLUMNS:
        raise TickFileError(
            path,
            f"not a dukascopy tick header: found {(header or '')[:200]!r}, expected "
            "'Gmt time,Ask,Bid,AskVolume,BidVolume' (or 'Local time,...')",
            line=1,
        )
    if symbol is None:
        raise ImportArgumentError(f"{path}: --symbol is required for dukascopy files")
    return Layout(
        format="dukascopy",
        columns=("ts", "ask", "bid", "ask_volume", "bid_volume"),
        timestamp=stamp,
        symbol=symbol,
        volume_parts=("ask_volume", "bid_volume"),
    )


_CSV_REQUIRED = ("ts", "bid", "ask")
_CSV_OPTIONAL = ("price", "volume", "symbol")
_CSV_EXPECTED = "ts, bid, ask and optionally price, volume, symbol"


def _csv(path: Path, header: str | None, first: str | None, symbol: str | None) -> Layout:
    if header is None or not header.strip():
        raise TickFileError(path, f"no header line; expected one naming {_CSV_EXPECTED}", line=1)
    names = tuple(name.strip().lower() for name in header.split(","))
    unknown = [n for n in names if n not in _CSV_REQUIRED + _CSV_OPTIONAL]
    missing = [n for n in _CSV_REQUIRED if n not in names]
    if unknown or missing:
        faults = []
        if missing:
            faults.append(f"lacks required column(s) {', '.join(missing)}")
        if unknown:
            faults.append(f"has unknown column(s) {', '.join(map(repr, unknown))}")
        raise TickFileError(
            path, f"the header {' and '.join(faults)}; expected {_CSV_EXPECTED}", line=1
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise TickFileError(path, f"column(s) {', '.join(repeated)} named twice", line=1)
    if "symbol" in names and symbol is not None:
        raise ImportArgumentError(f"{path}: --symbol does not apply: the file has a symbol column")
    if "symbol" not in names and symbol is None:
        raise ImportArgumentError(f"{path}: --symbol is required: the file has no symbol column")

    # The first data row decides whether the file writes epoch milliseconds or ISO 8601.
    stamp: TimestampRule = IsoStamp()
    first_fields = (first or "").split(",")
    if len(first_fields) == len(names) and _EPOCH_MS.fullmatch(first_fields[names.index("ts")]):
        stamp = EpochMillis()
    return Layout(
        format="csv",
        columns=names,
        timestamp=stamp,
        symbol=symbol,
        optional=frozenset(n for n in ("price", "volume") if n in names),
        volume_parts=("volume",) if "volume" in names else (),
    )


FORMATS: dict[str, TickFormat] = {
    fmt.name: fmt
    for fmt in (
        TickFormat("histdata", False, "20240102 170000123,1.10375,1.10393,0", _histdata),
        TickFormat("truefx", False, "EUR/USD,20240102 00:00:00.123,1.10375,1.10393", _truefx),
        TickFormat(
            "dukascopy",
            True,
            "Gmt time,Ask,Bid,AskVolume,BidVolume / 02.01.2024 00:00:00.123,1.1,1.09,1.5,2.25",
            _dukascopy,
        ),
        TickFormat("csv", True, "ts,bid,ask[,price][,volume][,symbol]", _csv),
    )
}


__all__ = [
    "FORMATS",
    "EpochMillis",
    "FixedWidthStamp",
    "ImportArgumentError",
    "IsoStamp",
    "Layout",
    "TickFileError",
    "TickFormat",
    "TimestampRule",
]
