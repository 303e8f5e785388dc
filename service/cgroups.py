"""How a process is throttled: a cgroup CPU quota (v2 or v1) or SIGSTOP, behind one interface.

Every mechanism splits its work into ``plan`` (reads, changes nothing), ``apply`` and
``release``, so the controller can journal a record *before* touching the process: whatever
is interrupted, the journal knows enough to undo it. Every signal and every cgroup move first
checks that the pid still belongs to the process that started at the recorded time.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from minerwatch.features.proctable import (
    ProcessRecord,
    boot_id,
    parse_proc_cgroup,
    process_start_ticks,
    same_process,
)

log = logging.getLogger(__name__)

GROUP = "minerwatch-throttle"
PERIOD_US = 100_000
#: The kernel refuses CFS quotas below 1 ms.
MIN_QUOTA_US = 1_000


class ProcessGone(Exception):
    """The pid no longer belongs to the recorded process (it exited, or the pid was reused)."""


@dataclass(frozen=True)
class Throttled:
    """One throttled process as the journal keeps it: enough to undo without any config."""

    pid: int
    create_time: float
    name: str
    method: str
    since: float
    cgroup_dir: str | None = None
    original_dir: str | None = None
    #: The start in clock ticks since boot, and the boot: who the process is even after the
    #: wall clock was set (which moves every create time). None in older journals.
    start_ticks: int | None = None
    boot_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Throttled:
        return cls(
            pid=int(d["pid"]),
            create_time=float(d["create_time"]),
            name=str(d.get("name", "")),
            method=str(d["method"]),
            since=float(d.get("since", 0.0)),
            cgroup_dir=d.get("cgroup_dir"),
            original_dir=d.get("original_dir"),
            start_ticks=d.get("start_ticks"),
            boot_id=d.get("boot_id"),
        )


def identify(proc: ProcessRecord, proc_root: Path = Path("/proc")) -> dict[str, Any]:
    """``start_ticks`` and ``boot_id`` of ``proc`` for its record (empty when it is gone).
    The table's own ticks when it read them: its create times keep the boot time it read
    first, so after a clock step they no longer match one computed now."""
    ticks = proc.start_ticks
    if ticks is None:
        ticks = process_start_ticks(proc.pid, proc_root)
        if ticks is None or not same_process(proc.pid, proc.create_time, proc_root):
            return {}
    return {"start_ticks": ticks, "boot_id": boot_id(proc_root)}


def is_same(rec: Throttled, proc_root: Path = Path("/proc")) -> bool:
    """True if ``rec.pid`` is still the recorded process (see :func:`still_running`)."""
    return still_running(rec.pid, rec.create_time, rec.start_ticks, rec.boot_id, proc_root)


def still_running(
    pid: int,
    create_time: float,
    start_ticks: int | None,
    boot: str | None,
    proc_root: Path = Path("/proc"),
) -> bool:
    """True if ``pid`` is still the process a journal recorded. By its start in ticks since
    boot when the record has it (in this boot): a create time compares the start against
    the wall clock's idea of the boot time, which a clock step (``date -s``, NTP) moves, and
    a paused (exempted, isolated) process would then be taken for gone. Records without
    ticks (older journals) are compared by create time."""
    if start_ticks is not None and boot:
        now = boot_id(proc_root)
        if now == boot:
            return process_start_ticks(pid, proc_root) == start_ticks
        if now is not None:
            return False  # another boot: not one process of the last one is left
    return same_process(pid, create_time, proc_root)


class Mechanism(Protocol):
    """A way to throttle one process."""

    method: str

    def plan(self, proc: ProcessRecord) -> Throttled:
        """The record ``apply`` will act on; reads only."""
        ...

    def apply(self, rec: Throttled) -> None:
        """Throttle; raises ``ProcessGone`` or ``OSError``."""
        ...

    def release(self, rec: Throttled) -> bool:
        """Undo; False if the process was already gone."""
        ...


# --------------------------------------------------------------------------- SIGSTOP


def signal_process(rec: Throttled, sig: int, proc_root: Path = Path("/proc")) -> None:
    """Send ``sig`` to ``rec.pid`` only if it is still the recorded process.

    A pidfd pins the process before the start-time check, so the signal cannot reach a new
    process that reused the pid in between. Falls back to ``kill`` where pidfds are missing.
    """
    pid = rec.pid
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError as exc:
        raise ProcessGone(pid) from exc
    except (AttributeError, OSError):
        fd = -1
    try:
        if not is_same(rec, proc_root):
            raise ProcessGone(pid)
        try:
            if fd >= 0:
                signal.pidfd_send_signal(fd, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError as exc:
            raise ProcessGone(pid) from exc
    finally:
        if fd >= 0:
            os.close(fd)


class SigStop:
    """Stop the process outright; works everywhere as root, and SIGCONT undoes it."""

    method = "sigstop"

    def __init__(
        self, proc_root: Path = Path("/proc"), clock: Callable[[], float] = time.time
    ) -> None:
        self.proc_root = proc_root
        self.clock = clock

    def plan(self, proc: ProcessRecord) -> Throttled:
        return Throttled(
            proc.pid,
            proc.create_time,
            proc.name,
            self.method,
            self.clock(),
            **identify(proc, self.proc_root),
        )

    def apply(self, rec: Throttled) -> None:
        signal_process(rec, signal.SIGSTOP, self.proc_root)

    def release(self, rec: Throttled) -> bool:
        try:
            signal_process(rec, signal.SIGCONT, self.proc_root)
        except ProcessGone:
            return False
        return True


# --------------------------------------------------------------------------- cgroups


def _write(path: Path, text: str) -> None:
    """One ``write()`` per value, as cgroupfs expects; no temp file (these are not files)."""
    with open(path, "w") as f:
        f.write(text)


def find_v2_root(cgroup_root: Path) -> Path | None:
    """The cgroup v2 mount with the cpu controller available, at the root or in ``unified/``."""
    for cand in (cgroup_root, cgroup_root / "unified"):
        try:
            controllers = (cand / "cgroup.controllers").read_text().split()
        except OSError:
            continue
        if "cpu" in controllers:
            return cand
    return None


def find_v1_cpu_root(cgroup_root: Path) -> Path | None:
    """The cgroup v1 cpu controller directory (the root itself, ``cpu``, or ``cpu,cpuacct``)."""
    for cand in (cgroup_root, cgroup_root / "cpu", cgroup_root / "cpu,cpuacct"):
        if (cand / "cpu.cfs_quota_us").exists():
            return cand
    return None


def _rmdir_quietly(path: Path, rmdir: Callable[[Path], None]) -> None:
    try:
        rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EBUSY):
            raise
        log.warning("could not remove cgroup %s: %s", path, exc)


class CgroupQuota:
    """Move the process into its own child cgroup with a CPU quota; release moves it back.

    Subclasses say how to find the original cgroup and how to write the quota. ``rmdir`` is a
    parameter because cgroupfs removes its control files itself, which a plain folder in a
    test does not.
    """

    method = "cgroup"
    controller_key = ""

    def __init__(
        self,
        root: Path,
        quota_percent: float = 10.0,
        *,
        period_us: int = PERIOD_US,
        group: str = GROUP,
        proc_root: Path = Path("/proc"),
        clock: Callable[[], float] = time.time,
        rmdir: Callable[[Path], None] = os.rmdir,
    ) -> None:
        self.root = root
        self.quota_us = max(MIN_QUOTA_US, int(period_us * quota_percent / 100.0))
        self.period_us = period_us
        self.group = group
        self.proc_root = proc_root
        self.clock = clock
        self.rmdir = rmdir

    def plan(self, proc: ProcessRecord) -> Throttled:
        try:
            text = (self.proc_root / str(proc.pid) / "cgroup").read_text()
        except OSError as exc:
            raise ProcessGone(proc.pid) from exc
        original = parse_proc_cgroup(text).get(self.controller_key, "/")
        child = self.root / self.group / f"{proc.pid}-{round(proc.create_time * 100)}"
        return Throttled(
            proc.pid,
            proc.create_time,
            proc.name,
            self.method,
            self.clock(),
            cgroup_dir=str(child),
            original_dir=str(self.root / original.lstrip("/")),
            **identify(proc, self.proc_root),
        )

    def prepare_parent(self, parent: Path) -> None:
        """Make the shared parent group usable for quotas (v2 needs controllers enabled)."""
        parent.mkdir(exist_ok=True)

    def write_quota(self, child: Path) -> None:
        raise NotImplementedError

    def apply(self, rec: Throttled) -> None:
        assert rec.cgroup_dir is not None
        if not is_same(rec, self.proc_root):
            raise ProcessGone(rec.pid)
        child = Path(rec.cgroup_dir)
        self.prepare_parent(child.parent)
        child.mkdir(exist_ok=True)
        self.write_quota(child)
        if not is_same(rec, self.proc_root):
            raise ProcessGone(rec.pid)
        _write(child / "cgroup.procs", str(rec.pid))

    def release(self, rec: Throttled) -> bool:
        return release_cgroup(rec, self.proc_root, self.rmdir)


class Cgroup2Quota(CgroupQuota):
    """cgroup v2: ``cpu.max`` = "quota period" in a child of the unified hierarchy."""

    method = "cgroup2"
    controller_key = ""

    def prepare_parent(self, parent: Path) -> None:
        # The cpu controller must be enabled in every ancestor's subtree_control.
        for group in (parent.parent, parent):
            group.mkdir(exist_ok=True)
            control = group / "cgroup.subtree_control"
            try:
                enabled = control.read_text().split()
            except FileNotFoundError:
                enabled = []
            if "cpu" not in enabled:
                _write(control, "+cpu")

    def write_quota(self, child: Path) -> None:
        _write(child / "cpu.max", f"{self.quota_us} {self.period_us}")


class Cgroup1Quota(CgroupQuota):
    """cgroup v1: ``cpu.cfs_period_us`` and ``cpu.cfs_quota_us`` in the cpu controller."""

    method = "cgroup1"
    controller_key = "cpu"

    def write_quota(self, child: Path) -> None:
        _write(child / "cpu.cfs_period_us", str(self.period_us))
        _write(child / "cpu.cfs_quota_us", str(self.quota_us))


def _members(group: Path) -> list[int]:
    """The processes in a cgroup (its ``cgroup.procs``); none if the group is gone."""
    try:
        text = (group / "cgroup.procs").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split() if x.isdigit()]


#: Rounds of moving a throttle group's members out: a member may fork while it is moved.
_EMPTY_ROUNDS = 5


def release_cgroup(
    rec: Throttled, proc_root: Path = Path("/proc"), rmdir: Callable[[Path], None] = os.rmdir
) -> bool:
    """Move the process back to its original cgroup (or the root if that is gone), then
    remove the child group and, if now empty, the shared parent.

    Processes the throttled one started while it was throttled were born in its child group;
    they are moved back with it (to the same original group), else they would keep its CPU
    quota for good once the journal forgets it. Only members of the child group are moved,
    so a pid reused by another process is never touched."""
    assert rec.cgroup_dir is not None and rec.original_dir is not None
    child = Path(rec.cgroup_dir)
    original = Path(rec.original_dir)
    alive = is_same(rec, proc_root)
    if alive:
        _move_back(rec.pid, original, child, required=True)
    for _ in range(_EMPTY_ROUNDS):
        others = [pid for pid in _members(child) if not (alive and pid == rec.pid)]
        if not others:
            break
        for pid in others:
            _move_back(pid, original, child, required=False)
        log.info(
            "pid %d: moved %d process(es) it started while throttled (%s) out of %s",
            rec.pid,
            len(others),
            " ".join(map(str, others)),
            child,
        )
    _rmdir_quietly(child, rmdir)
    try:
        rmdir(child.parent)
    except OSError:
        pass  # other throttled processes still live there
    return alive


def _move_back(pid: int, original: Path, child: Path, *, required: bool) -> None:
    """Write ``pid`` into the original group's ``cgroup.procs``, else the hierarchy's root.
    A member that exited meanwhile is fine; ``required`` raises when neither write works."""
    try:
        _write(original / "cgroup.procs", str(pid))
        return
    except ProcessLookupError:
        return
    except OSError as exc:
        log.warning("pid %d: original cgroup unusable (%s); moving to root", pid, exc)
    try:
        _write(child.parent.parent / "cgroup.procs", str(pid))
    except ProcessLookupError:
        return
    except OSError:
        if required:
            raise
        log.warning("pid %d: could not be moved out of %s", pid, child)


def release_record(rec: Throttled, proc_root: Path = Path("/proc")) -> bool:
    """Undo any journal record, whichever mechanism made it; False if the process is gone."""
    if rec.method == SigStop.method:
        return SigStop(proc_root).release(rec)
    return release_cgroup(rec, proc_root)


def build_mechanisms(
    method: str,
    cgroup_root: Path,
    quota_percent: float,
    proc_root: Path = Path("/proc"),
    rmdir: Callable[[Path], None] = os.rmdir,
) -> list[Mechanism]:
    """The mechanisms to try, in order. ``auto`` prefers a writable cgroup v2 cpu controller,
    then v1, and always ends with SIGSTOP for processes a quota cannot hold (e.g. realtime
    threads in v1). An explicitly chosen cgroup method that is missing raises ValueError."""
    sigstop = SigStop(proc_root)
    if method == "sigstop":
        return [sigstop]
    kw: dict[str, Any] = {"proc_root": proc_root, "rmdir": rmdir}
    v2, v1 = find_v2_root(cgroup_root), find_v1_cpu_root(cgroup_root)
    if method == "cgroup2":
        if v2 is None:
            raise ValueError(f"no cgroup v2 hierarchy with the cpu controller at {cgroup_root}")
        return [Cgroup2Quota(v2, quota_percent, **kw)]
    if method == "cgroup1":
        if v1 is None:
            raise ValueError(f"no cgroup v1 cpu controller under {cgroup_root}")
        return [Cgroup1Quota(v1, quota_percent, **kw)]
    if method != "auto":
        raise ValueError(f"unknown throttle method {method!r}")
    if v2 is not None and os.access(v2, os.W_OK):
        return [Cgroup2Quota(v2, quota_percent, **kw), sigstop]
    if v1 is not None and os.access(v1, os.W_OK):
        return [Cgroup1Quota(v1, quota_percent, **kw), sigstop]
    return [sigstop]
