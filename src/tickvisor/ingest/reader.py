"""Cutting a tick file into batches of lines, and lines into fields, with numpy.

pandas alone cannot be trusted with line numbers: it merges or drops blank
lines, silently shifts a row with one field too many into an index, and
aborts a whole chunk on a row with two too many. So the bytes are cut here,
where every line keeps its 1-based number in the file, and each line's field
count is checked before pandas ever sees it. Only lines with exactly the
expected number of fields reach pandas, which makes its rows line up one for
one with the lines that were kept.

Everything is vectorised over the bytes of a batch (``np.frombuffer``), so
the cost per row is a few nanoseconds and a multi-gigabyte file is read in
constant memory: one batch of lines at a time, plus the partial line after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

Int64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

_NEWLINE = 10
_COMMA = 44
_MIN_READ = 1 << 20
_FIRST_GUESS_BYTES_PER_LINE = 64


@dataclass(frozen=True)
class LineBatch:
    """Consecutive lines of a file: their bytes and where each line starts and ends.

    ``data`` has ``\\r\\n`` folded to ``\\n``; ``ends[i]`` is the offset just past
    line i's text (its ``\\n`` excluded), so ``data[starts[i]:ends[i]]`` is the line.
    """

    data: bytes
    starts: Int64Array
    ends: Int64Array
    first_line: int
    bytes_read: int

    def __len__(self) -> int:
        return len(self.starts)

    def line_numbers(self) -> Int64Array:
        """The 1-based line number in the file of every line of the batch."""
        return np.arange(self.first_line, self.first_line + len(self.starts), dtype=np.int64)

    def text(self, index: int) -> str:
        """Line ``index`` as text, for quarantine records and error messages."""
        raw = self.data[int(self.starts[index]) : int(self.ends[index])]
        return raw.decode("utf-8", errors="replace")


def read_batches(
    stream: BinaryIO, batch_lines: int, first_line: int = 1, prefix: bytes = b""
) -> Iterator[LineBatch]:
    """Yield the lines of ``stream`` (after ``prefix``) in batches of ``batch_lines``.

    ``first_line`` is the file line number of the first line yielded, so a
    header read beforehand keeps the numbering right. Memory stays bounded by
    about one batch of bytes however large the file is.
    """
    if batch_lines < 1:
        raise ValueError(f"batch_lines must be >= 1, got {batch_lines}")
    pending = prefix
    pending_raw = len(prefix)
    bytes_per_line = float(_FIRST_GUESS_BYTES_PER_LINE)
    eof = False
    line_no = first_line
    while True:
        chunks = [pending]
        newlines = pending.count(b"\n")
        raw = pending_raw
        while not eof and newlines < batch_lines:
            want = max(_MIN_READ, int((batch_lines - newlines) * bytes_per_line * 1.1))
            chunk = stream.read(want)
            if not chunk:
                eof = True
                break
            chunks.append(chunk)
            raw += len(chunk)
            newlines += chunk.count(b"\n")
        data = b"".join(chunks) if len(chunks) > 1 else chunks[0]
        if not data:
            return
        if b"\r" in data:
            # A "\r" ending the buffer may be the first half of a "\r\n" split by the read.
            data = data.replace(b"\r\n", b"\n")
            if eof and data.endswith(b"\r"):
                data = data[:-1]
        arr = np.frombuffer(data, dtype=np.uint8)
        newline_at = np.flatnonzero(arr == _NEWLINE)
        if len(newline_at) >= batch_lines:
            ends = newline_at[:batch_lines]
            cut = int(ends[-1]) + 1
        elif eof:
            ends = newline_at
            cut = len(data)
            if not data.endswith(b"\n"):  # a last line without its newline
                ends = np.append(ends, len(data))
        else:  # cannot happen: the loop above reads until enough lines or EOF
            raise AssertionError("read_batches: short read before end of file")
        ends = ends.astype(np.int64, copy=False)
        starts = np.empty_like(ends)
        if len(ends):
            starts[0] = 0
            starts[1:] = ends[:-1] + 1
        batch_data, pending = data[:cut], data[cut:]
        # Progress is in file bytes: the carried-over tail is counted with the next batch.
        consumed = max(0, raw - len(pending))
        pending_raw = raw - consumed
        if len(ends):
            bytes_per_line = max(1.0, cut / len(ends))
            yield LineBatch(batch_data, starts, ends, line_no, consumed)
            line_no += len(ends)
        if eof and not pending:
            return


@dataclass(frozen=True)
class Fields:
    """The field structure of a batch, for a layout of ``n_fields`` comma-separated fields.

    ``good`` marks the lines with exactly ``n_fields`` fields; ``payload``
    holds just those lines, so the n-th row pandas parses from it is the
    n-th good line. ``widths`` is the byte width of every field of every
    good line (shape ``(good lines, n_fields)``), which lets fixed-width
    fields such as timestamps be checked without building strings.
    """

    found: Int64Array
    blank: BoolArray
    good: BoolArray
    widths: Int64Array
    payload: bytes


def split_fields(batch: LineBatch, n_fields: int) -> Fields:
    """Count the fields of every line and keep the lines that have ``n_fields``.

    Fields are separated by commas with no quoting (no tick format quotes),
    so a line's field count is its comma count plus one, and a comma can
    never hide inside a field.
    """
    arr = np.frombuffer(batch.data, dtype=np.uint8)
    comma_at = np.flatnonzero(arr == _COMMA)
    commas_before_end = np.searchsorted(comma_at, batch.ends)
    commas_before_start = np.searchsorted(comma_at, batch.starts)
    found = (commas_before_end - commas_before_start + 1).astype(np.int64)
    blank = batch.ends == batch.starts
    good = (found == n_fields) & ~blank

    good_starts = batch.starts[good]
    good_ends = batch.ends[good]
    if n_fields > 1:
        # Every good line has exactly n_fields - 1 commas, so its commas are a
        # contiguous run starting at the first comma after the line start.
        first = commas_before_start[good]
        commas = comma_at[first[:, None] + np.arange(n_fields - 1)]
        field_starts = np.concatenate([good_starts[:, None], commas + 1], axis=1)
        field_ends = np.concatenate([commas, good_ends[:, None]], axis=1)
    else:
        field_starts = good_starts[:, None]
        field_ends = good_ends[:, None]
    widths = (field_ends - field_starts).astype(np.int64)

    if good.all():
        payload = batch.data
    elif not good.any():
        payload = b""
    else:
        # Keep each good line with its newline: one boolean per byte, then compress.
        segment = np.diff(np.append(batch.starts, len(batch.data)))
        keep = np.repeat(good, segment)
        payload = arr[keep].tobytes()
    return Fields(found=found, blank=blank, good=good, widths=widths, payload=payload)


__all__ = ["Fields", "LineBatch", "read_batches", "split_fields"]
