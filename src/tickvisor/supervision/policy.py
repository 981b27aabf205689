"""Restart intensity and restart backoff: two small policies, plain data plus arithmetic.

Intensity is OTP's: more than ``max_restarts`` restarts within
``within_seconds`` and the supervisor gives up and escalates. Backoff is
Akka's BackoffSupervisor: the n-th consecutive restart of a child waits
``min(max, min * factor**n)`` times a random factor in ``[1, 1 + jitter]``,
so a crowd of children failing together does not come back in lock-step; a
child that ran ``reset_after_seconds`` without failing starts from ``min``
again.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Intensity:
    max_restarts: int = 5
    within_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts}")
        if not self.within_seconds > 0:
            raise ValueError(f"within_seconds must be > 0, got {self.within_seconds}")


@dataclass(slots=True)
class RestartLog:
    """The restart times inside the intensity window (monotonic seconds)."""

    intensity: Intensity
    _times: deque[float] = field(default_factory=deque)

    def record(self, now: float) -> bool:
        """Count one restart at ``now``; True if that is one too many."""
        self._times.append(now)
        return self.in_window(now) > self.intensity.max_restarts

    def in_window(self, now: float) -> int:
        while self._times and now - self._times[0] > self.intensity.within_seconds:
            self._times.popleft()
        return len(self._times)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before a restart; ``max_seconds == 0`` means restart at once."""

    min_seconds: float = 0.0
    max_seconds: float = 0.0
    factor: float = 2.0
    jitter: float = 0.0
    reset_after_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.min_seconds < 0 or self.max_seconds < 0:
            raise ValueError("backoff min_seconds and max_seconds must be >= 0")
        if self.max_seconds and self.min_seconds > self.max_seconds:
            raise ValueError(
                f"backoff min_seconds ({self.min_seconds}) must be <= max_seconds "
                f"({self.max_seconds})"
            )
        if self.factor < 1:
            raise ValueError(f"backoff factor must be >= 1, got {self.factor}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"backoff jitter must be within [0, 1], got {self.jitter}")
        if self.reset_after_seconds < 0:
            raise ValueError("backoff reset_after_seconds must be >= 0")

    @property
    def enabled(self) -> bool:
        return self.max_seconds > 0

    def delay(self, attempt: int, random: Callable[[], float]) -> float:
        """The wait before restart number ``attempt`` (0 = first since the last reset)."""
        if not self.enabled:
            return 0.0
        # In logarithms, so a child that failed a million times does not overflow.
        if self.min_seconds == 0:
            base = 0.0
        elif attempt * math.log(self.factor) >= math.log(self.max_seconds / self.min_seconds):
            base = self.max_seconds
        else:
            base = self.min_seconds * self.factor**attempt
        return base * (1.0 + self.jitter * random())


NO_BACKOFF = Backoff()
