"""Importing tick files end to end, on SQLite and PostgreSQL: quarantine, idempotence, CLI.

Every database test runs on both dialects through the ``db_url``/``engine``
fixtures, with real files written to ``tmp_path``; nothing is mocked.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, func, select

from tickvisor.cli import main
from tickvisor.ingest import ImportSummary, TickFileError, import_file
from tickvisor.store.engine import DatabaseUnavailable
from tickvisor.store.schema import tick_quarantine, ticks

TICKVISOR = [sys.executable, "-m", "tickvisor.cli"]

BAD_ROWS = (
    "ts,bid,ask,price,volume,symbol\n"
    "2024-01-02T00:00:00.000Z,1.1,1.2,,,EURUSD\n"  # 2 good
    "2024-01-02T00:00:00.001Z,1.1,1.2,,,EURUSD,extra\n"  # 3 unparseable: fields
    "2024-01-02T00:00:00.002Z,1.1,oops,,,EURUSD\n"  # 4 unparseable: number
    "2024-01-02 nonsense,1.1,1.2,,,EURUSD\n"  # 5 unparseable: timestamp
    "2024-01-02T00:00:00.004Z,1.1,1.2,,,EURO\n"  # 6 bad_symbol
    "1969-12-31T23:59:59.999Z,1.1,1.2,,,EURUSD\n"  # 7 timestamp_out_of_range
    "2024-01-02T00:00:00.006Z,inf,1.2,,,EURUSD\n"  # 8 non_finite_price
    "2024-01-02T00:00:00.007Z,-1.1,1.2,,,EURUSD\n"  # 9 non_positive_price
    "2024-01-02T00:00:00.008Z,1.3,1.2,,,EURUSD\n"  # 10 ask_below_bid
    "2024-01-02T00:00:00.009Z,1.1,1.2,,-5,EURUSD\n"  # 11 bad_volume
    "\n"  # 12 blank: skipped, not a row
    "2024-01-02T01:00:00.010+01:00,1.1,1.2,1.15,7,usd/jpy\n"  # 13 good
)
BAD_LINES = {
    3: "unparseable",
    4: "unparseable",
    5: "unparseable",
    6: "bad_symbol",
    7: "timestamp_out_of_range",
    8: "non_finite_price",
    9: "non_positive_price",
    10: "ask_below_bid",
    11: "bad_volume",
}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def stored_ticks(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                ticks.c.symbol,
                ticks.c.ts_ms,
                ticks.c.bid,
                ticks.c.ask,
                ticks.c.price,
                ticks.c.volume,
                ticks.c.source,
            ).order_by(ticks.c.id)
        )
        return [tuple(row) for row in rows]


def quarantined(engine: Engine) -> dict[int, str]:
    with engine.connect() as conn:
        rows = conn.execute(select(tick_quarantine.c.line, tick_quarantine.c.reason))
        return {int(line): str(reason) for line, reason in rows}


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


# --- quarantine and idempotence -------------------------------------------------------


def test_every_kind_of_bad_row_is_quarantined_with_its_line_and_the_rest_imports(
    engine: Engine, tmp_path: Path
) -> None:
    path = write(tmp_path / "bad.csv", BAD_ROWS)
    summary = import_file(path, "csv", engine, batch_size=4)
    assert summary.rows_read == 11
    assert (summary.inserted, summary.duplicates, summary.rejected) == (2, 0, 9)
    assert summary.rejected_by_reason == {
        "unparseable": 3,
        "bad_symbol": 1,
        "timestamp_out_of_range": 1,
        "non_finite_price": 1,
        "non_positive_price": 1,
        "ask_below_bid": 1,
        "bad_volume": 1,
    }
    assert stored_ticks(engine) == [
        ("EUR/USD", 1704153600000, 1.1, 1.2, None, None, "csv"),
        ("USD/JPY", 1704153600010, 1.1, 1.2, 1.15, 7.0, "csv"),
    ]
    assert quarantined(engine) == BAD_LINES
    with engine.connect() as conn:
        row = conn.execute(select(tick_quarantine).where(tick_quarantine.c.line == 4)).one()
    assert row.source == str(path.resolve())
    assert row.detail == "ask 'oops' is not a number"
    assert row.raw == "2024-01-02T00:00:00.002Z,1.1,oops,,,EURUSD"


def test_importing_twice_changes_nothing(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "bad.csv", BAD_ROWS)
    first = import_file(path, "csv", engine)
    before = (stored_ticks(engine), quarantined(engine), count(engine, tick_quarantine))
    second = import_file(path, "csv", engine, batch_size=3)
    assert (stored_ticks(engine), quarantined(engine), count(engine, tick_quarantine)) == before
    assert (second.inserted, second.duplicates) == (0, first.inserted)
    assert second.rejected == first.rejected
    assert second.rows_read == first.rows_read


def test_same_millisecond_ticks_are_kept_in_file_order_and_exact_repeats_dropped(
    engine: Engine, tmp_path: Path
) -> None:
    path = write(
        tmp_path / "DAT_ASCII_EURUSD_T_202401.csv",
        "20240102 170000123,1.10375,1.10393,0\n"
        "20240102 170000123,1.10376,1.10393,0\n"  # same ms, different bid: a new tick
        "20240102 170000123,1.10375,1.10393,0\n"  # an exact repeat of line 1
        "20240102 170000123,1.10374,1.10393,0\n",
    )
    summary = import_file(path, "histdata", engine, batch_size=2)
    assert (summary.inserted, summary.duplicates, summary.rejected) == (3, 1, 0)
    assert [row[2] for row in stored_ticks(engine)] == [1.10375, 1.10376, 1.10374]
    assert {row[1] for row in stored_ticks(engine)} == {1704232800123}
    assert {row[6] for row in stored_ticks(engine)} == {"histdata"}


def test_an_import_killed_between_batches_completes_on_rerun(
    engine: Engine, tmp_path: Path
) -> None:
    lines = [f"EUR/USD,20240102 00:00:{s:02d}.000,1.1,1.2" for s in range(10)]
    path = write(tmp_path / "truefx.csv", "\n".join(lines) + "\n")
    calls = 0

    def die_after_first_batch(_: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # the first call reports the (empty) header
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_file(path, "truefx", engine, batch_size=4, progress=die_after_first_batch)
    assert count(engine, ticks) == 4  # the first batch committed, nothing else
    rerun = import_file(path, "truefx", engine, batch_size=4)
    assert (rerun.inserted, rerun.duplicates) == (6, 4)
    assert count(engine, ticks) == 10


def test_a_file_in_another_format_is_refused_before_anything_is_written(
    engine: Engine, tmp_path: Path
) -> None:
    path = write(
        tmp_path / "DAT_ASCII_EURUSD_T_202401.csv",
        "Gmt time,Ask,Bid,AskVolume,BidVolume\n02.01.2024 00:00:00.123,1.2,1.1,1,1\n",
    )
    with pytest.raises(TickFileError, match="does not look like a histdata file"):
        import_file(path, "histdata", engine)
    assert count(engine, ticks) == count(engine, tick_quarantine) == 0


def test_dukascopy_and_histdata_end_to_end(engine: Engine, tmp_path: Path) -> None:
    duka = write(
        tmp_path / "EURUSD.csv",
        "Local time,Ask,Bid,AskVolume,BidVolume\n02.01.2024 02:00:00.123 GMT+0200,1.2,1.1,1,2\n",
    )
    hist = write(tmp_path / "DAT_ASCII_EURUSD_T_202401.csv", "20240101 190000123,1.1,1.2,0\n")
    assert import_file(duka, "dukascopy", engine, symbol="EURUSD").inserted == 1
    # The same instant in EST from histdata, same prices, different volume: a second tick.
    assert import_file(hist, "histdata", engine).inserted == 1
    assert stored_ticks(engine) == [
        ("EUR/USD", 1704153600123, 1.1, 1.2, None, 3.0, "dukascopy"),
        ("EUR/USD", 1704153600123, 1.1, 1.2, None, 0.0, "histdata"),
    ]


def test_a_database_failure_names_the_lines_and_keeps_committed_batches(
    engine: Engine, tmp_path: Path
) -> None:
    lines = [f"EUR/USD,20240102 00:00:{s:02d}.000,1.1,1.2" for s in range(6)]
    path = write(tmp_path / "truefx.csv", "\n".join(lines) + "\n")
    with engine.begin() as conn:
        ticks.drop(conn)
    with pytest.raises(DatabaseUnavailable, match=r"writing lines 1\.\.4 failed: .*ticks"):
        import_file(path, "truefx", engine, batch_size=4)


def test_binary_junk_in_a_line_is_quarantined_not_fatal(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "truefx.csv"
    path.write_bytes(
        b"EUR/USD,20240102 00:00:00.000,1.1,1.2\nEUR/USD,2024\x00\xff0102 00:00:00.001,1.1,1.2\n"
    )
    summary = import_file(path, "truefx", engine)
    assert (summary.inserted, summary.rejected) == (1, 1)
    with engine.connect() as conn:
        raw = conn.execute(select(tick_quarantine.c.raw)).scalar_one()
    assert raw == "EUR/USD,2024\ufffd\ufffd0102 00:00:00.001,1.1,1.2"


# --- property: several imports equal one de-duplicated set ------------------------------

SPELLINGS = {"EUR/USD": ["EURUSD", "eur/usd", "EUR-USD"], "USD/JPY": ["USDJPY", "usd_jpy"]}
BASE_MS = 1_704_153_600_000

tick_strategy = st.tuples(
    st.sampled_from(sorted(SPELLINGS)),
    st.integers(0, 5),  # few distinct milliseconds: plenty of same-ms ticks
    st.sampled_from([1.1, 1.10001, 0.30000000000000004, 150.125]),
    st.sampled_from([0.0, 1e-05, 0.5]),
    st.none() | st.sampled_from([1.2, 2.5]),
    st.none() | st.sampled_from([0.0, 1.0, 1e6]),
)


def _csv_text(rows: list[tuple[Any, ...]], spelling: int, epoch: bool) -> str:
    out = ["volume,symbol,ask,ts,bid,price"]
    for symbol, offset, bid, spread, price, volume in rows:
        ms = BASE_MS + offset
        stamp = (
            str(ms)
            if epoch
            else pd.Timestamp(ms, unit="ms", tz="UTC").isoformat(timespec="milliseconds")
        )
        names = SPELLINGS[symbol]
        out.append(
            ",".join(
                [
                    "" if volume is None else repr(volume),
                    names[spelling % len(names)],
                    repr(bid + spread),
                    stamp,
                    repr(bid),
                    "" if price is None else repr(price),
                ]
            )
        )
    return "\n".join(out) + "\n"


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=st.lists(tick_strategy, min_size=1, max_size=40),
    repeats=st.lists(st.integers(0, 39), max_size=10),
    cuts=st.lists(st.integers(0, 50), max_size=3),
    seed=st.randoms(use_true_random=False),
)
def test_imports_in_any_order_and_split_equal_the_deduplicated_set(
    engine: Engine,
    tmp_path: Path,
    rows: list[tuple[Any, ...]],
    repeats: list[int],
    cuts: list[int],
    seed: Any,
) -> None:
    with engine.begin() as conn:
        conn.execute(delete(ticks))
        conn.execute(delete(tick_quarantine))
    every = rows + [rows[i % len(rows)] for i in repeats]
    seed.shuffle(every)
    bounds = sorted({0, len(every), *(min(c, len(every)) for c in cuts)})
    total = 0
    for part, (start, end) in enumerate(itertools.pairwise(bounds)):
        path = write(
            tmp_path / f"part{part}.csv",
            _csv_text(every[start:end], spelling=part, epoch=part % 2 == 1),
        )
        summary = import_file(path, "csv", engine, batch_size=seed.choice([1, 7, 1000]))
        assert summary.rejected == 0
        total += summary.inserted

    expected = pd.DataFrame(
        [
            (symbol, BASE_MS + offset, bid, bid + spread, price, volume)
            for symbol, offset, bid, spread, price, volume in every
        ],
        columns=["symbol", "ts_ms", "bid", "ask", "price", "volume"],
    ).astype({"price": float, "volume": float})
    expected = expected.drop_duplicates().sort_values(list(expected.columns), ignore_index=True)
    got = pd.DataFrame(
        [row[:6] for row in stored_ticks(engine)], columns=list(expected.columns)
    ).astype({"price": float, "volume": float})
    got = got.sort_values(list(got.columns), ignore_index=True)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert total == len(expected)


# --- the command line ----------------------------------------------------------------


def test_cli_import_prints_the_summary_and_exit_0(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "bad.csv", BAD_ROWS)
    assert main(["import", str(path), "--format", "csv", "--db", db_url]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    summary = lines[-1]
    assert summary["event"] == "import.completed"
    assert set(summary) >= set(ImportSummary.__dataclass_fields__)
    assert (summary["rows_read"], summary["inserted"], summary["rejected"]) == (11, 2, 9)
    assert summary["rejected_by_reason"]["unparseable"] == 3
    assert summary["file"] == str(path.resolve())
    assert summary["format"] == "csv"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.csv", "--format", "csv"], "missing.csv: no such file"),
        (["hist.csv", "--format", "histdata"], "--symbol is required"),
        (["hist.csv", "--format", "histdata", "--symbol", "EURO"], "--symbol: invalid symbol"),
        (["hist.csv", "--format", "csv", "--symbol", "EURUSD"], "lacks required column(s)"),
        (["hist.csv", "--format", "histdata", "--symbol", "EURUSD", "--batch-size", "0"], ""),
    ],
)
def test_cli_exit_2_names_the_problem_and_creates_no_database(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "hist.csv", "20240102 170000123,1.1,1.2,0\n")
    db = tmp_path / "never.db"
    assert main(["import", *args, "--db", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("tickvisor: ")
    assert message in err[0]
    assert not db.exists()


def test_cli_subprocess_stdout_is_json_lines_ending_in_the_summary(tmp_path: Path) -> None:
    path = write(
        tmp_path / "EURUSD.csv",
        "Gmt time,Ask,Bid,AskVolume,BidVolume\n02.01.2024 00:00:00.123,1.2,1.1,1,2\n",
    )
    db = f"sqlite:///{tmp_path / 't.db'}"
    args = [*TICKVISOR, "import", str(path), "--format", "dukascopy", "--symbol", "EURUSD"]
    result = subprocess.run(
        [*args, "--db", db], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]  # every line parses
    assert records[-1]["event"] == "import.completed"
    assert records[-1]["inserted"] == 1
    assert not math.isnan(records[-1]["seconds"])
    assert result.stderr == ""  # no progress bar without a terminal

    missing = subprocess.run(
        [*TICKVISOR, "import", str(tmp_path / "nope.csv"), "--format", "truefx", "--db", db],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"tickvisor: {tmp_path / 'nope.csv'}: no such file"
    [json.loads(line) for line in missing.stdout.splitlines()]


def test_small_batches_do_not_mistake_a_bad_first_line_for_a_foreign_file(
    engine: Engine, tmp_path: Path
) -> None:
    path = write(
        tmp_path / "t.csv",
        "EUR/USD,garbage,1.1,1.2\n\nEUR/USD,20240102 00:00:00.000,1.1,1.2\n",
    )
    summary = import_file(path, "truefx", engine, batch_size=1)
    assert (summary.inserted, summary.rejected) == (1, 1)
    assert quarantined(engine) == {1: "unparseable"}

    foreign = write(tmp_path / "f.csv", "x\n" * 150 + "EUR/USD,20240102 00:00:00.000,1.1,1.2\n")
    with pytest.raises(TickFileError, match=r"none of its first 100 data line\(s\) parse \(line 1"):
        import_file(foreign, "truefx", engine, batch_size=7)
    assert count(engine, tick_quarantine) == 1
