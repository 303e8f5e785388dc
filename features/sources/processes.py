"""Per-process CPU: process count, the busiest process, and who the busiest processes are.

One pass per sample over ``psutil.process_iter`` reads each process's start time and CPU
seconds (one ``/proc/<pid>/stat`` read each). CPU percent per process is the increase in its
user+system seconds since the previous sample divided by the interval, in percent of ONE core
as ``top`` shows it (so up to ``100 * ncores``). Processes are keyed by ``(pid, create_time)``
so a recycled pid never inherits another process's counters (psutil keeps a cached Process per
pid, so a recycle is caught by a CPU decrease or, for the leaders, ``is_running()``; see
:meth:`ProcessesSource._verify_leaders`). Processes that vanish or deny
access are expected: they are counted in :attr:`ProcessesSource.skipped`, never fatal.

Only the few busiest processes get the costlier look-ups (name, exe, user, connections).
"""

from __future__ import annotations

import heapq
import math
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import psutil

from minerwatch.features.rates import NAN, rate
from minerwatch.features.sources.base import Clock

#: Netlink sock_diag (what ``ss`` uses): dumps only existing sockets, where reading
#: ``/proc/net/tcp`` walks the whole hash table and costs milliseconds per read.
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, seq, pid
_DIAG_REQ = struct.Struct("=BBBBI48s")  # family, protocol, ext, pad, states, sockid
#: inet_diag_msg: family, state, timer, retrans, sport, dport (big endian), src, dst, ifindex,
#: cookie, expires, rqueue, wqueue, uid, inode
_DIAG_MSG = struct.Struct("=BBBB2s2s16s16sI8sIIIII")

#: Slack on create_time comparisons: psutil derives it from the boot time in whole seconds.
CREATE_TIME_SLACK = 2.0

ProcKey = tuple[int, float]
T = TypeVar("T")


@dataclass(frozen=True)
class ProcessInfo:
    """One of the busiest processes of an interval, for explanations and miner indicators.

    ``exe`` is ``""`` when unreadable; ``exe_deleted`` flags a running binary whose file was
    removed (a classic dropper trick). ``remote_ports`` are the sorted remote ports of the
    process's TCP connections (IPv4 and IPv6; mining pools speak stratum over TCP), looked up
    only for processes busier than ``ProcessesSource.ports_min_cpu`` (best effort: empty when
    denied). No command line is kept.
    """

    pid: int
    name: str
    exe: str
    exe_deleted: bool
    username: str
    create_time: float
    cpu_percent: float
    remote_ports: tuple[int, ...]


def interval_cpu_percent(
    prev_cpu: float | None,
    cur_cpu: float,
    create_time: float,
    dt: float,
    new_since: float | None,
    max_percent: float = math.inf,
) -> float:
    """CPU of one process over the interval, percent of one core.

    ``prev_cpu`` is its CPU seconds at the previous sample, or None if it was not seen then.
    A process not seen before but created after ``new_since`` (the previous sample's wall time)
    started inside the interval, so all of its CPU seconds belong to it; otherwise the interval
    is unknown (NaN). Tick rounding over short intervals is clamped to ``max_percent``.

    >>> interval_cpu_percent(1.0, 6.0, 100.0, 10.0, 500.0)
    50.0
    >>> interval_cpu_percent(None, 3.0, 505.0, 10.0, 500.0)
    30.0
    >>> interval_cpu_percent(None, 3.0, 400.0, 10.0, 500.0)
    nan
    """
    if prev_cpu is not None:
        pct = 100.0 * rate(prev_cpu, cur_cpu, dt)
    elif new_since is not None and create_time >= new_since:
        pct = 100.0 * rate(0.0, cur_cpu, dt)
    else:
        return NAN
    return min(pct, max_percent)


@dataclass
class _Seen:
    """A process as seen at one sample."""

    proc: psutil.Process
    cpu: float
    pct: float = NAN


class ProcessesSource:
    """``procs_total``, ``top_proc_cpu_percent``; keeps :attr:`top`, :attr:`visible_cpu_percent`.

    The first read primes per-process counters: ``top_proc_cpu_percent`` is NaN and ``top``
    empty. ``visible_cpu_percent`` is the summed CPU of all processes seen in both samples (or
    started in between), percent of the whole host; CPU of processes that started and exited
    between two samples is not in it, so a gap to the host's CPU is normal on fork-heavy hosts.
    """

    name = "processes"
    columns = ("procs_total", "top_proc_cpu_percent")

    def __init__(
        self,
        *,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        top_n: int = 5,
        ports_min_cpu: float = 5.0,
        ncpu: int | None = None,
    ) -> None:
        self.clock = clock
        self.wall_clock = wall_clock
        self.top_n = top_n
        #: Connections are looked up only for top processes at least this busy (percent of one
        #: core): the busy ones are those explanations and miner indicators are about.
        self.ports_min_cpu = ports_min_cpu
        self.ncpu = ncpu or os.cpu_count() or 1
        #: The busiest processes of the latest interval, busiest first (replaced atomically).
        self.top: tuple[ProcessInfo, ...] = ()
        #: CPU of all visible processes over the latest interval, percent of the whole host.
        self.visible_cpu_percent: float = NAN
        #: Cumulative counts of expected per-process failures.
        self.skipped: dict[str, int] = {"vanished": 0, "access_denied": 0, "zombie": 0}
        self._prev: dict[ProcKey, _Seen] = {}
        self._prev_t = NAN
        self._prev_wall: float | None = None

    def _scan(self) -> tuple[dict[ProcKey, _Seen], int]:
        """One pass over all processes: ``{(pid, create_time): seen}`` and the process count."""
        seen: dict[ProcKey, _Seen] = {}
        total = 0
        for proc in psutil.process_iter(["create_time", "cpu_times"]):
            total += 1
            created, times = proc.info["create_time"], proc.info["cpu_times"]
            if created is None or times is None:
                self._classify_failure(proc)
                continue
            seen[(proc.pid, created)] = _Seen(proc, times.user + times.system)
        return seen, total

    def _classify_failure(self, proc: psutil.Process) -> None:
        """Count why ``process_iter`` could not read a process (rare, so a retry is cheap)."""
        self._attempt(lambda: (proc.create_time(), proc.cpu_times()), None)

    def _fresh(self, pid: int) -> tuple[ProcKey, _Seen] | None:
        """Re-identify a pid whose cached Process is stale (pid reused since last sample)."""
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                created = proc.create_time()
                times = proc.cpu_times()
        except psutil.NoSuchProcess:  # counted as vanished by the caller's sample diff
            return None
        except psutil.AccessDenied:
            self.skipped["access_denied"] += 1
            return None
        return (pid, created), _Seen(proc, times.user + times.system)

    def _percent(self, key: ProcKey, seen: _Seen, dt: float) -> float:
        before = self._prev.get(key)
        return interval_cpu_percent(
            None if before is None else before.cpu,
            seen.cpu,
            key[1],
            dt,
            None if self._prev_wall is None else self._prev_wall - CREATE_TIME_SLACK,
            100.0 * self.ncpu,
        )

    def _replace_reused(self, cur: dict[ProcKey, _Seen], key: ProcKey, dt: float) -> None:
        """Swap a stale entry for the process that now holds its pid."""
        del cur[key]
        fresh = self._fresh(key[0])
        if fresh is not None:
            new_key, seen = fresh
            seen.pct = self._percent(new_key, seen, dt)
            cur[new_key] = seen

    def read(self) -> dict[str, float]:
        """Scan all processes once and return the interval's process metrics."""
        cur, total = self._scan()
        now, wall = self.clock(), self.wall_clock()
        dt = now - self._prev_t
        for key, seen in list(cur.items()):
            seen.pct = self._percent(key, seen, dt)
            before = self._prev.get(key)
            if before is not None and seen.cpu < before.cpu:
                # CPU seconds never decrease: psutil's cached Process is for an older owner.
                self._replace_reused(cur, key, dt)
        self._verify_leaders(cur, dt)
        self.skipped["vanished"] += sum(1 for key in self._prev if key not in cur)
        self._prev, self._prev_t, self._prev_wall = cur, now, wall

        valid = [s.pct for s in cur.values() if not math.isnan(s.pct)]
        # Clamped: tick rounding over short intervals can push the sum a little past 100.
        self.visible_cpu_percent = min(100.0, sum(valid) / self.ncpu) if valid else NAN
        leaders = [cur[key] for key in self._leaders(cur)]
        by_inode = self._tcp_ports() if any(s.pct >= self.ports_min_cpu for s in leaders) else {}
        self.top = tuple(self._describe(seen, by_inode) for seen in leaders)
        return {
            "procs_total": float(total),
            "top_proc_cpu_percent": max(valid) if valid else NAN,
        }

    def _verify_leaders(self, cur: dict[ProcKey, _Seen], dt: float) -> None:
        """Confirm the identity of the top processes, the numbers that get reported by name.

        psutil reuses its cached Process for a pid that was recycled between two samples, with
        the old owner's create_time; ``is_running()`` re-reads it. Only the leaders are checked
        (cheap), repeating until every process in the final top is confirmed.
        """
        confirmed: set[ProcKey] = set()
        while pending := [k for k in self._leaders(cur) if k not in confirmed]:
            for key in pending:
                confirmed.add(key)
                if not cur[key].proc.is_running():
                    self._replace_reused(cur, key, dt)
                    confirmed.update(k for k in cur if k[0] == key[0])

    def _leaders(self, cur: dict[ProcKey, _Seen]) -> list[ProcKey]:
        """The ``top_n`` busiest processes with a known CPU percent, busiest first."""
        known = (k for k, s in cur.items() if not math.isnan(s.pct))
        return heapq.nlargest(self.top_n, known, key=lambda k: cur[k].pct)

    def _attempt(self, lookup: Callable[[], T], default: T) -> T:
        """Run one per-process look-up; expected failures are counted and give ``default``."""
        try:
            return lookup()
        except psutil.ZombieProcess:
            self.skipped["zombie"] += 1
        except psutil.NoSuchProcess:
            self.skipped["vanished"] += 1
        except (psutil.AccessDenied, PermissionError):
            self.skipped["access_denied"] += 1
        except FileNotFoundError:  # kernel threads have no exe link
            pass
        return default

    def _tcp_ports(self) -> dict[int, int] | None:
        """Remote port per socket inode for this sample; None if netlink is unavailable."""
        try:
            return tcp_remote_ports_by_inode()
        except OSError:
            return None

    def _ports(self, proc: psutil.Process, by_inode: dict[int, int] | None) -> tuple[int, ...]:
        if by_inode is None:  # no sock_diag (old kernel, seccomp): psutil reads /proc/net/tcp*
            return _remote_ports(proc)
        inodes = socket_inodes(proc.pid)
        return tuple(sorted({by_inode[i] for i in inodes if i in by_inode}))

    def _describe(self, seen: _Seen, by_inode: dict[int, int] | None) -> ProcessInfo:
        """Best-effort details of one top process; each look-up may fail on its own."""
        proc = seen.proc
        return ProcessInfo(
            pid=proc.pid,
            name=self._attempt(proc.name, ""),
            exe=self._attempt(proc.exe, ""),
            exe_deleted=self._attempt(lambda: _exe_deleted(proc.pid), False),
            username=self._attempt(proc.username, ""),
            create_time=proc.create_time(),
            cpu_percent=seen.pct,
            remote_ports=(
                self._attempt(lambda: self._ports(proc, by_inode), ())
                if seen.pct >= self.ports_min_cpu
                else ()
            ),
        )


def _exe_deleted(pid: int) -> bool:
    """True when the process runs a binary that no longer exists on disk."""
    return os.readlink(f"/proc/{pid}/exe").endswith(" (deleted)")


def _remote_ports(proc: psutil.Process) -> tuple[int, ...]:
    """Sorted distinct remote ports of the process's connected TCP sockets (psutil fallback)."""
    return tuple(sorted({c.raddr.port for c in proc.net_connections(kind="tcp") if c.raddr}))


def parse_socket_link(link: str) -> int | None:
    """Socket inode from a ``/proc/<pid>/fd`` link target, None for other files.

    >>> parse_socket_link("socket:[123456]"), parse_socket_link("/dev/null")
    (123456, None)
    """
    if link.startswith("socket:[") and link.endswith("]"):
        return int(link[8:-1])
    return None


def socket_inodes(pid: int, proc_root: str = "/proc") -> set[int]:
    """Inodes of the sockets a process holds open (reads its fd links)."""
    inodes: set[int] = set()
    fd_dir = f"{proc_root}/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            inode = parse_socket_link(os.readlink(f"{fd_dir}/{fd}"))
        except FileNotFoundError:  # closed while we looked
            continue
        if inode is not None:
            inodes.add(inode)
    return inodes


def parse_inet_diag(data: bytes) -> tuple[dict[int, int], bool]:
    """``{socket inode: remote port}`` from one chunk of a netlink inet_diag dump, and whether
    the dump is complete. Sockets without a remote end (listening) are left out.

    Raises OSError for a netlink error message.
    """
    ports: dict[int, int] = {}
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            raise ValueError(f"netlink message of length {length}")
        body = offset + _NLMSGHDR.size
        if kind == NLMSG_DONE:
            return ports, True
        if kind == NLMSG_ERROR:
            errno = -struct.unpack_from("=i", data, body)[0]
            raise OSError(errno, f"sock_diag: {os.strerror(errno)}")
        if kind == SOCK_DIAG_BY_FAMILY and length >= _NLMSGHDR.size + _DIAG_MSG.size:
            fields = _DIAG_MSG.unpack_from(data, body)
            dport, inode = int.from_bytes(fields[5], "big"), fields[14]
            if dport and inode:  # inode 0: TIME_WAIT, owned by no process
                ports[inode] = dport
        offset += (length + 3) & ~3
    return ports, False


def tcp_remote_ports_by_inode() -> dict[int, int]:
    """Remote port of every connected TCP socket (IPv4 and IPv6) in this network namespace."""
    ports: dict[int, int] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as sock:
        sock.settimeout(2.0)
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
            req = _DIAG_REQ.pack(family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF, b"")
            header = _NLMSGHDR.pack(
                _NLMSGHDR.size + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0
            )
            sock.sendto(header + req, (0, 0))
            done = False
            while not done:
                chunk, done = parse_inet_diag(sock.recv(1 << 16))
                ports.update(chunk)
    return ports
