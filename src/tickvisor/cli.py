"""The ``tickvisor`` command: run, demo, import, aggregate, check-config.

stdout carries only JSON log lines (or the console rendering when asked);
human messages (errors, the demo summary) go to stderr, so ``tickvisor run |
jq`` never chokes. Exit codes: 0 clean stop, 1 the root supervisor escalated,
2 bad config or unreachable database.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import pykka
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from tickvisor import __version__
from tickvisor.admin import AdminStartError, AdminTokenError, resolve_token, start_admin
from tickvisor.clock import RealClock, ThreadScheduler
from tickvisor.config import (
    AlertDeliveryConfig,
    AlertsConfig,
    BreakerConfig,
    CandleServiceConfig,
    ConfigError,
    DepthServiceConfig,
    FeedConfig,
    SentimentServiceConfig,
    ServicesConfig,
    TickvisorConfig,
    load_config,
    with_alert_env,
)
from tickvisor.ctl import add_ctl_parser
from tickvisor.eventbus import EventBus
from tickvisor.ingest import (
    DEFAULT_BATCH_SIZE,
    FORMATS,
    ImportArgumentError,
    TickFile,
    TickFileError,
    import_ticks,
    open_tick_file,
)
from tickvisor.ingest.records import (
    DEFAULT_RECORD_BATCH_SIZE,
    RECORD_FORMATS,
    RecordFile,
    import_records,
    open_record_file,
)
from tickvisor.logs import configure_logging, get_logger
from tickvisor.messages import Crash, FlushAlerts, InjectFailures
from tickvisor.reload import ConfigWatcher, watch_config
from tickvisor.store.catchup import CatchUpFailed
from tickvisor.store.engine import (
    DatabaseUnavailable,
    check_connection,
    make_engine,
    open_database,
    safe_url,
)
from tickvisor.store.migrate import schema_state, upgrade
from tickvisor.store.schema import (
    alert_deliveries,
    alert_notifications,
    candles,
    depth_metrics,
    depth_snapshots,
    events,
    sentiment_metrics,
    sentiment_raw,
    ticks,
)
from tickvisor.supervision.control import Control
from tickvisor.supervision.tree import SERVICE_TYPES, build_tree, shutdown_budget
from tickvisor.symbols import SymbolError, normalize_symbol

log = get_logger("tickvisor.cli")

EXIT_OK = 0
EXIT_ESCALATED = 1
#: How long a stop waits for waiting alerts to be delivered (the rest stays in the outbox).
RUN_DRAIN_SECONDS = 3.0
DEMO_DRAIN_SECONDS = 10.0
EXIT_USAGE = 2


class UsageError(Exception):
    """A problem the user can fix; its message is printed as is, without a traceback."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        try:
            configure_logging(args.log_format or "json", args.log_level or "INFO")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        code: int = args.handler(args)
    except UsageError as exc:
        print(f"tickvisor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tickvisor", description="Fault-tolerant runtime for market-data services."
    )
    parser.add_argument("--version", action="version", version=f"tickvisor {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-format", choices=["json", "console"], default=None)
    common.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR or CRITICAL")
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument("--db", metavar="URL", default=None, help="database URL (default: SQLite)")
    sub = parser.add_subparsers(dest="command", required=True)

    admin = argparse.ArgumentParser(add_help=False)
    admin.add_argument(
        "--admin-port",
        type=int,
        default=None,
        metavar="PORT",
        help="admin API port on 127.0.0.1 (default: admin.port, 8787; 0 = any free port)",
    )
    run = sub.add_parser("run", parents=[common, db, admin], help="run the supervision tree")
    run.add_argument("--config", required=True, type=Path, metavar="FILE")
    run.set_defaults(handler=cmd_run)

    demo = sub.add_parser("demo", parents=[common, db, admin], help="a self-contained demo run")
    demo.add_argument("--seconds", type=float, default=12.0)
    demo.set_defaults(handler=cmd_demo)

    check = sub.add_parser("check-config", parents=[common], help="validate a config file")
    check.add_argument("file", type=Path)
    check.set_defaults(handler=cmd_check_config)

    imp = sub.add_parser(
        "import", parents=[common, db], help="import a tick, depth or sentiment file"
    )
    imp.add_argument("file", type=Path, metavar="FILE")
    imp.add_argument(
        "--format", required=True, choices=sorted([*FORMATS, *RECORD_FORMATS]), dest="format"
    )
    imp.add_argument(
        "--symbol", default=None, help="the pair, where the file does not name it (e.g. EURUSD)"
    )
    imp.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help=f"lines per transaction (default {DEFAULT_BATCH_SIZE} for tick files, "
        f"{DEFAULT_RECORD_BATCH_SIZE} for depth-jsonl and sentiment-csv)",
    )
    imp.set_defaults(handler=cmd_import)

    agg = sub.add_parser("aggregate", parents=[common, db], help="one catch-up pass, then exit")
    agg.add_argument("--config", type=Path, metavar="FILE", default=None)
    agg.add_argument(
        "--service",
        choices=[*SERVICE_TYPES, "all"],
        default="all",
        help="which service's job to run (default: all)",
    )
    agg.add_argument("--symbol", action="append", default=None, dest="symbols")
    agg.add_argument(
        "--batch-ticks",
        type=int,
        default=None,
        help="candles: ticks per transaction (default 100000)",
    )
    agg.set_defaults(handler=cmd_aggregate)

    add_ctl_parser(sub, [common, db])

    database = sub.add_parser("db", parents=[common, db], help="the database schema")
    database.add_argument("action", choices=["current", "upgrade"])
    database.add_argument("--config", type=Path, metavar="FILE", default=None)
    database.set_defaults(handler=cmd_db)
    return parser


# --- commands -------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.file)
    services = [
        name
        for name, svc in config.services.model_dump().items()
        if svc is not None and svc.get("enabled", True)
    ]
    print(f"{args.file}: valid (services: {', '.join(services) or 'none'})", file=sys.stderr)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    # The config's logging section applies unless the command line says otherwise.
    try:
        configure_logging(
            args.log_format or config.logging.format, args.log_level or config.logging.level
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return _run_tree(
        config,
        args.db or config.database.url,
        seconds=None,
        admin_port=args.admin_port,
        config_path=args.config,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    if args.seconds <= 0:
        raise UsageError(f"--seconds must be > 0, got {args.seconds}")
    with tempfile.TemporaryDirectory(prefix="tickvisor-demo-") as folder:
        url = args.db or f"sqlite:///{Path(folder) / 'demo.db'}"
        return _run_tree(
            _demo_config(), url, seconds=args.seconds, demo=True, admin_port=args.admin_port
        )


def cmd_import(args: argparse.Namespace) -> int:
    """Import a tick, depth or sentiment file; exit 2 only if it or the command line is unusable.

    The file is opened and its header checked before the database is, so a
    typo in the file name does not leave a fresh empty database behind.
    """
    records = args.format in RECORD_FORMATS
    batch_size = args.batch_size
    if batch_size is None:
        batch_size = DEFAULT_RECORD_BATCH_SIZE if records else DEFAULT_BATCH_SIZE
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    if records and args.symbol is not None:
        # The file names its symbols on every line; a --symbol would be silently ignored.
        raise UsageError(f"--symbol does not apply to --format {args.format}")
    opened: TickFile | RecordFile
    try:
        if records:
            opened = open_record_file(args.file, args.format)
        else:
            opened = open_tick_file(args.file, args.format, args.symbol)
    except (TickFileError, ImportArgumentError) as exc:
        log.error("import.failed", file=str(args.file), format=args.format, error=str(exc))
        raise UsageError(str(exc)) from None
    with opened:
        engine = _open(args.db)
        try:
            with _progress_bar(opened.size, opened.path.name) as progress:
                if isinstance(opened, RecordFile):
                    import_records(opened, engine, batch_size=batch_size, progress=progress)
                else:
                    import_ticks(opened, engine, batch_size=batch_size, progress=progress)
        except (TickFileError, ImportArgumentError, DatabaseUnavailable) as exc:
            log.error("import.failed", file=str(opened.path), format=args.format, error=str(exc))
            raise UsageError(str(exc)) from None
        finally:
            engine.dispose()
    return EXIT_OK


@contextmanager
def _progress_bar(total: int, name: str) -> Iterator[Callable[[int], None] | None]:
    """A byte-count progress bar on stderr, only when a person is watching it.

    The bar closes itself once every byte is counted, so that it is gone
    before the summary line reaches the same terminal.
    """
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, leave=False)

    def advance(n: int) -> None:
        bar.update(n)
        if bar.n >= total:
            bar.close()

    try:
        yield advance
    finally:
        bar.close()


def cmd_aggregate(args: argparse.Namespace) -> int:
    """One catch-up pass of each chosen service's own job, then exit (cron, batch, tests).

    The jobs are the ones the services run, built from the same config, so
    a pass here and an iteration there write the same rows and share the
    same cursors: running both never processes anything twice.
    """
    config = _load(args.config) if args.config else TickvisorConfig()
    try:
        wanted = [normalize_symbol(s) for s in args.symbols or ()]
    except SymbolError as exc:
        raise UsageError(f"--symbol: {exc}") from None
    if args.batch_ticks is not None and args.batch_ticks < 1:
        raise UsageError(f"--batch-ticks must be >= 1, got {args.batch_ticks}")
    names = list(SERVICE_TYPES) if args.service == "all" else [args.service]
    engine = _open(args.db or config.database.url)
    failed = False
    try:
        for name in names:
            service = SERVICE_TYPES[name]
            service_config = getattr(config.services, name, None) or service.config_type()
            if name == "candles" and args.batch_ticks is not None:
                service_config = service_config.model_copy(update={"batch_ticks": args.batch_ticks})
            job = service.build_job(engine, name, service_config, None)
            with engine.connect() as conn:
                symbols = wanted or service.symbols_in(conn)
            try:
                report = job.catch_up(symbols)
            except (SQLAlchemyError, CatchUpFailed) as exc:
                log.error(
                    "aggregate.failed",
                    service=name,
                    error_type=type(exc).__name__,
                    error=str(exc)[:500],
                )
                print(
                    f"tickvisor: aggregate {name} failed: {str(exc).splitlines()[0]}",
                    file=sys.stderr,
                )
                return EXIT_ESCALATED
            log.info(
                "aggregate.completed",
                service=name,
                symbols=len(symbols),
                **{service.rows_metric: report.rows, service.written_metric: report.written},
                quarantined=report.quarantined,
                failed_symbols=report.failed,
                seconds=round(report.seconds, 3),
            )
            failed = failed or bool(report.failed)
    finally:
        engine.dispose()
    return EXIT_ESCALATED if failed else EXIT_OK


def cmd_db(args: argparse.Namespace) -> int:
    """``db current``: where the schema stands (exit 0 at head, 1 behind); ``db upgrade``.

    Neither goes through :func:`open_database`, which refuses a database at
    another revision: these are the commands that message tells users to run.
    """
    config = _load(args.config) if args.config else TickvisorConfig()
    engine = make_engine(args.db or config.database.url)
    try:
        check_connection(engine)
        if args.action == "upgrade":
            before = schema_state(engine)
            reached = upgrade(engine)
            log.info(
                "db.upgraded", database=safe_url(engine.url), before=before.current, now=reached
            )
            print(f"{safe_url(engine.url)}: schema at {reached} (was {before.current or 'none'})")
            return EXIT_OK
        state = schema_state(engine)
        log.info(
            "db.current",
            database=safe_url(engine.url),
            revision=state.current,
            head=state.head,
            state=state.kind,
        )
        print(
            f"{safe_url(engine.url)}: {state.current or 'no revision'} "
            f"({state.kind}; this tickvisor needs {state.head})",
            file=sys.stderr,
        )
        return EXIT_OK if state.kind == "head" else EXIT_ESCALATED
    except DatabaseUnavailable as exc:
        log.error("database.unavailable", error=str(exc))
        raise UsageError(str(exc)) from None
    finally:
        engine.dispose()


# --- the running tree --------------------------------------------------------------


def _run_tree(
    config: TickvisorConfig,
    url: str | None,
    *,
    seconds: float | None,
    demo: bool = False,
    admin_port: int | None = None,
    config_path: Path | None = None,
) -> int:
    try:
        config = with_alert_env(config)
    except ConfigError as exc:
        log.error("config.rejected", error=str(exc))
        raise UsageError(str(exc)) from None
    engine = _open(url)
    clock = RealClock()
    scheduler = ThreadScheduler(clock)
    stop = threading.Event()
    closing = threading.Event()
    escalation: list[str] = []

    def on_escalate(reason: str) -> None:
        escalation.append(reason)
        stop.set()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("tickvisor.signal", signal=signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    bus = EventBus()
    root = build_tree(
        config,
        engine=engine,
        clock=clock,
        scheduler=scheduler,
        on_escalate=on_escalate,
        closing=closing,
        bus=bus,
    )
    log.info(
        "tickvisor.started",
        version=__version__,
        database=safe_url(engine.url),
        services=[n for n, s in config.services.model_dump().items() if s and s["enabled"]],
        feed=config.feed.enabled,
        alert_channels=config.alerts.channels(),
    )
    try:
        token = resolve_token(config, url)
        try:
            admin = start_admin(root, config, token=token, port=admin_port, engine=engine)
        except AdminStartError as exc:
            if not demo or admin_port is not None:
                raise
            # A demo is a self-contained try-out: a busy default port is no
            # reason to fail it. `run` keeps failing, so an operator notices.
            log.warning("admin.port_busy", error=str(exc), fallback="any free port")
            admin = start_admin(root, config, token=token, port=0, engine=engine)
    except (AdminStartError, AdminTokenError) as exc:
        log.error("admin.failed", error=str(exc))
        closing.set()
        _shutdown(root, scheduler, shutdown_budget(config))
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        engine.dispose()
        raise UsageError(str(exc)) from None
    if demo:
        _stage_demo_faults(Control(root), scheduler)
    watcher = _watch(config_path, Control(root), bus, config, clock)
    if watcher is not None:
        previous[signal.SIGHUP] = signal.signal(
            signal.SIGHUP, lambda _signum, _frame: watcher.request_reload()
        )
    try:
        deadline = None if seconds is None else clock.monotonic() + seconds
        while not stop.is_set() and root.is_alive():
            remaining = None if deadline is None else deadline - clock.monotonic()
            if remaining is not None and remaining <= 0:
                break
            stop.wait(timeout=min(1.0, remaining) if remaining is not None else 1.0)
        if not stop.is_set() and not root.is_alive():
            escalation.append("the root supervisor stopped unexpectedly")
    finally:
        if watcher is not None:
            watcher.stop()  # before the tree stops: no reload into a stopping tree
        if not escalation:
            _drain_alerts(Control(root), clock, DEMO_DRAIN_SECONDS if demo else RUN_DRAIN_SECONDS)
        closing.set()
        _shutdown(root, scheduler, shutdown_budget(config))
        # After the tree: probes see 503 while it stops, not a refused connection.
        admin.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if demo:
        _print_demo_summary(engine)
    engine.dispose()
    if escalation:
        log.critical("tickvisor.exiting", reason=escalation[0], exit_code=EXIT_ESCALATED)
        return EXIT_ESCALATED
    log.info("tickvisor.stopped", exit_code=EXIT_OK, threads_left=_threads_left())
    return EXIT_OK


def _watch(
    path: Path | None, control: Control, bus: EventBus, config: TickvisorConfig, clock: RealClock
) -> ConfigWatcher | None:
    """Watch the config file (and symbols files) for a reload; SIGHUP reloads on demand."""
    if path is None:
        return None
    try:
        return watch_config(path, control, bus, config, clock)
    except OSError as exc:  # neither inotify nor polling could watch the folder
        log.warning("config.watch_failed", file=str(path), error=str(exc))
        return None


def _threads_left() -> list[str]:
    """Non-daemon threads still running besides this one: each would keep the process alive."""
    return [
        t.name
        for t in threading.enumerate()
        if t.is_alive() and not t.daemon and t is not threading.current_thread()
    ]


def _stage_demo_faults(control: Control, scheduler: ThreadScheduler) -> None:
    """The demo's two drills, on the scheduler's thread so the main thread only waits.

    At 1 s the candle service crashes (a bug in a handler, as pykka sees it)
    and its supervisor restarts it: ``child.restarted``. From 3 s three
    iterations fail: the breaker (threshold 3, timeout 2 s) opens, the
    supervisor pauses the service (``child.paused``), the half-open trial two
    seconds later succeeds, and the service is resumed (``child.resumed``).
    """

    def drill(message: object) -> Callable[[], None]:
        def send() -> None:
            try:
                control.tell("services/candles", message)
            except Exception as exc:  # the demo goes on; the log says why
                log.warning("demo.drill_failed", drill=type(message).__name__, error=str(exc))

        return send

    scheduler.call_later(1.0, drill(Crash("demo crash")))
    scheduler.call_later(3.0, drill(InjectFailures(3, "demo burst")))


def _drain_alerts(control: Control, clock: RealClock, seconds: float) -> None:
    """Send the alerts still waiting in their groups, and give delivery a moment.

    Whatever is not delivered within ``seconds`` stays in the outbox and goes
    out on the next start, so this wait is a courtesy, never a requirement.
    """
    try:
        control.send("alerts/router", FlushAlerts())
        deadline = clock.monotonic() + seconds
        while clock.monotonic() < deadline:
            outbox = control.metrics("alerts/router")["outbox"]
            if not outbox.get("pending", 0):
                return
            threading.Event().wait(0.05)
        log.warning("alerts.undelivered_at_stop", pending=outbox.get("pending"))
    except Exception as exc:  # a broken alerts subtree must not stop the shutdown
        log.warning("alerts.drain_failed", error=f"{type(exc).__name__}: {exc}")


def _shutdown(root: pykka.ActorRef[Any], scheduler: ThreadScheduler, budget: float) -> None:
    """Stop the tree (children in reverse order), then the timers; leave no thread behind."""
    if root.is_alive():
        try:
            root.stop(block=True, timeout=budget)
        except pykka.Timeout:
            log.error("tickvisor.stop_timeout", timeout=budget)
    scheduler.stop()
    try:
        pykka.ActorRegistry.stop_all(block=True, timeout=10.0)
    except pykka.Timeout:
        log.error("tickvisor.stop_timeout", timeout=10.0, abandoned="actors still busy")


def _demo_config() -> TickvisorConfig:
    symbols = ["EUR/USD", "USD/JPY", "GBP/USD"]
    return TickvisorConfig(
        feed=FeedConfig(
            enabled=True, symbols=symbols, interval_seconds=0.5, ticks_per_interval=25, seed=7
        ),
        services=ServicesConfig(
            candles=CandleServiceConfig(
                interval_seconds=1.0,
                symbols=symbols,
                breaker=BreakerConfig(failure_threshold=3, timeout=2.0, half_open_max_calls=1),
            ),
            depth=DepthServiceConfig(interval_seconds=1.0, symbols=symbols),
            sentiment=SentimentServiceConfig(interval_seconds=1.0, symbols=symbols),
        ),
        # Short waits, so the demo's few seconds show a breaker's open and
        # resolved notifications on whatever channel the environment names.
        alerts=AlertsConfig(
            group_wait_seconds=0.5,
            group_interval_seconds=1.0,
            repeat_interval_seconds=3600.0,
            delivery=AlertDeliveryConfig(try_seconds=5.0, sweep_interval_seconds=1.0),
        ),
    )


def _print_demo_summary(engine: sa.Engine) -> None:
    with engine.connect() as conn:

        def count(table: sa.Table) -> int:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())

        tick_count, candle_count = count(ticks), count(candles)
        snapshot_count, depth_count = count(depth_snapshots), count(depth_metrics)
        reading_count, sentiment_count = count(sentiment_raw), count(sentiment_metrics)
        transitions = [
            f"{row.payload['from_state']} -> {row.payload['to_state']}"
            for row in conn.execute(
                sa.select(events.c.payload)
                .where(events.c.kind == "breaker.transition")
                .order_by(events.c.id)
            )
        ]
        decisions = [
            f"{row.kind.removeprefix('child.')} {row.service}#{row.payload['generation']}"
            for row in conn.execute(
                sa.select(events.c.kind, events.c.service, events.c.payload)
                .where(events.c.kind.in_(["child.restarted", "child.paused", "child.resumed"]))
                .order_by(events.c.id)
            )
        ]
        notified = conn.execute(
            sa.select(sa.func.count()).select_from(alert_notifications)
        ).scalar_one()
        deliveries = [
            f"{row.channel} {row.status} {row.n}"
            for row in conn.execute(
                sa.select(
                    alert_deliveries.c.channel,
                    alert_deliveries.c.status,
                    sa.func.count().label("n"),
                )
                .group_by(alert_deliveries.c.channel, alert_deliveries.c.status)
                .order_by(alert_deliveries.c.channel, alert_deliveries.c.status)
            )
        ]
    channels = (
        ", ".join(deliveries)
        or "log only (set SLACK_WEBHOOK_URL, ALERT_WEBHOOK_URL or ALERT_EMAIL)"
    )
    print(
        "\ntickvisor demo summary\n"
        f"  ticks generated   : {tick_count}\n"
        f"  candles written   : {candle_count}\n"
        f"  depth snapshots   : {snapshot_count} -> {depth_count} depth metrics\n"
        f"  sentiment readings: {reading_count} -> {sentiment_count} sentiment metrics\n"
        f"  breaker cycle     : {', '.join(transitions) or 'none'}\n"
        f"  supervisor        : {', '.join(decisions) or 'none'}\n"
        f"  notifications     : {notified}; {channels}\n",
        file=sys.stderr,
    )


# --- helpers ------------------------------------------------------------------------


def _load(path: Path) -> TickvisorConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        log.error("config.rejected", file=str(path), error=str(exc))
        raise UsageError(str(exc)) from None


def _open(url: str | None) -> sa.Engine:
    try:
        return open_database(url)
    except DatabaseUnavailable as exc:
        log.error("database.unavailable", error=str(exc))
        raise UsageError(str(exc)) from None


if __name__ == "__main__":
    sys.exit(main())
