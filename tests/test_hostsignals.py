"""Host signals: parsing on literal lines, baselines on real files and sockets, and the real
``minerwatch serve`` in a network namespace this test creates (new listener, SSH lines
appended to an auth log, a log folder wiped)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from promtools import free_port

from minerwatch.service.evidence import EvidenceWriter
from minerwatch.service.hostsignals import (
    FailureCounter,
    HostSignals,
    JournalReader,
    LogFollower,
    SshEvent,
    is_rotated_name,
    iter_events,
    log_changes,
    parse_journal_entry,
    parse_proc_net,
    parse_sshd_line,
    scan_logs,
    services,
)

REPO = Path(__file__).resolve().parent.parent
MINERWATCH = Path(sys.executable).parent / "minerwatch"

# -- SSH lines -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "Dec  3 11:00:01 web sshd[812]: Failed password for root from 203.0.113.7 "
            "port 4022 ssh2",
            SshEvent("failed", "root", "203.0.113.7", 812),
        ),
        (
            "2026-12-03T11:00:01.123456+00:00 web sshd-session[9]: Failed password for invalid "
            "user admin from 2001:db8::7 port 50122 ssh2",
            SshEvent("failed_invalid", "admin", "2001:db8::7", 9),
        ),
        (
            "Dec  3 11:00:01 web sshd[812]: Invalid user oracle from 192.0.2.9 port 4",
            SshEvent("invalid", "oracle", "192.0.2.9", 812),
        ),
        (
            "Dec  3 11:00:02 web sshd[813]: Accepted publickey for ann from 10.0.0.5 port 50022 "
            "ssh2: ED25519 SHA256:abc",
            SshEvent("accepted", "ann", "10.0.0.5", 813),
        ),
        (
            "Dec  3 11:00:03 web sshd[812]: message repeated 5 times: [ Failed password for root "
            "from 203.0.113.7 port 4022 ssh2]",
            SshEvent("failed", "root", "203.0.113.7", 812, count=5),
        ),
        # A client-chosen user name cannot forge the source: sshd appends the real one.
        (
            "Dec  3 11:00:04 web sshd[814]: Invalid user x from 10.0.0.5 port 22 from "
            "198.51.100.1 port 7",
            SshEvent("invalid", "x from 10.0.0.5 port 22", "198.51.100.1", 814),
        ),
        (
            "Dec  3 11:00:04 web sshd[814]: Accepted publickey for ann from ::ffff:10.0.0.5 "
            "port 22 ssh2",
            SshEvent("accepted", "ann", "10.0.0.5", 814),
        ),
        (
            "Dec  3 11:00:05 web sshd[815]: Failed password for root from not-an-ip port 1 ssh2",
            SshEvent("failed", "root", "unknown", 815),
        ),
        ("Dec  3 11:00:06 web sudo[99]: Failed password for root from 1.2.3.4 port 1 ssh2", None),
        ("Dec  3 11:00:07 web sshd[816]: Connection closed by 1.2.3.4 port 22 [preauth]", None),
    ],
)
def test_sshd_lines(line, expected):
    assert parse_sshd_line(line) == expected


def test_an_invalid_user_is_one_attempt_per_password_tried():
    counter = FailureCounter()
    lines = [
        "sshd[1]: Invalid user bob from 192.0.2.1 port 1",  # probe, no password: 1
        "sshd[2]: Invalid user eve from 192.0.2.2 port 2",
        "sshd[2]: Failed password for invalid user eve from 192.0.2.2 port 2 ssh2",
        "sshd[2]: Failed password for invalid user eve from 192.0.2.2 port 2 ssh2",
        "sshd[2]: Failed password for invalid user eve from 192.0.2.2 port 2 ssh2",  # 3 tries
        "sshd[3]: Failed publickey for root from 192.0.2.3 port 3 ssh2",  # 1
        "sshd[4]: Accepted password for ann from 10.0.0.5 port 4 ssh2",  # 0
    ]
    attempts = [counter.attempts(parse_sshd_line(f"Dec  3 10:00:00 h {x}")) for x in lines]
    assert attempts == [1, 1, 0, 1, 1, 1, 0]
    assert sum(attempts) == 5


def test_journal_entries():
    line = json.dumps(
        {
            "__CURSOR": "s=abc;i=12",
            "MESSAGE": "Accepted publickey for ann from 10.0.0.5 port 50022 ssh2",
            "_PID": "4242",
        }
    )
    assert parse_journal_entry(line) == (
        SshEvent("accepted", "ann", "10.0.0.5", 4242),
        "s=abc;i=12",
    )
    assert parse_journal_entry('{"__CURSOR": "s=1", "MESSAGE": "Server listening"}') == (
        None,
        "s=1",
    )
    assert parse_journal_entry("not json") == (None, None)
    # the first poll starts at the agent's start, later ones after the last cursor
    reader = JournalReader(since=1764756000.0)
    assert reader.args()[-2:] == ["--since", "@1764756000"]
    reader.cursor = "s=abc;i=12"
    assert reader.args()[-2:] == ["--after-cursor", "s=abc;i=12"]


# -- listening sockets ---------------------------------------------------------------------------


def test_proc_net_lines():
    tcp6 = textwrap.dedent("""\
        sl  local_address                         remote_address                        st
         0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A
         1: 00000000000000000000000001000000:A000 00000000000000000000000001000000:1F90 01
        """)
    assert parse_proc_net(tcp6, "tcp") == {("tcp", 8080): "::1"}
    udp = textwrap.dedent("""\
        sl  local_address rem_address   st
         0: 00000000:0044 00000000:0000 07
         1: 0100007F:9C40 00000000:0000 07
         2: 0100007F:0035 0200007F:0035 01
        """)
    found = parse_proc_net(udp, "udp")
    assert found == {("udp", 68): "0.0.0.0", ("udp", 40000): "127.0.0.1"}
    # UDP in the ephemeral range is a client's socket, not a service; TCP always counts
    assert services(found | {("tcp", 40001): "::"}, (32768, 60999)) == {
        ("udp", 68): "0.0.0.0",
        ("tcp", 40001): "::",
    }


@pytest.fixture
def netns():
    """A network namespace of this test's own, with loopback up; deleted afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create a network namespace")
    name = f"mw-hs-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        subprocess.run(
            ["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True, timeout=30
        )
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=30)


def in_netns(ns: str, code: str, timeout: float = 60) -> str:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_netlink_and_proc_agree_on_real_sockets(netns):
    code = textwrap.dedent("""\
        import json, socket
        from minerwatch.service.hostsignals import listening_ports_netlink, listening_ports_proc
        t = socket.socket(socket.AF_INET6); t.bind(("::1", 4444)); t.listen()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 5353))
        c = socket.socket(socket.AF_INET6); c.connect(("::1", 4444))  # connected: not a listener
        a = listening_ports_netlink(); b = listening_ports_proc()
        print(json.dumps([sorted(map(list, a.items())), sorted(map(list, b.items()))]))
        """)
    netlink, proc = json.loads(in_netns(netns, code))
    assert netlink == proc
    assert netlink == [[["tcp", 4444], "::1"], [["udp", 5353], "127.0.0.1"]]


# -- reading a log incrementally -----------------------------------------------------------------


def test_follower_reads_appended_lines_through_rotation_and_truncation(tmp_path):
    log = tmp_path / "auth.log"
    log.write_text("old line before the agent\n")
    f = LogFollower(log)
    assert f.read() == []  # history before the agent is not read
    with log.open("a") as fh:
        fh.write("one\ntw")
    assert f.read() == ["one"]
    with log.open("a") as fh:
        fh.write("o\n")
    assert f.read() == ["two"]
    # rotation: the rest of the old file, then the new one from its start
    with log.open("a") as fh:
        fh.write("last of old\n")
    log.rename(tmp_path / "auth.log.1")
    log.write_text("first of new\n")
    assert f.read() == ["last of old"]
    # the old file is read once more (syslog writes on until it reopens), then the new one
    with (tmp_path / "auth.log.1").open("a") as fh:
        fh.write("late in old\n")
    assert f.read() == ["late in old", "first of new"]
    # truncated in place: read again from 0
    log.write_text("")
    f.read()
    log.write_text("after truncation\n")
    assert f.read() == ["after truncation"]
    # a restart resumes at the saved offset of the same inode
    with log.open("a") as fh:
        fh.write("while down\n")
    resumed = LogFollower(log, f.inode, f.offset)
    assert resumed.read() == ["while down"]
    f.close()
    resumed.close()


def test_follower_reads_a_log_that_appears_later_from_its_start(tmp_path):
    log = tmp_path / "secure"
    f = LogFollower(log)
    assert f.read() == []
    log.write_text("first\n")
    assert f.read() == ["first"]
    f.close()


# -- log files shrinking or vanishing ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rotated"),
    [
        ("syslog", False),
        ("auth.log", False),
        ("wtmp", False),
        ("syslog.1", True),
        ("dpkg.log.2.gz", True),
        ("btmp-20261201", True),
        ("messages-2026-12-01", True),
        ("Xorg.0.log.old", True),
        ("system@0005f1-a.journal~", True),
    ],
)
def test_rotated_names(name, rotated):
    assert is_rotated_name(name) is rotated


def _scan_after(root: Path, before, since: float):
    after = scan_logs(root)
    return after, [(Path(c.path).name, c.kind) for c in log_changes(before, after, since)]


def test_rotation_is_not_a_wipe_but_truncation_and_deletion_are(tmp_path):
    root = tmp_path / "log"
    (root / "nginx").mkdir(parents=True)
    for name in ("syslog", "auth.log", "wtmp", "kern.log", "dpkg.log", "nginx/access.log"):
        (root / name).write_bytes(b"x" * 500)
    (root / "kern.log.4.gz").write_bytes(b"z" * 10)
    before = scan_logs(root)
    since = time.time()
    # rotation by rename + create (logrotate's default)
    (root / "syslog").rename(root / "syslog.1")
    (root / "syslog").write_bytes(b"")
    # copytruncate: copied to a sibling, then truncated in place
    shutil.copy(root / "nginx/access.log", root / "nginx/access.log-20261203")
    (root / "nginx/access.log").write_bytes(b"")
    # rotation with compression, no delaycompress: only the .gz is left
    (root / "dpkg.log").rename(root / "dpkg.log.1")
    subprocess.run(["gzip", str(root / "dpkg.log.1")], check=True)
    # an old rotated file deleted by logrotate: normal
    (root / "kern.log.4.gz").unlink()
    # wiping: truncation in place, deletion, and an edit that writes a smaller new file
    (root / "wtmp").write_bytes(b"")
    (root / "kern.log").unlink()
    (root / "auth.log").rename(root / ".auth.tmp")  # like sed -i: a new, smaller inode
    (root / "auth.log").write_bytes(b"x" * 100)
    (root / ".auth.tmp").unlink()
    _, changes = _scan_after(root, before, since)
    assert sorted(changes) == [("auth.log", "shrunk"), ("kern.log", "vanished"), ("wtmp", "shrunk")]


def test_a_log_that_keeps_growing_is_not_reported(tmp_path):
    root = tmp_path / "log"
    root.mkdir()
    (root / "syslog").write_bytes(b"a" * 10)
    before = scan_logs(root)
    with (root / "syslog").open("ab") as fh:
        fh.write(b"b" * 10)
    assert _scan_after(root, before, time.time())[1] == []


# -- baselines, state and restart ----------------------------------------------------------------


class Clock:
    def __init__(self, t: float = 1_764_756_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _signals(tmp_path: Path, clock: Clock, ports: dict, **kw) -> HostSignals:
    return HostSignals(
        tmp_path / "data",
        learn_for=60.0,
        event_log=tmp_path / "data" / "events.jsonl",
        host="h1",
        clock=clock,
        auth_log=tmp_path / "auth.log",
        log_dir=tmp_path / "log",
        read_ports=lambda: dict(ports),
        journal=False,
        **kw,
    )


def _events(tmp_path: Path) -> list[dict]:
    path = tmp_path / "data" / "events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def host(tmp_path):
    (tmp_path / "data").mkdir(mode=0o700)
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "app.log").write_bytes(b"x" * 100)
    (tmp_path / "log" / "selfrewrite.log").write_bytes(b"x" * 100)
    (tmp_path / "auth.log").write_text("")
    return tmp_path


def _auth(tmp_path: Path, *lines: str) -> None:
    with (tmp_path / "auth.log").open("a") as fh:
        for line in lines:
            fh.write(f"Dec  3 11:00:00 h1 sshd[77]: {line}\n")


def test_baselines_are_learnt_then_only_novelty_is_reported(host):
    clock = Clock()
    ports = {("tcp", 22): "0.0.0.0", ("udp", 123): "0.0.0.0"}
    sig = _signals(host, clock, ports)
    sig.tick(clock.t)
    _auth(host, "Accepted publickey for ann from 10.0.0.5 port 1 ssh2")
    (host / "log" / "selfrewrite.log").write_bytes(b"")  # an app that truncates its own log
    ports[("tcp", 8080)] = "::"  # a deploy during learning
    clock.t += 30
    sig.tick(clock.t)
    assert sig.snapshot_fields()["new_listen_ports"] == {"tcp": 0, "udp": 0}
    assert _events(host) == []  # nothing is reported while learning

    clock.t += 31  # learning is over
    sig.tick(clock.t)
    ports[("tcp", 4444)] = "127.0.0.1"
    _auth(
        host,
        "Accepted password for ann from 10.0.0.5 port 2 ssh2",  # known source
        "Accepted publickey for bob from 198.51.100.23 port 3 ssh2",  # new
        "Accepted publickey for bob from 198.51.100.23 port 4 ssh2",  # same new: counted once
        "Failed password for root from 203.0.113.7 port 5 ssh2",
        "Failed password for root from 203.0.113.7 port 5 ssh2",
    )
    (host / "log" / "app.log").write_bytes(b"")
    (host / "log" / "selfrewrite.log").write_bytes(b"y" * 50)
    (host / "log" / "selfrewrite.log").write_bytes(b"")
    clock.t += 10
    sig.tick(clock.t)
    fields = sig.snapshot_fields()
    assert fields["new_listen_ports"] == {"tcp": 1, "udp": 0}
    assert fields["ssh_new_source_logins_total"] == 1
    assert fields["ssh_failed_logins_total"] == 2
    assert fields["ssh_failed_logins_per_minute"] == 2.0
    assert fields["log_truncations_total"] == {"shrunk": 1, "vanished": 0}
    kinds = [
        (e["event"], e.get("port") or e.get("source") or Path(e["path"]).name)
        for e in _events(host)
    ]
    assert kinds == [
        ("new_listen_port", 4444),
        ("ssh_login_new_source", "198.51.100.23"),
        ("log_truncated", "app.log"),
    ]
    # a minute later the failures have left the per-minute window, not the total
    clock.t += 61
    sig.tick(clock.t)
    assert sig.snapshot_fields()["ssh_failed_logins_per_minute"] == 0.0
    assert sig.snapshot_fields()["ssh_failed_logins_total"] == 2
    # a port reported stays counted while open, but is reported once
    assert len(_events(host)) == 3
    assert sig.errors == {}
    sig.close()

    # the state file is private, and a restart keeps the baselines and the read position
    state = host / "data" / "hostsignals.json"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    doc = json.loads(state.read_text())
    assert doc["learned"] is True and doc["ssh_sources"] == ["10.0.0.5"]
    assert doc["listen_ports"] == [["tcp", 22], ["tcp", 8080], ["udp", 123]]
    again = _signals(host, clock, ports)
    clock.t += 10
    again.tick(clock.t)
    assert not again.learning()
    assert again.snapshot_fields()["new_listen_ports"] == {"tcp": 1, "udp": 0}
    assert again.snapshot_fields()["ssh_failed_logins_total"] == 0  # nothing read twice
    _auth(host, "Accepted publickey for bob from 198.51.100.23 port 9 ssh2")
    clock.t += 10
    again.tick(clock.t)
    assert again.snapshot_fields()["ssh_new_source_logins_total"] == 0  # reported before
    again.close()


def test_failures_are_counted_by_stage_not_raised(host):
    clock = Clock()

    def broken() -> dict:
        raise OSError("sock_diag: Operation not permitted")

    sig = HostSignals(
        host / "data",
        60.0,
        None,
        "h1",
        clock,
        auth_log=host / "auth.log",
        log_dir=host / "log",
        read_ports=broken,
        journal=False,
    )
    sig.tick(clock.t)
    sig.tick(clock.t + 10)
    assert sig.errors["listen_ports"] == 2
    # a corrupt or edited state file is relearnt, not fatal
    state = host / "data" / "hostsignals.json"
    good = json.loads(state.read_text())
    for bad in (
        "{not json",
        json.dumps({**good, "listen_ports": [["tcp", "22"]]}),
        json.dumps({**good, "ssh_sources": "10.0.0.5"}),
        json.dumps({**good, "auth_log": {"path": "x", "inode": 1, "offset": "9"}}),
        json.dumps({**good, "learn_started": None}),
    ):
        state.write_text(bad)
        clock.t += 1000  # past the learning period had the file been kept
        fresh = _signals(host, clock, {})
        assert fresh.learning(), bad
        assert fresh.learn_started == clock.t


def test_evidence_files_carry_the_host_signals(host):
    clock = Clock()
    ports = {("tcp", 22): "0.0.0.0"}
    sig = _signals(host, clock, ports)
    sig.tick(clock.t)
    clock.t += 61
    ports[("tcp", 4444)] = "127.0.0.1"
    _auth(host, "Failed password for root from 203.0.113.7 port 5 ssh2")
    sig.tick(clock.t)
    writer = EvidenceWriter(host / "evidence", min_interval_s=0, clock=clock)
    writer.sections["host_signals"] = sig.evidence_section
    path = writer.write("h1-1", 0.9, 0.5, {"cpu_percent": 97.0}, [], [], [])
    assert path is not None and stat.S_IMODE(path.stat().st_mode) == 0o600
    section = json.loads(path.read_text())["host_signals"]
    assert section["new_listen_ports"] == [{"proto": "tcp", "port": 4444, "address": "127.0.0.1"}]
    assert section["ssh_failed_top_sources"] == [{"source": "203.0.113.7", "attempts": 1}]
    assert section["recent"][0]["event"] == "new_listen_port"
    sig.close()


def test_incident_reports_skip_host_signal_lines(host):
    from minerwatch.service.report import read_events

    clock = Clock()
    ports = {("tcp", 22): "0.0.0.0"}
    sig = _signals(host, clock, ports)
    sig.tick(clock.t)
    clock.t += 61
    ports[("tcp", 4444)] = "127.0.0.1"
    sig.tick(clock.t)
    notes: list[str] = []
    assert read_events(host / "data" / "events.jsonl", notes) == {}
    assert notes == []
    sig.close()


# -- the real agent ------------------------------------------------------------------------------


def _scrape(ns: str, port: int) -> str:
    code = (
        "import urllib.request,sys;"
        f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{port}/metrics',"
        "timeout=5).read().decode())"
    )
    out = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout if out.returncode == 0 else ""


def _value(text: str, sample: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return None


def _wait(what, timeout: float = 180.0, step: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        assert time.monotonic() < deadline, "timed out"
        time.sleep(step)


def test_real_agent_reports_new_port_ssh_and_wiped_log(netns, tmp_path):
    data, logs, auth = tmp_path / "data", tmp_path / "log", tmp_path / "auth.log"
    logs.mkdir()
    (logs / "app.log").write_bytes(b"x" * 1000)
    (logs / "gone.log").write_bytes(b"x" * 1000)
    (logs / "rot.log").write_bytes(b"x" * 1000)
    auth.write_text("Dec  3 09:00:00 h sshd[1]: Accepted password for old from 192.0.2.99 port 1\n")
    port = 19091
    cmd = [
        "ip", "netns", "exec", netns, str(MINERWATCH), "serve",
        "--data-dir", str(data), "--host", "hs-e2e", "--port", str(port),
        "--address", "127.0.0.1", "--interval", "1s", "--window", "5s", "--learn-for", "10s",
        "--auth-log", str(auth), "--log-dir", str(logs),
    ]  # fmt: skip
    out = tmp_path / "agent.log"
    listener = None

    def start() -> subprocess.Popen[bytes]:
        with out.open("ab") as fh:
            return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)

    agent = start()
    try:
        # the agent has read the log's end (its first sample) before the learning-time line
        _wait(lambda: re.search(r"^minerwatch_samples_total [1-9]", _scrape(netns, port), re.M))
        _auth_line = "Dec  3 11:00:00 h sshd[{}]: {}\n"
        with auth.open("a") as fh:  # while learning: a known source
            fh.write(_auth_line.format(2, "Accepted publickey for ann from 10.0.0.5 port 2 ssh2"))
        state = data / "hostsignals.json"
        _wait(lambda: state.exists() and json.loads(state.read_text())["learned"])
        assert json.loads(state.read_text())["ssh_sources"] == ["10.0.0.5"]

        listener = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c",
             "import socket,time;s=socket.socket();s.bind(('127.0.0.1',4444));s.listen();"
             "time.sleep(600)"]
        )  # fmt: skip
        with auth.open("a") as fh:
            for pid in (3, 3, 4):
                fh.write(
                    _auth_line.format(pid, "Failed password for root from 203.0.113.7 port 5 ssh2")
                )
            fh.write(_auth_line.format(5, "Accepted password for ann from 10.0.0.5 port 2 ssh2"))
            fh.write(
                _auth_line.format(6, "Accepted publickey for bob from 198.51.100.23 port 6 ssh2")
            )
        (logs / "app.log").write_bytes(b"")
        (logs / "gone.log").unlink()
        (logs / "rot.log").rename(logs / "rot.log.1")
        (logs / "rot.log").write_bytes(b"")

        want = {
            'minerwatch_new_listen_ports{proto="tcp"}': 1.0,
            "minerwatch_ssh_failed_logins_total": 3.0,
            "minerwatch_ssh_new_source_logins_total": 1.0,
            'minerwatch_log_truncations_total{kind="shrunk"}': 1.0,
            'minerwatch_log_truncations_total{kind="vanished"}': 1.0,
        }

        per_minute: list[float | None] = []

        def all_seen() -> str:
            text = _scrape(netns, port)
            if not per_minute and _value(text, "minerwatch_ssh_failed_logins_total") == 3.0:
                per_minute.append(_value(text, "minerwatch_ssh_failed_logins_per_minute"))
            return text if all(_value(text, k) == v for k, v in want.items()) else ""

        text = _wait(all_seen)
        # the first scrape after the lines were read, well within the minute
        assert per_minute == [3.0]
        assert _value(text, 'minerwatch_errors_total{stage="listen_ports"}') == 0.0
        assert _value(text, 'minerwatch_errors_total{stage="log_watch"}') == 0.0
        labels = " ".join(re.findall(r"\{[^}]*\}", text))  # not values: 0.0314444 is no port
        for private in ("198.51.100.23", "203.0.113.7", "app.log", "bob", "4444"):
            assert private not in labels  # labels are bounded: no addresses, paths, users, ports
        events = list(iter_events(data / "events.jsonl"))  # other lines may be there too
        found = {(e["event"], str(e.get("port") or e.get("source") or Path(e["path"]).name))
                 for e in events}  # fmt: skip
        assert found == {
            ("new_listen_port", "4444"),
            ("ssh_login_new_source", "198.51.100.23"),
            ("log_truncated", "app.log"),
            ("log_truncated", "gone.log"),
        }
        assert stat.S_IMODE((data / "events.jsonl").stat().st_mode) == 0o600
        assert "host signal on hs-e2e: tcp port 4444 listening on 127.0.0.1" in out.read_text()

        # SIGTERM, restart: the baseline is read back, nothing is relearnt or read twice
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=60) == 0
        agent = start()
        text = _wait(
            lambda: (t := _scrape(netns, port)) and "minerwatch_new_listen_ports" in t and t
        )
        text = _wait(
            lambda: (
                (t := _scrape(netns, port))
                and _value(t, 'minerwatch_new_listen_ports{proto="tcp"}') == 1.0
                and t
            )
        )
        assert _value(text, "minerwatch_ssh_failed_logins_total") == 0.0
        assert json.loads(state.read_text())["learned"] is True
    finally:
        if listener is not None:
            listener.kill()
            listener.wait(timeout=30)
        _stop(agent)


def _agent(netns: str, tmp_path: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [
        "ip", "netns", "exec", netns, str(MINERWATCH), "serve",
        "--data-dir", str(tmp_path / "data"), "--host", "hs-rot", "--port", str(port),
        "--address", "127.0.0.1", "--interval", "1s", "--window", "5s", "--learn-for", "10s",
        *extra,
    ]  # fmt: skip
    with (tmp_path / "agent.log").open("ab") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)


def _stop(agent: subprocess.Popen[bytes]) -> None:
    if agent.poll() is None:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=60)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait(timeout=30)


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="needs logrotate")
def test_real_logrotate_is_never_a_wipe_but_an_attacker_is(netns, tmp_path):
    """Real logrotate runs with options that leave no rotated file beside the log (rotate 0,
    olddir with compress, olddir outside the folder, extension, a dateformat of dots) and a
    lastaction that keeps it running after the files are gone; Python's
    TimedRotatingFileHandler renames and deletes dated files; an attacker truncates, empties,
    deletes and shreds. Only the attacker is reported."""
    logs, outside = tmp_path / "log", tmp_path / "archive"
    (logs / "old").mkdir(parents=True)
    outside.mkdir()
    names = ("rot0.log", "olddir.log", "outside.log", "ext.log", "dots.log")
    wiped = ("truncated.log", "emptied.log", "removed.log", "shredded.log")
    for name in names + wiped:
        (logs / name).write_bytes(b"x" * 1000)
    status = tmp_path / "logrotate.status"
    conf = tmp_path / "logrotate.conf"
    conf.write_text(
        textwrap.dedent(f"""\
        {logs}/rot0.log {{
          rotate 0
          create
        }}
        {logs}/olddir.log {{
          olddir {logs}/old
          compress
        }}
        {logs}/outside.log {{
          olddir {outside}
        }}
        {logs}/ext.log {{
          extension .log
        }}
        {logs}/dots.log {{
          dateext
          dateformat .%Y-%m-%d
          lastaction
            sleep 2
          endscript
        }}
        """)
    )
    port = 19092
    agent = _agent(netns, tmp_path, port, "--log-dir", str(logs), "--logrotate-status",
                   str(status), "--auth-log", str(tmp_path / "none"))  # fmt: skip
    try:
        state = tmp_path / "data" / "hostsignals.json"
        _wait(lambda: state.exists() and json.loads(state.read_text())["learned"], timeout=120)
        python_app = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(f"""\
                import logging, logging.handlers, time
                h = logging.handlers.TimedRotatingFileHandler({str(logs / "py.log")!r},
                                                              when="S", backupCount=1)
                log = logging.getLogger("app"); log.addHandler(h); log.setLevel(logging.INFO)
                end = time.time() + 2.5
                while time.time() < end:
                    log.info("x" * 200); time.sleep(0.1)
                """)]
        )  # fmt: skip
        rotate = subprocess.run(
            ["logrotate", "-f", "-s", str(status), str(conf)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert rotate.returncode == 0, rotate.stderr
        assert python_app.wait(timeout=60) == 0
        subprocess.run(["truncate", "-s0", str(logs / "truncated.log")], check=True)
        subprocess.run(["sh", "-c", f": > {logs / 'emptied.log'}"], check=True)
        (logs / "removed.log").unlink()
        subprocess.run(["shred", "-u", str(logs / "shredded.log")], check=True)
        want = {
            'minerwatch_log_truncations_total{kind="shrunk"}': 2.0,
            'minerwatch_log_truncations_total{kind="vanished"}': 2.0,
        }
        _wait(lambda: all((_value(_scrape(netns, port), k) or 0) >= v for k, v in want.items()))
        time.sleep(2.5)  # more scans: nothing else comes
        text = _scrape(netns, port)
        assert all(_value(text, k) == v for k, v in want.items()), text
        found = sorted(Path(e["path"]).name for e in iter_events(tmp_path / "data/events.jsonl"))
        assert found == sorted(wiped)
    finally:
        _stop(agent)


def test_real_agent_counts_every_failure_of_a_burst_through_rotation(netns, tmp_path):
    """A brute-force burst leaves more than a tick's read in auth.log when logrotate
    renames it and creates a new one, and syslog writes on into the old file until it is
    told to reopen: every failed attempt is counted once, none lost, none twice."""
    auth = tmp_path / "auth.log"
    auth.write_text("")
    port = 19093
    agent = _agent(netns, tmp_path, port, "--log-dir", "", "--auth-log", str(auth))
    line = "Dec  3 11:00:00 h sshd[{}]: Failed password for root from 203.0.113.{} port 5 ssh2\n"
    try:
        _wait(lambda: re.search(r"^minerwatch_samples_total [1-9]", _scrape(netns, port), re.M))
        burst = "".join(line.format(i, i % 250) for i in range(20000))  # 1.6 MiB
        assert len(burst) > (1 << 20)
        with auth.open("a") as fh:
            fh.write(burst)
        auth.rename(tmp_path / "auth.log.1")  # logrotate's rename and create
        auth.write_text(line.format(1, 1) * 10)
        time.sleep(0.2)  # syslog, not yet reopened, writes on into the renamed file
        with (tmp_path / "auth.log.1").open("a") as fh:
            fh.write(line.format(2, 2) * 5)

        def total() -> float | None:
            text = _scrape(netns, port)
            return _value(text, "minerwatch_ssh_failed_logins_total") if text else None

        _wait(lambda: (total() or 0) >= 20015, timeout=60)
        time.sleep(2)  # two more ticks: nothing read twice
        assert total() == 20015
        assert _value(_scrape(netns, port), "minerwatch_ssh_failed_logins_per_minute") == 20015
    finally:
        _stop(agent)


FAKE_JOURNALCTL = """#!/usr/bin/env python3
# journalctl as it behaves when stuck: prints the entries after the cursor it is given,
# then hangs instead of exiting; its arguments go to $MW_FAKE_LOG, one call a line
import json, os, sys, time
with open(os.environ["MW_FAKE_LOG"], "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\\n")
after = sys.argv[sys.argv.index("--after-cursor") + 1] if "--after-cursor" in sys.argv else None
for i in range(int(after[1:]) + 1 if after else 0, int(os.environ["MW_FAKE_N"])):
    entry = {"__CURSOR": f"c{i}", "_PID": str(1000 + i),
             "MESSAGE": f"Failed password for root from 192.0.2.{i % 200 + 1} port 22 ssh2"}
    sys.stdout.write(json.dumps(entry) + "\\n")
sys.stdout.flush()
time.sleep(600)
"""


def test_a_journalctl_that_hangs_neither_stops_the_agent_nor_loses_what_it_printed(tmp_path):
    """The agent reads sshd's journal in its own loop. A journalctl that prints its entries
    and then hangs held the loop for 30 s (no sample, no score), then threw away what it
    had printed and kept its cursor, so the same happened every minute, for good. Now a
    read takes at most a few seconds, keeps every entry printed (the cursor moves to the
    last one), and the next read starts after it: every failure is counted once."""
    if shutil.which("unshare") is None or not Path("/run").is_dir():
        pytest.skip("needs unshare (util-linux)")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "journalctl").write_text(FAKE_JOURNALCTL)
    (fake / "journalctl").chmod(0o755)
    calls, n = tmp_path / "calls", 2000
    port = free_port()
    # journald's socket where the agent looks for it, in a mount namespace of its own
    script = (
        "mount -t tmpfs minerwatch-test /run && mkdir -p /run/systemd/journal "
        '&& touch /run/systemd/journal/socket && exec "$@"'
    )
    cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
           str(MINERWATCH), "serve", "--data-dir", str(tmp_path / "data"), "--host", "hs-j",
           "--port", str(port), "--address", "127.0.0.1", "--interval", "0.5s",
           "--window", "5s", "--learn-for", "1h"]  # fmt: skip
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "MW_FAKE_LOG": str(calls),
           "MW_FAKE_N": str(n)}  # fmt: skip
    with (tmp_path / "agent.log").open("ab") as fh:
        agent = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env)

    def metrics() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return str(r.read().decode())
        except OSError:
            return ""

    try:
        text = _wait(
            lambda: (
                (t := metrics())
                and _value(t, "minerwatch_ssh_failed_logins_total") == n
                and _value(t, 'minerwatch_errors_total{stage="ssh_log"}') == 1.0
                and t
            ),
            timeout=20.0,
            step=0.5,
        )
        samples = _value(text, "minerwatch_samples_total")
        time.sleep(3.0)  # the agent samples on, its next journal read a minute away
        assert _value(metrics(), "minerwatch_samples_total") >= samples + 4
        args = [json.loads(line) for line in calls.read_text().splitlines()]
        assert "--since" in args[0] and args[1][-2:] == ["--after-cursor", f"c{n - 1}"], args
    finally:
        _stop(agent)
    assert "Traceback" not in (tmp_path / "agent.log").read_text()
