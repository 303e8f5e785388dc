"""``minerwatch isolate`` when a pid comes back: the isolated process exits and another one
gets its pid, for real. The test runs everything in a PID namespace of its own (inside a
network namespace of its own), whose ``ns_last_pid`` hands out a chosen pid next, so the
reuse is certain and touches no process of the host.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_isolate import CLIENT, CLIENT_PYTHON, NOBODY, POOL, SCRIPT, _in_ns, netns  # noqa: F401

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")

REAPER = r"""
import os, time
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.1)
"""
OTHER_UID = 65533  # a second unprivileged user


class PidNs:
    """Init (a reaper) of a new PID namespace in ``netns``; commands run in both."""

    def __init__(self, ns: str, tmp: Path) -> None:
        self.tmp = tmp
        self.proc = subprocess.Popen(
            _in_ns(ns, "unshare", "-p", "-f", "--mount-proc", CLIENT_PYTHON, "-c", REAPER)
        )
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        deadline = time.monotonic() + 10
        while not children.read_text().split():
            assert time.monotonic() < deadline, "no PID namespace"
            time.sleep(0.02)
        self.init = int(children.read_text().split()[0])

    def cmd(self, *args: str) -> list[str]:
        return ["nsenter", "-t", str(self.init), "-p", "-m", "-n", "--", *args]

    def run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cmd(*map(str, args)), capture_output=True, text=True, timeout=60)

    def start(self, out: Path, *args: str, uid: int = 0, pid: int = 0) -> int:
        """Start ``args`` in the background (as ``uid``, with pid ``pid`` when given); its pid
        in the namespace. Its output goes to ``out``."""
        ids = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if uid else []
        pick = f"echo {pid - 1} > /proc/sys/kernel/ns_last_pid; " if pid else ""
        script = pick + '"$@" > "$0" 2>&1 & echo $!'
        r = self.run("sh", "-c", script, str(out), *ids, *args)
        assert r.returncode == 0, r.stderr
        return int(r.stdout)

    def close(self) -> None:
        os.kill(self.init, signal.SIGKILL)  # the namespace's init: the kernel kills the rest
        self.proc.wait(timeout=10)


@pytest.fixture
def pidns(netns: str, tmp_path: Path) -> Iterator[PidNs]:  # noqa: F811
    ns = PidNs(netns, tmp_path)
    try:
        yield ns
    finally:
        ns.close()


def wait_for(out: Path, word: str, timeout: float = 10.0) -> None:
    """Until the client's output, from now on, says ``word`` twice in a row."""
    start = len(out.read_text().splitlines())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.read_text().splitlines()[start:][-2:] == [word, word]:
            return
        time.sleep(0.1)
    raise AssertionError(f"{out.name}: expected {word!r}, got {out.read_text().split()[-6:]}")


def test_isolating_a_reused_pid_keeps_the_earlier_isolation(pidns: PidNs, tmp_path: Path):
    """Miner A (uid nobody) is isolated by uid, exits and its pid goes to B (another user).
    Isolating B must not drop A's entry: A's respawn under the same uid stays cut off (the
    journal's promise), and the status shows both."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    out = {n: tmp_path / n for n in ("pool", "a", "a2", "b")}  # opened by root's shell
    pidns.start(out["pool"], CLIENT_PYTHON, "-c", POOL, "127.0.0.1", "3335")
    client = (CLIENT_PYTHON, "-c", CLIENT, "127.0.0.1", "3335")
    a = pidns.start(out["a"], *client, uid=NOBODY)
    wait_for(out["a"], "ok")
    done = pidns.run(SCRIPT, "isolate", "--process", str(a), "--data-dir", data)
    assert done.returncode == 0, done.stderr
    wait_for(out["a"], "fail")

    assert pidns.run("kill", "-KILL", str(a)).returncode == 0
    time.sleep(0.3)  # reaped by the namespace's init
    b = pidns.start(out["b"], *client, uid=OTHER_UID, pid=a)
    assert b == a, "the pid was not reused"
    pidns.start(out["a2"], *client, uid=NOBODY)  # A respawned by cron: still cut off
    wait_for(out["a2"], "fail")
    wait_for(out["b"], "ok")

    again = pidns.run(SCRIPT, "isolate", "--process", str(b), "--data-dir", data)
    assert again.returncode == 0, again.stderr
    wait_for(out["b"], "fail")
    wait_for(out["a2"], "fail")  # was "ok": A's entry had been replaced by B's
    status = pidns.run(SCRIPT, "isolate", "status", "--data-dir", data)
    assert f"uid {NOBODY} dropped" in status.stdout and "has exited" in status.stdout
    assert f"uid {OTHER_UID} dropped" in status.stdout, status.stdout
    entries = json.loads((data / "isolate" / "isolate-journal.json").read_text())["isolated"]
    assert sorted((e["pid"], e["uid"]) for e in entries) == [(a, OTHER_UID), (a, NOBODY)]

    rel = pidns.run(SCRIPT, "isolate", "release", "--pid", str(a), "--data-dir", data)
    assert rel.returncode == 0, rel.stderr
    assert rel.stdout.count(f"released pid {a}") == 2, rel.stdout
    wait_for(out["a2"], "ok")
    wait_for(out["b"], "ok")
