"""The real ``minerwatch serve`` process, end to end on this machine.

One agent (1 s interval, 3 s windows, 15 s of learning) is started for the module and
learns this host for real; then a real Prometheus scrapes it, promtool lints it, its
memory map is checked for scikit-learn/pandas, and SIGTERM/SIGINT stop it cleanly with a
restart that scores at once from the stored model. Further agents check that learning and
retraining do what their flags say, and that an alert is said as it opens and closes (a
baseline of a quiet host, trained by ``minerwatch train``, on this machine burning: a
baseline the agent learnt in seconds is by design too unsure to alert on anything).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from promtools import free_port, promtool, running_prometheus, scrape_job
from synth import quiet_host, write_csv

REPO = Path(__file__).resolve().parent.parent
HOST = "e2e-host"
LEARN_TIMEOUT = 120.0
HEAVY = re.compile(r"/(sklearn|pandas)/")


#: Learning of the agents here: five 3-s windows, enough for a model (one that can alert
#: needs hours: the alert tests load a trained one), and the time the module agent takes.
LEARN_S = 15
FAST = ("--interval", "1s", "--window", "3s", "--learn-for", f"{LEARN_S}s")


class AgentProcess:
    """A started agent subprocess with its port, data dir and log."""

    def __init__(self, data_dir: Path, log: Path, options: tuple[str, ...] = FAST) -> None:
        self.data_dir = data_dir
        self.log = log
        self.port = free_port()
        cmd = [
            sys.executable, "-m", "minerwatch", "serve",
            "--data-dir", str(data_dir), "--host", HOST,
            "--port", str(self.port), "--address", "127.0.0.1", *options,
        ]  # fmt: skip
        with log.open("ab") as fh:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def metrics_text(self) -> str | None:
        try:
            url = f"http://127.0.0.1:{self.port}/metrics"
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def metrics(self) -> dict[str, float]:
        """Unlabelled minerwatch_* values of one scrape (empty if not answering), with
        ``cpu_percent`` and ``retrain_failures_<reason>``."""
        out = {}
        for line in (self.metrics_text() or "").splitlines():
            m = re.fullmatch(r"(minerwatch_[a-z_]+) (\S+)", line)
            failed = re.fullmatch(
                r'minerwatch_retrain_failures_total\{reason="(\w+)"\} (\S+)', line
            )
            if m:
                out[m.group(1)] = float(m.group(2))
            elif line.startswith('minerwatch_telemetry{metric="cpu_percent"} '):
                out["cpu_percent"] = float(line.split()[-1])
            elif failed:
                out[f"retrain_failures_{failed.group(1)}"] = float(failed.group(2))
        return out

    def wait_for(self, what: str, pred, timeout: float) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"agent exited {self.proc.returncode}:\n{self.tail()}"
            m = self.metrics()
            if m and pred(m):
                return m
            time.sleep(0.5)
        pytest.fail(
            f"agent: {what} not reached in {timeout:.0f}s; last {self.metrics()}\n{self.tail()}"
        )

    def signal_and_wait(self, signum: int, timeout: float = 5.0) -> tuple[int, float]:
        t0 = time.monotonic()
        self.proc.send_signal(signum)
        rc = self.proc.wait(timeout=timeout)
        return rc, time.monotonic() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    """An agent that has learnt this host (the training child has run and been reaped)."""
    work = tmp_path_factory.mktemp("agent")
    a = AgentProcess(work / "data", work / "agent.log")
    try:
        a.wait_for("a first model", lambda m: m.get("minerwatch_learning") == 0.0, LEARN_TIMEOUT)
        a.wait_for("a first score", lambda m: "minerwatch_anomaly_score" in m, 30)
        yield a
    finally:
        a.kill()


def heavy_mappings(pid: int) -> list[str]:
    """Shared objects of scikit-learn or pandas mapped into a live process."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return sorted({line.split()[-1] for line in lines if HEAVY.search(line)})


def test_prometheus_scrapes_the_anomaly_score(agent, tmp_path):
    with running_prometheus(tmp_path, [scrape_job("minerwatch", agent.port)]) as prom:
        (result,) = prom.wait_for("minerwatch_anomaly_score", timeout=20)
        assert result["metric"]["job"] == "minerwatch"
        assert 0.0 <= float(result["value"][1]) <= 1.0
        (learning,) = prom.wait_for("minerwatch_learning")
        assert float(learning["value"][1]) == 0.0
        (up,) = prom.wait_for('up{job="minerwatch"}')
        assert float(up["value"][1]) == 1.0


def test_promtool_accepts_the_exposition(agent):
    text = agent.metrics_text()
    assert text and "minerwatch_anomaly_score" in text and "minerwatch_model_info" in text
    promtool("check", "metrics", stdin=text.encode())


def test_agent_process_never_maps_sklearn_or_pandas(agent):
    # The training child has imported scikit-learn; the agent itself must not have.
    assert (agent.data_dir / "models" / HOST / "meta.json").is_file()
    maps = Path(f"/proc/{agent.proc.pid}/maps").read_text()
    assert "/numpy/" in maps, "the maps check sees no numpy: it would see nothing"
    assert heavy_mappings(agent.proc.pid) == []
    # The same check catches a process that did import them.
    probe = subprocess.Popen(
        [sys.executable, "-c", "import sklearn.ensemble, pandas, sys; sys.stdin.read()"],
        stdin=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = " ".join(heavy_mappings(probe.pid))
            if "/sklearn/" in found and "/pandas/" in found:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the maps check did not see a process import them: {found}")
    finally:
        probe.communicate(b"", timeout=30)


def start_burner() -> subprocess.Popen[bytes]:
    """Busy loops on every core, in their own process group (stopped with killpg)."""
    cores = os.cpu_count() or 1
    if shutil.which("stress-ng"):
        cmd = ["stress-ng", "--cpu", str(cores), "--timeout", "120s", "--quiet"]
    else:
        loop = "import multiprocessing as m\nwhile True: pass"
        cmd = [
            sys.executable,
            "-c",
            f"import subprocess,sys\n"
            f"ps=[subprocess.Popen([sys.executable,'-c',{loop!r}]) for _ in range({cores})]\n"
            "[p.wait() for p in ps]",
        ]
    return subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL)


def stop_burner(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def episodes(agent: AgentProcess) -> list[dict]:
    log = agent.data_dir / "events.jsonl"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


QUIET = "e2e-quiet"


def textfile_value(folder: Path, name: str) -> float:
    """The value of an unlabelled ``name`` in the agent's node_exporter textfile."""
    text = (folder / "minerwatch.prom").read_text()
    (line,) = [x for x in text.splitlines() if x.startswith(f"{name} ")]
    return float(line.split()[1])


def quiet_model(tmp_path: Path) -> Path:
    """A data folder holding the model ``minerwatch train`` makes of two hours of a nearly
    idle host at 1-s samples (3-s windows): on this machine burning, it alerts at once."""
    data = tmp_path / "data"
    write_csv(tmp_path / "quiet.csv", [quiet_host(QUIET, time.time() - 9000, 7200, 1.0, seed=11)])
    subprocess.run(
        [sys.executable, "-m", "minerwatch", "train", str(tmp_path / "quiet.csv"),
         "--models", str(data / "models"), "--window", "3s", "--hop", "3s"],
        cwd=REPO, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    data.chmod(0o700)
    return data


@pytest.mark.slow
def test_an_alert_is_said_as_it_opens_and_as_it_closes(tmp_path):
    """A baseline of a quiet host (trained with ``minerwatch train``) on this machine with
    every core burning: the event line, its evidence file and a WARNING are there while the
    alert is on; stopping the agent appends the closing line."""
    data = quiet_model(tmp_path)
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    burner = start_burner()
    options = ("--host", QUIET, "--textfile", str(textfile), *FAST)
    agent = AgentProcess(data, tmp_path / "agent.log", options)
    try:
        first = agent.wait_for("the stored model", lambda m: True, 20)
        assert first["minerwatch_learning"] == 0.0
        on = agent.wait_for("an alert", lambda m: m.get("minerwatch_alert_active") == 1.0, 60)
        assert on["minerwatch_heavy_work"] == 0.0  # a compute loop does no work of its own
        (opened,) = episodes(agent)  # said at once, not when the episode ends
        assert opened["event"] == "open" and opened["host"] == QUIET
        assert opened["score"] > opened["threshold"] == on["minerwatch_anomaly_threshold"]
        assert opened["top_features"] and opened["id"] == f"{QUIET}-{int(opened['start'])}"
        evidence = Path(opened["evidence"])
        assert evidence.parent == data / "evidence" and evidence.is_file()
        assert stat.S_IMODE(evidence.stat().st_mode) == 0o600
        assert json.loads(evidence.read_text())["score"] == opened["score"]
        said = [line for line in agent.tail().splitlines() if "alert opened on" in line]
        assert len(said) == 1 and " WARNING minerwatch.agent: alert opened on e2e-quiet" in said[0]
        for part in (
            f"score {opened['score']:.4f}",
            f"threshold {opened['threshold']:.4f}",
            opened["top_features"][0]["feature"],
            f"evidence: {evidence}",
        ):
            assert part in said[0], (part, said[0])  # fmt: skip
        assert textfile_value(textfile, "minerwatch_alert_active") == 1.0
        rc, _ = agent.signal_and_wait(signal.SIGTERM, timeout=15)  # the miner still running
    finally:
        stop_burner(burner)
    assert rc == 0, agent.tail()
    # node_exporter keeps serving the textfile after the agent: the alert ends with the agent
    # there too, and the stale sample time tells MinerwatchAgentStalled nothing samples now
    assert textfile_value(textfile, "minerwatch_alert_active") == 0.0
    lines = episodes(agent)
    assert lines[0] == opened and lines[-1]["event"] == "close"
    assert lines[-1]["id"] == opened["id"] and lines[-1]["reason"] == "shutdown"
    assert all(line["event"] == "update" for line in lines[1:-1])
    assert "alert closed on e2e-quiet" in agent.tail()
    assert stat.S_IMODE((data / "events.jsonl").stat().st_mode) == 0o600


def stored_samples(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "history.db") as conn:
        return int(conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_stops_and_restart_scores_at_once(agent, signum):
    if agent.proc.poll() is None:  # the burn test may have stopped it already
        assert agent.metrics()["minerwatch_windows_scored_total"] > 0
        rc, took = agent.signal_and_wait(signum)
        assert rc == 0 and took < 5.0, (rc, took, agent.tail())
        name = signal.Signals(signum).name  # the journal says why it went away
        assert f"minerwatch agent for {HOST} stopped ({name})" in agent.tail(), agent.tail()
    version = json.loads((agent.data_dir / "models" / HOST / "meta.json").read_text())["sha256"]
    kept = stored_samples(agent.data_dir)
    assert kept >= LEARN_S  # at least the learning phase, 1 s apart
    # A new agent on the same data dir scores from the stored model with no learning phase.
    fresh = AgentProcess(agent.data_dir, agent.log)
    agent.port, agent.proc = fresh.port, fresh.proc
    first = agent.wait_for("the exporter", lambda m: True, 20)
    assert first["minerwatch_learning"] == 0.0
    assert first["minerwatch_learning_progress_ratio"] == 1.0
    info = re.search(r'minerwatch_model_info\{[^}]*model_version="(\w+)"', agent.metrics_text())
    assert info and info.group(1) == version[:12]
    agent.wait_for("scoring", lambda m: m.get("minerwatch_windows_scored_total", 0) >= 2, 30)


# -- learning and retraining, each through its own real agent --------------------------------


def test_a_learning_period_below_the_minimum_is_refused_at_start(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "minerwatch", "serve", "--learn-for", "90s", "--port", "0",
         "--data-dir", str(tmp_path / "data")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "--learn-for" in r.stderr and "(2m: the first model needs" in r.stderr, r.stderr
    assert "got --learn-for = 1m30s" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "data" / "history.db").exists(), "it started before refusing"


def trainings(agent: AgentProcess) -> list[float]:
    """History spans (s) the agent logged as it started each training child."""
    text = agent.log.read_text(errors="replace")
    return [float(s) for s in re.findall(r"training a model for \S+ in a child process "
                                         r"\((\d+) s of history", text)]  # fmt: skip


@pytest.mark.slow
def test_learning_and_retraining_do_what_was_asked(tmp_path):
    """``--learn-for 6s`` trains after 6 s of history (for ``--alarms-per-week``);
    ``--retrain-every 0`` never again;
    a retraining that cannot work (1 s of history for 10 s windows) says why in a metric."""
    never = AgentProcess(
        tmp_path / "never", tmp_path / "never.log",
        ("--interval", "1s", "--window", "3s", "--learn-for", "6s", "--retrain-every", "0",
         "--alarms-per-week", "3.5"),
    )  # fmt: skip
    starved = AgentProcess(
        tmp_path / "starved", tmp_path / "starved.log",
        ("--interval", "1s", "--window", "10s", "--learn-for", "20s", "--retrain-history", "1s"),
    )  # fmt: skip
    try:
        first = starved.wait_for("the exporter", lambda m: True, 20)
        reasons = ("too_few_windows", "bad_input", "crashed", "rejected", "unloadable")
        assert all(first[f"retrain_failures_{r}"] == 0 for r in reasons), first
        never.wait_for("a first model", lambda m: m.get("minerwatch_learning") == 0.0, 60)
        (span,) = trainings(never)
        assert 6 <= span < 9, f"learnt from {span} s of history, asked for 6 s"
        meta = never.data_dir / "models" / HOST / "meta.json"
        trained_at = json.loads(meta.read_text())["created_at"]
        # the false-alarm budget asked for is the one the training child calibrated for
        assert json.loads(meta.read_text())["params"]["max_alarms_per_week"] == 3.5
        failed = starved.wait_for(
            "a failed retraining", lambda m: m.get("retrain_failures_too_few_windows", 0) >= 1, 60
        )
        assert failed["minerwatch_learning"] == 1.0
        assert "retraining gave no new model (too_few_windows)" in starved.tail()
        # a young model would be relearnt after another 6 s; "0" means never
        time.sleep(max(0.0, trained_at + 15 - time.time()))
        m = never.metrics()
        assert m["minerwatch_learning"] == 0.0
        assert len(trainings(never)) == 1, never.tail()
        assert json.loads(meta.read_text())["created_at"] == trained_at
        assert all(m[f"retrain_failures_{r}"] == 0 for r in reasons)
    finally:
        never.kill()
        starved.kill()
