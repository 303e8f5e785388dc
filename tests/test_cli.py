import csv
import subprocess
import sys

import pytest
from synth import T0, host_series, write_csv


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "minerwatch", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    d = tmp_path_factory.mktemp("fleet")
    train = [host_series("web-1", days=2, interval=30, seed=1),
             host_series("db-1", days=2, interval=30, seed=2)]
    write_csv(d / "train.csv", train)
    start = T0 + 2 * 86400
    test = [host_series("web-1", days=0.5, interval=30, seed=3, start=start,
                        plateau=(3 * 3600, 3600)),
            host_series("new-9", days=0.2, interval=30, seed=4, start=start)]
    write_csv(d / "test.csv", test)
    return d


def test_train_then_score(fleet, tmp_path):
    models = tmp_path / "models"
    r = run("train", str(fleet / "train.csv"), "--models", str(models))
    assert r.returncode == 0, r.stderr
    assert "web-1" in r.stdout and "threshold" in r.stdout
    out = tmp_path / "scores.csv"
    r = run("score", str(fleet / "test.csv"), "--models", str(models), "--output", str(out))
    assert r.returncode == 0, r.stderr
    assert "skipped host new-9" in r.stderr
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["host", "window_start", "window_end", "score", "threshold", "alert",
                             "top_features"]
    assert {r["host"] for r in rows} == {"web-1"}
    alerted = [r for r in rows if r["alert"] == "1"]
    t0 = T0 + 2 * 86400 + 3 * 3600
    assert alerted and float(alerted[0]["window_end"]) - t0 <= 300
    assert all(float(r["window_end"]) > t0 for r in alerted)
    assert all(0 <= float(r["score"]) <= 1 for r in rows)


def test_bad_input_exit_code_2(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,host,cpu_percent\n1,a,x\n")
    r = run("train", str(bad), "--models", str(tmp_path / "m"))
    assert r.returncode == 2
    assert f"{bad}:2" in r.stderr and "Traceback" not in r.stderr


def test_help_on_every_command():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("collect", "train", "score", "simulate", "evaluate", "serve", "config",
                "throttle", "evidence"):
        h = run(cmd, "--help")
        assert h.returncode == 0 and "usage: minerwatch " + cmd in h.stdout


def test_collect_records_this_machine(tmp_path):
    out = tmp_path / "me.csv"
    r = run("collect", "--interval", "0.2", "--duration", "1", "--output", str(out),
            "--host", "me")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open()))
    assert 3 <= len(rows) <= 6
    assert {row["host"] for row in rows} == {"me"}
    assert all(0 <= float(row["cpu_percent"]) <= 100 for row in rows)
