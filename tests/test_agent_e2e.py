"""The real ``minerwatch serve`` process, end to end on this machine.

One agent (1 s interval, 3 s windows, 30 s of learning) is started for the module and
learns this host for real; then a real Prometheus scrapes it, promtool lints it, its
memory map is checked for scikit-learn/pandas, a CPU burner makes it alert (slow), and
SIGTERM/SIGINT stop it cleanly with a restart that scores at once from the stored model.
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

REPO = Path(__file__).resolve().parent.parent
HOST = "e2e-host"
LEARN_TIMEOUT = 120.0
HEAVY = re.compile(r"/(sklearn|pandas)/")


class AgentProcess:
    """A started agent subprocess with its port, data dir and log."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.data_dir = data_dir
        self.log = log
        self.port = free_port()
        cmd = [
            sys.executable, "-m", "minerwatch", "serve",
            "--data-dir", str(data_dir), "--host", HOST,
            "--port", str(self.port), "--address", "127.0.0.1",
            "--interval", "1s", "--window", "3s", "--learn-for", "30s",
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
        """Unlabelled minerwatch_* values of one scrape (empty if not answering)."""
        out = {}
        for line in (self.metrics_text() or "").splitlines():
            m = re.fullmatch(r"(minerwatch_[a-z_]+) (\S+)", line)
            if m:
                out[m.group(1)] = float(m.group(2))
            elif line.startswith('minerwatch_telemetry{metric="cpu_percent"} '):
                out["cpu_percent"] = float(line.split()[-1])
        return out

    def wait_for(self, what: str, pred, timeout: float) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"agent exited {self.proc.returncode}:\n{self.tail()}"
            m = self.metrics()
            if m and pred(m):
                return m
            time.sleep(0.5)
        pytest.fail(f"agent: {what} not reached in {timeout:.0f}s; last {self.metrics()}\n"
                    f"{self.tail()}")

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
        cmd = [sys.executable, "-c", f"import subprocess,sys\n"
               f"ps=[subprocess.Popen([sys.executable,'-c',{loop!r}]) for _ in range({cores})]\n"
               "[p.wait() for p in ps]"]
    return subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL)


def stop_burner(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def collect(agent: AgentProcess, seconds: float, stop=None) -> list[dict[str, float]]:
    """One scrape per second for ``seconds`` (or until ``stop(metrics)``)."""
    out: list[dict[str, float]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        m = agent.metrics()
        if m:
            out.append(m)
            if stop is not None and stop(m):
                break
        time.sleep(1.0)
    return out


def episodes(agent: AgentProcess) -> list[dict]:
    log = agent.data_dir / "events.jsonl"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.slow
def test_cpu_burn_raises_the_score_and_alerts(agent):
    calm = collect(agent, 10)
    if calm[-1]["minerwatch_alert_active"]:  # a false alarm on this noisy machine: let it end
        calm += collect(agent, 20, stop=lambda m: m["minerwatch_alert_active"] == 0)
    calm_scores = [m["minerwatch_anomaly_score"] for m in calm]
    threshold = calm[-1]["minerwatch_anomaly_threshold"]
    alerts_before = calm[-1]["minerwatch_alerts_total"]
    active_before = calm[-1]["minerwatch_alert_active"] == 1.0

    def alerting(m):
        new_episode = m["minerwatch_alerts_total"] > alerts_before
        burning = m.get("cpu_percent", 0.0) > 90.0 and m["minerwatch_anomaly_score"] > threshold
        return m["minerwatch_alert_active"] == 1.0 and burning and (new_episode or active_before)

    burn_started = time.time()
    burner = start_burner()
    try:
        burn = collect(agent, 60, stop=alerting)
    finally:
        stop_burner(burner)
    burn_ended = time.time()
    burn_scores = [m["minerwatch_anomaly_score"] for m in burn]
    assert alerting(burn[-1]), f"no alert within 60 s; scores {burn_scores}"
    assert max(burn_scores) > threshold
    # The calm period of a 30 s baseline on a shared machine can itself alarm, so the burn is
    # not compared with it; what must hold is that the alert came while the CPU burned and
    # that the explanation points at CPU, not at something else that happened to move.
    assert max(burn_scores[-3:]) > threshold, (calm_scores, burn_scores)
    # The episode is written to the event log when it ends: after the burn, or at shutdown.
    collect(agent, 30, stop=lambda m: m["minerwatch_alert_active"] == 0)
    if agent.metrics().get("minerwatch_alert_active") == 1.0:
        rc, _ = agent.signal_and_wait(signal.SIGTERM)
        assert rc == 0
    ours = [e for e in episodes(agent) if e["end"] >= burn_started and e["start"] <= burn_ended]
    assert ours, f"no event overlaps the burn: {episodes(agent)}"
    event = ours[-1]
    assert event["host"] == HOST and event["score"] > threshold and event["top_features"]
    assert any(f["feature"].startswith(("cpu", "top_proc")) for f in event["top_features"]), event
    mode = stat.S_IMODE((agent.data_dir / "events.jsonl").stat().st_mode)
    assert mode == 0o600


def stored_samples(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "history.db") as conn:
        return int(conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_stops_and_restart_scores_at_once(agent, signum):
    if agent.proc.poll() is None:  # the burn test may have stopped it already
        assert agent.metrics()["minerwatch_windows_scored_total"] > 0
        rc, took = agent.signal_and_wait(signum)
        assert rc == 0 and took < 5.0, (rc, took, agent.tail())
    version = json.loads((agent.data_dir / "models" / HOST / "meta.json").read_text())["sha256"]
    kept = stored_samples(agent.data_dir)
    assert kept >= 30  # at least the learning phase, 1 s apart
    # A new agent on the same data dir scores from the stored model with no learning phase.
    fresh = AgentProcess(agent.data_dir, agent.log)
    agent.port, agent.proc = fresh.port, fresh.proc
    first = agent.wait_for("the exporter", lambda m: True, 20)
    assert first["minerwatch_learning"] == 0.0
    assert first["minerwatch_learning_progress_ratio"] == 1.0
    info = re.search(r'minerwatch_model_info\{[^}]*model_version="(\w+)"', agent.metrics_text())
    assert info and info.group(1) == version[:12]
    agent.wait_for("scoring", lambda m: m.get("minerwatch_windows_scored_total", 0) >= 2, 30)
    assert not (agent.data_dir / "train-input.npz").stat().st_mtime > time.time() - 10, \
        "the restarted agent trained again instead of using its model"
