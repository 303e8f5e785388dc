"""Values a known column cannot hold are gaps, and process tables that describe no sample are
said: both are told on stderr naming the file, never trained on nor dropped silently."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from entry import run
from synth import host_series, write_csv

from minerwatch.features import io
from minerwatch.features.io import HostSeries, read_telemetry
from minerwatch.features.procs import ProcessRows, write_procs_csv
from minerwatch.features.schema import VALID_RANGES


def write_cells(path: Path, series: HostSeries, cells: dict[tuple[int, str], str]) -> None:
    """``series`` as telemetry CSV (synth.write_csv), with the cell of (file line, column)
    replaced by the given text."""
    write_csv(path, [series])
    lines = path.read_text().split("\n")
    header = lines[0].split(",")
    for (line, column), text in cells.items():
        fields = lines[line - 1].split(",")
        fields[header.index(column)] = text
        lines[line - 1] = ",".join(fields)
    path.write_text("\n".join(lines))


def read(path: Path) -> tuple[dict[str, HostSeries], list[str]]:
    notes: list[str] = []
    return read_telemetry([path], note=notes.append), notes


def same_series(a: HostSeries, b: HostSeries) -> None:
    assert a.columns == b.columns
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    np.testing.assert_array_equal(a.values, b.values)  # NaN == NaN here


def threshold(models: Path, host: str = "h") -> float:
    meta = json.loads((models / host / "meta.json").read_text())
    return float(meta["threshold"])


def columns(models: Path, host: str = "h") -> list[str]:
    return list(json.loads((models / host / "meta.json").read_text())["columns"])


# --------------------------------------------------------------------------- the rule


def test_the_rule_covers_every_known_column_and_bounds_only_shares_of_the_host() -> None:
    assert VALID_RANGES["cpu_percent"] == (0.0, 100.5)
    assert VALID_RANGES["mem_percent"] == (0.0, 100.5)
    assert VALID_RANGES["top_proc_cpu_percent"] == (0.0, float("inf"))  # of one core
    assert VALID_RANGES["net_rx_bps"] == (0.0, float("inf"))
    assert "indicator_hits" in VALID_RANGES


# --------------------------------------------------------------------------- finding 1: reader

SMALL = host_series("h", days=0.1, interval=30, seed=5)  # 288 rows


@pytest.mark.parametrize("cell", ["1e308", "250", "-5", "100.51", "-0.001"])
@pytest.mark.parametrize("form", ["fast", "exact", "parquet"])
def test_an_impossible_cpu_share_is_a_gap_and_told_with_file_line_and_column(
    tmp_path: Path, cell: str, form: str
) -> None:
    bad, blank = tmp_path / "bad" / "h.csv", tmp_path / "blank" / "h.csv"
    bad.parent.mkdir()
    blank.parent.mkdir()
    changes = {(40, "cpu_percent"): cell}
    if form == "exact":  # a quoted host: the fast path declines the file
        changes[(7, "host")] = '"h"'
    write_cells(bad, SMALL, changes)
    write_cells(blank, SMALL, {**changes, (40, "cpu_percent"): ""})
    if form == "exact":
        assert io._read_csv_fast(bad) is None
    else:
        assert io._read_csv_fast(bad) is not None
    where = f"{bad}:40"
    if form == "parquet":
        for path in (bad, blank):
            pd.read_csv(path, **io._pandas_kwargs()).to_parquet(path.with_suffix(".parquet"))
            path.unlink()
        bad, blank = bad.with_suffix(".parquet"), blank.with_suffix(".parquet")
        where = f"{bad}, row 39"
    got, notes = read(bad)
    want, none = read(blank)
    assert none == []
    same_series(got["h"], want["h"])
    assert np.isnan(got["h"].column("cpu_percent")[38])
    assert notes == [
        f"{where}: 1 value read as missing, as an empty cell is; it is in column "
        f"'cpu_percent': expected a percentage from 0 to 100, got {cell.replace('1e308', '1e+308')}"
    ]


def test_possible_values_and_unknown_columns_are_read_as_they_are(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "timestamp,host,cpu_percent,mem_percent,top_proc_cpu_percent,load1,smd_metric_7\n"
        "0,h,100.5,0,780,0,-3\n"
        "30,h,0,100.5,1e6,250,1e308\n"
    )
    fleet, notes = read(path)
    assert notes == []
    np.testing.assert_array_equal(
        fleet["h"].values, [[100.5, 0, 780, 0, -3], [0, 100.5, 1e6, 250, 1e308]]
    )


def test_values_are_counted_once_per_file_with_the_first_named(tmp_path: Path) -> None:
    """Out-of-range and infinite values in several columns: one note per file, the first by
    line (then by column in file order), the count of both kinds; other files stay quiet."""
    header = "timestamp,host,cpu_percent,net_rx_bps,load1,extra\n"
    (tmp_path / "a.csv").write_text(
        header
        + "0,h,5,10,1,-1\n"  # an unknown column: its -1 is data
        + "30,h,5,-2,inf,1\n"  # net_rx_bps before load1: the first is the negative rate
        + "60,g,101,10,1,1\n"
        + "90,g,5,10,-inf,1\n"
    )
    (tmp_path / "b.csv").write_text(header + "120,h,5,10,1,1\n")
    fleet, notes = read(tmp_path)
    assert notes == [
        f"{tmp_path / 'a.csv'}:3: 4 values read as missing, as empty cells are (2 outside "
        "their column's range, 2 infinite); the first is in column 'net_rx_bps': expected "
        "a number >= 0 (bytes received per second, all non-loopback interfaces), got -2"
    ]
    h, g = fleet["h"], fleet["g"]
    assert np.isnan(h.values[1, :3]).tolist() == [False, True, True]
    assert h.values[0, 3] == -1
    assert np.isnan(g.column("cpu_percent")[0]) and np.isnan(g.column("load1")[1])
    assert (h.nonfinite, g.nonfinite) == (1, 1)  # the non-finite count is as it was


def test_notes_go_to_stderr_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.csv"
    path.write_text("timestamp,host,cpu_percent\n0,h,5\n30,h,-5\n")
    read_telemetry([path])
    err = capsys.readouterr().err
    assert err.startswith(f"minerwatch: note: {path}:3: 1 value read as missing") and "-5" in err


# --------------------------------------------------------------------------- finding 1: train

TRAIN = host_series("h", days=2, interval=30, seed=3)  # 5760 rows


@pytest.fixture(scope="module")
def trained_blank(tmp_path_factory: pytest.TempPathFactory) -> float:
    """The model with the cells of the tests below left empty."""
    d = tmp_path_factory.mktemp("blank")
    write_cells(d / "h.csv", TRAIN, {(101, "cpu_percent"): "", (2000, "net_tx_pps"): ""})
    r = run("train", d, "--models", d / "models")
    assert r.returncode == 0 and "note" not in r.stderr, r.stderr
    return threshold(d / "models")


@pytest.mark.parametrize("cell", ["1e308", "250", "-5"])
def test_train_leaves_impossible_values_out_and_says_where(
    tmp_path: Path, trained_blank: float, cell: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_cells(data / "h.csv", TRAIN, {(101, "cpu_percent"): cell, (2000, "net_tx_pps"): "-1"})
    r = run("train", data, "--models", tmp_path / "models")
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if "read as missing" in line]
    assert notes == [
        f"minerwatch: note: {data / 'h.csv'}:101: 2 values read as missing, as empty cells "
        f"are; the first is in column 'cpu_percent': expected a percentage from 0 to 100, "
        f"got {cell.replace('1e308', '1e+308')}"
    ]
    assert threshold(tmp_path / "models") == trained_blank


# --------------------------------------------------------------------------- finding 2


def procs_table(series: HostSeries, shift: float = 0.0) -> ProcessRows:
    rows: list[tuple[float, int, str, str, str, float]] = []
    for t, top in zip(
        series.timestamps.tolist(), series.column("top_proc_cpu_percent").tolist(), strict=True
    ):
        rows.append((t + shift, 100, "python3", "/usr/bin/python3", "app", top))
        rows.append((t + shift, 200, "nginx", "/usr/sbin/nginx", "www-data", top / 4))
    return ProcessRows.from_lists(*zip(*rows, strict=True))  # type: ignore[arg-type]


def test_a_table_of_hosts_without_samples_is_named(tmp_path: Path) -> None:
    write_csv(tmp_path / "h.csv", [SMALL])
    table = tmp_path / "h.procs.csv"
    write_procs_csv(table, "zzz", procs_table(SMALL))
    fleet, notes = read(tmp_path)
    assert fleet["h"].procs is None
    assert notes == [
        f"{table}: its 576 rows are of host zzz, which has no samples in the input "
        "(hosts with samples: h): not used"
    ]


def test_a_table_whose_timestamps_match_no_sample_is_named_and_left_out(tmp_path: Path) -> None:
    write_csv(tmp_path / "h.csv", [SMALL])
    shifted = tmp_path / "h.procs.csv"
    write_procs_csv(shifted, "h", procs_table(SMALL, shift=7.0))
    fleet, notes = read(tmp_path)
    assert fleet["h"].procs is None  # as without a table: its process features are unknown
    assert notes == [
        f"{shifted}: none of its 576 rows of host h has the timestamp of a sample of host h "
        "(rows are matched to samples by equal timestamps; the closest is 7 s from one): "
        "not used, host h is read without process features"
    ]
    # beside a table that does match, the shifted one is left out and said so
    good = tmp_path / "good.procs.csv"
    write_procs_csv(good, "h", procs_table(SMALL))
    fleet, notes = read(tmp_path)
    procs = fleet["h"].procs
    assert procs is not None and len(procs) == 576
    np.testing.assert_array_equal(procs.timestamps, np.repeat(SMALL.timestamps, 2))
    assert len(notes) == 1 and notes[0].startswith(f"{shifted}: none of its 576 rows")
    assert notes[0].endswith("7 s from one): these rows are not used")
    # a matching table alone: attached, nothing said
    shifted.unlink()
    fleet, notes = read(tmp_path)
    assert notes == [] and fleet["h"].procs is not None


@pytest.fixture(scope="module")
def trained_without_procs(tmp_path_factory: pytest.TempPathFactory) -> tuple[float, list[str]]:
    d = tmp_path_factory.mktemp("noprocs")
    write_csv(d / "h.csv", [TRAIN])
    r = run("train", d, "--models", d / "models")
    assert r.returncode == 0 and "note" not in r.stderr, r.stderr
    return threshold(d / "models"), columns(d / "models")


@pytest.mark.parametrize(
    ("shift", "host", "said"),
    [
        (
            7.0,
            "h",
            "none of its 11520 rows of host h has the timestamp of a sample of host h (rows "
            "are matched to samples by equal timestamps; the closest is 7 s from one): not "
            "used, host h is read without process features",
        ),
        (
            0.0,
            "zzz",
            "its 11520 rows are of host zzz, which has no samples in the input (hosts with "
            "samples: h): not used",
        ),
    ],
)
def test_train_says_a_process_table_matches_no_sample(
    tmp_path: Path,
    trained_without_procs: tuple[float, list[str]],
    shift: float,
    host: str,
    said: str,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_csv(data / "h.csv", [TRAIN])
    write_procs_csv(data / "h.procs.csv", host, procs_table(TRAIN, shift))
    r = run("train", data, "--models", tmp_path / "models")
    assert r.returncode == 0, r.stderr
    assert f"minerwatch: note: {data / 'h.procs.csv'}: {said}\n" in r.stderr
    # the model is the one trained without a process table
    assert (threshold(tmp_path / "models"), columns(tmp_path / "models")) == trained_without_procs


def test_train_with_a_matching_table_learns_processes_quietly(
    tmp_path: Path, trained_without_procs: tuple[float, list[str]]
) -> None:
    """The control: the same table with the samples' timestamps is used, and nothing is said."""
    data = tmp_path / "data"
    data.mkdir()
    write_csv(data / "h.csv", [TRAIN])
    write_procs_csv(data / "h.procs.csv", "h", procs_table(TRAIN))
    r = run("train", data, "--models", tmp_path / "models")
    assert r.returncode == 0 and "note" not in r.stderr, r.stderr
    assert "proc_new_cpu_percent" in columns(tmp_path / "models")
    assert "proc_new_cpu_percent" not in trained_without_procs[1]
