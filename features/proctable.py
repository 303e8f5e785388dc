"""The process table, read straight from ``/proc``: one record type and one reader for all.

The collector's processes source, the miner indicators, the evidence writer and the
throttle all read processes through :class:`ProcessTable` and get :class:`ProcessRecord`
rows, so "which binary", "is it deleted", "who owns it" and "is this still the same
process" each have one answer. Parsing is kept apart from reading: every ``parse_*``
function turns the text of one ``/proc`` file into values and is tested on literal strings.

A process is named by ``(pid, start time)``: a recycled pid is a new process with its own
CPU counters. Processes exit while the table is read; one that vanishes mid-read is left
out and counted in :attr:`ProcessTable.skipped`, never an error.
"""

from __future__ import annotations

import os
import pwd
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import psutil

from minerwatch.features.procs import is_gc_thread
from minerwatch.features.rates import NAN, rate
from minerwatch.features.tcp_ports import tcp_remote_ports_by_inode

#: ``PF_KTHREAD`` in the ``flags`` field of ``/proc/<pid>/stat``.
PF_KTHREAD = 0x00200000
#: The kernel keeps this many characters of a process name (``TASK_COMM_LEN - 1``).
COMM_LEN = 15
#: What the kernel appends to the ``/proc/<pid>/exe`` link of an unlinked binary.
DELETED_SUFFIX = " (deleted)"

_Key = tuple[int, int]  # (pid, start time in clock ticks since boot)
T = TypeVar("T")


@dataclass(frozen=True)
class ProcessRecord:
    """One process, as every part of minerwatch sees it.

    ``create_time`` is Unix seconds (computed as psutil does); with ``pid`` it names the
    process. ``cpu_percent`` is percent of one core (as ``top`` shows it, so up to
    ``100 * ncores``) over the reader's latest interval, NaN when unknown. ``exe`` is the
    executable's path without the kernel's `` (deleted)`` mark, ``""`` when unreadable
    (kernel threads, access denied); ``exe_deleted`` flags a binary removed from disk while
    it runs (a classic dropper trick). ``cgroup`` is the path that names systemd units.
    ``remote_ports`` (sorted remote TCP ports) and ``cmdline`` are filled only when a caller
    asks: the command line is for matching and is never reported. ``gc_cpu_percent`` (also on
    request) is the CPU its garbage-collector threads took over the same interval (NaN: not
    read, or the process was not read the time before).

    >>> ProcessRecord(4242, 1, "xmrig", "/tmp/.x/xmrig", "www-data", 1.7e9, 190.0).cgroup
    '/'
    """

    pid: int
    ppid: int
    name: str
    exe: str
    username: str
    create_time: float
    cpu_percent: float
    cgroup: str = "/"
    is_kernel_thread: bool = False
    exe_deleted: bool = False
    remote_ports: tuple[int, ...] = ()
    cmdline: tuple[str, ...] = ()
    gc_cpu_percent: float = NAN
    #: The dynamic loader that runs ``exe`` (``ld-linux-x86-64.so.2 /dev/shm/x``: the kernel
    #: names the loader as the executable), "" when the kernel ran ``exe`` itself.
    loader: str = ""
    #: Where the running program's bytes are read, relative to ``/proc/<pid>``: ``exe``, or
    #: for a program the loader mapped, its ``map_files`` entry (deleted from disk too).
    image: str = "exe"
    #: When it started in clock ticks since boot (None when not read from ``/proc``): unlike
    #: ``create_time``, this does not move when the wall clock is set.
    start_ticks: int | None = None


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class StatFields:
    """The fields of ``/proc/<pid>/stat`` the table uses."""

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
    try:
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
    except (ValueError, IndexError) as exc:
        raise ValueError(f"/proc/<pid>/stat: expected 22 or more fields, got {text!r}") from exc


def parse_status_uid(text: str) -> int | None:
    """The real user id from ``/proc/<pid>/status``, None without a ``Uid:`` line.

    >>> parse_status_uid("Name:\\tsshd\\nUid:\\t0\\t0\\t0\\t0\\nGid:\\t0\\t0\\t0\\t0\\n")
    0
    """
    for line in text.splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    return None


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


def parse_exe_link(
    target: str, exists: Callable[[str], bool] = os.path.lexists
) -> tuple[str, bool]:
    """``(exe path, deleted)`` from a ``/proc/<pid>/exe`` link target.

    Deleted means the kernel marked the link *and* nothing is at that path now: a daemon
    whose binary a package upgrade replaced is not flagged, a miner that unlinked itself is.

    >>> parse_exe_link("/tmp/.x/kx (deleted)", exists=lambda path: False)
    ('/tmp/.x/kx', True)
    >>> parse_exe_link("/usr/sbin/nginx (deleted)", exists=lambda p: p == "/usr/sbin/nginx")
    ('/usr/sbin/nginx', False)
    """
    if target.endswith(DELETED_SUFFIX) and not exists(target):
        path = target[: -len(DELETED_SUFFIX)]
        return path, not exists(path)
    return target, False


#: Executables that are the dynamic loader (glibc's, musl's), which run a program given as
#: an argument: ``ld-linux-x86-64.so.2``, ``ld-musl-x86_64.so.1``, older glibc's ``ld-2.31.so``.
_LOADER = re.compile(r"ld(-linux[-\w]*|-musl-[-\w]+|64|-\d+(\.\d+)*)?\.so(\.\d+)*")
#: The loader's options that take a value (glibc's ld.so --help), before the program path.
_LOADER_VALUE_OPTIONS = frozenset(
    {"--library-path", "--inhibit-rpath", "--audit", "--preload", "--argv0",
     "--glibc-hwcaps-prepend", "--glibc-hwcaps-mask"}
)  # fmt: skip


def is_loader(exe: str) -> bool:
    """Whether ``exe`` is a dynamic loader (the kernel's executable for a program run as
    ``ld-linux-x86-64.so.2 ./prog``, from a noexec mount too).

    >>> is_loader("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"), is_loader("/tmp/ld")
    (True, False)
    """
    return _LOADER.fullmatch(os.path.basename(exe)) is not None


def loaded_program(argv: Sequence[str], maps: str, cwd: str) -> tuple[str, bool, str] | None:
    """The program a dynamic loader was asked to run, as ``(path, deleted, map range)``, or
    None. The path comes from the command line (the first argument after the loader's own
    options, relative to ``cwd``) and must be mapped in the process (``maps``): a command line
    the process rewrote to a file it has not mapped names nothing. ``map range`` names its
    ``map_files`` entry, through which its bytes are read even once deleted.

    >>> maps = "7f00-7f20 r--p 00000000 fe:00 12 /dev/shm/.x/kx (deleted)\\n"
    >>> loaded_program(["/lib64/ld-linux-x86-64.so.2", "--argv0", "kx", ".x/kx"], maps, "/dev/shm")
    ('/dev/shm/.x/kx', True, '7f00-7f20')
    >>> loaded_program(["ld.so", "/usr/bin/true"], maps, "/") is None
    True
    """
    args = list(argv[1:])
    while args and args[0].startswith("--"):
        option = args.pop(0)
        if option in _LOADER_VALUE_OPTIONS and args:
            args.pop(0)
    if not args or not args[0]:
        return None
    path = os.path.normpath(os.path.join(cwd, args[0]))
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6:
            continue
        mapped = fields[5]
        if mapped == path:
            return path, False, fields[0]
        if mapped == path + DELETED_SUFFIX:
            return path, True, fields[0]
    return None


def parse_cmdline(data: bytes) -> tuple[str, ...]:
    """Arguments from ``/proc/<pid>/cmdline`` (NUL separated), split as psutil splits them.

    A process that rewrote its argv into one space-separated string (setproctitle) is split
    on spaces. Undecodable bytes survive as surrogates, for the caller to escape.

    >>> parse_cmdline(b"xmrig\\x00-o\\x00stratum+tcp://p:3333\\x00")
    ('xmrig', '-o', 'stratum+tcp://p:3333')
    >>> parse_cmdline(b"nginx: worker process\\x00")
    ('nginx:', 'worker', 'process')
    """
    text = data.decode("utf-8", "surrogateescape")
    if not text:
        return ()
    sep = "\0" if text.endswith("\0") else " "
    args = text.removesuffix(sep).split(sep)
    if sep == "\0" and len(args) == 1 and " " in text:
        args = text.removesuffix(sep).split(" ")
    return tuple(args)


def full_name(comm: str, cmdline: Sequence[str]) -> str:
    """The process name, untruncated: the kernel keeps 15 characters, argv[0] may hold more.

    >>> full_name("a-long-miner-na", ("/opt/a-long-miner-name", "-t", "4"))
    'a-long-miner-name'
    >>> full_name("kx", ("/tmp/something-else",))
    'kx'
    """
    if len(comm) >= COMM_LEN and cmdline:
        base = os.path.basename(cmdline[0])
        if base.startswith(comm):
            return base
    return comm


def parse_socket_link(link: str) -> int | None:
    """Socket inode from a ``/proc/<pid>/fd`` link target, None for other files.

    >>> parse_socket_link("socket:[123456]"), parse_socket_link("/dev/null")
    (123456, None)
    """
    if link.startswith("socket:[") and link.endswith("]"):
        return int(link[8:-1])
    return None


def interval_cpu_percent(
    prev_cpu: float | None,
    cur_cpu: float,
    create_time: float,
    dt: float,
    new_since: float | None,
    max_percent: float = float("inf"),
) -> float:
    """CPU of one process over the interval, percent of one core.

    ``prev_cpu`` is its CPU seconds at the previous sample, or None if it was not seen then.
    A process not seen before but created after ``new_since`` (the previous sample's time,
    on the same clock as ``create_time``) started inside the interval, so all of its CPU
    seconds belong to it; otherwise the interval is unknown (NaN). Tick rounding over short
    intervals is clamped to ``max_percent``.

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


# --------------------------------------------------------------------------- time and identity


def clock_ticks() -> int:
    """Kernel clock ticks per second (``USER_HZ``), the unit of times in ``/proc/<pid>/stat``."""
    return os.sysconf("SC_CLK_TCK")


def boot_clock() -> float:
    """Seconds since boot, suspend included: the time base of start times in ``/proc``."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def boot_time(proc_root: Path = Path("/proc")) -> float:
    """Boot time in Unix seconds from the ``btime`` line of ``/proc/stat``."""
    for line in (proc_root / "stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise ValueError(f"{proc_root / 'stat'}: expected a 'btime' line, found none")


def same_start(a: float, b: float) -> bool:
    """True if two create times name the same start (they differ by less than half a tick)."""
    return abs(a - b) < 0.5 / clock_ticks()


def process_create_time(pid: int, proc_root: Path = Path("/proc")) -> float | None:
    """Start time of ``pid`` in Unix seconds (as psutil computes it), or None if it is gone."""
    try:
        stat = parse_stat((proc_root / str(pid) / "stat").read_text())
    except (OSError, ValueError):
        return None
    return boot_time(proc_root) + stat.start_ticks / clock_ticks()


def same_process(pid: int, create_time: float, proc_root: Path = Path("/proc")) -> bool:
    """True if ``pid`` is still the process that started at ``create_time`` (pid-reuse guard)."""
    now = process_create_time(pid, proc_root)
    return now is not None and same_start(now, create_time)


def process_start_ticks(pid: int, proc_root: Path = Path("/proc")) -> int | None:
    """When ``pid`` started, in clock ticks since boot, or None if it is gone. Unlike the
    create time, this does not move when the wall clock is set (``btime`` moves with it)."""
    try:
        return parse_stat((proc_root / str(pid) / "stat").read_text()).start_ticks
    except (OSError, ValueError):
        return None


def boot_id(proc_root: Path = Path("/proc")) -> str | None:
    """This boot's random id (``/proc/sys/kernel/random/boot_id``), None if unreadable."""
    try:
        return (proc_root / "sys" / "kernel" / "random" / "boot_id").read_text().strip() or None
    except OSError:
        return None


# --------------------------------------------------------------------------- reading


def _read(name: str, dir_fd: int | None = None, chunk_size: int = 1 << 16) -> bytes:
    """A whole ``/proc`` file (relative to ``dir_fd`` when given); no buffering layers.

    A short read is the end: procfs fills the buffer while it has data, so a ``stat`` file
    costs one ``read`` instead of two.
    """
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        chunks = [os.read(fd, chunk_size)]
        while len(chunks[-1]) == chunk_size:
            chunks.append(os.read(fd, chunk_size))
    finally:
        os.close(fd)
    return b"".join(chunks)


def _read_text(name: str, dir_fd: int | None = None) -> str:
    return _read(name, dir_fd).decode("utf-8", "surrogateescape")


def _loaded_program(dir_fd: int, argv: Sequence[str]) -> tuple[str, bool, str] | None:
    """:func:`loaded_program` of the process whose ``/proc`` directory is ``dir_fd``."""
    cwd = os.readlink("cwd", dir_fd=dir_fd)
    return loaded_program(argv, _read_text("maps", dir_fd), cwd)


def _socket_inodes(dir_fd: int) -> set[int]:
    """Inodes of the sockets a process holds open (its ``fd`` links)."""
    fd_dir = os.open("fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        inodes: set[int] = set()
        for fd in os.listdir(fd_dir):
            try:
                inode = parse_socket_link(os.readlink(fd, dir_fd=fd_dir))
            except FileNotFoundError:  # closed while we looked
                continue
            if inode is not None:
                inodes.add(inode)
        return inodes
    finally:
        os.close(fd_dir)


def _psutil_remote_ports(pid: int) -> tuple[int, ...]:
    """Remote TCP ports through psutil, which reads ``/proc/net/tcp*`` (no sock_diag).

    A fallback only: it looks the pid up afresh, outside the checked directory fd.
    """
    conns = psutil.Process(pid).net_connections(kind="tcp")
    return tuple(sorted({c.raddr.port for c in conns if c.raddr}))


@dataclass(frozen=True)
class _Extras:
    """The optional look-ups a caller asked :class:`ProcessTable` for."""

    cmdline: bool = False
    ports: bool = False
    #: Remote port per socket inode from one netlink dump; None with ``ports``: ask psutil.
    by_inode: dict[int, int] | None = None
    gc: bool = False


#: Every this many reads of a process, all its threads' names are read again.
GC_RECHECK = 10


@dataclass(frozen=True)
class _Threads:
    """One process's threads at its latest read: GC threads' CPU ticks, the others' ids."""

    at: float
    ticks: dict[int, int]
    others: set[int]
    reads: int


class ProcessTable:
    """Reads the live process table into :class:`ProcessRecord` rows.

    :meth:`scan` reads one file per process and gives each its CPU since the previous scan;
    :meth:`describe` fills the other fields for the few processes a caller cares about;
    :meth:`read` does both for every process. The look-ups of one process all go through
    one directory fd of ``/proc/<pid>``, its start time checked through that fd first, so
    they fail rather than read a newcomer that took the pid meanwhile.

    A process the previous scan did not see gets its CPU over the interval if it started
    inside it, else NaN (the first scan only primes the counters): the collector's figures
    describe one interval. With ``lifetime_cpu_for_unseen`` it gets its average over its
    whole life instead, so the throttle finds a miner already running on its first look.

    ``clock`` gives seconds since boot, the time base of start times in ``/proc/<pid>/stat``
    (``time.monotonic`` agrees on a host that has never been suspended).

    >>> table = ProcessTable()
    >>> me = table.lookup(os.getpid())
    >>> me is not None and me.pid == os.getpid() and me.exe != ""
    True
    """

    def __init__(
        self,
        proc_root: str | Path = Path("/proc"),
        clock: Callable[[], float] = boot_clock,
        *,
        lifetime_cpu_for_unseen: bool = False,
        ncpu: int | None = None,
        tcp_ports: Callable[[], dict[int, int]] = tcp_remote_ports_by_inode,
    ) -> None:
        self.proc_root = Path(proc_root)
        self.clock = clock
        self.lifetime_cpu_for_unseen = lifetime_cpu_for_unseen
        self.ncpu = ncpu or os.cpu_count() or 1
        #: Where TCP remote ports come from; an OSError falls back to psutil.
        self.tcp_ports = tcp_ports
        #: Cumulative counts of expected per-process failures.
        self.skipped: dict[str, int] = {"vanished": 0, "access_denied": 0, "zombie": 0}
        self._hz = clock_ticks()
        self._btime: float | None = None  # read on first use: nothing touches /proc here
        self._counters: dict[_Key, int] = {}
        self._scanned_at: float | None = None
        self._users: dict[int, str] = {}
        #: Per process: when its threads were last read, and each GC thread's CPU ticks.
        self._gc_ticks: dict[_Key, _Threads] = {}
        self._gc_seen: dict[_Key, _Threads] = {}

    # -- public ---------------------------------------------------------------------------

    def scan(self) -> list[ProcessRecord]:
        """Every process with its CPU percent, from ``/proc/<pid>/stat`` alone (cheap).

        The other fields keep their defaults (``exe`` and ``username`` empty) until
        :meth:`describe` reads them.
        """
        now, btime = self.clock(), self._boot_time()
        counters: dict[_Key, int] = {}
        rows: list[ProcessRecord] = []
        root = str(self.proc_root)  # once, not once per process: 10,000 of them add up
        for entry in os.listdir(root):
            if not entry.isdigit():
                continue
            try:
                stat = parse_stat(_read_text(f"{root}/{entry}/stat"))
            except (FileNotFoundError, ProcessLookupError):
                continue  # exited since the listing; counted below if it was seen before
            key = (int(entry), stat.start_ticks)
            counters[key] = stat.cpu_ticks
            rows.append(self._record(key[0], stat, btime, self._cpu_percent(key, stat, now)))
        self.skipped["vanished"] += sum(1 for key in self._counters if key not in counters)
        self._counters, self._scanned_at = counters, now
        return rows

    def describe(
        self,
        procs: Iterable[ProcessRecord],
        *,
        cmdline: bool = False,
        ports: bool | Callable[[ProcessRecord], bool] = False,
        gc: bool | Callable[[ProcessRecord], bool] = False,
    ) -> list[ProcessRecord]:
        """``procs`` read again in full, minus those that exited or whose pid was reused.

        ``cpu_percent`` is kept as given. ``cmdline`` adds the command line; ``ports`` adds
        the remote TCP ports, to every record or to those the predicate picks (one netlink
        dump serves them all); ``gc`` adds the CPU of garbage-collector threads the same way
        (one ``stat`` read per thread, so only for the few busiest processes).
        """
        wanted = list(procs)
        pick = ports if callable(ports) else (lambda _proc: ports)
        pick_gc = gc if callable(gc) else (lambda _proc: gc)
        with_ports = [pick(p) for p in wanted]
        with_gc = [pick_gc(p) for p in wanted]
        by_inode = self._tcp_ports() if any(with_ports) else None
        out: list[ProcessRecord] = []
        now = self.clock()
        for proc, need, gc_too in zip(wanted, with_ports, with_gc, strict=True):
            extras = _Extras(cmdline, need, by_inode, gc_too)
            row = self._details(proc.pid, proc.create_time, proc.cpu_percent, extras, now)
            if row is not None:
                out.append(row)
        if any(with_gc):  # forget processes not read this time
            self._gc_ticks, self._gc_seen = self._gc_seen, {}
        return out

    def lookup(self, pid: int, *, cmdline: bool = False) -> ProcessRecord | None:
        """Whatever process holds ``pid`` now (CPU percent unknown), or None if there is none."""
        return self._details(pid, None, NAN, _Extras(cmdline=cmdline), self.clock())

    def read(self) -> list[ProcessRecord]:
        """Every process, every field but ports and command line."""
        return self.describe(self.scan())

    # -- internals ------------------------------------------------------------------------

    def _boot_time(self) -> float:
        if self._btime is None:
            self._btime = boot_time(self.proc_root)
        return self._btime

    def _record(self, pid: int, stat: StatFields, btime: float, cpu: float) -> ProcessRecord:
        return ProcessRecord(
            pid=pid,
            ppid=stat.ppid,
            name=stat.name,
            exe="",
            username="",
            create_time=btime + stat.start_ticks / self._hz,
            cpu_percent=cpu,
            is_kernel_thread=bool(stat.flags & PF_KTHREAD),
            start_ticks=stat.start_ticks,
        )

    def _cpu_percent(self, key: _Key, stat: StatFields, now: float) -> float:
        cpu, started = stat.cpu_ticks / self._hz, stat.start_ticks / self._hz
        before = self._counters.get(key)
        max_percent = 100.0 * self.ncpu
        if before is None and self.lifetime_cpu_for_unseen:
            return min(100.0 * rate(0.0, cpu, now - started), max_percent)
        last = self._scanned_at
        return interval_cpu_percent(
            None if before is None else before / self._hz,
            cpu,
            started,
            NAN if last is None else now - last,
            None if last is None else last - 1.0 / self._hz,  # start times are whole ticks
            max_percent,
        )

    def _tcp_ports(self) -> dict[int, int] | None:
        """Remote port per socket inode for this call; None if netlink is unavailable."""
        try:
            return self.tcp_ports()
        except OSError:
            return None

    def _username(self, uid: int | None) -> str:
        if uid is None:
            return ""
        if uid not in self._users:
            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:  # no such user in this namespace: the number is all there is
                self._users[uid] = str(uid)
        return self._users[uid]

    def _attempt(self, state: str, lookup: Callable[[], T], default: T) -> T:
        """Run one per-process look-up; expected failures are counted and give ``default``."""
        try:
            return lookup()
        except (PermissionError, psutil.AccessDenied):
            self.skipped["access_denied"] += 1
        except (FileNotFoundError, ProcessLookupError, psutil.NoSuchProcess):
            # A zombie has no exe; kernel threads have none either; or it just exited.
            if state == "Z":
                self.skipped["zombie"] += 1
        return default

    def _details(
        self,
        pid: int,
        create_time: float | None,
        cpu_percent: float,
        extras: _Extras,
        now: float,
    ) -> ProcessRecord | None:
        """One process in full, or None if it is gone or (given ``create_time``) replaced."""
        try:
            dir_fd = os.open(f"{self.proc_root}/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            self.skipped["vanished"] += 1
            return None
        try:
            found = self._identify(dir_fd, pid, cpu_percent)
            if found is None or (
                create_time is not None and not same_start(found[1].create_time, create_time)
            ):
                self.skipped["vanished"] += 1  # exited, or the pid belongs to a newer process
                return None
            row = self._fill(dir_fd, *found, extras)
            if extras.gc:
                gc = self._attempt(
                    found[0].state, lambda: self._gc_percent(dir_fd, found, now), NAN
                )
                row = replace(row, gc_cpu_percent=gc)
            return row
        finally:
            os.close(dir_fd)

    def _identify(
        self, dir_fd: int, pid: int, cpu_percent: float
    ) -> tuple[StatFields, ProcessRecord] | None:
        """Who holds the pid directory: stat fields and owner, or None if it has exited."""
        try:
            stat = parse_stat(_read_text("stat", dir_fd))
            status = _read_text("status", dir_fd)
        except (FileNotFoundError, ProcessLookupError):
            return None
        row = self._record(pid, stat, self._boot_time(), cpu_percent)
        return stat, replace(row, username=self._username(parse_status_uid(status)))

    def _gc_percent(
        self, dir_fd: int, found: tuple[StatFields, ProcessRecord], now: float
    ) -> float:
        """CPU of the process's garbage-collector threads since it was last read, percent of
        one core: 0 without such threads, NaN the first time it is read."""
        stat, row = found
        key = (row.pid, stat.start_ticks)
        before = self._gc_ticks.get(key)
        # threads already known not to collect are not read again (a JVM has hundreds), but
        # every RECHECK-th time all are: a runtime names a thread just after starting it
        skip = before.others if before is not None and before.reads % GC_RECHECK else set()
        ticks: dict[int, int] = {}
        others: set[int] = set()
        task_fd = os.open("task", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            for entry in os.listdir(task_fd):
                tid = int(entry)
                if tid in skip:
                    others.add(tid)
                    continue
                try:
                    t = parse_stat(_read_text(f"{entry}/stat", task_fd))
                except (FileNotFoundError, ProcessLookupError):
                    continue  # the thread ended while we read
                if is_gc_thread(t.name):
                    ticks[tid] = t.cpu_ticks
                else:
                    others.add(tid)
        finally:
            os.close(task_fd)
        reads = 1 if before is None else before.reads + 1
        self._gc_seen[key] = _Threads(now, ticks, others, reads)
        if not ticks:
            return 0.0
        if before is None or not now > before.at:
            return NAN
        used = sum(max(0, v - before.ticks.get(tid, v)) for tid, v in ticks.items())
        return min(100.0 * used / self._hz / (now - before.at), 100.0 * self.ncpu)

    def _fill(
        self, dir_fd: int, stat: StatFields, row: ProcessRecord, extras: _Extras
    ) -> ProcessRecord:
        """The costlier fields, through ``dir_fd``; each look-up may fail on its own."""

        def look(lookup: Callable[[], T], default: T) -> T:
            return self._attempt(stat.state, lookup, default)

        exe, deleted = look(lambda: parse_exe_link(os.readlink("exe", dir_fd=dir_fd)), ("", False))
        argv: tuple[str, ...] = ()
        loader, image = "", "exe"
        run_by_loader = is_loader(exe)
        if extras.cmdline or len(stat.name) >= COMM_LEN or run_by_loader:
            argv = look(lambda: parse_cmdline(_read("cmdline", dir_fd)), ())
        if run_by_loader:  # the program is what the loader runs, not the loader
            program = look(lambda: _loaded_program(dir_fd, argv), None)
            if program is not None:
                loader, (exe, deleted, span) = exe, program
                image = f"map_files/{span}"
        remote: tuple[int, ...] = ()
        if extras.ports and extras.by_inode is None:
            remote = look(lambda: _psutil_remote_ports(row.pid), ())
        elif extras.ports and extras.by_inode is not None:
            by_inode = extras.by_inode
            inodes: set[int] = look(lambda: _socket_inodes(dir_fd), set())
            remote = tuple(sorted({by_inode[i] for i in inodes if i in by_inode}))
        cgroups: dict[str, str] = {}
        cgroups = look(lambda: parse_proc_cgroup(_read_text("cgroup", dir_fd)), cgroups)
        return replace(
            row,
            name=full_name(stat.name, argv),
            exe=exe,
            cgroup=systemd_cgroup(cgroups),
            exe_deleted=deleted,
            loader=loader,
            image=image,
            remote_ports=remote,
            cmdline=argv if extras.cmdline else (),
        )
