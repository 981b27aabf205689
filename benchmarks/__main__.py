"""Run every benchmark and rewrite docs/benchmarks.md: ``python -m benchmarks``.

PostgreSQL rows run when ``TICKVISOR_BENCH_PG_URL`` or ``TICKVISOR_TEST_PG_URL``
is set; ``TICKVISOR_BENCH_LIVE_SECONDS`` shortens the live-lag run (default 60).
"""

from __future__ import annotations

from benchmarks import (
    bench_alerts,
    bench_breaker,
    bench_candles,
    bench_candles_live,
    bench_candles_memory,
    bench_depth,
    bench_import,
    bench_sentiment,
    bench_supervision,
    bench_symbol_cache,
)
from benchmarks._harness import Result, write_report


def main() -> None:
    results: list[Result] = [bench_breaker.run(), bench_symbol_cache.run()]
    results += bench_candles.run()
    results.append(bench_candles_memory.run())
    results.append(bench_candles_live.run())
    results += [bench_import.run(), *bench_import.run_postgres()]
    results += bench_depth.run()
    results += bench_sentiment.run()
    results += bench_supervision.run()
    results += bench_alerts.run()
    write_report(results)
    missed = [r.benchmark for r in results if not r.met]
    print("all goals met" if not missed else f"goals missed: {missed}")


if __name__ == "__main__":
    main()
