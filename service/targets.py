"""Which processes the throttle may touch: the protection rules and the choice of targets.

Pure functions over :class:`~minerwatch.features.proctable.ProcessRecord` rows, so the rules
can be checked on any invented table; reading the live table is the process table's job.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Sequence
from fnmatch import fnmatchcase
from typing import Protocol

from minerwatch.features.proctable import ProcessRecord

KTHREADD_PID = 2
#: Names that are the host's lifeline: the init system and remote access.
CORE_NAMES = frozenset({"init", "systemd", "sshd", "sshd-session", "sshd-auth"})
#: Where the system's own programs live: a core name protects only a binary there, so a
#: miner that calls itself ``sshd`` from ``/tmp/.x/`` is not taken for the host's lifeline.
SYSTEM_PREFIXES = ("/usr/sbin/", "/usr/bin/", "/sbin/", "/bin/", "/usr/lib/", "/lib/",
                   "/usr/libexec/")  # fmt: skip
UNIT_SUFFIXES = (".service", ".scope", ".socket", ".mount", ".swap", ".slice", ".target")


class AllowLists(Protocol):
    """The part of the throttle config that protection reads."""

    @property
    def allow_names(self) -> tuple[str, ...]: ...
    @property
    def allow_users(self) -> tuple[str, ...]: ...
    @property
    def allow_units(self) -> tuple[str, ...]: ...


class SelectionConfig(AllowLists, Protocol):
    """The part of the throttle config that target selection reads."""

    @property
    def max_targets(self) -> int: ...
    @property
    def min_proc_cpu_percent(self) -> float: ...


def cgroup_units(path: str) -> tuple[str, ...]:
    """Systemd unit names along a cgroup path, outermost first.

    >>> cgroup_units("/system.slice/nginx.service/worker")
    ('system.slice', 'nginx.service')
    """
    return tuple(p for p in path.split("/") if p.endswith(UNIT_SUFFIXES))


def unit_of_cgroup(path: str) -> str | None:
    """The unit that owns a cgroup: the innermost non-slice unit, else the innermost slice.

    >>> unit_of_cgroup("/user.slice/user-1000.slice/session-3.scope")
    'session-3.scope'
    """
    units = cgroup_units(path)
    leaves = [u for u in units if not u.endswith(".slice")]
    if leaves:
        return leaves[-1]
    return units[-1] if units else None


def _matches(value: str, patterns: Iterable[str]) -> str | None:
    for pattern in patterns:
        if value and fnmatchcase(value, pattern):
            return pattern
    return None


def protected_reason(
    proc: ProcessRecord, cfg: AllowLists, agent_pids: Collection[int]
) -> str | None:
    """Why ``proc`` must never be throttled, or None if it may be.

    ``agent_pids`` should already contain the agent's ancestors and descendants (see
    ``agent_family``).
    Allow-list entries are shell globs, matched against the name, the executable's base
    name, the user, and every systemd unit on the cgroup path.

    A core name (``sshd``, ``systemd-*``) protects only a binary in the system's folders
    that is still on disk: a disguised miner is not the host's lifeline.

    >>> p = ProcessRecord(1, 0, "init", "/sbin/init", "root", 0.0, 50.0)
    >>> protected_reason(p, _NoAllow(), set())
    'pid 1'
    >>> fake = ProcessRecord(4242, 1, "sshd", "/tmp/.x/sshd", "nobody", 0.0, 99.0)
    >>> protected_reason(fake, _NoAllow(), set()) is None
    True
    """
    if proc.pid == 1:
        return "pid 1"
    if proc.pid == KTHREADD_PID or proc.ppid == KTHREADD_PID or proc.is_kernel_thread:
        return "kernel thread"
    if not proc.exe:
        return "kernel thread (no executable)"
    if proc.pid in agent_pids:
        return "the agent, its ancestor or its descendant"
    exe_name = os.path.basename(proc.exe)
    system = proc.exe.startswith(SYSTEM_PREFIXES) and not proc.exe_deleted
    for name in (proc.name, exe_name) if system else ():
        if name in CORE_NAMES or name.startswith("systemd-"):
            return f"core process {name!r}"
    for name in (proc.name, exe_name):
        if (pattern := _matches(name, cfg.allow_names)) is not None:
            return f"allow-listed name {pattern!r}"
    if (pattern := _matches(proc.username, cfg.allow_users)) is not None:
        return f"allow-listed user {pattern!r}"
    for unit in cgroup_units(proc.cgroup):
        if (pattern := _matches(unit, cfg.allow_units)) is not None:
            return f"allow-listed unit {pattern!r}"
    return None


def with_ancestors(pids: Iterable[int], procs: Sequence[ProcessRecord]) -> set[int]:
    """``pids`` plus every ancestor found in the table (stopping at loops)."""
    parent = {p.pid: p.ppid for p in procs}
    out: set[int] = set()
    for pid in pids:
        while pid not in out and pid > 0:
            out.add(pid)
            pid = parent.get(pid, 0)
    return out


def with_descendants(pids: Iterable[int], procs: Sequence[ProcessRecord]) -> set[int]:
    """``pids`` plus every process below them in the table: children, theirs, and so on.

    >>> table = [ProcessRecord(pid, ppid, "x", "/x", "u", 0.0, 0.0) for pid, ppid in
    ...          [(10, 1), (11, 10), (12, 11), (13, 1)]]
    >>> sorted(with_descendants({10}, table))
    [10, 11, 12]
    """
    children: dict[int, list[int]] = {}
    for p in procs:
        if p.pid != p.ppid:
            children.setdefault(p.ppid, []).append(p.pid)
    out: set[int] = set()
    todo = [pid for pid in pids if pid > 0]
    while todo:
        pid = todo.pop()
        if pid not in out:  # a loop in a torn table cannot run forever
            out.add(pid)
            todo.extend(children.get(pid, ()))
    return out


def agent_family(agent_pids: Iterable[int], procs: Sequence[ProcessRecord]) -> set[int]:
    """What the agent stands on and what it started: its ancestors (whose pause would stop
    it) and its descendants (its training child and anything that one starts), from the table
    read at selection time. The ancestors' other children are not included.

    >>> table = [ProcessRecord(pid, ppid, "x", "/x", "u", 0.0, 0.0) for pid, ppid in
    ...          [(10, 1), (20, 10), (21, 20), (22, 21), (30, 10)]]
    >>> sorted(agent_family({20}, table))
    [1, 10, 20, 21, 22]
    """
    pids = set(agent_pids)
    return with_ancestors(pids, procs) | with_descendants(pids, procs)


def select_targets(
    procs: Sequence[ProcessRecord],
    cfg: SelectionConfig,
    agent_pids: Collection[int],
    *,
    exclude: Collection[int] = (),
    limit: int | None = None,
) -> list[ProcessRecord]:
    """The busiest unprotected processes, at most ``limit`` (default ``cfg.max_targets``).

    ``agent_pids`` is the agent itself; its ancestors and descendants are found in ``procs``
    (see ``agent_family``) and are never chosen.

    Processes below ``cfg.min_proc_cpu_percent`` are left alone: throttling them would not
    bring host CPU down. Ties are broken by pid so the choice is deterministic.
    """
    n = cfg.max_targets if limit is None else limit
    if n <= 0:
        return []
    guarded = agent_family(agent_pids, procs)
    candidates = [
        p
        for p in procs
        if p.pid not in exclude
        and p.cpu_percent >= cfg.min_proc_cpu_percent
        and protected_reason(p, cfg, guarded) is None
    ]
    candidates.sort(key=lambda p: (-p.cpu_percent, p.pid))
    return candidates[:n]


class _NoAllow:
    """Empty allow-lists, for the doctests."""

    allow_names: tuple[str, ...] = ()
    allow_users: tuple[str, ...] = ()
    allow_units: tuple[str, ...] = ()
