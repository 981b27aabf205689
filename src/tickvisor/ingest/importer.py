"""One import, start to finish: open the file, stream its batches, write them, sum up.

The file is read, parsed and checked one batch of lines at a time, and each
batch is written in its own transaction, so memory stays flat for a file of
any size and a killed import loses at most the batch in flight (which the
re-run then writes; nothing committed is written twice). Parsing the next
batch overlaps writing the previous one on a second thread: pandas' parser
and the database drivers release the GIL for most of their work, so on a
machine with two cores the parse costs little wall time.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self, TypeVar

import numpy as np
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from tickvisor.clock import Clock, RealClock, now_ms
from tickvisor.ingest.formats import FORMATS, ImportArgumentError, Layout, TickFileError, TickFormat
from tickvisor.ingest.reader import LineBatch, read_batches
from tickvisor.ingest.validate import (
    Problem,
    TickBatch,
    check,
    clip_source,
    describe,
    quarantine_records,
    rejected_by_reason,
)
from tickvisor.ingest.writer import TickRows, writer_for
from tickvisor.logs import get_logger
from tickvisor.store.engine import DatabaseUnavailable, safe_url
from tickvisor.symbols import SymbolError, normalize_symbol

log = get_logger("tickvisor.ingest")

#: Lines per batch (and per transaction) unless told otherwise.
DEFAULT_BATCH_SIZE = 100_000
#: How far into a file its header and first data line are looked for.
_HEAD_BYTES = 1 << 20
#: A file none of whose first this many data lines parse is not in the format given.
_SNIFF_LINES = 100
_BOM = b"\xef\xbb\xbf"

T = TypeVar("T")
#: A batch ready to write: its lines, the parsed batch, its valid ticks, its quarantine rows.
_Prepared = tuple[LineBatch, TickBatch, TickRows, list[dict[str, Any]]]


@dataclass(frozen=True)
class ImportSummary:
    """What an import did: the fields of its ``import.completed`` log line.

    ``rows_read`` counts data lines (blank lines are skipped, not rows);
    every row read is exactly one of inserted, duplicate (already stored,
    or repeated within the file) or rejected (quarantined).
    """

    file: str
    format: str
    rows_read: int
    inserted: int
    duplicates: int
    rejected: int
    rejected_by_reason: dict[str, int]
    seconds: float
    rows_per_second: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class LineFile:
    """An open input file whose header has been read: what every import format streams from.

    Opening is separate from importing so that a command can refuse a bad
    file (or a bad ``--symbol``) before it touches, or creates, a database.
    """

    def __init__(
        self,
        *,
        path: Path,
        stream: BinaryIO,
        rest_of_head: bytes,
        first_line: int,
        size: int,
        header_bytes: int,
    ) -> None:
        self.path = path
        self.size = size
        self.header_bytes = header_bytes
        self._stream = stream
        self._rest_of_head = rest_of_head
        self._first_line = first_line

    def batches(self, batch_lines: int) -> Iterator[LineBatch]:
        """The data lines, ``batch_lines`` at a time; can be iterated once."""
        try:
            yield from read_batches(self._stream, batch_lines, self._first_line, self._rest_of_head)
        except OSError as exc:
            raise TickFileError(self.path, f"read failed: {exc.strerror or exc}") from None

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class TickFile(LineFile):
    """An open tick file whose header has been read and whose layout is settled."""

    def __init__(self, *, fmt: TickFormat, layout: Layout, **opened: Any) -> None:
        super().__init__(**opened)
        self.format = fmt
        self.layout = layout


def open_tick_file(path: str | Path, fmt: str, symbol: str | None = None) -> TickFile:
    """Open ``path`` as a ``fmt`` tick file: check its header and settle its layout.

    Raises :class:`TickFileError` when the file cannot be read or is not in
    that format, and :class:`ImportArgumentError` when ``fmt`` or ``symbol``
    do not fit it.
    """
    if fmt not in FORMATS:
        raise ImportArgumentError(
            f"unknown format {fmt!r}; expected one of {', '.join(sorted(FORMATS))}"
        )
    tick_format = FORMATS[fmt]
    canonical: str | None = None
    if symbol is not None:
        try:
            canonical = normalize_symbol(symbol)
        except SymbolError as exc:
            raise ImportArgumentError(f"--symbol: {exc}") from None
    # One spelling per file, so re-imports via another relative path share quarantine rows.
    file_path = Path(path).resolve()
    try:
        stream = open(file_path, "rb")  # noqa: SIM115 - owned by the returned TickFile
    except FileNotFoundError:
        raise TickFileError(file_path, "no such file") from None
    except IsADirectoryError:
        raise TickFileError(file_path, "is a directory, not a tick file") from None
    except PermissionError:
        raise TickFileError(file_path, "permission denied") from None
    except OSError as exc:
        raise TickFileError(file_path, f"cannot open: {exc.strerror or exc}") from None
    try:
        size = os.fstat(stream.fileno()).st_size
        head = stream.read(_HEAD_BYTES)
        header_bytes = 0
        if head.startswith(_BOM):
            head, header_bytes = head[len(_BOM) :], len(_BOM)
        header: str | None = None
        first_line = 1
        if tick_format.has_header:
            end = head.find(b"\n")
            if end < 0 and len(head) + header_bytes >= _HEAD_BYTES:
                raise TickFileError(file_path, "no line break in the first MiB", line=1)
            raw_header, head = (head[:end], head[end + 1 :]) if end >= 0 else (head, b"")
            header_bytes += len(raw_header) + (end >= 0)
            try:
                header = raw_header.decode("utf-8").rstrip("\r")
            except UnicodeDecodeError:
                raise TickFileError(file_path, "the header is not UTF-8 text", line=1) from None
            first_line = 2
        layout = tick_format.resolve(file_path, header, _first_data_line(head), canonical)
    except OSError as exc:
        stream.close()
        raise TickFileError(file_path, f"read failed: {exc.strerror or exc}") from None
    except BaseException:
        stream.close()
        raise
    return TickFile(
        path=file_path,
        fmt=tick_format,
        layout=layout,
        stream=stream,
        rest_of_head=head,
        first_line=first_line,
        size=size,
        header_bytes=header_bytes,
    )


def _first_data_line(head: bytes) -> str | None:
    for line in head.split(b"\n", 64)[:64]:
        text = line.decode("utf-8", errors="replace").rstrip("\r")
        if text.strip():
            return text
    return None


def import_ticks(
    tick_file: TickFile,
    engine: Engine,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
    clock: Clock | None = None,
) -> ImportSummary:
    """Import an opened tick file into ``engine``'s database; logs ``import.completed``.

    ``progress`` is called with the number of file bytes each batch used up.
    """
    if batch_size < 1:
        raise ImportArgumentError(f"--batch-size must be >= 1, got {batch_size}")
    clock = clock or RealClock()
    started = clock.monotonic()
    source = clip_source(str(tick_file.path))
    fmt = tick_file.format.name
    log.info(
        "import.started",
        file=str(tick_file.path),
        format=fmt,
        bytes=tick_file.size,
        database=safe_url(engine.url),
    )
    if progress is not None:
        progress(tick_file.header_bytes)

    def prepared() -> Iterator[_Prepared]:
        # Batches are held back until the file is known to be in its format,
        # so a foreign file is refused before anything is written.
        held: list[_Prepared] = []
        foreign = _ForeignFileCheck(tick_file)
        for lines in tick_file.batches(batch_size):
            batch = tick_file.layout.parse(lines)
            check(batch)
            records = quarantine_records(batch, source, now_ms(clock))
            item: _Prepared = (lines, batch, TickRows.from_batch(batch), records)
            if foreign.decided:
                yield item
                continue
            held.append(item)
            foreign.look_at(batch)
            if foreign.decided:
                yield from held
                held.clear()
        foreign.finish()
        yield from held

    rows_read = inserted = valid = 0
    by_reason: dict[str, int] = {}
    with _connected(engine) as conn:
        writer = writer_for(conn, fmt)
        for lines, batch, rows, records in _prefetched(prepared()):
            try:
                inserted += writer.write(rows, records)
            except Exception as exc:
                raise _database_error(engine, conn, exc, lines) from exc
            rows_read += batch.data_lines
            valid += len(rows)
            for reason, count in rejected_by_reason(batch).items():
                by_reason[reason] = by_reason.get(reason, 0) + count
            if progress is not None:
                progress(lines.bytes_read)

    seconds = max(clock.monotonic() - started, 0.0)
    summary = ImportSummary(
        file=str(tick_file.path),
        format=fmt,
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


def import_file(
    path: str | Path,
    fmt: str,
    engine: Engine,
    *,
    symbol: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
    clock: Clock | None = None,
) -> ImportSummary:
    """Open and import ``path`` in one call (see :func:`open_tick_file`, :func:`import_ticks`)."""
    with open_tick_file(path, fmt, symbol) as tick_file:
        return import_ticks(
            tick_file, engine, batch_size=batch_size, progress=progress, clock=clock
        )


class _ForeignFileCheck:
    """Refuses a file that is plainly not in the format given.

    Importing a dukascopy file as histdata would otherwise "succeed" with
    every line quarantined. A file none of whose first 100 data lines parse
    at all is far more likely in another format than full of bad rows.
    """

    def __init__(self, tick_file: TickFile) -> None:
        self._tick_file = tick_file
        self._seen = 0
        self._first_failure: str | None = None
        self.decided = False

    def look_at(self, batch: TickBatch) -> None:
        data = np.flatnonzero(batch.problem != Problem.BLANK)[: _SNIFF_LINES - self._seen]
        if not len(data):
            return
        if not batch.unparseable()[data].all():
            self.decided = True
            return
        if self._first_failure is None:
            first = int(data[0])
            why = describe(batch, first, batch.lines.text(first))
            self._first_failure = f"line {batch.lines.first_line + first}: {why}"
        self._seen += len(data)
        if self._seen >= _SNIFF_LINES:
            self.finish()

    def finish(self) -> None:
        """Called at the end of the file, or once enough lines failed: refuse, if so."""
        if self.decided or not self._seen:
            self.decided = True
            return
        fmt = self._tick_file.format
        raise TickFileError(
            self._tick_file.path,
            f"does not look like a {fmt.name} file: none of its first {self._seen} data "
            f"line(s) parse ({self._first_failure}); expected lines like {fmt.example!r}",
        )


@contextmanager
def _connected(engine: Engine) -> Iterator[Connection]:
    """``engine.connect()``, with a failure to connect reported as DatabaseUnavailable."""
    try:
        conn = engine.connect()
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable(safe_url(engine.url), _first_line(exc)) from exc
    with conn:
        yield conn


def _database_error(
    engine: Engine, conn: Connection, exc: Exception, lines: LineBatch
) -> Exception:
    """A driver or SQLAlchemy error while writing, as one safe line; anything else as is.

    The writers use the driver connection directly (for speed), so driver
    exceptions arrive unwrapped by SQLAlchemy and are recognised here.
    """
    kinds: tuple[type[BaseException], ...] = (SQLAlchemyError,)
    driver_error = getattr(getattr(conn.dialect, "loaded_dbapi", None), "Error", None)
    if isinstance(driver_error, type) and issubclass(driver_error, BaseException):
        kinds += (driver_error,)
    if not isinstance(exc, kinds):
        return exc
    last = lines.first_line + len(lines) - 1
    return DatabaseUnavailable(
        safe_url(engine.url),
        f"writing lines {lines.first_line}..{last} failed: {_first_line(exc)}",
    )


def _first_line(exc: BaseException) -> str:
    source = getattr(exc, "orig", None) or exc
    text = str(source).strip().splitlines()
    return text[0] if text else type(source).__name__


_DONE = object()


def _prefetched(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    """Iterate ``items`` on a helper thread, at most ``depth`` items ahead of the caller.

    Lets the next batch be read and parsed while the current one is being
    written. An exception on the helper thread is re-raised here, and a
    caller that stops early (an error while writing) stops the helper too.
    """
    handoff: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        handoff.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            handoff.put(_DONE)
        except BaseException as exc:  # handed over to the consuming thread
            handoff.put(_Failed(exc))

    worker = threading.Thread(target=produce, name="tickvisor-import-reader", daemon=True)
    worker.start()
    try:
        while True:
            item = handoff.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()
        while worker.is_alive():
            try:
                handoff.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.1)


@dataclass(frozen=True)
class _Failed:
    exc: BaseException


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "ImportArgumentError",
    "ImportSummary",
    "TickFile",
    "TickFileError",
    "import_file",
    "import_ticks",
    "open_tick_file",
]
