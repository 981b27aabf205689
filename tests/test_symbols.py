"""Symbol normalisation and symbols files."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tickvisor.symbols import SymbolError, load_symbols_file, normalize_symbol

# --------------------------------------------------------------------------- normalize_symbol


@pytest.mark.parametrize(
    "raw",
    ["EURUSD", "eurusd", "eur/usd", "EUR-USD", "EUR_USD", " EUR/USD ", "\tEur/Usd\n", "EUR/USD"],
)
def test_fx_spellings_normalise_to_base_slash_quote(raw: str) -> None:
    assert normalize_symbol(raw) == "EUR/USD"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("XAU/USD", "XAU/USD"),
        ("btc/usdt", "BTC/USDT"),
        ("BTC-USDT", "BTC/USDT"),
        ("US30/USD", "US30/USD"),
        ("ab/cd", "AB/CD"),
        ("ABCDEF/GHIJKL", "ABCDEF/GHIJKL"),
    ],
)
def test_separated_pairs_of_two_to_six_alphanumerics(raw: str, expected: str) -> None:
    assert normalize_symbol(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "EURUS",  # five letters
        "EURUSDX",  # seven letters: split point would be a guess
        "BTCUSDT",
        "EUR1SD",  # digits need a separator
        "EUR/USD/JPY",
        "EUR//USD",
        "E/USD",  # one-character code
        "ABCDEFG/USD",  # seven-character code
        "EUR USD",
        "EUR/ USD",
        "EUR.USD",
        "ÉUR/USD",  # non-ASCII letter
        "EUR/US$",
    ],
)
def test_rejects_bad_symbols_naming_the_value(raw: str) -> None:
    with pytest.raises(SymbolError) as info:
        normalize_symbol(raw)
    assert repr(raw) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_rejects_non_string() -> None:
    with pytest.raises(SymbolError, match="expected a string"):
        normalize_symbol(123)  # type: ignore[arg-type]


def test_long_bad_value_is_truncated_in_the_message() -> None:
    with pytest.raises(SymbolError) as info:
        normalize_symbol("X" * 500)
    assert len(str(info.value)) < 300


_CODE = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", min_size=3, max_size=3
)


@given(
    base=_CODE,
    quote=_CODE,
    separator=st.sampled_from(["", "/", "-", "_"]),
    upper=st.booleans(),
    padding=st.sampled_from(["", " ", "\t", "  "]),
)
def test_property_variants_of_one_pair_normalise_alike(
    base: str, quote: str, separator: str, upper: bool, padding: str
) -> None:
    spelled = f"{base}{separator}{quote}"
    spelled = spelled.upper() if upper else spelled.lower()
    result = normalize_symbol(f"{padding}{spelled}{padding}")
    assert result == f"{base.upper()}/{quote.upper()}"


@given(
    st.one_of(
        st.text(max_size=15),
        st.from_regex(r"[A-Za-z0-9]{2,6}[/_-][A-Za-z0-9]{2,6}", fullmatch=True),
        st.from_regex(r"\s*[A-Za-z]{6}\s*", fullmatch=True),
    )
)
def test_property_normalisation_is_idempotent(raw: str) -> None:
    try:
        once = normalize_symbol(raw)
    except SymbolError:
        return
    assert normalize_symbol(once) == once
    assert once == once.upper()
    assert once.count("/") == 1


# --------------------------------------------------------------------------- load_symbols_file


def _write(tmp_path: Path, text: str, name: str = "symbols.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_loads_normalises_and_dedupes_in_order(tmp_path: Path) -> None:
    path = _write(tmp_path, "- usdjpy\n- EUR/USD\n- usd_jpy\n- gbp-usd\n- EURUSD\n")
    assert load_symbols_file(path) == ["USD/JPY", "EUR/USD", "GBP/USD"]


def test_flow_list(tmp_path: Path) -> None:
    path = _write(tmp_path, '["EUR/USD", "USD/JPY"]\n')
    assert load_symbols_file(path) == ["EUR/USD", "USD/JPY"]


def test_empty_list_is_allowed(tmp_path: Path) -> None:
    assert load_symbols_file(_write(tmp_path, "[]\n")) == []


def test_the_example_symbols_file_loads() -> None:
    path = Path(__file__).resolve().parents[1] / "examples" / "symbols.yaml"
    symbols = load_symbols_file(path)
    assert symbols[:3] == ["EUR/USD", "USD/JPY", "GBP/USD"]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SymbolError) as info:
        load_symbols_file(path)
    assert str(info.value) == f"{path}: symbols file not found"


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(SymbolError, match="is a directory"):
        load_symbols_file(tmp_path)


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path, "- EUR/USD\n- [USD/JPY\n- GBP/USD\n")
    with pytest.raises(SymbolError) as info:
        load_symbols_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}:")
    assert "invalid YAML" in message
    line = int(message.removeprefix(f"{path}:").split(":")[0])
    assert line >= 2


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "# nothing yet\n")
    with pytest.raises(SymbolError, match="the file is empty") as info:
        load_symbols_file(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "kind"),
    [("EUR/USD\n", "a string"), ("symbols: [EUR/USD]\n", "a mapping"), ("42\n", "a number")],
)
def test_not_a_list(tmp_path: Path, text: str, kind: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SymbolError) as info:
        load_symbols_file(path)
    assert str(info.value).startswith(f"{path}: expected a YAML list")
    assert f"got {kind}" in str(info.value)


def test_element_not_a_string_names_index_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "- EUR/USD\n- [USD, JPY]\n")
    with pytest.raises(SymbolError) as info:
        load_symbols_file(path)
    assert str(info.value) == f"{path}:2:3: item 1: expected a symbol string, got a list"


def test_bad_symbol_names_index_line_and_value(tmp_path: Path) -> None:
    path = _write(tmp_path, "- EUR/USD\n- USD/JPY\n- EURUSDX\n")
    with pytest.raises(SymbolError) as info:
        load_symbols_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3:3: item 2: invalid symbol 'EURUSDX'")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "symbols.yaml"
    path.write_bytes(b"- EUR/USD\n- \xff\xfe\n")
    with pytest.raises(SymbolError, match="not UTF-8"):
        load_symbols_file(path)


def test_accepts_a_str_path(tmp_path: Path) -> None:
    path = _write(tmp_path, "- EURUSD\n")
    assert load_symbols_file(str(path)) == ["EUR/USD"]  # type: ignore[arg-type]
