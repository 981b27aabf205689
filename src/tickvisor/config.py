"""Configuration: YAML on disk, frozen pydantic models in memory.

A config is read at start-up, by ``tickvisor check-config`` and on every
reload, and a rejected reload must leave the running config in place. So
loading never half-succeeds: it returns a complete, validated
:class:`TickvisorConfig` or raises :class:`ConfigError`, whose message alone
(no traceback) tells an operator which file, which key and what is wrong.

``${VAR}`` interpolation runs on the parsed tree, not on the raw text, so an
environment variable can only ever become a string value: it cannot add keys,
lists or YAML syntax.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tickvisor.symbols import load_symbols_file, normalize_symbol, yaml_kind

__all__ = [
    "DEFAULT_FEED_SYMBOLS",
    "LOG_LEVELS",
    "TIMEFRAMES",
    "AdminConfig",
    "AlertDeliveryConfig",
    "AlertRoute",
    "AlertsConfig",
    "BreakerConfig",
    "CandleServiceConfig",
    "ConfigError",
    "DatabaseConfig",
    "DepthServiceConfig",
    "EmailConfig",
    "FeedConfig",
    "LoggingConfig",
    "SentimentServiceConfig",
    "ServiceConfig",
    "ServicesConfig",
    "SlackConfig",
    "SupervisorConfig",
    "TickvisorConfig",
    "Timeframe",
    "WebhookConfig",
    "load_config",
    "parse_config",
    "with_alert_env",
]

Timeframe = Literal["1m", "5m", "15m", "30m", "1h", "4h", "1d"]
TIMEFRAMES: tuple[Timeframe, ...] = typing.get_args(Timeframe)
LOG_LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_FEED_SYMBOLS: tuple[str, ...] = ("EUR/USD", "USD/JPY", "GBP/USD")

#: Key names whose values must never be echoed: they tend to hold credentials.
_SECRET_KEY_PARTS = ("url", "password", "passwd", "token", "secret", "api_key", "authorization")


class ConfigError(ValueError):
    """A config that cannot be used; ``str()`` is the whole user-facing report.

    Each argument is one problem, already prefixed with the file and key path,
    so a CLI can print ``str(exc)`` and exit, and tests can look at
    :attr:`problems` one by one.
    """

    def __init__(self, *problems: str) -> None:
        super().__init__(*problems)
        self.problems: tuple[str, ...] = problems

    def __str__(self) -> str:
        return "\n".join(self.problems)


# --------------------------------------------------------------------------- field types


def _reject_bool(value: Any) -> Any:
    """Refuse ``true`` where a number belongs: pydantic would quietly read it as 1."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got a boolean ({str(value).lower()})")
    return value


def _unique(values: list[Any]) -> list[Any]:
    first_seen: dict[Any, int] = {}
    for index, value in enumerate(values):
        if value in first_seen:
            raise ValueError(
                f"{value} is listed twice (items {first_seen[value]} and {index}); list it once"
            )
        first_seen[value] = index
    return values


def _non_empty_unique(values: list[Any]) -> list[Any]:
    if not values:
        raise ValueError("must not be empty")
    return _unique(values)


_NoBool = BeforeValidator(_reject_bool)
Symbol = Annotated[str, AfterValidator(normalize_symbol)]
Seconds = Annotated[float, _NoBool, Field(gt=0, allow_inf_nan=False)]
NonNegativeSeconds = Annotated[float, _NoBool, Field(ge=0, allow_inf_nan=False)]
Count = Annotated[int, _NoBool, Field(ge=1)]
NonNegativeCount = Annotated[int, _NoBool, Field(ge=0)]


class _Model(BaseModel):
    """Shared settings: a typo'd key is an error, and a loaded config never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_section_means_defaults(cls, data: Any) -> Any:
        # ``feed:`` with every child commented out parses as null; the user
        # meant "this section, with its defaults", not "invalid".
        return {} if data is None else data


# --------------------------------------------------------------------------- sections


class DatabaseConfig(_Model):
    """Where tickvisor reads and writes its tables."""

    # repr=False: the URL often embeds a password, and configs get logged.
    url: str | None = Field(default=None, repr=False)

    @field_validator("url")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        # An empty URL usually means an interpolated variable that was set to
        # "", which would otherwise surface later as an obscure SQLAlchemy error.
        if value is not None and not value.strip():
            raise ValueError("must not be empty; remove the key to use the default SQLite file")
        return value


class LoggingConfig(_Model):
    """How log lines are rendered; JSON is the contract, console is for humans."""

    format: Literal["json", "console"] = "json"
    level: str = "INFO"

    @field_validator("level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)} (got {value!r})")
        return level


class BackoffConfig(_Model):
    """Wait before restarting a child (Akka BackoffSupervisor); ``max_seconds: 0`` turns it off.

    The n-th consecutive restart waits ``min(max, min * factor**n)`` times a
    random factor in ``[1, 1 + jitter]``; a child that ran
    ``reset_after_seconds`` without failing starts from ``min`` again.
    """

    min_seconds: NonNegativeSeconds = 0.5
    max_seconds: NonNegativeSeconds = 30.0
    factor: Annotated[float, _NoBool, Field(ge=1.0, allow_inf_nan=False)] = 2.0
    jitter: Annotated[float, _NoBool, Field(ge=0.0, le=1.0, allow_inf_nan=False)] = 0.2
    reset_after_seconds: NonNegativeSeconds = 60.0

    @model_validator(mode="after")
    def _min_within_max(self) -> BackoffConfig:
        if self.max_seconds and self.min_seconds > self.max_seconds:
            raise ValueError(
                f"min_seconds ({self.min_seconds}) must be at most max_seconds ({self.max_seconds})"
            )
        return self


class SupervisorConfig(_Model):
    """Restart policy of the services supervisor (Erlang/OTP semantics)."""

    strategy: Literal["one_for_one", "one_for_all", "rest_for_one"] = "one_for_one"
    max_restarts: NonNegativeCount = 5
    within_seconds: Seconds = 30.0
    shutdown_timeout: Seconds = 5.0
    #: How often supervisors look for children that vanished or stopped answering.
    check_interval_seconds: Seconds = 1.0
    backoff: BackoffConfig = Field(default_factory=BackoffConfig)


class FeedConfig(_Model):
    """The optional synthetic tick feed, for demos and for running without a vendor."""

    enabled: bool = False
    symbols: Annotated[list[Symbol], AfterValidator(_non_empty_unique)] = Field(
        default_factory=lambda: list(DEFAULT_FEED_SYMBOLS)
    )
    interval_seconds: Seconds = 1.0
    ticks_per_interval: Count = 20
    seed: Annotated[int, _NoBool] | None = None
    #: Also write one order-book snapshot per symbol and batch (input of the depth service).
    depth_snapshots: bool = True
    #: Also write one positioning reading per symbol and batch (input of sentiment).
    sentiment_readings: bool = True


class BreakerConfig(_Model):
    """Circuit breaker of one service; defaults match the seed system's breaker."""

    failure_threshold: Count = 5
    timeout: Seconds = 60.0
    half_open_max_calls: Count = 3
    success_threshold: Count = 1
    backoff_factor: Annotated[float, _NoBool, Field(ge=1.0, allow_inf_nan=False)] = 1.0
    # Validated even when omitted: a user who raises ``timeout`` above the
    # default cap must be told, or the cap would silently shorten the timeout.
    max_timeout: Seconds = Field(default=600.0, validate_default=True)
    sliding_window_size: NonNegativeCount = 0
    minimum_calls: Count = Field(default=10, validate_default=True)
    failure_rate_threshold: Annotated[float, _NoBool, Field(gt=0, le=100, allow_inf_nan=False)] = (
        50.0
    )
    slow_call_seconds: Seconds | None = None

    @field_validator("success_threshold")
    @classmethod
    def _reachable_success_threshold(cls, value: int, info: ValidationInfo) -> int:
        # HALF_OPEN lets only half_open_max_calls through, so a higher
        # threshold could never be met and the breaker would never close.
        max_calls = info.data.get("half_open_max_calls")
        if max_calls is not None and value > max_calls:
            raise ValueError(
                f"must be at most half_open_max_calls ({max_calls}), otherwise the breaker "
                f"can never close again (got {value})"
            )
        return value

    @field_validator("minimum_calls")
    @classmethod
    def _window_can_fill(cls, value: int, info: ValidationInfo) -> int:
        # The failure rate is judged only once minimum_calls outcomes are in the
        # window; a window smaller than that could never trip the breaker.
        size = info.data.get("sliding_window_size")
        if size and value > size:
            raise ValueError(
                f"must be at most sliding_window_size ({size}), otherwise the failure-rate "
                f"window can never trip the breaker (got {value})"
            )
        return value

    @field_validator("max_timeout")
    @classmethod
    def _cap_above_timeout(cls, value: float, info: ValidationInfo) -> float:
        timeout = info.data.get("timeout")
        if timeout is not None and value < timeout:
            raise ValueError(
                f"must be at least timeout ({timeout:g}), since it caps the backed-off "
                f"open period (got {value:g}); raise max_timeout as well"
            )
        return value


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context if isinstance(info.context, Mapping) else {}
    base = context.get("base_dir")
    return Path(base) if base is not None else Path.cwd()


class ServiceConfig(_Model):
    """Settings every market-data service shares; each service subclasses it."""

    enabled: bool = True
    interval_seconds: Seconds = 5.0
    symbols: Annotated[list[Symbol], AfterValidator(_unique)] | None = None
    symbols_file: Path | None = None
    symbol_cache_ttl: NonNegativeSeconds = 300.0
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    #: Erlang/OTP restart type: permanent (always), transient (after a crash), temporary (never).
    restart: Literal["permanent", "transient", "temporary"] = "permanent"
    #: What the supervisor does when the breaker opens: hold iterations until
    #: it closes (pause), replace the service after the open period (restart),
    #: or leave it to the breaker (ignore).
    on_breaker_open: Literal["pause", "restart", "ignore"] = "pause"
    #: A service that does not answer for this long (an iteration hung in I/O)
    #: is abandoned, replaced and fenced; null turns the check off. One
    #: iteration yields after a quarter of it, so a long backlog is not "hung".
    iteration_deadline_seconds: Seconds | None = 120.0

    @field_validator("symbols")
    @classmethod
    def _symbols_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError(
                "must not be empty; remove the key to let the service discover symbols "
                "from its data"
            )
        return value

    @field_validator("symbols_file")
    @classmethod
    def _resolve_symbols_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        """Resolve against the config file's folder and read the file once now.

        Reading it here means ``check-config`` reports a broken symbols file
        before the service starts, instead of the first cache refresh failing.
        """
        if value is None:
            return None
        if info.data.get("symbols") is not None:
            raise ValueError(
                "cannot be combined with symbols; list the symbols inline or in a file, not both"
            )
        path = (_base_dir(info) / value.expanduser()).resolve()
        load_symbols_file(path)
        return path


class CandleServiceConfig(ServiceConfig):
    """Settings of the candles service (ticks -> OHLC candles)."""

    timeframes: Annotated[list[Timeframe], AfterValidator(_non_empty_unique)] = Field(
        default_factory=lambda: list(TIMEFRAMES)
    )
    #: Where a 1d candle starts: UTC midnight, or 17:00 New York (FX convention).
    daily_rollover: Literal["utc", "new_york_17"] = "utc"
    #: Ticks folded per transaction while catching up a backlog.
    batch_ticks: int = Field(default=100_000, ge=1, le=10_000_000)


class DepthServiceConfig(ServiceConfig):
    """Settings of the depth service (order-book snapshots -> depth metrics)."""

    #: Levels per side summed into bid_depth and ask_depth.
    levels: int = Field(default=10, ge=1, le=1000)
    #: Snapshots processed per transaction while catching up a backlog.
    batch_snapshots: int = Field(default=10_000, ge=1, le=1_000_000)


Percent = Annotated[float, _NoBool, Field(ge=0, le=100, allow_inf_nan=False)]


class SentimentServiceConfig(ServiceConfig):
    """Settings of the sentiment service (positioning readings -> sentiment metrics)."""

    #: Contrarian signal -1 when long_pct is above this (the crowd is heavily long).
    contrarian_upper: Percent = 70.0
    #: Contrarian signal +1 when long_pct is below this (the crowd is heavily short).
    contrarian_lower: Percent = 30.0
    #: Label "bullish" at or above this long_pct, "bearish" at or below bearish_below.
    bullish_above: Percent = 55.0
    bearish_below: Percent = 45.0
    #: A reading older than this is marked stale.
    max_age_seconds: Seconds = 3600.0
    #: Raw rows processed per transaction while catching up a backlog.
    batch_rows: int = Field(default=50_000, ge=1, le=10_000_000)

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> SentimentServiceConfig:
        if self.contrarian_lower >= self.contrarian_upper:
            raise ValueError(
                f"contrarian_lower ({self.contrarian_lower:g}) must be below contrarian_upper "
                f"({self.contrarian_upper:g})"
            )
        if self.bearish_below >= self.bullish_above:
            raise ValueError(
                f"bearish_below ({self.bearish_below:g}) must be below bullish_above "
                f"({self.bullish_above:g})"
            )
        return self


class SlackConfig(_Model):
    """A Slack incoming webhook. The URL is the secret: it is never logged or shown."""

    webhook_url: SecretStr
    timeout_seconds: Seconds = 10.0
    #: Slack accepts about one message per second per webhook.
    min_interval_seconds: NonNegativeSeconds = 1.0


class EmailConfig(_Model):
    """SMTP delivery: STARTTLS (587), SMTPS (465), or plain for an explicit local relay."""

    to: Annotated[list[str], AfterValidator(_non_empty_unique)]
    host: str
    port: int | None = Field(default=None, ge=1, le=65535)
    security: Literal["starttls", "ssl", "none"] = "starttls"
    user: str | None = None
    password: SecretStr | None = None
    sender: str = "tickvisor@localhost"
    timeout_seconds: Seconds = 10.0
    #: A CA bundle to verify the server's certificate with, instead of the system's.
    ca_file: Path | None = None

    @property
    def effective_port(self) -> int:
        return self.port or {"starttls": 587, "ssl": 465, "none": 25}[self.security]


class WebhookConfig(_Model):
    """A generic webhook, signed per the Standard Webhooks spec with a ``whsec_`` secret."""

    url: SecretStr
    secret: SecretStr
    timeout_seconds: Seconds = 10.0


class AlertRoute(_Model):
    """Send matching notifications to ``channels``; an absent matcher matches anything."""

    channels: Annotated[
        list[Literal["slack", "email", "webhook"]], AfterValidator(_non_empty_unique)
    ]
    severity: list[Literal["critical", "warning", "info"]] | None = None
    service: list[str] | None = None


class AlertDeliveryConfig(_Model):
    """How hard a channel tries, and how long the outbox keeps things."""

    #: One delivery: tenacity attempts, bounded in total time.
    attempts_per_try: Count = 5
    try_seconds: Seconds = 60.0
    retry_after_cap_seconds: Seconds = 60.0
    #: Across tries (the outbox retries later, across restarts too).
    max_tries: Count = 10
    retry_interval_seconds: Seconds = 60.0
    max_age_seconds: Seconds = 86_400.0
    #: Delivered and dead-lettered notifications are purged after this long.
    retention_seconds: Seconds = 7 * 86_400.0
    #: How often the outbox is swept for due retries and old rows.
    sweep_interval_seconds: Seconds = 5.0


class AlertsConfig(_Model):
    """Routing, grouping and channels of the alerts actor (the log channel is always on)."""

    group_by: Annotated[
        list[Literal["service", "kind", "severity", "supervisor"]], AfterValidator(_unique)
    ] = Field(default=["service"])
    group_wait_seconds: NonNegativeSeconds = 30.0
    group_interval_seconds: NonNegativeSeconds = 300.0
    repeat_interval_seconds: NonNegativeSeconds = 14_400.0
    #: A breaker that opens this many times within ``flap_window_seconds`` is flapping.
    flap_transitions: int = Field(default=3, ge=2)
    flap_window_seconds: Seconds = 600.0
    routes: list[AlertRoute] = Field(default_factory=list)
    delivery: AlertDeliveryConfig = Field(default_factory=AlertDeliveryConfig)
    slack: SlackConfig | None = None
    email: EmailConfig | None = None
    webhook: WebhookConfig | None = None

    def channels(self) -> list[str]:
        return [name for name in ("slack", "email", "webhook") if getattr(self, name) is not None]


class ServicesConfig(_Model):
    """One optional entry per service; an absent entry means the service is not run."""

    candles: CandleServiceConfig | None = None
    depth: DepthServiceConfig | None = None
    sentiment: SentimentServiceConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _empty_service_means_defaults(cls, data: Any, info: ValidationInfo) -> Any:
        # In a file, ``candles:`` with its children commented out is null, yet
        # the user clearly meant "run candles with the defaults". Only for
        # file input: in code, ``candles=None`` keeps meaning "not configured".
        if isinstance(data, Mapping) and _from_file(info):
            return {key: {} if value is None else value for key, value in data.items()}
        return data


def _from_file(info: ValidationInfo) -> bool:
    return isinstance(info.context, Mapping) and bool(info.context.get("from_file"))


#: The shortest admin token accepted: anything shorter is guessable, not a secret.
MIN_ADMIN_TOKEN_LENGTH = 16


class AdminConfig(_Model):
    """The admin HTTP API: health, readiness, metrics, status and control.

    It listens on loopback by default because its control routes can pause
    and restart services; exposing it is a deliberate choice (``host``).
    The control routes need a bearer token: ``TICKVISOR_ADMIN_TOKEN`` wins,
    then ``token``; with neither, ``run`` generates one and writes it
    (owner-only) to ``token_file``, by default ``tickvisor-admin.token`` next
    to the SQLite database (the working folder for PostgreSQL).
    """

    host: str = "127.0.0.1"
    #: 0 picks a free port (the start-up log line names the real one).
    port: Annotated[int, _NoBool, Field(ge=0, le=65535)] = 8787
    token: SecretStr | None = None
    token_file: Path | None = None

    @field_validator("host")
    @classmethod
    def _host_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty; 127.0.0.1 keeps the admin API on this machine")
        return value.strip()

    @field_validator("token")
    @classmethod
    def _token_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty token (an unset ${VAR:-}) would make every bearer header
        # compare as a match against nothing: refuse it instead of running open.
        if value is not None and len(value.get_secret_value().strip()) < MIN_ADMIN_TOKEN_LENGTH:
            raise ValueError(
                f"must be at least {MIN_ADMIN_TOKEN_LENGTH} characters; remove the key to "
                "have one generated, or set TICKVISOR_ADMIN_TOKEN"
            )
        return value

    @field_validator("token_file")
    @classmethod
    def _resolve_token_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        """Relative to the config file's folder, like ``symbols_file``."""
        if value is None:
            return None
        return (_base_dir(info) / value.expanduser()).absolute()


class TickvisorConfig(_Model):
    """The whole configuration of one tickvisor process."""

    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    supervisor: SupervisorConfig = Field(default_factory=SupervisorConfig)
    feed: FeedConfig = Field(default_factory=FeedConfig)
    services: ServicesConfig = Field(default_factory=ServicesConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)


# --------------------------------------------------------------------------- alert env


def with_alert_env(
    config: TickvisorConfig, env: Mapping[str, str] | None = None
) -> TickvisorConfig:
    """The seed's environment variables configure alert channels the file leaves out.

    ``SLACK_WEBHOOK_URL``; ``ALERT_WEBHOOK_URL`` with ``ALERT_WEBHOOK_SECRET``;
    ``ALERT_EMAIL`` with ``SMTP_HOST``, ``SMTP_PORT``, ``SMTP_USER``,
    ``SMTP_PASSWORD`` and ``SMTP_SECURITY``. A channel in the file wins over
    the environment. Raises :class:`ConfigError` naming the variable at fault.
    """
    env = os.environ if env is None else env
    alerts = config.alerts
    update: dict[str, Any] = {}
    problems: list[str] = []

    def build(model: type[_Model], data: dict[str, Any], names: str) -> Any:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(p) for p in error["loc"])
                problems.append(f"environment ({names}): {where}: {error['msg']}")
            return None

    if alerts.slack is None and env.get("SLACK_WEBHOOK_URL"):
        update["slack"] = build(
            SlackConfig, {"webhook_url": env["SLACK_WEBHOOK_URL"]}, "SLACK_WEBHOOK_URL"
        )
    if alerts.webhook is None and env.get("ALERT_WEBHOOK_URL"):
        if not env.get("ALERT_WEBHOOK_SECRET"):
            problems.append(
                "environment: ALERT_WEBHOOK_URL is set but ALERT_WEBHOOK_SECRET is not; "
                "webhooks are always signed"
            )
        else:
            update["webhook"] = build(
                WebhookConfig,
                {"url": env["ALERT_WEBHOOK_URL"], "secret": env["ALERT_WEBHOOK_SECRET"]},
                "ALERT_WEBHOOK_URL, ALERT_WEBHOOK_SECRET",
            )
    if alerts.email is None and env.get("ALERT_EMAIL"):
        if not env.get("SMTP_HOST"):
            problems.append("environment: ALERT_EMAIL is set but SMTP_HOST is not")
        else:
            data: dict[str, Any] = {
                "to": [a.strip() for a in env["ALERT_EMAIL"].split(",") if a.strip()],
                "host": env["SMTP_HOST"],
            }
            for var, key in (
                ("SMTP_PORT", "port"),
                ("SMTP_USER", "user"),
                ("SMTP_PASSWORD", "password"),
                ("SMTP_SECURITY", "security"),
            ):
                if env.get(var):
                    data[key] = env[var].strip().lower() if key == "security" else env[var]
            update["email"] = build(EmailConfig, data, "ALERT_EMAIL, SMTP_*")
    if problems:
        raise ConfigError(*problems)
    if not update:
        return config
    return config.model_copy(update={"alerts": alerts.model_copy(update=update)})


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> TickvisorConfig:
    """Load and validate a config file; relative paths in it are relative to its folder."""
    file = Path(path)
    source = str(path)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{source}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{source}: is a directory, expected a config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read config file: {exc.strerror}") from None
    return parse_config(text, source=source, base_dir=file.absolute().parent, env=env)


def parse_config(
    text: str,
    source: str = "<string>",
    base_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> TickvisorConfig:
    """Validate config ``text``; ``source`` only names it in error messages.

    ``base_dir`` (default: the working folder) anchors relative paths such as
    ``symbols_file``; ``env`` (default: ``os.environ``) feeds ``${VAR}``.
    """
    data = _load_yaml(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping of sections such as 'feed:' and "
            f"'services:', got {yaml_kind(data)}"
        )
    interpolator = _Interpolator(os.environ if env is None else env, source)
    data = interpolator.walk(data, ())
    if interpolator.problems:
        raise ConfigError(*interpolator.problems)
    context = {"base_dir": base_dir if base_dir is not None else Path.cwd(), "from_file": True}
    try:
        return TickvisorConfig.model_validate(data, context=context)
    except ValidationError as exc:
        # ``from None``: pydantic's own message echoes every input value,
        # secrets included, and would be printed with a chained traceback.
        raise ConfigError(*_format_validation_errors(exc, source)) from None


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects what PyYAML lets through silently.

    A duplicated key would otherwise keep only its last value, and an
    unquoted ``on:`` or ``1:`` key would become a boolean or a number that no
    schema field can ever match.
    """

    _MERGE_TAG: ClassVar[str] = "tag:yaml.org,2002:merge"

    def construct_mapping(
        self, node: yaml.MappingNode, deep: bool = False
    ) -> dict[typing.Hashable, Any]:
        first_seen: dict[str, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == self._MERGE_TAG:
                continue
            key = (
                self.construct_object(key_node, deep=True)
                if isinstance(key_node, yaml.ScalarNode)
                else None
            )
            if not isinstance(key, str):
                shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else "a collection"
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"keys must be strings, got {shown!r}; quote the key if it is meant as text",
                    key_node.start_mark,
                )
            if key in first_seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first given on line {first_seen[key].line + 1})",
                    key_node.start_mark,
                )
            first_seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        # Built from the mark and problem only: ``str(exc)`` quotes the
        # offending line, which may be the one holding a password.
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.problem and exc.context and exc.context_mark:
            problem += f" ({exc.context} on line {exc.context_mark.line + 1})"
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except yaml.reader.ReaderError as exc:
        raise ConfigError(
            f"{source}: invalid YAML: character {exc.character!r} at offset {exc.position} "
            "is not allowed"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {type(exc).__name__}") from None


# --------------------------------------------------------------------------- interpolation

# ``$${`` (escape) is tried first; a ``${`` with no closing brace on the same
# value matches the last alternative with ``body`` unset.
_TOKEN = re.compile(r"\$\$\{|\$\{(?:(?P<body>[^{}]*)\})?")
_BODY = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)

Loc = tuple[str | int, ...]


class _Interpolator:
    """One pass of ``${VAR}`` expansion over a parsed tree, collecting every problem.

    All problems are reported together so that a deployment missing three
    variables is fixed in one round trip, not three.
    """

    def __init__(self, env: Mapping[str, str], source: str) -> None:
        self.env = env
        self.source = source
        self.problems: list[str] = []
        self._active: set[int] = set()

    def walk(self, node: Any, loc: Loc) -> Any:
        if isinstance(node, str):
            return self.expand(node, loc)
        if not isinstance(node, dict | list):
            return node
        # YAML aliases can build a structure that contains itself.
        if id(node) in self._active:
            self.problems.append(_line(self.source, loc, "a YAML alias refers to itself"))
            return node
        self._active.add(id(node))
        try:
            if isinstance(node, dict):
                return {key: self.walk(value, (*loc, key)) for key, value in node.items()}
            return [self.walk(value, (*loc, index)) for index, value in enumerate(node)]
        finally:
            self._active.discard(id(node))

    def expand(self, value: str, loc: Loc) -> str:
        """Shell-like ``${VAR}`` / ``${VAR:-default}``: the default also covers an empty VAR.

        The result is never re-scanned, so a variable's value is taken literally
        even if it contains ``${``.
        """
        if "$" not in value:
            return value
        parts: list[str] = []
        position = 0
        for match in _TOKEN.finditer(value):
            parts.append(value[position : match.start()])
            position = match.end()
            if match.group(0) == "$${":
                parts.append("${")
                continue
            body = match.group("body")
            parsed = _BODY.fullmatch(body) if body is not None else None
            if parsed is None:
                shown = "" if _is_secret(loc) else f" {match.group(0)!r}"
                self.problems.append(
                    _line(
                        self.source,
                        loc,
                        f"invalid interpolation{shown}: write ${{NAME}} or ${{NAME:-default}}, "
                        "or $${ for a literal ${",
                    )
                )
                continue
            name, default = parsed.group("name"), parsed.group("default")
            current = self.env.get(name)
            if current:
                parts.append(current)
            elif default is not None:
                parts.append(default)
            elif current is not None:
                parts.append(current)
            else:
                self.problems.append(
                    _line(
                        self.source,
                        loc,
                        f"environment variable {name} is not set and has no default; "
                        f"set it or write ${{{name}:-default}}",
                    )
                )
        parts.append(value[position:])
        return "".join(parts)


# --------------------------------------------------------------------------- error messages


def _line(source: str, loc: Loc, problem: str) -> str:
    path = ".".join(str(part) for part in loc)
    return f"{source}: {path}: {problem}" if path else f"{source}: {problem}"


def _is_secret(loc: Loc) -> bool:
    names = [part.lower() for part in loc if isinstance(part, str)]
    return bool(names) and any(part in names[-1] for part in _SECRET_KEY_PARTS)


def _show(value: object, limit: int = 60) -> str:
    """Render a rejected value in YAML terms (``null``, ``true``), not Python's."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, int | float):
        text = f"{value:g}" if isinstance(value, float) else str(value)
    elif isinstance(value, str | Path):
        text = repr(str(value))
    else:
        return yaml_kind(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model a key path points into, to suggest a near-miss for an unknown key."""
    model: type[BaseModel] = TickvisorConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        found = _find_model(field.annotation) if field is not None else None
        if found is None:
            return None
        model = found
    return model


def _find_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list, Annotated):
        for arg in typing.get_args(annotation):
            found = _find_model(arg)
            if found is not None:
                return found
    return None


def _format_validation_errors(exc: ValidationError, source: str) -> list[str]:
    lines: list[str] = []
    for error in exc.errors(include_url=False):
        loc: Loc = tuple(error["loc"])
        kind = error["type"]
        value = error.get("input")
        if kind == "extra_forbidden":
            problem = "unknown key"
            parent = _model_at(loc[:-1])
            if parent is not None and isinstance(loc[-1], str):
                close = difflib.get_close_matches(loc[-1], list(parent.model_fields), n=1)
                if close:
                    problem += f" (did you mean {close[0]!r}?)"
        elif kind in ("value_error", "assertion_error"):
            # Our own validators word their messages to stand alone.
            problem = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            problem = f"expected a mapping of keys, got {yaml_kind(value)}"
        else:
            problem = error["msg"]
            if not _is_secret(loc) and not isinstance(value, dict | list):
                problem += f" (got {_show(value)})"
        line = _line(source, loc, problem)
        if line not in lines:
            lines.append(line)
    return lines
