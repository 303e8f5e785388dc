"""``minerwatch evaluate --smd`` on any folder in SMD's layout (any number of columns), and exit 2
naming the file, line and what was expected when the layout is broken."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

MINERWATCH = str(Path(sys.executable).with_name("minerwatch"))
ROWS = 300


def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as fh:
        fh.write("".join(f"{line}\n" for line in lines))


def _matrix(arr):
    return [",".join(f"{v:.6f}" for v in row) for row in arr]


def make_machine(root, name, cols, seed, anomaly=(150, 180)):
    """A machine whose columns follow two loads; the anomaly breaks their relation."""
    rng = np.random.default_rng(seed)
    mix = rng.uniform(0.0, 1.0, size=(2, cols))
    mix /= mix.sum(axis=0)

    def part(n):
        load = rng.uniform(0.2, 0.8, size=(n, 2))
        return load @ mix + rng.normal(scale=0.01, size=(n, cols))

    test = part(ROWS)
    test[anomaly[0] : anomaly[1], : cols // 2] = 0.98
    label = np.zeros(ROWS, int)
    label[anomaly[0] : anomaly[1]] = 1
    _write(root / "train" / f"{name}.txt.gz", _matrix(part(ROWS)))
    _write(root / "test" / f"{name}.txt.gz", _matrix(test))
    _write(root / "test_label" / f"{name}.txt.gz", [str(v) for v in label])


def evaluate(root, *extra):
    cmd = [MINERWATCH, "evaluate", "--smd", str(root), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_any_number_of_columns(tmp_path):
    make_machine(tmp_path, "box-19", 19, seed=1)
    make_machine(tmp_path, "box-7", 7, seed=2, anomaly=(60, 80))
    done = evaluate(tmp_path, "--json", "--quiet")
    assert done.returncode == 0, done.stderr
    res = json.loads(done.stdout)
    assert set(res) >= {"box-19", "box-7"} and res["meta"]["machines"] == 2
    for name, labelled in (("box-19", 30), ("box-7", 20)):
        assert res[name]["event_recall"] == 1.0  # half the columns pinned at 0.98
        assert res[name]["tp"] + res[name]["fn"] == labelled
    assert "naive_iforest" in res["reference"]


def _replace_line(path, lineno, text):
    with gzip.open(path, "rt") as fh:
        lines = fh.read().splitlines()
    lines[lineno - 1] = text
    _write(path, lines)


BROKEN = {
    "ragged row": (
        lambda r: _replace_line(r / "test" / "box.txt.gz", 5, ",".join(["0.5"] * 18)),
        "test/box.txt.gz:5: expected 19 columns",
    ),
    "wider test": (
        lambda r: _write(r / "test" / "box.txt.gz", [",".join(["0.5"] * 20)] * ROWS),
        "test/box.txt.gz:1: expected 19 columns",
    ),
    "not a number": (
        lambda r: _replace_line(r / "train" / "box.txt.gz", 7, "0.1," * 18 + "oops"),
        "train/box.txt.gz:7: expected 19 columns (comma-separated numbers)",
    ),
    "labels short": (
        lambda r: _write(r / "test_label" / "box.txt.gz", ["0"] * (ROWS - 1)),
        f"test_label/box.txt.gz: expected {ROWS} labels (one per row of test/box)",
    ),
    "label not 0/1": (
        lambda r: _replace_line(r / "test_label" / "box.txt.gz", 3, "2"),
        "test_label/box.txt.gz: expected labels 0 or 1, got 2 in row 3",
    ),
    "no test_label/": (
        lambda r: [p.unlink() for p in (r / "test_label").iterdir()] + [(r / "test_label").rmdir()],
        "test_label: expected a folder in SMD's layout (train/, test/, test_label/)",
    ),
    "infinite cell": (
        lambda r: _replace_line(r / "test" / "box.txt.gz", 9, "0.1," * 18 + "inf"),
        "test/box.txt.gz:9: expected finite numbers (nan for a missing value)",
    ),
    "empty test": (
        lambda r: _write(r / "test" / "box.txt.gz", []),
        "test/box.txt.gz: expected at least one row",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_layout_exits_2_naming_file_and_expectation(tmp_path, case):
    make_machine(tmp_path, "box", 19, seed=3)
    make_machine(tmp_path, "aaa", 5, seed=4)  # trained first if the check came late
    breaks, message = BROKEN[case]
    breaks(tmp_path)
    done = evaluate(tmp_path)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert "smd 1/" not in done.stderr  # the layout is checked before any training


def test_a_machine_missing_a_file_is_left_out_and_said(tmp_path):
    """A machine whose test_label file was lost used to vanish from the figures unsaid."""
    make_machine(tmp_path, "box", 5, seed=3)
    make_machine(tmp_path, "aaa", 5, seed=4)
    make_machine(tmp_path, "zzz", 5, seed=5)
    (tmp_path / "test_label" / "aaa.txt.gz").unlink()
    (tmp_path / "train" / "zzz.txt.gz").unlink()
    (tmp_path / "README.md").write_text("extra files beside the layout are fine\n")
    done = evaluate(tmp_path, "--json", "--quiet")
    assert done.returncode == 0, done.stderr
    res = json.loads(done.stdout)
    assert res["meta"]["machines"] == 1 and "box" in res and "aaa" not in res
    assert f"note: {tmp_path}: machine 'aaa': no test_label/aaa.txt[.gz]: left out" in done.stderr
    assert "machine 'zzz': no train/zzz.txt[.gz]: left out" in done.stderr
    (tmp_path / "test_label" / "box.txt.gz").unlink()
    done = evaluate(tmp_path)
    assert done.returncode == 2 and "no machine with all three (machine 'aaa': no " in done.stderr


def test_nan_cells_are_read_as_missing_values_and_said(tmp_path):
    """A dump with gaps (nan) was read without a word; the figures are then of fewer values."""
    make_machine(tmp_path, "box", 5, seed=3)
    _replace_line(tmp_path / "train" / "box.txt.gz", 4, "nan,0.5,nan,0.5,0.5")
    _replace_line(tmp_path / "train" / "box.txt.gz", 8, "0.5,0.5,0.5,0.5,nan")
    done = evaluate(tmp_path, "--json", "--quiet")
    assert done.returncode == 0, done.stderr
    path = tmp_path / "train" / "box.txt.gz"
    assert f"note: {path}: 3 nan cells in 2 rows, read as missing values" in done.stderr
    assert "test/box.txt.gz: " not in done.stderr  # the test file has none
    assert json.loads(done.stdout)["box"]["event_recall"] == 1.0


def test_too_short_a_machine_is_named_by_its_file(tmp_path):
    make_machine(tmp_path, "box", 5, seed=3)
    _write(tmp_path / "train" / "box.txt.gz", _matrix(np.full((5, 5), 0.5)))
    done = evaluate(tmp_path, "--quiet")
    assert done.returncode == 2, done.stderr
    assert f"{tmp_path / 'train' / 'box.txt.gz'}: expected at least 30 complete" in done.stderr


def test_smd_dismissals_learn_an_unlabelled_new_level(tmp_path):
    """The benchmark's oracle responder dismisses the false alarms of a level the test half
    moves to; the retrained model stops paging on it and still catches the labelled fault."""
    rng = np.random.default_rng(5)
    cols = 6
    mix = rng.uniform(0.0, 1.0, size=(2, cols))
    mix /= mix.sum(axis=0)

    def part(n):
        return rng.uniform(0.2, 0.8, size=(n, 2)) @ mix + rng.normal(scale=0.01, size=(n, cols))

    test = part(ROWS)
    test[60:, 0] += 0.6  # a lasting new level of one column: not labelled
    test[250:280, : cols // 2] = 3.0  # the labelled fault
    label = np.zeros(ROWS, int)
    label[250:280] = 1
    _write(tmp_path / "train" / "box-6.txt.gz", _matrix(part(ROWS)))
    _write(tmp_path / "test" / "box-6.txt.gz", _matrix(test))
    _write(tmp_path / "test_label" / "box-6.txt.gz", [str(v) for v in label])
    cmd = [sys.executable, "-m", "minerwatch.bench.smd_dismissals", "--smd", str(tmp_path)]
    done = subprocess.run(
        [*cmd, "--respond-minutes", "5", "--json"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    res = json.loads(done.stdout)["machines"]["box-6"]
    base, dismissed = res["minerwatch"], res["dismissed"]
    assert base["fp"] > 50  # the new level pages for the rest of the test
    assert res["retrains"] >= 1
    assert dismissed["fp"] < base["fp"] / 2
    assert dismissed["event_recall"] == 1.0 and dismissed["f1"] > base["f1"]
    table = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert table.returncode == 0 and "box-6" in table.stdout and "mean" in table.stdout
    broken = subprocess.run(
        [*cmd[:-1], str(tmp_path / "none")], capture_output=True, text=True, timeout=60
    )
    assert broken.returncode == 2 and "none" in broken.stderr
    assert "Traceback" not in broken.stderr


def test_smd_smoothing_reports_what_evaluate_reports(tmp_path):
    """Unsmoothed (one window), the best F1 and the honest F1 are evaluate's own figures
    for the machine; smoothing only looks back, so its span changes the figures."""
    make_machine(tmp_path, "box-5", 5, seed=3, anomaly=(100, 160))
    cmd = [sys.executable, "-m", "minerwatch.bench.smd_smoothing", "--smd", str(tmp_path)]
    done = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)["machines"]["box-5"]
    ref = json.loads(evaluate(tmp_path, "--json", "--quiet").stdout)["box-5"]
    assert got["best_mean1"] == pytest.approx(ref["best_f1"])
    assert got["best_min1"] == got["best_mean1"]
    assert got["f1"] == pytest.approx(ref["f1"])
    assert {"best_mean3", "best_min10"} <= set(got) and 0 < got["best_mean10"] <= 1
    table = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert table.returncode == 0 and "box-5" in table.stdout and "best_min3" in table.stdout
    for bad in ([str(tmp_path / "none")], [str(tmp_path), "--spans", "0"]):
        broken = subprocess.run([*cmd[:-1], *bad], capture_output=True, text=True, timeout=60)
        assert broken.returncode == 2 and "Traceback" not in broken.stderr


def test_trailing_smoothing_looks_only_back():
    from minerwatch.bench.smd_smoothing import trailing

    s = np.array([0.0, 3.0, 0.0, 6.0])
    np.testing.assert_allclose(trailing(s, 2, "mean"), [0.0, 1.5, 1.5, 3.0])
    np.testing.assert_allclose(trailing(s, 3, "min"), [0.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(trailing(s, 1, "mean"), s)


def test_smd_recentre_absorbs_a_lasting_level_after_its_lag(tmp_path):
    """The tried recentring: within the lag a new level is kept (only the training tail's small
    drift is taken off), once it has lasted a whole stretch it is moved back to the training
    median; the plain figure is evaluate's."""
    from minerwatch.bench.public import load_smd
    from minerwatch.bench.smd_recentre import recentred

    make_machine(tmp_path, "box-6", 4, seed=5)
    case = load_smd(tmp_path, "box-6")
    n = len(case.train.timestamps)
    case.test.values[:, 0] += 5.0  # a lasting new level from the test's first row
    moved = recentred(case, lag=10, span=20)
    assert np.abs(moved.test.values[:10] - case.test.values[:10]).max() < 0.2
    assert abs(np.median(moved.test.values[40:, 0]) - np.median(case.train.values[:, 0])) < 0.2
    assert moved.train.values.shape == (n, 4)

    cmd = [sys.executable, "-m", "minerwatch.bench.smd_recentre", "--smd", str(tmp_path)]
    done = subprocess.run([*cmd, "--lag", "30m", "--span", "30m"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)["machines"]["box-6"]
    ref = json.loads(evaluate(tmp_path, "--json", "--quiet").stdout)["box-6"]
    assert got["f1"] == pytest.approx(ref["f1"]) and 0 <= got["f1_recentred"] <= 1
    for bad in (["--lag", "0"], ["--span", "soon"]):
        broken = subprocess.run([*cmd, *bad], capture_output=True, text=True, timeout=60)
        assert broken.returncode == 2 and "Traceback" not in broken.stderr, broken.stderr
