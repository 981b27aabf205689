"""The per-service symbol cache: the seed's TTL cache, made safe under threads.

The seed re-read its symbol source on every miss from every thread at once,
and a failed reload left it with no symbols at all. Here one thread reloads
while the others wait for its result, and a failed reload keeps serving the
last good list (recording the error) so a flaky config file or database
never empties a running service.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from tickvisor.clock import Clock, RealClock
from tickvisor.logs import get_logger

log = get_logger(__name__)

SymbolLoader = Callable[[], Sequence[str]]


class SymbolCache:
    """Symbols for one service, reloaded through ``loader`` when ``ttl`` expires.

    ``explicit_symbols`` (inline in the config) bypass the cache entirely, as
    in the seed: there is nothing to reload. ``ttl=0`` disables caching.
    """

    def __init__(
        self,
        loader: SymbolLoader | None = None,
        ttl: float = 300.0,
        *,
        explicit_symbols: Sequence[str] | None = None,
        clock: Clock | None = None,
        name: str = "Unknown",
    ) -> None:
        if ttl < 0:
            raise ValueError(f"SymbolCache({name}): ttl must be >= 0, got {ttl}")
        if loader is None and explicit_symbols is None:
            raise ValueError(f"SymbolCache({name}): give a loader or explicit_symbols")
        self.name = name
        self.ttl = ttl
        self._loader = loader
        self._explicit = list(explicit_symbols) if explicit_symbols is not None else None
        self._clock: Clock = clock or RealClock()
        self._monotonic = self._clock.monotonic
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()  # one reload at a time; never held with _lock
        self._symbols: list[str] = []
        self._loaded_at: float | None = None  # monotonic time of the last good load
        self._hits = 0
        self._misses = 0
        self._reloads = 0
        self._failures = 0
        self._last_error: str | None = None
        self._ever_loaded = False

    @property
    def enabled(self) -> bool:
        """Whether lookups are cached (the seed's ``symbol_cache_enabled``)."""
        return self._explicit is None and self.ttl > 0

    def get_symbols(self, bypass_cache: bool = False) -> list[str]:
        """The current symbols; reloads when stale, on ``bypass_cache`` or after ``invalidate``."""
        if self._explicit is not None:
            return list(self._explicit)
        if not bypass_cache:
            lock = self._lock
            lock.acquire()  # explicit acquire/release: a hit is the hot path
            try:
                loaded_at = self._loaded_at
                if loaded_at is not None and self._monotonic() - loaded_at < self.ttl:
                    self._hits += 1
                    return self._symbols[:]
                self._misses += 1
            finally:
                lock.release()
        return self._reload()

    def cached_symbols(self) -> list[str]:
        """The list held now, without reloading (for metrics and status pages)."""
        if self._explicit is not None:
            return list(self._explicit)
        with self._lock:
            return list(self._symbols)

    def invalidate(self) -> None:
        """Forget the cached list; the next lookup reloads."""
        with self._lock:
            self._loaded_at = None

    def age_seconds(self) -> float | None:
        """Seconds since the last good load (None if never loaded or explicit)."""
        with self._lock:
            if self._loaded_at is None:
                return None
            return self._monotonic() - self._loaded_at

    def stats(self) -> dict[str, Any]:
        with self._lock:
            age = None if self._loaded_at is None else self._monotonic() - self._loaded_at
            return {
                "enabled": self.enabled,
                "ttl": self.ttl,
                "symbols": len(self._explicit)
                if self._explicit is not None
                else len(self._symbols),
                "hits": self._hits,
                "misses": self._misses,
                "reloads": self._reloads,
                "reload_failures": self._failures,
                "age_seconds": age,
                "last_error": self._last_error,
            }

    def _reload(self) -> list[str]:
        with self._lock:
            finished_seen = self._reloads + self._failures
        with self._reload_lock:
            # A reload finished while we waited for the reload lock: its result is
            # as fresh as ours would be, so one reload serves all waiters.
            with self._lock:
                if self._reloads + self._failures != finished_seen and self._ever_loaded:
                    return list(self._symbols)
            assert self._loader is not None  # guaranteed by __init__ when not explicit
            try:
                symbols = list(self._loader())
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    self._failures += 1
                    self._last_error = error
                    fallback = list(self._symbols)
                    has_fallback = self._ever_loaded
                log.warning(
                    "symbol_cache.reload_failed",
                    service=self.name,
                    error=error,
                    serving_last_good=has_fallback,
                )
                if not has_fallback:
                    raise
                return fallback
            with self._lock:
                self._symbols = symbols
                # An empty list is not kept for a whole TTL: a service started
                # before its first input row would otherwise idle for minutes.
                self._loaded_at = self._monotonic() if symbols else None
                self._ever_loaded = True
                self._reloads += 1
                self._last_error = None
                return list(symbols)
