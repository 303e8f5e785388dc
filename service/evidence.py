"""Evidence files: one JSON snapshot per alert episode, for the person who has to respond.

An alert is only useful if someone can act on it after the miner has moved on, so at the
first alert of an episode the agent freezes what a responder would ask first: which
processes, from which binary (and its sha256, read through ``/proc/<pid>/exe`` so a binary
deleted from disk still hashes), started by whom and from where, talking to what; plus the
usual persistence spots (crontabs, systemd units changed recently, ``/etc/ld.so.preload``)
and who is logged in.

Files hold command lines and paths, so they are written 0600 into a 0700 directory,
atomically (temp file, fsync, ``os.replace``), bounded in size (sections are cut, and named
in ``truncated``) and in rate (one per episode, at most one per ``min_interval_s``, at most
``max_files`` kept). A file a full disk refuses (``ENOSPC``, ``EDQUOT``) is kept in memory,
at most :data:`MAX_PENDING` of them, and written at a later tick once the disk has room
(:meth:`EvidenceWriter.flush`): what was collected when the alert opened is what lands.
Nothing about one item (a vanished process, an unreadable crontab)
stops the rest: the error is recorded in the file instead.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import logging
import math
import os
import re
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import psutil

from minerwatch.features.atomic import atomic_write
from minerwatch.features.errors import InputError
from minerwatch.features.numbers import finite_or_none
from minerwatch.features.proctable import ProcessRecord, ProcessTable, same_start
from minerwatch.service.config import agent_files_config
from minerwatch.service.indicators import IndicatorHit, preload_entries
from minerwatch.service.packages import DPKG_INFO, package_record, read_digest
from minerwatch.service.terminal import printable
from minerwatch.service.timefmt import utc_iso

log = logging.getLogger("minerwatch.evidence")

DEFAULT_DIR = Path("/var/lib/minerwatch/evidence")
#: Evidence files a full disk refused, kept in memory until it has room (each at most
#: ``max_bytes_per_file``: 8 MiB at the default); beyond, the oldest is given up (logged).
MAX_PENDING = 8
#: Errors of a disk that may gain room again; any other failure to write is not retried.
FULL_DISK = frozenset({errno.ENOSPC, errno.EDQUOT})
FORMAT = "minerwatch-evidence"
FORMAT_VERSION = 1

_MIB = 1 << 20
_MAX_PROCESSES = 10
_MAX_PARENTS = 32
_MAX_CONNECTIONS = 64
_MAX_LISTENING = 256
_MAX_FILES_PER_SECTION = 500
_MAX_WALK = 20_000
_MAX_ARG_CHARS = 1024
_MAX_CMDLINE_ARGS = 64
_MAX_PRELOAD_ENTRIES = 16
_SMALL_FILE = 16 * 1024
_SAFE_ID = re.compile(r"[^A-Za-z0-9_.-]")

#: Sections cut first when a file would exceed its size bound (most to least expendable).
_SHRINK_ORDER = (
    "errors",
    "host_signals",
    "systemd_units",
    "persistence",
    "crontabs",
    "init_scripts",
    "listening",
    "logged_in",
    "explanation",
    "processes",
    "indicators",
    "features",
    "authorized_keys",
    "ld_so_preload",
)
#: Heavy per-item keys dropped before a list is halved.
_HEAVY_KEYS = ("content", "connections", "parents", "cmdline")
_CUT = "[truncated]"


@dataclass(frozen=True)
class HostPaths:
    """Where the host keeps what we collect; tests point these into a temp dir."""

    proc: Path = Path("/proc")
    crontab: Path = Path("/etc/crontab")
    cron_dirs: tuple[Path, ...] = (
        Path("/etc/cron.d"),
        Path("/var/spool/cron"),
        Path("/etc/cron.hourly"),
        Path("/etc/cron.daily"),
        Path("/etc/cron.weekly"),
        Path("/etc/cron.monthly"),
    )
    systemd_dirs: tuple[Path, ...] = (
        Path("/etc/systemd/system"),
        Path("/lib/systemd/system"),
        Path("/usr/lib/systemd/system"),
        Path("/run/systemd/system"),
    )
    #: ``<root>`` and each ``<root>/*`` is a home; its ``.config/systemd/user`` is scanned.
    home_roots: tuple[Path, ...] = (Path("/root"), Path("/home"))
    ld_so_preload: Path = Path("/etc/ld.so.preload")
    init_dirs: tuple[Path, ...] = (Path("/etc/init.d"), Path("/etc/rc.local"))
    #: Debian's database of installed files (which package shipped a process's binary).
    dpkg_info: Path = DPKG_INFO

    @classmethod
    def under(cls, root: Path) -> HostPaths:
        """Every file path below ``root`` instead of ``/`` (``/proc`` stays the live one):
        ``[respond] host_root``, so tests read a folder they made."""
        if Path(root) == Path("/"):
            return cls()
        base = cls()

        def moved(p: Path) -> Path:
            return Path(root) / p.relative_to("/")

        return cls(
            proc=base.proc,
            crontab=moved(base.crontab),
            cron_dirs=tuple(map(moved, base.cron_dirs)),
            systemd_dirs=tuple(map(moved, base.systemd_dirs)),
            home_roots=tuple(map(moved, base.home_roots)),
            ld_so_preload=moved(base.ld_so_preload),
            init_dirs=tuple(map(moved, base.init_dirs)),
            dpkg_info=moved(base.dpkg_info),
        )

    def cron_files(self, errors: list[str] | None = None) -> Iterator[Path]:
        """The crontab and every file under the cron folders (``errors``: see walk_files)."""
        yield self.crontab
        for d in self.cron_dirs:
            yield from walk_files(d, errors)

    def init_files(self) -> Iterator[Path]:
        """Init scripts (folders walked, single files such as ``rc.local`` as they are)."""
        for d in self.init_dirs:
            yield from walk_files(d) if d.is_dir() else iter([d] if os.path.lexists(d) else [])

    def unit_files(self, errors: list[str] | None = None) -> Iterator[Path]:
        """System unit files and every home's user units, each folder once (``errors``: see
        walk_files)."""
        seen: set[str] = set()
        dirs = list(self.systemd_dirs)
        for root in self.home_roots:
            dirs.append(root / ".config/systemd/user")
            try:
                dirs.extend(h / ".config/systemd/user" for h in sorted(root.iterdir()))
            except OSError:
                continue
        for d in dirs:
            try:
                real = os.path.realpath(d)
            except OSError:
                continue
            if real in seen:
                continue
            seen.add(real)
            yield from walk_files(d, errors)

    def authorized_keys(self) -> Iterator[Path]:
        """``.ssh/authorized_keys`` (and ``authorized_keys2``) of every home that has one."""
        for root in self.home_roots:
            try:
                homes = [root, *sorted(h for h in root.iterdir() if h.is_dir())]
            except OSError:
                continue
            for home in homes:
                for name in ("authorized_keys", "authorized_keys2"):
                    path = home / ".ssh" / name
                    if path.is_file():
                        yield path


def _clean(value: str, limit: int = _MAX_ARG_CHARS) -> str:
    """Make process-supplied text safe for JSON readers: undecodable bytes shown as \\xNN."""
    text = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text if len(text) <= limit else text[:limit] + "...[cut]"


def _err(exc: BaseException) -> str:
    return _clean(f"{type(exc).__name__}: {exc}", 300)


def _iso(ts: float) -> str:
    return utc_iso(ts)


def _addr(a: Any) -> str:
    if not a:
        return ""
    return f"[{a.ip}]:{a.port}" if ":" in a.ip else f"{a.ip}:{a.port}"


def hash_file(path: Path, cap_bytes: int) -> dict[str, Any]:
    """sha256 and size of a file, or the reason there is none (too big, unreadable, not a
    regular file; read as :func:`~minerwatch.service.packages.read_digest` reads)."""
    digest, size, why = read_digest(path, hashlib.sha256(), cap_bytes)
    if digest is None:
        sized = {} if size is None else {"size": size}
        return {"sha256": None, **sized, "hash_error": _clean(why, 300)}
    return {"sha256": digest, "size": size}


def fit_to_size(doc: dict[str, Any], max_bytes: int) -> bytes:
    """Serialise ``doc``, cutting sections in :data:`_SHRINK_ORDER` until it fits.

    Cut sections are listed in ``doc["truncated"]``; the header fields are never cut.
    """
    doc.setdefault("truncated", [])
    data = _dumps(doc)
    for key in _SHRINK_ORDER:
        while len(data) > max_bytes:
            smaller = _shrink(doc.get(key))
            if smaller is None:
                break
            doc[key] = smaller
            if key not in doc["truncated"]:
                doc["truncated"].append(key)
            data = _dumps(doc)
    if len(data) > max_bytes:
        raise ValueError(f"evidence header alone exceeds {max_bytes} bytes")
    return data


def _shrink(value: Any) -> Any | None:
    """One step smaller, or None when nothing is left to cut."""
    if isinstance(value, list):
        for heavy in _HEAVY_KEYS:
            if any(_is_heavy(i, heavy) for i in value):
                return [{**i, heavy: _CUT} if _is_heavy(i, heavy) else i for i in value]
        return value[: len(value) // 2] if value else None
    if isinstance(value, dict):
        return {} if value else None
    if isinstance(value, str):
        return "" if value else None
    return None


def _is_heavy(item: Any, key: str) -> bool:
    return isinstance(item, dict) and bool(item.get(key)) and item[key] != _CUT


def _dumps(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, indent=1, default=str, allow_nan=False).encode("ascii")


class EvidenceWriter:
    """Writes one bounded, owner-only evidence file per alert episode.

    Call :meth:`write` on every alerting window of an episode: it writes at the first call
    that is allowed by the rate limit and returns None for the rest.

    >>> import tempfile
    >>> w = EvidenceWriter(Path(tempfile.mkdtemp()) / "ev", min_interval_s=0)
    >>> p = w.write("ep1", 0.9, 0.7, {"cpu_percent": 97.0}, [], [], [])
    >>> oct(p.stat().st_mode & 0o777), w.write("ep1", 0.9, 0.7, {}, [], [], []) is None
    ('0o600', True)
    """

    def __init__(
        self,
        dir: Path,
        max_bytes_per_file: int = _MIB,
        max_files: int = 200,
        min_interval_s: float = 300.0,
        clock: Callable[[], float] = time.time,
        paths: HostPaths = HostPaths(),  # noqa: B008 - frozen dataclass, safe as a default
        recent_days: float = 7.0,
        hash_cap_bytes: int = 256 * _MIB,
        users: Callable[[], Sequence[Any]] = psutil.users,
        net_connections: Callable[..., Sequence[Any]] = psutil.net_connections,
        hostname: str = "",
    ) -> None:
        if max_bytes_per_file < 4096:
            raise ValueError("max_bytes_per_file must be at least 4096")
        if max_files < 1:
            raise ValueError("max_files must be at least 1")
        self.dir = Path(dir)
        self.max_bytes_per_file = max_bytes_per_file
        self.max_files = max_files
        self.min_interval_s = min_interval_s
        self.clock = clock
        self.paths = paths
        self.recent_days = recent_days
        self.hash_cap_bytes = hash_cap_bytes
        self.users = users
        self.net_connections = net_connections
        #: The host as the agent names it (``serve --host``), which the alerts and metrics
        #: carry; this machine's hostname when it has none.
        self.hostname = hostname or socket.gethostname()
        #: Reads the processes the file describes (and their ancestors) under ``paths.proc``.
        self.table = ProcessTable(paths.proc)
        self._last_write: float | None = None
        self._episodes: set[str] = set()
        #: Files a full disk refused, by path, oldest first: written by :meth:`flush`.
        self.pending: dict[Path, bytes] = {}
        #: Files a full disk refused since start (each once; the agent counts them as errors).
        self.refused_total = 0
        #: More sections by name, each built when a file is written (the agent adds its
        #: host signals: new listening ports, SSH logins, wiped logs).
        self.sections: dict[str, Callable[[], Any]] = {}

    # -- public ---------------------------------------------------------------------------

    def write(
        self,
        episode_id: str,
        score: float,
        threshold: float,
        features: Mapping[str, float],
        explanation: Sequence[Mapping[str, Any]],
        top_pids: Sequence[int],
        hits: Sequence[IndicatorHit],
    ) -> Path | None:
        """Collect and write the evidence for ``episode_id``; None if done or rate-limited."""
        safe_id = _SAFE_ID.sub("_", episode_id)[:64].lstrip(".") or "episode"
        now = self.clock()
        if safe_id in self._episodes:
            return None
        if self._last_write is not None and now - self._last_write < self.min_interval_s:
            return None
        self._ensure_dir(keep=True)
        if any(self.dir.glob(f"*-{safe_id}.json")):
            self._episodes.add(safe_id)
            return None
        doc = self.collect(safe_id, now, score, threshold, features, explanation, top_pids, hits)
        data = fit_to_size(doc, self.max_bytes_per_file)
        path = self.dir / f"{datetime.fromtimestamp(now, UTC):%Y%m%dT%H%M%SZ}-{safe_id}.json"
        self.store(path, data)  # evidence: owner only
        self._last_write = now
        self._episodes.add(safe_id)
        return path

    def store(self, path: Path, data: bytes) -> bool:
        """Write ``data`` to ``path`` (0600, atomic) after the files still pending; True if
        written. A full disk's refusal keeps it in :attr:`pending` (the newest version of a
        file replaces one kept) for :meth:`flush`; any other failure raises ``OSError``."""
        self.flush()
        if not self.pending:
            try:
                self._ensure_dir()  # a full disk may refuse the folder too
                atomic_write(path, data, mode=0o600)
            except OSError as exc:
                if exc.errno not in FULL_DISK:
                    raise
                self._keep(path, data, exc)
                return False
            self._prune()
            return True
        self._keep(path, data, None)  # still full: in order, after the older ones
        return False

    def _keep(self, path: Path, data: bytes, exc: OSError | None) -> None:
        if not self.pending and exc is not None:  # said once per spell of a full disk
            log.warning(
                "evidence: the disk refused %s (%s): kept in memory and written as soon as "
                "the disk has room (at most %d files kept)", path, exc.strerror or exc,
                MAX_PENDING,
            )  # fmt: skip
        if self.pending.pop(path, None) is None:
            self.refused_total += 1
        self.pending[path] = data
        while len(self.pending) > MAX_PENDING:
            oldest = next(iter(self.pending))
            del self.pending[oldest]
            log.warning("evidence: %s given up: more than %d files waiting for a full disk",
                        oldest, MAX_PENDING)  # fmt: skip

    def flush(self) -> list[Path]:
        """Write the files a full disk refused, oldest first, if it has room now (a statvfs,
        nothing tried while it has not); the paths written. Called every tick."""
        if not self.pending:
            return []
        written: list[Path] = []
        for path, data in list(self.pending.items()):
            try:
                room = os.statvfs(self.dir if self.dir.exists() else self.dir.parent)
                if room.f_bavail * room.f_frsize < len(data) + 65536:
                    break
                self._ensure_dir()
                atomic_write(path, data, mode=0o600)
            except OSError as exc:
                if exc.errno in FULL_DISK:
                    break
                del self.pending[path]  # not a full disk: trying again would not help
                log.warning("evidence: %s could not be written (%s); given up", path, exc)
                continue
            del self.pending[path]
            written.append(path)
        if written:
            log.warning(
                "evidence: the disk has room again: wrote %d file(s) kept in memory (%s)%s",
                len(written), ", ".join(str(p) for p in written),
                f"; {len(self.pending)} still waiting" if self.pending else "",
            )  # fmt: skip
            self._prune()
        return written

    def collect(
        self,
        episode_id: str,
        now: float,
        score: float,
        threshold: float,
        features: Mapping[str, float],
        explanation: Sequence[Mapping[str, Any]],
        top_pids: Sequence[int],
        hits: Sequence[IndicatorHit],
    ) -> dict[str, Any]:
        """The evidence document as a dict (no size bound yet); public for inspection."""
        errors: list[str] = []
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "episode_id": episode_id,
            "written_at": now,
            "written_at_utc": _iso(now),
            "hostname": self.hostname,
            "score": finite_or_none(score),
            "threshold": finite_or_none(threshold),
            "features": {str(k): finite_or_none(v) for k, v in features.items()},
            "explanation": [dict(e) for e in explanation],
            "indicators": [h.as_dict() for h in hits],
            "processes": [self.process_record(pid) for pid in list(top_pids)[:_MAX_PROCESSES]],
            "listening": self._listening(errors),
            "crontabs": self._recent_files(self.paths.cron_files(), now, content=True),
            "systemd_units": self._recent_files(self.paths.unit_files(), now, content=True),
            "init_scripts": self._recent_files(self.paths.init_files(), now, content=True),
            # every key, however old: a key added long ago is still a way back in
            "authorized_keys": self._recent_files(self.paths.authorized_keys(), 0, content=True),
            "ld_so_preload": self._ld_so_preload(),
            "persistence": persistence_list(persistence_entries(self.paths)),
            "logged_in": self._logged_in(errors),
            **{name: section() for name, section in self.sections.items()},
            "errors": errors,
            "truncated": [],
        }

    # -- processes ------------------------------------------------------------------------

    def process_record(self, pid: int) -> dict[str, Any]:
        """Everything we can learn about one process; failures land in its ``errors``."""
        found = self.table.lookup(pid, cmdline=True)
        if found is None:
            return {"pid": pid, "error": f"NoSuchProcess: no process with pid {pid}"}
        rec: dict[str, Any] = {
            "pid": pid,
            "exe": _clean(found.exe, 4096),
            "exe_deleted": found.exe_deleted,
        }
        if found.loader:  # run as "ld-linux-x86-64.so.2 /dev/shm/x": exe is the program
            rec["loader"] = _clean(found.loader, 4096)
        if found.exe:  # through the link, so a binary deleted from disk still hashes
            running = self.paths.proc / str(pid) / found.image
            rec.update(hash_file(running, self.hash_cap_bytes))
            rec["package"] = package_record(
                found.exe, running, self.paths.dpkg_info, self.hash_cap_bytes, found.exe_deleted
            )
        rec.update(
            name=_clean(found.name),
            ppid=found.ppid,
            username=found.username,
            create_time=found.create_time,
            create_time_utc=_iso(found.create_time),
            cmdline=[_clean(a) for a in found.cmdline[:_MAX_CMDLINE_ARGS]],
        )
        errors: list[str] = []
        rec.update(self._live_details(found, errors))
        rec["parents"] = self._parents(found)
        rec["errors"] = errors
        return rec

    def _live_details(self, found: ProcessRecord, errors: list[str]) -> dict[str, Any]:
        """What a process record does not hold, from psutil; each look-up may fail alone."""
        try:
            proc = psutil.Process(found.pid)
            started = proc.create_time()
        except psutil.Error as exc:
            errors.append(f"details: {_err(exc)}")
            return {}
        if not same_start(started, found.create_time):
            errors.append("details: the pid now belongs to a newer process")
            return {}
        getters: dict[str, Callable[[], Any]] = {
            "uids": lambda: list(proc.uids()),
            "cwd": lambda: _clean(proc.cwd(), 4096),
            "status": proc.status,
            "num_threads": proc.num_threads,
            "connections": lambda: self._connections(proc),
        }
        out: dict[str, Any] = {}
        for key, getter in getters.items():
            try:
                out[key] = getter()
            except (psutil.Error, OSError) as exc:
                out[key] = None
                errors.append(f"{key}: {_err(exc)}")
        return out

    def _connections(self, proc: psutil.Process) -> list[dict[str, Any]]:
        conns = proc.net_connections(kind="inet")[:_MAX_CONNECTIONS]
        return [
            {
                "proto": "tcp" if c.type == socket.SOCK_STREAM else "udp",
                "local": _addr(c.laddr),
                "remote": _addr(c.raddr),
                "status": c.status,
            }
            for c in conns
        ]

    def _parents(self, child: ProcessRecord) -> list[dict[str, Any]]:
        """The ancestors up to pid 1, nearest first; stops where one is gone or replaced."""
        chain: list[dict[str, Any]] = []
        ppid, born = child.ppid, child.create_time
        while ppid > 0 and len(chain) < _MAX_PARENTS:
            parent = self.table.lookup(ppid, cmdline=True)
            if parent is None or parent.create_time > born:  # exited, its pid reused since
                break
            chain.append(
                {
                    "pid": parent.pid,
                    "exe": _clean(parent.exe, 4096),
                    "name": _clean(parent.name),
                    "username": parent.username,
                    "cmdline": [_clean(a, 256) for a in parent.cmdline[:16]],
                }
            )
            ppid, born = parent.ppid, parent.create_time
        return chain

    # -- host-wide sections ---------------------------------------------------------------

    def _listening(self, errors: list[str]) -> list[dict[str, Any]]:
        try:
            conns = self.net_connections(kind="inet")
        except (psutil.Error, OSError) as exc:
            errors.append(f"listening: {_err(exc)}")
            return []
        out: list[dict[str, Any]] = []
        names: dict[int, str] = {}
        for c in conns:
            tcp = c.type == socket.SOCK_STREAM
            if (tcp and c.status != psutil.CONN_LISTEN) or (not tcp and c.raddr):
                continue
            entry: dict[str, Any] = {"proto": "tcp" if tcp else "udp", "local": _addr(c.laddr)}
            if c.pid:
                entry["pid"] = c.pid
                if c.pid not in names:
                    owner = self.table.lookup(c.pid)
                    names[c.pid] = _clean(owner.name) if owner is not None else ""
                entry["name"] = names[c.pid]
            out.append(entry)
            if len(out) >= _MAX_LISTENING:
                break
        return sorted(out, key=lambda e: (e["proto"], e["local"]))

    def _recent_files(
        self, files: Iterator[Path], now: float, content: bool
    ) -> list[dict[str, Any]]:
        """Files modified within ``recent_days`` of ``now``: path, mtime, size, small content."""
        cutoff = now - self.recent_days * 86400 if now else -math.inf
        out: list[dict[str, Any]] = []
        for path in files:
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            except OSError as exc:
                out.append({"path": _clean(str(path), 4096), "error": _err(exc)})
                continue
            if st.st_mtime < cutoff:
                continue
            entry: dict[str, Any] = {
                "path": _clean(str(path), 4096),
                "mtime": st.st_mtime,
                "mtime_utc": _iso(st.st_mtime),
                "size": st.st_size,
                "mode": oct(stat.S_IMODE(st.st_mode)),
                "uid": st.st_uid,
            }
            if stat.S_ISLNK(st.st_mode):
                try:
                    entry["link_target"] = _clean(os.readlink(path), 4096)
                except OSError as exc:
                    entry["error"] = _err(exc)
            elif content and stat.S_ISREG(st.st_mode) and st.st_size <= _SMALL_FILE:
                try:
                    entry["content"] = _clean(path.read_text(errors="surrogateescape"), _SMALL_FILE)
                except OSError as exc:
                    entry["error"] = _err(exc)
            out.append(entry)
            if len(out) >= _MAX_FILES_PER_SECTION:
                break
        return sorted(out, key=lambda e: -float(e.get("mtime", 0.0)))

    def _ld_so_preload(self) -> dict[str, Any]:
        path = self.paths.ld_so_preload
        out: dict[str, Any] = {"path": str(path)}
        try:
            with open(path, "rb") as fh:
                raw = fh.read(_SMALL_FILE + 1)
        except FileNotFoundError:
            out["exists"] = False
            return out
        except OSError as exc:
            out["exists"] = None
            out["error"] = _err(exc)
            return out
        out["exists"] = True
        text = raw.decode("utf-8", "surrogateescape")
        out["content"] = _clean(text, _SMALL_FILE)
        libs = [e for e in preload_entries(text) if e.startswith("/")]
        out["entries"] = [self._preload_entry(e) for e in libs[:_MAX_PRELOAD_ENTRIES]]
        return out

    def _preload_entry(self, lib: str) -> dict[str, Any]:
        """A preloaded library's hash and package record: a package's library (``snoopy``'s
        logger, ``libjemalloc``) is forced into every process on purpose, and must neither go
        into an IOC nor be deleted by the report's remediation. Only a regular file is read
        (a FIFO named there would block the collection)."""
        entry: dict[str, Any] = {"path": _clean(lib, 4096)}
        path = Path(lib)
        try:
            regular = stat.S_ISREG(path.stat().st_mode)
        except OSError as exc:
            entry["error"] = _err(exc)
            return entry
        if not regular:
            entry["error"] = "not a regular file"
            return entry
        entry.update(hash_file(path, self.hash_cap_bytes))
        entry["package"] = package_record(lib, path, self.paths.dpkg_info, self.hash_cap_bytes)
        return entry

    def _logged_in(self, errors: list[str]) -> list[dict[str, Any]]:
        try:
            users = self.users()
        except (psutil.Error, OSError) as exc:
            errors.append(f"logged_in: {_err(exc)}")
            return []
        return [
            {
                "name": _clean(u.name),
                "terminal": _clean(u.terminal or ""),
                "host": _clean(u.host or ""),
                "started": u.started,
                "started_utc": _iso(u.started),
                "pid": u.pid,
            }
            for u in users
        ]

    # -- files ----------------------------------------------------------------------------

    def write_document(self, name: str, doc: dict[str, Any]) -> Path:
        """Write a document :meth:`collect` made (with sections added) under its own name,
        as :meth:`write` writes an episode's: bounded, 0600, atomic; no rate limit."""
        safe = _SAFE_ID.sub("_", name)[:64].lstrip(".") or "evidence"
        self._ensure_dir(keep=True)
        now = self.clock()
        path = self.dir / f"{datetime.fromtimestamp(now, UTC):%Y%m%dT%H%M%SZ}-{safe}.json"
        self.store(path, fit_to_size(doc, self.max_bytes_per_file))
        return path

    def _ensure_dir(self, keep: bool = False) -> None:
        """The 0700 folder; ``keep``: a full disk that refuses to create it is not an error
        (what is to be written there is kept, and the folder made when it is written)."""
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            if keep and exc.errno in FULL_DISK:
                return
            raise
        if stat.S_IMODE(self.dir.stat().st_mode) != 0o700:
            os.chmod(self.dir, 0o700)

    def _prune(self) -> None:
        files = evidence_files(self.dir)
        for old in files[: max(0, len(files) - self.max_files)]:
            try:
                old.unlink()
            except FileNotFoundError:
                continue


def walk_files(root: Path, errors: list[str] | None = None) -> Iterator[Path]:
    """Files and symlinks under ``root`` (not following links), bounded; missing root is empty.

    A folder that cannot be read is skipped; with ``errors``, named there (``path: reason``),
    as is a walk cut short by the bound."""

    def skipped(exc: OSError) -> None:
        if errors is not None and not isinstance(exc, FileNotFoundError | NotADirectoryError):
            errors.append(f"{exc.filename}: {exc.strerror or exc}")

    count = 0
    for dirpath, dirnames, filenames in os.walk(root, onerror=skipped):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(Path(dirpath, d))]:
            count += 1
            if count > _MAX_WALK:
                if errors is not None:
                    errors.append(f"{root}: more than {_MAX_WALK} files, the rest")
                return
            yield Path(dirpath, name)


# ---------------------------------------------------------------------------------------
# Persistence entries and their baseline

PERSISTENCE_BASELINE = "persistence-baseline.json"
_MAX_PERSISTENCE = 5000
_SMALL_HASH_CAP = 4 * _MIB


def persistence_entries(paths: HostPaths = HostPaths()) -> dict[str, dict[str, Any]]:  # noqa: B008
    """Every place a miner restarts from, hashed: ``{path: {"kind", "sha256"}}``.

    Cron files, systemd units (system and per user), init scripts and ``rc.local``,
    ``ld.so.preload`` and ``authorized_keys``. A symlink is recorded by its target (a unit
    enabled by a new link is a change), an unreadable file by its error. Bounded in count.
    """
    groups: list[tuple[str, Iterator[Path]]] = [
        ("cron", paths.cron_files()),
        ("systemd", paths.unit_files()),
        ("init", paths.init_files()),
        ("ld_so_preload", iter([paths.ld_so_preload])),
        ("authorized_keys", paths.authorized_keys()),
    ]
    out: dict[str, dict[str, Any]] = {}
    for kind, files in groups:
        for path in files:
            if len(out) >= _MAX_PERSISTENCE:
                return out
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            except OSError as exc:
                out[str(path)] = {"kind": kind, "sha256": None, "error": _err(exc)}
                continue
            if stat.S_ISLNK(st.st_mode):
                try:
                    target = os.readlink(path)
                except OSError as exc:
                    out[str(path)] = {"kind": kind, "sha256": None, "error": _err(exc)}
                    continue
                digest = hashlib.sha256(("link:" + target).encode("utf-8", "surrogateescape"))
                out[str(path)] = {"kind": kind, "sha256": digest.hexdigest()}
            elif stat.S_ISREG(st.st_mode):
                got = hash_file(path, _SMALL_HASH_CAP)
                entry = {"kind": kind, "sha256": got.get("sha256")}
                if "error" in got or "hash_error" in got:
                    entry["error"] = str(got.get("error") or got.get("hash_error"))
                out[str(path)] = entry
    return out


def persistence_list(entries: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The entries as the evidence file keeps them: a list sorted by path."""
    return [{"path": _clean(p, 4096), **e} for p, e in sorted(entries.items())]


def save_persistence_baseline(path: Path, entries: Mapping[str, Any], now: float) -> None:
    """The snapshot taken at the end of learning, written atomically, owner only."""
    doc = {"format": "minerwatch-persistence", "version": 1, "taken_at": now,
           "taken_at_utc": _iso(now), "entries": dict(entries)}  # fmt: skip
    atomic_write(path, json.dumps(doc, indent=1, sort_keys=True), mode=0o600)


def load_persistence_baseline(path: Path) -> dict[str, Any] | None:
    """The saved snapshot, None when there is none (or it is not one)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != "minerwatch-persistence":
        return None
    return doc if isinstance(doc.get("entries"), dict) else None


def persistence_status(
    entries: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """Each entry marked ``new``, ``changed`` or ``unchanged`` since the baseline, plus the
    baseline's entries gone since (``removed``); ``unknown`` without a baseline.

    >>> base = {"entries": {"/etc/crontab": {"kind": "cron", "sha256": "a"}}}
    >>> now = [{"path": "/etc/crontab", "kind": "cron", "sha256": "b"},
    ...        {"path": "/etc/cron.d/x", "kind": "cron", "sha256": "c"}]
    >>> [e["status"] for e in persistence_status(now, base)]
    ['changed', 'new']
    """
    known: Mapping[str, Any] = (baseline or {}).get("entries") or {}
    out: list[dict[str, Any]] = []
    for e in entries:
        path = str(e.get("path"))
        if baseline is None:
            status = "unknown"
        elif path not in known:
            status = "new"
        elif (known[path] or {}).get("sha256") != e.get("sha256"):
            status = "changed"
        else:
            status = "unchanged"
        out.append({**e, "status": status})
    seen = {str(e.get("path")) for e in entries}
    for path, old in sorted(known.items()):
        if path not in seen and isinstance(old, dict):
            out.append({"path": path, "kind": old.get("kind"), "sha256": None, "status": "removed"})
    return out


def evidence_files(dir: Path) -> list[Path]:
    """Evidence files in ``dir``, oldest first (names start with a UTC timestamp)."""
    try:
        names = sorted(p for p in Path(dir).glob("*.json") if not p.name.startswith("."))
    except OSError:
        return []
    return [p for p in names if p.is_file()]


def read_evidence_file(path: Path) -> dict[str, Any]:
    """One evidence document; a file that is not one is an :class:`InputError` naming it
    (and the line, for broken JSON), so no caller mistakes it for an episode."""
    try:
        doc = json.loads(path.read_text(encoding="ascii", errors="replace"))
    except PermissionError as exc:
        raise InputError(str(path), None, "a readable evidence file (run as root)", None) from exc
    except json.JSONDecodeError as exc:
        got = f"{exc.msg} (column {exc.colno})"
        raise InputError(str(path), exc.lineno, "an evidence JSON file", got) from exc
    except (OSError, ValueError) as exc:  # ValueError: a JSON number too long to convert
        raise InputError(str(path), None, "an evidence JSON file", _err(exc)) from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = repr(doc.get("format")) if isinstance(doc, dict) else f"a JSON {type(doc).__name__}"
        raise InputError(str(path), None, f"an evidence file with format {FORMAT!r}", got)
    return doc


def list_evidence(dir: Path = DEFAULT_DIR) -> list[dict[str, Any]]:
    """A summary per evidence file, oldest first; unreadable files are listed with an error."""
    out: list[dict[str, Any]] = []
    for path in evidence_files(dir):
        entry: dict[str, Any] = {"name": path.name, "path": str(path)}
        try:
            doc = read_evidence_file(path)
        except InputError as exc:
            entry["error"] = str(exc)
            out.append(entry)
            continue
        procs = doc.get("processes") or []
        top = procs[0] if procs and isinstance(procs[0], dict) else {}
        entry.update(
            time=doc.get("written_at"),
            time_utc=doc.get("written_at_utc"),
            episode_id=doc.get("episode_id"),
            score=doc.get("score"),
            top_process=top.get("name"),
            top_pid=top.get("pid"),
        )
        out.append(entry)
    return out


def show(dir: Path, name: str) -> dict[str, Any]:
    """One evidence file's document, found as :func:`locate` finds it."""
    return read_evidence_file(locate(dir, name))


def locate(dir: Path, name: str) -> Path:
    """One evidence file by file name (with or without ``.json``), by episode id, or by its
    absolute path in ``dir`` (what an alert's ``evidence`` annotation gives)."""
    given = Path(name)
    if given.is_absolute() and "\0" not in name and given.parent.resolve() == Path(dir).resolve():
        name = given.name
    if not name or "/" in name or "\0" in name or name.startswith("."):
        raise InputError(name, None, "a file name from 'minerwatch evidence list'", repr(name))
    try:  # glob sees an unreadable folder as empty: "no such file" would mislead
        with os.scandir(dir):
            pass
    except PermissionError:
        expected = "an evidence folder this user can read (run as root)"
        raise InputError(str(dir), None, expected, "permission denied") from None
    except OSError:
        pass  # missing: the file is not there, as said below
    files = evidence_files(dir)
    stem = name[:-5] if name.endswith(".json") else name
    for path in files:
        if path.stem == stem:
            return path
    matches = [p for p in files if p.stem.endswith(f"-{stem}")]
    if matches:
        return matches[-1]
    raise InputError(str(Path(dir) / name), None, "an existing evidence file", "no such file")


# ---------------------------------------------------------------------------------------
# CLI: minerwatch evidence list|show


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Execute ``evidence list|show`` on the agent's evidence folder: ``DATA_DIR/evidence``
    (``--data-dir``, else the config's), or the folder the deprecated ``--dir`` names; bad
    names raise :class:`InputError` (exit code 2). ``list`` names each unreadable file on
    stderr and exits 2, after listing the good ones on stdout (a script must not take a
    damaged folder for a clean one)."""
    stream = out if out is not None else sys.stdout
    directory: Path = (
        args.dir
        or agent_files_config(args.config, getattr(args, "data_dir", None)).evidence_dir
        or DEFAULT_DIR
    )
    if args.evidence_command == "show":
        json.dump(show(directory, args.name), stream, indent=2, sort_keys=False)
        stream.write("\n")
        return 0
    entries = list_evidence(directory)
    good = [e for e in entries if "error" not in e]
    if args.json:
        json.dump(good, stream, indent=2)
        stream.write("\n")
    elif not entries:
        missing = "" if directory.is_dir() else " (not there yet: written at the first alert)"
        print(f"no evidence files in {directory}{missing}", file=sys.stderr)
    elif good:
        width = max(48, *(len(printable(e["name"])) for e in good))  # long names stay aligned
        stream.write(f"{'NAME':<{width}} {'TIME (UTC)':<20} {'SCORE':>6}  TOP PROCESS\n")
        for e in good:
            score = f"{e['score']:.3f}" if isinstance(e.get("score"), float) else "-"
            top = f"{printable(e.get('top_process') or '-')} (pid {e.get('top_pid')})"
            name, when = printable(e["name"]), printable(e.get("time_utc") or "-")
            stream.write(f"{name:<{width}} {when:<20} {score:>6}  {top}\n")
    bad = [e for e in entries if "error" in e]
    for e in bad:  # on stderr, so stdout stays the list of usable files
        print(f"minerwatch: error: {printable(e['error'])}", file=sys.stderr)
    if not bad:
        return 0
    print(
        f"minerwatch: error: {len(bad)} of {len(entries)} evidence files in {directory} "
        "could not be read" + ("; the others are listed" if good else ""),
        file=sys.stderr,
    )
    return 2
