"""Loading and validating the YAML config."""

from __future__ import annotations

import os
from pathlib import Path

import pydantic
import pytest

from tickvisor.config import (
    TIMEFRAMES,
    BreakerConfig,
    CandleServiceConfig,
    ConfigError,
    DatabaseConfig,
    DepthServiceConfig,
    FeedConfig,
    LoggingConfig,
    SentimentServiceConfig,
    ServiceConfig,
    ServicesConfig,
    SupervisorConfig,
    TickvisorConfig,
    load_config,
    parse_config,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def write(tmp_path: Path, text: str, name: str = "tickvisor.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(text: str, env: dict[str, str] | None = None, base_dir: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="tickvisor.yaml", base_dir=base_dir, env=env or {})
    return str(info.value)


# --------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    config = TickvisorConfig()
    assert config.database.url is None
    assert config.logging == LoggingConfig(format="json", level="INFO")
    assert config.supervisor == SupervisorConfig(
        strategy="one_for_one", max_restarts=5, within_seconds=30.0, shutdown_timeout=5.0
    )
    assert config.feed.enabled is False
    assert config.feed.symbols == ["EUR/USD", "USD/JPY", "GBP/USD"]
    assert config.feed.interval_seconds == 1.0
    assert config.feed.ticks_per_interval == 20
    assert config.feed.seed is None
    assert config.services.candles is None


def test_service_and_breaker_defaults() -> None:
    service = CandleServiceConfig()
    assert service.enabled is True
    assert service.interval_seconds == 5.0
    assert service.symbols is None
    assert service.symbols_file is None
    assert service.symbol_cache_ttl == 300.0
    assert service.timeframes == ["1m", "5m", "15m", "30m", "1h", "4h", "1d"]
    assert list(TIMEFRAMES) == service.timeframes
    breaker = service.breaker
    assert (breaker.failure_threshold, breaker.timeout, breaker.half_open_max_calls) == (5, 60.0, 3)
    assert (breaker.success_threshold, breaker.backoff_factor, breaker.max_timeout) == (
        1,
        1.0,
        600.0,
    )
    assert (breaker.sliding_window_size, breaker.minimum_calls) == (0, 10)
    assert breaker.failure_rate_threshold == 50.0
    assert breaker.slow_call_seconds is None
    assert isinstance(service, ServiceConfig)


def test_default_lists_are_not_shared() -> None:
    assert FeedConfig().symbols is not FeedConfig().symbols
    assert CandleServiceConfig().timeframes is not CandleServiceConfig().timeframes


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n"])
def test_empty_file_means_defaults(tmp_path: Path, text: str) -> None:
    assert load_config(write(tmp_path, text), env={}) == TickvisorConfig()


def test_empty_section_means_defaults() -> None:
    config = parse_config("feed:\nlogging:\n  # level: DEBUG\n", env={})
    assert config.feed == FeedConfig()
    assert config.logging == LoggingConfig()


def test_empty_service_entry_in_a_file_runs_it_with_defaults() -> None:
    config = parse_config("services:\n  candles:\n    # enabled: false\n", env={})
    assert config.services.candles == CandleServiceConfig()


def test_none_in_code_still_means_not_configured() -> None:
    assert ServicesConfig(candles=None).candles is None


def test_models_are_frozen_and_forbid_extra() -> None:
    config = TickvisorConfig()
    with pytest.raises(pydantic.ValidationError):
        config.feed = FeedConfig()
    with pytest.raises(pydantic.ValidationError):
        BreakerConfig(timeout=1, bogus=2)  # type: ignore[call-arg]


def test_level_is_case_insensitive_and_stored_upper() -> None:
    assert parse_config("logging: {level: warning}", env={}).logging.level == "WARNING"
    assert LoggingConfig(level="debug").level == "DEBUG"


def test_database_url_is_not_in_repr() -> None:
    config = DatabaseConfig(url="postgresql://u:hunter2@db/x")
    assert "hunter2" not in repr(config)
    assert "hunter2" not in repr(TickvisorConfig(database=config))


# --------------------------------------------------------------------------- example files


def test_example_file_loads() -> None:
    config = load_config(EXAMPLES / "tickvisor.yaml", env={})
    assert config.database.url == "sqlite:///tickvisor.db"
    assert config.feed.enabled is True
    candles = config.services.candles
    assert candles is not None
    assert candles.symbols_file == (EXAMPLES / "symbols.yaml").resolve()
    assert candles.breaker.timeout == 60.0


def test_example_file_configures_all_three_services() -> None:
    services = load_config(EXAMPLES / "tickvisor.yaml", env={}).services
    assert services.depth is not None and services.depth.levels == 10
    assert services.sentiment is not None and services.sentiment.contrarian_upper == 70


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ("contrarian_upper: 30\n    contrarian_lower: 40", "contrarian_lower (40) must be below"),
        ("bullish_above: 50\n    bearish_below: 50", "bearish_below (50) must be below"),
        ("contrarian_upper: 101", "services.sentiment.contrarian_upper"),
        ("max_age_seconds: 0", "services.sentiment.max_age_seconds"),
    ],
)
def test_sentiment_thresholds_are_checked(keys: str, expected: str) -> None:
    assert expected in errors_of(f"services:\n  sentiment:\n    {keys}\n")


def test_depth_levels_must_be_positive() -> None:
    assert "services.depth.levels" in errors_of("services:\n  depth:\n    levels: 0\n")


def test_example_file_reads_the_environment() -> None:
    env = {"TICKVISOR_DB_URL": "postgresql+psycopg://u@db/market", "CANDLES_BREAKER_TIMEOUT": "90"}
    config = load_config(EXAMPLES / "tickvisor.yaml", env=env)
    assert config.database.url == "postgresql+psycopg://u@db/market"
    assert config.services.candles is not None
    assert config.services.candles.breaker.timeout == 90.0


def test_example_uses_every_key() -> None:
    text = (EXAMPLES / "tickvisor.yaml").read_text(encoding="utf-8")

    def keys(model: type[pydantic.BaseModel]) -> set[str]:
        found = set(model.model_fields)
        for name in ("database", "logging", "supervisor", "feed", "services", "breaker", "backoff"):
            field = model.model_fields.get(name)
            annotation = field.annotation if field else None
            if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
                found |= keys(annotation)
        return found

    every = (
        keys(TickvisorConfig)
        | keys(CandleServiceConfig)
        | keys(DepthServiceConfig)
        | keys(SentimentServiceConfig)
        | {"candles", "depth", "sentiment"}
    )
    missing = {key for key in every if f"{key}:" not in text}
    assert not missing


def test_load_config_uses_os_environ_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TICKVISOR_TEST_LEVEL", "error")
    path = write(tmp_path, "logging:\n  level: ${TICKVISOR_TEST_LEVEL}\n")
    assert load_config(path).logging.level == "ERROR"
    assert os.environ["TICKVISOR_TEST_LEVEL"] == "error"


# --------------------------------------------------------------------------- interpolation


def test_interpolation_set_variable() -> None:
    config = parse_config("database:\n  url: ${DB}\n", env={"DB": "sqlite:///x.db"})
    assert config.database.url == "sqlite:///x.db"


def test_interpolation_inside_a_longer_string() -> None:
    text = "database:\n  url: postgresql://app:${PW}@${HOST:-localhost}/market\n"
    config = parse_config(text, env={"PW": "s3cret"})
    assert config.database.url == "postgresql://app:s3cret@localhost/market"


def test_interpolation_default_used_when_unset_or_empty() -> None:
    text = "logging:\n  level: ${LVL:-debug}\n"
    assert parse_config(text, env={}).logging.level == "DEBUG"
    assert parse_config(text, env={"LVL": ""}).logging.level == "DEBUG"
    assert parse_config(text, env={"LVL": "error"}).logging.level == "ERROR"


def test_interpolated_numbers_and_booleans_still_validate() -> None:
    text = (
        "feed:\n"
        "  enabled: ${FEED_ON:-true}\n"
        "  seed: ${SEED:-7}\n"
        "services:\n"
        "  candles:\n"
        "    breaker:\n"
        "      timeout: ${T:-60}\n"
        "      failure_threshold: ${F}\n"
    )
    config = parse_config(text, env={"F": "3"})
    assert config.feed.enabled is True
    assert config.feed.seed == 7
    assert config.services.candles is not None
    assert config.services.candles.breaker.timeout == 60.0
    assert config.services.candles.breaker.failure_threshold == 3


def test_interpolated_value_that_is_not_a_number() -> None:
    text = "services:\n  candles:\n    breaker:\n      timeout: ${T}\n"
    assert errors_of(text, env={"T": "soon"}) == (
        "tickvisor.yaml: services.candles.breaker.timeout: Input should be a valid number, "
        "unable to parse string as a number (got 'soon')"
    )


def test_unset_variable_names_variable_and_key_path() -> None:
    message = errors_of("database:\n  url: ${TICKVISOR_DB_URL}\n")
    assert message == (
        "tickvisor.yaml: database.url: environment variable TICKVISOR_DB_URL is not set and has "
        "no default; set it or write ${TICKVISOR_DB_URL:-default}"
    )


def test_every_unset_variable_is_reported() -> None:
    text = "logging:\n  level: ${A}\n  format: ${B}\nfeed:\n  symbols:\n    - ${C}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="tickvisor.yaml", env={})
    assert len(info.value.problems) == 3
    assert "feed.symbols.0: environment variable C" in str(info.value)


def test_set_but_empty_variable_without_default_is_empty() -> None:
    message = errors_of("database:\n  url: ${DB}\n", env={"DB": ""})
    assert message == (
        "tickvisor.yaml: database.url: must not be empty; remove the key to use the default "
        "SQLite file"
    )


def test_escape_gives_a_literal_dollar_brace() -> None:
    config = parse_config("database:\n  url: 'sqlite:///$${HOME}/x.db'\n", env={"HOME": "/root"})
    assert config.database.url == "sqlite:///${HOME}/x.db"


def test_lone_dollar_is_literal() -> None:
    config = parse_config("database:\n  url: sqlite:///$x$/$$.db\n", env={})
    assert config.database.url == "sqlite:///$x$/$$.db"


def test_variable_values_are_not_re_expanded() -> None:
    config = parse_config("database:\n  url: ${A}\n", env={"A": "${B}", "B": "no"})
    assert config.database.url == "${B}"


def test_interpolation_cannot_inject_yaml_structure() -> None:
    text = "logging:\n  level: ${LVL}\n"
    message = errors_of(text, env={"LVL": "INFO\nfeed: {enabled: true}"})
    assert message.startswith("tickvisor.yaml: logging.level: must be one of")
    config = parse_config("database:\n  url: ${U}\n", env={"U": "x\nfeed: {enabled: true}"})
    assert config.feed.enabled is False


def test_interpolation_in_nested_lists() -> None:
    text = (
        "feed:\n"
        "  symbols:\n"
        "    - ${FIRST:-eurusd}\n"
        "    - ${SECOND}\n"
        '    - "${THIRD:-gbp_usd}"\n'
        "services:\n"
        "  candles:\n"
        '    timeframes: ["${TF1:-1m}", "${TF2}"]\n'
        "    symbols: [[nested]]\n"
    )
    message = errors_of(text, env={"SECOND": "usd-jpy", "TF2": "1h"})
    # Interpolation succeeded everywhere; only the genuinely bad value is reported.
    assert message == ("tickvisor.yaml: services.candles.symbols.0: Input should be a valid string")
    ok = text.replace("    symbols: [[nested]]\n", "")
    config = parse_config(ok, env={"SECOND": "usd-jpy", "TF2": "1h"})
    assert config.feed.symbols == ["EUR/USD", "USD/JPY", "GBP/USD"]
    assert config.services.candles is not None
    assert config.services.candles.timeframes == ["1m", "1h"]


def test_unset_variable_in_nested_list_has_index_path() -> None:
    text = "services:\n  candles:\n    timeframes:\n      - 1m\n      - ${TF}\n"
    assert errors_of(text) == (
        "tickvisor.yaml: services.candles.timeframes.1: environment variable TF is not set "
        "and has no default; set it or write ${TF:-default}"
    )


@pytest.mark.parametrize("value", ["'${}'", "'${A'", "'${1A}'", "'${A:default}'", "'${A:-${B}}'"])
def test_invalid_interpolation_syntax(value: str) -> None:
    message = errors_of(f"logging:\n  level: {value}\n")
    assert message.startswith("tickvisor.yaml: logging.level: invalid interpolation")
    assert "$${ for a literal ${" in message


def test_keys_are_not_interpolated() -> None:
    assert errors_of("${A}: 1\n", env={"A": "feed"}) == "tickvisor.yaml: ${A}: unknown key"


# --------------------------------------------------------------- unknown keys, types, ranges


def test_unknown_key_path() -> None:
    message = errors_of("services:\n  candles:\n    breker:\n      timeout: 5\n")
    assert (
        message == "tickvisor.yaml: services.candles.breker: unknown key (did you mean 'breaker'?)"
    )


def test_unknown_top_level_key_without_suggestion() -> None:
    assert errors_of("zzz: 1\n") == "tickvisor.yaml: zzz: unknown key"


def test_range_error_names_file_key_path_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, "services:\n  candles:\n    breaker:\n      timeout: -1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == (
        f"{path}: services.candles.breaker.timeout: Input should be greater than 0 (got -1)"
    )


def test_one_line_per_problem() -> None:
    text = (
        "logging:\n  format: text\n  level: loud\n"
        "supervisor:\n  strategy: one_for_some\n  max_restarts: -1\n  within_seconds: 0\n"
        "feed:\n  ticks_per_interval: 0\n  interval_seconds: abc\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="tickvisor.yaml", env={})
    lines = str(info.value).splitlines()
    assert lines == list(info.value.problems)
    assert lines == [
        "tickvisor.yaml: logging.format: Input should be 'json' or 'console' (got 'text')",
        "tickvisor.yaml: logging.level: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL "
        "(got 'loud')",
        "tickvisor.yaml: supervisor.strategy: Input should be 'one_for_one', 'one_for_all' or "
        "'rest_for_one' (got 'one_for_some')",
        "tickvisor.yaml: supervisor.max_restarts: Input should be greater than or equal to 0 "
        "(got -1)",
        "tickvisor.yaml: supervisor.within_seconds: Input should be greater than 0 (got 0)",
        "tickvisor.yaml: feed.interval_seconds: Input should be a valid number, unable to parse "
        "string as a number (got 'abc')",
        "tickvisor.yaml: feed.ticks_per_interval: Input should be greater than or equal to 1 "
        "(got 0)",
    ]


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("failure_threshold", "0", "Input should be greater than or equal to 1 (got 0)"),
        ("half_open_max_calls", "0", "Input should be greater than or equal to 1 (got 0)"),
        ("backoff_factor", "0.5", "Input should be greater than or equal to 1 (got 0.5)"),
        ("sliding_window_size", "-1", "Input should be greater than or equal to 0 (got -1)"),
        ("minimum_calls", "0", "Input should be greater than or equal to 1 (got 0)"),
        ("failure_rate_threshold", "0", "Input should be greater than 0 (got 0)"),
        ("failure_rate_threshold", "101", "Input should be less than or equal to 100 (got 101)"),
        ("slow_call_seconds", "0", "Input should be greater than 0 (got 0)"),
        ("timeout", ".inf", "Input should be a finite number (got inf)"),
        ("failure_threshold", "2.5", "got a number with a fractional part (got 2.5)"),
        ("failure_threshold", "true", "expected a number, got a boolean (true)"),
        ("timeout", "[1]", "Input should be a valid number"),
    ],
)
def test_breaker_ranges(key: str, value: str, expected: str) -> None:
    message = errors_of(f"services:\n  candles:\n    breaker:\n      {key}: {value}\n")
    assert message.startswith(f"tickvisor.yaml: services.candles.breaker.{key}: ")
    assert expected in message
    assert len(message.splitlines()) == 1


def test_breaker_edges_are_accepted() -> None:
    breaker = BreakerConfig(
        failure_rate_threshold=100, sliding_window_size=0, max_timeout=60, backoff_factor=1
    )
    assert breaker.max_timeout == breaker.timeout


def test_service_ranges() -> None:
    text = "services:\n  candles:\n    interval_seconds: 0\n    symbol_cache_ttl: -1\n"
    assert errors_of(text).splitlines() == [
        "tickvisor.yaml: services.candles.interval_seconds: Input should be greater than 0 (got 0)",
        "tickvisor.yaml: services.candles.symbol_cache_ttl: Input should be greater than or "
        "equal to 0 (got -1)",
    ]
    assert parse_config("services: {candles: {symbol_cache_ttl: 0}}", env={}).services.candles


def test_section_of_the_wrong_type() -> None:
    assert (
        errors_of("feed: [1, 2]\n")
        == "tickvisor.yaml: feed: expected a mapping of keys, got a list"
    )
    assert errors_of("services:\n  candles: 5\n") == (
        "tickvisor.yaml: services.candles: expected a mapping of keys, got a number"
    )


def test_top_level_must_be_a_mapping() -> None:
    assert errors_of("- feed\n") == (
        "tickvisor.yaml: the top level must be a mapping of sections such as 'feed:' and "
        "'services:', got a list"
    )
    assert "got a string" in errors_of("just text\n")


def test_timeframes_validation() -> None:
    base = "services:\n  candles:\n    timeframes: "
    assert errors_of(base + "[1m, 2m]\n") == (
        "tickvisor.yaml: services.candles.timeframes.1: Input should be '1m', '5m', '15m', "
        "'30m', '1h', '4h' or '1d' (got '2m')"
    )
    assert errors_of(base + "[]\n") == (
        "tickvisor.yaml: services.candles.timeframes: must not be empty"
    )
    assert errors_of(base + "[1h, 5m, 1h]\n") == (
        "tickvisor.yaml: services.candles.timeframes: 1h is listed twice (items 0 and 2); "
        "list it once"
    )


# --------------------------------------------------------------------------- secrets


def test_database_url_value_is_never_shown() -> None:
    message = errors_of("database:\n  url: [postgresql://u:hunter2@db/x]\n")
    assert message == "tickvisor.yaml: database.url: Input should be a valid string"
    message = errors_of("database:\n  url: 'postgresql://u:hunter2@db/${X'\n")
    assert "hunter2" not in message
    assert message.startswith("tickvisor.yaml: database.url: invalid interpolation")


def test_unknown_key_next_to_a_secret_does_not_show_it() -> None:
    message = errors_of("database:\n  url: postgresql://u:hunter2@db/x\n  url2: x\n")
    assert "hunter2" not in message
    assert message == "tickvisor.yaml: database.url2: unknown key (did you mean 'url'?)"


def test_yaml_error_does_not_quote_the_line() -> None:
    message = errors_of("database:\n  url: postgresql://u:hunter2@db/x: oops\n")
    assert "hunter2" not in message
    assert message.startswith("tickvisor.yaml:2:")


def test_config_error_has_no_chained_cause() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("database:\n  url: [hunter2]\n", env={})
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__ is True


# --------------------------------------------------------------------------- YAML syntax


def test_yaml_syntax_error_gives_file_line_column(tmp_path: Path) -> None:
    path = write(tmp_path, "feed:\n  enabled: true\n  symbols: [EUR/USD\nservices: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert message.startswith(f"{path}:4:")
    assert "invalid YAML" in message
    assert len(message.splitlines()) == 1


def test_yaml_mapping_error_position() -> None:
    assert errors_of("feed:\n  enabled: true: false\n") == (
        "tickvisor.yaml:2:16: invalid YAML: mapping values are not allowed here"
    )


def test_tab_indentation_error() -> None:
    assert errors_of("feed:\n\tenabled: true\n").startswith("tickvisor.yaml:2:1: invalid YAML")


def test_duplicate_keys_are_rejected() -> None:
    assert errors_of("feed:\n  enabled: true\nlogging: {}\nfeed: {}\n") == (
        "tickvisor.yaml:4:1: invalid YAML: duplicate key 'feed' (first given on line 1)"
    )


def test_non_string_keys_are_rejected() -> None:
    assert errors_of("services:\n  on: {}\n") == (
        "tickvisor.yaml:2:3: invalid YAML: keys must be strings, got 'on'; quote the key if it "
        "is meant as text"
    )
    assert errors_of("1: x\n").startswith("tickvisor.yaml:1:1: invalid YAML: keys must be strings")


def test_merge_keys_still_work() -> None:
    text = (
        "x_breaker: &breaker {timeout: 30, max_timeout: 60}\n"
        "services:\n  candles:\n    breaker:\n      <<: *breaker\n      timeout: 45\n"
    )
    # Anchors need a home; an unknown top-level key is still an error ...
    assert errors_of(text) == "tickvisor.yaml: x_breaker: unknown key"
    # ... but merge keys inside a section work, with local keys winning.
    text = (
        "services:\n  candles:\n    breaker: &breaker\n      timeout: 30\n      max_timeout: 60\n"
    )
    config = parse_config(text, env={})
    assert config.services.candles is not None
    assert config.services.candles.breaker.max_timeout == 60


def test_multiple_documents_are_rejected() -> None:
    assert "invalid YAML" in errors_of("feed: {}\n---\nlogging: {}\n")


def test_self_referencing_alias() -> None:
    assert errors_of("feed: &f\n  symbols: [*f]\n") == (
        "tickvisor.yaml: feed.symbols.0: a YAML alias refers to itself"
    )


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: config file not found"


def test_config_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "tickvisor.yaml"
    path.write_bytes(b"feed:\n  enabled: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_source_is_shown_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "feed:\n  seed: x\n")
    with pytest.raises(ConfigError) as info:
        load_config("tickvisor.yaml", env={})
    assert str(info.value).startswith("tickvisor.yaml: feed.seed: ")


def test_config_error_is_a_value_error() -> None:
    error = ConfigError("a: b", "c: d")
    assert isinstance(error, ValueError)
    assert str(error) == "a: b\nc: d"
    assert error.problems == ("a: b", "c: d")


# --------------------------------------------------------------------------- symbols


def test_symbols_are_normalised() -> None:
    text = "feed:\n  symbols: [eurusd, usd_jpy, ' gbp-usd ', XAU/USD]\n"
    assert parse_config(text, env={}).feed.symbols == ["EUR/USD", "USD/JPY", "GBP/USD", "XAU/USD"]
    config = parse_config("services:\n  candles:\n    symbols: [eur-usd]\n", env={})
    assert config.services.candles is not None
    assert config.services.candles.symbols == ["EUR/USD"]


def test_bad_symbol_has_index_path() -> None:
    assert errors_of("feed:\n  symbols: [EUR/USD, USD/JPY, EURUSDX]\n").startswith(
        "tickvisor.yaml: feed.symbols.2: invalid symbol 'EURUSDX': expected"
    )


def test_duplicate_symbols_after_normalisation_are_rejected() -> None:
    assert errors_of("feed:\n  symbols: [EURUSD, eur/usd]\n") == (
        "tickvisor.yaml: feed.symbols: EUR/USD is listed twice (items 0 and 1); list it once"
    )
    assert "listed twice" in errors_of("services:\n  candles:\n    symbols: [EURUSD, EUR_USD]\n")


def test_empty_symbol_lists_are_rejected() -> None:
    assert errors_of("feed:\n  symbols: []\n") == "tickvisor.yaml: feed.symbols: must not be empty"
    assert errors_of("services:\n  candles:\n    symbols: []\n") == (
        "tickvisor.yaml: services.candles.symbols: must not be empty; remove the key to let "
        "the service discover symbols from its data"
    )


def test_neither_symbols_nor_file_is_allowed() -> None:
    config = parse_config("services:\n  candles:\n    enabled: true\n", env={})
    assert config.services.candles is not None
    assert config.services.candles.symbols is None
    assert config.services.candles.symbols_file is None


def test_symbols_and_symbols_file_are_exclusive(tmp_path: Path) -> None:
    write(tmp_path, "[EUR/USD]\n", name="symbols.yaml")
    path = write(
        tmp_path, "services:\n  candles:\n    symbols: [EUR/USD]\n    symbols_file: symbols.yaml\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == (
        f"{path}: services.candles.symbols_file: cannot be combined with symbols; list the "
        "symbols inline or in a file, not both"
    )


def test_relative_symbols_file_is_resolved_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_path / "etc" / "tickvisor"
    (config_dir / "lists").mkdir(parents=True)
    write(config_dir / "lists", "- eurusd\n- usdjpy\n", name="fx.yaml")
    path = write(config_dir, "services:\n  candles:\n    symbols_file: lists/fx.yaml\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(path, env={})
    assert config.services.candles is not None
    assert config.services.candles.symbols_file == (config_dir / "lists" / "fx.yaml").resolve()
    assert config.services.candles.symbols_file.is_absolute()
    # Relative config path too: its folder is still the anchor.
    monkeypatch.chdir(tmp_path)
    relative = load_config(Path("etc/tickvisor/tickvisor.yaml"), env={})
    assert relative.services.candles == config.services.candles


def test_parse_config_resolves_against_base_dir(tmp_path: Path) -> None:
    write(tmp_path, "[EURUSD]\n", name="s.yaml")
    text = "services:\n  candles:\n    symbols_file: ${DIR:-.}/s.yaml\n"
    config = parse_config(text, base_dir=tmp_path, env={})
    assert config.services.candles is not None
    assert config.services.candles.symbols_file == (tmp_path / "s.yaml").resolve()


def test_absolute_symbols_file(tmp_path: Path) -> None:
    symbols = write(tmp_path, "[EURUSD]\n", name="s.yaml")
    config = parse_config(
        f"services:\n  candles:\n    symbols_file: '{symbols}'\n",
        base_dir=Path("/nonexistent"),
        env={},
    )
    assert config.services.candles is not None
    assert config.services.candles.symbols_file == symbols.resolve()


def test_missing_symbols_file(tmp_path: Path) -> None:
    path = write(tmp_path, "services:\n  candles:\n    symbols_file: nope.yaml\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == (
        f"{path}: services.candles.symbols_file: {(tmp_path / 'nope.yaml').resolve()}: "
        "symbols file not found"
    )


def test_invalid_symbols_file_is_reported_at_load_time(tmp_path: Path) -> None:
    write(tmp_path, "- EUR/USD\n- EURUSDX\n", name="symbols.yaml")
    path = write(tmp_path, "services:\n  candles:\n    symbols_file: symbols.yaml\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert message.startswith(f"{path}: services.candles.symbols_file: ")
    assert "symbols.yaml:2:3: item 1: invalid symbol 'EURUSDX'" in message


# --------------------------------------------------------------------------- cross-field rules


def test_success_threshold_above_half_open_max_calls_is_rejected() -> None:
    text = (
        "services:\n  candles:\n    breaker:\n"
        "      half_open_max_calls: 3\n      success_threshold: 4\n"
    )
    assert errors_of(text) == (
        "tickvisor.yaml: services.candles.breaker.success_threshold: must be at most "
        "half_open_max_calls (3), otherwise the breaker can never close again (got 4)"
    )
    assert BreakerConfig(half_open_max_calls=3, success_threshold=3).success_threshold == 3


def test_max_timeout_below_timeout_is_rejected() -> None:
    text = "services:\n  candles:\n    breaker:\n      timeout: 120\n      max_timeout: 60\n"
    assert errors_of(text) == (
        "tickvisor.yaml: services.candles.breaker.max_timeout: must be at least timeout (120), "
        "since it caps the backed-off open period (got 60); raise max_timeout as well"
    )


def test_timeout_above_the_default_max_timeout_is_reported_on_max_timeout() -> None:
    text = "services:\n  candles:\n    breaker:\n      timeout: 900\n"
    assert errors_of(text).startswith(
        "tickvisor.yaml: services.candles.breaker.max_timeout: must be at least timeout (900)"
    )
