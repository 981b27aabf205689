"""SymbolCache on the fake clock: TTL, bypass, invalidate, failures, concurrent misses."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tickvisor.actors.symbol_cache import SymbolCache
from tickvisor.clock import FakeClock
from tickvisor.symbols import load_symbols_file


class CountingLoader:
    """A symbol source that counts its reads, as the seed's config reads were counted."""

    def __init__(self, symbols: list[str]) -> None:
        self.symbols = symbols
        self.reads = 0
        self.error: Exception | None = None

    def __call__(self) -> list[str]:
        self.reads += 1
        if self.error is not None:
            raise self.error
        return list(self.symbols)


def test_caching_reduces_reads_until_ttl_expires() -> None:
    clock = FakeClock()
    loader = CountingLoader(["EUR/USD", "USD/JPY"])
    cache = SymbolCache(loader, ttl=300.0, clock=clock)
    for _ in range(100):
        assert cache.get_symbols() == ["EUR/USD", "USD/JPY"]
    assert loader.reads == 1
    clock.advance(299.0)
    cache.get_symbols()
    assert loader.reads == 1
    clock.advance(1.0)
    cache.get_symbols()
    assert loader.reads == 2
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["reloads"]) == (100, 2, 2)


def test_an_empty_list_is_not_kept_for_the_ttl() -> None:
    """A service started before its first input row picks the symbol up at once."""
    clock = FakeClock()
    loader = CountingLoader([])
    cache = SymbolCache(loader, ttl=300.0, clock=clock)
    assert cache.get_symbols() == []
    loader.symbols = ["EUR/USD"]
    assert cache.get_symbols() == ["EUR/USD"]
    assert cache.get_symbols() == ["EUR/USD"]
    assert loader.reads == 2  # the non-empty list is cached again


def test_bypass_cache_always_reads() -> None:
    clock = FakeClock()
    loader = CountingLoader(["EUR/USD"])
    cache = SymbolCache(loader, ttl=300.0, clock=clock)
    cache.get_symbols()
    loader.symbols = ["GBP/USD"]
    assert cache.get_symbols() == ["EUR/USD"]
    assert cache.get_symbols(bypass_cache=True) == ["GBP/USD"]
    assert loader.reads == 2
    assert cache.get_symbols() == ["GBP/USD"]  # the bypass refreshed the cache


def test_manual_invalidation_forces_a_reload() -> None:
    clock = FakeClock()
    loader = CountingLoader(["EUR/USD"])
    cache = SymbolCache(loader, ttl=300.0, clock=clock)
    cache.get_symbols()
    loader.symbols = ["USD/JPY"]
    cache.invalidate()
    assert cache.age_seconds() is None
    assert cache.get_symbols() == ["USD/JPY"]
    assert loader.reads == 2


def test_explicit_symbols_bypass_the_cache() -> None:
    cache = SymbolCache(explicit_symbols=["EUR/USD"], ttl=300.0, clock=FakeClock())
    assert cache.get_symbols() == ["EUR/USD"]
    assert not cache.enabled
    assert cache.stats()["hits"] == 0


def test_ttl_zero_disables_caching() -> None:
    loader = CountingLoader(["EUR/USD"])
    cache = SymbolCache(loader, ttl=0.0, clock=FakeClock())
    cache.get_symbols()
    cache.get_symbols()
    assert loader.reads == 2
    assert not cache.enabled


def test_failed_reload_keeps_last_good_list_and_records_error() -> None:
    clock = FakeClock()
    loader = CountingLoader(["EUR/USD"])
    cache = SymbolCache(loader, ttl=10.0, clock=clock)
    cache.get_symbols()
    loader.error = OSError("symbols file unreadable")
    clock.advance(10.0)
    assert cache.get_symbols() == ["EUR/USD"]
    assert cache.stats()["last_error"] == "OSError: symbols file unreadable"
    assert cache.stats()["reload_failures"] == 1
    loader.error = None
    assert cache.get_symbols() == ["EUR/USD"]
    assert cache.stats()["last_error"] is None


def test_failed_first_load_raises() -> None:
    loader = CountingLoader([])
    loader.error = OSError("nope")
    cache = SymbolCache(loader, clock=FakeClock())
    with pytest.raises(OSError, match="nope"):
        cache.get_symbols()


def test_age_seconds_follows_the_clock() -> None:
    clock = FakeClock()
    cache = SymbolCache(CountingLoader(["EUR/USD"]), ttl=300.0, clock=clock)
    assert cache.age_seconds() is None
    cache.get_symbols()
    clock.advance(42.0)
    assert cache.age_seconds() == pytest.approx(42.0)


def test_concurrent_misses_trigger_a_single_reload() -> None:
    release = threading.Event()
    entered = threading.Event()
    reads = 0

    def slow_loader() -> list[str]:
        nonlocal reads
        reads += 1
        entered.set()
        release.wait(10)
        return ["EUR/USD"]

    cache = SymbolCache(slow_loader, ttl=300.0, clock=FakeClock())
    results: list[list[str]] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_symbols())) for _ in range(8)
    ]
    for t in threads:
        t.start()
    assert entered.wait(10)
    # Wait (bounded) until all eight have missed: seven are queued behind the one reload.
    deadline = time.monotonic() + 10
    while cache.stats()["misses"] < 8 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert cache.stats()["misses"] == 8
    release.set()
    for t in threads:
        t.join(10)
    assert results == [["EUR/USD"]] * 8
    assert reads == 1


def test_symbols_file_is_reread_after_ttl(tmp_path: Path) -> None:
    path = tmp_path / "symbols.yaml"
    path.write_text('["EURUSD", "usd/jpy"]\n')
    clock = FakeClock()
    cache = SymbolCache(lambda: load_symbols_file(path), ttl=60.0, clock=clock)
    assert cache.get_symbols() == ["EUR/USD", "USD/JPY"]
    path.write_text('["GBP/USD"]\n')
    clock.advance(30.0)
    assert cache.get_symbols() == ["EUR/USD", "USD/JPY"]
    clock.advance(30.0)
    assert cache.get_symbols() == ["GBP/USD"]
    path.write_text("[unclosed\n")
    clock.advance(60.0)
    assert cache.get_symbols() == ["GBP/USD"]  # a broken edit never empties the service
    assert "symbols.yaml" in (cache.stats()["last_error"] or "")
