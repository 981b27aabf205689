"""Importing depth snapshots (JSON lines) and sentiment readings (csv), on SQLite and PostgreSQL.

Through the public functions only, with real files in ``tmp_path`` and the
``engine`` fixture (both dialects); nothing is mocked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, Table, func, select
from structlog.testing import capture_logs

from tickvisor.ingest import ImportSummary, TickFileError
from tickvisor.ingest.records import (
    RECORD_REASONS,
    import_depth_file,
    import_sentiment_file,
)
from tickvisor.store.engine import DatabaseUnavailable
from tickvisor.store.schema import depth_snapshots, sentiment_raw, tick_quarantine

T0 = 1_704_153_600_000  # 2024-01-02T00:00:00Z
HEADER = "symbol,ts,long_pct,short_pct,total_traders,provider"


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def snapshot(**fields: Any) -> str:
    return json.dumps(fields)


def stored_depth(engine: Engine) -> list[tuple[Any, ...]]:
    t = depth_snapshots.c
    with engine.connect() as conn:
        rows = conn.execute(select(t.symbol, t.ts_ms, t.provider, t.bids, t.asks).order_by(t.id))
        return [(s, ts, p, json.loads(b), json.loads(a)) for s, ts, p, b, a in rows]


def stored_sentiment(engine: Engine) -> list[tuple[Any, ...]]:
    t = sentiment_raw.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                t.symbol, t.ts_ms, t.provider, t.long_pct, t.short_pct, t.total_traders
            ).order_by(t.id)
        )
        return [tuple(row) for row in rows]


def quarantined(engine: Engine) -> dict[int, tuple[str, str]]:
    """line -> (reason, detail); fails if any line was quarantined twice."""
    q = tick_quarantine.c
    with engine.connect() as conn:
        rows = list(conn.execute(select(q.line, q.reason, q.detail)))
    out = {int(line): (str(reason), str(detail)) for line, reason, detail in rows}
    assert len(out) == len(rows)
    return out


def count(engine: Engine, table: Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def counts(summary: ImportSummary) -> tuple[int, int, int, int]:
    return (summary.rows_read, summary.inserted, summary.duplicates, summary.rejected)


# --- good files land exactly ----------------------------------------------------------


def test_depth_file_lands_exactly_with_every_timestamp_form(engine: Engine, tmp_path: Path) -> None:
    book = {"bids": [[1.1, 5.0], [1.09, 2.5]], "asks": [[1.2, 3.0]]}
    crossed = {"bids": [[1.3, 1.0]], "asks": [[1.2, 1.0]]}  # the service's to judge
    path = write(
        tmp_path / "depth.jsonl",
        [
            snapshot(symbol="eurusd", ts=T0, provider="lmax", **book),
            snapshot(symbol="EUR-USD", ts=str(T0 + 1), provider="lmax", **book),
            "",  # blank: skipped, not a row
            snapshot(symbol="EUR/USD", ts="2024-01-02T00:00:00.002Z", provider=" lmax ", **book),
            snapshot(symbol="usd_jpy", ts="2024-01-02T01:00:00.0039+01:00", **crossed),
            snapshot(symbol="GBP/USD", ts="2024-01-02 00:00:00.004", provider="ecn", **book),
            json.dumps({"symbol": "EURUSD", "ts": T0 + 5, "bids": [], "asks": [], "depth": 0}),
            snapshot(symbol="EURUSD", ts=T0, provider="lmax", **crossed),  # repeats line 1's id
        ],
    )
    summary = import_depth_file(engine, path)
    assert summary.file == str(path.resolve())
    assert summary.format == "depth-jsonl"
    assert counts(summary) == (7, 6, 1, 0)
    assert summary.rejected_by_reason == {}
    assert stored_depth(engine) == [
        ("EUR/USD", T0, "lmax", book["bids"], book["asks"]),
        ("EUR/USD", T0 + 1, "lmax", book["bids"], book["asks"]),
        ("EUR/USD", T0 + 2, "lmax", book["bids"], book["asks"]),
        ("USD/JPY", T0 + 3, "", crossed["bids"], crossed["asks"]),
        ("GBP/USD", T0 + 4, "ecn", book["bids"], book["asks"]),
        ("EUR/USD", T0 + 5, "", [], []),
    ]
    assert count(engine, tick_quarantine) == 0


def test_sentiment_file_lands_exactly_and_out_of_range_readings_are_kept(
    engine: Engine, tmp_path: Path
) -> None:
    path = tmp_path / "sentiment.csv"
    path.write_bytes(
        (
            "\ufeffSymbol, TS ,long_pct,short_pct,total_traders,provider\r\n"
            f"EURUSD,{T0},61.5,38.5,1200,myfxbook\r\n"
            "eur/usd,2024-01-02T00:00:00.001Z,120,-20,,myfxbook\r\n"  # judged later, not here
            f'"GBP/USD",{T0 + 2}, 50 ,50,7.0,"dukas, copy"\r\n'
            "USDJPY,2024-01-02T02:00:00.003+02:00,1e1,90,0,\r\n"
        ).encode()
    )
    summary = import_sentiment_file(engine, path)
    assert (summary.format, counts(summary)) == ("sentiment-csv", (4, 4, 0, 0))
    assert stored_sentiment(engine) == [
        ("EUR/USD", T0, "myfxbook", 61.5, 38.5, 1200),
        ("EUR/USD", T0 + 1, "myfxbook", 120.0, -20.0, None),
        ("GBP/USD", T0 + 2, "dukas, copy", 50.0, 50.0, 7),
        ("USD/JPY", T0 + 3, "", 10.0, 90.0, 0),
    ]


# --- idempotence ----------------------------------------------------------------------


def test_reimporting_inserts_nothing_and_quarantines_once(engine: Engine, tmp_path: Path) -> None:
    depth = write(
        tmp_path / "depth.jsonl",
        [
            snapshot(symbol="EURUSD", ts=T0, provider="a", bids=[[1, 1]], asks=[[2, 1]]),
            snapshot(symbol="EURUSD", ts=T0, provider="b", bids=[[1, 1]], asks=[[2, 1]]),
            snapshot(symbol="EURUSD", ts=T0 + 1, provider="a", bids=[], asks=[]),
            "{broken",
            # The same identity again (another spelling, another book): a duplicate.
            snapshot(symbol="EUR/USD", ts=T0, provider="a", bids=[[9, 9]], asks=[[9, 9]]),
        ],
    )
    sentiment = write(
        tmp_path / "sentiment.csv",
        [
            HEADER,
            f"EURUSD,{T0},60,40,10,p",
            f"EURUSD,{T0 + 1},oops,40,10,p",
            f"EURUSD,{T0},1,2,3,p",
        ],
    )
    # batch_size=2 puts the in-file repeat in another transaction than its original.
    first_depth = import_depth_file(engine, depth, batch_size=2)
    first_sentiment = import_sentiment_file(engine, sentiment, batch_size=2)
    assert counts(first_depth) == (5, 3, 1, 1)
    assert counts(first_sentiment) == (3, 1, 1, 1)
    before = (stored_depth(engine), stored_sentiment(engine), quarantined(engine))
    assert before[0][0][3] == [[1, 1]]  # the first of a repeated identity is the one kept

    second_depth = import_depth_file(engine, depth)
    second_sentiment = import_sentiment_file(engine, sentiment)
    assert counts(second_depth) == (5, 0, 4, 1)
    assert counts(second_sentiment) == (3, 0, 2, 1)
    assert (stored_depth(engine), stored_sentiment(engine), quarantined(engine)) == before
    assert count(engine, tick_quarantine) == 2


# --- bad lines ------------------------------------------------------------------------


def test_each_kind_of_bad_depth_line_is_quarantined_and_the_rest_lands(
    engine: Engine, tmp_path: Path
) -> None:
    ok: dict[str, Any] = {"symbol": "EURUSD", "provider": "p", "bids": [[1, 1]], "asks": [[2, 1]]}

    def line(ts: Any, **changes: Any) -> str:
        fields = {**ok, "ts": ts, **changes}
        return json.dumps({k: v for k, v in fields.items() if v is not ...})

    lines = [
        line(T0),  # 1 good
        '{"symbol": "EURUSD", "ts": ',  # 2
        "[1, 2, 3]",  # 3
        line(T0 + 4, symbol=...),  # 4
        line(T0 + 5, symbol="  "),  # 5
        line(T0 + 6, symbol="EURO"),  # 6
        line(...),  # 7
        line("yesterday"),  # 8
        line(T0 * 1000),  # 9: microseconds, not milliseconds
        line(T0 + 10, bids=...),  # 10
        line(T0 + 11, asks={"1.2": 3}),  # 11
        line(T0 + 12, provider="x" * 65),  # 12
        line(1.5),  # 13
        line(T0 + 14, symbol=7),  # 14
        line(T0 + 15),  # 15 good
    ]
    path = tmp_path / "depth.jsonl"
    path.write_bytes(
        "\n".join(lines).encode()
        + b'\n{"symbol": "EUR\xff", "ts": 1}\n'  # 16
        + line(T0 + 17).encode()  # 17 good
        + b'\n{"symbol": "EURUSD", "ts": 1, "bids": '
        + b"[" * 100_000  # 18
        + ("\n" + line(T0 + 19, provider="lmax\x00")).encode()  # 19: PostgreSQL text has no NUL
    )
    summary = import_depth_file(engine, path, batch_size=4)
    assert counts(summary) == (19, 3, 0, 16)
    assert summary.rejected_by_reason == {
        "unparseable": 9,
        "bad_symbol": 4,
        "timestamp_out_of_range": 1,
        "bad_provider": 2,
    }
    assert [row[1] for row in stored_depth(engine)] == [T0, T0 + 15, T0 + 17]
    got = quarantined(engine)
    assert {n: reason for n, (reason, _) in got.items()} == {
        2: "unparseable",
        3: "unparseable",
        4: "bad_symbol",
        5: "bad_symbol",
        6: "bad_symbol",
        7: "unparseable",
        8: "unparseable",
        9: "timestamp_out_of_range",
        10: "unparseable",
        11: "unparseable",
        12: "bad_provider",
        13: "unparseable",
        14: "bad_symbol",
        16: "unparseable",
        18: "unparseable",
        19: "bad_provider",
    }
    details = {n: detail for n, (_, detail) in got.items()}
    assert details[2].startswith("not valid JSON: ")
    assert details[3] == "expected a JSON object, found a list"
    assert details[4] == "symbol is missing"
    assert details[5] == "symbol is empty"
    assert "'EURO'" in details[6]
    assert details[7] == "ts is missing"
    assert details[8].startswith("ts 'yesterday' is not a time: expected epoch milliseconds")
    assert details[9] == (
        "ts 1704153600000000 is 1704153600000000 ms since 1970-01-01, "
        "outside 1970-01-01..2100-01-01 UTC"
    )
    assert details[10] == "bids is missing"
    assert details[11] == "asks is an object, expected a JSON list of [price, size]"
    assert details[12].endswith("is 65 characters, longer than 64")
    assert details[13] == "ts 1.5 is not whole milliseconds"
    assert details[14] == "symbol 7 is a number, not text"
    assert details[16] == "not UTF-8 text (bad byte at column 16)"
    assert details[18] == "not valid JSON: nested too deeply"
    assert details[19] == "provider 'lmax\\x00' contains a NUL character"
    with engine.connect() as conn:
        row = conn.execute(select(tick_quarantine).where(tick_quarantine.c.line == 3)).one()
    assert (row.source, row.raw) == (str(path.resolve()), "[1, 2, 3]")
    assert set(summary.rejected_by_reason) <= set(RECORD_REASONS)


def test_each_kind_of_bad_sentiment_line_is_quarantined_and_the_rest_lands(
    engine: Engine, tmp_path: Path
) -> None:
    path = write(
        tmp_path / "sentiment.csv",
        [
            HEADER,
            f"EURUSD,{T0},60,40,10,p",  # 2 good
            f"EURUSD,{T0 + 3},60,40,10",  # 3
            f"EURUSD,{T0 + 4},60,40,10,p,extra",  # 4
            f"EURUSD,{T0 + 5},,40,10,p",  # 5
            f"EURUSD,{T0 + 6},60,forty,10,p",  # 6
            f"EURUSD,{T0 + 7},60,40,many,p",  # 7
            f"EURUSD,{T0 + 8},60,40,12.5,p",  # 8
            "EURUSD,,60,40,10,p",  # 9
            "EURUSD,2024-13-45T00:00:00Z,60,40,10,p",  # 10
            f",{T0 + 11},60,40,10,p",  # 11
            f"EURUSD,{T0 + 12},nan,40,10,p",  # 12
            f'EURUSD,{T0 + 13},60,40,10,"p',  # 13
            "",  # 14 blank
            f"USDJPY,{T0 + 15},55,45,,",  # 15 good
        ],
    )
    summary = import_sentiment_file(engine, path, batch_size=3)
    assert counts(summary) == (13, 2, 0, 11)
    assert summary.rejected_by_reason == {"unparseable": 10, "bad_symbol": 1}
    assert stored_sentiment(engine) == [
        ("EUR/USD", T0, "p", 60.0, 40.0, 10),
        ("USD/JPY", T0 + 15, "", 55.0, 45.0, None),
    ]
    details = {n: detail for n, (_, detail) in quarantined(engine).items()}
    fields = "(symbol,ts,long_pct,short_pct,total_traders,provider)"
    assert details == {
        3: f"expected 6 comma-separated fields {fields}, found 5",
        4: f"expected 6 comma-separated fields {fields}, found 7",
        5: "long_pct is empty",
        6: "short_pct 'forty' is not a finite decimal number",
        7: "total_traders 'many' is not a whole number",
        8: "total_traders '12.5' is not a whole number",
        9: "ts is empty",
        10: "ts '2024-13-45T00:00:00Z' is not a time: expected epoch milliseconds or "
        "ISO 8601 such as 2024-01-02T00:00:00.123Z",
        11: "symbol is empty",
        12: "long_pct 'nan' is not a finite decimal number",
        13: "not a csv line: unexpected end of data",
    }


# --- file-level problems --------------------------------------------------------------


def test_a_wrong_csv_header_is_refused_naming_the_file_before_anything_is_written(
    engine: Engine, tmp_path: Path
) -> None:
    path = write(tmp_path / "ticks.csv", ["ts,bid,ask", f"{T0},1.1,1.2"])
    with pytest.raises(TickFileError) as raised:
        import_sentiment_file(engine, path)
    message = str(raised.value)
    assert message.startswith(f"{path.resolve()}: line 1: not a sentiment-csv file")
    assert f"expected the header {HEADER!r}, found 'ts,bid,ask'" in message
    assert (count(engine, sentiment_raw), count(engine, tick_quarantine)) == (0, 0)
    with pytest.raises(TickFileError, match=r"missing\.jsonl: no such file"):
        import_depth_file(engine, tmp_path / "missing.jsonl")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        pytest.param("empty.jsonl", b"", id="empty-jsonl"),
        pytest.param("blank.jsonl", b"\n  \n\r\n", id="blank-lines-jsonl"),
        pytest.param("empty.csv", b"\xef\xbb\xbf", id="bom-only-csv"),
        pytest.param("header-only.csv", HEADER.encode(), id="header-only-csv"),
    ],
)
def test_an_empty_file_imports_nothing(
    engine: Engine, tmp_path: Path, name: str, content: bytes
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    importer = import_depth_file if name.endswith(".jsonl") else import_sentiment_file
    summary = importer(engine, path)
    assert counts(summary) == (0, 0, 0, 0)
    assert summary.rejected_by_reason == {}


def test_a_database_failure_stops_the_import_naming_the_lines(
    engine: Engine, tmp_path: Path
) -> None:
    lines = [snapshot(symbol="EURUSD", ts=T0 + i, bids=[], asks=[]) for i in range(5)]
    path = write(tmp_path / "depth.jsonl", lines)
    with engine.begin() as conn:
        depth_snapshots.drop(conn)
    with pytest.raises(
        DatabaseUnavailable, match=r"writing lines 1\.\.3 failed: .*depth_snapshots"
    ):
        import_depth_file(engine, path, batch_size=3)


def test_the_summary_is_logged_as_import_completed(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "s.csv", [HEADER, f"EURUSD,{T0},60,40,10,p", "junk"])
    with capture_logs() as logs:
        summary = import_sentiment_file(engine, path)
    completed = [entry for entry in logs if entry["event"] == "import.completed"]
    assert len(completed) == 1
    assert {k: v for k, v in completed[0].items() if k not in ("event", "log_level")} == (
        summary.as_dict()
    )
    assert summary.rejected_by_reason == {"unparseable": 1}
