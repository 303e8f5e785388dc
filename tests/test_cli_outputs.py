"""Where commands write, through the real ``minerwatch`` command: never over a device, FIFO or
the inputs, through a symlink to its target, never mixing an earlier run's files with a new
one's, and an unusable output is said before the work, naming the path the user gave."""

from __future__ import annotations

import csv
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from entry import run


def refused(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    for word in words:
        assert word in r.stderr, r.stderr


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A one-host simulation and its models (one day of training, half a day of test)."""
    root = tmp_path_factory.mktemp("sim")
    data, models = root / "data", root / "models"
    r = run("simulate", "--hosts", "1", "--train-days", "1", "--test-days", "0.5",
            "--seed", "3", "--output", data)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert run("train", data / "train", "--models", models).returncode == 0
    return data, models


def test_score_refuses_a_fifo_and_writes_through_a_symlink(sim, tmp_path):
    data, models = sim
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    refused(run("score", data / "test", "--models", models, "--output", fifo), "FIFO", str(fifo))
    assert stat.S_ISFIFO(fifo.lstat().st_mode), "the FIFO was replaced"

    target, link = tmp_path / "target.csv", tmp_path / "link.csv"
    link.symlink_to(target)
    r = run("score", data / "test", "--models", models, "--output", link)
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    with target.open() as fh:
        assert next(csv.reader(fh))[:4] == ["host", "window_start", "window_end", "score"]


def test_score_never_writes_over_or_among_its_inputs(sim, tmp_path):
    data, models = sim
    (host,) = [p for p in (data / "test").glob("*.csv") if not p.name.endswith(".procs.csv")]
    before = host.read_bytes()
    refused(run("score", host, "--models", models, "--output", host), "outside the inputs")
    assert host.read_bytes() == before
    beside = data / "test" / "scores.csv"
    refused(run("score", data / "test", "--models", models, "--output", beside), "input folder")
    assert not beside.exists()
    assert sorted(p.name for p in (data / "test").iterdir()) == sorted(
        [host.name, host.name.replace(".csv", ".procs.csv")]
    )


def test_an_output_that_cannot_be_created_is_named_as_given(sim, tmp_path):
    data, models = sim
    where = "/proc/minerwatch-scores.csv"  # a folder nobody can create files in
    r = run("score", data / "test", "--models", models, "--output", where)
    refused(r, f"{where}: expected a file this user can create")
    assert ".tmp" not in r.stderr
    r = run("evaluate", "--data", data, "--models", models, "--output", "/proc/minerwatch-eval")
    refused(r, "/proc/minerwatch-eval: expected a folder this user can create")
    assert "evaluate 1/" not in r.stderr, "refused before the work, not after"


def test_collect_appends_only_to_its_own_kind_of_file(tmp_path):
    table = tmp_path / "h.procs.csv"
    table.write_text("a,b\n1,2\n")
    r = run("collect", "--interval", "200ms", "--duration", "400ms", "--output", tmp_path / "h.csv")
    refused(r, f"{table}:1: expected the process table header")
    assert table.read_text() == "a,b\n1,2\n" and not (tmp_path / "h.csv").exists()
    for name in ("h.parquet", "h2.procs.csv"):
        r = run("collect", "--interval", "200ms", "--duration", "400ms",
                "--output", tmp_path / name)  # fmt: skip
        refused(r, "a file name ending in .csv (not .procs.csv)")
        assert not (tmp_path / name).exists()
    table.unlink()
    for _ in range(2):  # appending to its own files twice: one header each
        r = run("collect", "--interval", "200ms", "--duration", "400ms",
                "--output", tmp_path / "h.csv")  # fmt: skip
        assert r.returncode == 0, r.stderr
    assert table.read_text().count("timestamp,host,pid") == 1


def test_simulate_replaces_what_it_wrote_and_refuses_other_files(tmp_path):
    out = tmp_path / "sim"
    r = run("simulate", "--hosts", "3", "--train-days", "0.5", "--test-days", "0.2",
            "--output", out)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert len(list((out / "train").glob("*.procs.csv"))) == 3
    r = run("simulate", "--hosts", "1", "--train-days", "0.5", "--test-days", "0.2",
            "--start", "2026-02-01T00:00Z", "--output", out)  # fmt: skip
    assert r.returncode == 0 and "wrote 1 host to" in r.stdout, r.stderr
    labels = json.loads((out / "labels.json").read_text())
    assert labels["start"] == 1769904000.0  # 2026-02-01T00:00Z
    for split in ("train", "test"):
        names = sorted(p.name for p in (out / split).iterdir())
        assert names == sorted(f"{h}{s}" for h in labels["hosts"] for s in (".csv", ".procs.csv"))
    foreign = out / "train" / "mine.csv"
    foreign.write_text("timestamp,host,cpu_percent\n1,x,5\n")
    r = run("simulate", "--hosts", "1", "--train-days", "0.5", "--output", out)
    refused(r, "telemetry files of another origin", str(foreign))
    assert foreign.exists() and (out / "labels.json").exists()
    refused(run("simulate", "--start", "soon", "--output", out), "ISO 8601")


def test_evaluate_refuses_models_cut_into_other_windows(sim, tmp_path):
    data, _ = sim
    other = tmp_path / "m5"
    assert run("train", data / "train", "--models", other, "--window", "5m").returncode == 0
    r = run("evaluate", "--data", data, "--models", other, "--json")
    refused(r, "expected a model with 1m windows and hop 1m", "trained with 5m")
    r = run("evaluate", "--data", data, "--models", other, "--window", "5m", "--json", "--quiet")
    assert r.returncode == 0, r.stderr  # --hop defaults to the window, as in train
    assert json.loads(r.stdout)["meta"]["window_s"] == 300.0
