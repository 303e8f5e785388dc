"""A host already mining when the agent first learns it, with the real ``minerwatch serve``.

The burner is a copy of ``yes`` named ``xmrig`` in a hidden folder under /tmp (one core of
CPU, a miner's name, an exe in a temporary folder). Started before the agent, it must be
reported at once (log line, event line, metric, owner-only evidence) and never learnt: the
model the agent trains leaves it out of the known processes and names it in its record.
While it runs every window holds it, so
nothing is learnt; the test stops it once reported and learning goes on without it. That such a
model then alerts on the miner is shown on a longer baseline in
``tests/test_procbase.py`` (a baseline learnt in seconds is by design too unsure to alert).
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import time
from pathlib import Path

from test_agent_e2e import LEARN_TIMEOUT, AgentProcess

from minerwatch.baseline.store import load_model
from minerwatch.features.procs import identity


def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.5)
    raise AssertionError(f"not reached in {timeout:.0f}s: {what}")


def test_a_miner_running_before_learning_is_reported_at_once_and_never_learnt(
    tmp_path: Path,
) -> None:
    folder = Path("/tmp") / f".vx-{tmp_path.name}"
    folder.mkdir(exist_ok=True)
    exe = folder / "xmrig"
    shutil.copy(shutil.which("yes") or "/usr/bin/yes", exe)
    burner = subprocess.Popen([str(exe)], stdout=subprocess.DEVNULL)
    data = tmp_path / "data"
    agent = None
    try:
        time.sleep(1.0)
        agent = AgentProcess(data, tmp_path / "agent.log")
        events = data / "events.jsonl"

        def reported() -> bool:
            if not events.exists():
                return False
            lines = [json.loads(x) for x in events.read_text().splitlines()]
            return any(x["event"] == "suspect_process" for x in lines)

        _wait(reported, 60, "a suspect_process event line")
        line = next(
            x
            for x in map(json.loads, events.read_text().splitlines())
            if x["event"] == "suspect_process"
        )
        assert line["learning"] is True
        assert line["process"]["pid"] == burner.pid
        assert line["process"]["exe"] == str(exe)
        assert line["why"] == "a known miner's name"
        evidence = Path(line["evidence"])
        assert stat.S_IMODE(evidence.stat().st_mode) == 0o600
        assert str(burner.pid) in evidence.read_text()
        log = agent.log.read_text()
        assert "suspect process on e2e-host while learning (left out of the baseline)" in log
        assert f"pid {burner.pid}" in log
        m = agent.wait_for(
            "the suspect counted", lambda m: m.get("minerwatch_suspect_processes_total", 0) >= 1, 30
        )
        assert m["minerwatch_suspect_processes_total"] == 1  # once per process, not per sample
        # while it runs, every window holds it and none can be learnt; once it stops, the
        # rest of the learning period trains the model
        burner.kill()
        agent.wait_for(
            "a first model", lambda m: m.get("minerwatch_learning") == 0.0, LEARN_TIMEOUT
        )
        model = load_model(data / "models", "e2e-host")
        assert model.procs is not None and len(model.procs.identities) > 0
        assert identity("xmrig", str(exe), "root") not in model.procs.identities
        assert any(str(exe) in f for f in model.meta["flagged_processes"])
    finally:
        burner.kill()
        burner.wait(timeout=10)
        if agent is not None:
            agent.kill()
        shutil.rmtree(folder, ignore_errors=True)


GC_SPINNER = """
import ctypes, sys, threading
libc = ctypes.CDLL(None)
def spin():
    libc.prctl(15, b"GC Thread#0", 0, 0, 0)  # PR_SET_NAME, as HotSpot names its collector's
    while True:
        pass
threading.Thread(target=spin, daemon=True).start()
sys.stdin.read()
"""


def test_the_agent_keeps_the_cpu_of_garbage_collector_threads_in_its_history(
    tmp_path: Path,
) -> None:
    """The real agent reads the threads of its busiest processes: a process whose busy thread
    carries a collector's name is stored with that CPU as its ``gc``, for training to credit."""
    import sqlite3
    import sys

    spinner = subprocess.Popen([sys.executable, "-c", GC_SPINNER], stdin=subprocess.PIPE)
    data = tmp_path / "data"
    agent = None

    def gc_rows() -> list[tuple[float, float]]:
        db = data / "history.db"
        if not db.exists():
            return []
        conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
        try:
            q = "SELECT cpu, gc FROM procs WHERE pid = ? AND gc IS NOT NULL"
            return conn.execute(q, (spinner.pid,)).fetchall()
        except sqlite3.Error:
            return []
        finally:
            conn.close()

    try:
        agent = AgentProcess(data, tmp_path / "agent.log")
        _wait(lambda: len(gc_rows()) >= 3, 60, "three samples of the spinner with its GC time")
        rows = gc_rows()
        assert all(gc >= 0.5 * cpu and cpu >= 30.0 for cpu, gc in rows[-3:]), rows
    finally:
        spinner.kill()
        spinner.wait(timeout=10)
        if agent is not None:
            agent.kill()
