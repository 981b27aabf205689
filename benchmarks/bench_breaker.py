"""Guarded-call overhead: tickvisor's breaker against pybreaker's ``call()``.

Overhead = time of the guarded call minus time of the bare call, so the
function itself cancels out. Goal: at most 0.5x pybreaker's overhead.
"""

from __future__ import annotations

import pybreaker

from benchmarks._harness import Result, interleaved_medians
from tickvisor.actors.breaker import CircuitBreaker


def work() -> int:
    return 42


def run(calls: int = 200_000, repeats: int = 15) -> Result:
    ours = CircuitBreaker(service_name="bench")
    theirs = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)

    def guarded_ours() -> object:
        if ours.can_execute():
            result = work()
            ours.record_success()
            return result
        return None

    def guarded_call_ours() -> object:
        return ours.call(work)

    def guarded_pybreaker() -> object:
        return theirs.call(work)

    medians = interleaved_medians(
        {
            "bare": work,
            "tickvisor": guarded_ours,
            "tickvisor.call": guarded_call_ours,
            "pybreaker": guarded_pybreaker,
        },
        calls,
        repeats,
    )
    ours_ns = (medians["tickvisor"] - medians["bare"]) * 1e9
    ours_call_ns = (medians["tickvisor.call"] - medians["bare"]) * 1e9
    theirs_ns = (medians["pybreaker"] - medians["bare"]) * 1e9
    ratio = ours_ns / theirs_ns
    print(
        f"breaker guarded-call overhead: tickvisor {ours_ns:.0f} ns "
        f"(call(): {ours_call_ns:.0f} ns), pybreaker {theirs_ns:.0f} ns, ratio {ratio:.2f}x"
    )
    return Result(
        benchmark="breaker guarded-call overhead (can_execute + call + record_success)",
        measured=f"{ours_ns:.0f} ns (`call()`: {ours_call_ns:.0f} ns)",
        baseline=f"pybreaker `call()`: {theirs_ns:.0f} ns",
        ratio=ratio,
        goal="<= 0.5x",
        met=ratio <= 0.5,
    )


if __name__ == "__main__":
    run()
