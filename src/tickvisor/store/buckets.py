"""Which bucket a tick falls in: timeframes, and the two ways to start a day.

Every bucket is ``[start, start + width)`` and is labelled by its start, the
same convention as pandas ``resample(tf, closed="left", label="left")``.
Buckets up to 4h are aligned to the UTC epoch. A day starts at UTC midnight,
or, with the FX convention ``new_york_17``, at 17:00 in New York, which is
21:00 or 22:00 UTC depending on daylight saving; such a day is 23 or 25
hours long when the clocks change. Day starts are therefore computed with
the tz database, never with a fixed offset.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Literal, get_args
from zoneinfo import ZoneInfo

#: Bucket width per timeframe, in ms (a ``1d`` bucket may differ: see module doc).
TIMEFRAMES: dict[str, int] = {
    "1m": 60_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "4h": 14_400_000,
    "1d": 86_400_000,
}

#: The timeframe built from ticks; every other one is rolled up from it.
BASE_TIMEFRAME = "1m"

Rollover = Literal["utc", "new_york_17"]
ROLLOVERS: tuple[str, ...] = get_args(Rollover)

_NEW_YORK = ZoneInfo("America/New_York")
_FX_DAY_START = time(17, 0)
_DAY_MS = TIMEFRAMES["1d"]


def check_timeframes(timeframes: list[str] | tuple[str, ...]) -> None:
    """Refuse unknown timeframe names before any work starts."""
    unknown = [tf for tf in timeframes if tf not in TIMEFRAMES]
    if unknown:
        raise ValueError(
            f"unknown timeframe(s) {', '.join(map(repr, unknown))}; "
            f"expected some of {', '.join(TIMEFRAMES)}"
        )


def check_rollover(rollover: str) -> None:
    if rollover not in ROLLOVERS:
        raise ValueError(f"unknown daily rollover {rollover!r}; expected one of {ROLLOVERS}")


def is_calendar(timeframe: str, rollover: str) -> bool:
    """True when the timeframe's buckets vary in width (a New York trading day)."""
    return timeframe == "1d" and rollover == "new_york_17"


def bucket_start(ts_ms: int, timeframe: str, rollover: str = "utc") -> int:
    """The start of the ``timeframe`` bucket holding ``ts_ms``: the Python twin of the SQL."""
    if is_calendar(timeframe, rollover):
        return _fx_day_start(ts_ms)
    width = TIMEFRAMES[timeframe]
    return ts_ms - ts_ms % width


def day_bounds(first_ms: int, last_ms: int, rollover: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every day from the one holding ``first_ms`` to that of ``last_ms``.

    Rolling days up needs their bounds inside SQL, which knows no time zones.
    """
    if rollover == "utc":
        start = first_ms - first_ms % _DAY_MS
        return [(s, s + _DAY_MS) for s in range(start, last_ms + 1, _DAY_MS)]
    bounds: list[tuple[int, int]] = []
    start = _fx_day_start(first_ms)
    while start <= last_ms:
        end = _fx_day_start(start + 26 * 3_600_000)  # lands in the next day, 23h or 25h long
        bounds.append((start, end))
        start = end
    return bounds


def _fx_day_start(ts_ms: int) -> int:
    """17:00 New York time on or before ``ts_ms``."""
    local = datetime.fromtimestamp(ts_ms / 1000, UTC).astimezone(_NEW_YORK)
    day: date = local.date()
    if local.time() < _FX_DAY_START:
        day -= timedelta(days=1)
    start = datetime.combine(day, _FX_DAY_START, tzinfo=_NEW_YORK)
    return int(start.timestamp()) * 1000


__all__ = [
    "BASE_TIMEFRAME",
    "ROLLOVERS",
    "TIMEFRAMES",
    "Rollover",
    "bucket_start",
    "check_rollover",
    "check_timeframes",
    "day_bounds",
    "is_calendar",
]
