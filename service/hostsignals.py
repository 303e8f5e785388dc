"""Host signals beside the CPU baseline: new listening ports, SSH logins, wiped logs.

Three of the warning signs operators are told to watch are not CPU-shaped and cost almost
nothing to read incrementally, so the agent reads them every tick:

- **listening ports** (TCP LISTEN, unconnected UDP) from netlink sock_diag (``/proc/net``
  as a fallback); the baseline is every port seen while learning. UDP ports in the local
  ephemeral range are left out: they are clients' unconnected sockets (resolvers, NTP), not
  services. The agent's own ports (its exporter's, told by :meth:`HostSignals.own_ports`
  once bound) are neither learnt nor reported; a port reported before a restart is not
  reported again while it stays open.
- **SSH logins** from the systemd journal when journald runs (``journalctl`` every minute,
  resumed from its cursor), else ``/var/log/auth.log`` or ``/var/log/secure`` (or the
  configured file), read from a remembered inode and offset. Failed attempts are counted
  per minute; an accepted login from a source never seen while learning is reported once.
- **log files shrinking or vanishing** under ``/var/log``. Rotation is told apart from
  wiping by what rotation leaves behind: the old inode under another name (rename), or a
  rotated sibling (``NAME.1``, ``NAME-20261203``, ``NAME.1.gz``, ...) new or changed since
  the previous scan (copytruncate, compressing). Files that rewrite themselves while
  learning are the baseline and are not reported afterwards.

Baselines and read positions live in ``DATA_DIR/hostsignals.json`` (atomic writes), so a
restart neither relearns nor recounts. Each finding is an event line, a WARNING and a
counter; nothing here stops the agent: failures are counted by stage.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import select
import shutil
import socket
import stat
import subprocess
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minerwatch.features.atomic import atomic_write
from minerwatch.features.tcp_ports import NETLINK_SOCK_DIAG, diag_dump, diag_messages

log = logging.getLogger("minerwatch.hostsignals")

STATE_NAME = "hostsignals.json"
STATE_VERSION = 1
#: Error stages of this module (also in :data:`~minerwatch.service.state.ERROR_STAGES`).
STAGES = ("listen_ports", "ssh_log", "log_watch", "host_signals")
#: Most entries any baseline or report list keeps (bounded state file and memory).
MAX_ENTRIES = 4096
#: Most bytes of a log read per tick; the rest waits for the next tick.
MAX_READ = 1 << 20
#: Longest log line kept; longer ones are skipped (an attacker's username can be long).
MAX_LINE = 8192
#: Files the log watch follows at most, and how deep below its folder.
MAX_FILES, MAX_DEPTH = 2000, 3
#: Recent findings the evidence section lists.
RECENT = 20
JOURNAL_EVERY_S = 60.0
#: The longest one read of the journal may hold the agent's loop, and the most entries it
#: takes at once (a backlog is read on at the next ticks, from the last entry's cursor).
JOURNAL_TIMEOUT_S = 3.0
JOURNAL_MAX_LINES = 50_000
SAVE_EVERY_S = 60.0
AUTH_LOGS = (Path("/var/log/auth.log"), Path("/var/log/secure"))
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")

TCP_LISTEN, UDP_UNCONNECTED = 10, 7  # kernel socket states (TCP_LISTEN, TCP_CLOSE)

Port = tuple[str, int]  # (proto, port)
#: The ``event`` of the lines this module appends to the event log (no episode ``id``).
EVENTS = ("new_listen_port", "ssh_login_new_source", "log_truncated")


# -- listening ports -------------------------------------------------------------------------


def parse_listen_diag(data: bytes, proto: str) -> tuple[dict[Port, str], bool]:
    """``{(proto, port): local address}`` from one chunk of an inet_diag dump of listening
    (TCP) or unconnected (UDP) sockets, and whether the dump is complete."""
    messages, done = diag_messages(data)
    found: dict[Port, str] = {}
    for fields in messages:
        if (port := _listening(fields, proto)) is not None:
            found[port[0]] = port[1]
    return found, done


def _listening(fields: tuple[Any, ...], proto: str) -> tuple[Port, str] | None:
    """((proto, port), local address) of a socket with a local port and no remote one."""
    family, sport, dport, src = fields[0], int.from_bytes(fields[4], "big"), fields[5], fields[6]
    if not sport or int.from_bytes(dport, "big"):
        return None
    raw = src[:4] if family == socket.AF_INET else src
    return (proto, sport), str(ipaddress.ip_address(raw))


def listening_ports_netlink() -> dict[Port, str]:
    """Listening TCP and unconnected UDP ports of this network namespace (IPv4 and IPv6)."""
    found: dict[Port, str] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as sock:
        sock.settimeout(2.0)
        seq = 0
        for proto, ipproto, state in (
            ("tcp", socket.IPPROTO_TCP, TCP_LISTEN),
            ("udp", socket.IPPROTO_UDP, UDP_UNCONNECTED),
        ):
            for family in (socket.AF_INET, socket.AF_INET6):
                seq += 1
                for fields in diag_dump(sock, family, ipproto, 1 << state, seq):
                    if (port := _listening(fields, proto)) is not None:
                        found.setdefault(*port)
    return found


def parse_proc_net(text: str, proto: str) -> dict[Port, str]:
    """The same from ``/proc/net/{tcp,tcp6,udp,udp6}`` text (the fallback without netlink).

    >>> parse_proc_net("sl local rem st\\n0: 0100007F:1F90 00000000:0000 0A", "tcp")
    {('tcp', 8080): '127.0.0.1'}
    """
    found: dict[Port, str] = {}
    want = f"{TCP_LISTEN:02X}" if proto == "tcp" else f"{UDP_UNCONNECTED:02X}"
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 4 or cols[3].upper() != want:
            continue
        addr, _, port_hex = cols[1].partition(":")
        _, _, rport = cols[2].partition(":")
        port = int(port_hex, 16)
        if not port or int(rport or "0", 16):
            continue
        raw = bytes.fromhex(addr)
        # the kernel prints each 32-bit word in host order
        words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
        found.setdefault((proto, port), str(ipaddress.ip_address(words)))
    return found


def listening_ports_proc(proc: Path = Path("/proc")) -> dict[Port, str]:
    found: dict[Port, str] = {}
    for proto in ("tcp", "udp"):
        for name in (proto, proto + "6"):
            try:
                text = (proc / "net" / name).read_text()
            except FileNotFoundError:  # no IPv6 on this host
                continue
            for key, addr in parse_proc_net(text, proto).items():
                found.setdefault(key, addr)
    return found


def ephemeral_range(proc: Path = Path("/proc")) -> tuple[int, int]:
    """The local port range clients get ports from (Linux's default when unreadable)."""
    try:
        low, high = (proc / "sys/net/ipv4/ip_local_port_range").read_text().split()[:2]
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def services(ports: dict[Port, str], ephemeral: tuple[int, int]) -> dict[Port, str]:
    """Ports that are services: every TCP listener, UDP outside the ephemeral range."""
    low, high = ephemeral
    return {k: a for k, a in ports.items() if k[0] == "tcp" or not low <= k[1] <= high}


# -- SSH logins --------------------------------------------------------------------------------

_SSHD = re.compile(r"\bsshd(?:-session)?\[(\d+)\]: (.*)$")
_REPEATED = re.compile(r"message repeated (\d+) times: \[ ?(.*?) ?\]$")
_FAILED = re.compile(r"Failed \S+ for (invalid user )?(.*) from (\S+) port \d+")
_INVALID = re.compile(r"Invalid user (.*) from (\S+)(?: port \d+)?$")
_ACCEPTED = re.compile(r"Accepted \S+ for (.*) from (\S+) port \d+")


@dataclass(frozen=True)
class SshEvent:
    """One sshd message that matters: ``failed``, ``invalid`` (unknown user) or ``accepted``."""

    kind: str
    user: str
    source: str
    pid: int | None = None
    count: int = 1


def _source(text: str) -> str:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return "unknown"
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # ::ffff:192.0.2.1 is the IPv4 source 192.0.2.1
    return str(addr)


def parse_sshd_message(message: str, pid: int | None = None) -> SshEvent | None:
    """An sshd message (as the journal's MESSAGE holds it) as an event, else None.

    The source is the last ``from ADDR port N`` (sshd appends it after the user name, which
    a client chooses), so a user name cannot forge it.

    >>> parse_sshd_message("Accepted publickey for ann from 10.0.0.5 port 50022 ssh2")
    SshEvent(kind='accepted', user='ann', source='10.0.0.5', pid=None, count=1)
    """
    count = 1
    repeated = _REPEATED.search(message)
    if repeated:
        count, message = int(repeated.group(1)), repeated.group(2)
    m = _ACCEPTED.match(message)
    if m:
        return SshEvent("accepted", m.group(1)[:64], _source(m.group(2)), pid, count)
    m = _FAILED.match(message)
    if m:
        kind = "failed_invalid" if m.group(1) else "failed"
        return SshEvent(kind, m.group(2)[:64], _source(m.group(3)), pid, count)
    m = _INVALID.match(message)
    if m:
        return SshEvent("invalid", m.group(1)[:64], _source(m.group(2)), pid, count)
    return None


def parse_sshd_line(line: str) -> SshEvent | None:
    """A syslog line of auth.log/secure (classic or ISO timestamps) as an event, else None.

    >>> parse_sshd_line("Dec  3 11:00:01 web sshd[812]: Invalid user oracle from 192.0.2.9 port 4")
    SshEvent(kind='invalid', user='oracle', source='192.0.2.9', pid=812, count=1)
    """
    m = _SSHD.search(line)
    return None if m is None else parse_sshd_message(m.group(2), int(m.group(1)))


def parse_journal_entry(line: str) -> tuple[SshEvent | None, str | None]:
    """One ``journalctl -o json`` line: its event (if any) and its cursor."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None, None
    if not isinstance(entry, dict):
        return None, None
    cursor = entry.get("__CURSOR")
    message = entry.get("MESSAGE")
    pid_text = entry.get("_PID") or entry.get("SYSLOG_PID")
    pid = int(pid_text) if isinstance(pid_text, str) and pid_text.isdigit() else None
    event = parse_sshd_message(message, pid) if isinstance(message, str) else None
    return event, cursor if isinstance(cursor, str) else None


class FailureCounter:
    """Failed attempts, each counted once: sshd logs an unknown user as ``Invalid user``
    and then ``Failed password for invalid user`` for each password tried, so the first
    such Failed line of a connection (by sshd pid) is the attempt already counted."""

    def __init__(self) -> None:
        self._pending: dict[int, None] = {}  # sshd pids with an uncounted Invalid-user line

    def attempts(self, event: SshEvent) -> int:
        if event.kind == "invalid":
            if event.pid is not None:
                self._pending[event.pid] = None
                while len(self._pending) > MAX_ENTRIES:
                    del self._pending[next(iter(self._pending))]
            return event.count
        if event.kind == "failed_invalid" and event.pid is not None:
            if self._pending.pop(event.pid, 0) is None:
                return event.count - 1
        return event.count if event.kind in ("failed", "failed_invalid") else 0


class LogFollower:
    """New complete lines of one file, following rotation and truncation by inode/offset."""

    def __init__(self, path: Path, inode: int | None = None, offset: int | None = None) -> None:
        self.path = path
        self._fh: Any = None
        self.inode: int | None = None
        self.offset = 0
        self._partial = b""
        self._resume = (inode, offset)
        self._from_start = False  # the file did not exist yet: whatever appears is new
        #: The file was seen rotated away at the previous read: read once more before the
        #: new one (syslog writes on into it until logrotate's postrotate reopens it)
        self._rotated = False
        self._behind = False  # the last read stopped at MAX_READ: more is waiting

    def _open(self, start_at_end: bool) -> bool:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - kept open to follow renames
        except FileNotFoundError:
            self._from_start = True
            return False
        st = os.fstat(fh.fileno())
        inode, offset = self._resume
        self._resume = (None, None)
        if inode == st.st_ino and offset is not None and offset <= st.st_size:
            fh.seek(offset)
        elif start_at_end and inode is None and not self._from_start:
            fh.seek(0, os.SEEK_END)
        self._fh, self.inode, self.offset, self._partial = fh, st.st_ino, fh.tell(), b""
        self._rotated = self._behind = False
        return True

    def read(self) -> list[str]:
        """Lines appended since the last call; the first call starts at the end of the file
        (or at the saved offset of the same inode): history before the agent is not read."""
        lines: list[str] = []
        if self._fh is None and not self._open(start_at_end=True):
            return lines
        lines += self._drain()
        if self._behind:  # the rest of this file first: a rotation waits until it is read
            return lines
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return lines
        if st.st_ino != self.inode:  # rotated: the old file is drained, the new read from 0
            if not self._rotated:
                self._rotated = True
                return lines
            self.close()
            if self._open(start_at_end=False):
                lines += self._drain()
        elif st.st_size < self.offset:  # truncated in place
            self._fh.seek(0)
            self.offset, self._partial = 0, b""
            lines += self._drain()
        return lines

    def _drain(self) -> list[str]:
        data = self._fh.read(MAX_READ)
        self.offset += len(data)
        self._behind = len(data) == MAX_READ
        chunks = (self._partial + data).split(b"\n")
        self._partial = chunks.pop()
        if len(self._partial) > MAX_LINE:
            self._partial = b""
        return [c.decode("utf-8", "replace") for c in chunks if len(c) <= MAX_LINE]

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class JournalReader:
    """sshd's journal entries since the last poll, resumed from the journal cursor."""

    def __init__(
        self, since: float, cursor: str | None = None, command: str = "journalctl"
    ) -> None:
        self.cursor = cursor
        self.since = since
        self.command = command
        #: The last read was cut short (time or lines): read on at the next tick.
        self.behind = False

    def args(self) -> list[str]:
        start = (
            ["--after-cursor", self.cursor] if self.cursor else ["--since", f"@{self.since:.0f}"]
        )
        return [self.command, "--no-pager", "--quiet", "-o", "json",
                "--output-fields=MESSAGE,_PID,SYSLOG_PID", "-t", "sshd", "-t", "sshd-session",
                *start]  # fmt: skip

    def read(
        self, timeout_s: float = JOURNAL_TIMEOUT_S, max_lines: int = JOURNAL_MAX_LINES
    ) -> list[SshEvent]:
        """The entries since the cursor, read as ``journalctl`` prints them, for at most
        ``timeout_s`` and ``max_lines``: it runs in the agent's loop, so a journalctl that
        hangs, or a backlog after a long stop (hours of a brute force), must not hold
        sampling and scoring. Cut short, the cursor is the last entry read and
        :attr:`behind` says to read on at the next tick; nothing read before the time is up
        is an ``OSError`` (counted as a failure)."""
        self.behind = False
        proc = subprocess.Popen(
            self.args(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        assert proc.stdout is not None and proc.stderr is not None
        events: list[SshEvent] = []
        lines, rest, cut = 0, b"", ""
        deadline = time.monotonic() + timeout_s
        try:
            fd = proc.stdout.fileno()
            os.set_blocking(fd, False)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    cut = f"no end within {timeout_s:g} s"
                    break
                if not select.select([fd], [], [], left)[0]:
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                *complete, rest = (rest + chunk).split(b"\n")
                for raw in complete:
                    event, cursor = parse_journal_entry(raw.decode("utf-8", "replace"))
                    self.cursor = cursor or self.cursor
                    if event is not None:
                        events.append(event)
                lines += len(complete)
                if lines >= max_lines:
                    cut = f"{lines} entries read, the rest at the next tick"
                    break
                if len(rest) > 1 << 20:  # one entry this long is no sshd message
                    rest = b""
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            err = proc.stderr.read(4096).decode("utf-8", "replace").strip()
            proc.stdout.close()
            proc.stderr.close()
        if cut:
            if not lines:
                raise OSError(f"journalctl gave {cut}")
            self.behind = True
            return events
        if proc.returncode != 0:
            raise OSError(f"journalctl exited {proc.returncode}: {err[:200]}")
        return events


# -- log files ---------------------------------------------------------------------------------

#: A date stamp after a separator: logrotate's ``dateext``/``dateformat`` (``-20261203``,
#: ``.2026-12-03``, ``-20261203-1764720000``), Python's TimedRotatingFileHandler
#: (``.2026-12-03``, ``.2026-12-03_14``), log4j/logback (``.2026-12-03.0``)
_DATED = r"[-._]\d{4}-?\d{2}-?\d{2}(?:[-_T.]?\d{2}(?:[-:.]?\d{2}){0,2})?(?:[-.]\d+)?"
_SUFFIX = rf"\.\d+|-\d{{8,10}}|{_DATED}|\.old"
_ZIP = r"\.(?:gz|xz|bz2|zst|lz4|Z)"
_ROTATED = re.compile(
    rf"(?:{_SUFFIX})(?:{_ZIP})?$|{_ZIP}$|@.*\.journal~?$"
    # the date before the extension (logrotate's ``extension .log``, apps that write one
    # file a day): ``app-2026-12-03.log``, ``app.2026-12-03.0.log.gz``
    rf"|{_DATED}\.(?:log|txt|json)(?:{_ZIP})?$"
)
_COMPRESSED = (".gz", ".xz", ".bz2", ".zst", ".lz4", ".Z")


def is_rotated_name(name: str) -> bool:
    """A rotated or archived log (``syslog.1``, ``dpkg.log.2.gz``, ``btmp-20261201``).

    >>> [is_rotated_name(n) for n in ("syslog", "syslog.1", "auth.log-20261203.gz", "wtmp")]
    [False, True, True, False]
    """
    return bool(_ROTATED.search(name))


def rotated_sibling_of(live: str, name: str) -> bool:
    """``name`` is what rotating ``live`` leaves in the same folder."""
    if not name.startswith(live) or name == live:
        return False
    rest = name[len(live) :]
    for ext in _COMPRESSED:
        rest = rest.removesuffix(ext)
    return bool(re.fullmatch(_SUFFIX, rest))


@dataclass(frozen=True)
class FileState:
    inode: int
    size: int
    ctime: float


@dataclass(frozen=True)
class LogChange:
    """A live log that lost content: ``shrunk`` (in place or replaced) or ``vanished``."""

    path: str
    kind: str
    size_before: int
    size_after: int | None


#: Folders not watched: journald rotates and vacuums its own files; sysstat reuses its
#: binary ``saDD`` files every month.
SKIP_DIRS = ("journal", "sysstat", "sa")


def scan_logs(root: Path, skip: Iterable[str] = SKIP_DIRS) -> dict[str, FileState]:
    """Regular files under ``root`` (bounded in count and depth; unreadable folders skipped)."""
    found: dict[str, FileState] = {}
    skipped = set(skip)
    todo: list[tuple[Path, int]] = [(root, 0)]
    while todo and len(found) < MAX_FILES:
        folder, depth = todo.pop()
        try:
            entries = list(os.scandir(folder))
        except (PermissionError, FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                if depth + 1 < MAX_DEPTH and entry.name not in skipped:
                    todo.append((Path(entry.path), depth + 1))
            elif stat.S_ISREG(st.st_mode) and len(found) < MAX_FILES:
                found[entry.path] = FileState(st.st_ino, st.st_size, st.st_ctime)
    return found


def log_changes(
    before: dict[str, FileState], after: dict[str, FileState], since: float
) -> list[LogChange]:
    """Live logs of ``before`` that shrank or vanished by ``after``, rotation excluded.

    Rotation is: the old inode, at least as large, now under a rotated name (inode numbers
    are reused at once, so the inode alone proves nothing), or a rotated sibling of the file
    that is new or changed (ctime) since ``since``, the previous scan.
    """
    inodes: dict[int, list[tuple[str, FileState]]] = {}
    for p, s in after.items():
        inodes.setdefault(s.inode, []).append((p, s))
    changes: list[LogChange] = []
    for path, old in before.items():
        name = os.path.basename(path)
        if is_rotated_name(name) or old.size == 0:
            continue
        new = after.get(path)
        if new is not None and new.inode == old.inode and new.size >= old.size:
            continue
        if new is not None and new.inode != old.inode and new.size >= old.size:
            continue  # replaced by a file holding at least as much: nothing was lost
        if any(
            s.size >= old.size and is_rotated_name(os.path.basename(p))
            for p, s in inodes.get(old.inode, [])
        ):
            continue
        folder = os.path.dirname(path)
        if any(
            os.path.dirname(p) == folder
            and rotated_sibling_of(name, os.path.basename(p))
            and (p not in before or s.ctime >= since - 1.0)
            for p, s in after.items()
        ):
            continue
        kind = "vanished" if new is None else "shrunk"
        changes.append(LogChange(path, kind, old.size, None if new is None else new.size))
    return changes


#: logrotate's status files (Debian/Ubuntu, RHEL/Fedora, older): the time it last rotated
#: each log, written when a run ends
LOGROTATE_STATUS = (
    Path("/var/lib/logrotate/status"),
    Path("/var/lib/logrotate/logrotate.status"),
    Path("/var/lib/logrotate.status"),
)
#: How long before a log lost content logrotate may have recorded rotating it (it records
#: the time its run started; a long run reaches a log late), and the longest a loss is held
#: unreported while logrotate runs (it writes its status when it ends)
LOGROTATE_WINDOW_S = 3600.0
_STATUS_LINE = re.compile(
    r'"((?:[^"\\]|\\.)*)" (\d{4})-(\d{1,2})-(\d{1,2})-(\d{1,2}):(\d{1,2}):(\d{1,2})'
)


def logrotate_rotations(files: Iterable[Path]) -> dict[str, float]:
    """``{path: time logrotate last rotated it}`` from its status files (unreadable: none).

    >>> import tempfile; f = Path(tempfile.mkdtemp()) / "status"
    >>> _ = f.write_text('state -- version 2\\n"/var/log/a \\\\"b\\\\"" 2026-12-3-0:0:0\\n')
    >>> list(logrotate_rotations([f]))
    ['/var/log/a "b"']
    """
    found: dict[str, float] = {}
    for path in files:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                text = fh.read(MAX_READ * 4)
        except OSError:
            continue
        for line in text.splitlines():
            m = _STATUS_LINE.fullmatch(line.rstrip())
            if m is None:
                continue
            y, mo, d, h, mi, sec = (int(x) for x in m.groups()[1:])
            try:  # logrotate writes local time
                when = time.mktime((y, mo, d, h, mi, sec, 0, 0, -1))
            except (OverflowError, ValueError):
                continue
            name = os.path.normpath(re.sub(r"\\(.)", r"\1", m.group(1)))
            found[name] = max(when, found.get(name, when))
    return found


def logrotate_running(proc: Path = Path("/proc")) -> bool:
    """A ``logrotate`` process runs (its status is not written yet)."""
    try:
        entries = list(os.scandir(proc))
    except OSError:
        return False
    for entry in entries:
        if entry.name.isdigit():
            try:
                with open(os.path.join(entry.path, "comm"), "rb") as fh:
                    if fh.read(32).strip() == b"logrotate":
                        return True
            except OSError:
                continue
    return False


def rotated_by_logrotate(rotations: dict[str, float], path: str, since: float) -> bool:
    """logrotate recorded rotating ``path`` within :data:`LOGROTATE_WINDOW_S` before
    ``since`` (the scan before the loss was seen) or after it."""
    for name in {os.path.normpath(path), os.path.realpath(path)}:
        when = rotations.get(name)
        if when is not None and when >= since - LOGROTATE_WINDOW_S:
            return True
    return False


# -- the agent's part --------------------------------------------------------------------------


def _bounded(items: Iterable[Any]) -> list[Any]:
    return sorted(items)[:MAX_ENTRIES]


def checked_state(doc: Any) -> dict[str, Any]:
    """The saved state with every field's type checked (ValueError names the bad one);
    ``{}`` for another version, which is learnt again."""
    if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
        return {}

    def strings(key: str) -> list[str]:
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise ValueError(f"{key}: expected a list of strings")
        return value

    def optional_int(where: dict[str, Any], key: str) -> int | None:
        value = where.get(key)
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ValueError(f"{key}: expected a non-negative integer")
        return value

    out: dict[str, Any] = {"version": STATE_VERSION}
    started = doc.get("learn_started")
    if not isinstance(started, (int, float)) or started != started:
        raise ValueError("learn_started: expected a number")
    out["learn_started"] = float(started)
    for key in ("listen_ports", "listen_reported"):
        ports = doc.get(key, [])
        if not isinstance(ports, list) or not all(
            isinstance(x, list)
            and len(x) == 2
            and x[0] in ("tcp", "udp")
            and isinstance(x[1], int)
            and not isinstance(x[1], bool)
            and 0 < x[1] < 65536
            for x in ports
        ):
            raise ValueError(f"{key}: expected [proto, port] pairs")
        out[key] = ports
    for key in ("ssh_sources", "ssh_reported", "log_rewriting"):
        out[key] = strings(key)
    auth = doc.get("auth_log")
    if auth is not None:
        if not isinstance(auth, dict) or not isinstance(auth.get("path"), str):
            raise ValueError("auth_log: expected {path, inode, offset}")
        out["auth_log"] = {
            "path": auth["path"],
            "inode": optional_int(auth, "inode"),
            "offset": optional_int(auth, "offset"),
        }
    cursor = doc.get("journal_cursor")
    if cursor is not None and not isinstance(cursor, str):
        raise ValueError("journal_cursor: expected a string")
    out["journal_cursor"] = cursor
    return out


class HostSignals:
    """Reads the three signals every tick; learns their baselines for ``learn_for``."""

    def __init__(
        self,
        data_dir: Path,
        learn_for: float,
        event_log: Path | None,
        host: str,
        clock: Callable[[], float],
        auth_log: Path | None = None,
        log_dir: Path | None = Path("/var/log"),
        read_ports: Callable[[], dict[Port, str]] | None = None,
        journal: bool | None = None,
        logrotate_status: Iterable[Path] = LOGROTATE_STATUS,
    ) -> None:
        self.path = data_dir / STATE_NAME
        self.logrotate_status = tuple(logrotate_status)
        #: Losses not explained yet, held while logrotate runs: (change, previous scan)
        self._held: dict[str, tuple[LogChange, float]] = {}
        self.learn_for = learn_for
        self.event_log = event_log
        self.host = host
        self.clock = clock
        self.errors: Counter[str] = Counter()
        self.ephemeral = ephemeral_range()
        self._read_ports = read_ports
        state = self._load()
        now = clock()
        self.learn_started = float(state.get("learn_started", now))
        self.known_ports: set[Port] = {(p, int(n)) for p, n in state.get("listen_ports", [])}
        self.known_sources: set[str] = set(state.get("ssh_sources", []))
        self.reported_sources: set[str] = set(state.get("ssh_reported", []))
        self.rewriting: set[str] = set(state.get("log_rewriting", []))
        self.new_ports: dict[Port, str] = {}
        #: New ports already reported, while they stay open; saved, so a restart does not
        #: report them again
        self.reported_ports: set[Port] = {(p, int(n)) for p, n in state.get("listen_reported", [])}
        #: The agent's own listening ports (its exporter's): never learnt, never reported
        self.own: set[Port] = set()
        self.failed_total = 0
        self.new_source_total = 0
        self.truncations: Counter[str] = Counter({"shrunk": 0, "vanished": 0})
        self._failed_recent: deque[tuple[float, int]] = deque()
        self._failed_sources: Counter[str] = Counter()
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._failures = FailureCounter()
        # where SSH logins come from: the configured file, the journal, else a syslog file
        self.ssh_source: str | None = None
        self._follower: LogFollower | None = None
        self._journal: JournalReader | None = None
        self._next_journal = now
        saved = state.get("auth_log") or {}
        uses_journal = (
            journal
            if journal is not None
            else JOURNAL_SOCKET.exists() and shutil.which("journalctl") is not None
        )
        if auth_log is None and uses_journal:
            self._journal = JournalReader(now, state.get("journal_cursor"))
            self.ssh_source = "journal"
        else:
            path = auth_log or next((p for p in AUTH_LOGS if p.exists()), None)
            if path is not None:
                same = saved.get("path") == str(path)
                self._follower = LogFollower(
                    path,
                    saved.get("inode") if same else None,
                    saved.get("offset") if same else None,
                )
                self.ssh_source = str(path)
        self.log_dir = log_dir
        self._files: dict[str, FileState] | None = None
        self._last_scan = now
        self._dirty = "learn_started" not in state
        self._was_learning = self.learning(now)
        self._saved_at = now
        #: No save before this time: a disk that refused the last one (full) is tried again
        #: once a minute, not every tick (a WARNING and an error each time)
        self._save_retry_at = now

    # -- state ----------------------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:  # unreadable: relearn rather than stop
            log.warning("%s unreadable (%s): learning host signals again", self.path, exc)
            return {}
        try:
            return checked_state(doc)
        except (TypeError, ValueError) as exc:  # edited or damaged: relearn rather than stop
            log.warning("%s: %s: learning host signals again", self.path, exc)
            return {}

    def save(self) -> None:
        """Write baselines and read positions atomically (0600: it holds source addresses)."""
        doc: dict[str, Any] = {
            "version": STATE_VERSION,
            "learn_started": self.learn_started,
            "learned": not self.learning(),
            "listen_ports": [list(p) for p in _bounded(self.known_ports)],
            "listen_reported": [list(p) for p in _bounded(self.reported_ports)],
            "ssh_sources": _bounded(self.known_sources),
            "ssh_reported": _bounded(self.reported_sources),
            "log_rewriting": _bounded(self.rewriting),
        }
        if self._follower is not None:
            f = self._follower
            doc["auth_log"] = {"path": str(f.path), "inode": f.inode, "offset": f.offset}
        if self._journal is not None:
            doc["journal_cursor"] = self._journal.cursor
        try:
            atomic_write(self.path, json.dumps(doc, indent=1), mode=0o600)
        except OSError as exc:
            self._save_retry_at = self.clock() + SAVE_EVERY_S
            self._fail("host_signals", exc)
            return
        self._dirty, self._saved_at = False, self.clock()

    def own_ports(self, ports: Iterable[int], proto: str = "tcp") -> None:
        """The agent's own listening ports of ``proto`` (its exporter's, known once bound, a
        random one with ``--port 0``): never learnt, never reported. Replaces those given
        before for ``proto``; the ports are dropped from the new ones at once."""
        self.own = {p for p in self.own if p[0] != proto} | {(proto, int(n)) for n in ports}
        self.new_ports = {k: a for k, a in self.new_ports.items() if k not in self.own}

    def learning(self, now: float | None = None) -> bool:
        return (self.clock() if now is None else now) - self.learn_started < self.learn_for

    # -- one tick -------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        learning = self.learning(now)
        if not learning and self._was_learning:
            self._dirty = True  # the baselines are complete: saved at once, marked learned
            log.info(
                "host signals learned on %s: %d listening ports, %d SSH sources, %d logs that "
                "rewrite themselves",
                self.host,
                len(self.known_ports),
                len(self.known_sources),
                len(self.rewriting),
            )
        self._was_learning = learning
        self._ports(now, learning)
        self._ssh(now, learning)
        self._logs(now, learning)
        if (self._dirty or now - self._saved_at >= SAVE_EVERY_S) and now >= self._save_retry_at:
            self.save()

    def _fail(self, stage: str, exc: BaseException) -> None:
        self.errors[stage] += 1
        log.warning("%s failed: %s", stage, exc)

    def _ports(self, now: float, learning: bool) -> None:
        try:
            if self._read_ports is not None:
                ports = self._read_ports()
            else:
                try:
                    ports = listening_ports_netlink()
                except OSError:
                    ports = listening_ports_proc()
        except (OSError, ValueError) as exc:
            self._fail("listen_ports", exc)
            return
        current = {k: a for k, a in services(ports, self.ephemeral).items() if k not in self.own}
        if learning:
            added = set(current) - self.known_ports
            if added and len(self.known_ports) < MAX_ENTRIES:
                self.known_ports |= added
                self._dirty = True
            self.new_ports = {}
            return
        self.new_ports = {k: a for k, a in current.items() if k not in self.known_ports}
        for key in sorted(set(self.new_ports) - self.reported_ports):
            proto, port = key
            self._finding(
                now,
                "new_listen_port",
                f"{proto} port {port} listening on {self.new_ports[key]}, never seen while "
                "learning",
                proto=proto,
                port=port,
                address=self.new_ports[key],
            )
        reported = set(self.new_ports)  # a port that closes and reopens is new again
        if reported != self.reported_ports:
            self.reported_ports = reported
            self._dirty = True  # saved at once: a restart does not report them again

    def _ssh(self, now: float, learning: bool) -> None:
        events: list[SshEvent] = []
        try:
            if self._follower is not None:
                events = [e for line in self._follower.read() if (e := parse_sshd_line(line))]
            elif self._journal is not None and now >= self._next_journal:
                self._next_journal = now + JOURNAL_EVERY_S
                events = self._journal.read()
                if self._journal.behind:  # a backlog: read on at the next tick
                    self._next_journal = now
                self._dirty = True
        except (OSError, subprocess.SubprocessError) as exc:
            self._fail("ssh_log", exc)
        tick_attempts = 0
        for event in events:
            attempts = self._failures.attempts(event)
            if attempts:
                tick_attempts += attempts
                if event.source in self._failed_sources or len(self._failed_sources) < 1000:
                    self._failed_sources[event.source] += attempts
            if event.kind != "accepted" or event.source == "unknown":
                continue
            if learning:
                if event.source not in self.known_sources and len(self.known_sources) < MAX_ENTRIES:
                    self.known_sources.add(event.source)
                    self._dirty = True
            elif event.source not in self.known_sources | self.reported_sources:
                self.reported_sources.add(event.source)
                self.new_source_total += event.count
                self._dirty = True
                self._finding(
                    now,
                    "ssh_login_new_source",
                    f"SSH login of {json.dumps(event.user)} from {event.source}, a source "
                    "never seen while learning",
                    user=event.user,
                    source=event.source,
                )
        if tick_attempts:  # one entry a tick: a burst of many lines costs no memory
            self.failed_total += tick_attempts
            self._failed_recent.append((now, tick_attempts))
        while self._failed_recent and self._failed_recent[0][0] <= now - 60.0:
            self._failed_recent.popleft()

    def _logs(self, now: float, learning: bool) -> None:
        if self.log_dir is None:
            return
        try:
            files = scan_logs(self.log_dir)
        except OSError as exc:
            self._fail("log_watch", exc)
            return
        before, self._files = self._files, files
        since, self._last_scan = self._last_scan, now
        if before is None:
            return
        for change in self._not_logrotate(now, log_changes(before, files, since), since):
            if learning:
                if len(self.rewriting) < MAX_ENTRIES:
                    self.rewriting.add(change.path)
                    self._dirty = True
                continue
            if change.path in self.rewriting:
                continue
            self.truncations[change.kind] += 1
            after = "gone" if change.size_after is None else f"{change.size_after} bytes"
            self._finding(
                now,
                "log_truncated",
                f"log {json.dumps(change.path)} {change.kind} ({change.size_before} bytes -> "
                f"{after}) without rotation",
                path=change.path,
                kind=change.kind,
                size_before=change.size_before,
                size_after=change.size_after,
            )

    def _not_logrotate(self, now: float, changes: list[LogChange], since: float) -> list[LogChange]:
        """The losses logrotate did not make: its rotations that leave no trace the scan
        sees (``rotate 0``, ``olddir``, ``extension``, a ``dateformat`` of its own) are in
        its status file; a loss seen while logrotate runs waits (at most
        :data:`LOGROTATE_WINDOW_S`) until it has written it."""
        for change in changes:
            self._held.setdefault(change.path, (change, since))
        if not self._held:
            return []
        running = logrotate_running()  # before reading the status: it is final once ended
        rotations = logrotate_rotations(self.logrotate_status)
        out: list[LogChange] = []
        for path, (change, seen) in list(self._held.items()):
            if rotated_by_logrotate(rotations, path, seen):
                del self._held[path]
            elif not running or now - seen >= LOGROTATE_WINDOW_S:
                del self._held[path]
                out.append(change)
        return out

    def _finding(self, now: float, event: str, text: str, **fields: Any) -> None:
        """A WARNING, an event line (``DATA_DIR/events.jsonl``) and a row for the evidence."""
        log.warning("host signal on %s: %s", self.host, text)
        row = {"event": event, "host": self.host, "time": now, **fields}
        self.recent.append(row)
        if self.event_log is None:
            return
        try:
            fd = os.open(self.event_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row, sort_keys=True) + "\n")
        except OSError as exc:
            self.errors["event_log"] += 1
            log.warning("event_log failed: %s", exc)

    # -- outputs --------------------------------------------------------------------------

    def failed_per_minute(self) -> int:
        return sum(n for _, n in self._failed_recent)

    def snapshot_fields(self) -> dict[str, Any]:
        """The :class:`~minerwatch.service.state.AgentSnapshot` fields of these signals."""
        ssh = self.ssh_source is not None
        return {
            "new_listen_ports": {
                proto: sum(1 for p, _ in self.new_ports if p == proto) for proto in ("tcp", "udp")
            },
            "ssh_failed_logins_per_minute": float(self.failed_per_minute()) if ssh else None,
            "ssh_failed_logins_total": self.failed_total if ssh else None,
            "ssh_new_source_logins_total": self.new_source_total if ssh else None,
            "log_truncations_total": dict(self.truncations) if self.log_dir is not None else {},
        }

    def evidence_section(self) -> dict[str, Any]:
        """What the evidence file says about these signals (it is 0600: addresses are fine)."""
        return {
            "learning": self.learning(),
            "learned_listen_ports": len(self.known_ports),
            "new_listen_ports": [
                {"proto": p, "port": n, "address": a}
                for (p, n), a in sorted(self.new_ports.items())
            ],
            "ssh_source": self.ssh_source,
            "ssh_failed_logins_last_minute": self.failed_per_minute(),
            "ssh_failed_logins_total": self.failed_total,
            "ssh_failed_top_sources": [
                {"source": s, "attempts": n} for s, n in self._failed_sources.most_common(10)
            ],
            "ssh_learned_sources": len(self.known_sources),
            "log_dir": None if self.log_dir is None else str(self.log_dir),
            "recent": list(self.recent),
        }

    def close(self) -> None:
        self.save()
        if self._follower is not None:
            self._follower.close()


def iter_events(path: Path) -> Iterator[dict[str, Any]]:
    """Host-signal lines of an event log (for tests and reports)."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if row.get("event") in EVENTS:
                yield row
