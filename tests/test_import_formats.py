"""Parsing the tick formats from files the tests write: exact UTC ms, prices, volumes, symbols.

These tests stop short of the database: they open a file the way the import
does and parse its batches, so each one checks the parser alone and runs in
milliseconds. tests/test_import.py covers the same files end to end.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from tickvisor.ingest import ImportArgumentError, TickFileError, open_tick_file
from tickvisor.ingest.reader import read_batches
from tickvisor.ingest.validate import REASON, Problem, check, quarantine_records
from tickvisor.ingest.writer import TickRows, copy_payload

Tick = tuple[str, int, float, float, float | None, float | None]


def utc_ms(text: str) -> int:
    """``2024-01-02T22:00:00.123`` (UTC) in epoch milliseconds."""
    return round(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def parse(
    path: Path, fmt: str, symbol: str | None = None, batch_size: int = 100_000
) -> tuple[list[Tick], dict[int, tuple[str, str]]]:
    """The good ticks (symbol, ts_ms, bid, ask, price, volume) and {line: (reason, detail)}."""
    ticks: list[Tick] = []
    rejected: dict[int, tuple[str, str]] = {}
    with open_tick_file(path, fmt, symbol) as tick_file:
        for lines in tick_file.batches(batch_size):
            batch = tick_file.layout.parse(lines)
            check(batch)
            rows = TickRows.from_batch(batch)
            for i in range(len(rows)):
                price, volume = float(rows.price[i]), float(rows.volume[i])
                ticks.append(
                    (
                        rows.symbols[int(rows.symbol_code[i])],
                        int(rows.ts_ms[i]),
                        float(rows.bid[i]),
                        float(rows.ask[i]),
                        None if math.isnan(price) else price,
                        None if math.isnan(volume) else volume,
                    )
                )
            for record in quarantine_records(batch, "test", 0):
                rejected[record["line"]] = (record["reason"], record["detail"])
    return ticks, rejected


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


# --- histdata -----------------------------------------------------------------------


def test_histdata_converts_est_to_utc_and_takes_the_symbol_from_the_file_name(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path / "DAT_ASCII_EURUSD_T_202401.csv",
        "20240102 170000123,1.10375,1.10393,0\n"
        # 20:00 EST is already the next day in UTC.
        "20240102 200000007,1.10376,1.10394,0\n"
        "20240630 235959999,1.07000,1.07010,3\n",
    )
    ticks, rejected = parse(path, "histdata")
    assert rejected == {}
    assert ticks == [
        ("EUR/USD", utc_ms("2024-01-02T22:00:00.123"), 1.10375, 1.10393, None, 0.0),
        ("EUR/USD", utc_ms("2024-01-03T01:00:00.007"), 1.10376, 1.10394, None, 0.0),
        # Fixed EST all year: no daylight saving in June either.
        ("EUR/USD", utc_ms("2024-07-01T04:59:59.999"), 1.07, 1.0701, None, 3.0),
    ]


def test_histdata_symbol_option_wins_and_is_required_without_a_telling_name(
    tmp_path: Path,
) -> None:
    named = write(tmp_path / "DAT_ASCII_EURUSD_T_202401.csv", "20240102 170000123,1.1,1.2,0\n")
    ticks, _ = parse(named, "histdata", symbol="gbp-usd")
    assert ticks[0][0] == "GBP/USD"

    anonymous = write(tmp_path / "ticks.csv", "20240102 170000123,1.1,1.2,0\n")
    with pytest.raises(ImportArgumentError, match="--symbol is required"):
        open_tick_file(anonymous, "histdata")
    assert parse(anonymous, "histdata", symbol="USDJPY")[0][0][0] == "USD/JPY"


def test_histdata_stamp_of_the_wrong_width_is_rejected_not_misread(tmp_path: Path) -> None:
    path = write(
        tmp_path / "DAT_ASCII_EURUSD_T_202401.csv",
        "20240102 170000123,1.1,1.2,0\n20240102 17000012,1.1,1.2,0\n",
    )
    ticks, rejected = parse(path, "histdata")
    assert len(ticks) == 1
    assert rejected[2][0] == "unparseable"
    assert "YYYYMMDD HHMMSSNNN" in rejected[2][1]


# --- truefx -------------------------------------------------------------------------


def test_truefx_reads_utc_and_the_symbol_of_every_row(tmp_path: Path) -> None:
    path = write(
        tmp_path / "EURUSD-2024-01.csv",
        "EUR/USD,20240102 00:00:00.123,1.10375,1.10393\n"
        "USDJPY,20240102 00:00:00.124,141.123,141.131\n"
        "eur-usd,20240102 23:59:59.999,1.1,1.1\n",
    )
    ticks, rejected = parse(path, "truefx")
    assert rejected == {}
    assert ticks == [
        ("EUR/USD", utc_ms("2024-01-02T00:00:00.123"), 1.10375, 1.10393, None, None),
        ("USD/JPY", utc_ms("2024-01-02T00:00:00.124"), 141.123, 141.131, None, None),
        ("EUR/USD", utc_ms("2024-01-02T23:59:59.999"), 1.1, 1.1, None, None),
    ]


def test_truefx_refuses_a_symbol_option_and_quarantines_bad_symbols(tmp_path: Path) -> None:
    path = write(
        tmp_path / "t.csv",
        "EUR/USD,20240102 00:00:00.123,1.1,1.2\nEURO,20240102 00:00:00.124,1.1,1.2\n",
    )
    with pytest.raises(ImportArgumentError, match="every row names its symbol"):
        open_tick_file(path, "truefx", "EURUSD")
    ticks, rejected = parse(path, "truefx")
    assert len(ticks) == 1
    assert rejected[2][0] == "bad_symbol"
    assert "'EURO'" in rejected[2][1]


# --- dukascopy ----------------------------------------------------------------------


def test_dukascopy_gmt_time_reads_ask_before_bid_and_sums_the_volumes(tmp_path: Path) -> None:
    path = write(
        tmp_path / "EURUSD_Ticks.csv",
        "Gmt time,Ask,Bid,AskVolume,BidVolume\n"
        "02.01.2024 00:00:00.123,1.10393,1.10375,1.5,2.25\n"
        "31.12.2024 23:59:59.999,1.2,1.1,0,0.75\n",
    )
    ticks, rejected = parse(path, "dukascopy", symbol="EURUSD")
    assert rejected == {}
    assert ticks == [
        ("EUR/USD", utc_ms("2024-01-02T00:00:00.123"), 1.10375, 1.10393, None, 3.75),
        ("EUR/USD", utc_ms("2024-12-31T23:59:59.999"), 1.1, 1.2, None, 0.75),
    ]


def test_dukascopy_local_time_applies_each_stamps_own_offset(tmp_path: Path) -> None:
    path = write(
        tmp_path / "EURUSD_Ticks_local.csv",
        "Local time,Ask,Bid,AskVolume,BidVolume\r\n"
        "02.01.2024 00:00:00.123 GMT+0200,1.2,1.1,1,1\r\n"
        # A daylight-saving change inside one file: the offset changes per stamp.
        "31.03.2024 03:00:00.000 GMT+0300,1.2,1.1,1,1\r\n"
        "02.01.2024 00:00:00.123 GMT-0500,1.2,1.1,1,1\r\n",
    )
    ticks, rejected = parse(path, "dukascopy", symbol="EURUSD")
    assert rejected == {}
    assert [t[1] for t in ticks] == [
        utc_ms("2024-01-01T22:00:00.123"),
        utc_ms("2024-03-31T00:00:00.000"),
        utc_ms("2024-01-02T05:00:00.123"),
    ]


def test_dukascopy_needs_its_header_and_a_symbol(tmp_path: Path) -> None:
    wrong = write(tmp_path / "wrong.csv", "Time,Bid,Ask,Volume\n02.01.2024 00:00:00.123,1,1,1\n")
    with pytest.raises(TickFileError) as caught:
        open_tick_file(wrong, "dukascopy", "EURUSD")
    assert "wrong.csv: line 1" in str(caught.value)
    assert "Gmt time,Ask,Bid,AskVolume,BidVolume" in str(caught.value)

    right = write(tmp_path / "right.csv", "Gmt time,Ask,Bid,AskVolume,BidVolume\n")
    with pytest.raises(ImportArgumentError, match="--symbol is required"):
        open_tick_file(right, "dukascopy")


# --- csv ----------------------------------------------------------------------------


def test_csv_iso_stamps_with_any_offset_in_any_column_order(tmp_path: Path) -> None:
    path = write(
        tmp_path / "ticks.csv",
        "symbol,ask,ts,bid\n"
        "EURUSD,1.2,2024-01-02T00:00:00.123Z,1.1\n"
        "EURUSD,1.2,2024-01-02T01:00:00.124+01:00,1.1\n"
        "EURUSD,1.2,2024-01-02 05:30:00.125+0530,1.1\n"
        # Finer digits than milliseconds are floored, never rounded up.
        "USDJPY,150.2,2024-01-02T00:00:00.126999Z,150.1\n",
    )
    ticks, rejected = parse(path, "csv")
    assert rejected == {}
    assert ticks == [
        ("EUR/USD", utc_ms("2024-01-02T00:00:00.123"), 1.1, 1.2, None, None),
        ("EUR/USD", utc_ms("2024-01-02T00:00:00.124"), 1.1, 1.2, None, None),
        ("EUR/USD", utc_ms("2024-01-02T00:00:00.125"), 1.1, 1.2, None, None),
        ("USD/JPY", utc_ms("2024-01-02T00:00:00.126"), 150.1, 150.2, None, None),
    ]


def test_csv_one_offset_throughout_takes_the_same_road(tmp_path: Path) -> None:
    path = write(
        tmp_path / "ticks.csv",
        "ts,bid,ask\n2024-01-02T01:00:00.000+01:00,1.1,1.2\n2024-01-02T01:00:00.001+01:00,1.1,1.2\n",
    )
    ticks, _ = parse(path, "csv", symbol="EURUSD")
    assert [t[1] for t in ticks] == [
        utc_ms("2024-01-02T00:00:00.000"),
        utc_ms("2024-01-02T00:00:00.001"),
    ]


def test_csv_epoch_milliseconds_with_optional_price_and_volume(tmp_path: Path) -> None:
    path = write(
        tmp_path / "ticks.csv",
        "ts,bid,ask,price,volume\n"
        "1704153600123,1.1,1.2,1.15,10\n"
        "1704153600124,1.1,1.2,,\n"
        "1704153600125,1.1,1.2,1.16,\n",
    )
    ticks, rejected = parse(path, "csv", symbol="eur/usd")
    assert rejected == {}
    assert ticks == [
        ("EUR/USD", 1704153600123, 1.1, 1.2, 1.15, 10.0),
        ("EUR/USD", 1704153600124, 1.1, 1.2, None, None),
        ("EUR/USD", 1704153600125, 1.1, 1.2, 1.16, None),
    ]


def test_csv_without_offset_is_quarantined_not_guessed(tmp_path: Path) -> None:
    path = write(
        tmp_path / "ticks.csv",
        "ts,bid,ask\n"
        "2024-01-02T00:00:00.123Z,1.1,1.2\n"
        "2024-01-02T00:00:00.124,1.1,1.2\n"
        "2024-01-02,1.1,1.2\n"
        "1704153600123,1.1,1.2\n",
    )
    ticks, rejected = parse(path, "csv", symbol="EURUSD")
    assert len(ticks) == 1
    assert rejected[3] == (
        "unparseable",
        "ts '2024-01-02T00:00:00.124' has no UTC offset (end it with Z or +hh:mm)",
    )
    assert rejected[4][0] == "unparseable"
    # The first row made this an ISO file: an epoch number is not a stamp here.
    assert rejected[5][0] == "unparseable"


def test_csv_symbol_column_and_symbol_option_exclude_each_other(tmp_path: Path) -> None:
    with_column = write(tmp_path / "a.csv", "ts,bid,ask,symbol\n1704153600123,1.1,1.2,EURUSD\n")
    with pytest.raises(ImportArgumentError, match="has a symbol column"):
        open_tick_file(with_column, "csv", "EURUSD")
    without = write(tmp_path / "b.csv", "ts,bid,ask\n1704153600123,1.1,1.2\n")
    with pytest.raises(ImportArgumentError, match="no symbol column"):
        open_tick_file(without, "csv")


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("ts,bid,ask,spread", "unknown column(s) 'spread'"),
        ("time,bid,ask", "lacks required column(s) ts"),
        ("ts,bid,bid,ask", "bid named twice"),
        ("", "no header line"),
    ],
)
def test_csv_header_problems_name_the_file_and_the_columns(
    tmp_path: Path, header: str, message: str
) -> None:
    path = write(tmp_path / "bad.csv", header + ("\n" if header else ""))
    with pytest.raises(TickFileError) as caught:
        open_tick_file(path, "csv", "EURUSD")
    assert str(caught.value).startswith(f"{path}: line 1: ")
    assert message in str(caught.value)


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(TickFileError, match=r"missing\.csv: no such file"):
        open_tick_file(tmp_path / "missing.csv", "csv")
    with pytest.raises(TickFileError, match="is a directory"):
        open_tick_file(tmp_path, "truefx")
    with pytest.raises(ImportArgumentError, match="unknown format 'metastock'"):
        open_tick_file(tmp_path / "x.csv", "metastock")


# --- lines, batches, both parsing roads --------------------------------------------------


def test_bom_crlf_blank_lines_and_no_final_newline_keep_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "ticks.csv"
    path.write_bytes(
        b"\xef\xbb\xbfts,bid,ask\r\n"
        b"1704153600123,1.1,1.2\r\n"
        b"\r\n"
        b"1704153600124,1.1\r\n"
        b"\n"
        b"1704153600125,1.3,1.2"
    )
    for batch_size in (1, 2, 100):
        ticks, rejected = parse(path, "csv", symbol="EURUSD", batch_size=batch_size)
        assert [t[1] for t in ticks] == [1704153600123]
        assert rejected == {
            4: ("unparseable", "expected 3 comma-separated fields (ts,bid,ask), found 2"),
            6: ("ask_below_bid", "ask '1.2' is below bid '1.3'"),
        }


def test_batches_count_every_byte_and_line(tmp_path: Path) -> None:
    data = b"".join(b"%d,x\n" % i for i in range(1000)) + b"tail"
    path = tmp_path / "lines.txt"
    path.write_bytes(data)
    with path.open("rb") as stream:
        batches = list(read_batches(stream, 7, first_line=1))
    assert sum(b.bytes_read for b in batches) == len(data)
    assert [len(b) for b in batches] == [7] * 143
    assert batches[-1].text(len(batches[-1]) - 1) == "tail"
    assert batches[-1].line_numbers()[-1] == 1001


def test_the_text_road_gives_the_same_values_as_the_fast_road(tmp_path: Path) -> None:
    """A batch with one bad number is re-read as text; its good lines must not change."""
    good = [
        "1704153600123,1.10375,1.10393,0.1",
        "1704153600124, 1.5 ,+2.5,1e3",
        "1704153600125,.5,5.,1E-3",
        "1704153600126,0.30000000000000004,1.7976931348623157e308,123456789012",
    ]
    clean = write(tmp_path / "clean.csv", "ts,bid,ask,volume\n" + "\n".join(good) + "\n")
    dirty = write(
        tmp_path / "dirty.csv",
        "ts,bid,ask,volume\n" + "\n".join([*good, "1704153600127,abc,1,1"]) + "\n",
    )
    fast, none = parse(clean, "csv", symbol="EURUSD")
    text, one = parse(dirty, "csv", symbol="EURUSD")
    assert none == {}
    assert one == {6: ("unparseable", "bid 'abc' is not a number")}
    assert fast == text
    assert fast[3][2:4] == (0.30000000000000004, 1.7976931348623157e308)


def test_every_problem_has_its_reason(tmp_path: Path) -> None:
    path = write(
        tmp_path / "ticks.csv",
        "ts,bid,ask,price,volume\n"
        "1704153600000,1.1,1.2,,\n"  # 2 good
        "1704153600001,1.1,1.2,1.15,5,9\n"  # 3 too many fields
        "1704153600002,,1.2,,\n"  # 4 empty required field
        "1704153600003,1.1,x,,\n"  # 5 not a number
        "2024-01-02,1.1,1.2,,\n"  # 6 not epoch ms
        "-1,1.1,1.2,,\n"  # 7 before 1970
        "4102444800000,1.1,1.2,,\n"  # 8 2100-01-01: first instant out of range
        "1704153600008,inf,1.2,,\n"  # 9 infinite bid
        "1704153600009,1.1,1.2,NaN,\n"  # 10 a written-out NaN price
        "1704153600010,0,1.2,,\n"  # 11 zero bid
        "1704153600011,1.1,1.2,-1,\n"  # 12 negative price
        "1704153600012,1.3,1.2,,\n"  # 13 ask below bid
        "1704153600013,1.1,1.2,,-1\n"  # 14 negative volume
        "1704153600014,1.1,1.2,,nan\n"  # 15 NaN volume
        "4102444799999,1.1,1.2,,\n",  # 16 last good instant
    )
    ticks, rejected = parse(path, "csv", symbol="EURUSD")
    assert [t[1] for t in ticks] == [1704153600000, 4102444799999]
    assert {line: reason for line, (reason, _) in rejected.items()} == {
        3: "unparseable",
        4: "unparseable",
        5: "unparseable",
        6: "unparseable",
        7: "timestamp_out_of_range",
        8: "timestamp_out_of_range",
        9: "non_finite_price",
        10: "non_finite_price",
        11: "non_positive_price",
        12: "non_positive_price",
        13: "ask_below_bid",
        14: "bad_volume",
        15: "bad_volume",
    }
    assert rejected[4][1] == "bid is empty"
    assert rejected[8][1].startswith("ts '4102444800000' is 2100-01-01T00:00:00.000+00:00")


def test_every_problem_code_maps_to_a_reason() -> None:
    assert set(REASON) == set(Problem) - {Problem.OK, Problem.BLANK}


def test_copy_payload_is_the_postgresql_binary_format() -> None:
    rows = TickRows(
        symbols=["EUR/USD"],
        symbol_code=np.array([0], dtype=np.int64),
        line=np.array([2], dtype=np.int64),
        ts_ms=np.array([1704153600123], dtype=np.int64),
        bid=np.array([1.1]),
        ask=np.array([1.2]),
        price=np.array([np.nan]),
        volume=np.array([3.0]),
        tick_key=np.array([-5], dtype=np.int64),
    )
    payload = copy_payload(rows)
    assert payload.startswith(b"PGCOPY\n\xff\r\n\x00")
    assert payload.endswith(b"\xff\xff")
    record = payload[19:-2]
    assert record[:2] == (8).to_bytes(2, "big")
    assert len(record) == 2 + 8 * 4 + 4 + 7 * 8
    assert record[-8:] == (-5).to_bytes(8, "big", signed=True)


def test_empty_and_blank_files_have_no_rows(tmp_path: Path) -> None:
    assert parse(write(tmp_path / "empty.csv", ""), "truefx") == ([], {})
    assert parse(write(tmp_path / "blank.csv", "\n\r\n\n"), "truefx") == ([], {})
    header_only = write(tmp_path / "h.csv", "Gmt time,Ask,Bid,AskVolume,BidVolume\r\n")
    assert parse(header_only, "dukascopy", symbol="EURUSD") == ([], {})
