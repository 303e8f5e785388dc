"""Which processes the throttle may touch: protection rules and target choice, on invented
tables (every rule by name, and a property over random tables)."""

from __future__ import annotations

import doctest
import os
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minerwatch.service.targets
from minerwatch.features.proctable import ProcessRecord
from minerwatch.service.targets import (
    cgroup_units,
    protected_reason,
    select_targets,
    unit_of_cgroup,
    with_ancestors,
)


def test_docstring_examples_hold():
    assert doctest.testmod(minerwatch.service.targets).failed == 0


class Allow:
    def __init__(self, names=(), users=(), units=(), max_targets=3, min_cpu=0.0):
        self.allow_names, self.allow_users, self.allow_units = names, users, units
        self.max_targets, self.min_proc_cpu_percent = max_targets, min_cpu


def p(pid, name="xmrig", ppid=100, exe=None, user="www", cpu=90.0, cgroup="/", kthread=False):
    exe = f"/usr/bin/{name}" if exe is None else exe
    return ProcessRecord(pid, ppid, name, exe, user, 1.0, cpu, cgroup, kthread)


@pytest.mark.parametrize(
    "proc, allow, reason",
    [
        (p(1, "anything"), Allow(), "pid 1"),
        (p(2, "kthreadd"), Allow(), "kernel thread"),
        (p(50, "kworker/0:1", ppid=2), Allow(), "kernel thread"),
        (p(50, "odd", ppid=7, kthread=True), Allow(), "kernel thread"),
        (p(50, "noexe", exe=""), Allow(), "no executable"),
        (p(50, "sshd"), Allow(), "core process 'sshd'"),
        (p(50, "sshd", exe="/usr/sbin/sshd"), Allow(names=("x",)), "core process 'sshd'"),
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
    miner = replace(p(4242, "kdevtmpfsi", exe="/tmp/.x/kdevtmpfsi"), exe_deleted=True)
    assert protected_reason(miner, Allow(names=("nginx",), users=("ci",)), {99}) is None


@pytest.mark.parametrize(
    "exe, deleted",
    [("/tmp/.x/sshd", False), ("/dev/shm/systemd-journald", False), ("/usr/sbin/sshd", True)],
)
def test_a_core_name_does_not_protect_a_disguised_binary(exe, deleted):
    """A miner calling itself ``sshd`` or ``systemd-*`` from a temp folder (or running a
    binary deleted from disk) is not the host's lifeline: the name alone protected it."""
    name = os.path.basename(exe)
    miner = replace(p(4242, name, exe=exe), exe_deleted=deleted)
    assert protected_reason(miner, Allow(), set()) is None
    assert [t.pid for t in select_targets([miner], Allow(), set())] == [4242]


def test_agent_and_its_ancestors_are_protected():
    table = [p(10, "bash", ppid=1), p(20, "agent", ppid=10), p(30, "miner", ppid=1)]
    picked = select_targets(table, Allow(), {20})
    assert [t.pid for t in picked] == [30]


def test_unit_parsing():
    assert cgroup_units("/system.slice/nginx.service/sub") == ("system.slice", "nginx.service")
    assert unit_of_cgroup("/system.slice/nginx.service") == "nginx.service"
    assert unit_of_cgroup("/user.slice/user-1000.slice") == "user-1000.slice"
    assert unit_of_cgroup("/") is None


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
            ProcessRecord(
                pid=pid,
                ppid=draw(st.sampled_from([0, 1, 2, *pids])),
                name=draw(names),
                exe=draw(st.sampled_from(["", "/usr/bin/x", "/tmp/y"])),
                exe_deleted=draw(st.booleans()),
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
        core = c.name in ("sshd", "systemd", "init") or c.name.startswith("systemd-")
        # a core name protects the system's own binary only, never a disguise in /tmp
        assert not core or c.exe == "/tmp/y" or c.exe_deleted
        assert c.name not in allow.allow_names and c.username not in allow.allow_users
        assert not set(cgroup_units(c.cgroup)) & set(allow.allow_units)
        assert protected_reason(c, allow, guarded) is None
    assert len(chosen) <= allow.max_targets
    assert [c.cpu_percent for c in chosen] == sorted((c.cpu_percent for c in chosen), reverse=True)


def test_with_ancestors_stops_at_loops_and_unknown_parents():
    table = [p(10, ppid=11), p(11, ppid=10), p(20, ppid=99)]
    assert with_ancestors([10], table) == {10, 11}
    assert with_ancestors([20], table) == {20, 99}
