"""The catch-up loop every incremental job shares: symbols take turns, faults are sorted.

A job (candles, depth, sentiment) supplies one *fold*: process the next
batch of one symbol's input in one transaction and say whether the symbol
has caught up. This module decides the order, the time budget and what a
failure means, so the three jobs cannot drift apart on those rules:

- symbols take turns, one fold each, so a symbol with a huge backlog does
  not starve the others;
- a fault of the database itself (connection lost, locked, disk full) or a
  lost fence ends the pass at once: no other symbol would fare better, and
  the caller's circuit breaker has to see it;
- any other error is recorded against its symbol, and the pass fails only
  when every symbol failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from tickvisor.store.engine import is_database_fault
from tickvisor.store.fencing import FencedOut


@dataclass
class SymbolProgress:
    """What one pass did for one symbol, for logs and metrics."""

    symbol: str
    #: Input rows consumed (ticks, snapshots, raw sentiment rows).
    rows: int = 0
    #: Output rows written or rewritten.
    written: int = 0
    #: Input rows set aside as bad, with their reason, instead of processed.
    quarantined: int = 0
    #: How far the output trails the newest input, in ms (None when unknown).
    lag_ms: int | None = None
    error: str | None = None
    error_type: str | None = None


@dataclass
class CatchUpReport:
    """One catch-up pass over a list of symbols."""

    symbols: dict[str, SymbolProgress] = field(default_factory=dict)
    seconds: float = 0.0
    #: Symbols the pass left with input still to process because its time budget ran out.
    unfinished: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.symbols.values())

    @property
    def written(self) -> int:
        return sum(p.written for p in self.symbols.values())

    @property
    def quarantined(self) -> int:
        return sum(p.quarantined for p in self.symbols.values())

    @property
    def failed(self) -> list[str]:
        return [s for s, p in self.symbols.items() if p.error is not None]


class CatchUpFailed(RuntimeError):
    """Every symbol of a pass failed: the job as a whole did not work."""

    def __init__(self, report: CatchUpReport) -> None:
        self.report = report
        first = report.symbols[report.failed[0]]
        super().__init__(
            f"every symbol failed ({len(report.failed)}); first: {first.symbol}: "
            f"{first.error_type}: {first.error}"
        )


#: One fold of one symbol in its own transaction; True once the symbol has caught up.
Fold = Callable[[SymbolProgress], bool]


def round_robin(
    symbols: Sequence[str],
    fold: Fold,
    *,
    log: structlog.stdlib.BoundLogger,
    failure_event: str,
    budget_seconds: float | None = None,
) -> CatchUpReport:
    """Fold every symbol until it has caught up, or until ``budget_seconds`` runs out.

    With a budget, the pass stops after the fold that crosses it and lists
    the symbols with input left in ``report.unfinished``; the caller runs
    another pass. See the module docstring for how failures are sorted.
    """
    started = time.perf_counter()
    report = CatchUpReport()
    first_error: Exception | None = None
    pending = [SymbolProgress(symbol) for symbol in dict.fromkeys(symbols)]
    report.symbols = {p.symbol: p for p in pending}
    while pending:
        for progress in list(pending):
            try:
                if fold(progress):
                    pending.remove(progress)
            except Exception as exc:
                if is_database_fault(exc) or isinstance(exc, FencedOut):
                    raise
                pending.remove(progress)
                progress.error = str(exc).splitlines()[0][:500] if str(exc) else repr(exc)
                progress.error_type = type(exc).__name__
                first_error = first_error or exc
                log.warning(
                    failure_event,
                    symbol=progress.symbol,
                    error_type=progress.error_type,
                    error=progress.error,
                )
        out_of_time = budget_seconds is not None and time.perf_counter() - started >= budget_seconds
        if pending and out_of_time:
            report.unfinished = [p.symbol for p in pending]
            break
    report.seconds = time.perf_counter() - started
    if first_error is not None and len(report.failed) == len(report.symbols):
        raise CatchUpFailed(report) from first_error
    return report


__all__ = ["CatchUpFailed", "CatchUpReport", "Fold", "SymbolProgress", "round_robin"]
