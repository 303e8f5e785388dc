"""The real agent under faults (issue 9, item 6): each case runs ``minerwatch serve`` as a
subprocess and hurts it for real, then checks what the operator would see.

- ``kill -9`` in the middle of its SQLite writes (a 0.1 s interval, killed at a random
  moment, five times on one data dir) and in the middle of a retraining (the agent and its
  training child killed together, as systemd kills a unit's cgroup; and the child alone);
- a full disk: the data dir on a 64 MiB tmpfs mounted in a private mount namespace
  (``unshare -m``), filled and freed again from outside through ``/proc/<pid>/root``;
- the wall clock stepping forward and back an hour (libfaketime, monotonic time untouched,
  as an NTP step does);
- 10,000 processes (sleepers in their own PID namespace, which the kernel kills as one);
- processes whose names and command lines hold newlines, quotes, backslashes, invalid UTF-8
  and 4 KiB of text, busy enough to be the suspects of an alert.

``docs/reliability.md`` has one row per case. Models come from ``minerwatch train`` on a
synthetic quiet host (once per module), so they score at once and can alert.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from promtools import free_port, promtool
from synth import host_series, quiet_host, write_csv

from minerwatch.baseline.store import load_model, save_model
from minerwatch.baseline.train import train_host
from minerwatch.bench.proc_scan import Sleepers
from minerwatch.features.io import from_arrays
from minerwatch.service.agent import Agent as AgentLoop
from minerwatch.service.config import AgentConfig
from minerwatch.service.history import History

MINERWATCH = str(Path(sys.executable).with_name("minerwatch"))
QUIET = "faults-quiet"
#: A host name for agents that learn for themselves (no model, nothing to score).
LEARNER = "faults-learner"
Values = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# -- the agent as a subprocess -----------------------------------------------------------------


class Agent:
    """``minerwatch serve`` on a free loopback port, in its own session (so a kill of its
    process group takes its training child too), logging to ``log``."""

    def __init__(
        self,
        data_dir: Path,
        log: Path,
        *options: str,
        host: str = LEARNER,
        prefix: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir, self.log, self.port = data_dir, log, free_port()
        cmd = [
            *prefix, MINERWATCH, "serve", "--data-dir", str(data_dir), "--host", host,
            "--port", str(self.port), "--address", "127.0.0.1", "--log-level", "INFO", *options,
        ]  # fmt: skip
        with log.open("ab") as fh:
            self.proc = subprocess.Popen(
                cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=env,
            )  # fmt: skip

    def text(self) -> str | None:
        try:
            url = f"http://127.0.0.1:{self.port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as r:
                return str(r.read().decode())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def values(self) -> Values:
        """Every sample of one scrape by (name, sorted labels); empty if not answering."""
        out: Values = {}
        for family in text_string_to_metric_families(self.text() or ""):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def wait_for(self, what: str, pred: Callable[[Values], bool], timeout: float = 30) -> Values:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"agent exited {self.proc.returncode}:\n{self.tail()}"
            v = self.values()
            if v and pred(v):
                return v
            time.sleep(0.1)
        pytest.fail(f"agent: {what} not reached in {timeout:.0f} s\n{self.tail()}")

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, as systemd stops it; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill_group(self) -> None:
        """SIGKILL to the agent and everything it started (a unit's cgroup being killed)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def one(v: Values, name: str, **labels: str) -> float:
    return v.get((name, tuple(sorted(labels.items()))), float("nan"))


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    """Agents a test started; whatever is left is killed with its children."""
    started: list[Agent] = []
    yield started
    for a in started:
        try:
            a.kill_group()
        except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
            pass


def stored(db: Path, until: float | None = None) -> np.ndarray:
    """Sample times in a history database (read-only), up to ``until``."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT ts FROM samples WHERE ts <= ? ORDER BY ts", (until or float("inf"),)
        )
        return np.array([r[0] for r in rows], dtype=float)
    finally:
        conn.close()


def integrity(db: Path) -> list[tuple[str]]:
    conn = sqlite3.connect(db)
    try:
        return list(conn.execute("PRAGMA integrity_check"))
    finally:
        conn.close()


# -- a model that scores at once -----------------------------------------------------------------


@pytest.fixture(scope="module")
def quiet_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``minerwatch train`` on two hours of a nearly idle host (1 s samples, 3 s windows):
    a model the agent loads at start, scores with at once, and that alerts on busy cores."""
    work = tmp_path_factory.mktemp("quiet")
    write_csv(work / "quiet.csv", [quiet_host(QUIET, time.time() - 9000, 7200, 1.0, seed=11)])
    subprocess.run(
        [MINERWATCH, "train", str(work / "quiet.csv"), "--models", str(work / "models"),
         "--window", "3s", "--hop", "3s"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return work / "models"


def data_dir_with_model(tmp_path: Path, models: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    shutil.copytree(models, data / "models")
    return data


def test_a_history_whose_schema_text_is_damaged_is_moved_aside(tmp_path, agents):
    """One byte of the schema's text damaged (not UTF-8): the agent's start-up check read
    SQLite's answer naming it and died of a UnicodeDecodeError; now the file is moved aside
    as corrupt and the agent samples into a new one."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    db = data / "history.db"
    h = History(db, clock=lambda: time.time())
    h.add_sample(time.time() - 60, {"cpu_percent": 5.0})
    h.close()
    raw = db.read_bytes()
    assert b"NOT NULL, end" in raw
    db.write_bytes(raw.replace(b"NOT NULL, end", b"NOT \xceULL, end", 1))
    agent = Agent(data, tmp_path / "agent.log", "--interval", "0.2s", "--learn-for", "1h")
    agents.append(agent)
    agent.wait_for("samples", lambda v: one(v, "minerwatch_samples_total") >= 2)
    assert len(list(data.glob("history.db.corrupt-*"))) == 1, agent.tail()
    assert integrity(db) == [("ok",)]


# -- kill -9 -----------------------------------------------------------------------------------


def test_kill_9_in_the_middle_of_writes_loses_at_most_the_sample_in_flight(tmp_path, agents):
    """Killed at a random moment of its 0.1 s loop (a transaction every tick), five times on
    one data dir: every sample a scrape had shown is stored, so at most the tick in flight is
    lost; the database passes ``PRAGMA integrity_check`` each time, and each restart keeps
    writing to it (nothing moved aside as corrupt, no history error)."""
    data, db = tmp_path / "data", tmp_path / "data" / "history.db"
    rng = random.Random(9)
    shown = 0  # samples the scrapes reported, over all runs
    for run in range(5):
        agent = Agent(data, tmp_path / "agent.log", "--interval", "0.1s", "--learn-for", "1h")
        agents.append(agent)
        v = agent.wait_for("samples", lambda v: one(v, "minerwatch_samples_total") >= 5)
        time.sleep(rng.uniform(0.0, 0.3))
        v = agent.values()
        last = one(v, "minerwatch_last_sample_timestamp_seconds")
        os.kill(agent.proc.pid, signal.SIGKILL)
        agent.proc.wait(timeout=10)
        shown += int(one(v, "minerwatch_samples_total"))
        assert integrity(db) == [("ok",)], f"run {run}"
        ts = stored(db)
        assert len(ts[ts <= last]) == shown, f"run {run}: a sample shown by a scrape was lost"
        assert len(ts[ts > last]) <= 3, f"run {run}"  # ticks after the scrape, before the kill
        shown = len(ts)  # the next run's samples come on top of all of these
        assert one(v, "minerwatch_errors_total", stage="history") == 0, agent.tail()
    assert not list(data.glob("history.db.corrupt-*"))


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
@pytest.mark.parametrize("nth", [60, 97, 143])
def test_kill_9_inside_a_sqlite_write_leaves_the_history_whole(tmp_path, agents, nth):
    """``strace`` delivers SIGKILL to the agent at its ``nth`` ``pwrite64`` (SQLite's writes
    of WAL frames and pages; the first ~30 set the database up, then a sample is a few): the
    kill lands inside a transaction, between frames. The database passes
    ``PRAGMA integrity_check``, the torn transaction is simply absent, and a restarted agent
    keeps every sample stored before and writes new ones to the same file."""
    data, db = tmp_path / "data", tmp_path / "data" / "history.db"
    trace = tmp_path / "trace"
    cmd = ["strace", "-f", "-qq", "-o", str(trace), "-e", "trace=pwrite64",
           "-e", f"inject=pwrite64:signal=KILL:when={nth}", MINERWATCH, "serve",
           "--data-dir", str(data), "--host", LEARNER, "--port", str(free_port()),
           "--address", "127.0.0.1", "--interval", "0.1s", "--learn-for", "1h"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    lines = trace.read_text().splitlines()
    assert any("killed by SIGKILL" in line for line in lines), done.stderr[-2000:]
    assert "pwrite64(" in [line for line in lines if "pwrite64(" in line][-1]
    assert integrity(db) == [("ok",)]
    before = stored(db)
    agent = Agent(data, tmp_path / "agent.log", "--interval", "0.1s", "--learn-for", "1h")
    agents.append(agent)
    v = agent.wait_for("samples", lambda v: one(v, "minerwatch_samples_total") >= 3)
    assert one(v, "minerwatch_errors_total", stage="history") == 0, agent.tail()
    assert agent.stop() == 0, agent.tail()
    after = stored(db)
    assert integrity(db) == [("ok",)]
    assert set(before) <= set(after) and len(after) >= len(before) + 3
    assert not list(data.glob("history.db.corrupt-*"))


def prefill_history(data: Path, minutes: float = 10.0) -> None:
    """The last ``minutes`` of a quiet host in the data dir's history, so a retraining has
    windows to learn from (the agent's own store writes them, as it would have)."""
    base = host_series(QUIET, days=minutes / 1440, interval=1.0, seed=5,
                       start=time.time() - minutes * 60)  # fmt: skip
    with History(data / "history.db") as h:
        for t, row in zip(base.timestamps, base.values, strict=True):
            h.add_sample(float(t), dict(zip(base.columns, row.tolist(), strict=True)))


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def model_version(v: Values) -> str | None:
    return next((dict(k[1])["model_version"] for k in v if k[0] == "minerwatch_model_info"), None)


@pytest.mark.slow
def test_kill_9_in_the_middle_of_retraining_keeps_a_whole_model(tmp_path, agents, quiet_models):
    """The agent retrains every second (``--retrain-every 1s``, ten minutes of history), and
    is killed together with its training child at a random moment of a training, twice:
    each time the model folder holds a model that loads and verifies (the one in use, or a
    newer complete one, never a half-written one) and a restart scores with it at once.
    Killing the child alone is a failed retraining the agent counts and survives."""
    data = data_dir_with_model(tmp_path, quiet_models)
    prefill_history(data)
    fast = ("--interval", "1s", "--window", "3s", "--retrain-every", "1s")
    rng = random.Random(7)
    for run in range(2):
        agent = Agent(data, tmp_path / "agent.log", *fast, host=QUIET)
        agents.append(agent)
        in_use = model_version(agent.wait_for("the model", lambda v: model_version(v) is not None))
        deadline = time.monotonic() + 30
        while not children(agent.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert children(agent.proc.pid), f"no training child\n{agent.tail()}"
        time.sleep(rng.uniform(0.0, 2.0))
        agent.kill_group()
        kept = load_model(data / "models", QUIET)  # raises on a partial or mismatched model
        if kept.meta["sha256"][:12] != in_use:  # a training finished before the kill
            assert kept.meta["created_at"] > time.time() - 60, f"run {run}"
        restarted = Agent(data, tmp_path / "agent.log", "--interval", "1s", "--window", "3s",
                          "--retrain-every", "0", host=QUIET)  # fmt: skip
        agents.append(restarted)
        v = restarted.wait_for("the model", lambda v: model_version(v) is not None)
        assert model_version(v) == kept.meta["sha256"][:12] and one(v, "minerwatch_learning") == 0
        assert one(v, "minerwatch_errors_total", stage="model") == 0, restarted.tail()
        assert restarted.stop() == 0, restarted.tail()
    # the training child alone: counted as a crashed retraining, the model in use stays
    agent = Agent(data, tmp_path / "agent.log", *fast, host=QUIET)
    agents.append(agent)
    in_use = model_version(agent.wait_for("the model", lambda v: model_version(v) is not None))
    deadline = time.monotonic() + 30
    while not children(agent.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    (child,) = children(agent.proc.pid)
    os.kill(child, signal.SIGKILL)
    v = agent.wait_for(
        "a crashed retraining counted",
        lambda v: one(v, "minerwatch_retrain_failures_total", reason="crashed") >= 1,
    )
    assert model_version(v) == in_use
    assert "retraining gave no new model (crashed)" in agent.tail()
    assert agent.stop() == 0, agent.tail()


# -- 10,000 processes --------------------------------------------------------------------------


def start_sleepers(n: int) -> Sleepers:
    """The benchmark's ``n`` idle processes in their own PID namespace (skip where the kernel
    refuses a PID namespace)."""
    try:
        return Sleepers(n)
    except RuntimeError as exc:
        pytest.skip(str(exc))


def host_processes() -> int:
    return sum(1 for e in os.listdir("/proc") if e.isdigit())


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_ten_thousand_processes_are_all_counted(tmp_path, agents):
    """With 10,000 more processes the agent's process count covers them all (within the
    churn of the rest of the machine) and no source fails; how long a pass takes is
    measured by ``benchmarks/proc_scan.py``, not here."""
    agent = Agent(tmp_path / "data", tmp_path / "agent.log", "--interval", "0.5s")
    agents.append(agent)
    agent.wait_for("samples", lambda v: one(v, "minerwatch_samples_total") >= 2)
    before = host_processes()
    sleepers = start_sleepers(10_000)
    try:
        # within the churn of the rest of the machine: a process that was there before and
        # has ended since (a CI job's helper) must not make the count unreachable
        v = agent.wait_for(
            "10,000 more processes counted",
            lambda v: one(v, "minerwatch_telemetry", metric="procs_total") >= before + 9_800,
            timeout=60,
        )
        now = host_processes()
        counted = one(v, "minerwatch_telemetry", metric="procs_total")
        assert abs(counted - now) <= 200, (counted, now)  # other jobs start and stop meanwhile
        assert one(v, "minerwatch_source_up", source="processes") == 1
        assert one(v, "minerwatch_errors_total", stage="sample") == 0
        assert one(v, "minerwatch_errors_total", stage="source_processes") == 0
    finally:
        sleepers.close()
    after = agent.wait_for(
        "the sleepers gone",
        lambda v: one(v, "minerwatch_telemetry", metric="procs_total") < before + 1_000,
    )
    assert one(after, "minerwatch_errors_total", stage="source_processes") == 0
    assert agent.stop() == 0, agent.tail()


# -- hostile process names ---------------------------------------------------------------------

#: Names itself (``comm``) with a newline, quotes, a backslash and bytes that are not UTF-8,
#: then burns one core; its command line carries the same and 4 KiB of text.
BURN = """
import sys
with open("/proc/self/comm", "wb") as f:
    f.write(sys.argv[1].encode("utf-8", "surrogateescape"))
while True:
    pass
"""
HOSTILE_COMM = b"x\n\"q'\\\xff\xfe{}"  # 10 bytes: the kernel keeps 15
HOSTILE_ARGS = [b"line\nFORGED WARNING minerwatch: fake", b'"quoted" \'single\' back\\slash',
                b"\xff\xfe\xc3(not utf-8)", b"<script>alert(1)</script>\n~~~\n# FORGED heading",
                b"A" * 4096]  # fmt: skip


@pytest.mark.slow
def test_hostile_process_names_leave_metrics_events_evidence_and_report_well_formed(
    tmp_path, agents, quiet_models
):
    """Two such processes burn the cores under a quiet host's model, so an alert opens with
    them as suspects: ``/metrics`` passes ``promtool check metrics`` and carries no process
    name, every event line and the evidence file are JSON, the log cannot be forged by a
    newline in a name, and ``minerwatch report`` renders the episode in every format."""
    data = data_dir_with_model(tmp_path, quiet_models)
    burners = [
        subprocess.Popen([sys.executable, "-c", BURN, HOSTILE_COMM, *HOSTILE_ARGS],
                         start_new_session=True)
        for _ in range(os.cpu_count() or 1)
    ]  # fmt: skip
    try:
        agent = Agent(data, tmp_path / "agent.log", "--interval", "1s", "--window", "3s",
                      host=QUIET)  # fmt: skip
        agents.append(agent)
        agent.wait_for("an alert", lambda v: one(v, "minerwatch_alert_active") == 1, 60)
        text = agent.text()
        assert text is not None
        promtool("check", "metrics", stdin=text.encode())
        for needle in ("FORGED", "quoted", "not utf-8", "AAAA"):
            assert needle not in text
    finally:
        for b in burners:
            b.kill()
            b.wait()
    assert agent.stop() == 0, agent.tail()
    events = [json.loads(line) for line in (data / "events.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "open" and events[-1]["event"] == "close"
    evidence = json.loads(Path(events[0]["evidence"]).read_text())
    ours = [p for p in evidence["processes"] if p["pid"] in {b.pid for b in burners}]
    assert ours, evidence["processes"]  # the suspects are the hostile processes
    for p in ours:  # read back as text: the name whole, the 4 KiB argument kept
        assert p["name"].startswith("x") and "q" in p["name"], p["name"]
        assert any(a.startswith("AAAA") for a in p["cmdline"]), p["cmdline"]
    log = agent.log.read_text(errors="replace").splitlines()
    said = [line for line in log if "alert opened on" in line]
    assert len(said) == 1, log  # one line, the name's newline escaped inside it
    assert not [line for line in log if line.startswith(("FORGED", '"q'))]
    # on a busy machine another process may be the suspect the report writes up
    suspect_is_ours = (events[0].get("process") or {}).get("pid") in {b.pid for b in burners}
    for fmt in ("html", "json", "md"):
        out = tmp_path / f"report.{fmt}"
        done = subprocess.run(
            [MINERWATCH, "report", "--data-dir", str(data), "--format", fmt, "--output", str(out)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        body = out.read_text(errors="strict")
        if fmt == "json":
            json.loads(body)
        elif fmt == "html":  # process text is escaped, never markup
            assert "<script>alert" not in body and '"quoted"' not in body
        else:  # process text stays inside code fences: outside them no line is forged
            outside = re.sub(r"(?ms)^(~{3,}|`{3,})\n.*?\n\1$", "", body)
            assert not [ln for ln in outside.splitlines() if ln.startswith(("FORGED", "# FORGED"))]
        if suspect_is_ours and fmt != "json":  # the report shows the suspect's command line
            assert "FORGED" in body


# -- a full disk -------------------------------------------------------------------------------

#: Mounts a small tmpfs on the data dir in the agent's own mount namespace, puts the model
#: there, then becomes the agent: the mount is gone with it, nothing leaks to the host.
ON_TMPFS = 'd=$1; m=$2; shift 2; mount -t tmpfs -o size=64m,mode=0700 minerwatch-test "$d" \
&& cp -r "$m" "$d/models" && exec "$@"'


def scoring_on_tmpfs(
    tmp_path: Path, quiet_models: Path, interval: str, agents: list[Agent]
) -> tuple[Agent, Path]:
    """An agent whose data dir is a 64 MiB tmpfs of its own mount namespace, scoring the
    quiet host; and that data dir as seen from outside (``/proc/<pid>/root``)."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    prefix = ("unshare", "-m", "--propagation", "private", "sh", "-c", ON_TMPFS, "sh",
              str(data), str(quiet_models))  # fmt: skip
    agent = Agent(data, tmp_path / "agent.log", "--interval", interval, "--window", "3s",
                  "--retrain-every", "0", host=QUIET, prefix=prefix)  # fmt: skip
    agents.append(agent)
    agent.wait_for("scoring", lambda v: one(v, "minerwatch_windows_scored_total") >= 1)
    return agent, Path(f"/proc/{agent.proc.pid}/root") / str(data).lstrip("/")


def private_mounts_work() -> bool:
    done = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    return done.returncode == 0


def stored_in_namespace(pid: int, db: Path) -> np.ndarray:
    """:func:`stored` run inside ``pid``'s mount namespace (SQLite resolves the symlink of
    ``/proc/<pid>/root`` and would open the host's path instead)."""
    code = (
        "import json, sqlite3, sys; c = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', "
        "uri=True); print(json.dumps([r[0] for r in c.execute('SELECT ts FROM samples')]))"
    )
    done = subprocess.run(["nsenter", "-t", str(pid), "-m", sys.executable, "-c", code, str(db)],
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return np.sort(np.array(json.loads(done.stdout), dtype=float))


@pytest.mark.skipif(
    shutil.which("unshare") is None or not private_mounts_work(),
    reason="needs unshare -m (root)",
)
def test_a_full_disk_keeps_scoring_says_so_and_writes_again_when_space_returns(
    tmp_path, agents, quiet_models
):
    """The data dir is a 64 MiB tmpfs, filled from outside (through ``/proc/<pid>/root``):
    the agent keeps sampling and scoring, counts history errors and logs that it keeps new
    data in memory; when the filler is deleted it logs that it writes again, at the next
    sample, and the samples taken while the disk was full are then in history.db."""
    agent, inside = scoring_on_tmpfs(tmp_path, quiet_models, "0.5s", agents)
    data = agent.data_dir
    filler = inside / "filler"
    try:
        opened = filler.open("wb", buffering=0)  # unbuffered: nothing left to fail at close
    except OSError as exc:  # full before the test filled it: say with what
        files = sorted((p.stat().st_size, str(p)) for p in inside.rglob("*") if p.is_file())
        pytest.fail(f"the tmpfs was full before the filler ({exc}): {files[-10:]}")
    with opened as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError:
            pass  # ENOSPC: the tmpfs is full
    full = agent.wait_for(
        "a history error", lambda v: one(v, "minerwatch_errors_total", stage="history") >= 1
    )
    full_at = time.time()
    assert "keeping new data in memory" in agent.tail()
    go_on = agent.wait_for(
        "scoring while full",
        lambda v: (
            one(v, "minerwatch_windows_scored_total")
            >= one(full, "minerwatch_windows_scored_total") + 2
        ),
    )
    assert one(go_on, "minerwatch_samples_total") >= one(full, "minerwatch_samples_total") + 4
    filler.unlink()
    freed_at = time.time()
    deadline = time.monotonic() + 20
    while "writing to" not in agent.tail() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "history: recovered, writing to" in agent.tail(), agent.tail()
    assert time.time() - freed_at < 10  # at the next sample, not at the 300 s retry
    ts = stored_in_namespace(agent.proc.pid, data / "history.db")
    while_full = ts[(ts > full_at) & (ts < freed_at)]
    assert len(while_full) >= (freed_at - full_at) / 0.5 - 2, "samples of the full disk lost"
    assert np.diff(ts).max() < 1.5, "a gap in the stored samples"
    # the tmpfs lives as long as a process in that mount namespace: keep one past the agent
    holder = subprocess.Popen(["nsenter", "-t", str(agent.proc.pid), "-m", "sleep", "60"])
    try:
        time.sleep(0.2)
        assert agent.stop() == 0, agent.tail()
        log = Path(f"/proc/{holder.pid}/root") / str(data / "events.jsonl").lstrip("/")
        text = log.read_text() if log.exists() else ""
    finally:
        holder.kill()
        holder.wait()
    # an alert that opened or closed while the disk was full still has its event lines, in
    # order, each whole (the busy machine makes this quiet host's model alert)
    events = [json.loads(line) for line in text.splitlines()]
    opened: set[str] = set()
    for e in events:
        if e["event"] == "open":
            opened.add(e["id"])
        elif e["event"] in ("update", "close"):
            assert e["id"] in opened, f"{e['event']} line without its open line: {events}"


#: Burns one core until killed.
SPIN = "while True:\n    pass\n"


def fill(folder: Path) -> Path:
    """A file filling ``folder``'s filesystem to the last byte (ENOSPC ends it)."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as fh:  # unbuffered: nothing left to fail at close
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError:
            pass  # ENOSPC: full
    return filler


@pytest.mark.skipif(
    shutil.which("unshare") is None or not private_mounts_work(),
    reason="needs unshare -m (root)",
)
def test_evidence_a_full_disk_refused_is_written_once_it_has_room(tmp_path, agents, quiet_models):
    """The data dir is a tmpfs, full when an alert opens (two burners on the quiet host's
    model): the evidence file the disk refuses is kept in memory, said once, counted as an
    evidence error, and scoring goes on; once the filler is deleted it is written at a later
    tick, 0600 in the 0700 evidence folder, whole, with what was collected as the alert
    opened (the burners as suspects). Before, it was lost. The agent watches the real host:
    a disguised process of a test running beside this one gets its own ``suspect-`` file
    (and may be refused too), so the episode's file is looked for by its id."""
    agent, inside = scoring_on_tmpfs(tmp_path, quiet_models, "1s", agents)
    evidence = inside / "evidence"

    def episode_files() -> list[Path]:
        return [p for p in evidence.glob("*.json") if p.name.split("-", 1)[1].startswith(QUIET)]

    filler = fill(inside)
    burners = [subprocess.Popen([sys.executable, "-c", SPIN], start_new_session=True)
               for _ in range(2)]  # fmt: skip
    try:
        opened = agent.wait_for("an alert", lambda v: one(v, "minerwatch_alert_active") == 1, 60)
        full = agent.wait_for(
            "an evidence error", lambda v: one(v, "minerwatch_errors_total", stage="evidence") >= 1
        )
        refused = one(full, "minerwatch_errors_total", stage="evidence")
        assert not episode_files()
        assert agent.tail().count("kept in memory and written as soon as") == 1, agent.tail()
        # scoring goes on while the evidence waits
        agent.wait_for(
            "scoring while full",
            lambda v: (
                one(v, "minerwatch_windows_scored_total")
                >= one(opened, "minerwatch_windows_scored_total") + 2
            ),
        )
        assert agent.tail().count("kept in memory and written as soon as") == 1, agent.tail()
        # ticks that found the disk still full did not count the file again
        assert one(agent.values(), "minerwatch_errors_total", stage="evidence") == refused
        freed_at = time.time()
        filler.unlink()
        deadline = time.monotonic() + 20
        while "the disk has room again" not in agent.tail() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "the disk has room again: wrote " in agent.tail(), agent.tail()
        (path,) = episode_files()
        assert os.stat(evidence).st_mode & 0o777 == 0o700
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert not list(evidence.glob(".*.tmp"))
        doc = json.loads(path.read_text())
        # what was collected as the alert opened, while the disk was full
        assert doc["episode_id"].startswith(QUIET) and doc["written_at"] < freed_at
        pids = {p.get("pid") for p in doc["processes"]}
        assert pids & {b.pid for b in burners}, doc["processes"]
        v = agent.values()
        assert one(v, "minerwatch_errors_total", stage="evidence") == refused  # counted once
    finally:
        for b in burners:
            b.kill()
            b.wait()
    assert agent.stop() == 0, agent.tail()
    assert "Traceback" not in agent.tail()


#: A 1 MiB tmpfs on the data dir, seeded from a folder, then filled to the last byte.
FULL_FROM_START = 'd=$1; seed=$2; shift 2; mount -t tmpfs -o size=1m,mode=0700 mw-full "$d" \
&& cp -r "$seed/." "$d" && { cat /dev/zero > "$d/filler" 2>/dev/null; exec "$@"; }'


@pytest.mark.skipif(
    shutil.which("unshare") is None or not private_mounts_work(),
    reason="needs unshare -m (root)",
)
def test_an_agent_restarted_on_a_full_disk_runs_and_releases_what_a_crash_left_paused(
    tmp_path, agents
):
    """The agent was killed while it held a process paused (the throttle journal lists it)
    and the disk filled: systemd restarts it on a data dir with no byte free. It must start,
    release the process, serve metrics, count the history's failure, say once (not at every
    sample) that its host signals' state cannot be saved, and stop with 0. It exited 1
    before: first writing its pid into agent.lock, then saving the journal after the
    release, so every restart of the unit failed the same way."""
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        os.kill(sleeper.pid, signal.SIGSTOP)
        seed = tmp_path / "seed"
        (seed / "throttle").mkdir(parents=True, mode=0o700)
        record = {"pid": sleeper.pid, "create_time": psutil.Process(sleeper.pid).create_time(),
                  "name": "sleep", "method": "sigstop", "since": time.time() - 60}  # fmt: skip
        journal = {"throttled": [record], "exempt": []}
        (seed / "throttle" / "throttle-journal.json").write_text(json.dumps(journal))
        data = tmp_path / "data"
        data.mkdir(mode=0o700)
        prefix = ("unshare", "-m", "--propagation", "private", "sh", "-c", FULL_FROM_START, "sh",
                  str(data), str(seed))  # fmt: skip
        agent = Agent(data, tmp_path / "agent.log", "--interval", "0.5s", prefix=prefix)
        agents.append(agent)
        v = agent.wait_for("metrics", lambda v: one(v, "minerwatch_samples_total") >= 8)
        assert one(v, "minerwatch_errors_total", stage="history") >= 1, agent.tail()
        # said once, not at every sample: a full disk lasts, and so would the log lines
        assert agent.tail().count("host_signals failed") == 1, agent.tail()
        assert psutil.Process(sleeper.pid).status() != psutil.STATUS_STOPPED, agent.tail()
        assert "throttle release pid=" in agent.tail()
        assert agent.stop() == 0, agent.tail()
        assert "Traceback" not in agent.tail() and "unexpected failure" not in agent.tail()
    finally:
        sleeper.kill()
        sleeper.wait()


# -- the clock stepping ------------------------------------------------------------------------


class SteppedReplay:
    """A collector replaying a synthetic quiet host row by row, and the agent's wall clock:
    the row's time plus ``offset`` (what a step of the host's clock adds)."""

    def __init__(self, series) -> None:  # type: ignore[no-untyped-def]
        self.series, self.i, self.offset = series, 0, 0.0
        self.errors = {"cpu": 0, "processes": 0}
        self._ok = {"cpu", "processes"}
        self.top_processes = ()

    def clock(self) -> float:
        return float(self.series.timestamps[self.i]) + self.offset

    def sample(self) -> dict[str, float]:
        row = self.series.values[self.i].tolist()
        return dict(zip(self.series.columns, row, strict=True))


def test_clock_steps_of_an_hour_neither_crash_nor_alert_nor_pause_scoring(tmp_path, caplog):
    """The agent's injected clock steps forward an hour, back an hour, and back another,
    while it replays a quiet host its model knows (a model that can alert: threshold below
    1). Nothing raises, no alert opens, and scoring goes on right after each step: after a
    backward one it used to wait until the clock passed the last window scored, the host
    unwatched for the step's length. Each clock's windows are stored once, in order."""
    interval, window = 10.0, 60.0
    now0 = np.floor(time.time() / 3600) * 3600 - 6 * 3600
    day = host_series(QUIET, days=1.0, interval=interval, seed=0, start=now0 - 86400)
    models = tmp_path / "models"
    save_model(models, train_host(day, window, window, params={"alert_windows": 3}))
    replay = SteppedReplay(host_series(QUIET, days=3.5 / 24, interval=interval, seed=1, start=now0))
    cfg = AgentConfig(data_dir=tmp_path / "data", host=QUIET, interval=interval, window=window,
                      learn_for=86400.0, retrain_every=0.0)  # fmt: skip
    shutil.copytree(models, cfg.data_dir / "models")
    agent = AgentLoop(cfg, collector=replay, clock=replay.clock)
    assert agent.model is not None and agent.model.threshold < 1.0
    scored: list[int] = []
    try:
        for i in range(len(replay.series.timestamps)):  # 1,260 rows, 10 s apart
            replay.i = i
            replay.offset = 3600.0 * ((120 <= i < 240) - (i >= 720))
            agent.tick()
            scored.append(agent.counters["windows"])
        stored = agent.history._conn.execute("SELECT window_start FROM windows ORDER BY rowid")
        starts = [r[0] for r in stored]  # as scored
        assert agent.counters["alerts"] == 0 and not agent.history.alerted_windows()
        assert agent.errors == {}, agent.errors
        # a window a minute all along (the rolling features restart at each step: the
        # first window after it is a minute later)
        for step in (120, 240, 720):
            assert scored[step + 12] >= scored[step - 1] + 1, (step, scored[step - 1 : step + 13])
        assert scored[-1] >= 1260 // 6 - 8
        # the windows of each clock once, in order: start times go back at the two steps only
        back = [k for k in range(1, len(starts)) if starts[k] <= starts[k - 1]]
        assert len(back) == 2, back
        for a, b in zip([0, *back], [*back, len(starts)], strict=True):
            run = starts[a:b]
            assert run == sorted(run) and len(run) == len(set(run))
        said = [r.getMessage() for r in caplog.records if "clock stepped back" in r.getMessage()]
        assert len(said) == 2, said  # an hour back, less the 10 s the clock went on
        assert all(m.startswith("the clock stepped back 3590 s") for m in said), said
        assert all("scoring goes on at the new clock" in m for m in said), said
    finally:
        agent.shutdown()


def test_a_clock_stepped_back_during_an_alert_closes_the_episode_and_scoring_goes_on(
    tmp_path, caplog
):
    """A step back while an alert episode is open: the episode is closed (its windows stay in
    one timeline), the alert stays on, and scoring goes on at the new clock, where the
    plateau, still there, opens the next episode at its first window. It waited, the alert on
    and the host unwatched, until the clock passed the last window scored: an hour for an
    hour, years for an RTC corrected years back."""
    interval, window = 10.0, 60.0
    now0 = np.floor(time.time() / 3600) * 3600 - 6 * 3600
    day = host_series(QUIET, days=1.0, interval=interval, seed=0, start=now0 - 86400)
    models = tmp_path / "models"
    save_model(models, train_host(day, window, window, params={"alert_windows": 3}))
    hot = host_series(QUIET, days=2 / 24, interval=interval, seed=1, start=now0,
                      plateau=(600.0, 2 * 3600.0))  # fmt: skip
    replay = SteppedReplay(hot)
    cfg = AgentConfig(data_dir=tmp_path / "data", host=QUIET, interval=interval, window=window,
                      learn_for=86400.0, retrain_every=0.0)  # fmt: skip
    shutil.copytree(models, cfg.data_dir / "models")
    agent = AgentLoop(cfg, collector=replay, clock=replay.clock)
    scored: list[int] = []
    try:
        for i in range(len(hot.timestamps)):  # 720 rows; the clock an hour back from 300 on
            replay.i = i
            replay.offset = -3600.0 * (i >= 300)
            agent.tick()
            scored.append(agent.counters["windows"])
            if i == 299:
                assert agent.episode is not None, "the plateau opened no alert"
                first = agent.episode["id"]
            if i >= 299:
                assert agent.alert is not None and agent.alert.active, i  # never resolved
        assert scored[300 + 12] > scored[300] and scored[-1] >= scored[300] + 60
        lines = [json.loads(x) for x in (cfg.data_dir / "events.jsonl").read_text().splitlines()]
        kinds = [(e["event"], e["id"], e.get("reason")) for e in lines if e["event"] != "update"]
        assert kinds[:2] == [("open", first, None), ("close", first, "clock_stepped_back")], kinds
        assert kinds[2][0] == "open" and kinds[2][1] != first and len(kinds) == 3, kinds
        assert agent.episode is not None and agent.episode["id"] == kinds[2][1]
        assert agent.episode["start"] >= float(hot.timestamps[300]) - 3600.0 - window
        said = [r.getMessage() for r in caplog.records if "clock stepped back" in r.getMessage()]
        assert len(said) == 1 and said[0].endswith("the alert still on)"), said
    finally:
        agent.shutdown()


LIBFAKETIME = next(iter(Path("/usr/lib").glob("*/faketime/libfaketime.so.1")), None)


def step_clock(spec: Path, offset: str) -> None:
    """Set libfaketime's offset file whole: with FAKETIME_NO_CACHE it is read at every clock
    call, and a write in place (truncate, then write) lets a read see it empty, i.e. the real
    clock: a step back and forth the test never made (seen once in CI, 2026-12-07)."""
    new = spec.with_name(spec.name + ".new")
    new.write_text(offset)
    os.replace(new, spec)


@pytest.mark.skipif(LIBFAKETIME is None, reason="needs libfaketime (Debian's faketime)")
@pytest.mark.slow
def test_the_real_agent_survives_its_wall_clock_stepping(tmp_path, agents, quiet_models):
    """``minerwatch serve`` under libfaketime (wall clock only; monotonic time runs on, as
    with an NTP step), stepped an hour forward and then back: it keeps sampling and
    scoring after both steps (after the backward one it used to stop scoring for the hour)
    and says so in its log, stops cleanly, and its history holds each clock's windows once."""
    spec = tmp_path / "faketime"
    step_clock(spec, "+0\n")
    env = {**os.environ, "LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(spec),
           "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}  # fmt: skip
    data = data_dir_with_model(tmp_path, quiet_models)
    agent = Agent(data, tmp_path / "agent.log", "--interval", "0.5s", "--window", "2s",
                  "--retrain-every", "0", host=QUIET, env=env)  # fmt: skip
    agents.append(agent)
    v = agent.wait_for("scoring", lambda v: one(v, "minerwatch_windows_scored_total") >= 1)
    step_clock(spec, "+3600\n")
    n, w = one(v, "minerwatch_samples_total"), one(v, "minerwatch_windows_scored_total")
    v = agent.wait_for(
        "scoring an hour ahead",
        lambda v: (
            one(v, "minerwatch_windows_scored_total") >= w + 2
            and one(v, "minerwatch_last_sample_timestamp_seconds") > time.time() + 3000
        ),
    )
    step_clock(spec, "+0\n")
    n = one(v, "minerwatch_samples_total")
    v = agent.wait_for(
        "sampling an hour back", lambda v: one(v, "minerwatch_samples_total") >= n + 6
    )
    assert abs(one(v, "minerwatch_last_sample_timestamp_seconds") - time.time()) < 60
    assert re.search(r"the clock stepped back 3[56]\d\d s", agent.tail()), agent.tail()
    w = one(v, "minerwatch_windows_scored_total")
    v = agent.wait_for(  # not an hour later: the host is not left unwatched
        "scoring an hour back", lambda v: one(v, "minerwatch_windows_scored_total") >= w + 2
    )
    assert abs(one(v, "minerwatch_last_score_timestamp_seconds") - time.time()) < 60
    assert agent.stop() == 0, agent.tail()
    conn = sqlite3.connect(data / "history.db")
    try:
        starts = [r[0] for r in conn.execute("SELECT window_start FROM windows ORDER BY rowid")]
    finally:
        conn.close()
    back = [k for k in range(1, len(starts)) if starts[k] <= starts[k - 1]]
    assert len(back) == 1, back  # each clock's windows once, in order


@pytest.mark.skipif(LIBFAKETIME is None, reason="needs libfaketime (Debian's faketime)")
def test_a_clock_stepped_a_day_ahead_while_learning_does_not_end_learning(tmp_path, agents):
    """The wall clock steps a day ahead seconds after ``serve`` started learning for 8 s:
    it goes on learning until its samples cover 8 s (the step counted as a day learnt, so
    learning ended at once on three samples), and the model it then trains is retrained when
    its history has doubled, not a day later (its windows' first to last spanned the day)."""
    spec = tmp_path / "faketime"
    step_clock(spec, "+0\n")
    env = {**os.environ, "LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(spec),
           "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}  # fmt: skip
    agent = Agent(tmp_path / "data", tmp_path / "agent.log", "--interval", "0.5s", "--window",
                  "2s", "--learn-for", "8s", env=env)  # fmt: skip
    agents.append(agent)
    agent.wait_for("sampling", lambda v: one(v, "minerwatch_samples_total") >= 3)
    step_clock(spec, "+86400\n")
    v = agent.wait_for(
        "sampling a day ahead",
        lambda v: one(v, "minerwatch_last_sample_timestamp_seconds") > time.time() + 80000,
    )
    n = one(v, "minerwatch_samples_total")
    v = agent.wait_for("4 s more", lambda v: one(v, "minerwatch_samples_total") >= n + 8)
    assert one(v, "minerwatch_learning") == 1, agent.tail()
    assert 0 < one(v, "minerwatch_learning_progress_ratio") < 1, agent.tail()
    agent.wait_for("the model", lambda v: one(v, "minerwatch_learning") == 0, timeout=60)
    found = re.search(r"model for \S+ loaded: .*next training (\d+) s after", agent.tail())
    assert found and int(found[1]) < 60, agent.tail()
    assert agent.stop() == 0, agent.tail()


def test_a_model_of_forty_minutes_a_day_apart_cannot_alert_like_one_of_forty_minutes(tmp_path):
    """``minerwatch train`` on two 20-minute stretches a day apart (a clock step, or a host
    off overnight): 40 windows, which judge like 40 minutes of one day (a model of less than
    about an hour cannot alert), not like a day (threshold 0.68 before: the first to last
    window span counted as time seen)."""
    start = 1767225600.0
    parts = [host_series("gappy", days=20 / 1440, interval=10.0, seed=s, start=start + d)
             for s, d in ((3, 0.0), (4, 86400.0))]  # fmt: skip
    ts = np.concatenate([p.timestamps for p in parts])
    values = np.vstack([p.values for p in parts])
    write_csv(tmp_path / "gappy.csv", [from_arrays("gappy", ts, values, parts[0].columns)])
    done = subprocess.run([MINERWATCH, "train", str(tmp_path / "gappy.csv"), "--models",
                           str(tmp_path / "models")], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    model = load_model(tmp_path / "models", "gappy")
    assert model.meta["windows"] == 40 and model.threshold == 1.0


@pytest.mark.skipif(LIBFAKETIME is None, reason="needs libfaketime (Debian's faketime)")
@pytest.mark.skipif(
    shutil.which("unshare") is None or not private_mounts_work(),
    reason="needs unshare -m (root)",
)
def test_a_training_that_keeps_failing_on_a_full_disk_is_retried_less_and_less_often(
    tmp_path, agents
):
    """The agent learns on a full disk, so the training input cannot be written. It says so
    and tries again after a minute, then after two, four... (the wall clock is stepped
    ahead with libfaketime instead of waiting): a disk full for hours no longer starts a
    training every minute (each one, with a history on disk, a child reading all of it)."""
    spec = tmp_path / "faketime"
    step_clock(spec, "+0\n")
    env = {**os.environ, "LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(spec),
           "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}  # fmt: skip
    (tmp_path / "seed").mkdir()
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    prefix = ("unshare", "-m", "--propagation", "private", "sh", "-c", FULL_FROM_START, "sh",
              str(data), str(tmp_path / "seed"))  # fmt: skip
    agent = Agent(data, tmp_path / "agent.log", "--interval", "0.5s", "--window", "2s",
                  "--learn-for", "4s", prefix=prefix, env=env)  # fmt: skip

    agents.append(agent)

    def failures(at_least: int) -> int:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert agent.proc.poll() is None, agent.tail()
            n = agent.tail().count("retraining gave no new model")
            if n >= at_least:
                return n
            time.sleep(0.1)
        pytest.fail(f"{at_least} failed trainings not reached\n{agent.tail()}")

    assert failures(1) == 1
    assert "the training input could not be written" in agent.tail()
    step_clock(spec, "+70\n")  # past the first backoff (60 s): tried again
    assert failures(2) == 2
    step_clock(spec, "+140\n")  # 70 s after the second failure: within its 120 s
    n = one(agent.values(), "minerwatch_samples_total")
    agent.wait_for("3 s more", lambda v: one(v, "minerwatch_samples_total") >= n + 6)
    assert agent.tail().count("retraining gave no new model") == 2, agent.tail()
    step_clock(spec, "+200\n")  # 130 s after it: tried again
    assert failures(3) == 3
    assert agent.stop() == 0, agent.tail()


@pytest.mark.skipif(LIBFAKETIME is None, reason="needs libfaketime (Debian's faketime)")
def test_an_agent_started_with_its_clock_far_ahead_keeps_the_history(tmp_path, agents):
    """``serve`` starts with its wall clock 400 days ahead (a wrong RTC at boot, a bad time
    server) on ten minutes of stored history: it says the clock is past every stored sample
    and keeps them (it deleted them all at once, silently, as older than the 14-day
    retention), and stores its new samples beside them. Restarted at that clock, it keeps
    them too (they went at the first prune once a sample was stored at the clock's time)."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    prefill_history(data)
    before = len(stored(data / "history.db"))
    spec = tmp_path / "faketime"
    step_clock(spec, "+400d\n")
    env = {**os.environ, "LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(spec),
           "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}  # fmt: skip
    agent = Agent(data, tmp_path / "agent.log", "--interval", "0.5s", env=env)
    agents.append(agent)
    agent.wait_for("sampling", lambda v: one(v, "minerwatch_samples_total") >= 3)
    assert agent.stop() == 0, agent.tail()
    ts = stored(data / "history.db")
    assert (ts < time.time() + 60).sum() == before, "stored samples deleted"
    assert (ts > time.time() + 399 * 86400).sum() >= 3
    assert re.search(r"the clock is 400\.\d days past the newest stored sample", agent.tail())
    # started again at that clock: its own samples are now the newest, and the history
    # before them is still older than the retention by the clock (it used to go here)
    again = Agent(data, tmp_path / "again.log", "--interval", "0.5s", env=env)
    agents.append(again)
    again.wait_for("sampling", lambda v: one(v, "minerwatch_samples_total") >= 2)
    assert again.stop() == 0, again.tail()
    ts = stored(data / "history.db")
    assert (ts < time.time() + 60).sum() == before, "stored samples deleted at the restart"


def test_a_renamed_host_is_told_the_models_in_its_data_folder_are_another_hosts(
    tmp_path, agents, quiet_models
):
    """The data folder holds a model for another host name (the host was renamed, or the
    folder copied from another host): the agent says so at start, naming both, instead of
    silently learning again from the history stored under the old name."""
    data = data_dir_with_model(tmp_path, quiet_models)
    agent = Agent(data, tmp_path / "agent.log", "--interval", "0.5s", host=LEARNER)
    agents.append(agent)
    agent.wait_for("sampling", lambda v: one(v, "minerwatch_samples_total") >= 1)
    assert agent.stop() == 0, agent.tail()
    said = f'no model for "{LEARNER}" in {data / "models"}, but one for "{QUIET}"'
    assert said in agent.tail(), agent.tail()
