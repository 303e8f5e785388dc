"""The simulator writes consistent, deterministic, correctly labelled telemetry files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minerwatch.bench.simprocs import IDENTITY_KINDS
from minerwatch.bench.simulate import (
    ARCHETYPES,
    BENIGN_KINDS,
    CAMPAIGN_KINDS,
    DEFAULT_START,
    _Clock,
    simulate,
)
from minerwatch.features.errors import InputError
from minerwatch.features.schema import METRIC_COLUMNS, METRICS, SCHEMA_VERSION, TELEMETRY_COLUMNS

README = Path(__file__).resolve().parents[1] / "datasets" / "README.md"
MINERWATCH = str(Path(sys.executable).with_name("minerwatch"))
PARAMS = {"hosts": 8, "train_days": 2.0, "test_days": 2.0, "seed": 3, "interval": 60.0}


def sample_files(out: Path, pattern: str = "*/*.csv") -> list[Path]:
    """Host sample files (process tables, ``*.procs.csv``, are checked in test_simulate_procs)."""
    return sorted(p for p in out.glob(pattern) if not p.name.endswith(".procs.csv"))


def read(path: Path) -> tuple[list[str], np.ndarray]:
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = list(reader)
    hosts = {r[1] for r in rows}
    assert hosts == {path.stem}
    return header, np.array([[float(x) for i, x in enumerate(r) if i != 1] for r in rows])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    out = tmp_path_factory.mktemp("fleet")
    labels = simulate(out, **PARAMS)
    return out, labels


def column(table: np.ndarray, name: str) -> np.ndarray:
    i = TELEMETRY_COLUMNS.index(name)
    return table[:, i if i == 0 else i - 1]  # the host column is dropped by read()


def test_files_and_labels_layout(fleet):
    out, labels = fleet
    assert json.loads((out / "labels.json").read_text()) == labels
    assert labels["schema_version"] == SCHEMA_VERSION
    assert labels["parameters"] == {**PARAMS, "start": DEFAULT_START, "procs": True}
    assert len(labels["hosts"]) == PARAMS["hosts"]
    for host, info in labels["hosts"].items():
        assert info["archetype"] in ARCHETYPES
        assert 2 <= info["cores"] <= 64
        assert (out / "train" / f"{host}.csv").is_file()
        assert (out / "test" / f"{host}.csv").is_file()
        assert (out / "train" / f"{host}.procs.csv").is_file()
        assert (out / "test" / f"{host}.procs.csv").is_file()
    assert len({h["archetype"] for h in labels["hosts"].values()}) == len(ARCHETYPES)
    assert sorted(p.name for p in out.iterdir()) == ["labels.json", "test", "train"]


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    small = {**PARAMS, "hosts": 3, "train_days": 0.5, "test_days": 1.0}
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    calls = []
    simulate(a, **small, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    simulate(b, **small)
    simulate(c, **{**small, "seed": small["seed"] + 1})
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 13  # 3 hosts x 2 splits x (samples + process table) + labels
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "test" / "web-01.csv").read_bytes() != (c / "test" / "web-01.csv").read_bytes()


def test_every_column_present_consistent_and_in_range(fleet):
    out, labels = fleet
    for path in sample_files(out):
        header, t = read(path)
        assert tuple(header) == TELEMETRY_COLUMNS
        assert np.isfinite(t).all()
        cores = labels["hosts"][path.stem]["cores"]
        pct = [
            "cpu_percent",
            "cpu_user_percent",
            "cpu_system_percent",
            "cpu_iowait_percent",
            "mem_percent",
        ]
        for name in pct:
            assert ((column(t, name) >= 0) & (column(t, name) <= 100)).all(), (path, name)
        busy = column(t, "cpu_user_percent") + column(t, "cpu_system_percent")
        assert np.abs(column(t, "cpu_percent") - busy).max() <= 0.011
        assert (column(t, "cpu_percent") + column(t, "cpu_iowait_percent") <= 100.02).all()
        for name in ("tcp_established", "procs_total", "procs_running"):
            assert (column(t, name) == np.round(column(t, name))).all()
        assert (column(t, "procs_running") >= 1).all()
        assert (column(t, "procs_running") < column(t, "procs_total")).all()
        top = column(t, "top_proc_cpu_percent")
        assert (top > 0).all() and (top <= cores * 100).all()
        for name in METRIC_COLUMNS:
            assert (column(t, name) >= 0).all(), name
        for way in ("rx", "tx"):
            per_packet = column(t, f"net_{way}_bps") / column(t, f"net_{way}_pps")
            assert ((per_packet >= 40) & (per_packet <= 1520)).all(), (path, way)


def test_gaps_duplicates_and_order_like_real_files(fleet):
    out, labels = fleet
    dups = gaps = backwards = 0
    for path in sample_files(out):
        _, t = read(path)
        ts = t[:, 0]
        dups += len(ts) - len(np.unique(ts))
        backwards += int((np.diff(ts) < 0).sum())
        gaps += int((np.diff(np.unique(ts)) > 1.5 * PARAMS["interval"]).sum())
    assert dups > 0 and gaps > 0 and backwards > 0
    rows = sum(len(read(p)[1]) for p in sample_files(out))
    assert dups < 0.01 * rows


def test_labels_match_files_and_campaigns_are_only_in_test(fleet):
    out, labels = fleet
    test_start = labels["splits"]["test"]["start"]
    stamps = {}
    for split in ("train", "test"):
        for path in sample_files(out, f"{split}/*.csv"):
            stamps[(split, path.stem)] = set(read(path)[1][:, 0].tolist())
    campaigns = [e for e in labels["events"] if e["malicious"]]
    assert campaigns
    assert {e["kind"] for e in campaigns} <= set(CAMPAIGN_KINDS)
    assert {e["kind"] for e in labels["events"] if not e["malicious"]} <= set(BENIGN_KINDS)
    assert {e["host"] for e in campaigns} != set(labels["hosts"])  # some hosts stay clean
    for e in labels["events"]:
        assert e["start"] <= e["end"]
        assert e["start"] in stamps[(e["split"], e["host"])]  # first affected sample exists
        assert e["end"] in stamps[(e["split"], e["host"])]
        assert (e["start"] >= test_start) == (e["split"] == "test")
    for e in campaigns:
        assert e["split"] == "test" and e["start"] >= test_start
        assert e["end"] - e["start"] >= 35 * 60 or e["kind"] in ("night_only", "busy_hours")


def test_full_speed_campaign_stands_out_from_same_hour_baseline(fleet):
    out, labels = fleet
    found = [e for e in labels["events"] if e["kind"] == "full_speed"]
    assert found, "this seed should include a full_speed campaign"
    for e in found:
        _, train = read(out / "train" / f"{e['host']}.csv")
        _, test = read(out / "test" / f"{e['host']}.csv")
        ts = column(test, "timestamp")
        inside = (ts >= e["start"]) & (ts <= e["end"])
        hours = np.unique(((ts[inside] % 86400) // 3600).astype(int))
        train_hour = (column(train, "timestamp") % 86400) // 3600
        baseline = column(train, "cpu_percent")[np.isin(train_hour, hours)]
        during = column(test, "cpu_percent")[inside]
        assert np.median(during) > np.percentile(baseline, 50) + 30
        # one process dominates: the miner's threads show up as one process in top
        cores = labels["hosts"][e["host"]]["cores"]
        assert np.median(column(test, "top_proc_cpu_percent")[inside]) > 50 * cores


def test_after_cron_starts_right_after_a_labelled_cron(tmp_path):
    labels = simulate(tmp_path, **{**PARAMS, "hosts": 12, "seed": 0})
    after = [e for e in labels["events"] if e["kind"] == "after_cron"]
    assert after, "seed 0 with 12 hosts plans an after_cron campaign"
    for e in after:
        ends = [
            c["end"]
            for c in labels["events"]
            if c["host"] == e["host"] and c["kind"] in ("cron", "backup") and c["end"] <= e["start"]
        ]
        assert ends and e["start"] - max(ends) <= 2 * PARAMS["interval"] + 0.1


def test_span_reports_first_and_last_sample_touched():
    clock = _Clock(n=10, interval=30.0, start=0.0, n_train=5)
    sl, frac, alive = clock.span(45.0, 100.0)  # from mid-sample 2 to mid-sample 4
    assert (sl.start, sl.stop) == (2, 5)
    assert frac.tolist() == pytest.approx([0.5, 1.0, 10 / 30])
    assert alive.tolist() == [True, True, False]
    _, frac, alive = clock.span(290.0, 1000.0)  # starts after the last sample: touches none
    assert len(frac) == 0 and len(alive) == 0


def test_bad_input_raises_input_error(tmp_path):
    with pytest.raises(InputError, match="host"):
        simulate(tmp_path, hosts=0)
    with pytest.raises(InputError, match="interval"):
        simulate(tmp_path, interval=0.1)
    with pytest.raises(InputError):
        simulate(tmp_path, train_days=0)
    assert not any(tmp_path.iterdir())


def test_cli_run_writes_files_and_summary(tmp_path):
    out = tmp_path / "fleet"
    done = subprocess.run(
        [
            MINERWATCH,
            "simulate",
            "--hosts",
            "2",
            "--train-days",
            "0.5",
            "--test-days",
            "1",
            "--seed",
            "5",
            "--interval",
            "120",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    names = ["db-01.csv", "db-01.procs.csv", "web-01.csv", "web-01.procs.csv"]
    assert sorted(p.name for p in (out / "train").iterdir()) == names
    assert sorted(p.name for p in (out / "test").iterdir()) == names
    labels = json.loads((out / "labels.json").read_text())
    assert labels["parameters"]["seed"] == 5 and labels["parameters"]["interval"] == 120
    said = done.stdout
    assert "2 hosts" in said and "database 1" in said and "web 1" in said
    bad = subprocess.run(
        [MINERWATCH, "simulate", "--hosts", "0", "--output", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "--hosts" in bad.stderr


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        # a typo'd count: about 116 TB; it used to start writing, host after host
        (["--hosts", "100000", "--train-days", "365"], "expected room for about "),
        # 1000 days of one host every 5 s: about 170 GB of memory to generate it, 2.4 GB of disk
        (
            ["--hosts", "1", "--train-days", "1000", "--interval", "5", "--no-procs"],
            "a host that fits in memory",
        ),
        (["--train-days", "inf"], "finite days, got inf/3.0"),  # was OverflowError, exit 1
    ],
)
def test_a_fleet_that_cannot_fit_is_refused_before_anything_is_written(tmp_path, flags, said):
    out = tmp_path / "fleet"
    done = subprocess.run(
        [MINERWATCH, "simulate", *flags, "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    assert said in done.stderr and "Traceback" not in done.stderr
    assert not out.exists() or not any(out.rglob("*.csv"))


def test_readme_documents_every_column_with_its_unit():
    text = README.read_text()
    for name, unit in METRICS.items():
        line = next((ln for ln in text.splitlines() if f"`{name}`" in ln), None)
        assert line is not None, name
        assert unit in line, name
    assert f"SCHEMA_VERSION = {SCHEMA_VERSION}" in text or f"version {SCHEMA_VERSION}" in text
    for kind in (*CAMPAIGN_KINDS, *BENIGN_KINDS, *ARCHETYPES, *IDENTITY_KINDS):
        assert f"`{kind}`" in text, kind
