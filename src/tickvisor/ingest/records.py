"""Importing order-book snapshots (``depth-jsonl``) and sentiment readings (``sentiment-csv``).

These files feed the depth and sentiment services the way tick files feed
the candles, and they follow the tick importer's rules (``docs/import.md``):
the file is read one batch of lines at a time, each batch is one
transaction, every line is exactly one of inserted, duplicate or rejected,
a rejected line goes to ``tick_quarantine`` once with its reason, and a
second import of the same file changes nothing.

What differs is what counts as a bad line. Order books and percentages are
*judged* by the services, which quarantine crossed books or a 120 % reading
with their own reasons; judging them here as well would split one decision
between two places and lose readings a later, better rule might accept. So
this importer rejects only a line it cannot turn into a row at all: no
JSON object, no usable symbol or time, no book sides, numbers that are not
numbers, or a provider the table cannot hold.

Lines are parsed one by one in Python rather than vectorised like ticks:
a snapshot is nested JSON and a sentiment file is small, so the database
insert, not the parsing, is what an import of these files waits for.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Connection, Engine, Table, func, literal_column, select

from tickvisor.clock import Clock, RealClock, now_ms
from tickvisor.ingest.formats import ImportArgumentError, TickFileError, _canonical
from tickvisor.ingest.importer import ImportSummary, LineFile, _connected, _database_error
from tickvisor.ingest.reader import LineBatch
from tickvisor.ingest.validate import (
    DETAIL_LIMIT,
    RAW_LIMIT,
    TS_MAX_MS,
    TS_MIN_MS,
    _clip,
    _utc_text,
    clip_source,
)
from tickvisor.logs import get_logger
from tickvisor.store.engine import safe_url
from tickvisor.store.inputs import _book_side, insert_depth_snapshots, insert_sentiment_rows
from tickvisor.store.schema import depth_snapshots, sentiment_raw, tick_quarantine, upsert
from tickvisor.symbols import SymbolError, normalize_symbol

log = get_logger("tickvisor.ingest")

DEPTH_FORMAT = "depth-jsonl"
SENTIMENT_FORMAT = "sentiment-csv"

#: Lines per batch (and per transaction). Smaller than for ticks: one
#: snapshot line can carry a deep book, and memory must stay bounded.
DEFAULT_RECORD_BATCH_SIZE = 5_000

#: The one header a ``sentiment-csv`` file may start with (matched ignoring case and spaces).
SENTIMENT_HEADER = ("symbol", "ts", "long_pct", "short_pct", "total_traders", "provider")

# The reasons share the tick importer's vocabulary where the problem is the
# same, so one query over ``tick_quarantine`` reads the same for every format.
UNPARSEABLE = "unparseable"
BAD_SYMBOL = "bad_symbol"
TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
BAD_PROVIDER = "bad_provider"
#: Every reason a line of these formats can be quarantined with.
RECORD_REASONS = (UNPARSEABLE, BAD_SYMBOL, TIMESTAMP_OUT_OF_RANGE, BAD_PROVIDER)

_HEAD_BYTES = 1 << 20
_BOM = b"\xef\xbb\xbf"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_EPOCH_MS = re.compile(r"[+-]?\d{1,18}")
# Plain decimal notation only: ``float`` would also take "1_000", "nan" and "inf".
_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_WHOLE = re.compile(r"([+-]?\d{1,19})(?:\.0*)?")
_INT64_MAX = (1 << 63) - 1
_TS_HINT = "epoch milliseconds or ISO 8601 such as 2024-01-02T00:00:00.123Z"
# ``provider`` is part of a row's identity and a VARCHAR(64) on both tables.
_PROVIDER_LIMIT = min(
    int(getattr(table.c.provider.type, "length", None) or 64)
    for table in (depth_snapshots, sentiment_raw)
)


class _Rejected(Exception):
    """A line that cannot become a row: its quarantine reason and detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# --- fields ---------------------------------------------------------------------------


def _shown(value: object, limit: int = 80) -> str:
    """A value quoted for a detail, cut short so one huge field cannot crowd out the rest."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_kind(value: object) -> str:
    """A JSON value's type, in the words of whoever wrote the file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _parse_symbol(value: object) -> str:
    """The canonical ``BASE/QUOTE`` spelling, so the same pair is one series in every table."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _Rejected(BAD_SYMBOL, "symbol is missing" if value is None else "symbol is empty")
    if not isinstance(value, str):
        raise _Rejected(BAD_SYMBOL, f"symbol {_shown(value)} is {_json_kind(value)}, not text")
    canonical = _canonical(value)
    if canonical is not None:
        return canonical
    try:
        normalize_symbol(value)
    except SymbolError as exc:  # only for its message: _canonical is cached, this is not
        raise _Rejected(BAD_SYMBOL, str(exc)) from None
    raise _Rejected(BAD_SYMBOL, f"invalid symbol {_shown(value)}")


def _parse_timestamp(value: object) -> int:
    """UTC milliseconds from epoch milliseconds (number or digits) or ISO 8601.

    Unlike a tick csv, a stamp without an offset is read as UTC: snapshot
    and sentiment exports write UTC without saying so, and these rows are
    not bucketed into candles where a wrong zone would shift every bar.
    Digits finer than a millisecond are floored, as for ticks. Times
    outside 1970..2100 are refused as the tick importer refuses them: they
    are microseconds taken for milliseconds or junk, the time is part of a
    row's identity, and one past BIGINT would fail the whole batch.
    """
    if value is None:
        raise _Rejected(UNPARSEABLE, "ts is missing")
    ms: int
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Rejected(UNPARSEABLE, f"ts {_shown(value)} is {_json_kind(value)}, not a time")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, float):
        if not value.is_integer():
            raise _Rejected(UNPARSEABLE, f"ts {_shown(value)} is not whole milliseconds")
        ms = int(value)
    else:
        text = value.strip()
        if not text:
            raise _Rejected(UNPARSEABLE, "ts is empty")
        if _EPOCH_MS.fullmatch(text):
            ms = int(text)
        else:
            try:
                stamp = datetime.fromisoformat(text)
            except ValueError:
                raise _Rejected(
                    UNPARSEABLE, f"ts {_shown(value)} is not a time: expected {_TS_HINT}"
                ) from None
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=UTC)
            ms = (stamp - _EPOCH) // _ONE_MS
    if not TS_MIN_MS <= ms < TS_MAX_MS:
        raise _Rejected(
            TIMESTAMP_OUT_OF_RANGE,
            f"ts {_shown(value)} is {_utc_text(ms)}, outside 1970-01-01..2100-01-01 UTC",
        )
    return ms


def _parse_provider(value: object) -> str:
    """The provider as stored: ``""`` when none is given (the column's default)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Rejected(BAD_PROVIDER, f"provider {_shown(value)} is {_json_kind(value)}, not text")
    # Stripped because it is part of the identity: " oanda" would be a second provider.
    text = value.strip()
    if len(text) > _PROVIDER_LIMIT:
        raise _Rejected(
            BAD_PROVIDER,
            f"provider {_shown(text)} is {len(text)} characters, longer than {_PROVIDER_LIMIT}",
        )
    if "\x00" in text:  # PostgreSQL text cannot hold NUL: it would fail the whole batch
        raise _Rejected(BAD_PROVIDER, f"provider {_shown(text)} contains a NUL character")
    return text


def _decimal(name: str, text: str) -> float:
    """A required reading: a finite number in plain decimal notation."""
    value = text.strip()
    if not value:
        raise _Rejected(UNPARSEABLE, f"{name} is empty")
    number = float(value) if _DECIMAL.fullmatch(value) else None
    if number is None or number in (float("inf"), float("-inf")):
        raise _Rejected(UNPARSEABLE, f"{name} {_shown(text)} is not a finite decimal number")
    return number


def _whole(name: str, text: str) -> int | None:
    """An optional count: empty means unknown (NULL); otherwise a 64-bit whole number."""
    value = text.strip()
    if not value:
        return None
    match = _WHOLE.fullmatch(value)
    if match is None:
        raise _Rejected(UNPARSEABLE, f"{name} {_shown(text)} is not a whole number")
    number = int(match.group(1))
    if not -_INT64_MAX - 1 <= number <= _INT64_MAX:
        raise _Rejected(UNPARSEABLE, f"{name} {_shown(text)} is outside the 64-bit range")
    return number


# --- lines ----------------------------------------------------------------------------


def _depth_row(text: str) -> dict[str, Any]:
    """One ``depth-jsonl`` line as an ``insert_depth_snapshots`` row.

    ``bids``/``asks`` only have to be lists: their levels are the depth
    service's to judge (a crossed book or a bad level is quarantined there).
    Keys other than the five are ignored, so producers can add fields.
    """
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Rejected(UNPARSEABLE, f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise _Rejected(UNPARSEABLE, "not valid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise _Rejected(UNPARSEABLE, f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _Rejected(UNPARSEABLE, f"expected a JSON object, found {_json_kind(obj)}")
    row: dict[str, Any] = {
        "symbol": _parse_symbol(obj.get("symbol")),
        "ts_ms": _parse_timestamp(obj.get("ts")),
        "provider": _parse_provider(obj.get("provider")),
    }
    for side in ("bids", "asks"):
        if side not in obj:
            raise _Rejected(UNPARSEABLE, f"{side} is missing")
        levels = obj[side]
        if not isinstance(levels, list):
            raise _Rejected(
                UNPARSEABLE,
                f"{side} is {_json_kind(levels)}, expected a JSON list of [price, size]",
            )
        # Serialised now, the way the writer would, so a batch holds short strings
        # rather than thousands of nested lists for the garbage collector to walk.
        try:
            row[side] = _book_side(levels)
        except (ValueError, RecursionError):  # nesting just under the parser's limit
            raise _Rejected(UNPARSEABLE, f"{side} is nested too deeply") from None
    return row


def _sentiment_row(text: str) -> dict[str, Any]:
    """One ``sentiment-csv`` data line as an ``insert_sentiment_rows`` row.

    Percentages are stored as written, out of range or not (the sentiment
    service judges them); only text that is no number at all is refused.
    A field may be quoted, as spreadsheet exports do.
    """
    try:
        fields = next(csv.reader([text], strict=True))
    except csv.Error as exc:
        raise _Rejected(UNPARSEABLE, f"not a csv line: {exc}") from None
    if len(fields) != len(SENTIMENT_HEADER):
        raise _Rejected(
            UNPARSEABLE,
            f"expected {len(SENTIMENT_HEADER)} comma-separated fields "
            f"({','.join(SENTIMENT_HEADER)}), found {len(fields)}",
        )
    symbol, ts, long_pct, short_pct, total_traders, provider = fields
    return {
        "symbol": _parse_symbol(symbol),
        "ts_ms": _parse_timestamp(ts),
        "long_pct": _decimal("long_pct", long_pct),
        "short_pct": _decimal("short_pct", short_pct),
        "total_traders": _whole("total_traders", total_traders),
        "provider": _parse_provider(provider),
    }


# --- formats and files ----------------------------------------------------------------


@dataclass(frozen=True)
class RecordFormat:
    """A record file format: how a line becomes a row, and where rows go."""

    name: str
    header: tuple[str, ...] | None
    parse: Callable[[str], dict[str, Any]]
    table: Table
    insert: Callable[[Connection, Sequence[Mapping[str, Any]]], int]


RECORD_FORMATS: dict[str, RecordFormat] = {
    DEPTH_FORMAT: RecordFormat(
        DEPTH_FORMAT, None, _depth_row, depth_snapshots, insert_depth_snapshots
    ),
    SENTIMENT_FORMAT: RecordFormat(
        SENTIMENT_FORMAT, SENTIMENT_HEADER, _sentiment_row, sentiment_raw, insert_sentiment_rows
    ),
}


class RecordFile(LineFile):
    """An open record file whose header (if its format has one) has been checked."""

    def __init__(self, *, fmt: RecordFormat, **opened: Any) -> None:
        super().__init__(**opened)
        self.format = fmt


def open_record_file(path: str | Path, fmt: str) -> RecordFile:
    """Open ``path`` as a ``fmt`` record file and check its header.

    Raises :class:`TickFileError` (naming the file) when it cannot be read
    or its header is not the format's, and :class:`ImportArgumentError` for
    an unknown ``fmt``. A file with no bytes at all is accepted: it simply
    has no rows.
    """
    if fmt not in RECORD_FORMATS:
        raise ImportArgumentError(
            f"unknown format {fmt!r}; expected one of {', '.join(sorted(RECORD_FORMATS))}"
        )
    record_format = RECORD_FORMATS[fmt]
    # One spelling per file, so re-imports via another relative path share quarantine rows.
    file_path = Path(path).resolve()
    try:
        stream = open(file_path, "rb")  # noqa: SIM115 - owned by the returned RecordFile
    except FileNotFoundError:
        raise TickFileError(file_path, "no such file") from None
    except IsADirectoryError:
        raise TickFileError(file_path, f"is a directory, not a {fmt} file") from None
    except PermissionError:
        raise TickFileError(file_path, "permission denied") from None
    except OSError as exc:
        raise TickFileError(file_path, f"cannot open: {exc.strerror or exc}") from None
    try:
        size = file_path.stat().st_size
        head = stream.read(_HEAD_BYTES)
        header_bytes = 0
        if head.startswith(_BOM):
            head, header_bytes = head[len(_BOM) :], len(_BOM)
        first_line = 1
        if record_format.header is not None and head:
            head, used = _check_header(file_path, record_format, head, header_bytes)
            header_bytes += used
            first_line = 2
    except OSError as exc:
        stream.close()
        raise TickFileError(file_path, f"read failed: {exc.strerror or exc}") from None
    except BaseException:
        stream.close()
        raise
    return RecordFile(
        path=file_path,
        fmt=record_format,
        stream=stream,
        rest_of_head=head,
        first_line=first_line,
        size=size,
        header_bytes=header_bytes,
    )


def _check_header(
    path: Path, fmt: RecordFormat, head: bytes, read_before: int
) -> tuple[bytes, int]:
    """Refuse any header but the format's; returns the bytes after it and its length.

    A wrong header is a file-level error rather than a quarantined line: it
    almost always means another kind of file, whose every line would be
    quarantined as a bad reading.
    """
    assert fmt.header is not None
    expected = ",".join(fmt.header)
    end = head.find(b"\n")
    if end < 0 and len(head) + read_before >= _HEAD_BYTES:
        raise TickFileError(path, "no line break in the first MiB", line=1)
    raw, rest = (head[:end], head[end + 1 :]) if end >= 0 else (head, b"")
    try:
        header = raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
        raise TickFileError(
            path, f"the header is not UTF-8 text; expected {expected!r}", line=1
        ) from None
    if tuple(name.strip().lower() for name in header.split(",")) != fmt.header:
        raise TickFileError(
            path,
            f"not a {fmt.name} file: expected the header {expected!r}, found {_shown(header, 200)}",
            line=1,
        )
    return rest, len(raw) + (end >= 0)


# --- importing ------------------------------------------------------------------------


def import_records(
    record_file: RecordFile,
    engine: Engine,
    *,
    batch_size: int = DEFAULT_RECORD_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
    clock: Clock | None = None,
) -> ImportSummary:
    """Import an opened record file into ``engine``'s database; logs ``import.completed``.

    Each batch of lines is one transaction (its rows and its quarantined
    lines together), so an import stopped half way keeps what it committed
    and a re-run adds only the rest. ``progress`` is called with the file
    bytes each batch used up.
    """
    if batch_size < 1:
        raise ImportArgumentError(f"--batch-size must be >= 1, got {batch_size}")
    clock = clock or RealClock()
    started = clock.monotonic()
    fmt = record_file.format
    source = clip_source(str(record_file.path))
    log.info(
        "import.started",
        file=str(record_file.path),
        format=fmt.name,
        bytes=record_file.size,
        database=safe_url(engine.url),
    )
    if progress is not None:
        progress(record_file.header_bytes)

    rows_read = inserted = valid = 0
    by_reason: dict[str, int] = {}
    with _connected(engine) as conn:
        for lines in record_file.batches(batch_size):
            batch = _parse_batch(fmt, lines, source, now_ms(clock))
            try:
                inserted += _write(conn, fmt, batch.rows, batch.quarantine)
            except Exception as exc:
                raise _database_error(engine, conn, exc, lines) from exc
            rows_read += batch.rows_read
            valid += len(batch.rows)
            for record in batch.quarantine:
                by_reason[record["reason"]] = by_reason.get(record["reason"], 0) + 1
            if progress is not None:
                progress(lines.bytes_read)

    seconds = max(clock.monotonic() - started, 0.0)
    summary = ImportSummary(
        file=str(record_file.path),
        format=fmt.name,
        rows_read=rows_read,
        inserted=inserted,
        duplicates=valid - inserted,
        rejected=rows_read - valid,
        rejected_by_reason=by_reason,
        seconds=round(seconds, 3),
        rows_per_second=round(rows_read / seconds, 1) if seconds > 0 else 0.0,
    )
    log.info("import.completed", **summary.as_dict())
    return summary


def import_depth_file(
    engine: Engine,
    path: str | Path,
    *,
    batch_size: int = DEFAULT_RECORD_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
    clock: Clock | None = None,
) -> ImportSummary:
    """Import a ``depth-jsonl`` file of order-book snapshots into ``depth_snapshots``."""
    with open_record_file(path, DEPTH_FORMAT) as record_file:
        return import_records(
            record_file, engine, batch_size=batch_size, progress=progress, clock=clock
        )


def import_sentiment_file(
    engine: Engine,
    path: str | Path,
    *,
    batch_size: int = DEFAULT_RECORD_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
    clock: Clock | None = None,
) -> ImportSummary:
    """Import a ``sentiment-csv`` file of positioning readings into ``sentiment_raw``."""
    with open_record_file(path, SENTIMENT_FORMAT) as record_file:
        return import_records(
            record_file, engine, batch_size=batch_size, progress=progress, clock=clock
        )


@dataclass(frozen=True)
class _ParsedBatch:
    rows: list[dict[str, Any]]
    quarantine: list[dict[str, Any]]
    rows_read: int


def _parse_batch(
    fmt: RecordFormat, lines: LineBatch, source: str, imported_ms: int
) -> _ParsedBatch:
    """The batch's rows and quarantine records; blank lines are skipped, not rows."""
    rows: list[dict[str, Any]] = []
    quarantine: list[dict[str, Any]] = []
    rows_read = 0
    for index in range(len(lines)):
        data = lines.data[int(lines.starts[index]) : int(lines.ends[index])]
        if not data.strip():
            continue
        rows_read += 1
        try:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _Rejected(
                    UNPARSEABLE, f"not UTF-8 text (bad byte at column {exc.start + 1})"
                ) from None
            rows.append(fmt.parse(text))
        except _Rejected as rejected:
            quarantine.append(
                {
                    "source": source,
                    "line": lines.first_line + index,
                    "reason": rejected.reason,
                    "detail": _clip(rejected.detail, DETAIL_LIMIT),
                    "raw": _clip(lines.text(index), RAW_LIMIT),
                    "imported_ms": imported_ms,
                }
            )
    return _ParsedBatch(rows, quarantine, rows_read)


def _write(
    conn: Connection,
    fmt: RecordFormat,
    rows: Sequence[Mapping[str, Any]],
    quarantine: Sequence[Mapping[str, Any]],
) -> int:
    """Write one batch in one transaction; returns how many of its rows were new.

    The input writers report rows sent, not rows inserted, so what was new
    is measured beside them without reading the table first (a read before
    the write would let a concurrent writer slip in between, and on SQLite
    would turn the transaction's later write into a busy-snapshot error):
    SQLite counts this connection's changes, and on PostgreSQL every row
    carries the id of the transaction that wrote it.
    """
    inserted = 0
    with conn.begin():
        if rows:
            dialect = conn.dialect.name
            if dialect == "sqlite":
                raw: Any = conn.connection.driver_connection
                before = int(raw.total_changes)
                fmt.insert(conn, rows)
                inserted = int(raw.total_changes) - before
            elif dialect == "postgresql":
                fmt.insert(conn, rows)
                table = fmt.table
                symbols = sorted({str(row["symbol"]) for row in rows})
                this_transaction = literal_column("pg_current_xact_id()::text::bigint", BigInteger)
                inserted = int(
                    conn.execute(
                        select(func.count())
                        .select_from(table)
                        .where(table.c.symbol.in_(symbols), table.c.txid == this_transaction)
                    ).scalar_one()
                )
            else:
                raise NotImplementedError(f"{fmt.name} import: unsupported database {dialect!r}")
        if quarantine:
            upsert(
                conn,
                tick_quarantine,
                quarantine,
                index_elements=("source", "line"),
                update_columns=(),
            )
    return inserted


__all__ = [
    "BAD_PROVIDER",
    "BAD_SYMBOL",
    "DEFAULT_RECORD_BATCH_SIZE",
    "DEPTH_FORMAT",
    "RECORD_FORMATS",
    "RECORD_REASONS",
    "SENTIMENT_FORMAT",
    "SENTIMENT_HEADER",
    "TIMESTAMP_OUT_OF_RANGE",
    "UNPARSEABLE",
    "RecordFile",
    "RecordFormat",
    "import_depth_file",
    "import_records",
    "import_sentiment_file",
    "open_record_file",
]
