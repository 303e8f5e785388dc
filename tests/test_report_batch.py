"""``minerwatch report --scores``: the incident report of an episode found in batch mode, from
the real ``train`` and ``score`` outputs and the telemetry (with its process table) scored."""

from __future__ import annotations

import csv
import json

import pytest
from entry import run
from synth import T0, host_series, write_csv

from minerwatch.features.procs import ProcessRows, write_procs_csv

START = T0 + 2 * 86400
PLATEAU = (3 * 3600, 3600)  # the miner, from 03:00 for an hour of the test day


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    write_csv(d / "train.csv", [host_series("web-1", days=2, interval=30, seed=1)])
    tele = d / "telemetry"
    tele.mkdir()
    test = host_series("web-1", days=0.5, interval=30, seed=3, start=START, plateau=PLATEAU)
    write_csv(tele / "web-1.csv", [test])
    # the process table: nginx all day, the miner during the plateau
    ts = test.timestamps
    on = (ts >= START + PLATEAU[0]) & (ts < START + PLATEAU[0] + PLATEAU[1])
    rows = [(t, 812, "nginx", "/usr/sbin/nginx", "www-data", 12.0) for t in ts]
    rows += [(t, 4242, "kswapd0", "/tmp/.x/kswapd0", "www-data", 380.0) for t in ts[on]]
    cols = list(zip(*rows, strict=True))
    write_procs_csv(tele / "web-1.procs.csv", "web-1", ProcessRows.from_lists(*cols))
    assert run("train", d / "train.csv", "--models", d / "models").returncode == 0
    r = run("score", tele, "--models", d / "models", "--output", d / "scores.csv")
    assert r.returncode == 0, r.stderr
    return d


def test_report_from_scores_and_telemetry(scored, tmp_path):
    out = tmp_path / "r.json"
    r = run(
        "report", "--scores", scored / "scores.csv", "--telemetry", scored / "telemetry",
        "--format", "json", "--output", out, "--remediation",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    alerted = [row for row in csv.DictReader((scored / "scores.csv").open()) if row["alert"] == "1"]
    first = min(float(row["window_start"]) for row in alerted)
    ep = doc["episode"]
    assert ep["id"] == f"web-1-{int(first)}" and doc["host"] == "web-1"
    assert START + PLATEAU[0] <= ep["start"] < ep["end"] <= START + sum(PLATEAU) + 1800
    assert ep["score"] > ep["threshold"] and doc["features"][0]["feature"]
    steps = [c["step"] for c in doc["checklist"]]
    assert "preserve" in steps and "or dismiss" not in steps, "no agent to dismiss it to"
    suspect = doc["suspect"]
    assert (suspect["pid"], suspect["exe"], suspect["username"]) == (
        4242,
        "/tmp/.x/kswapd0",
        "www-data",
    )
    cpu = doc["timeline"]["samples"]["cpu_percent"]
    assert len(cpu) == len(doc["timeline"]["samples"]["ts"]) > 100 and max(cpu) > 90
    assert any(w["alert"] for w in doc["timeline"]["windows"])
    assert any("batch mode" in n for n in doc["notes"])
    assert any("kill" in c["command"] and "4242" in c["command"] for c in doc["remediation"])

    html = run("report", "--scores", scored / "scores.csv", "--telemetry", scored / "telemetry")
    assert html.returncode == 0, html.stderr
    assert "<img" in html.stdout or "<svg" in html.stdout
    assert "/tmp/.x/kswapd0" in html.stdout


def test_report_from_scores_alone_and_usage_errors(scored, tmp_path):
    r = run("report", "--scores", scored / "scores.csv", "--format", "md")
    assert r.returncode == 0, r.stderr
    assert "no CPU timeline" in r.stderr and "# Incident report" in r.stdout
    # a scores file written before the processes and heavy_work columns reads the same
    older = tmp_path / "older.csv"
    with older.open("w", newline="") as fh:
        csv.writer(fh).writerows(row[:7] for row in csv.reader((scored / "scores.csv").open()))
    assert older.read_text().splitlines()[0].endswith(",alert,top_features")
    again = run("report", "--scores", older, "--format", "md")
    assert again.returncode == 0, again.stderr
    assert again.stdout.replace("older.csv", "scores.csv") == r.stdout
    # heavy work in the episode's windows (this model, without process tables, never calls
    # work heavy, so the file is edited as a model with them would have written it)
    rows = list(csv.reader((scored / "scores.csv").open()))
    at, heavy = rows[0].index("alert"), rows[0].index("heavy_work")
    alerted = [row for row in rows[1:] if row[at] == "1"]
    for row in alerted[::2]:
        row[heavy] = "1"
    busy = tmp_path / "busy.csv"
    with busy.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    docs = {}
    for name in ("scores", "busy", "older"):
        path = busy if name == "busy" else older if name == "older" else scored / "scores.csv"
        out = run("report", "--scores", path, "--format", "json")
        assert out.returncode == 0, out.stderr
        docs[name] = json.loads(out.stdout)
    assert docs["scores"]["episode"]["heavy_windows"] == 0
    assert docs["older"]["episode"]["heavy_windows"] is None  # not known
    assert docs["scores"]["episode"]["windows"] == len(alerted)  # one episode
    n = len(alerted[::2])
    assert docs["busy"]["episode"]["heavy_windows"] == n
    for name, doc in docs.items():
        work = [note for note in doc["notes"] if note.startswith("work:")]
        if name == "busy":
            (note,) = work
            assert note.startswith(f"work: heavy work in {n} of {len(alerted)} windows. ")
            assert "a miner's CPU brings no I/O" in note
        else:
            assert work == [], name
    bad = tmp_path / "bad.csv"
    bad.write_text("host,start\nweb-1,1\n")
    header = "host,window_start,window_end,score,threshold,alert,top_features\n"
    nan, huge = tmp_path / "nan.csv", tmp_path / "huge.csv"  # hand-edited: exit 1 before
    nan.write_text(header + "web-1,100,160,0.9,0.7,1,x\nweb-1,nan,220,0.9,0.7,1,x\n")
    huge.write_text(header + "web-1,1e30,1e31,0.9,0.7,1,x\n")
    for args, words in [
        (("--scores", bad), [str(bad), ":1", "window_start"]),
        (("--scores", nan), [f"{nan}:3: expected numbers", "'nan', not Unix seconds"]),
        (("--scores", huge), [f"{huge}:2: expected numbers", "'1e30', not Unix seconds"]),
        (("--scores", scored / "scores.csv", "--episode", "nope"), ["--episode", "web-1-"]),
        (("--scores", scored / "scores.csv", "--data-dir", tmp_path), ["--scores", "--data-dir"]),
        (("--telemetry", scored / "telemetry"), ["--scores"]),
    ]:
        r = run("report", *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert all(w in r.stderr for w in words), (words, r.stderr)
    quiet = tmp_path / "quiet.csv"
    rows = list(csv.reader((scored / "scores.csv").open()))
    with quiet.open("w", newline="") as fh:
        at = rows[0].index("alert")
        csv.writer(fh).writerows([rows[0], *([*r[:at], "0", *r[at + 1 :]] for r in rows[1:4])])
    r = run("report", "--scores", quiet)
    assert r.returncode == 2 and "alerted window" in r.stderr, r.stderr


def test_report_reads_only_the_files_of_its_host(scored, tmp_path):
    """A telemetry folder holding other hosts (a month of a fleet) is not read whole: only the
    files holding the episode's host are, so a bad file of another host does not stop it."""
    tele = tmp_path / "telemetry"
    tele.mkdir()
    for f in (scored / "telemetry").iterdir():
        (tele / f.name).write_bytes(f.read_bytes())
    (tele / "db-9.csv").write_text("timestamp,host,cpu_percent\n0,db-9,1\n30,db-9,abc\n")
    out = tmp_path / "r.json"
    r = run("report", "--scores", scored / "scores.csv", "--telemetry", tele,
            "--format", "json", "--output", out)  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert max(doc["timeline"]["samples"]["cpu_percent"]) > 90
    assert doc["suspect"]["exe"] == "/tmp/.x/kswapd0"
    # the same folder given to score is read whole, and the bad file named
    r = run("score", tele, "--models", scored / "models", "--output", tmp_path / "s.csv")
    assert r.returncode == 2 and f"{tele / 'db-9.csv'}:3" in r.stderr, r.stderr
