"""ServiceActor: one market-data service as a pykka actor.

The seed ran each service as a thread looping ``while running: work();
sleep(interval)``, so a control call had to wait for a sleep to end and a
slow iteration silently shifted the schedule. Here the scheduler *tells* the
actor :class:`~tickvisor.messages.Iterate`; control messages queue in the
same inbox and are answered between iterations. A control message therefore
waits at most one iteration, never a sleep.

A subclass implements :meth:`ServiceActor.process_symbols` (and, to find its
symbols in its own data, :meth:`ServiceActor.discover_symbols`); it may
override the seed's hooks ``_on_circuit_open``, ``_on_circuit_close`` and
``_on_circuit_half_open``. Everything else (breaker, cache, metrics, events,
coalescing) is here, once.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pykka

from tickvisor import telemetry
from tickvisor.actors.breaker import CircuitBreaker
from tickvisor.actors.symbol_cache import SymbolCache, SymbolLoader
from tickvisor.clock import Clock, Scheduler, Timer, now_ms
from tickvisor.config import ServiceConfig
from tickvisor.logs import bind_context, get_logger
from tickvisor.messages import (
    ApplyConfig,
    BreakerTransition,
    ChildExited,
    Crash,
    CrashRequested,
    GetMetrics,
    InjectFailures,
    InvalidateCache,
    Iterate,
    Pause,
    Ping,
    ResetBreaker,
    Resume,
    report_exit,
)
from tickvisor.store.engine import is_database_fault
from tickvisor.store.fencing import Fence, FencedOut, claim_fence
from tickvisor.symbols import load_symbols_file

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from tickvisor.config import BreakerConfig

log = get_logger(__name__)

RECENT_ERRORS = 10
#: Iterations whose outcome makes up ``recent_error_rate`` (what health checks judge by).
RECENT_OUTCOMES = 20

#: Service config keys a running service takes over on :class:`ApplyConfig`.
#: Everything else a service is configured with (its job's timeframes, levels,
#: batch sizes, thresholds) is built into the instance: a reload restarts it.
LIVE_KEYS = frozenset(
    {
        "interval_seconds",
        "breaker",
        "symbols",
        "symbols_file",
        "symbol_cache_ttl",
        "iteration_deadline_seconds",
    }
)
#: Keys only the supervisor acts on (its child spec); a running instance ignores them.
SPEC_KEYS = frozenset({"restart", "on_breaker_open", "iteration_deadline_seconds"})
_SYMBOL_KEYS = ("symbols", "symbols_file", "symbol_cache_ttl")


class InjectedFailure(RuntimeError):
    """Raised by an iteration that an :class:`InjectFailures` message asked to fail."""


def breaker_settings(config: BreakerConfig) -> dict[str, Any]:
    """The breaker's settings from its config section: one place maps config to arguments.

    Used both to build a breaker and to reconfigure a running one, so a key
    added to the section cannot be honoured at start and missed on reload.
    """
    return {
        "failure_threshold": config.failure_threshold,
        "timeout": config.timeout,
        "half_open_max_calls": config.half_open_max_calls,
        "success_threshold": config.success_threshold,
        "backoff_factor": config.backoff_factor,
        "max_timeout": config.max_timeout,
        "sliding_window_size": config.sliding_window_size,
        "minimum_calls": config.minimum_calls,
        "failure_rate_threshold": config.failure_rate_threshold,
        "slow_call_seconds": config.slow_call_seconds,
    }


def breaker_from_config(
    config: BreakerConfig, service: str, clock: Clock, **callbacks: Any
) -> CircuitBreaker:
    """Build a breaker from its config section."""
    return CircuitBreaker(
        service_name=service, clock=clock, **breaker_settings(config), **callbacks
    )


class ServiceActor(pykka.ThreadingActor):
    """Base class of every service: owns one :class:`SymbolCache` and one :class:`CircuitBreaker`.

    ``event_sinks`` receive every :class:`BreakerTransition` (the supervisor and
    the event bus); ``parent`` receives :class:`ChildExited` when this actor
    stops. Both take messages: services never call them directly.

    Each instance claims a fencing token (:mod:`tickvisor.store.fencing`) when
    it starts; a subclass passes :attr:`fence` to every write transaction, so
    an instance that was replaced while hung can never commit afterwards.
    """

    # A hung instance that was abandoned must not keep the process alive.
    use_daemon_thread = True

    def __init__(
        self,
        name: str,
        config: ServiceConfig,
        *,
        engine: Engine,
        clock: Clock,
        scheduler: Scheduler,
        event_sinks: Sequence[pykka.ActorRef[Any]] = (),
        parent: pykka.ActorRef[Any] | None = None,
        generation: int = 1,
    ) -> None:
        super().__init__()
        self.name = name
        self.config = config
        self.engine = engine
        self.clock = clock
        self.scheduler = scheduler
        self.event_sinks = list(event_sinks)
        self.parent = parent
        self.generation = generation
        self.interval_seconds = config.interval_seconds
        self.log = get_logger("tickvisor.service", service=name)

        self.circuit_breaker = breaker_from_config(
            config.breaker,
            name,
            clock,
            on_open=self._on_circuit_open,
            on_close=self._on_circuit_close,
            on_half_open=self._on_circuit_half_open,
        )
        self.circuit_breaker.subscribe(self._publish_transition)
        self.symbol_cache = self._make_symbol_cache(config)

        self._running = False
        self._paused = False
        self._iteration_count = 0
        self._error_count = 0
        self._skipped_open = 0
        self._coalesced = 0
        self._last_error_time: float | None = None
        self._last_iteration_seconds: float | None = None
        self._last_started: float | None = None  # monotonic, of the last iteration run
        self._last_finished: float | None = None
        self._catch_up_pending = False
        self._recent_errors: deque[dict[str, Any]] = deque(maxlen=RECENT_ERRORS)
        self._recent_outcomes: deque[bool] = deque(maxlen=RECENT_OUTCOMES)  # True: failed
        self._injected_failures = 0
        self._timer: Timer | None = None
        self._metrics_lock = threading.Lock()
        self.fence: Fence | None = None
        self._more_work = False
        self._first_iteration_pending = False
        # Metric children bound once: a label lookup per iteration is wasted work.
        self._iterations_metric = telemetry.ITERATIONS.labels(service=name)
        self._errors_metric = telemetry.ERRORS.labels(service=name)
        self._duration_metric = telemetry.ITERATION_SECONDS.labels(service=name)
        self._untrack_cache: Callable[[], None] | None = None

    # --- what subclasses implement -------------------------------------------

    def process_symbols(self, symbols: list[str]) -> int | None:
        """Do one iteration's work for ``symbols``; raise to fail the iteration.

        Returns how many rows were written (for the log), or None.
        """
        raise NotImplementedError

    def discover_symbols(self) -> list[str]:
        """Symbols found in the service's own data, used when the config names none."""
        raise NotImplementedError(
            f"service {self.name!r} needs `symbols` or `symbols_file` in its config"
        )

    def _on_circuit_open(self) -> None:
        """Seed hook: the breaker opened (runs outside the breaker's lock)."""

    def _on_circuit_close(self) -> None:
        """Seed hook: the breaker closed."""

    def _on_circuit_half_open(self) -> None:
        """Seed hook: the breaker lets trial calls through."""

    # --- pykka lifecycle ------------------------------------------------------

    def on_start(self) -> None:
        bind_context(service=self.name)
        self._running = True
        # A new instance starts with a closed breaker, whatever its predecessor's was.
        telemetry.BREAKER_STATE.labels(service=self.name).set(
            telemetry.breaker_state_value(self.circuit_breaker.state.value)
        )
        self._untrack_cache = telemetry.SYMBOL_CACHES.track(self.name, self.symbol_cache)
        self._claim_fence(at_start=True)
        if self.parent is None:
            self._queue_first_iteration()
        else:
            # Under a supervisor the first iteration waits for its start probe
            # (OTP's handle_continue): the supervisor waits for on_start only,
            # never behind a first catch-up that may run for minutes.
            self._first_iteration_pending = True
        self._timer = self.scheduler.tell_every(
            self.interval_seconds,
            self.actor_ref,
            lambda: Iterate(scheduled_at=self.clock.monotonic()),
        )
        self.log.info(
            "service.started",
            generation=self.generation,
            fencing_token=self.fence.token if self.fence else None,
            interval_seconds=self.interval_seconds,
            symbol_source=self._symbol_source(),
        )

    def on_stop(self) -> None:
        self._shutdown()
        self.log.info("service.stopped", generation=self.generation)
        self._report_exit(None, None)

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._shutdown()
        self.log.error(
            "service.crashed",
            generation=self.generation,
            exc_info=(exception_type, exception_value, traceback)
            if exception_type is not None and exception_value is not None
            else None,
        )
        self._report_exit(
            f"{exception_value}" if exception_value is not None else "crashed",
            exception_type.__name__ if exception_type is not None else None,
        )

    def on_receive(self, message: Any) -> Any:
        match message:
            case Iterate():
                self._first_iteration_pending = False
                self._handle_iterate(message)
                return None
            case GetMetrics():
                return self.get_metrics()
            case Ping():
                if self._first_iteration_pending:
                    self._queue_first_iteration()
                return True
            case Pause(reason=reason):
                self._paused = True
                self.log.info("service.paused", reason=reason)
                return self.get_metrics()
            case Resume(reason=reason):
                self._paused = False
                self.log.info("service.resumed", reason=reason)
                return self.get_metrics()
            case ApplyConfig(config=ServiceConfig() as config):
                return self.apply_config(config)
            case InvalidateCache():
                self.symbol_cache.invalidate()
                self.log.info("symbol_cache.invalidated")
                return None
            case ResetBreaker():
                self.circuit_breaker.reset()
                self.log.info("breaker.reset")
                return self.circuit_breaker.get_stats()
            case Crash(reason=reason):
                raise CrashRequested(reason)
            case InjectFailures(count=count, reason=reason):
                self._injected_failures = max(0, count)
                self.log.warning("service.failures_injected", count=count, reason=reason)
                return None
            case _:
                self.log.warning("service.unknown_message", message_type=type(message).__name__)
                return None

    # --- a reloaded config ---------------------------------------------------

    def apply_config(self, config: ServiceConfig) -> dict[str, list[str]]:
        """Take over what changed in ``config`` among :data:`LIVE_KEYS`; report the rest.

        Runs between iterations, on the actor's thread, so nothing here races
        an iteration. :attr:`config` afterwards holds what is in force: the
        new live keys, the old values of anything not applied.
        """
        old = self.config
        changed = [
            key for key in type(old).model_fields if getattr(old, key) != getattr(config, key)
        ]
        applied = [key for key in changed if key in LIVE_KEYS or key in SPEC_KEYS]
        not_applied = [key for key in changed if key not in applied]
        if "interval_seconds" in applied:
            self._reschedule(config.interval_seconds)
        if "breaker" in applied:
            self.circuit_breaker.reconfigure(**breaker_settings(config.breaker))
        self.config = old.model_copy(update={key: getattr(config, key) for key in applied})
        if any(key in applied for key in _SYMBOL_KEYS):
            self._replace_symbol_cache()
        if changed:
            self.log.info("service.reconfigured", applied=applied, not_applied=not_applied)
        return {"applied": applied, "not_applied": not_applied}

    def _reschedule(self, interval: float) -> None:
        """A new interval: the next tick comes one new interval from now."""
        if self._timer is not None:
            self._timer.cancel()
        self.interval_seconds = interval
        self._timer = self.scheduler.tell_every(
            interval, self.actor_ref, lambda: Iterate(scheduled_at=self.clock.monotonic())
        )

    def _replace_symbol_cache(self) -> None:
        """A new source or TTL: a new, empty cache, so the next iteration reads the source.

        The old cache's counts are folded into the exported totals when it is
        untracked, so the counters never go backwards.
        """
        if self._untrack_cache is not None:
            self._untrack_cache()
        self.symbol_cache = self._make_symbol_cache(self.config)
        self._untrack_cache = telemetry.SYMBOL_CACHES.track(self.name, self.symbol_cache)

    # --- the iteration ---------------------------------------------------------

    def _queue_first_iteration(self) -> None:
        self._first_iteration_pending = False
        self.actor_ref.tell(Iterate(scheduled_at=self.clock.monotonic()))

    def _handle_iterate(self, message: Iterate) -> None:
        if message.catch_up:
            self._catch_up_pending = False
        elif self._last_started is not None and message.scheduled_at <= self._last_started:
            self._coalesced += 1  # scheduled before the last iteration began: covered by it
            return
        elif self._last_finished is not None and message.scheduled_at <= self._last_finished:
            # Queued while the last iteration ran. Many such Iterates become one
            # catch-up, sent to the back of the inbox so control messages that
            # arrived meanwhile are answered first: no backlog, no starvation.
            if self._catch_up_pending:
                self._coalesced += 1
            else:
                self._catch_up_pending = True
                self.actor_ref.tell(Iterate(self.clock.monotonic(), catch_up=True))
            return
        if self._paused and not message.trial:
            return
        if not self.circuit_breaker.can_execute():
            self._skipped_open += 1
            return
        self.run_iteration()

    def run_iteration(self) -> None:
        """One guarded iteration: symbols, work, outcome recorded on the breaker."""
        started = self.clock.monotonic()
        self._last_started = started
        self._more_work = False
        try:
            if self.fence is None:
                self._claim_fence(at_start=False)
            symbols = self.symbol_cache.get_symbols()
            if self._injected_failures > 0:
                self._injected_failures -= 1
                raise InjectedFailure(f"injected failure ({self._injected_failures} left)")
            written = self.process_symbols(symbols)
        except FencedOut as exc:
            self._fenced_out(exc)
            return
        except Exception as exc:
            self._last_finished = self.clock.monotonic()
            self._record_error(exc, self._last_finished - started)
            self.circuit_breaker.record_failure(exc)
            return
        self._last_finished = self.clock.monotonic()
        elapsed = self._last_finished - started
        with self._metrics_lock:
            self._iteration_count += 1
            self._last_iteration_seconds = elapsed
            self._recent_outcomes.append(False)
        self._iterations_metric.inc()
        self._duration_metric.observe(elapsed)
        self.circuit_breaker.record_success(elapsed)
        self.log.debug(
            "service.iteration_completed",
            seconds=round(elapsed, 6),
            symbols=len(symbols),
            written=written,
        )
        if self._more_work:
            # The iteration stopped at its time budget with work left: go on at
            # once, behind whatever control messages and pings are waiting.
            self.actor_ref.tell(Iterate(self.clock.monotonic(), catch_up=True))
            self._catch_up_pending = True

    def continue_soon(self) -> None:
        """Called by a subclass whose iteration stopped at its budget with work left."""
        self._more_work = True

    def observe_lag(self, symbol: str, lag_seconds: float) -> None:
        """Called by a subclass after a pass: how far ``symbol``'s output lags its input.

        Exported as ``tickvisor_candle_lag_seconds{service, symbol}``, set at
        the moment the pass measured it rather than guessed from metrics later.
        """
        telemetry.CANDLE_LAG.labels(service=self.name, symbol=symbol).set(lag_seconds)

    @property
    def iteration_budget_seconds(self) -> float | None:
        """How long one iteration may work before yielding (a quarter of the hang deadline).

        Long enough to make progress, short enough that the supervisor's
        hang check never mistakes a big backlog for a hung service.
        """
        deadline = self.config.iteration_deadline_seconds
        return None if deadline is None else deadline / 4

    def _claim_fence(self, *, at_start: bool) -> None:
        try:
            self.fence = claim_fence(self.engine, self.name, now_ms(self.clock))
        except Exception as exc:
            if at_start and is_database_fault(exc):
                # The database is down: the first iteration claims again, and
                # its failure is the breaker's to count, not a crash at start.
                self.log.warning("service.fence_claim_failed", error=str(exc)[:300])
                return
            raise

    def _fenced_out(self, exc: FencedOut) -> None:
        """A replacement claimed the service: this instance's write was rolled back; stop."""
        self.log.error(
            "service.fenced",
            generation=self.generation,
            fencing_token=exc.token,
            current_token=exc.current,
        )
        self._running = False
        self.actor_ref.stop(block=False)

    def _record_error(self, exc: Exception, elapsed: float) -> None:
        now = self.clock.time()
        with self._metrics_lock:
            self._iteration_count += 1
            self._error_count += 1
            self._last_error_time = now
            self._last_iteration_seconds = elapsed
            self._recent_errors.append(
                {"time": now, "type": type(exc).__name__, "message": str(exc)[:500]}
            )
            self._recent_outcomes.append(True)
        self._iterations_metric.inc()
        self._errors_metric.inc()
        self._duration_metric.observe(elapsed)
        self.log.warning(
            "service.iteration_failed",
            error_type=type(exc).__name__,
            error=str(exc)[:500],
            exc_info=not isinstance(exc, InjectedFailure),
        )

    # --- metrics ---------------------------------------------------------------

    def get_metrics(self) -> dict[str, Any]:
        """The seed's metrics, plus ``last_iteration_seconds`` and ``paused``."""
        with self._metrics_lock:
            metrics: dict[str, Any] = {
                "service_name": self.name,
                "is_running": self._running,
                "iteration_count": self._iteration_count,
                "error_count": self._error_count,
                "last_error_time": self._last_error_time,
                "recent_errors": list(self._recent_errors),
                "interval_seconds": self.interval_seconds,
                "last_iteration_seconds": self._last_iteration_seconds,
                "paused": self._paused,
                "generation": self.generation,
                "skipped_while_open": self._skipped_open,
                "coalesced_iterations": self._coalesced,
                "recent_iterations": len(self._recent_outcomes),
                "recent_error_rate": (
                    sum(self._recent_outcomes) / len(self._recent_outcomes)
                    if self._recent_outcomes
                    else None
                ),
            }
        metrics["symbols"] = self._peek_symbols()
        metrics["symbol_cache_enabled"] = self.symbol_cache.enabled
        metrics["symbol_cache_age_seconds"] = self.symbol_cache.age_seconds()
        metrics["symbol_cache"] = self.symbol_cache.stats()
        stats = self.circuit_breaker.get_stats()
        metrics["circuit_breaker_state"] = stats["state"]
        metrics["circuit_breaker_stats"] = stats
        return metrics

    # --- internals ---------------------------------------------------------------

    def _make_symbol_cache(self, config: ServiceConfig) -> SymbolCache:
        loader: SymbolLoader
        if config.symbols is not None:
            return SymbolCache(
                explicit_symbols=config.symbols,
                ttl=config.symbol_cache_ttl,
                clock=self.clock,
                name=self.name,
            )
        if config.symbols_file is not None:
            path = config.symbols_file

            def loader() -> list[str]:
                return load_symbols_file(path)
        else:
            loader = self.discover_symbols
        return SymbolCache(loader, ttl=config.symbol_cache_ttl, clock=self.clock, name=self.name)

    def _symbol_source(self) -> str:
        if self.config.symbols is not None:
            return "inline"
        if self.config.symbols_file is not None:
            return f"file:{self.config.symbols_file}"
        return "discovered"

    def _peek_symbols(self) -> list[str]:
        """Symbols for metrics without triggering a reload (metrics must stay cheap)."""
        if self.config.symbols is not None:
            return list(self.config.symbols)
        return self.symbol_cache.cached_symbols()

    def _publish_transition(self, event: BreakerTransition) -> None:
        event = dataclasses.replace(event, generation=self.generation)
        telemetry.BREAKER_TRANSITIONS.labels(service=self.name, to_state=event.to_state).inc()
        telemetry.BREAKER_STATE.labels(service=self.name).set(
            telemetry.breaker_state_value(event.to_state)
        )
        self.log.info(
            "breaker.transition",
            from_state=event.from_state,
            to_state=event.to_state,
            failure_count=event.failure_count,
            reason=event.reason,
            generation=self.generation,
        )
        for sink in self.event_sinks:
            try:
                sink.tell(event)
            except pykka.ActorDeadError:
                self.log.warning("service.event_sink_dead", sink=str(sink))

    def _shutdown(self) -> None:
        self._running = False
        if self._untrack_cache is not None:
            self._untrack_cache()
            self._untrack_cache = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _report_exit(self, error: str | None, error_type: str | None) -> None:
        report_exit(self.parent, ChildExited(self.name, self.generation, error, error_type))
