"""Reading a fleet a few hosts at a time (``TelemetryGroups``): files that share a host are read
together, each host whole and the same as reading everything at once; ``train`` and ``score``
read that way through the real command, and a bad file found half-way keeps what was trained."""

import csv
import itertools
import json
import re
import signal
import subprocess
import time

import numpy as np
import pytest
from entry import ENTRY, run, usage_error
from synth import host_series, write_csv

from minerwatch.baseline.store import list_hosts
from minerwatch.features.errors import InputError
from minerwatch.features.io import TelemetryGroups, read_telemetry


def write_procs(path, series, name="java"):
    """One process row per sample of ``series`` (the busiest process)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "host", "pid", "name", "exe", "user", "cpu_percent"])
        for t, cpu in zip(series.timestamps, series.column("top_proc_cpu_percent"), strict=True):
            w.writerow(
                [f"{t:.3f}", series.host, 100, name, f"/usr/bin/{name}", "app", f"{cpu:.3g}"]
            )


@pytest.fixture
def folder(tmp_path):
    """a (samples + process table), b, one file with c and d, a second file of c's later rows."""
    d = tmp_path / "in"
    d.mkdir()
    a = host_series("a", days=0.1, interval=30, seed=1)
    write_csv(d / "a.csv", [a])
    write_procs(d / "a.procs.csv", a)
    write_csv(d / "b.csv", [host_series("b", days=0.1, interval=30, seed=2)])
    c = host_series("c", days=0.2, interval=30, seed=3)
    half = len(c.timestamps) // 2
    early = host_series("c", days=0.1, interval=30, seed=3)
    write_csv(d / "cd.csv", [early, host_series("d", days=0.1, interval=30, seed=4)])
    late = host_series("c", days=0.1, interval=30, seed=5, start=c.timestamps[half])
    write_csv(d / "z-c-later.csv", [late])
    return d


def batches(groups):
    return [sorted(batch) for batch in groups]


def test_each_host_is_read_whole_and_as_reading_everything_at_once(folder):
    whole = read_telemetry([folder])
    groups = TelemetryGroups([folder])
    assert groups.hosts == 4  # known from the scan, before any group is read
    seen = {}
    for batch in groups:
        seen.update(batch)
        assert len(batch) < 4  # never the whole fleet at once
    assert sorted(seen) == sorted(whole) == ["a", "b", "c", "d"]
    for host, series in whole.items():
        got = seen[host]
        np.testing.assert_array_equal(got.timestamps, series.timestamps)
        np.testing.assert_array_equal(got.values, series.values)
        assert got.columns == series.columns and got.source == series.source
    assert len(seen["c"].timestamps) == len(whole["c"].timestamps) > 300  # both files of c
    assert seen["a"].procs is not None and len(seen["a"].procs) == len(whole["a"].procs)


def test_files_that_share_a_host_are_read_together(folder):
    # cd.csv holds c and d: it is cut by host, c's rows read with z-c-later.csv's
    assert batches(TelemetryGroups([folder])) == [["a"], ["b"], ["c"], ["d"]]
    # as many hosts as train at once, whole groups
    assert batches(TelemetryGroups([folder], least=2)) == [["a", "b"], ["c", "d"]]
    assert batches(TelemetryGroups([folder], least=3)) == [["a", "b", "c"], ["d"]]
    assert batches(TelemetryGroups([folder], least=10)) == [["a", "b", "c", "d"]]


def test_a_file_that_cannot_be_scanned_is_read_with_everything_and_named(folder):
    (folder / "m.csv").write_bytes(b"\x1f\x8b\x08\x00 not csv at all")
    groups = TelemetryGroups([folder])
    assert len(groups.groups) == 1
    with pytest.raises(InputError) as err:
        list(groups)
    assert str(folder / "m.csv") in str(err.value) and "gzip" in str(err.value)


def test_a_process_table_of_a_host_without_samples_names_every_host_with_samples(folder):
    write_procs(folder / "y.procs.csv", host_series("y", days=0.05, interval=30, seed=7))
    notes = []
    for _ in TelemetryGroups([folder], note=notes.append):
        pass
    (note,) = [n for n in notes if "y.procs.csv" in n]
    assert "hosts with samples: a, b, c, d" in note


def test_train_keeps_the_models_of_hosts_trained_before_a_bad_file(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(2):
        write_csv(d / f"h{i}.csv", [host_series(f"h{i}", days=1, interval=30, seed=i)])
    bad = d / "zz.csv"
    bad.write_text("timestamp,host,cpu_percent\n0,zz,1\n30,zz,abc\n")
    models = tmp_path / "models"
    r = run("train", d, "--models", models)
    usage_error(r, f"{bad}:3", "the models of 2 hosts trained before this error are saved")
    assert sorted(list_hosts(models)) == ["h0", "h1"]
    hint = re.search(r"to train the rest, run the same command with (--skip-trained-since) (\S+)",
                     r.stderr)  # fmt: skip
    assert hint, r.stderr
    saved = {h: (models / h / "meta.json").read_bytes() for h in ("h0", "h1")}

    # the file fixed, the same command with the flag trains zz alone; h1's file is not even
    # read (a bad value after its host column, which the scan reads, would stop it)
    write_csv(bad, [host_series("zz", days=1, interval=30, seed=7)])
    h1 = d / "h1.csv"
    h1.write_text(re.sub(r",h1,[^,]*", ",h1,abc", h1.read_text(), count=1))
    r = run("train", d, "--models", models, *hint.groups())
    assert r.returncode == 0, r.stderr
    assert f"skipping 2 hosts with a model saved since {hint[2]}: h0, h1" in r.stderr
    assert "zz" in r.stdout and "h0" not in r.stdout
    assert {h: (models / h / "meta.json").read_bytes() for h in ("h0", "h1")} == saved
    r = run("train", d, "--models", models, *hint.groups())
    assert r.returncode == 0 and "all 3 hosts have a model saved since" in r.stderr, r.stderr
    write_csv(h1, [host_series("h1", days=1, interval=30, seed=1)])
    bad.unlink()
    out = tmp_path / "scores.csv"
    r = run("score", d, "--models", models, "--output", out)
    assert r.returncode == 0, r.stderr
    with open(out) as fh:
        hosts = {row["host"] for row in csv.DictReader(fh)}
    assert hosts == {"h0", "h1"}
    assert "scored 2880 windows of 2 hosts" in r.stderr


def test_only_reads_the_files_holding_the_hosts_asked_for(folder):
    (folder / "e.csv").write_text("timestamp,host,cpu_percent\n0,e,1\n30,e,abc\n")  # bad, unread
    got = TelemetryGroups([folder]).only(["c", "nobody"])
    assert sorted(got) == ["c"]
    assert got["c"].source == f"{folder / 'cd.csv'}, {folder / 'z-c-later.csv'}"
    with pytest.raises(InputError, match="e.csv:3"):
        TelemetryGroups([folder]).only(["e"])


def test_ctrl_c_right_after_a_save_still_counts_the_saved_model(tmp_path):
    """Ctrl-C after a model's files are in place but before the run counted it (here while
    the save removes 20,000 stale model files of the host): the model is on disk, so the
    line naming what is saved must say so; it said nothing, the model kept unsaid."""
    d = tmp_path / "in"
    d.mkdir()
    write_csv(d / "h00.csv", [host_series("h00", days=2, interval=30, seed=0)])
    folder = tmp_path / "models" / "h00"
    folder.mkdir(parents=True)
    for i in range(20_000):
        (folder / f"model-{i:016x}.npz").touch()
    proc = subprocess.Popen(
        [*ENTRY, "train", str(d), "--models", str(tmp_path / "models")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (folder / "meta.json").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    assert len(list(folder.glob("model-*.npz"))) > 1, "the save ended before Ctrl-C: no test"
    assert "the models of 1 hosts trained before this interruption are saved" in err, err


def test_an_interrupted_train_says_what_is_saved_and_how_to_finish(tmp_path):
    """Ctrl-C once a model is saved: exit 130, and a line naming how many models are kept and
    the flag that trains the rest."""
    d = tmp_path / "in"
    d.mkdir()
    for i in range(12):
        write_csv(d / f"h{i:02d}.csv", [host_series(f"h{i:02d}", days=2, interval=30, seed=i)])
    models = tmp_path / "models"
    proc = subprocess.Popen(
        [*ENTRY, "train", str(d), "--models", str(models)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        # Ctrl-C as at a terminal (a shell's background job, as CI runs, ignores SIGINT)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(models.glob("*/meta.json")) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    saved = len(list_hosts(models))
    assert 1 <= saved < 12
    assert re.search(
        rf"the models of {saved} hosts trained before this interruption are saved in "
        rf"{re.escape(str(models))}; to train the rest, run the same command with "
        r"--skip-trained-since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", err, re.M
    ), err  # fmt: skip


def one_file(folder, name, sources):
    """``sources`` joined into ``folder/name``, header once, rows interleaved by line: a fleet
    exported whole, ordered by time."""
    texts = [src.read_text().splitlines() for src in sources]
    rows = [row for group in itertools.zip_longest(*(t[1:] for t in texts)) for row in group if row]
    (folder / name).write_text("\n".join([texts[0][0], *rows]) + "\n")


def test_a_fleet_in_one_file_is_read_a_host_at_a_time_and_trains_and_scores_the_same(
    tmp_path, monkeypatch
):
    """One CSV of samples and one process table holding three hosts: read one host at a time
    (not the whole file), and ``train``/``score`` give what files of one host each give; the
    temporary files of the hosts' rows are removed."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    apart, joined = tmp_path / "apart", tmp_path / "joined"
    apart.mkdir(), joined.mkdir()
    for i, host in enumerate(("a", "b", "c")):
        series = host_series(host, days=1, interval=30, seed=i)
        write_csv(apart / f"{host}.csv", [series])
        write_procs(apart / f"{host}.procs.csv", series, name=f"svc{i}")
    one_file(joined, "fleet.csv", sorted(apart.glob("?.csv")))
    one_file(joined, "fleet.procs.csv", sorted(apart.glob("?.procs.csv")))
    assert batches(TelemetryGroups([joined / "fleet.csv", joined / "fleet.procs.csv"])) == [
        ["a"], ["b"], ["c"]
    ]  # fmt: skip
    assert batches(TelemetryGroups([joined], least=2)) == [["a", "b"], ["c"]]
    outputs = {}
    for d in (apart, joined):
        models = tmp_path / f"models-{d.name}"
        r = run("train", d, "--models", models)
        assert r.returncode == 0, r.stderr
        r = run("score", d, "--models", models, "--output", tmp_path / f"{d.name}.csv")
        assert r.returncode == 0, r.stderr
        outputs[d.name] = (tmp_path / f"{d.name}.csv").read_bytes()
        for host in ("a", "b", "c"):
            meta = json.loads((models / host / "meta.json").read_text())
            for key in ("created_at", "signature"):
                meta.pop(key)
            arrays = (models / host / meta["model_file"]).read_bytes()
            outputs[f"{d.name}-{host}"] = (meta, arrays)
            assert meta["process_identities"], meta  # the process table was read
    assert outputs["apart"] == outputs["joined"]
    for host in ("a", "b", "c"):
        assert outputs[f"apart-{host}"] == outputs[f"joined-{host}"]
    assert not list(temp.iterdir())


def test_a_bad_row_in_a_fleet_in_one_file_names_its_line_after_the_hosts_before_it(
    tmp_path, monkeypatch
):
    """Hosts of one file are trained one at a time: a bad cell in the last host's rows stops
    ``train`` naming the file and the line in that file, the models before it kept."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    for i, host in enumerate(("a", "b", "c")):
        write_csv(tmp_path / f"{host}.part", [host_series(host, days=1, interval=30, seed=i)])
    fleet = tmp_path / "in" / "fleet.csv"
    fleet.parent.mkdir()
    one_file(fleet.parent, fleet.name, sorted(tmp_path.glob("*.part")))
    lines = fleet.read_text().splitlines()
    at = max(n for n, text in enumerate(lines) if ",c," in text) - 30  # a row of c, mid-file
    lines[at] = re.sub(r",c,[^,]*", ",c,abc", lines[at])
    fleet.write_text("\n".join(lines) + "\n")
    models = tmp_path / "models"
    r = run("train", fleet, "--models", models)
    usage_error(r, f"{fleet}:{at + 1}: expected a number in 'cpu_percent', got 'abc'",
                "the models of 2 hosts trained before this error are saved")  # fmt: skip
    assert sorted(list_hosts(models)) == ["a", "b"]
    assert not list(temp.iterdir())
    # read in groups, the same line is named
    with pytest.raises(InputError, match=rf"{re.escape(str(fleet))}:{at + 1}: "):
        list(TelemetryGroups([fleet]))
