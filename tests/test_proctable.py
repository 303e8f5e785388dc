"""The process table: parsers on literal /proc text, the reader on a fake /proc tree with a
hand-driven clock, and on real processes (a burner, a binary deleted from disk, a socket)."""

from __future__ import annotations

import doctest
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

import minerwatch.features.proctable
from minerwatch.features.proctable import (
    ProcessRecord,
    ProcessTable,
    full_name,
    interval_cpu_percent,
    parse_cmdline,
    parse_exe_link,
    parse_proc_cgroup,
    parse_socket_link,
    parse_stat,
    parse_status_uid,
    same_process,
    systemd_cgroup,
)

HZ = os.sysconf("SC_CLK_TCK")
BTIME = 1_700_000_000
BURN = "import time\nend = time.monotonic() + 20\nwhile time.monotonic() < end: pass\n"


def test_docstring_examples_hold():
    assert doctest.testmod(minerwatch.features.proctable).failed == 0


# --------------------------------------------------------------------------- parsing


def test_parse_stat_takes_the_name_between_the_first_and_last_parenthesis():
    text = "77 (a) b (c)) S 5 77 77 0 -1 2097216 0 0 0 0 12 8 0 0 20 0 1 0 4321 0 0"
    s = parse_stat(text)
    assert (s.name, s.state, s.ppid, s.cpu_ticks, s.start_ticks) == ("a) b (c)", "S", 5, 20, 4321)
    assert s.flags & 0x00200000
    with pytest.raises(ValueError, match="expected 22 or more fields"):
        parse_stat("77 (short) S 1 2")


def test_parse_status_uid_reads_the_real_uid():
    assert parse_status_uid("Name:\tx\nUid:\t1000\t0\t0\t0\n") == 1000
    assert parse_status_uid("Name:\tx\n") is None


def test_parse_proc_cgroup_and_the_path_that_names_units():
    cg = parse_proc_cgroup("9:name=systemd:/user.slice\n2:cpu,cpuacct:/x\n0::/y.service\n")
    assert cg == {"name=systemd": "/user.slice", "cpu": "/x", "cpuacct": "/x", "": "/y.service"}
    assert systemd_cgroup(cg) == "/user.slice"
    assert systemd_cgroup(parse_proc_cgroup("0::/system.slice/nginx.service\n")) == (
        "/system.slice/nginx.service"
    )
    assert systemd_cgroup({}) == "/"


@pytest.mark.parametrize(
    ("target", "on_disk", "expected"),
    [
        ("/usr/bin/python3", {"/usr/bin/python3"}, ("/usr/bin/python3", False)),
        ("/tmp/.x/kx (deleted)", set(), ("/tmp/.x/kx", True)),
        # a package upgrade replaced the binary: the old inode is gone, the path is not
        ("/usr/sbin/nginx (deleted)", {"/usr/sbin/nginx"}, ("/usr/sbin/nginx", False)),
        # a file really named "... (deleted)" is just a file
        ("/opt/x (deleted)", {"/opt/x (deleted)"}, ("/opt/x (deleted)", False)),
    ],
)
def test_parse_exe_link(target, on_disk, expected):
    assert parse_exe_link(target, exists=on_disk.__contains__) == expected


def test_parse_cmdline_like_psutil():
    assert parse_cmdline(b"") == ()
    assert parse_cmdline(b"/tmp/kx\x00-o\x00stratum+tcp://p:3333\x00") == (
        "/tmp/kx",
        "-o",
        "stratum+tcp://p:3333",
    )
    assert parse_cmdline(b"postgres: checkpointer \x00") == ("postgres:", "checkpointer", "")
    assert parse_cmdline(b"\xff\x00") == ("\udcff",)  # undecodable bytes survive


def test_full_name_extends_a_truncated_name_from_argv0():
    assert full_name("kworkerds", ("kworkerds",)) == "kworkerds"
    assert full_name("123456789012345", ("/x/1234567890123456789",)) == "1234567890123456789"
    assert full_name("123456789012345", ("/x/other",)) == "123456789012345"
    assert full_name("123456789012345", ()) == "123456789012345"


def test_parse_socket_link():
    assert parse_socket_link("socket:[98765]") == 98765
    assert parse_socket_link("pipe:[98765]") is None
    assert parse_socket_link("/tmp/socket:[1]") is None


def test_interval_cpu_percent_literals():
    assert interval_cpu_percent(1.0, 6.0, 0.0, 10.0, 50.0) == 50.0
    # a process started inside the interval owns all its CPU seconds
    assert interval_cpu_percent(None, 2.0, 105.0, 4.0, 100.0) == 50.0
    # not seen before and older than the previous sample: unknown
    assert math.isnan(interval_cpu_percent(None, 2.0, 90.0, 4.0, 100.0))
    # first sample: nothing is known
    assert math.isnan(interval_cpu_percent(None, 2.0, 105.0, 4.0, None))
    # tick rounding clamped to all cores
    assert interval_cpu_percent(0.0, 2.1, 0.0, 1.0, 0.0, max_percent=200.0) == 200.0
    assert math.isnan(interval_cpu_percent(5.0, 4.0, 0.0, 1.0, 0.0))


# --------------------------------------------------------------------------- a fake /proc


def stat_line(pid, name, state, ppid, flags, cpu_ticks, start_ticks):
    return (
        f"{pid} ({name}) {state} {ppid} {pid} {pid} 0 -1 {flags} 0 0 0 0 "
        f"{cpu_ticks} 0 0 0 20 0 1 0 {start_ticks} 0 0\n"
    )


class FakeProc:
    """A /proc tree in a temp dir (boot-relative clock by hand, times in seconds)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(exist_ok=True)
        (root / "stat").write_text(f"cpu 1 2 3 4\nbtime {BTIME}\n")
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    def add(
        self,
        pid,
        *,
        cpu=0.0,
        start=0.0,
        name="x",
        ppid=1,
        flags=0,
        state="S",
        uid=0,
        exe=None,
        cgroup="0::/\n",
        cmdline=None,
        sockets=(),
    ):
        d = self.root / str(pid)
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        ticks = (round(cpu * HZ), round(start * HZ))
        (d / "stat").write_text(stat_line(pid, name, state, ppid, flags, *ticks))
        (d / "status").write_text(f"Name:\t{name}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
        (d / "cgroup").write_text(cgroup)
        if exe is not None:
            (d / "exe").symlink_to(exe)
        if cmdline is not None:
            (d / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in cmdline))
        (d / "fd").mkdir()
        for fd, inode in enumerate(sockets):
            (d / "fd" / str(fd)).symlink_to(f"socket:[{inode}]")

    def remove(self, pid):
        shutil.rmtree(self.root / str(pid))


@pytest.fixture
def fake(tmp_path):
    return FakeProc(tmp_path / "proc")


def test_scan_primes_then_gives_interval_cpu(fake):
    fake.add(10, cpu=1.0, start=5.0)
    fake.add(11, cpu=0.0, start=6.0)
    table = ProcessTable(fake.root, fake.clock)
    first = {r.pid: r for r in table.scan()}
    assert sorted(first) == [10, 11] and all(math.isnan(r.cpu_percent) for r in first.values())
    assert first[10].create_time == pytest.approx(BTIME + 5.0)
    fake.now += 10
    fake.add(10, cpu=6.0, start=5.0)  # 5 s of CPU in 10 s
    fake.add(12, cpu=2.0, start=1004.0)  # started inside the interval: all its CPU is in it
    fake.add(13, cpu=9.0, start=500.0)  # not seen before, yet old: unknown
    second = {r.pid: r for r in table.scan()}
    assert second[10].cpu_percent == pytest.approx(50.0)
    assert second[11].cpu_percent == 0.0
    assert second[12].cpu_percent == pytest.approx(20.0)
    assert math.isnan(second[13].cpu_percent)
    assert second[10].exe == "" and second[10].username == ""  # scan reads stat alone


def test_a_reused_pid_is_a_new_process_and_the_old_one_vanished(fake):
    fake.add(11, cpu=50.0, start=6.0)
    table = ProcessTable(fake.root, fake.clock)
    table.scan()
    fake.now += 10
    fake.add(11, cpu=1.0, start=1005.0)  # same pid, later start, fewer CPU seconds
    (row,) = table.scan()
    assert row.create_time == pytest.approx(BTIME + 1005.0)
    assert row.cpu_percent == pytest.approx(10.0)  # its own CPU, nothing of the old owner's
    assert table.skipped["vanished"] == 1


def test_lifetime_cpu_for_unseen_finds_a_running_miner_on_the_first_scan(fake):
    fake.add(10, cpu=50.0, start=900.0)  # 50 s of CPU in its 100 s of life
    fake.add(11, cpu=900.0, start=990.0)  # tick rounding gone wild: clamped to all cores
    table = ProcessTable(fake.root, fake.clock, lifetime_cpu_for_unseen=True, ncpu=2)
    rows = {r.pid: r.cpu_percent for r in table.scan()}
    assert rows == {10: pytest.approx(50.0), 11: 200.0}
    fake.now += 10
    fake.add(10, cpu=51.0, start=900.0)
    assert {r.pid: r.cpu_percent for r in table.scan()}[10] == pytest.approx(10.0)


def test_describe_reads_the_rest_through_the_pid_directory(fake, tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nginx").write_text("")
    fake.add(
        20,
        name="nginx",
        uid=0,
        exe=str(tmp_path / "bin" / "nginx"),
        cgroup="1:name=systemd:/system.slice/nginx.service\n0::/x\n",
    )
    fake.add(21, name="kx", exe=str(tmp_path / "gone" / "kx (deleted)"), cmdline=["kx", "-t"])
    long_name = "a-miner-with-a-long-name"
    fake.add(22, name=long_name[:15], exe="/bin/true", cmdline=[f"/opt/{long_name}"])
    table = ProcessTable(fake.root, fake.clock)
    rows = {r.pid: r for r in table.describe(table.scan(), cmdline=True)}
    assert rows[20].exe == str(tmp_path / "bin" / "nginx") and not rows[20].exe_deleted
    assert rows[20].username == "root" and rows[20].cgroup == "/system.slice/nginx.service"
    assert (rows[21].exe, rows[21].exe_deleted) == (str(tmp_path / "gone" / "kx"), True)
    assert rows[21].cmdline == ("kx", "-t")
    assert rows[22].name == long_name
    # without cmdline=True the command line is never kept (the long name still resolves)
    plain = {r.pid: r for r in table.read()}
    assert plain[21].cmdline == () and plain[22].name == long_name


def test_describe_keeps_cpu_and_drops_vanished_and_reused_pids(fake):
    fake.add(30, cpu=1.0, start=7.0, exe="/bin/true")
    fake.add(31, start=8.0, exe="/bin/true")
    table = ProcessTable(fake.root, fake.clock)
    rows = {r.pid: replace(r, cpu_percent=42.0) for r in table.scan()}
    fake.remove(31)
    fake.add(30, start=999.0, exe="/bin/true")  # pid 30 now belongs to a newer process
    assert table.describe(rows.values()) == []
    assert table.skipped["vanished"] == 2
    fresh = table.lookup(30)
    assert fresh is not None and math.isnan(fresh.cpu_percent)
    assert table.describe([replace(fresh, cpu_percent=42.0)])[0].cpu_percent == 42.0
    assert table.lookup(31) is None


def test_kernel_threads_have_no_exe(fake):
    fake.add(2, name="kthreadd", ppid=0, flags=0x00208040)
    fake.add(7, name="kswapd0", ppid=2, flags=0x00208040, cpu=1.0, start=1.0)
    (_, row) = sorted(ProcessTable(fake.root, fake.clock).read(), key=lambda r: r.pid)
    assert row.is_kernel_thread and row.exe == "" and row.username == "root"
    assert row.create_time == pytest.approx(BTIME + 1.0)


def test_ports_come_from_the_socket_map_for_the_records_picked(fake):
    fake.add(40, cpu=0.0, exe="/bin/true", sockets=(42, 43, 44))
    fake.add(41, cpu=0.0, exe="/bin/true", sockets=(45,))
    calls = []

    def tcp_ports():
        calls.append(1)
        return {42: 3333, 44: 443, 45: 80}

    table = ProcessTable(fake.root, fake.clock, tcp_ports=tcp_ports)
    rows = table.describe(table.scan(), ports=lambda r: r.pid == 40)
    assert {r.pid: r.remote_ports for r in rows} == {40: (443, 3333), 41: ()}
    assert calls == [1]  # one dump serves every record
    assert table.describe(table.scan()) and calls == [1]  # no ports asked: no dump


# --------------------------------------------------------------------------- the real /proc


@pytest.fixture
def busy_child():
    """A child busy-looping on this interpreter, once it has burned 0.2 s of CPU."""
    child = subprocess.Popen([sys.executable, "-c", BURN])
    deadline = time.monotonic() + 5
    while sum(psutil.Process(child.pid).cpu_times()[:2]) < 0.2 and time.monotonic() < deadline:
        time.sleep(0.02)
    yield child
    child.kill()
    child.wait()


def test_a_real_burner_with_its_real_start_time(busy_child):
    burner = busy_child
    table = ProcessTable(lifetime_cpu_for_unseen=True)
    (first,) = [p for p in table.read() if p.pid == burner.pid]
    assert first.cpu_percent > 20.0  # its lifetime average, on the first look
    time.sleep(0.3)
    (second,) = [p for p in table.read() if p.pid == burner.pid]
    proc = psutil.Process(burner.pid)
    assert abs(second.create_time - proc.create_time()) < 0.02
    assert second.ppid == os.getpid() and second.exe == proc.exe()
    assert second.username == proc.username() and second.name == proc.name()
    assert second.cpu_percent > 20.0 and not second.is_kernel_thread
    assert same_process(burner.pid, second.create_time)
    assert not same_process(burner.pid, second.create_time - 1.0)


@pytest.fixture
def tmp_exe():
    """A real executable under /tmp: a copy of this interpreter."""
    d = Path(tempfile.mkdtemp(prefix="mw-pt-", dir="/tmp"))
    exe = d / "kx"
    shutil.copy2(os.path.realpath(sys.executable), exe)
    yield exe
    shutil.rmtree(d, ignore_errors=True)


def test_a_binary_deleted_from_disk_is_flagged(tmp_exe):
    child = subprocess.Popen(
        [str(tmp_exe), "-c", "import sys; print('up', flush=True); sys.stdin.readline()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline() == "up\n"
        table = ProcessTable()
        live = table.lookup(child.pid, cmdline=True)
        assert (live.exe, live.exe_deleted, live.name) == (str(tmp_exe), False, "kx")
        assert live.cmdline[0] == str(tmp_exe) and live.create_time > 0
        tmp_exe.unlink()
        gone = table.lookup(child.pid)
        assert (gone.exe, gone.exe_deleted) == (str(tmp_exe), True)
        assert not table.lookup(os.getpid()).exe_deleted  # this test's python is still on disk
    finally:
        child.kill()
        child.wait()


def test_lookup_of_an_exited_pid_is_none():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    table = ProcessTable()
    assert table.lookup(child.pid) is None
    me = table.lookup(os.getpid())
    assert me.exe == os.path.realpath(sys.executable) and me.ppid == os.getppid()
    assert table.describe([replace(me, create_time=me.create_time - 3600)]) == []


def test_netlink_and_psutil_agree_on_remote_ports():
    """This test process connects to itself; both ways of reading see the remote port."""

    def no_netlink():
        raise PermissionError("sock_diag blocked")

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)), server.accept()[0]:
            me = ProcessTable().lookup(os.getpid())
            (netlink,) = ProcessTable().describe([me], ports=True)
            (fallback,) = ProcessTable(tcp_ports=no_netlink).describe([me], ports=True)
    assert port in netlink.remote_ports
    assert netlink.remote_ports == fallback.remote_ports


def test_the_record_is_a_plain_frozen_value():
    rec = ProcessRecord(4242, 1, "xmrig", "/tmp/.x/xmrig", "www-data", 1.0, 190.0)
    assert (rec.cgroup, rec.exe_deleted, rec.remote_ports, rec.cmdline) == ("/", False, (), ())
    with pytest.raises(AttributeError):
        rec.pid = 1
