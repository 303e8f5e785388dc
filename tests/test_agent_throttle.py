"""The real agent (``minerwatch serve --config``) throttles a CPU burner and never leaves it
paused: SIGTERM releases it, and after ``kill -9`` the restarted agent releases it first thing.

The burner runs as ``nobody`` and the config protects every root process, so on a shared
machine the agent can only ever pick the test's own burner.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from promtools import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to signal another user's process"),
]

BURN = "import time\nend = time.monotonic() + 90\nwhile time.monotonic() < end: pass\n"


def wait_for(pred, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.2)
    return False


def status(pid):
    try:
        return psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return "gone"


def nobodys_python() -> str:
    """An interpreter 'nobody' may run (the test's own may sit in a root-only folder), or
    skip the test."""
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user")
    python = next(
        (p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.access(p, os.X_OK)), None
    )
    if python is None:
        pytest.skip("no system python3 for the burner")
    return python


@pytest.fixture
def burner():
    proc = subprocess.Popen([nobodys_python(), "-c", BURN], user="nobody", cwd="/")
    yield proc
    os.kill(proc.pid, signal.SIGCONT)
    proc.kill()
    proc.wait()


def start_agent(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f"""[agent]
interval = "1s"
window = "5s"
learn_for = "1h"
data_dir = "{tmp_path / "data"}"

[exporter]
port = {free_port()}
address = "127.0.0.1"

[throttle]
enabled = true
cpu_percent = 20.0
hold = "1s"
release_cpu_percent = 1.0
release_hold = "10m"
method = "sigstop"
allow_users = ["root"]
"""
    )
    return subprocess.Popen(
        [sys.executable, "-m", "minerwatch", "serve", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_releases_and_restart_after_kill9_releases(burner, tmp_path):
    agent = start_agent(tmp_path)
    try:
        assert wait_for(lambda: status(burner.pid) == psutil.STATUS_STOPPED), "never throttled"
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=10) == 0
        assert wait_for(lambda: status(burner.pid) != psutil.STATUS_STOPPED, 5), "left paused"
        audit = (tmp_path / "data" / "throttle").glob("*.jsonl")
        lines = "".join(p.read_text() for p in audit)
        assert '"throttle"' in lines and '"release"' in lines

        agent = start_agent(tmp_path)
        assert wait_for(lambda: status(burner.pid) == psutil.STATUS_STOPPED), "never throttled"
        agent.kill()
        agent.wait()
        time.sleep(1.0)
        assert status(burner.pid) == psutil.STATUS_STOPPED  # kill -9 cannot clean up...
        agent = start_agent(tmp_path)  # ...so the restarted agent does, first thing
        assert wait_for(lambda: status(burner.pid) != psutil.STATUS_STOPPED, 10), "not restored"
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=10)


def test_sighup_releases_and_a_second_agent_on_its_folder_is_refused(burner, tmp_path):
    """A second agent on the same data folder would release what the first holds (and mix
    their histories): refused, exit 2 naming the first one's pid, the burner still paused.
    SIGHUP (a closed terminal) ends the agent as SIGTERM does: everything released."""
    agent = start_agent(tmp_path)
    try:
        assert wait_for(lambda: status(burner.pid) == psutil.STATUS_STOPPED), "never throttled"
        second = start_agent(tmp_path)
        _, err = second.communicate(timeout=60)
        assert second.returncode == 2, err
        assert f"in use by the agent with pid {agent.pid}" in err and "Traceback" not in err
        assert status(burner.pid) == psutil.STATUS_STOPPED, "the refused agent released it"
        agent.send_signal(signal.SIGHUP)
        assert agent.wait(timeout=10) == 0
        assert wait_for(lambda: status(burner.pid) != psutil.STATUS_STOPPED, 5), "left paused"
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=10)


def test_a_miner_calling_itself_sshd_from_tmp_is_throttled(tmp_path):
    """A burner run as ``/tmp/.../sshd`` (a miner's favourite disguise) was protected as the
    core process 'sshd' by its name alone: a switched-on throttle never touched it. Only
    the system's own sshd is protected now."""
    python = nobodys_python()
    drop = Path(tempfile.mkdtemp(prefix="mw-sshd-", dir="/tmp"))
    drop.chmod(0o755)
    fake = drop / "sshd"
    shutil.copy2(python, fake)
    miner = subprocess.Popen([str(fake), "-c", BURN], user="nobody", cwd="/")
    agent = start_agent(tmp_path)
    try:
        assert wait_for(lambda: status(miner.pid) == psutil.STATUS_STOPPED), "never throttled"
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=10) == 0
        assert wait_for(lambda: status(miner.pid) != psutil.STATUS_STOPPED, 5), "left paused"
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=10)
        os.kill(miner.pid, signal.SIGCONT)
        miner.kill()
        miner.wait()
        shutil.rmtree(drop)
