"""The batch commands stopped by SIGTERM (``kill PID``, ``timeout``, a systemd timer's stop) or
SIGHUP (the terminal closed) as by Ctrl-C: the same lines, "terminated (SIGTERM)" for
"interrupted", exit 128 + N. Unlike Ctrl-C, which the terminal sends to the whole process group,
``kill PID`` reaches the parent alone: its joblib or Dask workers must not outlive it (they did,
orphaned, busy, holding its output pipes). Through the real command; the processes are this
test's own (no burners, nothing an agent judges), so it runs in the parallel pass."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from entry import ENTRY, run
from synth import host_series, write_csv
from test_fleet_faults import HOSTS, array_hashes, fleet, proxy, train_args  # noqa: F401

from minerwatch.baseline.store import list_hosts, load_model

TRAIN_HOSTS = 6
RESUME = re.compile(
    r"to train the rest, run the same command with (--skip-trained-since) "
    r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)$",
    re.M,
)


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (its workers, theirs, resource trackers)."""
    found: set[int] = set()
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in threads:
        try:
            kids = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
        except OSError:
            continue
        for kid in map(int, kids):
            found |= {kid, *descendants(kid)}
    return found


def running(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (not gone, not a zombie awaiting its reaper)."""
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            alive.add(pid)
    return alive


class Stopped:
    """A command signalled once ``ready()``: exit code, stderr, the seconds it took to exit
    after the signal, its descendants then (``kids``) and those still running a few seconds
    later (``left``)."""

    def __init__(
        self, returncode: int, stderr: str, seconds: float, kids: set[int], left: set[int]
    ) -> None:
        self.returncode, self.stderr, self.seconds = returncode, stderr, seconds
        self.kids, self.left = kids, left


def stop_when(
    args: list[object], ready: Callable[[], bool], signum: int, tmp: Path, **popen: object
) -> Stopped:
    """Run ``minerwatch ARGS``, send ``signum`` to it alone once ``ready()``. Its output goes
    to files, not pipes: an orphaned worker holding a pipe would hang the test, not fail it."""
    err_path = tmp / f"stderr-{signum}-{time.monotonic_ns()}"
    kids: set[int] = set()
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [*ENTRY, *map(str, args)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=err, **popen,  # type: ignore[call-overload]
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not ready() and time.monotonic() < deadline:
                assert proc.poll() is None, err_path.read_text()  # done before the signal
                time.sleep(0.01)
            kids = descendants(proc.pid)
            proc.send_signal(signum)
            sent = time.monotonic()
            try:
                proc.wait(timeout=30)
            finally:
                seconds = time.monotonic() - sent
            deadline = time.monotonic() + 5
            while running(kids) and time.monotonic() < deadline:
                time.sleep(0.05)
            left = running(kids)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pid in running(kids):  # the test's own orphans: not left for 5 minutes
                os.kill(pid, signal.SIGKILL)
    return Stopped(proc.returncode, err_path.read_text(), seconds, kids, left)


def clean_stop(r: Stopped, signum: int) -> None:
    assert r.returncode == 128 + signum, (r.returncode, r.stderr)
    assert r.seconds < 10, (r.seconds, r.stderr)  # not after every pending host
    assert not r.left, f"workers outlived the command: {r.left}"
    assert "Traceback" not in r.stderr, r.stderr


@pytest.fixture(scope="module")
def telemetry(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("in")
    for i in range(TRAIN_HOSTS):
        write_csv(d / f"h{i:02d}.csv", [host_series(f"h{i:02d}", days=3, interval=30, seed=i)])
    return d


@pytest.mark.parametrize(
    ("engine", "signum"),
    [(("--jobs", "2"), signal.SIGTERM), (("--dask", "local"), signal.SIGHUP)],
    ids=["joblib-SIGTERM", "dask-SIGHUP"],
)
def test_train_stopped_alone_ends_its_workers_names_the_saved_models_and_resumes(
    telemetry, tmp_path, engine, signum
):
    if engine[0] == "--dask":
        pytest.importorskip("dask.distributed")
    models = tmp_path / "models"
    command = ["train", telemetry, "--models", models, *engine]
    r = stop_when(command, lambda: bool(list(models.glob("*/meta.json"))), signum, tmp_path)
    clean_stop(r, signum)
    assert r.kids, "no worker process when the signal came: no test"
    saved = list_hosts(models)
    assert 1 <= len(saved) < TRAIN_HOSTS, r.stderr
    for host in saved:  # whole: each loads and verifies
        assert load_model(models, host).host == host
    name = signal.Signals(signum).name
    assert re.search(
        rf"^minerwatch: the models of {len(saved)} hosts trained before it was terminated "
        rf"\({name}\) are saved in {re.escape(str(models))}; ",
        r.stderr,
        re.M,
    ), r.stderr
    flag = RESUME.search(r.stderr)
    assert flag, r.stderr
    before = array_hashes(models)
    rest = run(*command, *flag.groups(), timeout=300)
    assert rest.returncode == 0, rest.stderr
    assert f"skipping {len(saved)} hosts with a model saved since {flag[2]}" in rest.stderr
    after = array_hashes(models)
    assert sorted(after) == [f"h{i:02d}" for i in range(TRAIN_HOSTS)]
    assert {h: after[h] for h in before} == before  # the first run's models untouched


def test_fleet_train_stopped_alone_ends_its_workers_and_resumes(fleet, proxy, tmp_path):  # noqa: F811
    """``fleet train --jobs 2`` against a real Prometheus answering slowly (a proxy), SIGTERM
    once a model is saved: exit 143 within seconds, no worker left, the line of Ctrl-C with
    "terminated (SIGTERM)", and the flag it prints trains the rest."""
    _, _, _, hosts, start, end = fleet
    proxy.delay = 0.1
    models = tmp_path / "m"
    command = [*train_args(proxy.url, start, end, models), "--jobs", "2"]
    r = stop_when(command, lambda: bool(list(models.glob("*/meta.json"))), signal.SIGTERM, tmp_path)
    clean_stop(r, signal.SIGTERM)
    assert r.kids, "no worker process when the signal came: no test"
    saved = array_hashes(models)
    for host in saved:
        assert load_model(models, host).host == host
    m = re.search(
        rf"^minerwatch: terminated \(SIGTERM\) after (\d+) of {HOSTS} hosts: trained (\d+) "
        rf"\(saved in {re.escape(str(models))}\), failed 0, not done (\d+): ",
        r.stderr,
        re.M,
    )
    assert m, r.stderr
    assert int(m[2]) <= len(saved) < HOSTS  # a model saved as the signal came is kept too
    flag = RESUME.search(r.stderr)
    assert flag, r.stderr
    proxy.delay = 0.0
    rest = run(*command, *flag.groups(), timeout=300)
    assert rest.returncode == 0, rest.stderr
    finished = array_hashes(models)
    assert sorted(finished) == sorted(hosts)
    assert {h: finished[h] for h in saved} == saved


def test_score_stopped_leaves_no_file_and_says_why(telemetry, tmp_path):
    """SIGTERM while scoring: exit 143, one line naming the signal; neither the CSV nor its
    temporary file is left (the signal's default left ``.scores.csv.tmp`` behind)."""
    out = tmp_path / "scores.csv"
    tmp = tmp_path / ".scores.csv.tmp"
    models = tmp_path / "models"
    models.mkdir()
    command = ["score", telemetry, "--models", models, "--output", out]
    r = stop_when(command, tmp.exists, signal.SIGTERM, tmp_path)
    clean_stop(r, signal.SIGTERM)
    assert r.stderr.splitlines()[-1] == "minerwatch: terminated (SIGTERM)", r.stderr
    assert not out.exists() and not tmp.exists()


def test_simulate_stopped_leaves_no_partial_fleet_and_the_same_command_runs(tmp_path):
    """SIGHUP half-way: exit 129, said; the hosts written so far (no labels.json, so no
    simulation's) are removed: they made the same command refuse the folder as telemetry
    "of another origin"."""
    out = tmp_path / "sim"
    command = ["simulate", "--hosts", "8", "--train-days", "2", "--test-days", "1",
               "--output", out]  # fmt: skip
    r = stop_when(command, lambda: (out / "train").is_dir(), signal.SIGHUP, tmp_path)
    clean_stop(r, signal.SIGHUP)
    assert r.stderr.splitlines()[-1] == "minerwatch: terminated (SIGHUP)", r.stderr
    assert not list(out.rglob("*.csv")) and not (out / "labels.json").exists()
    again = run(*command, timeout=300)
    assert again.returncode == 0, again.stderr
    assert len(list((out / "train").glob("*.procs.csv"))) == 8


def test_nohup_keeps_a_recording_going_when_the_terminal_closes(tmp_path):
    """Started with SIGHUP ignored (``nohup``), ``collect`` ends at its ``--duration``, not on
    the SIGHUP of the terminal closing: it took the signal as a stop whatever its starter said."""
    out = tmp_path / "h.csv"
    command = ["collect", "--interval", "200ms", "--duration", "2s", "--output", out]

    def ignore_hup() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def rows() -> int:
        return len(out.read_text().splitlines()) - 1 if out.exists() else 0

    err = tmp_path / "stderr"
    with err.open("w") as fh:
        proc = subprocess.Popen(
            [*ENTRY, *map(str, command)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=fh, preexec_fn=ignore_hup,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while rows() < 2 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.02)
            at_signal = rows()
            proc.send_signal(signal.SIGHUP)
            assert proc.wait(timeout=60) == 0, err.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    said = err.read_text()
    assert "terminated" not in said and said.splitlines()[-1].startswith("wrote "), said
    # it went on recording (10 rows in all, fewer when the parallel pass's load makes a
    # sampling pass outlast its slot)
    assert rows() > at_signal, said


def test_fleet_train_in_one_process_stops_at_once_against_a_slow_prometheus(
    fleet,  # noqa: F811
    proxy,  # noqa: F811
    tmp_path,
):
    """``fleet train`` with its default ``--jobs 1`` reads the next host in a thread while one
    fits, each read a batch of queries a few at a time. Against a Prometheus answering in a
    second, SIGTERM in the middle of a read waited for every query of that read still queued
    (half a minute and more) before the command exited; now only for those already sent."""
    _, _, _, _, start, end = fleet
    proxy.delay = 1.0
    command = train_args(proxy.url, start, end, tmp_path / "m")
    r = stop_when(command, lambda: proxy.answers >= 2, signal.SIGTERM, tmp_path)
    clean_stop(r, signal.SIGTERM)
    assert r.seconds < 5, (r.seconds, r.stderr)  # a query in flight answers within 1 s
    assert re.search(
        rf"^minerwatch: terminated \(SIGTERM\) after 0 of {HOSTS} hosts", r.stderr, re.M
    )


def test_evaluate_stopped_while_plotting_leaves_the_previous_report_whole(tmp_path):
    """``evaluate --output`` into the folder of an earlier run, SIGTERM while it plots: the
    earlier report and its plots stay as they were (new plots beside the old report showed one
    run's tables over another's figures), and nothing half-done is left in the folder."""
    out = tmp_path / "report"
    for seed in (4, 5):  # two fleets: another run's plots differ from the first's
        sim = run("simulate", "--hosts", "3", "--train-days", "0.5", "--test-days", "0.5",
                  "--seed", seed, "--interval", "60", "--output", tmp_path / f"sim{seed}",
                  timeout=120)  # fmt: skip
        assert sim.returncode == 0, sim.stderr
    first = run("evaluate", "--data", tmp_path / "sim4", "--output", out, "--quiet", timeout=300)
    assert first.returncode == 0, first.stderr

    def files() -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}

    before = files()
    assert "report.md" in before and sum(n.endswith(".png") for n in before) == 3, sorted(before)

    def plotting() -> bool:  # the new run's first plot is drawn (wherever it is put)
        return any(p.stat().st_mtime_ns > stamp for p in out.rglob("*.png"))

    stamp = max(p.stat().st_mtime_ns for p in out.iterdir())
    command = ["evaluate", "--data", tmp_path / "sim5", "--output", out, "--quiet"]
    r = stop_when(command, plotting, signal.SIGTERM, tmp_path)
    clean_stop(r, signal.SIGTERM)
    assert files() == before


def test_fleet_export_stopped_names_the_hosts_written_and_those_left(
    fleet,  # noqa: F811
    proxy,  # noqa: F811
    tmp_path,
):
    """SIGTERM to ``fleet export`` against a slow Prometheus once a host is written: exit 143
    and a line naming how many hosts were exported (whole files) and which were not (it said
    only "terminated")."""
    _, _, _, hosts, start, end = fleet
    proxy.delay = 0.3
    out = tmp_path / "export"
    command = ["fleet", "export", "--prometheus", proxy.url, "--start", start, "--end", end,
               "--output", out]  # fmt: skip
    seen: list[float] = []

    def reading_the_next() -> bool:  # a host written a moment ago: the next one is being read
        if not seen and list(out.glob("*.csv")):
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] > 0.2

    r = stop_when(command, reading_the_next, signal.SIGTERM, tmp_path)
    clean_stop(r, signal.SIGTERM)
    m = re.search(
        rf"^minerwatch: terminated \(SIGTERM\) after (\d+) of {HOSTS} hosts: exported (\d+) "
        rf"\(\d+ samples -> {re.escape(str(out))}\), failed 0, not done (\d+): ",
        r.stderr,
        re.M,
    )
    assert m, r.stderr
    written = [p for p in out.glob("*.csv") if not p.name.endswith(".procs.csv")]
    assert len(written) == int(m[2]) >= 1 and int(m[3]) == HOSTS - int(m[1]) >= 1, r.stderr
    for path in written:  # whole: a header and every row of the same width
        lines = path.read_text().splitlines()
        assert len(lines) > 1 and {line.count(",") for line in lines} == {lines[0].count(",")}
