"""Which processes the throttle may touch: the live process table and the protection rules.

Reading ``/proc`` is kept apart from deciding: ``protected_reason`` and ``select_targets`` are
pure functions over ``ProcInfo`` records, so the rules can be checked on any invented table.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Protocol

#: ``PF_KTHREAD`` in the ``flags`` field of ``/proc/<pid>/stat``.
PF_KTHREAD = 0x00200000
KTHREADD_PID = 2
#: Names that are the host's lifeline: the init system and remote access.
CORE_NAMES = frozenset({"init", "systemd", "sshd", "sshd-session", "sshd-auth"})
UNIT_SUFFIXES = (".service", ".scope", ".socket", ".mount", ".swap", ".slice", ".target")


@dataclass(frozen=True)
class ProcInfo:
    """One row of the process table, as much as the throttle needs and no command line."""

    pid: int
    ppid: int
    name: str
    exe: str
    username: str
    create_time: float
    cpu_percent: float
    cgroup: str = "/"
    is_kernel_thread: bool = False


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


def protected_reason(proc: ProcInfo, cfg: AllowLists, agent_pids: Collection[int]) -> str | None:
    """Why ``proc`` must never be throttled, or None if it may be.

    ``agent_pids`` should already contain the agent's ancestors (see ``with_ancestors``).
    Allow-list entries are shell globs, matched against the name, the executable's base
    name, the user, and every systemd unit on the cgroup path.

    >>> p = ProcInfo(1, 0, "init", "/sbin/init", "root", 0.0, 50.0)
    >>> protected_reason(p, _NoAllow(), set())
    'pid 1'
    """
    if proc.pid == 1:
        return "pid 1"
    if proc.pid == KTHREADD_PID or proc.ppid == KTHREADD_PID or proc.is_kernel_thread:
        return "kernel thread"
    if not proc.exe:
        return "kernel thread (no executable)"
    if proc.pid in agent_pids:
        return "the agent or its ancestor"
    exe_name = os.path.basename(proc.exe.removesuffix(" (deleted)"))
    for name in (proc.name, exe_name):
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


def with_ancestors(pids: Iterable[int], procs: Sequence[ProcInfo]) -> set[int]:
    """``pids`` plus every ancestor found in the table (stopping at loops)."""
    parent = {p.pid: p.ppid for p in procs}
    out: set[int] = set()
    for pid in pids:
        while pid not in out and pid > 0:
            out.add(pid)
            pid = parent.get(pid, 0)
    return out


def select_targets(
    procs: Sequence[ProcInfo],
    cfg: SelectionConfig,
    agent_pids: Collection[int],
    *,
    exclude: Collection[int] = (),
    limit: int | None = None,
) -> list[ProcInfo]:
    """The busiest unprotected processes, at most ``limit`` (default ``cfg.max_targets``).

    Processes below ``cfg.min_proc_cpu_percent`` are left alone: throttling them would not
    bring host CPU down. Ties are broken by pid so the choice is deterministic.
    """
    n = cfg.max_targets if limit is None else limit
    if n <= 0:
        return []
    guarded = with_ancestors(agent_pids, procs)
    candidates = [
        p
        for p in procs
        if p.pid not in exclude
        and p.cpu_percent >= cfg.min_proc_cpu_percent
        and protected_reason(p, cfg, guarded) is None
    ]
    candidates.sort(key=lambda p: (-p.cpu_percent, p.pid))
    return candidates[:n]


# --------------------------------------------------------------------------- reading /proc


@dataclass(frozen=True)
class StatFields:
    """The fields of ``/proc/<pid>/stat`` the throttle uses."""

    name: str
    state: str
    ppid: int
    flags: int
    cpu_ticks: int
    start_ticks: int


def parse_stat(text: str) -> StatFields:
    """Parse ``/proc/<pid>/stat``; the name may contain spaces and parentheses.

    >>> parse_stat("42 (a b) R 1 42 42 0 -1 4194304 0 0 0 0 7 3 0 0 20 0 1 0 900 0").cpu_ticks
    10
    """
    lpar, rpar = text.index("("), text.rindex(")")
    rest = text[rpar + 2 :].split()
    return StatFields(
        name=text[lpar + 1 : rpar],
        state=rest[0],
        ppid=int(rest[1]),
        flags=int(rest[6]),
        cpu_ticks=int(rest[11]) + int(rest[12]),
        start_ticks=int(rest[19]),
    )


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """Map controller name to cgroup path; the v2 hierarchy is under key ``""``.

    >>> parse_proc_cgroup("4:cpu,cpuacct:/a\\n0::/b.service\\n")["cpu"]
    '/a'
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for c in controllers.split(",") if controllers else [""]:
            out[c] = path
    return out


def systemd_cgroup(paths: dict[str, str]) -> str:
    """The cgroup path that names systemd units: the named v1 hierarchy, else v2."""
    return paths.get("name=systemd") or paths.get("") or paths.get("cpu") or "/"


def clock_ticks() -> int:
    """Kernel clock ticks per second (``USER_HZ``)."""
    return os.sysconf("SC_CLK_TCK")


def boot_time(proc_root: Path = Path("/proc")) -> float:
    """Boot time in Unix seconds from the ``btime`` line of ``/proc/stat``."""
    for line in (proc_root / "stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise ValueError(f"{proc_root / 'stat'}: no btime line")


def process_create_time(pid: int, proc_root: Path = Path("/proc")) -> float | None:
    """Start time of ``pid`` in Unix seconds (as psutil computes it), or None if it is gone."""
    try:
        stat = parse_stat((proc_root / str(pid) / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None
    return boot_time(proc_root) + stat.start_ticks / clock_ticks()


def same_process(pid: int, create_time: float, proc_root: Path = Path("/proc")) -> bool:
    """True if ``pid`` is still the process that started at ``create_time`` (pid-reuse guard)."""
    now = process_create_time(pid, proc_root)
    return now is not None and abs(now - create_time) < 0.5 / clock_ticks()


class ProcReader:
    """Reads the live process table into ``ProcInfo`` rows.

    CPU percent (of one core, like ``top``) is the rate since the previous call; a process seen
    for the first time gets its lifetime average, so the first tick already finds a miner.
    """

    def __init__(self, proc_root: Path = Path("/proc")) -> None:
        self.proc_root = proc_root
        self._prev: dict[tuple[int, int], tuple[int, float]] = {}
        self._users: dict[int, str] = {}

    def _username(self, uid: int) -> str:
        if uid not in self._users:
            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._users[uid] = str(uid)
        return self._users[uid]

    def _uptime(self) -> float:
        return float((self.proc_root / "uptime").read_text().split()[0])

    def _read_one(
        self,
        pid: int,
        hz: int,
        btime: float,
        uptime: float,
        prev: dict[tuple[int, int], tuple[int, float]],
    ) -> ProcInfo | None:
        """One process, or None if it vanished while being read."""
        d = self.proc_root / str(pid)
        try:
            st = parse_stat((d / "stat").read_text())
            status = (d / "status").read_text()
            cgroups = parse_proc_cgroup((d / "cgroup").read_text())
        except (OSError, ValueError, IndexError):
            return None
        try:
            exe = os.readlink(d / "exe")
        except OSError:
            exe = ""
        uid = next((int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("Uid:")), -1)
        key = (pid, st.start_ticks)
        last = self._prev.get(key)
        if last is None:
            age = uptime - st.start_ticks / hz
            cpu = 100.0 * st.cpu_ticks / hz / age if age > 0 else 0.0
        else:
            dt = uptime - last[1]
            cpu = 100.0 * (st.cpu_ticks - last[0]) / hz / dt if dt > 0 else 0.0
        prev[key] = (st.cpu_ticks, uptime)
        return ProcInfo(
            pid=pid,
            ppid=st.ppid,
            name=st.name,
            exe=exe,
            username=self._username(uid) if uid >= 0 else "?",
            create_time=btime + st.start_ticks / hz,
            cpu_percent=max(cpu, 0.0),
            cgroup=systemd_cgroup(cgroups),
            is_kernel_thread=bool(st.flags & PF_KTHREAD),
        )

    def __call__(self) -> list[ProcInfo]:
        hz, btime, uptime = clock_ticks(), boot_time(self.proc_root), self._uptime()
        rows, seen = [], {}
        for entry in os.listdir(self.proc_root):
            if entry.isdigit() and (row := self._read_one(int(entry), hz, btime, uptime, seen)):
                rows.append(row)
        self._prev = seen
        return rows


class _NoAllow:
    """Empty allow-lists, for the doctests."""

    allow_names: tuple[str, ...] = ()
    allow_users: tuple[str, ...] = ()
    allow_units: tuple[str, ...] = ()
