"""Auto-throttle: protection rules, mechanisms on real processes and cgroup trees, controller."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minerwatch.features.errors import InputError
from minerwatch.service.cgroups import (
    Cgroup1Quota,
    Cgroup2Quota,
    ProcessGone,
    SigStop,
    Throttled,
    build_mechanisms,
    find_v1_cpu_root,
)
from minerwatch.service.protect import (
    ProcInfo,
    ProcReader,
    cgroup_units,
    parse_proc_cgroup,
    parse_stat,
    protected_reason,
    same_process,
    select_targets,
    unit_of_cgroup,
)
from minerwatch.service.throttle import (
    AUDIT,
    JOURNAL,
    Journal,
    Throttle,
    ThrottleConfig,
    add_parser,
    add_serve_arguments,
    config_from_args,
    parse_duration,
    release_from_journal,
    run,
)

BURN = "import time\nend = time.monotonic() + 20\nwhile time.monotonic() < end: pass\n"


# --------------------------------------------------------------------------- helpers


def wait_for(pred, timeout=5.0, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def status(pid):
    return psutil.Process(pid).status()


def cpu_s(pid):
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def is_stopped(pid):
    return status(pid) == psutil.STATUS_STOPPED


def runs_again(pid):
    """Not stopped, and its CPU time grows (the burner is running, not just continued)."""
    if is_stopped(pid):
        return False
    before = cpu_s(pid)
    return wait_for(lambda: cpu_s(pid) > before, timeout=5.0)


def stays_frozen(pid, seconds=0.3):
    before = cpu_s(pid)
    time.sleep(seconds)
    return is_stopped(pid) and cpu_s(pid) == before


def cleanup(proc):
    for sig in (signal.SIGCONT, signal.SIGKILL):
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
    proc.wait(timeout=5)


@pytest.fixture
def burner():
    proc = subprocess.Popen([sys.executable, "-c", BURN])
    try:
        yield proc
    finally:
        cleanup(proc)


@pytest.fixture
def sleepers():
    procs = [subprocess.Popen(["sleep", "30"]) for _ in range(3)]
    try:
        yield procs
    finally:
        for p in procs:
            cleanup(p)


def info(pid, cpu=50.0):
    """A ProcInfo for a real process (real pid and start time), with an invented CPU figure."""
    p = psutil.Process(pid)
    return ProcInfo(pid, p.ppid(), p.name(), p.exe(), p.username(), p.create_time(), cpu, "/")


def only(*pids):
    """A process reader that sees only our children: never touch other processes here."""
    reader = ProcReader()

    def read():
        return [p for p in reader() if p.pid in pids]

    return read


def cfg_for(tmp_path, **kw):
    base = dict(
        enabled=True,
        hold_s=0.0,
        release_hold_s=0.0,
        min_proc_cpu_percent=0.0,
        state_dir=tmp_path / "state",
        cgroup_root=tmp_path / "no-cgroups",
    )
    base.update(kw)
    return ThrottleConfig(**base)


def audit_lines(cfg):
    path = cfg.state_dir / AUDIT
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


# --------------------------------------------------------------------------- pure rules


class Allow:
    def __init__(self, names=(), users=(), units=(), max_targets=3, min_cpu=0.0):
        self.allow_names, self.allow_users, self.allow_units = names, users, units
        self.max_targets, self.min_proc_cpu_percent = max_targets, min_cpu


def p(pid, name="xmrig", ppid=100, exe=None, user="www", cpu=90.0, cgroup="/", kthread=False):
    exe = f"/usr/bin/{name}" if exe is None else exe
    return ProcInfo(pid, ppid, name, exe, user, 1.0, cpu, cgroup, kthread)


@pytest.mark.parametrize(
    "proc, allow, reason",
    [
        (p(1, "anything"), Allow(), "pid 1"),
        (p(2, "kthreadd"), Allow(), "kernel thread"),
        (p(50, "kworker/0:1", ppid=2), Allow(), "kernel thread"),
        (p(50, "odd", ppid=7, kthread=True), Allow(), "kernel thread"),
        (p(50, "noexe", exe=""), Allow(), "no executable"),
        (p(50, "sshd"), Allow(), "core process 'sshd'"),
        (p(50, "systemd-journal", exe="/lib/systemd/systemd-journald"), Allow(), "core process"),
        (p(50, "init", exe="/sbin/init"), Allow(), "core process 'init'"),
        (p(50, "postgres"), Allow(names=("postgr*",)), "allow-listed name"),
        (p(50, "x", exe="/opt/db/mysqld"), Allow(names=("mysqld",)), "allow-listed name"),
        (p(50, "build", user="ci"), Allow(users=("ci",)), "allow-listed user"),
        (
            p(50, "nginx", cgroup="/system.slice/nginx.service"),
            Allow(units=("nginx.service",)),
            "allow-listed unit",
        ),
        (p(50, "job", cgroup="/batch.slice/j1.scope"), Allow(units=("batch.slice",)), "unit"),
    ],
)
def test_protected_reason_names_the_rule(proc, allow, reason):
    got = protected_reason(proc, allow, set())
    assert got is not None and reason in got


def test_unprotected_process_may_be_throttled():
    miner = p(4242, "kdevtmpfsi", exe="/tmp/.x/kdevtmpfsi (deleted)", cgroup="/user.slice")
    assert protected_reason(miner, Allow(names=("nginx",), users=("ci",)), {99}) is None


def test_agent_and_its_ancestors_are_protected():
    table = [p(10, "bash", ppid=1), p(20, "agent", ppid=10), p(30, "miner", ppid=1)]
    picked = select_targets(table, Allow(), {20})
    assert [t.pid for t in picked] == [30]


def test_unit_parsing():
    assert cgroup_units("/system.slice/nginx.service/sub") == ("system.slice", "nginx.service")
    assert unit_of_cgroup("/system.slice/nginx.service") == "nginx.service"
    assert unit_of_cgroup("/user.slice/user-1000.slice") == "user-1000.slice"
    assert unit_of_cgroup("/") is None


def test_parse_stat_and_cgroup_literals():
    text = "77 (a) b (c)) S 5 77 77 0 -1 2097216 0 0 0 0 12 8 0 0 20 0 1 0 4321 0 0"
    s = parse_stat(text)
    assert (s.name, s.state, s.ppid, s.cpu_ticks, s.start_ticks) == ("a) b (c)", "S", 5, 20, 4321)
    assert s.flags & 0x00200000
    cg = parse_proc_cgroup("9:name=systemd:/user.slice\n2:cpu,cpuacct:/x\n0::/y.service\n")
    assert cg == {"name=systemd": "/user.slice", "cpu": "/x", "cpuacct": "/x", "": "/y.service"}


def test_selection_takes_busiest_and_respects_limits():
    table = [p(10, cpu=30), p(11, cpu=95), p(12, cpu=60), p(13, cpu=2), p(14, "sshd", cpu=99)]
    cfg = Allow(max_targets=2, min_cpu=5.0)
    assert [t.pid for t in select_targets(table, cfg, set())] == [11, 12]
    assert [t.pid for t in select_targets(table, cfg, set(), exclude={11})] == [12, 10]
    assert select_targets(table, cfg, set(), limit=0) == []


names = st.sampled_from(
    ["xmrig", "sshd", "systemd", "systemd-udevd", "init", "nginx", "postgres", "bash", "kworker"]
)
users = st.sampled_from(["root", "www", "ci", "alice"])
cgroups = st.sampled_from(
    ["/", "/system.slice/nginx.service", "/system.slice/ssh.service", "/user.slice/s-1.scope"]
)


@st.composite
def tables(draw):
    n = draw(st.integers(1, 40))
    pids = draw(st.lists(st.integers(1, 400), min_size=n, max_size=n, unique=True))
    procs = []
    for pid in pids:
        procs.append(
            ProcInfo(
                pid=pid,
                ppid=draw(st.sampled_from([0, 1, 2, *pids])),
                name=draw(names),
                exe=draw(st.sampled_from(["", "/usr/bin/x", "/tmp/y (deleted)"])),
                username=draw(users),
                create_time=1.0,
                cpu_percent=draw(st.floats(0, 400)),
                cgroup=draw(cgroups),
                is_kernel_thread=draw(st.booleans()),
            )
        )
    agent = draw(st.sets(st.sampled_from(pids), max_size=2))
    allow = Allow(
        names=tuple(draw(st.sets(names, max_size=2))),
        users=tuple(draw(st.sets(users, max_size=2))),
        units=tuple(draw(st.sets(st.sampled_from(["nginx.service", "user.slice"]), max_size=1))),
        max_targets=draw(st.integers(0, 5)),
        min_cpu=5.0,
    )
    return procs, agent, allow


@settings(max_examples=300, deadline=None)
@given(tables())
def test_property_never_selects_a_protected_process(data):
    procs, agent, allow = data
    chosen = select_targets(procs, allow, agent)
    # Independent oracle for the agent's ancestry.
    parent = {q.pid: q.ppid for q in procs}
    guarded = set()
    for pid in agent:
        while pid in parent and pid not in guarded:
            guarded.add(pid)
            pid = parent[pid]
        guarded.add(pid)
    for c in chosen:
        assert c.pid not in guarded
        assert c.pid not in (1, 2) and c.ppid != 2 and not c.is_kernel_thread and c.exe
        assert c.name not in ("sshd", "systemd", "init") and not c.name.startswith("systemd-")
        assert c.name not in allow.allow_names and c.username not in allow.allow_users
        assert not set(cgroup_units(c.cgroup)) & set(allow.allow_units)
        assert protected_reason(c, allow, guarded) is None
    assert len(chosen) <= allow.max_targets
    assert [c.cpu_percent for c in chosen] == sorted((c.cpu_percent for c in chosen), reverse=True)


# --------------------------------------------------------------------------- reading /proc


def test_proc_reader_sees_a_burner_and_its_real_start_time(burner):
    read = only(burner.pid)
    assert wait_for(lambda: cpu_s(burner.pid) > 0.2)
    (first,) = read()
    time.sleep(0.3)
    (second,) = read()
    proc = psutil.Process(burner.pid)
    assert abs(second.create_time - proc.create_time()) < 0.02
    assert second.ppid == os.getpid() and second.exe == proc.exe()
    assert second.cpu_percent > 20.0 and not second.is_kernel_thread
    assert same_process(burner.pid, second.create_time)
    assert not same_process(burner.pid, second.create_time - 1.0)


def test_proc_reader_marks_kernel_threads_on_a_fake_proc(tmp_path):
    (tmp_path / "stat").write_text("cpu 1 2 3\nbtime 1700000000\n")
    (tmp_path / "uptime").write_text("1000.00 50.00\n")
    d = tmp_path / "7"
    d.mkdir()
    (d / "stat").write_text("7 (kswapd0) S 2 0 0 0 -1 2129984 0 0 0 0 50 50 0 0 20 0 1 0 100 0")
    (d / "status").write_text("Name:\tkswapd0\nUid:\t0\t0\t0\t0\n")
    (d / "cgroup").write_text("0::/\n")
    (row,) = ProcReader(tmp_path)()
    assert row.is_kernel_thread and row.exe == "" and row.username == "root"
    hz = os.sysconf("SC_CLK_TCK")
    assert row.create_time == pytest.approx(1700000000 + 100 / hz)
    assert protected_reason(row, Allow(), set()) is not None


# --------------------------------------------------------------------------- mechanisms


def fake_rmdir(path):
    """cgroupfs removes its control files on rmdir; a plain folder needs them removed."""
    for f in Path(path).iterdir():
        if f.is_file():
            f.unlink()
    os.rmdir(path)


def test_cgroup2_writes_cpu_max_and_moves_back(tmp_path, sleepers):
    root = tmp_path / "cg2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("memory\n")
    pid = sleepers[0].pid
    mech = Cgroup2Quota(root, 25.0, rmdir=fake_rmdir)
    rec = mech.plan(info(pid))
    child = Path(rec.cgroup_dir)
    assert child.parent == root / "minerwatch-throttle" and not child.exists()
    mech.apply(rec)
    assert (root / "cgroup.subtree_control").read_text() == "+cpu"
    assert (child.parent / "cgroup.subtree_control").read_text() == "+cpu"
    assert (child / "cpu.max").read_text() == "25000 100000"
    assert (child / "cgroup.procs").read_text() == str(pid)
    assert mech.release(rec)
    assert (root / "cgroup.procs").read_text() == str(pid)  # real /proc says "0::/"
    assert not child.exists() and not child.parent.exists()


def test_cgroup1_writes_cfs_quota(tmp_path, sleepers):
    root = tmp_path / "cpu"
    root.mkdir()
    (root / "cpu.cfs_quota_us").write_text("-1\n")
    pid = sleepers[0].pid
    mech = Cgroup1Quota(root, 10.0, rmdir=fake_rmdir)
    rec = mech.plan(info(pid))
    mech.apply(rec)
    child = Path(rec.cgroup_dir)
    assert (child / "cpu.cfs_period_us").read_text() == "100000"
    assert (child / "cpu.cfs_quota_us").read_text() == "10000"
    assert (child / "cgroup.procs").read_text() == str(pid)
    assert mech.release(rec)
    assert not child.exists()


def test_cgroup_apply_refuses_a_reused_pid(tmp_path, sleepers):
    root = tmp_path / "cpu"
    root.mkdir()
    (root / "cpu.cfs_quota_us").write_text("-1\n")
    stale = info(sleepers[0].pid)
    stale = ProcInfo(**{**stale.__dict__, "create_time": stale.create_time - 5})
    mech = Cgroup1Quota(root, 10.0, rmdir=fake_rmdir)
    with pytest.raises(ProcessGone):
        mech.apply(mech.plan(stale))
    assert not list(root.rglob("cgroup.procs"))


def test_auto_method_detection(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpu memory\n")
    assert [m.method for m in build_mechanisms("auto", v2, 10)] == ["cgroup2", "sigstop"]
    hybrid = tmp_path / "hybrid"
    (hybrid / "unified").mkdir(parents=True)
    (hybrid / "unified" / "cgroup.controllers").write_text("hugetlb\n")
    (hybrid / "cpu").mkdir()
    (hybrid / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert [m.method for m in build_mechanisms("auto", hybrid, 10)] == ["cgroup1", "sigstop"]
    empty = tmp_path / "none"
    empty.mkdir()
    assert [m.method for m in build_mechanisms("auto", empty, 10)] == ["sigstop"]
    with pytest.raises(ValueError, match="cgroup v2"):
        build_mechanisms("cgroup2", hybrid, 10)


def test_sigstop_freezes_a_real_burner_and_sigcont_releases_it(burner):
    mech = SigStop()
    rec = mech.plan(info(burner.pid))
    mech.apply(rec)
    assert wait_for(lambda: is_stopped(burner.pid))
    assert stays_frozen(burner.pid)
    assert mech.release(rec)
    assert runs_again(burner.pid)


def test_sigstop_never_signals_a_reused_pid(burner):
    fake = Throttled(burner.pid, info(burner.pid).create_time + 3.0, "old", "sigstop", 0.0)
    with pytest.raises(ProcessGone):
        SigStop().apply(fake)
    assert not is_stopped(burner.pid)


REAL_V1 = find_v1_cpu_root(Path("/sys/fs/cgroup"))


@pytest.mark.skipif(
    REAL_V1 is None or not os.access(REAL_V1, os.W_OK) or os.geteuid() != 0,
    reason="no writable cgroup v1 cpu controller",
)
def test_real_cgroup1_quota_lowers_cpu_of_a_burner(burner):
    group = f"minerwatch-test-{uuid.uuid4().hex[:8]}"
    mech = Cgroup1Quota(REAL_V1, 10.0, group=group)
    try:
        rec = mech.plan(info(burner.pid))
    except OSError as exc:
        pytest.skip(f"cannot use the cpu controller: {exc}")
    child = Path(rec.cgroup_dir)
    try:
        try:
            mech.apply(rec)
        except OSError as exc:
            pytest.skip(f"cannot use the cpu controller: {exc}")
        assert str(burner.pid) in (child / "cgroup.procs").read_text().split()
        before = cpu_s(burner.pid)
        time.sleep(1.0)
        share = cpu_s(burner.pid) - before
        stats = dict(line.split() for line in (child / "cpu.stat").read_text().splitlines())
        assert int(stats["nr_throttled"]) > 0  # the kernel itself says it enforced the quota
        assert share < 0.35, f"burner used {share:.2f} s of CPU in 1 s under a 10% quota"
    finally:
        mech.release(rec)
    assert not child.exists() and not child.parent.exists()
    assert parse_proc_cgroup(Path(f"/proc/{burner.pid}/cgroup").read_text())["cpu"] == "/"
    assert runs_again(burner.pid)


# --------------------------------------------------------------------------- controller


def test_controller_throttles_real_burner_journals_and_audits(tmp_path, burner):
    cfg = cfg_for(tmp_path, method="sigstop")
    t = Throttle(cfg, proc_reader=only(burner.pid))
    actions = t.update(99.0, alert_active=True)
    assert [(a.action, a.pid, a.method) for a in actions] == [("throttle", burner.pid, "sigstop")]
    assert wait_for(lambda: is_stopped(burner.pid)) and stays_frozen(burner.pid)
    journal = json.loads((cfg.state_dir / JOURNAL).read_text())
    assert [r["pid"] for r in journal["throttled"]] == [burner.pid]
    for name in (JOURNAL, AUDIT):
        assert stat.S_IMODE((cfg.state_dir / name).stat().st_mode) == 0o600
    line = audit_lines(cfg)[0]
    assert set(line) == {"ts", "action", "pid", "name", "method", "reason", "host_cpu"}
    assert line["action"] == "throttle" and "import" not in json.dumps(line)
    assert [r.pid for r in t.throttled()] == [burner.pid]
    assert [a.action for a in t.release_all("test")] == ["release"]
    assert runs_again(burner.pid)
    assert t.throttled() == [] and t.actions_total["throttle"] == 1
    assert t.actions_total["release"] == 1


def test_hold_time_and_hysteresis(tmp_path, sleepers):
    pid = sleepers[0].pid
    clock = FakeClock()
    cfg = cfg_for(tmp_path, method="sigstop", hold_s=30, release_hold_s=60)
    t = Throttle(cfg, clock=clock, proc_reader=lambda: [info(pid)])

    def step(dt, cpu):
        clock.t += dt
        return [a.action for a in t.update(cpu, alert_active=False)]

    assert step(0, 95) == []
    assert step(20, 95) == []
    assert step(5, 50) == []  # a dip restarts the hold
    assert step(1, 95) == [] and step(29, 95) == []
    assert step(1, 95) == ["throttle"] and wait_for(lambda: is_stopped(pid))
    assert step(1, 80) == []  # between the thresholds: stays throttled
    assert step(1, 60) == [] and step(59, 60) == []
    assert step(0, 85) == []  # not low enough: restarts the release hold
    assert step(1, 60) == [] and step(59, 60) == [] and is_stopped(pid)
    assert step(1, 60) == ["release"]
    assert wait_for(lambda: not is_stopped(pid))


def test_only_when_alert_and_max_targets(tmp_path, sleepers):
    pids = [s.pid for s in sleepers]
    cfg = cfg_for(tmp_path, method="sigstop", only_when_alert=True, max_targets=2)
    t = Throttle(cfg, proc_reader=lambda: [info(q, cpu=10.0 + i) for i, q in enumerate(pids)])
    assert t.update(100.0, alert_active=False) == []
    taken = [a.pid for a in t.update(100.0, alert_active=True)]
    assert taken == [pids[2], pids[1]]  # the busiest two
    assert t.update(100.0, alert_active=True) == []  # already at max_targets
    assert not is_stopped(pids[0])
    t.release_all()
    assert wait_for(lambda: not any(is_stopped(q) for q in pids))


def test_dry_run_changes_nothing(tmp_path, burner):
    root = tmp_path / "cpu"
    root.mkdir()
    (root / "cpu.cfs_quota_us").write_text("-1\n")
    cfg = cfg_for(tmp_path, dry_run=True, cgroup_root=root)
    t = Throttle(cfg, proc_reader=only(burner.pid))
    actions = t.update(100.0, alert_active=True)
    assert [(a.action, a.method) for a in actions] == [("dry_run", "cgroup1")]
    assert runs_again(burner.pid) and t.throttled() == []
    assert sorted(p.name for p in root.iterdir()) == ["cpu.cfs_quota_us"]
    assert [line["action"] for line in audit_lines(cfg)] == ["dry_run"]


def test_disabled_throttle_does_nothing(tmp_path, burner):
    cfg = cfg_for(tmp_path, enabled=False, method="sigstop")
    t = Throttle(cfg, proc_reader=only(burner.pid))
    assert t.update(100.0, True) == [] and runs_again(burner.pid)


def test_restart_recovers_journal_and_refuses_reused_pid(tmp_path, burner, sleepers):
    cfg = cfg_for(tmp_path, method="sigstop")
    first = Throttle(cfg, proc_reader=only(burner.pid))
    first.update(100.0, True)
    assert wait_for(lambda: is_stopped(burner.pid))
    # A record whose pid now belongs to a different process: it must not be continued.
    victim = sleepers[0].pid
    os.kill(victim, signal.SIGSTOP)
    assert wait_for(lambda: is_stopped(victim))
    with Journal(cfg.state_dir).locked() as state:
        state.throttled.append(Throttled(victim, info(victim).create_time - 7, "x", "sigstop", 0))
    del first  # the old agent is gone without releasing
    second = Throttle(cfg, proc_reader=lambda: [])
    assert sorted((a.action, a.pid) for a in second.recovered) == sorted(
        [("release", burner.pid), ("skip", victim)]
    )
    assert runs_again(burner.pid)
    assert stays_frozen(victim)  # not ours: left exactly as it was
    assert second.throttled() == []


def test_context_manager_releases_on_exit(tmp_path, burner):
    cfg = cfg_for(tmp_path, method="sigstop")
    with Throttle(cfg, proc_reader=only(burner.pid)) as t:
        t.update(100.0, True)
        assert wait_for(lambda: is_stopped(burner.pid))
    assert runs_again(burner.pid)


def test_exited_process_is_dropped_from_journal(tmp_path, sleepers):
    proc = sleepers[0]
    cfg = cfg_for(tmp_path, method="sigstop")
    t = Throttle(cfg, proc_reader=lambda: [info(proc.pid)] if proc.poll() is None else [])
    assert [a.action for a in t.update(100.0, True)] == ["throttle"]
    cleanup(proc)
    assert [(a.action, a.reason) for a in t.update(50.0, True)] == [
        ("skip", "process exited; dropped")
    ]
    assert t.throttled() == []


# --------------------------------------------------------------------------- CLI and config


def parse(argv):
    parser = argparse.ArgumentParser(prog="minerwatch")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_release_pid_exempts_it_from_the_running_agent(tmp_path, burner, capsys):
    cfg = cfg_for(tmp_path, method="sigstop")
    t = Throttle(cfg, proc_reader=only(burner.pid))
    t.update(100.0, True)
    assert wait_for(lambda: is_stopped(burner.pid))
    assert run(parse(["throttle", "status", "--state-dir", str(cfg.state_dir)])) == 0
    assert str(burner.pid) in capsys.readouterr().out
    args = parse(["throttle", "release", str(burner.pid), "--state-dir", str(cfg.state_dir)])
    assert run(args) == 0 and "released 1 process" in capsys.readouterr().out
    assert runs_again(burner.pid)
    assert t.update(100.0, True) == []  # operator said no: not taken again
    assert t.throttled() == []
    assert release_from_journal(cfg.state_dir, 12345) == 0


def test_config_from_mapping_and_flags(tmp_path):
    cfg = ThrottleConfig.from_mapping(
        {"enabled": True, "hold_s": "2m", "allow_names": ["nginx"], "cpu_percent": 85}
    )
    assert (cfg.hold_s, cfg.allow_names, cfg.cpu_percent) == (120.0, ("nginx",), 85.0)
    with pytest.raises(InputError, match="cfg.toml:7: expected a throttle option"):
        ThrottleConfig.from_mapping({"hodl_s": 3}, "cfg.toml", {"hodl_s": 7})
    with pytest.raises(InputError, match="list of strings"):
        ThrottleConfig.from_mapping({"allow_users": "root"})
    with pytest.raises(InputError, match="method"):
        ThrottleConfig.from_mapping({"method": "freeze"})
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(["--throttle", "--throttle-cpu", "60", "--throttle-hold", "10s"])
    cfg = config_from_args(args, ThrottleConfig())
    assert (cfg.enabled, cfg.cpu_percent, cfg.hold_s, cfg.release_cpu_percent) == (
        True,
        60.0,
        10.0,
        60.0,
    )
    assert config_from_args(parser.parse_args([]), ThrottleConfig()) == ThrottleConfig()
    assert parse_duration("1.5s") == 1.5
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_no_stray_state_in_tmp(tmp_path):
    """The journal's temp files never linger after a save."""
    j = Journal(tmp_path)
    for i in range(3):
        with j.locked() as state:
            state.exempt.append((i, 1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == [JOURNAL, JOURNAL + ".lock"]
    shutil.rmtree(tmp_path)


def test_metrics_count_actions_and_pass_promtool(tmp_path, burner):
    from prometheus_client import CollectorRegistry, generate_latest

    from minerwatch.service.throttle import ThrottleCollector

    cfg = cfg_for(tmp_path, method="sigstop")
    t = Throttle(cfg, proc_reader=only(burner.pid))
    registry = CollectorRegistry()
    registry.register(ThrottleCollector(t))
    t.update(100.0, True)
    assert registry.get_sample_value("minerwatch_throttled_processes") == 1
    assert (
        registry.get_sample_value("minerwatch_throttle_actions_total", {"action": "throttle"}) == 1
    )
    t.release_all()
    assert registry.get_sample_value("minerwatch_throttled_processes") == 0
    assert (
        registry.get_sample_value("minerwatch_throttle_actions_total", {"action": "release"}) == 1
    )
    text = generate_latest(registry)
    assert b"cmdline" not in text and b"import" not in text
    if shutil.which("promtool"):
        lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True)
        assert lint.returncode == 0, lint.stdout + lint.stderr


def test_release_inside_a_held_journal_does_not_deadlock(tmp_path, burner):
    """E.g. a signal handler that releases while the agent is mid-update."""
    import threading

    cfg = cfg_for(tmp_path, method="sigstop")
    t = Throttle(cfg, proc_reader=only(burner.pid))
    t.update(100.0, True)
    done = []

    def nested():
        with t.journal.locked():
            done.extend(t.release_all("nested"))

    worker = threading.Thread(target=nested, daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert [a.action for a in done] == ["release"]
    assert runs_again(burner.pid) and t.throttled() == []
