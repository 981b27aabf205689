"""Logging, configured in one place: one JSON object per line on stdout.

structlog renders our own events; the standard library's records (pykka,
SQLAlchemy, warnings, uncaught exceptions in threads) are routed through the
same processor chain by :class:`structlog.stdlib.ProcessorFormatter`, so in
JSON mode no plain-text line can reach stdout, not even a traceback: it
becomes the ``exception`` field of the line that reported it.

Everything else in the package only calls :func:`get_logger`.
"""

from __future__ import annotations

import logging
import sys
import threading
from types import TracebackType
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor

LogFormat = Literal["json", "console"]

#: The keys every JSON line starts with, in this order.
LEADING_KEYS = ("timestamp", "level", "event")

#: Context keys that may carry a secret; their values are masked before rendering.
SECRET_KEYS = frozenset(
    {"password", "token", "secret", "webhook_url", "authorization", "api_key", "smtp_password"}
)


def get_logger(name: str | None = None, **context: Any) -> structlog.stdlib.BoundLogger:
    """The one way to get a logger; ``context`` is bound to every line it writes."""
    # Passing the context to get_logger keeps the logger lazy: it picks up the
    # configuration in force when it first logs, not when it was created.
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name, **context)
    return logger


def _rename_level(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """Lower-case level names, and keep the logger name out of our own events' way."""
    if "level" in event_dict:
        event_dict["level"] = str(event_dict["level"]).lower()
    return event_dict


def mask_secrets(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """Replace the value of any secret-looking key so it can never be rendered."""
    for key in event_dict.keys() & SECRET_KEYS:
        event_dict[key] = "***"
    return event_dict


def _drop_stdlib_noise(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """Remove ProcessorFormatter bookkeeping that is not useful in a log line."""
    event_dict.pop("_record", None)
    event_dict.pop("_from_structlog", None)
    return event_dict


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        _rename_level,
        mask_secrets,
        structlog.stdlib.ExtraAdder(),
    ]


def configure_logging(
    fmt: LogFormat = "json", level: str | int = "INFO", stream: TextIO | None = None
) -> None:
    """Configure structlog and the standard library together; safe to call again.

    ``stream`` defaults to ``sys.stdout`` *as it is at call time*, which lets
    tests capture output by passing their own stream.
    """
    numeric_level = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric_level, int):
        raise ValueError(f"--log-level: unknown level {level!r}")

    shared = _shared_processors()
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
        exc_processor: Processor = structlog.processors.format_exc_info
    elif fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
        exc_processor = _noop
    else:
        raise ValueError(f"--log-format: expected 'json' or 'console', got {fmt!r}")

    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _drop_stdlib_noise,
            exc_processor,
            _lead_with_standard_keys,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    # SQLAlchemy's engine echo, pykka's debug chatter and Alembic's free-text
    # progress lines ("Context impl SQLiteImpl.") stay at WARNING unless asked;
    # tickvisor logs its own schema.* events instead.
    for noisy in ("sqlalchemy", "pykka", "urllib3", "alembic"):
        logging.getLogger(noisy).setLevel(max(numeric_level, logging.WARNING))
    logging.captureWarnings(True)
    _install_excepthooks()


def _lead_with_standard_keys(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """Put ``timestamp``, ``level`` and ``event`` first so lines read well by eye too."""
    ordered = {key: event_dict.pop(key) for key in LEADING_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


def _noop(_: Any, __: str, event_dict: EventDict) -> EventDict:
    return event_dict


def _install_excepthooks() -> None:
    """Uncaught exceptions (main thread or any other) become one log line, not a traceback."""
    crash_log = get_logger("tickvisor.crash")

    def main_hook(
        exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            sys.__excepthook__(exc_type, exc, tb)
            return
        crash_log.critical("process.uncaught_exception", exc_info=(exc_type, exc, tb))

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        exc_value = args.exc_value or args.exc_type()
        crash_log.error(
            "thread.uncaught_exception",
            thread=args.thread.name if args.thread else None,
            exc_info=(args.exc_type, exc_value, args.exc_traceback),
        )

    sys.excepthook = main_hook
    threading.excepthook = thread_hook


def bind_context(**context: Any) -> None:
    """Bind context for the current thread/task (e.g. ``service`` inside an actor)."""
    structlog.contextvars.bind_contextvars(**context)


def clear_context() -> None:
    structlog.contextvars.clear_contextvars()


__all__ = [
    "SECRET_KEYS",
    "LogFormat",
    "bind_context",
    "clear_context",
    "configure_logging",
    "get_logger",
    "mask_secrets",
]
