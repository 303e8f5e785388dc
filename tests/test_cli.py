"""Every command through the real entry point: the installed ``minerwatch`` console script."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path

import pytest
from entry import ENTRY, run
from entry import usage_error as assert_usage_error
from promtools import free_port
from synth import T0, host_series, write_csv

from minerwatch.service.config import config_fields

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "deploy" / "minerwatch.toml"
COMMANDS = [
    ["collect"], ["train"], ["score"], ["simulate"], ["evaluate"], ["serve"],
    ["config"], ["config", "check"], ["config", "show"],
    ["throttle"], ["throttle", "status"], ["throttle", "release"],
    ["evidence"], ["evidence", "list"], ["evidence", "show"],
]  # fmt: skip


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    d = tmp_path_factory.mktemp("fleet")
    train = [
        host_series("web-1", days=2, interval=30, seed=1),
        host_series("db-1", days=2, interval=30, seed=2),
    ]
    write_csv(d / "train.csv", train)
    start = T0 + 2 * 86400
    test = [
        host_series("web-1", days=0.5, interval=30, seed=3, start=start, plateau=(3 * 3600, 3600)),
        host_series("new-9", days=0.2, interval=30, seed=4, start=start),
    ]
    write_csv(d / "test.csv", test)
    return d


# -- the parser --------------------------------------------------------------------------------


def test_version():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"minerwatch {metadata.version('minerwatch')}"


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_on_every_command(command):
    r = run(*command, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: minerwatch " + " ".join(command))


def test_help_shows_defaults():
    assert "(default: 10s)" in run("collect", "--help").stdout
    assert "(default: 12)" in run("simulate", "--help").stdout
    text = run("serve", "--help").stdout
    assert "{DEBUG,INFO,WARNING,ERROR,CRITICAL}" in text and "(default: INFO)" in text
    flat = " ".join(text.split())
    for flag, default in [
        ("--interval DURATION", "10s"),
        ("--port N", "10091"),
        ("--address ADDRESS", "::"),
        ("--throttle-cpu NUMBER", "90.0"),
        ("--throttle-hold DURATION", "30s"),
        ("--hop DURATION", "the window"),
    ]:
        after = flat[flat.index(flag, flat.index("options (override")) :]
        assert f"(default: {default})" in after[: after.index(" --", 2)], flag
    assert flat.count("(default:") >= len(config_fields())  # every option shows one


def test_bad_usage_exits_2():
    assert_usage_error(run("no-such-command"), "invalid choice")
    assert_usage_error(run("serve", "--log-level", "loud"), "--log-level", "invalid choice")
    assert_usage_error(run("throttle"), "required")
    assert_usage_error(run("serve", "--interval", "soon"), "--interval", "a duration", '"soon"')


def test_serve_loads_no_evaluation_or_heavy_code(tmp_path):
    """A short real serve run (until SIGTERM), and ``serve --help``, in a fresh interpreter."""
    port = free_port()
    probe = (
        "import json, os, signal, sys, threading, time, urllib.request\n"
        "from minerwatch.service.cli import main\n"
        "def stop():\n"
        "    for _ in range(600):\n"
        "        try:\n"
        f"            urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=1)\n"
        "            break\n"
        "        except OSError:\n"
        "            time.sleep(0.1)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "if sys.argv[1] == 'serve':\n"
        "    threading.Thread(target=stop, daemon=True).start()\n"
        "try:\n"
        "    rc = main(sys.argv[1:])\n"
        "except SystemExit as exc:\n"
        "    rc = exc.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'pandas')\n"
        "               or m.startswith('minerwatch.bench'))\n"
        "print(json.dumps({'rc': rc, 'heavy': heavy}))\n"
    )
    serve = [
        "serve",
        "--data-dir",
        tmp_path,
        "--port",
        port,
        "--address",
        "127.0.0.1",
        "--interval",
        "1s",
        "--window",
        "3s",
        "--learn-for",
        "30s",
    ]
    for argv in (["serve", "--help"], serve):
        r = subprocess.run(
            [sys.executable, "-c", probe, *map(str, argv)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stderr
        seen = json.loads(r.stdout.strip().splitlines()[-1])
        assert seen == {"rc": 0, "heavy": []}, (argv, seen, r.stderr[-2000:])


# -- collect, train, score, simulate, evaluate -----------------------------------------------------


def test_train_then_score(fleet, tmp_path):
    models = tmp_path / "models"
    r = run("train", fleet / "train.csv", "--models", models)
    assert r.returncode == 0, r.stderr
    assert "web-1" in r.stdout and "threshold" in r.stdout
    out = tmp_path / "scores.csv"
    r = run("score", fleet / "test.csv", "--models", models, "--output", out)
    assert r.returncode == 2, r.stderr  # new-9 has no model: scored the others, said so
    assert "skipped host new-9" in r.stderr and "Traceback" not in r.stderr
    assert out.read_text().splitlines()[0] == (
        "host,window_start,window_end,score,threshold,alert,top_features,processes,heavy_work"
    )
    rows = list(csv.DictReader(out.open()))
    assert {r["host"] for r in rows} == {"web-1"}
    assert {r["heavy_work"] for r in rows} <= {"0", "1"}
    alerted = [r for r in rows if r["alert"] == "1"]
    t0 = T0 + 2 * 86400 + 3 * 3600
    assert alerted and float(alerted[0]["window_end"]) - t0 <= 300
    assert all(float(r["window_end"]) > t0 for r in alerted)
    assert all(0 <= float(r["score"]) <= 1 for r in rows)


def test_train_alarm_budget_sets_the_threshold(fleet, tmp_path):
    """A smaller false-alarm budget gives a higher threshold; the default is in --help."""
    r = run("train", "--help")
    assert "--alarms-per-week" in r.stdout and "default: 0.25" in r.stdout
    thresholds = {}
    for budget in ("0.25", "20"):
        models = tmp_path / budget
        r = run("train", fleet / "train.csv", "--models", models, "--alarms-per-week", budget)
        assert r.returncode == 0, r.stderr
        metas = sorted(models.glob("*/meta.json"))
        assert len(metas) == 2, metas
        thresholds[budget] = [json.loads(m.read_text())["threshold"] for m in metas]
    assert all(a > b for a, b in zip(thresholds["0.25"], thresholds["20"], strict=True))
    assert_usage_error(
        run("train", fleet / "train.csv", "--models", tmp_path / "m", "--alarms-per-week", "0"),
        "--alarms-per-week",
    )


def test_bad_input_exit_code_2(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,host,cpu_percent\n1,a,x\n")
    assert_usage_error(run("train", bad, "--models", tmp_path / "m"), f"{bad}:2")
    assert_usage_error(
        run(
            "score", tmp_path / "missing.csv", "--models", tmp_path, "--output", tmp_path / "o.csv"
        ),
        "missing.csv",
    )


def test_collect_records_this_machine(tmp_path):
    out = tmp_path / "me.csv"
    r = run("collect", "--interval", "0.2", "--duration", "1", "--output", out, "--host", "me")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open()))
    assert 3 <= len(rows) <= 6
    assert {row["host"] for row in rows} == {"me"}
    assert all(0 <= float(row["cpu_percent"]) <= 100 for row in rows)
    table = tmp_path / "me.procs.csv"
    assert f"wrote {len(rows)} samples to {out}, processes to {table}" in r.stderr
    assert {row["host"] for row in csv.DictReader(table.open())} == {"me"}
    assert_usage_error(run("collect", "--interval", "0", "--output", out), "above 0s")


GC_BURNER = """
import ctypes, sys, threading
libc = ctypes.CDLL(None)
def spin(name):
    libc.prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME: what a JVM calls its threads
    while True:
        pass
threading.Thread(target=spin, args=("GC Thread#0",), daemon=True).start()
threading.Thread(target=spin, args=("pool-1-thread-1",), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""


def test_collect_records_the_cpu_of_garbage_collector_threads(tmp_path):
    """A real process with a busy thread named as HotSpot names its collector's and a busy
    worker thread: the table gives it about a core of each, the collector's in
    ``gc_cpu_percent``; the samples give the host's core count."""
    burner = subprocess.Popen(
        [sys.executable, "-c", GC_BURNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert burner.stdout is not None and burner.stdout.readline().strip() == "ready"
        out = tmp_path / "me.csv"
        r = run("collect", "--interval", "0.5", "--duration", "3", "--output", out)
        assert r.returncode == 0, r.stderr
    finally:
        burner.kill()
        burner.wait()
    rows = list(csv.DictReader((tmp_path / "me.procs.csv").open()))
    mine = [row for row in rows if int(row["pid"]) == burner.pid and row["gc_cpu_percent"]]
    assert len(mine) >= 3, rows
    gc = sorted(float(row["gc_cpu_percent"]) for row in mine)
    cpu = sorted(float(row["cpu_percent"]) for row in mine)
    cores = os.cpu_count() or 1
    # two threads spinning alike: the collector's is about half the process's, however much
    # of the machine other work takes (tests run two at a time)
    g, c = gc[len(gc) // 2], cpu[len(cpu) // 2]
    assert c >= 20.0 and g <= 100.0 * 1.1, (gc, cpu)
    assert 0.25 * c <= g <= 0.8 * c, (gc, cpu)  # its own time, not the worker's
    samples = list(csv.DictReader(out.open()))
    assert {float(row["cpu_cores"]) for row in samples} == {float(cores)}


def test_simulate_then_evaluate(tmp_path):
    data = tmp_path / "sim"
    r = run(
        "simulate",
        "--hosts",
        "2",
        "--train-days",
        "1",
        "--test-days",
        "1",
        "--interval",
        "60",
        "--seed",
        "3",
        "--output",
        data,
    )
    assert r.returncode == 0, r.stderr
    assert "wrote 2 hosts" in r.stdout
    assert json.loads((data / "labels.json").read_text())["parameters"]["seed"] == 3
    r = run("evaluate", "--data", data, "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "minerwatch" in json.loads(r.stdout)["detectors"]
    assert_usage_error(run("evaluate", "--data", tmp_path / "nowhere", "--quiet"), "nowhere")
    assert_usage_error(run("simulate", "--hosts", "0", "--output", tmp_path / "x"), "host")


# -- serve ---------------------------------------------------------------------------------------


def metrics(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return r.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def test_serve_runs_and_stops_cleanly(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [*ENTRY, "serve", "--data-dir", str(tmp_path), "--port", str(port),
         "--address", "127.0.0.1", "--interval", "1s", "--window", "3s", "--learn-for", "30s",
         "--host", "cli-test"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while (text := metrics(port)) is None or "minerwatch_samples_total" not in text:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "metrics on 127.0.0.1" in out


def test_serve_reports_bad_flags_and_files_by_name(tmp_path):
    assert_usage_error(
        run("serve", "--throttle", "--throttle-cpu", "50", "--throttle-release-cpu", "70"),
        "--throttle-release-cpu <= --throttle-cpu (50)",
    )
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent]\nintreval = 5\n")
    assert_usage_error(run("serve", "--config", bad), f"{bad}:2:", 'did you mean "interval"')
    assert_usage_error(run("serve", "--config", tmp_path / "missing.toml"), "missing.toml")


# -- config, throttle, evidence ------------------------------------------------------------------


def test_config_check_good_and_bad(tmp_path):
    r = run("config", "check", SHIPPED)
    assert r.returncode == 0 and r.stdout.strip() == f"{SHIPPED}: OK", r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent]\nport = 1\n")
    assert_usage_error(run("config", "check", bad), f"{bad}:2:", "an option of [agent]")


def test_config_show_round_trips(tmp_path):
    r = run("config", "show", SHIPPED)
    assert r.returncode == 0, r.stderr
    shown = tmp_path / "shown.toml"
    shown.write_text(r.stdout)
    assert run("config", "show", shown).stdout == r.stdout
    assert 'address = "::"' in r.stdout and "release_cpu_percent = 70.0" in r.stdout


def test_throttle_status_and_release_without_an_agent(tmp_path):
    """Plain ``throttle status`` / ``throttle release`` on this machine: exit 0, no agent."""
    default_dir = Path("/var/lib/minerwatch/throttle")
    existed = default_dir.exists()
    for command in (["status"], ["release"], ["status", "--json"]):
        r = run("throttle", *command, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr
    assert default_dir.exists() == existed  # nothing was throttled, so nothing is created
    r = run("throttle", "status", "--data-dir", tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "no throttled processes"
    r = run("throttle", "release", "--data-dir", tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "released 0 processes"
    assert list(tmp_path.iterdir()) == []
    assert_usage_error(
        run("throttle", "release", "99999999", "--data-dir", tmp_path),
        "PID of a throttled process",
        "99999999",
    )
    for bad in ("abc", "0", "-5"):  # not a process id at all: said as one, before any work
        assert_usage_error(
            run("throttle", "release", "--data-dir", tmp_path, "--", bad),
            "expected a process id",
            repr(bad),
        )


def test_throttle_commands_find_the_journal_through_the_config(tmp_path):
    cfg = tmp_path / "mw.toml"
    cfg.write_text(f'[agent]\ndata_dir = "{tmp_path}"\n')
    journal = tmp_path / "throttle" / "throttle-journal.json"
    journal.parent.mkdir()
    journal.write_text(json.dumps({"version": 1, "throttled": [], "exempt": []}))
    r = run("throttle", "status", "--json", "--config", cfg)
    assert r.returncode == 0 and json.loads(r.stdout)["throttled"] == [], r.stderr
    journal.write_text("{not json")
    assert_usage_error(run("throttle", "status", "--config", cfg), str(journal))


def test_evidence_list_and_show(tmp_path):
    empty = tmp_path / "evidence"
    r = run("evidence", "list", "--data-dir", tmp_path)
    assert r.returncode == 0 and r.stdout == "", r.stderr
    assert f"no evidence files in {empty} (not there yet" in r.stderr
    empty.mkdir()
    r = run("evidence", "list", "--data-dir", tmp_path, "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == []
    doc = {
        "format": "minerwatch-evidence",
        "episode_id": "ep1",
        "written_at_utc": "t",
        "score": 0.5,
        "processes": [{"pid": os.getpid(), "name": "x"}],
    }
    (empty / "20270101T000000Z-ep1.json").write_text(json.dumps(doc))
    long_id = "web-frontend-eu-west-1a-17670000000-suspect-12345"  # a long host and episode
    (empty / f"20270101T000100Z-{long_id}.json").write_text(json.dumps(doc))
    r = run("evidence", "list", "--data-dir", tmp_path)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == 3, r.stderr
    assert (
        len({line.index("TOP PROCESS" if i == 0 else "x (pid") for i, line in enumerate(lines)})
        == 1
    )
    r = run("evidence", "show", "ep1", "--data-dir", tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)["episode_id"] == "ep1", r.stderr
    assert_usage_error(run("evidence", "show", "nope", "--data-dir", tmp_path), "no such file")
