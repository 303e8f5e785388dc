"""Network isolation: the nftables ruleset on literals, and the real ``minerwatch isolate``
inside network namespaces the test creates (never the machine's own interfaces): a process
cannot reach a local "pool" listener once isolated, and can again after release."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_throttle_release import stepped_proc_stat

from minerwatch.features.errors import InputError
from minerwatch.service.isolate import (
    Isolation,
    cgroup2_mount,
    plan_host,
    plan_process,
    ruleset,
    table_for,
)

SCRIPT = Path(sys.executable).with_name("minerwatch")
NOBODY = 65534
#: A Python the unprivileged client can run (the venv's may live under a 0700 home).
CLIENT_PYTHON = "/usr/bin/python3"

POOL = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
print("listening", flush=True)
while True:
    s.accept()[0].close()
"""

CLIENT = r"""
import socket, sys, time
while True:
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.3).close()
        print("ok", flush=True)
    except OSError:
        print("fail", flush=True)
    time.sleep(0.1)
"""


# --------------------------------------------------------------------------- ruleset (literals)


def test_ruleset_empty_deletes_the_table():
    assert ruleset([]) == "table inet minerwatch {}\ndelete table inet minerwatch\n"


def test_ruleset_by_uid_and_by_cgroup():
    text = ruleset(
        [
            Isolation("process", pid=4242, create_time=1.0, uid=33),
            Isolation("process", pid=77, create_time=2.0, uid=0, cgroup="/system.slice/x.service"),
        ]
    )
    assert text.startswith("table inet minerwatch {}\ndelete table inet minerwatch\n")
    assert 'meta skuid 33 counter drop comment "pid 4242"' in text
    assert 'socket cgroupv2 level 2 "system.slice/x.service" counter drop comment "pid 77"' in text
    assert "policy accept;" in text and "policy drop" not in text
    assert "chain input" not in text  # a process is only cut off outbound


def test_ruleset_host_keeps_loopback_ssh_sources_and_scrapes():
    host = Isolation(
        "host", allow_ssh_from=("10.0.0.0/8", "2001:db8::/32"), ssh_port=2222, exporter_port=10091
    )
    text = ruleset([Isolation("process", pid=5, create_time=1.0, uid=1000), host])
    chains = text.split("chain ")
    inp = next(c for c in chains if c.startswith("input"))
    out = next(c for c in chains if c.startswith("output"))
    assert "policy drop;" in inp and "policy drop;" in out
    assert 'iif "lo" accept' in inp and 'oif "lo" accept' in out
    assert "ip saddr { 10.0.0.0/8 } tcp dport 2222 accept" in inp
    assert "ip6 saddr { 2001:db8::/32 } tcp dport 2222 accept" in inp
    assert "ip daddr { 10.0.0.0/8 } tcp sport 2222 ct state established accept" in out
    assert "tcp dport 10091 accept" in inp
    assert "tcp sport 10091 ct state established accept" in out
    # the suspect is dropped before loopback is accepted: no local pool proxy either
    assert out.index("meta skuid 1000") < out.index('oif "lo"')


def test_plan_host_refuses_no_source_a_bad_cidr_and_cutting_this_session(monkeypatch):
    monkeypatch.delenv("SSH_CONNECTION", raising=False)
    with pytest.raises(InputError, match="--allow-ssh-from"):
        plan_host([], 10091)
    with pytest.raises(InputError, match="CIDR"):
        plan_host(["10.0.0.0/33"], 10091)
    monkeypatch.setenv("SSH_CONNECTION", "192.0.2.7 50000 192.0.2.1 22")
    with pytest.raises(InputError, match="192.0.2.7"):
        plan_host(["10.0.0.0/8"], 10091)
    assert plan_host(["192.0.2.0/24"], 10091).allow_ssh_from == ("192.0.2.0/24",)


def test_cgroup2_mount_parses_mounts():
    assert cgroup2_mount("tmpfs /sys/fs/cgroup tmpfs ro 0 0\n") is None
    v2 = "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
    assert cgroup2_mount("proc /proc proc rw 0 0\n" + v2) == Path("/sys/fs/cgroup/unified")


# --------------------------------------------------------------------------- in a namespace


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace with loopback up; skipped where namespaces are not allowed."""
    if shutil.which("ip") is None or shutil.which("nft") is None:
        pytest.skip("needs ip (iproute2) and nft (nftables)")
    if shutil.which("setpriv") is None or not os.access(CLIENT_PYTHON, os.X_OK):
        pytest.skip(f"needs setpriv and {CLIENT_PYTHON}")
    name = f"mwtest-{secrets.token_hex(4)}"
    made = _ip("netns", "add", name)
    if made.returncode != 0:
        pytest.skip(f"ip netns add not permitted here: {made.stderr.strip()}")
    try:
        assert _ip("-n", name, "link", "set", "lo", "up").returncode == 0
        yield name
    finally:
        _ip("netns", "del", name)


class Reader:
    """Lines a background process prints, read without blocking."""

    def __init__(self, cmd: list[str], path: Path) -> None:
        self.path = path
        self.fh = path.open("w")
        self.proc = subprocess.Popen(cmd, stdout=self.fh, stderr=subprocess.STDOUT, text=True)

    def lines(self) -> list[str]:
        return self.path.read_text().splitlines()

    def wait_for(self, word: str, timeout: float = 10.0) -> None:
        """Until the latest lines (printed after this call) show ``word`` twice in a row."""
        start = len(self.lines())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            new = self.lines()[start:]
            if new[-2:] == [word, word]:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"expected {word!r}, got {self.lines()[-6:]} (rc={self.proc.poll()})")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.fh.close()


def _in_ns(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def _as_nobody(ns: str, *cmd: str) -> list[str]:
    ids = [f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    return _in_ns(ns, "setpriv", *ids, *cmd)


def minerwatch(ns: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    cmd = _in_ns(ns, str(SCRIPT), *map(str, args))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_isolate_a_process_then_release_it(netns, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    port = "3333"
    pool = Reader(_in_ns(netns, CLIENT_PYTHON, "-c", POOL, "127.0.0.1", port), tmp_path / "p")
    client = Reader(
        _as_nobody(netns, CLIENT_PYTHON, "-c", CLIENT, "127.0.0.1", port), tmp_path / "c"
    )
    try:
        client.wait_for("ok")
        # setpriv and ip netns exec exec() in place: the Popen pid is the client's
        pid = str(client.proc.pid)

        dry = minerwatch(netns, "isolate", "--process", pid, "--data-dir", data, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert f'meta skuid {NOBODY} counter drop comment "pid {pid}"' in dry.stdout
        assert not (data / "isolate" / "isolate-journal.json").exists()
        client.wait_for("ok")  # a dry run changes nothing

        done = minerwatch(netns, "isolate", "--process", pid, "--data-dir", data)
        assert done.returncode == 0, done.stderr
        client.wait_for("fail")
        journal = json.loads((data / "isolate" / "isolate-journal.json").read_text())
        assert [e["pid"] for e in journal["isolated"]] == [int(pid)]

        status = minerwatch(netns, "isolate", "status", "--json", "--data-dir", data)
        assert status.returncode == 0, status.stderr
        doc = json.loads(status.stdout)
        assert doc["table_loaded"] is True and doc["isolated"][0]["uid"] == NOBODY

        # a new command (as after a crash) releases from the journal alone
        rel = minerwatch(netns, "isolate", "release", "--data-dir", data)
        assert rel.returncode == 0, rel.stderr
        assert f"released pid {pid}" in rel.stdout
        client.wait_for("ok")
        after = json.loads(
            minerwatch(netns, "isolate", "status", "--json", "--data-dir", data).stdout
        )
        assert after == {
            "table": table_for(data / "isolate"),
            "table_loaded": False,
            "isolated": [],
        }
        audit = (data / "isolate" / "isolate-audit.jsonl").read_text().splitlines()
        assert [json.loads(line)["action"] for line in audit] == ["isolate", "release"]

        again = minerwatch(netns, "isolate", "release", "--pid", pid, "--data-dir", data)
        assert again.returncode == 2 and "isolate status" in again.stderr
        assert "Traceback" not in again.stderr
    finally:
        client.stop()
        pool.stop()


def pool_and_client(netns: str, tmp_path: Path, port: str) -> tuple[Path, Reader, Reader]:
    """A data folder, a "pool" listening on ``port`` in the namespace and a client of it
    running as nobody (the process to isolate), each reporting on its own output file."""
    data = tmp_path / "data"
    data.mkdir()
    pool = Reader(_in_ns(netns, CLIENT_PYTHON, "-c", POOL, "127.0.0.1", port), tmp_path / "p")
    client = Reader(
        _as_nobody(netns, CLIENT_PYTHON, "-c", CLIENT, "127.0.0.1", port), tmp_path / "c"
    )
    return data, pool, client


def isolate_client(netns: str, client: Reader, data: Path) -> str:
    """Isolate the running client with the real command and see it lose its pool; its pid."""
    client.wait_for("ok")
    pid = str(client.proc.pid)
    done = minerwatch(netns, "isolate", "--process", pid, "--data-dir", data)
    assert done.returncode == 0, done.stderr
    client.wait_for("fail")
    return pid


def test_release_all_deletes_the_table_when_the_journal_is_lost(netns, tmp_path):
    data, pool, client = pool_and_client(netns, tmp_path, "3334")
    try:
        isolate_client(netns, client, data)
        (data / "isolate" / "isolate-journal.json").write_text("{not json")
        bad = minerwatch(netns, "isolate", "release", "--data-dir", data)
        assert (
            bad.returncode == 2 and "isolate-journal.json" in bad.stderr and "--all" in bad.stderr
        )
        client.wait_for("fail")  # nothing was released on a journal it could not read
        forced = minerwatch(netns, "isolate", "release", "--all", "--data-dir", data)
        assert forced.returncode == 0, forced.stderr
        client.wait_for("ok")
    finally:
        client.stop()
        pool.stop()


def test_a_lost_journal_is_not_taken_for_nothing_isolated(netns, tmp_path):
    """The journal is deleted while the table is loaded (a wiped data folder, another
    --data-dir): a plain release must not say "nothing was isolated" and exit 0 while the
    process stays cut off; the status says why; ``--all`` says it deleted the table. And a
    table deleted under a journal (a firewall reload) is shown as not in force."""
    data, pool, client = pool_and_client(netns, tmp_path, "3336")
    journal = data / "isolate" / "isolate-journal.json"
    try:
        isolate_client(netns, client, data)
        journal.unlink()
        status = minerwatch(netns, "isolate", "status", "--data-dir", data)
        assert status.returncode == 0 and "loaded, but" in status.stdout, status.stdout
        rel = minerwatch(netns, "isolate", "release", "--data-dir", data)
        assert rel.returncode == 2 and "--all" in rel.stderr and str(journal) in rel.stderr
        assert "nothing was isolated" not in rel.stdout
        client.wait_for("fail")
        forced = minerwatch(netns, "isolate", "release", "--all", "--data-dir", data)
        assert forced.returncode == 0, forced.stderr
        table = table_for(data / "isolate")
        assert f"deleted nftables table inet {table}" in forced.stdout, forced.stdout
        client.wait_for("ok")

        again = minerwatch(netns, "isolate", "--process", str(client.proc.pid), "--data-dir", data)
        assert again.returncode == 0, again.stderr
        client.wait_for("fail")
        assert (
            subprocess.run(
                _in_ns(netns, "nft", "delete", "table", "inet", table), timeout=30
            ).returncode
            == 0
        )
        client.wait_for("ok")
        status = minerwatch(netns, "isolate", "status", "--data-dir", data)
        assert "NOT loaded: nothing listed above is cut off" in status.stdout, status.stdout
    finally:
        minerwatch(netns, "isolate", "release", "--all", "--data-dir", data)
        client.stop()
        pool.stop()


#: A hand-made entry (its uid written as text), spelt as a human would leave it.
HAND_EDITED = '{"kind": "process",  "pid": 4000000, "uid": "65533" }'


def _with_hand_edited_entry(journal: Path) -> None:
    text = journal.read_text()
    assert '"isolated": [' in text
    journal.write_text(text.replace('"isolated": [', f'"isolated": [{HAND_EDITED}, ', 1))


def test_a_hand_edited_entry_is_named_and_kept_and_the_others_still_release(netns, tmp_path):
    """An entry with a value nft cannot take (a uid written as text) made every command
    refuse the whole journal (exit 2), so no other isolation could be released, nor the
    agent's at its shutdown. Now the entry is named (file, entry, field, what was expected)
    and kept in the file as it was, the valid ones work, and the command exits 2."""
    data, pool, client = pool_and_client(netns, tmp_path, "3337")
    journal = data / "isolate" / "isolate-journal.json"
    said = f"{journal}: isolated[0].uid is a string '65533' (expected a whole number"
    try:
        pid = isolate_client(netns, client, data)
        _with_hand_edited_entry(journal)
        status = minerwatch(netns, "isolate", "status", "--data-dir", data)
        assert status.returncode == 2 and said in status.stderr, status.stderr
        assert f"pid {pid}: outbound traffic of uid {NOBODY} dropped" in status.stdout
        rel = minerwatch(netns, "isolate", "release", "--pid", pid, "--data-dir", data)
        assert rel.returncode == 2, (rel.returncode, rel.stdout, rel.stderr)
        assert f"released pid {pid}" in rel.stdout and said in rel.stderr, rel.stderr
        assert "Traceback" not in rel.stderr and "unexpected failure" not in rel.stderr
        client.wait_for("ok")
        assert HAND_EDITED in journal.read_text(), journal.read_text()  # byte for byte
        assert json.loads(journal.read_text())["isolated"] == [json.loads(HAND_EDITED)]
        again = minerwatch(netns, "isolate", "release", "--data-dir", data)
        assert again.returncode == 2 and said in again.stderr, again.stderr
        assert "nothing was isolated" not in again.stdout
        forced = minerwatch(netns, "isolate", "release", "--all", "--data-dir", data)
        assert forced.returncode == 0, forced.stderr
        assert json.loads(journal.read_text())["isolated"] == []
    finally:
        minerwatch(netns, "isolate", "release", "--all", "--data-dir", data)
        client.stop()
        pool.stop()


def test_the_agent_releases_its_isolations_beside_a_hand_edited_entry(netns, tmp_path):
    """The agent's own isolation (``by: agent``) beside a damaged entry: the agent at its
    start could not read the journal ("could not release what the agent isolated") and the
    process stayed cut off for good. Now it is released, the entry named in the log."""
    data, pool, client = pool_and_client(netns, tmp_path, "3338")
    journal = data / "isolate" / "isolate-journal.json"
    log = tmp_path / "agent.log"
    agent: subprocess.Popen[bytes] | None = None
    try:
        isolate_client(netns, client, data)
        journal.write_text(journal.read_text().replace('"by": "operator"', '"by": "agent"'))
        _with_hand_edited_entry(journal)
        serve = _in_ns(netns, str(SCRIPT), "serve", "--data-dir", str(data), "--port", "0",
                       "--address", "127.0.0.1", "--interval", "1s")  # fmt: skip
        with log.open("wb") as out:
            agent = subprocess.Popen(serve, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while "serving metrics on" not in log.read_text():
            assert agent.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        client.wait_for("ok")
        assert "isolated[0].uid is a string '65533'" in log.read_text(), log.read_text()
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0, log.read_text()
        assert json.loads(journal.read_text())["isolated"] == [json.loads(HAND_EDITED)]
        assert "Traceback" not in log.read_text()
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait(timeout=10)
        minerwatch(netns, "isolate", "release", "--all", "--data-dir", data)
        client.stop()
        pool.stop()


def test_a_clock_step_does_not_make_an_isolated_process_look_gone(netns, tmp_path):
    """After the wall clock is set (``btime`` in /proc/stat moves with it: bound stepped
    over it, as in test_throttle_release.py), ``isolate status`` called the still running,
    isolated process exited, and isolating it again added a second entry for it."""
    data, pool, client = pool_and_client(netns, tmp_path, "3339")
    journal = data / "isolate" / "isolate-journal.json"
    try:
        pid = isolate_client(netns, client, data)
        (tmp_path / "stat").write_text(stepped_proc_stat(-3600))
        stepped = (
            'mount --bind "$0" /proc/stat && "$1" isolate status --data-dir "$2" '
            '&& exec "$1" isolate --process "$3" --data-dir "$2"'
        )
        r = subprocess.run(
            _in_ns(netns, "unshare", "-m", "--propagation", "private", "sh", "-c", stepped,
                   str(tmp_path / "stat"), str(SCRIPT), str(data), pid),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert f"pid {pid}: outbound" in r.stdout and "has exited" not in r.stdout, r.stdout
        assert [e["pid"] for e in json.loads(journal.read_text())["isolated"]] == [int(pid)]
        client.wait_for("fail")
    finally:
        minerwatch(netns, "isolate", "release", "--all", "--data-dir", data)
        client.stop()
        pool.stop()


def test_two_data_folders_keep_their_isolations_apart(netns, tmp_path):
    """Two agents (or an agent and a hand-run ``isolate --data-dir``) on one host shared the
    table ``inet minerwatch``: each load replaced the other's rules, and one's ``release
    --all`` (or shutdown) gave the other's suspect its network back. Each data folder now has
    a table of its own."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    pool = Reader(_in_ns(netns, CLIENT_PYTHON, "-c", POOL, "127.0.0.1", "3340"), tmp_path / "p")
    one = Reader(
        _as_nobody(netns, CLIENT_PYTHON, "-c", CLIENT, "127.0.0.1", "3340"), tmp_path / "c1"
    )
    ids = ["--reuid=65533", "--regid=65533", "--clear-groups"]
    two = Reader(
        _in_ns(netns, "setpriv", *ids, CLIENT_PYTHON, "-c", CLIENT, "127.0.0.1", "3340"),
        tmp_path / "c2",
    )
    try:
        one.wait_for("ok")
        two.wait_for("ok")
        done = minerwatch(netns, "isolate", "--process", str(one.proc.pid), "--data-dir", a)
        assert done.returncode == 0, done.stderr
        one.wait_for("fail")
        done = minerwatch(netns, "isolate", "--process", str(two.proc.pid), "--data-dir", b)
        assert done.returncode == 0, done.stderr
        two.wait_for("fail")
        one.wait_for("fail")  # b's table did not replace a's
        status = minerwatch(netns, "isolate", "status", "--data-dir", b)
        assert f"nftables table inet {table_for(b / 'isolate')}: loaded" in status.stdout
        rel = minerwatch(netns, "isolate", "release", "--all", "--data-dir", a)
        assert rel.returncode == 0, rel.stderr
        one.wait_for("ok")
        two.wait_for("fail")  # a's release --all left b's isolation alone
        rel = minerwatch(netns, "isolate", "release", "--data-dir", b)
        assert rel.returncode == 0, rel.stderr
        two.wait_for("ok")
    finally:
        for data in (a, b):
            minerwatch(netns, "isolate", "release", "--all", "--data-dir", data)
        for r in (one, two, pool):
            r.stop()


def test_refuses_a_root_process_without_its_own_cgroup(netns, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    r = minerwatch(netns, "isolate", "--process", "1", "--data-dir", data, "--by", "uid")
    assert r.returncode == 2 and "--host" in r.stderr and "Traceback" not in r.stderr
    gone = minerwatch(netns, "isolate", "--process", "999999999", "--data-dir", data)
    assert gone.returncode == 2 and "999999999" in gone.stderr


@pytest.fixture
def two_hosts(netns) -> Iterator[tuple[str, str]]:
    """``netns`` (the host) linked by a veth pair to a second namespace (the outside)."""
    outside = f"mwtest-{secrets.token_hex(4)}"
    assert _ip("netns", "add", outside).returncode == 0
    a, b = f"mwa{secrets.token_hex(3)}", f"mwb{secrets.token_hex(3)}"
    try:
        steps = [
            ("-n", netns, "link", "add", a, "type", "veth", "peer", "name", b, "netns", outside),
            ("-n", netns, "addr", "add", "10.231.0.1/24", "dev", a),
            ("-n", netns, "link", "set", a, "up"),
            ("-n", outside, "addr", "add", "10.231.0.2/24", "dev", b),
            ("-n", outside, "link", "set", b, "up"),
            ("-n", outside, "link", "set", "lo", "up"),
        ]
        for step in steps:
            r = _ip(*step)
            if r.returncode != 0:
                pytest.skip(f"cannot build a veth pair here: {r.stderr.strip()}")
        yield netns, outside
    finally:
        _ip("netns", "del", outside)


def test_isolate_the_host_keeps_ssh_sources_and_scrapes(two_hosts, tmp_path):
    host, outside = two_hosts
    data = tmp_path / "data"
    data.mkdir()
    procs = [
        # a pool outside, a miner on the host dialling it
        Reader(_in_ns(outside, CLIENT_PYTHON, "-c", POOL, "10.231.0.2", "3335"), tmp_path / "p"),
        miner := Reader(
            _in_ns(host, CLIENT_PYTHON, "-c", CLIENT, "10.231.0.2", "3335"), tmp_path / "m"
        ),
        # "sshd" and the exporter on the host, dialled from outside
        Reader(_in_ns(host, CLIENT_PYTHON, "-c", POOL, "10.231.0.1", "2222"), tmp_path / "s"),
        Reader(_in_ns(host, CLIENT_PYTHON, "-c", POOL, "10.231.0.1", "10091"), tmp_path / "e"),
        ssh := Reader(
            _in_ns(outside, CLIENT_PYTHON, "-c", CLIENT, "10.231.0.1", "2222"), tmp_path / "sc"
        ),
        scrape := Reader(
            _in_ns(outside, CLIENT_PYTHON, "-c", CLIENT, "10.231.0.1", "10091"), tmp_path / "ec"
        ),
    ]
    try:
        for r in (miner, ssh, scrape):
            r.wait_for("ok")
        args = ["isolate", "--host", "--allow-ssh-from", "10.231.0.0/30", "--ssh-port", "2222"]
        done = minerwatch(host, *args, "--data-dir", data)
        assert done.returncode == 0, done.stderr
        miner.wait_for("fail")
        ssh.wait_for("ok")
        scrape.wait_for("ok")
        rel = minerwatch(host, "isolate", "release", "--host", "--data-dir", data)
        assert rel.returncode == 0, rel.stderr
        miner.wait_for("ok")
    finally:
        for r in procs:
            r.stop()


SPOOFED_PORT = r"""
import socket, sys, time
while True:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(0.3)
    try:
        s.bind(("0.0.0.0", int(sys.argv[3])))
        s.connect((sys.argv[1], int(sys.argv[2])))
        print("ok", flush=True)
    except OSError:
        print("fail", flush=True)
    s.close()
    time.sleep(0.2)
"""


def test_isolated_host_lets_no_one_out_from_the_exporter_or_ssh_port(two_hosts, tmp_path):
    """Only answers leave from the exporter's and SSH's ports: a miner that dials its pool
    from source port 10091 (free while the agent is down or listens elsewhere) is cut off."""
    host, outside = two_hosts
    data = tmp_path / "data"
    data.mkdir()
    pool = Reader(_in_ns(outside, CLIENT_PYTHON, "-c", POOL, "10.231.0.2", "3336"), tmp_path / "p")
    miner = Reader(
        _as_nobody(host, CLIENT_PYTHON, "-c", SPOOFED_PORT, "10.231.0.2", "3336", "10091"),
        tmp_path / "m",
    )
    try:
        miner.wait_for("ok")
        args = ["isolate", "--host", "--allow-ssh-from", "10.231.0.0/30", "--ssh-port", "2222"]
        done = minerwatch(host, *args, "--data-dir", data)
        assert done.returncode == 0, done.stderr
        miner.wait_for("fail")
        seen = len(miner.lines())
        time.sleep(1.5)
        assert "ok" not in miner.lines()[seen:]
        assert minerwatch(host, "isolate", "release", "--data-dir", data).returncode == 0
        miner.wait_for("ok")
    finally:
        for r in (pool, miner):
            r.stop()


def test_isolate_dropin_adds_only_cap_net_admin():
    deploy = Path(__file__).resolve().parent.parent / "deploy"

    def caps(path: Path) -> set[str]:
        lines = path.read_text().splitlines()
        (line,) = [x for x in lines if x.startswith("CapabilityBoundingSet=")]
        return set(line.split("=", 1)[1].split())

    added = caps(deploy / "minerwatch-isolate.conf") - caps(deploy / "minerwatch.service")
    assert added == {"CAP_NET_ADMIN"}
    assert "isolate.conf" in (deploy / "README.md").read_text()


def test_a_respawned_miner_under_the_same_uid_stays_cut_off(netns, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    port = "3336"
    pool = Reader(_in_ns(netns, CLIENT_PYTHON, "-c", POOL, "127.0.0.1", port), tmp_path / "p")
    cmd = _as_nobody(netns, CLIENT_PYTHON, "-c", CLIENT, "127.0.0.1", port)
    first = Reader(cmd, tmp_path / "c1")
    second = None
    try:
        first.wait_for("ok")
        done = minerwatch(netns, "isolate", "--process", str(first.proc.pid), "--data-dir", data)
        assert done.returncode == 0, done.stderr
        first.wait_for("fail")
        first.stop()
        second = Reader(cmd, tmp_path / "c2")  # cron starts it again, same user
        second.wait_for("fail")
        status = minerwatch(netns, "isolate", "status", "--data-dir", data)
        assert "the process has exited" in status.stdout
        rel = minerwatch(
            netns, "isolate", "release", "--pid", str(first.proc.pid), "--data-dir", data
        )
        assert rel.returncode == 0, rel.stderr
        second.wait_for("ok")
    finally:
        for r in (first, second, pool):
            if r is not None and r.proc.poll() is None:
                r.stop()


def test_cli_dry_run_and_usage_errors(tmp_path):
    """No namespace needed: a dry run loads nothing, bad usage exits 2 before any nft."""
    env = {k: v for k, v in os.environ.items() if k != "SSH_CONNECTION"}

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        cmd = [str(SCRIPT), *map(str, args), "--data-dir", str(tmp_path)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)

    dry = run("isolate", "--host", "--allow-ssh-from", "10.1.2.3/8", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "ip saddr { 10.0.0.0/8 } tcp dport 22 accept" in dry.stdout
    assert "tcp dport 10091 accept" in dry.stdout and "policy drop;" in dry.stdout
    assert not (tmp_path / "isolate" / "isolate-journal.json").exists()
    for args, word in [
        (("isolate",), "--process PID"),
        (("isolate", "--host"), "--allow-ssh-from"),
        (("isolate", "--host", "--allow-ssh-from", "nonsense"), "CIDR"),
    ]:
        r = run(*args)
        assert r.returncode == 2 and word in r.stderr and "Traceback" not in r.stderr, r.stderr


def _fake_proc(root: Path, cgroup: str, uid: int, mounts: str, mine: str = "0::/agent") -> Path:
    """A /proc with one process (pid 42) and ``self``: what plan_process reads."""
    (root / "42").mkdir(parents=True)
    (root / "self").mkdir()
    (root / "stat").write_text("cpu 0 0 0 0\nbtime 1700000000\n")
    (root / "42" / "stat").write_text(
        "42 (kx) S 1 42 42 0 -1 4194304 0 0 0 0 7 3 0 0 20 0 1 0 900 0"
    )
    (root / "42" / "status").write_text(f"Name:\tkx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    (root / "42" / "cgroup").write_text(cgroup)
    (root / "self" / "cgroup").write_text(mine + "\n")
    (root / "self" / "mounts").write_text(mounts)
    return root


V2 = "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"
V1 = "tmpfs /sys/fs/cgroup tmpfs ro 0 0\n"


@pytest.mark.parametrize(
    ("cgroup", "uid", "mounts", "by", "expect"),
    [
        ("0::/system.slice/kx.service\n", 33, V2, "auto", "system.slice/kx.service"),
        ("0::/system.slice/kx.service\n", 0, V2, "auto", "system.slice/kx.service"),
        ("0::/system.slice/kx.service\n", 33, V2, "uid", 33),
        ("0::/\n", 33, V2, "auto", 33),  # the root cgroup is the whole host
        ("0::/agent\n", 33, V2, "auto", 33),  # minerwatch's own cgroup
        ("4:cpu:/x\n0::/\n", 33, V1, "auto", 33),
        ("0::/\n", 0, V2, "auto", InputError),  # root without a cgroup of its own
        ("4:cpu:/x\n", 33, V1, "cgroup", InputError),
    ],
)
def test_plan_process_picks_the_narrowest_safe_match(tmp_path, cgroup, uid, mounts, by, expect):
    proc = _fake_proc(tmp_path / "proc", cgroup, uid, mounts)
    if expect is InputError:
        with pytest.raises(InputError):
            plan_process(42, by, proc_root=proc)
        return
    got = plan_process(42, by, proc_root=proc)
    assert (got.cgroup.strip("/") or got.uid) == expect
