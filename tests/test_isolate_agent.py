"""``[respond] isolate``: the real agent cuts a confirmed miner off the network, and never
leaves it cut off.

Everything runs inside a network namespace the test creates (never the machine's own
interfaces): a local "pool" (a session port it holds open, a probe port it answers), a
"miner" run as ``nobody`` that burns a core, holds a session to the pool and names a
``stratum+tcp://`` URL on its command line (two confirming indicators), and the agent with
a baseline of a quiet host (trained by ``minerwatch train``), so the miner's CPU alerts.
The miner prints ``ok``/``fail`` for a fresh connection to the pool every few tenths of a
second: that is what is checked, not only the journal.

This host has cgroup v1 only, so the agent matches the miner by uid (``meta skuid``); the
cgroup v2 rule (``socket cgroupv2``) is checked as text in test_isolate.py only.

One test, in steps (each agent start needs an alert, about ten seconds):
A isolates the miner; ``minerwatch isolate release`` undoes it and A does not take the same
process again; a respawned miner (new pid) is isolated in turn; ``kill -9`` A leaves it
isolated, and B, started in dry-run mode, releases it first thing and then only audits what
it would do; C isolates it and SIGTERM releases it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from synth import host_series, write_csv
from test_isolate import (  # noqa: F401 - netns: a fixture
    CLIENT_PYTHON,
    NOBODY,
    SCRIPT,
    Reader,
    _as_nobody,
    _in_ns,
    minerwatch,
    netns,
)

from minerwatch.features.io import from_arrays
from minerwatch.features.schema import METRIC_COLUMNS
from minerwatch.service.isolate import table_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and nftables"),
]

REPO = Path(__file__).resolve().parent.parent
QUIET = "iso-quiet"

POOL = r"""
import socket, sys, threading
def listener(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    return s
session, probe = listener(int(sys.argv[1])), listener(int(sys.argv[2]))
held = []
def hold():
    while True:
        held.append(session.accept()[0])
threading.Thread(target=hold, daemon=True).start()
print("listening", flush=True)
while True:
    probe.accept()[0].close()
"""

MINER = r"""
import socket, sys, time
host, port = sys.argv[1].split("//", 1)[1].split(":")
session = socket.create_connection((host, int(port)), timeout=2)  # the pool session
probe = int(sys.argv[2])
while True:
    end = time.monotonic() + 0.2
    while time.monotonic() < end:
        pass
    try:
        socket.create_connection((host, probe), timeout=0.3).close()
        print("ok", flush=True)
    except OSError:
        print("fail", flush=True)
"""

SESSION, PROBE = "3333", "4444"


def quiet_model(tmp: Path, models: Path) -> None:
    """A baseline of a nearly idle host at 1-s samples, trained by ``minerwatch train``."""
    base = host_series(QUIET, days=1.5 / 24, interval=1.0, seed=5, start=time.time() - 7000)
    rng = np.random.default_rng(5)
    v = base.values.copy()
    cpu = 0.75 + rng.gamma(1.5, 0.6, len(v))
    for name, x in (
        ("cpu_percent", cpu),
        ("cpu_user_percent", cpu * 0.7),
        ("cpu_system_percent", cpu * 0.3),
        ("top_proc_cpu_percent", cpu * 2.5),
    ):
        v[:, METRIC_COLUMNS.index(name)] = x
    write_csv(tmp / "quiet.csv", [from_arrays(QUIET, base.timestamps, v, base.columns)])
    subprocess.run(
        [sys.executable, "-m", "minerwatch", "train", str(tmp / "quiet.csv"),
         "--models", str(models), "--window", "3s", "--hop", "3s"],
        cwd=REPO, check=True, capture_output=True, timeout=300,
    )  # fmt: skip


class Agent:
    """``minerwatch serve`` inside the namespace (``ip netns exec`` execs in place)."""

    def __init__(self, ns: str, data: Path, log: Path, *flags: str) -> None:
        self.log = log
        cmd = _in_ns(
            ns, str(SCRIPT), "serve", "--data-dir", str(data), "--host", QUIET,
            "--port", "0", "--address", "127.0.0.1", "--interval", "1s", "--window", "3s",
            "--learn-for", "30s", "--retrain-every", "0", *flags,
        )  # fmt: skip
        with log.open("ab") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def alive(self) -> None:
        assert self.proc.poll() is None, f"agent exited {self.proc.returncode}:\n{self.tail()}"

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)


def journal(data: Path) -> list[dict]:
    path = data / "isolate" / "isolate-journal.json"
    return json.loads(path.read_text())["isolated"] if path.exists() else []


def audit(data: Path) -> list[dict]:
    path = data / "isolate" / "isolate-audit.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def until(what: str, pred, agent: Agent, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        agent.alive()
        got = pred()
        if got:
            return got
        time.sleep(0.3)
    pytest.fail(f"{what}: not seen in {timeout:.0f}s\n{agent.tail()}")


def isolated_by_agent(data: Path, pid: int) -> bool:
    return any(e["pid"] == pid and e["by"] == "agent" for e in journal(data))


def test_agent_isolates_a_confirmed_miner_and_always_releases_it(netns, tmp_path):  # noqa: F811
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    quiet_model(tmp_path, data / "models")
    pool = Reader(_in_ns(netns, CLIENT_PYTHON, "-c", POOL, SESSION, PROBE), tmp_path / "pool")
    url = f"stratum+tcp://127.0.0.1:{SESSION}"
    miner_cmd = _as_nobody(netns, CLIENT_PYTHON, "-c", MINER, url, PROBE)
    miners: list[Reader] = []
    agents: list[Agent] = []
    try:
        _until_listening(pool)
        miners.append(miner := Reader(miner_cmd, tmp_path / "miner1"))
        miner.wait_for("ok")

        # A isolates the miner on its alert, journaled as the agent's, said in the event line
        a = Agent(netns, data, tmp_path / "a.log", "--isolate-on-alert")
        agents.append(a)
        until("A isolates the miner", lambda: isolated_by_agent(data, miner.proc.pid), a)
        miner.wait_for("fail")
        (entry,) = journal(data)
        assert entry["uid"] == NOBODY and entry["cgroup"] == ""  # cgroup v1 host: by uid
        # the episode's open line follows its evidence file, which can take a while under load
        events = data / "events.jsonl"
        until("the episode's open line", lambda: events.exists() and events.read_text(), a)
        lines = [json.loads(x) for x in events.read_text().splitlines()]
        isolated = [i for e in lines for i in e.get("isolated", [])]
        assert isolated[0]["pid"] == miner.proc.pid and not isolated[0]["dry_run"]
        assert set(isolated[0]["indicators"]) & {"pool_port", "stratum_url"}

        # released on command; A does not take the same process again
        rel = minerwatch(netns, "isolate", "release", "--data-dir", data)
        assert rel.returncode == 0 and f"released pid {miner.proc.pid}" in rel.stdout, rel.stderr
        miner.wait_for("ok")
        time.sleep(5)  # several alerted windows
        assert journal(data) == [] and miner.lines()[-2:] == ["ok", "ok"]

        # a respawned miner (cron starts it again) is a new process: isolated in turn
        miner.stop()
        miners.append(miner := Reader(miner_cmd, tmp_path / "miner2"))
        until("A isolates the respawned miner", lambda: isolated_by_agent(data, miner.proc.pid), a)
        miner.wait_for("fail")

        # kill -9 cannot release...
        assert a.stop(signal.SIGKILL) == -signal.SIGKILL
        time.sleep(1.0)
        miner.wait_for("fail")
        assert isolated_by_agent(data, miner.proc.pid)
        # ...so the next agent does, first thing; in dry-run mode it then only audits
        b = Agent(netns, data, tmp_path / "b.log", "--isolate-on-alert", "--isolate-dry-run")
        agents.append(b)
        miner.wait_for("ok", timeout=30)
        until("B's dry run", lambda: any(x["action"] == "dry_run" for x in audit(data)), b)
        assert journal(data) == []
        miner.wait_for("ok")
        assert b.stop() == 0, b.tail()
        recovered = [x for x in audit(data) if "earlier agent run" in x["reason"]]
        assert [x["pid"] for x in recovered] == [miner.proc.pid]

        # C isolates it; SIGTERM releases it
        c = Agent(netns, data, tmp_path / "c.log", "--isolate-on-alert")
        agents.append(c)
        until("C isolates the miner", lambda: isolated_by_agent(data, miner.proc.pid), c)
        miner.wait_for("fail")
        assert c.stop() == 0, c.tail()
        miner.wait_for("ok")
        assert journal(data) == []
        last = audit(data)[-1]
        assert (last["action"], last["pid"], last["reason"]) == (
            "release",
            miner.proc.pid,
            "agent shutdown",
        )
        status = minerwatch(netns, "isolate", "status", "--json", "--data-dir", data)
        table = table_for(data / "isolate")
        assert json.loads(status.stdout) == {
            "table": table,
            "table_loaded": False,
            "isolated": [],
        }
    finally:
        for agent in agents:
            if agent.proc.poll() is None:
                agent.stop(signal.SIGKILL)
        minerwatch(netns, "isolate", "release", "--all", "--data-dir", data)
        for r in (*miners, pool):
            if r.proc.poll() is None:
                r.stop()


RECOVER = r"""
import sys
from dataclasses import replace
from pathlib import Path
from minerwatch.service.isolate import AGENT, AgentIsolator, isolate, plan_process
state = Path(sys.argv[1])
isolate(state, replace(plan_process(int(sys.argv[2])), by=AGENT), reason="test: an agent")
print(sorted(e.pid for e in AgentIsolator(state).recovered), flush=True)
"""


def _until_listening(pool: Reader, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while "listening" not in pool.lines():
        assert time.monotonic() < deadline and pool.proc.poll() is None, pool.lines()[-6:]
        time.sleep(0.05)


def test_a_starting_agent_releases_only_what_an_agent_isolated(netns, tmp_path):  # noqa: F811
    """An operator's isolation survives the agent's start-up recovery; the agent's does not."""
    data = tmp_path / "data"
    data.mkdir()
    pool = Reader(_in_ns(netns, CLIENT_PYTHON, "-c", POOL, SESSION, PROBE), tmp_path / "pool")
    _until_listening(pool)  # the miners' first connection must find the pool up
    url = f"stratum+tcp://127.0.0.1:{SESSION}"
    ids = ["--reuid=65533", "--regid=65533", "--clear-groups"]
    other = _in_ns(netns, "setpriv", *ids, CLIENT_PYTHON, "-c", MINER, url, PROBE)
    by_hand = Reader(_as_nobody(netns, CLIENT_PYTHON, "-c", MINER, url, PROBE), tmp_path / "m1")
    by_agent = Reader(other, tmp_path / "m2")
    try:
        by_hand.wait_for("ok")
        by_agent.wait_for("ok")
        done = minerwatch(netns, "isolate", "--process", str(by_hand.proc.pid), "--data-dir", data)
        assert done.returncode == 0, done.stderr
        state = data / "isolate"
        cmd = _in_ns(netns, sys.executable, "-c", RECOVER, str(state), str(by_agent.proc.pid))
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == f"[{by_agent.proc.pid}]"
        by_agent.wait_for("ok")
        by_hand.wait_for("fail")
        assert [(e["pid"], e["by"]) for e in journal(data)] == [(by_hand.proc.pid, "operator")]
    finally:
        minerwatch(netns, "isolate", "release", "--all", "--data-dir", data)
        for proc in (by_hand, by_agent, pool):
            proc.stop()


@contextlib.contextmanager
def an_operators_isolated_miner(ns: str, tmp_path: Path) -> Iterator[tuple[Path, Reader, list]]:
    """A pool and a miner (as nobody) connected to it, then cut off by an operator's
    ``isolate --process``: (data folder, miner, agents the test starts). Afterwards every
    agent is stopped, everything released and every process stopped."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    quiet_model(tmp_path, data / "models")
    pool = Reader(_in_ns(ns, CLIENT_PYTHON, "-c", POOL, SESSION, PROBE), tmp_path / "pool")
    url = f"stratum+tcp://127.0.0.1:{SESSION}"
    miner: Reader | None = None
    agents: list[Agent] = []
    try:
        _until_listening(pool)
        miner = Reader(_as_nobody(ns, CLIENT_PYTHON, "-c", MINER, url, PROBE), tmp_path / "m")
        miner.wait_for("ok")
        done = minerwatch(ns, "isolate", "--process", str(miner.proc.pid), "--data-dir", data)
        assert done.returncode == 0, done.stderr
        miner.wait_for("fail")
        yield data, miner, agents
    finally:
        for agent in agents:
            if agent.proc.poll() is None:
                agent.stop(signal.SIGKILL)
        minerwatch(ns, "isolate", "release", "--all", "--data-dir", data)
        for r in (miner, pool):
            if r is not None and r.proc.poll() is None:
                r.stop()


def test_the_agent_leaves_an_operators_isolation_to_the_operator(netns, tmp_path):  # noqa: F811
    """An operator isolated the miner before the agent alerted on it: the agent's own
    isolation of that process must not take the entry over, or its shutdown (a restart,
    an upgrade) would give the miner its network back."""
    with an_operators_isolated_miner(netns, tmp_path) as (data, miner, agents):
        agent = Agent(netns, data, tmp_path / "a.log", "--isolate-on-alert")
        agents.append(agent)
        said = f"pid {miner.proc.pid} is already isolated by an operator"
        until(
            "the agent's attempt on the miner",
            lambda: said in agent.tail() or isolated_by_agent(data, miner.proc.pid),
            agent,
        )
        assert [(e["pid"], e["by"]) for e in journal(data)] == [(miner.proc.pid, "operator")]
        assert agent.stop() == 0, agent.tail()
        miner.wait_for("fail")  # the agent's shutdown released nothing of the operator's
        assert [(e["pid"], e["by"]) for e in journal(data)] == [(miner.proc.pid, "operator")]


def test_the_agent_loads_the_isolations_again_when_a_firewall_reload_deletes_them(
    netns,  # noqa: F811
    tmp_path,
):
    """``nft flush ruleset`` or ``systemctl reload nftables`` (configuration management does
    both) deletes table ``inet minerwatch``: every process cut off was back on the network
    without a word, the journal still listing it. An agent with isolation switched on loads
    the journal's isolations again within seconds and says so."""
    with an_operators_isolated_miner(netns, tmp_path) as (data, miner, agents):
        agent = Agent(netns, data, tmp_path / "a.log", "--isolate-on-alert")
        agents.append(agent)
        until("the agent serving", lambda: "serving metrics on" in agent.tail(), agent)
        flushed = subprocess.run(_in_ns(netns, "nft", "flush", "ruleset"), capture_output=True)
        assert flushed.returncode == 0, flushed.stderr
        said = "was gone (a firewall reload?): loaded again from the journal, 1 isolation(s)"
        until("the table loaded again", lambda: said in agent.tail(), agent, timeout=60)
        miner.wait_for("fail")
        table = table_for(data / "isolate")
        listed = subprocess.run(_in_ns(netns, "nft", "list", "table", "inet", table),
                                capture_output=True, text=True)  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        assert [(e["pid"], e["by"]) for e in journal(data)] == [(miner.proc.pid, "operator")]
        assert any(a["action"] == "reload" for a in audit(data))
        assert agent.stop() == 0, agent.tail()
