"""Run every benchmark and rewrite docs/benchmarks.md: ``python -m benchmarks``."""

from __future__ import annotations

from benchmarks import bench_breaker, bench_symbol_cache
from benchmarks._harness import write_report


def main() -> None:
    results = [bench_breaker.run(), bench_symbol_cache.run()]
    write_report(results)
    missed = [r.benchmark for r in results if not r.met]
    print("all goals met" if not missed else f"goals missed: {missed}")


if __name__ == "__main__":
    main()
