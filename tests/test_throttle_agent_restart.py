"""Nothing is left throttled: SIGTERM to a throttling agent releases everything, and after
``kill -9`` a restarted Throttle releases what the journal lists.

The "agent" is this file run as a script (see ``driver``): a real Throttle loop in its own
process, pointed only at the burner child the test started.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from minerwatch.features.proctable import ProcessTable, parse_proc_cgroup
from minerwatch.service.cgroups import find_v1_cpu_root
from minerwatch.service.throttle import Throttle, ThrottleConfig

BURN = "import time\nend = time.monotonic() + 20\nwhile time.monotonic() < end: pass\n"
V1 = find_v1_cpu_root(Path("/sys/fs/cgroup"))
HAVE_V1 = V1 is not None and os.access(V1, os.W_OK) and os.geteuid() == 0


def driver(argv: list[str]) -> int:
    """A minimal agent loop: throttle the one target pid, release on SIGTERM/SIGINT."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--state-dir", type=Path, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--method", default="sigstop")
    args = ap.parse_args(argv)
    cfg = ThrottleConfig(
        enabled=True,
        cpu_percent=0.0,
        release_cpu_percent=0.0,
        hold=0.0,
        min_proc_cpu_percent=0.0,
        method=args.method,
        state_dir=args.state_dir,
    )

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    table = ProcessTable(lifetime_cpu_for_unseen=True)
    with Throttle(cfg, proc_reader=lambda: [p for p in table.read() if p.pid == args.pid]) as t:
        while True:
            t.update(100.0, alert_active=True)
            time.sleep(0.05)


def wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def cpu_s(pid):
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def is_stopped(pid):
    return psutil.Process(pid).status() == psutil.STATUS_STOPPED


def cpu_cgroup(pid):
    return parse_proc_cgroup(Path(f"/proc/{pid}/cgroup").read_text())["cpu"]


def throttled(pid, method):
    if method == "sigstop":
        return is_stopped(pid)
    return cpu_cgroup(pid).startswith("/minerwatch-throttle/")


def released(pid, method):
    if method == "cgroup1" and cpu_cgroup(pid) != "/":
        return False
    if is_stopped(pid):
        return False
    before = cpu_s(pid)
    return wait_for(lambda: cpu_s(pid) > before, timeout=5.0)


def kill(proc, *sigs):
    for sig in sigs:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)


METHODS = [
    "sigstop",
    pytest.param(
        "cgroup1", marks=pytest.mark.skipif(not HAVE_V1, reason="no writable cgroup v1 cpu")
    ),
]


@pytest.fixture
def burner():
    proc = subprocess.Popen([sys.executable, "-c", BURN])
    try:
        yield proc
    finally:
        kill(proc, signal.SIGCONT, signal.SIGKILL)


def start_agent(state_dir, pid, method):
    return subprocess.Popen(
        [sys.executable, __file__, "--state-dir", str(state_dir), "--pid", str(pid)]
        + ["--method", method]
    )


@pytest.mark.parametrize("method", METHODS)
def test_sigterm_to_agent_releases_everything(tmp_path, burner, method):
    agent = start_agent(tmp_path, burner.pid, method)
    try:
        assert wait_for(lambda: throttled(burner.pid, method)), "agent never throttled the burner"
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=10) == 128 + signal.SIGTERM
        assert released(burner.pid, method)
        audit = [
            json.loads(x) for x in (tmp_path / "throttle-audit.jsonl").read_text().split("\n") if x
        ]
        assert (audit[-1]["action"], audit[-1]["pid"]) == ("release", burner.pid)
        assert '"throttled": []' in (tmp_path / "throttle-journal.json").read_text()
    finally:
        kill(agent, signal.SIGKILL)
        Throttle(ThrottleConfig(state_dir=tmp_path))  # recovery: never leave it throttled


@pytest.mark.parametrize("method", METHODS)
def test_kill_9_then_restart_releases_everything(tmp_path, burner, method):
    agent = start_agent(tmp_path, burner.pid, method)
    try:
        assert wait_for(lambda: throttled(burner.pid, method)), "agent never throttled the burner"
        kill(agent, signal.SIGKILL)
        time.sleep(0.2)
        assert throttled(burner.pid, method), "kill -9 cannot release; the journal must"
        restarted = Throttle(ThrottleConfig(enabled=True, state_dir=tmp_path))
        assert [(a.action, a.pid) for a in restarted.recovered] == [("release", burner.pid)]
        assert released(burner.pid, method)
        assert restarted.throttled() == []
    finally:
        kill(agent, signal.SIGKILL)
        Throttle(ThrottleConfig(state_dir=tmp_path))


if __name__ == "__main__":
    sys.exit(driver(sys.argv[1:]))
