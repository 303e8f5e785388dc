"""Auto-throttle: mechanisms on real processes and cgroup trees, controller (the protection
rules are in test_targets.py, the process table in test_proctable.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from minerwatch.features.errors import InputError
from minerwatch.features.proctable import ProcessRecord, ProcessTable, parse_proc_cgroup
from minerwatch.service import config
from minerwatch.service.cgroups import (
    Cgroup1Quota,
    Cgroup2Quota,
    ProcessGone,
    SigStop,
    Throttled,
    build_mechanisms,
    find_v1_cpu_root,
)
from minerwatch.service.cli import build_parser
from minerwatch.service.throttle import (
    AUDIT,
    JOURNAL,
    Exempt,
    Journal,
    Throttle,
    ThrottleConfig,
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
    """A record for a real process (real pid and start time), with an invented CPU figure."""
    p = psutil.Process(pid)
    return ProcessRecord(pid, p.ppid(), p.name(), p.exe(), p.username(), p.create_time(), cpu)


def only(*pids):
    """A process reader that sees only our children: never touch other processes here."""
    table = ProcessTable(lifetime_cpu_for_unseen=True)  # as the throttle's own reader

    def read():
        return [p for p in table.read() if p.pid in pids]

    return read


#: The throttle's 'agent': a pid that is no ancestor of the processes these tests start
#: (the test process is their parent, and an agent's descendants are never throttled).
NOT_OUR_CHILDREN: set[int] = set()


def cfg_for(tmp_path, **kw):
    base = dict(
        enabled=True,
        hold=0.0,
        release_hold=0.0,
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
    stale = replace(stale, create_time=stale.create_time - 5)
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
    t = Throttle(cfg, agent_pids=NOT_OUR_CHILDREN, proc_reader=only(burner.pid))
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
    cfg = cfg_for(tmp_path, method="sigstop", hold=30, release_hold=60)
    t = Throttle(cfg, agent_pids=NOT_OUR_CHILDREN, clock=clock, proc_reader=lambda: [info(pid)])

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
    t = Throttle(
        cfg,
        agent_pids=NOT_OUR_CHILDREN,
        proc_reader=lambda: [info(q, cpu=10.0 + i) for i, q in enumerate(pids)],
    )
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
    t = Throttle(cfg, agent_pids=NOT_OUR_CHILDREN, proc_reader=only(burner.pid))
    actions = t.update(100.0, alert_active=True)
    assert [(a.action, a.method) for a in actions] == [("dry_run", "cgroup1")]
    assert runs_again(burner.pid) and t.throttled() == []
    assert sorted(p.name for p in root.iterdir()) == ["cpu.cfs_quota_us"]
    assert [line["action"] for line in audit_lines(cfg)] == ["dry_run"]


def test_disabled_throttle_does_nothing(tmp_path, burner):
    cfg = cfg_for(tmp_path, enabled=False, method="sigstop")
    t = Throttle(cfg, agent_pids=NOT_OUR_CHILDREN, proc_reader=only(burner.pid))
    assert t.update(100.0, True) == [] and runs_again(burner.pid)


def test_restart_recovers_journal_and_refuses_reused_pid(tmp_path, burner, sleepers):
    cfg = cfg_for(tmp_path, method="sigstop")
    first = Throttle(cfg, agent_pids=NOT_OUR_CHILDREN, proc_reader=only(burner.pid))
    first.update(100.0, True)
    assert wait_for(lambda: is_stopped(burner.pid))
    # A record whose pid now belongs to a different process: it must not be continued.
    victim = sleepers[0].pid
    os.kill(victim, signal.SIGSTOP)
    assert wait_for(lambda: is_stopped(victim))
    with Journal(cfg.state_dir).locked() as state:
        state.throttled.append(Throttled(victim, info(victim).create_time - 7, "x", "sigstop", 0))
    del first  # the old agent is gone without releasing
    second = Throttle(cfg, agent_pids=NOT_OUR_CHILDREN, proc_reader=lambda: [])
    assert sorted((a.action, a.pid) for a in second.recovered) == sorted(
        [("release", burner.pid), ("skip", victim)]
    )
    assert runs_again(burner.pid)
    assert stays_frozen(victim)  # not ours: left exactly as it was
    assert second.throttled() == []


def test_context_manager_releases_on_exit(tmp_path, burner):
    cfg = cfg_for(tmp_path, method="sigstop")
    with Throttle(cfg, agent_pids=NOT_OUR_CHILDREN, proc_reader=only(burner.pid)) as t:
        t.update(100.0, True)
        assert wait_for(lambda: is_stopped(burner.pid))
    assert runs_again(burner.pid)


def test_exited_process_is_dropped_from_journal(tmp_path, sleepers):
    proc = sleepers[0]
    cfg = cfg_for(tmp_path, method="sigstop")
    t = Throttle(
        cfg,
        agent_pids=NOT_OUR_CHILDREN,
        proc_reader=lambda: [info(proc.pid)] if proc.poll() is None else [],
    )
    assert [a.action for a in t.update(100.0, True)] == ["throttle"]
    cleanup(proc)
    assert [(a.action, a.reason) for a in t.update(50.0, True)] == [
        ("skip", "process exited; dropped")
    ]
    assert t.throttled() == []


# --------------------------------------------------------------------------- CLI and config


def parse(argv):
    return build_parser().parse_args(argv)


def test_cli_release_pid_exempts_it_from_the_running_agent(tmp_path, burner, capsys):
    cfg = cfg_for(tmp_path, method="sigstop")
    t = Throttle(cfg, agent_pids=NOT_OUR_CHILDREN, proc_reader=only(burner.pid))
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
    with pytest.raises(InputError, match="PID of a throttled process"):
        run(parse(["throttle", "release", "12345", "--state-dir", str(cfg.state_dir)]))


def test_the_config_section_is_the_controllers_config():
    """One class: what ``[throttle]`` and the ``serve`` flags build is what Throttle runs with."""
    assert ThrottleConfig is config.ThrottleConfig
    args = parse(["serve", "--throttle", "--throttle-cpu", "60", "--throttle-hold", "10s"])
    cfg = config.config_from_args(args).throttle
    assert (cfg.enabled, cfg.cpu_percent, cfg.hold, cfg.release_cpu_percent) == (
        True,
        60.0,
        10.0,
        40.0,  # follows the trigger: 20 points below it
    )
    assert config.config_from_args(parse(["serve"])).throttle.enabled is False


def test_no_stray_state_in_tmp(tmp_path):
    """The journal's temp files never linger after a save."""
    j = Journal(tmp_path)
    for i in range(3):
        with j.locked() as state:
            state.exempt.append(Exempt(i, 1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == [JOURNAL, JOURNAL + ".lock"]
    shutil.rmtree(tmp_path)


def test_release_inside_a_held_journal_does_not_deadlock(tmp_path, burner):
    """E.g. a signal handler that releases while the agent is mid-update."""
    import threading

    cfg = cfg_for(tmp_path, method="sigstop")
    t = Throttle(cfg, agent_pids=NOT_OUR_CHILDREN, proc_reader=only(burner.pid))
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
