import math
import os
import shutil
import socket
import subprocess
import sys
import time

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minerwatch.features.sources import SOURCES, Source, build_sources
from minerwatch.features.sources.cpu import (
    CpuSource,
    CpuTimes,
    cpu_shares,
    parse_loadavg,
    parse_proc_stat,
)
from minerwatch.features.sources.disk import DiskSource, parse_diskstats, physical_disks
from minerwatch.features.sources.memory import MemorySource, mem_used_percent, parse_meminfo
from minerwatch.features.sources.network import NetworkSource, parse_net_dev, parse_tcp_curr_estab
from minerwatch.features.sources.processes import ProcessesSource

PROC_STAT = """\
cpu  3664 12 1867 52792 225 3 47 11 5 0
cpu0 982 0 808 27361 130 0 9 3 0 0
cpu1 2682 12 1058 25430 95 3 37 7 5 0
intr 12345 0 0
ctxt 310393
btime 1795610162
processes 5612
procs_running 3
procs_blocked 0
"""

NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    3193      29    0    0    0     0          0         0     3193      29    0    0    0     0       0          0
  eth0: 147990600    3641    0    0    0     0          0         0   207800    2215    0    0    0     0       0          0
docker0:     500       5    0    0    0     0          0         0      700       7    0    0    0     0       0          0
"""  # noqa: E501 (literal /proc text)

DISKSTATS = """\
   7       0 loop0 10 0 80 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 254       0 vda 30986 7512 2162722 4602 9609 25921 2982216 8588 0 3252 13397 3675 60 169928 175
 254       1 vda1 30000 7000 2000000 4000 9000 25000 2900000 8000 0 3000 13000 3000 60 160000 170
 253       0 dm-0 1 0 999999 0 1 0 999999 0 0 0 0 0 0 0 0
 259       0 nvme0n1 1 0 8 0 1 0 16 0 0 0 0
 259       1 nvme0n1p1 1 0 8 0 1 0 16 0 0 0 0
"""

MEMINFO = """\
MemTotal:       24684084 kB
MemFree:        24293956 kB
MemAvailable:   18513063 kB
Buffers:            6408 kB
HugePages_Total:       0
"""

SNMP = """\
Ip: Forwarding DefaultTTL InReceives
Ip: 1 64 3845
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs
Tcp: 1 200 120000 -1 16 2 0 0 4 3636
Udp: InDatagrams NoPorts
Udp: 10 0
"""  # noqa: E501 (literal /proc text)


class FakeClock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def write_proc(root, stat=PROC_STAT, net_dev=NET_DEV, diskstats=DISKSTATS):
    (root / "net").mkdir(exist_ok=True)
    (root / "stat").write_text(stat)
    (root / "loadavg").write_text("0.52 0.13 0.07 2/93 5605\n")
    (root / "meminfo").write_text(MEMINFO)
    (root / "diskstats").write_text(diskstats)
    (root / "net" / "dev").write_text(net_dev)
    (root / "net" / "snmp").write_text(SNMP)


# ---- parsers on literal /proc text -------------------------------------------------------


def test_parse_proc_stat_reads_aggregate_cpu_ctxt_and_running():
    s = parse_proc_stat(PROC_STAT)
    assert s.cpu == CpuTimes(3664, 12, 1867, 52792, 225, 3, 47, 11)
    assert (s.ctxt, s.procs_running) == (310393, 3)


def test_parse_proc_stat_accepts_old_kernels_with_four_cpu_fields():
    s = parse_proc_stat("cpu 1 2 3 4\nctxt 5\nprocs_running 1\n")
    assert s.cpu == CpuTimes(1, 2, 3, 4, 0, 0, 0, 0)


@pytest.mark.parametrize(
    "text,missing",
    [("ctxt 1\nprocs_running 1\n", "cpu"), ("cpu 1 2 3 4\nprocs_running 1\n", "ctxt")],
)
def test_parse_proc_stat_names_what_is_missing(text, missing):
    with pytest.raises(ValueError, match=missing):
        parse_proc_stat(text)


def test_parse_loadavg():
    la = parse_loadavg("0.04 0.13 0.07 1/93 5605\n")
    assert (la.load1, la.load5, la.load15, la.running, la.total) == (0.04, 0.13, 0.07, 1, 93)
    with pytest.raises(ValueError, match="loadavg"):
        parse_loadavg("garbage\n")


def test_cpu_shares_steal_is_not_ours_and_guest_is_not_double_counted():
    prev = CpuTimes(100, 0, 100, 100, 0, 0, 0, 0)
    # +30 user, +10 nice, +5 system, +3 irq, +2 softirq, +40 idle, +10 iowait, +500 steal
    cur = CpuTimes(130, 10, 105, 140, 10, 3, 2, 500)
    shares = cpu_shares(prev, cur)
    assert shares == {
        "cpu_percent": 50.0,
        "cpu_user_percent": 40.0,
        "cpu_system_percent": 10.0,
        "cpu_iowait_percent": 10.0,
    }


def test_cpu_shares_nan_without_ticks_or_after_counter_reset():
    t = CpuTimes(1, 1, 1, 1)
    assert all(math.isnan(v) for v in cpu_shares(t, t).values())
    assert all(math.isnan(v) for v in cpu_shares(CpuTimes(9, 9, 9, 9), t).values())


ticks = st.integers(min_value=0, max_value=10**6)


@given(st.lists(ticks, min_size=8, max_size=8), st.lists(ticks, min_size=8, max_size=8))
def test_cpu_shares_are_percentages_that_add_up(base, inc):
    prev = CpuTimes(*base)
    cur = CpuTimes(*(b + i for b, i in zip(base, inc, strict=True)))
    s = cpu_shares(prev, cur)
    if cur.accounted == prev.accounted:
        assert all(math.isnan(v) for v in s.values())
        return
    assert all(0.0 <= v <= 100.0 for v in s.values())
    assert s["cpu_percent"] == pytest.approx(s["cpu_user_percent"] + s["cpu_system_percent"])
    idle_share = 100.0 * (inc[3] + inc[4]) / (cur.accounted - prev.accounted)
    assert s["cpu_percent"] == pytest.approx(100.0 - idle_share)


def test_parse_meminfo_and_used_percent():
    info = parse_meminfo(MEMINFO)
    assert info["MemTotal"] == 24684084 and info["HugePages_Total"] == 0
    assert mem_used_percent(info) == pytest.approx(100 * (24684084 - 18513063) / 24684084)
    with pytest.raises(ValueError, match="MemAvailable"):
        mem_used_percent({"MemTotal": 10})


def test_parse_diskstats_counts_512_byte_sectors_and_keeps_only_whole_disks():
    stats = parse_diskstats(DISKSTATS)
    assert stats["vda"] == (2162722 * 512, 2982216 * 512)
    assert sorted(physical_disks(stats)) == ["nvme0n1", "vda"]


def test_parse_net_dev_skips_headers_and_keeps_all_interfaces():
    dev = parse_net_dev(NET_DEV)
    assert dev["eth0"] == (147990600, 3641, 207800, 2215)
    assert dev["docker0"] == (500, 5, 700, 7)
    assert sorted(dev) == ["docker0", "eth0", "lo"]


def test_parse_tcp_curr_estab():
    assert parse_tcp_curr_estab(SNMP) == 4
    with pytest.raises(ValueError, match="CurrEstab"):
        parse_tcp_curr_estab("Ip: a\nIp: 1\n")


# ---- sources on a fake /proc tree with a hand-driven clock --------------------------------


def test_cpu_source_primes_then_computes_interval_values(tmp_path):
    write_proc(tmp_path)
    clock = FakeClock()
    src = CpuSource(proc_root=tmp_path, clock=clock)
    first = src.read()
    assert math.isnan(first["cpu_percent"]) and math.isnan(first["ctx_switches_ps"])
    assert first["load1"] == 0.52 and first["procs_running"] == 3.0
    # +300 user, +100 system, +600 idle ticks; +5000 context switches in 10 s
    later = PROC_STAT.replace("cpu  3664 12 1867 52792", "cpu  3964 12 1967 53392").replace(
        "ctxt 310393", "ctxt 315393"
    )
    (tmp_path / "stat").write_text(later)
    clock.t += 10.0
    row = src.read()
    assert row["cpu_percent"] == pytest.approx(40.0)
    assert row["cpu_user_percent"] == pytest.approx(30.0)
    assert row["cpu_system_percent"] == pytest.approx(10.0)
    assert row["cpu_iowait_percent"] == 0.0
    assert row["ctx_switches_ps"] == pytest.approx(500.0)


def test_cpu_source_counter_reset_gives_nan_then_recovers(tmp_path):
    write_proc(tmp_path)
    clock = FakeClock()
    src = CpuSource(proc_root=tmp_path, clock=clock)
    src.read()
    (tmp_path / "stat").write_text("cpu 1 0 1 10 0 0 0 0\nctxt 10\nprocs_running 1\n")
    clock.t += 10
    reset = src.read()
    assert math.isnan(reset["cpu_percent"]) and math.isnan(reset["ctx_switches_ps"])
    (tmp_path / "stat").write_text("cpu 2 0 1 19 0 0 0 0\nctxt 30\nprocs_running 1\n")
    clock.t += 10
    after = src.read()
    assert after["cpu_percent"] == pytest.approx(10.0)
    assert after["ctx_switches_ps"] == pytest.approx(2.0)


def test_network_source_excludes_loopback_and_survives_one_interface_reset(tmp_path):
    write_proc(tmp_path)
    clock = FakeClock()
    src = NetworkSource(proc_root=tmp_path, clock=clock)
    first = src.read()
    assert math.isnan(first["net_rx_bps"]) and first["tcp_established"] == 4.0
    dev = NET_DEV.replace("    3193      29 ", "   99999    9999 ")  # lo traffic: ignored
    dev = dev.replace("147990600    3641", "147991600    3651")  # eth0 +1000 B, +10 pkts
    dev = dev.replace("docker0:     500       5", "docker0:       0       0")  # reset
    (tmp_path / "net" / "dev").write_text(dev)
    clock.t += 2.0
    row = src.read()
    assert row["net_rx_bps"] == pytest.approx(500.0)
    assert row["net_rx_pps"] == pytest.approx(5.0)
    assert row["net_tx_bps"] == 0.0 and row["net_tx_pps"] == 0.0


def test_disk_source_sums_whole_disks_only(tmp_path):
    write_proc(tmp_path)
    clock = FakeClock()
    src = DiskSource(proc_root=tmp_path, clock=clock)
    assert math.isnan(src.read()["disk_read_bps"])
    grown = DISKSTATS.replace("vda 30986 7512 2162722", "vda 30990 7512 2162742")  # +20 sectors
    grown = grown.replace("vda1 30000 7000 2000000", "vda1 30000 7000 2000020")  # partition
    grown = grown.replace("dm-0 1 0 999999", "dm-0 1 0 1999999")  # device mapper
    (tmp_path / "diskstats").write_text(grown)
    clock.t += 5.0
    row = src.read()
    assert row["disk_read_bps"] == pytest.approx(20 * 512 / 5.0)
    assert row["disk_write_bps"] == 0.0


def test_memory_source_reads_fake_meminfo(tmp_path):
    write_proc(tmp_path)
    assert MemorySource(proc_root=tmp_path).read()["mem_percent"] == pytest.approx(25.0, abs=0.1)


def test_sources_raise_oserror_on_missing_proc_files(tmp_path):
    for cls in (CpuSource, MemorySource, DiskSource, NetworkSource):
        with pytest.raises(OSError):
            cls(proc_root=tmp_path / "nope").read()


def test_a_non_advancing_clock_gives_nan_rates_not_infinities(tmp_path):
    write_proc(tmp_path)
    src = NetworkSource(proc_root=tmp_path, clock=FakeClock())
    src.read()
    row = src.read()
    assert math.isnan(row["net_rx_bps"])


def write_process(root, pid, cpu_s, start_s, name="x"):
    """One process in a fake /proc: its stat line (times in seconds) and an executable link."""
    hz = os.sysconf("SC_CLK_TCK")
    d = root / str(pid)
    d.mkdir(exist_ok=True)
    (d / "stat").write_text(
        f"{pid} ({name}) S 1 {pid} {pid} 0 -1 0 0 0 0 0 {round(cpu_s * hz)} 0 0 0 20 0 1 0 "
        f"{round(start_s * hz)} 0 0\n"
    )
    (d / "status").write_text(f"Name:\t{name}\nUid:\t0\t0\t0\t0\n")
    (d / "cgroup").write_text("0::/\n")
    if not (d / "exe").is_symlink():
        (d / "exe").symlink_to(f"/usr/bin/{name}")


def test_processes_source_on_a_fake_proc(tmp_path):
    write_proc(tmp_path)
    for pid, start in ((10, 5.0), (11, 6.0), (12, 7.0)):
        write_process(tmp_path, pid, 0.0, start, name=f"p{pid}")
    clock = FakeClock(1000.0)
    src = ProcessesSource(proc_root=tmp_path, clock=clock, top_n=2, ncpu=2)
    first = src.read()
    assert first["procs_total"] == 3 and math.isnan(first["top_proc_cpu_percent"])
    assert src.top == () and math.isnan(src.visible_cpu_percent)
    clock.t += 10
    write_process(tmp_path, 10, 8.0, 5.0, name="p10")  # 80 % of one core
    write_process(tmp_path, 11, 3.0, 6.0, name="p11")  # 30 %
    write_process(tmp_path, 12, 1.0, 7.0, name="p12")  # 10 %
    row = src.read()
    assert row == {
        "procs_total": 3.0,
        "top_proc_cpu_percent": pytest.approx(80.0),
        "cpu_cores": 2.0,
    }
    assert [(p.pid, p.name, p.exe) for p in src.top] == [
        (10, "p10", "/usr/bin/p10"),
        (11, "p11", "/usr/bin/p11"),
    ]
    assert src.visible_cpu_percent == pytest.approx(60.0)  # 120 % of one core, 2 cores
    assert all(math.isnan(p.gc_cpu_percent) for p in src.top)  # no threads to read here


def write_thread(root, pid, tid, name, cpu_s):
    hz = os.sysconf("SC_CLK_TCK")
    d = root / str(pid) / "task" / str(tid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "stat").write_text(
        f"{tid} ({name}) S 1 {pid} {pid} 0 -1 0 0 0 0 0 {round(cpu_s * hz)} 0 0 0 20 0 1 0 "
        f"500 0 0\n"
    )


def test_the_busiest_processes_carry_their_garbage_collectors_cpu(tmp_path):
    """Threads named as a runtime's collector (``GC Thread#0``, ``G1 Conc#0``) are summed;
    other threads are the process's work. The first read has no interval (NaN); a busy
    process without such threads has none (0); an idle one is not looked at."""
    write_proc(tmp_path)
    write_process(tmp_path, 10, 0.0, 5.0, name="java")
    write_process(tmp_path, 11, 0.0, 6.0, name="nginx")
    write_process(tmp_path, 12, 0.0, 7.0, name="idle")
    threads = {10: ("java", "GC Thread#0", "GC Thread#1", "G1 Conc#0", "pool-1-thread-1")}
    threads[11] = ("nginx",)
    for pid, names in threads.items():
        for k, name in enumerate(names):
            write_thread(tmp_path, pid, pid * 100 + k, name, 0.0)
    clock = FakeClock(1000.0)
    src = ProcessesSource(proc_root=tmp_path, clock=clock, top_n=3, ncpu=4)
    src.read()
    clock.t += 10
    write_process(tmp_path, 10, 30.0, 5.0, name="java")  # 300 % of one core
    write_process(tmp_path, 11, 5.0, 6.0, name="nginx")
    for k, cpu in enumerate((1.0, 12.0, 11.0, 4.0, 2.0)):  # GC threads: 27 s of the 30
        write_thread(tmp_path, 10, 1000 + k, threads[10][k], cpu)
    write_thread(tmp_path, 11, 1100, "nginx", 5.0)
    src.read()
    first = {p.pid: p.gc_cpu_percent for p in src.top}
    assert math.isnan(first[10]) and first[11] == 0.0 and math.isnan(first[12])
    clock.t += 10
    write_process(tmp_path, 10, 60.0, 5.0, name="java")
    write_process(tmp_path, 11, 10.0, 6.0, name="nginx")
    for k, cpu in enumerate((2.0, 24.0, 22.0, 8.0, 4.0)):
        write_thread(tmp_path, 10, 1000 + k, threads[10][k], cpu)
    write_thread(tmp_path, 11, 1100, "nginx", 10.0)
    src.read()
    second = {p.pid: p.gc_cpu_percent for p in src.top}
    assert second[10] == pytest.approx(270.0) and second[11] == 0.0


# ---- the registration map and the real machine --------------------------------------------


def test_registry_builds_sources_that_own_disjoint_columns():
    sources = build_sources()
    assert list(sources) == list(SOURCES)
    seen = []
    for name, src in sources.items():
        assert isinstance(src, Source) and src.name == name
        seen.extend(src.columns)
    assert len(seen) == len(set(seen))


def test_real_proc_sources_give_values_in_range():
    sources = {n: s for n, s in build_sources().items() if n != "processes"}
    for s in sources.values():
        s.read()
    time.sleep(0.3)
    row = {}
    for s in sources.values():
        row.update(s.read())
    for k in ("cpu_percent", "cpu_user_percent", "cpu_system_percent", "cpu_iowait_percent"):
        assert math.isnan(row[k]) or 0.0 <= row[k] <= 100.0, k
    assert 0.0 < row["mem_percent"] < 100.0
    assert row["procs_running"] >= 1  # this test is running
    for k in ("disk_read_bps", "disk_write_bps", "net_rx_bps", "net_tx_bps", "ctx_switches_ps"):
        assert row[k] >= 0.0, k
    assert row["ctx_switches_ps"] > 0


def test_processes_source_counts_and_sees_this_process():
    src = ProcessesSource()
    first = src.read()
    assert first["procs_total"] > 0 and math.isnan(first["top_proc_cpu_percent"])
    assert src.top == ()
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # burn a little CPU ourselves
        pass
    row = src.read()
    assert row["procs_total"] == pytest.approx(len(psutil.pids()), rel=0.2)
    ncpu = os.cpu_count()
    assert 0.0 <= row["top_proc_cpu_percent"] <= 100.0 * ncpu
    assert 0.0 <= src.visible_cpu_percent <= 100.0
    me = [p for p in src.top if p.pid == os.getpid()]
    assert me and me[0].cpu_percent > 30 and me[0].username
    assert me[0].exe and os.path.samefile(me[0].exe, sys.executable)


def test_processes_source_attributes_a_child_born_inside_the_interval():
    src = ProcessesSource()
    src.read()
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nt=time.monotonic()+0.6\nwhile time.monotonic()<t: pass",
        ]
    )
    try:
        time.sleep(0.3)
        src.read()
        entry = [p for p in src.top if p.pid == child.pid]
        assert entry, src.top
        assert entry[0].create_time == pytest.approx(psutil.Process(child.pid).create_time())
        assert entry[0].cpu_percent > 20
    finally:
        child.kill()
        child.wait()
    src.read()
    assert src.skipped["vanished"] >= 1


PID_REUSE_SCRIPT = r"""
import subprocess, sys, time
import psutil
from minerwatch.features.sources.processes import ProcessesSource

def spawn(code, pid=None):
    if pid is not None:  # the next fork in this pid namespace gets exactly `pid`
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
    return subprocess.Popen([sys.executable, "-c", code])

def burn(seconds):
    return f"import time\nt=time.process_time()+{seconds}\nwhile time.process_time()<t: pass"

src = ProcessesSource()
for old_cpu, new_cpu in ((0.0, 0.4), (0.6, 0.2)):  # new owner busier / idler than the old
    old = spawn(burn(old_cpu) + "\ntime.sleep(30)")
    time.sleep(old_cpu + 0.3)
    src.read()  # sees and caches the old owner of the pid
    old.kill(); old.wait()
    new = spawn(burn(new_cpu) + "\ntime.sleep(30)", pid=old.pid)
    assert new.pid == old.pid, (new.pid, old.pid)
    time.sleep(new_cpu + 0.3)
    src.read()
    truth = psutil.Process(new.pid)
    entry = {p.pid: p for p in src.top}.get(new.pid)
    assert entry is not None, src.top
    assert abs(entry.create_time - truth.create_time()) < 0.05, (entry, truth.create_time())
    print("reuse", old_cpu, new_cpu, entry.cpu_percent, sum(truth.cpu_times()[:2]), flush=True)
    new.kill(); new.wait()
"""


def test_a_reused_pid_is_a_new_process_with_its_own_cpu(tmp_path):
    """Forces pid reuse inside a private pid namespace (needs root and unshare)."""
    script = tmp_path / "reuse.py"
    script.write_text(PID_REUSE_SCRIPT)
    cmd = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, str(script)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("unshare not installed")
    if "Operation not permitted" in res.stderr:
        pytest.skip("cannot create a pid namespace here")
    assert res.returncode == 0, res.stderr
    lines = [line.split() for line in res.stdout.splitlines() if line.startswith("reuse")]
    assert len(lines) == 2
    for _, _, new_cpu, pct, _ in lines:
        # all of the new owner's CPU is attributed to it, none of the old owner's is subtracted
        assert float(pct) >= 0.5 * float(new_cpu) * 100 / (float(new_cpu) + 0.3 + 0.2)


CONNECTED_BURNER = r"""
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
sys.stdout.write("connected\n"); sys.stdout.flush()
while True:
    pass
"""


def test_busy_process_reports_the_remote_port_it_talks_to():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    child = subprocess.Popen(
        [sys.executable, "-c", CONNECTED_BURNER, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline() == "connected\n"
        conn, _ = server.accept()
        src = ProcessesSource(top_n=20)
        src.read()
        time.sleep(0.5)
        src.read()
        entry = {p.pid: p for p in src.top}.get(child.pid)
        assert entry is not None and entry.cpu_percent >= src.ports_min_cpu, src.top
        assert entry.remote_ports == (port,)
        conn.close()
    finally:
        child.kill()
        child.wait()
        server.close()


def test_a_busy_binary_deleted_from_disk_is_flagged(tmp_path):
    binary = tmp_path / "kworkerds"  # a name miners like to hide behind
    shutil.copy(shutil.which("yes"), binary)
    child = subprocess.Popen([str(binary)], stdout=subprocess.DEVNULL)
    try:
        binary.unlink()
        src = ProcessesSource(top_n=20)
        src.read()
        time.sleep(0.5)
        src.read()
        entry = {p.pid: p for p in src.top}.get(child.pid)
        assert entry is not None, src.top
        assert entry.exe_deleted and entry.exe == str(binary)
        assert entry.name == "kworkerds"
    finally:
        child.kill()
        child.wait()


def test_threads_not_collecting_are_read_again_every_tenth_time(tmp_path):
    """A JVM has hundreds of threads: those not named as a collector's are not read on every
    sample, but every tenth time all are, so a thread named after it was first seen (a
    runtime names a thread just after starting it) is counted from the read after that."""
    write_proc(tmp_path)
    write_process(tmp_path, 10, 0.0, 5.0, name="java")
    write_thread(tmp_path, 10, 1000, "java", 0.0)  # not yet named
    clock = FakeClock(1000.0)
    src = ProcessesSource(proc_root=tmp_path, clock=clock, top_n=1, ncpu=4)
    src.read()
    gcs = []
    for k in range(1, 15):
        clock.t += 10
        write_process(tmp_path, 10, 10.0 * k, 5.0, name="java")
        name = "java" if k < 3 else "GC Thread#0"  # named from the third sample on
        write_thread(tmp_path, 10, 1000, name, 10.0 * k)  # a core of collection
        src.read()
        gcs.append(src.top[0].gc_cpu_percent)
    assert gcs[:3] == [0.0, 0.0, 0.0]  # read as "java", then not read again for a while
    first = next(i for i, g in enumerate(gcs) if g > 0)
    assert 3 < first <= 11  # found at the tenth read, counted from the next one
    assert gcs[first:] == pytest.approx([100.0] * (14 - first))
