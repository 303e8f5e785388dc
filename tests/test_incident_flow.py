"""A responder's walk after an alert, with the real agent and a real "miner".

Everything runs in a PID namespace the test creates (``unshare --pid --mount-proc``), so the
agent's auto-throttle can only ever see the test's own processes on a shared machine. The
agent has a baseline of a quiet host (``minerwatch train``), the miner is a copy of Python in
a hidden folder under /tmp named ``xmrig`` burning a core; the agent alerts, names it,
throttles it (SIGSTOP), and the evidence is rewritten when a new indicator appears while the
miner, stopped, has no CPU left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from test_isolate_agent import QUIET, quiet_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a PID namespace"),
]

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).with_name("minerwatch")
BURN = "while True: pass\n"
#: Busy a third of the time: more CPU than a stopped miner, no more indicators than one.
HELPER = """
import time
while True:
    end = time.monotonic() + 0.03
    while time.monotonic() < end:
        pass
    time.sleep(0.06)
"""


class PidNamespace:
    """A PID namespace (with its own /proc) whose init is ``sleep``; killing it ends all."""

    def __init__(self) -> None:
        self.anchor = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "sleep", "600"]
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            kids = psutil.Process(self.anchor.pid).children()
            if kids:
                self.init = kids[0].pid
                return
            time.sleep(0.05)
        self.anchor.kill()
        pytest.skip("unshare --pid did not start here")

    def cmd(self, *argv: str) -> list[str]:
        return ["nsenter", "-t", str(self.init), "-p", "-m", "--", *argv]

    def close(self) -> None:
        self.anchor.kill()
        self.anchor.wait(timeout=30)


@pytest.fixture
def pidns() -> Iterator[PidNamespace]:
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.skip("needs unshare and nsenter (util-linux)")
    ns = PidNamespace()
    try:
        yield ns
    finally:
        ns.close()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )


def test_evidence_keeps_the_throttled_suspect_first(pidns, tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    quiet_model(tmp_path, data / "models")
    hidden = tmp_path / ".x"
    hidden.mkdir()
    miner_exe = hidden / "xmrig"
    shutil.copy(os.path.realpath(sys.executable), miner_exe)
    log = tmp_path / "agent.log"
    agent_cmd = pidns.cmd(
        str(SCRIPT), "serve", "--data-dir", str(data), "--host", QUIET, "--port", "0",
        "--address", "127.0.0.1", "--interval", "1s", "--window", "3s", "--learn-for", "30s",
        "--retrain-every", "0", "--log-dir", "", "--throttle", "--throttle-only-when-alert",
        "--throttle-cpu", "10", "--throttle-hold", "1s", "--throttle-method", "sigstop",
        "--throttle-max-targets", "1",
    )  # fmt: skip
    with log.open("ab") as fh:
        agent = subprocess.Popen(agent_cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)

    def until(what, pred, timeout=90.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert agent.poll() is None, log.read_text()[-3000:]
            got = pred()
            if got:
                return got
            time.sleep(0.3)
        pytest.fail(f"{what}: not seen in {timeout:.0f}s\n{log.read_text()[-3000:]}")

    def journal():
        path = data / "throttle" / "throttle-journal.json"
        return json.loads(path.read_text())["throttled"] if path.exists() else []

    def episode_evidence():
        return [p for p in (data / "evidence").glob("*.json") if "-suspect-" not in p.name]

    try:
        until("the agent's metrics", lambda: "metrics on" in log.read_text(), 30)
        # setsid -f: nsenter must not wait on the miner (it would stop with it, then resume it)
        subprocess.run(
            pidns.cmd("setsid", "-f", str(miner_exe), "-c", BURN), check=True, timeout=10
        )
        stopped = until("the miner throttled", journal)
        miner = stopped[0]["pid"]
        assert stopped[0]["name"] == "xmrig"
        first = until("the episode's evidence", episode_evidence)[0]
        # a new indicator while the miner is stopped: the evidence is rewritten
        subprocess.run(
            pidns.cmd("setsid", "-f", "/usr/bin/python3", "-c", HELPER, "stratum+tcp://pool.invalid:3333"),
            check=True, timeout=10,
        )  # fmt: skip
        until(
            "the evidence rewritten with the new indicator",
            lambda: any(
                h["indicator_id"] == "stratum_url" and h["pid"] != miner
                for h in json.loads(first.read_text())["indicators"]
            ),
        )
    finally:  # SIGTERM to the agent itself: nsenter does not pass signals on
        for child in psutil.Process(agent.pid).children() if agent.poll() is None else []:
            child.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)

    listed = run("evidence", "list", "--json", "--data-dir", str(data))
    assert listed.returncode == 0, listed.stderr
    entry = next(e for e in json.loads(listed.stdout) if e["name"] == first.name)
    assert (entry["top_pid"], entry["top_process"]) == (miner, "xmrig")
    doc = json.loads(first.read_text())
    top = doc["processes"][0]
    assert top["pid"] == miner and top["exe"] == str(miner_exe)
    assert top["sha256"] and top["status"] == "stopped"
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    assert doc["hostname"] == QUIET  # the host the alerts name (--host), not this machine's
    report = run("report", "--data-dir", str(data), "--format", "json")
    assert report.returncode == 0, report.stderr
    suspect = json.loads(report.stdout)["suspect"]
    assert suspect["pid"] == miner and suspect["sha256"] == top["sha256"]
    assert not journal()  # shutdown released the miner
    said = log.read_text()
    assert f"throttle: throttle pid {miner} (xmrig) by sigstop: host cpu" in said
    assert "Action(" not in said and "Traceback" not in said
