"""Indicators of compromise: turn one host's evidence into a file, and hunt for it elsewhere.

A miner found on one machine is rarely alone (one stolen account, a hundred machines), so
``minerwatch ioc extract EVIDENCE`` keeps what identifies *this* miner — its binary's sha256,
its paths, the pools it talked to or names, the cron lines and systemd units that restart it — and
``minerwatch hunt IOC-FILE`` checks another host once against it: exit 1 on a hit, 0 when
clean, 2 when the IOC file is not one or, finding nothing, part of the host could not be read.

Reading the host (:func:`read_host`) is kept apart from matching (:func:`find_hits`, a pure
function tested on literals). Only the suspects go into the file: processes an indicator
named, else the evidence's top process, and never a binary a package shipped as it
shipped it (``/usr/bin/python3`` would match every host; without a package record, any of
the system's own folders), nor the hash of a copy of one (a renamed ``python3`` in ``/tmp``
running the miner's script: its path is kept). A binary no package owns is kept, even in
``/usr/local/bin``.

    >>> ioc = Ioc("ioc-x", sha256=("ab" * 32,))
    >>> snap = HostSnapshot(processes=[ProcessSeen(7, "kx", "/tmp/kx", "ab" * 32)])
    >>> [h.kind for h in find_hits(ioc, snap)]
    ['sha256']
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import logging
import os
import queue
import re
import socket
import stat
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from minerwatch.features.atomic import atomic_write
from minerwatch.features.errors import InputError
from minerwatch.features.proctable import ProcessTable
from minerwatch.service.evidence import (
    HostPaths,
    hash_file,
    locate,
    read_evidence_file,
    walk_files,
)
from minerwatch.service.indicators import preload_entries
from minerwatch.service.scorecsv import is_stdout
from minerwatch.service.terminal import printable
from minerwatch.service.timefmt import utc_iso

log = logging.getLogger(__name__)

FORMAT = "minerwatch-ioc"
FORMAT_VERSION = 1
LIST_KEYS = ("sha256", "paths", "pools", "pool_hosts", "cron_lines", "units")
#: Keys an IOC's id covers even when empty (``pool_hosts`` came later: an id stays the one
#: an earlier version gave the same miner unless the miner names its pool by name).
_ID_KEYS = ("sha256", "paths", "pools", "cron_lines", "units")
#: Options that give a miner its pool (xmrig, cpuminer, most of their forks).
_POOL_OPTIONS = ("-o", "--url")
#: How long ``hunt --resolve`` waits for the resolver, for all names together.
RESOLVE_TIMEOUT_S = 10.0
DEFAULT_SCAN = (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"))
#: Binaries here belong to the system: their hash or path would match every host.
SYSTEM_DIRS = ("/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/", "/opt/minerwatch/")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: Interpreters a container image or an administrator puts in /usr/local without a package
#: (python:3.12's /usr/local/bin/python3.12): a miner's script runs in them, they are not it.
_INTERPRETER = re.compile(
    r"(python|pypy|perl|ruby|php|node|nodejs|bun|deno|java|lua|tclsh|bash|sh|dash|zsh|busybox)"
    r"[0-9.]*"
)
_HASH_CAP = 256 << 20
_SCAN_MAX_FILES = 20_000
_MAX_NOTES = 20  # "could not check" lines hunt prints; the rest are counted
_TOKENS = re.compile(r"[\s;|&()<>`'\"=]+")


@dataclass(frozen=True)
class Ioc:
    """One IOC file: an id (a bounded label for metrics) and what identifies the miner."""

    id: str
    sha256: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    pools: tuple[str, ...] = ()
    pool_hosts: tuple[str, ...] = ()  # ``name:port`` of a pool named by name, not address
    cron_lines: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    source: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc = {"format": FORMAT, "version": FORMAT_VERSION}
        return {**doc, **asdict(self), "source": dict(self.source)}

    def empty(self) -> bool:
        return not any(getattr(self, k) for k in LIST_KEYS)


def ioc_id(lists: Mapping[str, Sequence[str]]) -> str:
    """A name fixed by the content: the same miner seen twice gets the same id."""
    keys = [k for k in LIST_KEYS if k in _ID_KEYS or lists.get(k)]
    canon = json.dumps({k: sorted(lists[k]) for k in keys}, sort_keys=True)
    return "ioc-" + hashlib.sha256(canon.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- extract


def _system(path: str) -> bool:
    return any(path.startswith(d) for d in SYSTEM_DIRS)


def _binary_kept(exe: str, proc: Mapping[str, Any], left_out: list[str]) -> tuple[bool, bool]:
    """Whether a suspect's path and sha256 go into the IOC: never what would match every
    host. The evidence's package record decides where dpkg was asked: a binary a package
    shipped unchanged is left out, one whose content differs keeps its hash (the package's
    path is on every host), one no package owns is kept wherever it lies (a miner in
    ``/usr/local/bin``), but a byte-for-byte copy of a shipped program only by its path.
    Without a record, binaries of the system's folders are left out unless deleted."""
    if not exe:
        return False, False
    raw = proc.get("package")
    pkg: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
    owner, shipped, copy = pkg.get("name"), pkg.get("as_shipped"), pkg.get("copy_of")
    if pkg.get("manager") == "dpkg" and isinstance(owner, str) and shipped is True:
        left_out.append(
            f"{exe}: shipped unchanged by the package {owner}, it would match every host "
            "that installed it"
        )
        return False, False
    if pkg.get("manager") == "dpkg" and isinstance(owner, str) and shipped is False:
        left_out.append(
            f"the path {exe}: the package {owner} installs it on every host; its sha256, "
            "which differs from the file the package shipped, stays"
        )
        return False, True
    if isinstance(copy, dict):  # a renamed system program: its hash is everywhere
        left_out.append(
            f"the sha256 of {exe}: a copy of {copy.get('path')} ({copy.get('package')}), "
            "it would match that program on every host; its path stays"
        )
        return True, False
    if pkg.get("manager") == "dpkg" and owner is None:
        if _system(exe) and _INTERPRETER.fullmatch(os.path.basename(exe)):
            left_out.append(
                f"{exe}: an interpreter no package owns (a container image's, or built by "
                "hand), it would match every host that has it"
            )
            return False, False
        return True, True  # no package's: the attacker's, even under /usr
    keep = not _system(exe) or bool(proc.get("exe_deleted"))
    return keep, keep


def _preloaded(preload: object, left_out: list[str]) -> Iterator[tuple[str, bool, str | None]]:
    """The libraries ``ld.so.preload`` forces into every process: (path, whether the path
    goes into the IOC, the sha256 that does). A library a package shipped unchanged (a
    logger such as ``snoopy``, an allocator) is on every host that installed it, so the
    package record decides, as for the suspect's binary; a library without a record (older
    evidence, no dpkg) is taken for the rootkit's."""
    if not isinstance(preload, dict) or not preload.get("exists"):
        return
    checked = {str(e.get("path")): e for e in preload.get("entries") or [] if isinstance(e, dict)}
    for lib in preload_entries(str(preload.get("content") or "")):
        if not lib.startswith("/"):
            continue
        entry = checked.get(lib, {})
        record = entry.get("package")
        if isinstance(record, dict) and record.get("manager") == "dpkg":
            keep_path, keep_hash = _binary_kept(lib, entry, left_out)
        else:
            keep_path, keep_hash = True, True
        digest = entry.get("sha256")
        ok = keep_hash and isinstance(digest, str) and _SHA256.match(digest) is not None
        yield lib, keep_path, digest if ok else None


def pool_addresses(cmdline: Sequence[str]) -> list[str]:
    """The pools a miner's command line names, as ``host:port`` (``[v6]:port``): stratum
    URLs anywhere, and the value of ``-o``/``--url``. A pool named by name resolves to other
    addresses on other hosts and days (round-robin DNS), so the name is what identifies it.

    >>> pool_addresses(["xmrig", "-o", "Pool.Example:3333", "--url=stratum+ssl://p.example:443"])
    ['pool.example:3333', 'p.example:443']
    >>> pool_addresses(["cpuminer", "-a", "x", "stratum+tcp://user@203.0.113.9:80/x"])
    ['203.0.113.9:80']
    >>> pool_addresses(["curl", "-o", "/tmp/out", "http://example.org/"])
    []
    """
    found: list[str] = []
    for i, arg in enumerate(cmdline):
        values = (
            [arg] if "://" in arg and arg.split("://", 1)[0].lower().startswith("stratum") else []
        )
        if arg in _POOL_OPTIONS and i + 1 < len(cmdline):
            values.append(cmdline[i + 1])
        elif arg.startswith("--url="):
            values.append(arg.removeprefix("--url="))
        for value in values:
            rest = value.split("://", 1)[1] if "://" in value else value
            try:
                parts = urllib.parse.urlsplit("//" + rest)
                host, port = parts.hostname, parts.port
            except ValueError:
                continue
            if host and port:
                where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                if where not in found:
                    found.append(where)
    return found


def _is_address(where: str) -> bool:
    try:
        ipaddress.ip_address(where.rsplit(":", 1)[0].strip("[]"))
    except ValueError:
        return False
    return True


def _mentions(text: str, paths: Sequence[str]) -> bool:
    """Whether a line names one of ``paths`` (in full, or a token with its file name)."""
    names = {os.path.basename(p) for p in paths if len(os.path.basename(p)) >= 2}
    if any(p in text for p in paths):
        return True
    return any(os.path.basename(tok) in names for tok in _TOKENS.split(text) if tok)


def _this_host(remote: str) -> bool:
    """Whether ``host:port`` (``[v6]:port``) is a loopback or unspecified address.

    >>> _this_host("127.0.0.1:3333"), _this_host("[::1]:4444"), _this_host("203.0.113.9:3333")
    (True, True, False)
    """
    host = remote.rsplit(":", 1)[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1
    return ip.is_loopback or ip.is_unspecified


def extract(doc: Mapping[str, Any], source: str = "") -> Ioc:
    """The IOC of an evidence document (``service/evidence.py``'s format)."""
    procs = [p for p in doc.get("processes") or [] if isinstance(p, dict) and "pid" in p]
    named = {h.get("pid") for h in doc.get("indicators") or [] if isinstance(h, dict)}
    suspects = [p for p in procs if p["pid"] in named] or procs[:1]
    sha: set[str] = set()
    paths: set[str] = set()
    pools: set[str] = set()
    pool_hosts: set[str] = set()
    left_out: list[str] = []
    for p in suspects:
        exe = str(p.get("exe") or "")
        digest = p.get("sha256") if isinstance(p.get("sha256"), str) else None
        keep_path, keep_hash = _binary_kept(exe, p, left_out)
        if keep_path:
            paths.add(exe)
        if keep_hash and digest is not None and _SHA256.match(digest):
            sha.add(digest)
        for c in p.get("connections") or []:
            remote = c.get("remote") if isinstance(c, dict) else None
            if remote and _this_host(str(remote)):
                left_out.append(
                    f"the address {remote}: this host's own (a local proxy or tunnel: what "
                    "it connects to is the pool); on another host it names that host's own "
                    "service"
                )
            elif remote:
                pools.add(str(remote))
        args = p.get("cmdline")
        for where in pool_addresses([str(a) for a in args] if isinstance(args, list) else []):
            if _this_host(where):
                left_out.append(
                    f"the pool {where} on the command line: this host's own (a local proxy)"
                )
            else:
                (pools if _is_address(where) else pool_hosts).add(where)
    cron, units = set(), set()
    exe_paths = sorted(paths)
    if exe_paths:
        for f in doc.get("crontabs") or []:
            for line in str(f.get("content") or "").splitlines():
                line = line.strip()
                if line and not line.startswith("#") and _mentions(line, exe_paths):
                    cron.add(line)
                    paths.add(str(f["path"]))
        for f in doc.get("systemd_units") or []:
            if _mentions(str(f.get("content") or ""), exe_paths):
                units.add(os.path.basename(str(f["path"])))
                paths.add(str(f["path"]))
    for lib, keep_path, digest in _preloaded(doc.get("ld_so_preload"), left_out):
        if keep_path:
            paths.add(lib)
        if digest is not None:
            sha.add(digest)
    lists = {
        "sha256": sorted(sha),
        "paths": sorted(paths),
        "pools": sorted(pools),
        "pool_hosts": sorted(pool_hosts),
        "cron_lines": sorted(cron),
        "units": sorted(units),
    }
    now = utc_iso(time.time())
    return Ioc(
        ioc_id(lists),
        **{k: tuple(v) for k, v in lists.items()},
        source={
            "evidence": source,
            "hostname": doc.get("hostname"),
            "episode_id": doc.get("episode_id"),
            "suspect_pids": [p["pid"] for p in suspects],
            "created_at_utc": now,
            **({"left_out": left_out} if left_out else {}),
        },
    )


def load_ioc(path: Path) -> Ioc:
    """Read and check an IOC file; anything else is an InputError naming the file."""
    expected = "an IOC file (JSON from 'ioc extract')"
    try:
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            raise InputError(str(path), None, expected, "an empty file")
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(str(path), exc.lineno, expected, exc.msg) from exc
    except UnicodeDecodeError as exc:
        raise InputError(str(path), None, expected, f"bytes that are not UTF-8 ({exc})") from exc
    except OSError as exc:
        raise InputError(str(path), None, expected, exc.strerror or str(exc)) from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = repr(doc.get("format")) if isinstance(doc, dict) else type(doc).__name__
        if isinstance(doc, dict) and doc.get("format") == "minerwatch-evidence":
            got += " (evidence: 'minerwatch ioc extract' turns it into an IOC file)"
        raise InputError(str(path), None, f"an IOC file with format {FORMAT!r}", got)
    if doc.get("version") != FORMAT_VERSION:
        raise InputError(str(path), None, f"version {FORMAT_VERSION}", repr(doc.get("version")))
    lists: dict[str, tuple[str, ...]] = {}
    for key in LIST_KEYS:
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InputError(str(path), None, f"{key!r}: a list of strings", repr(value)[:80])
        lists[key] = tuple(value)
    bad = [h for h in lists["sha256"] if not _SHA256.match(h)]
    if bad:
        raise InputError(str(path), None, "'sha256': 64 lowercase hex digits each", bad[0][:80])
    ident = doc.get("id")
    if not isinstance(ident, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", ident):
        raise InputError(str(path), None, "'id': a short name ([A-Za-z0-9_.-])", repr(ident))
    ioc = Ioc(ident, **lists, source=doc.get("source") or {})
    if ioc.empty():
        raise InputError(str(path), None, f"at least one indicator in {', '.join(LIST_KEYS)}")
    return ioc


# --------------------------------------------------------------------------- hunt


@dataclass(frozen=True)
class ProcessSeen:
    pid: int
    name: str
    exe: str
    sha256: str | None = None
    deleted: bool = False  # the binary was removed from disk while it runs
    cmdline: tuple[str, ...] = ()  # read only when the IOC names a pool by name


@dataclass
class HostSnapshot:
    """What :func:`read_host` saw; :func:`find_hits` matches an IOC against it."""

    processes: list[ProcessSeen] = field(default_factory=list)
    files: dict[str, str | None] = field(default_factory=dict)  # path -> sha256 (if hashed)
    connections: list[tuple[int | None, str]] = field(default_factory=list)  # pid, remote
    cron_lines: list[tuple[str, str]] = field(default_factory=list)  # path, line
    unit_files: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: ``address:port`` -> the IOC's ``name:port`` it resolved to (``hunt --resolve``).
    resolved: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    kind: str  # one of LIST_KEYS
    value: str  # the indicator matched
    where: str  # pid or path on this host
    pid: int | None = None  # the process it was seen in, if any


def _names_pool(pool: str) -> re.Pattern[str]:
    """``name:port`` standing alone in an argument, any case: not the tail of a longer name
    and not the head of a longer port, which are other hosts' pools.

    >>> [bool(_names_pool("pool.example:3333").search(a)) for a in
    ...  ["stratum+tcp://u@POOL.example:3333/x", "mypool.example:3333", "pool.example:33330"]]
    [True, False, False]
    """
    return re.compile(r"(?<![\w.-])" + re.escape(pool) + r"(?!\d)", re.IGNORECASE)


def find_hits(ioc: Ioc, snap: HostSnapshot) -> list[Hit]:
    """Every place on the host an indicator of ``ioc`` shows up."""
    hits: list[Hit] = []
    sha, paths, pools = set(ioc.sha256), set(ioc.paths), set(ioc.pools)
    for p in snap.processes:
        where = f"pid {p.pid} ({p.name})"
        if p.sha256 in sha:
            exe = p.exe + (" (deleted from disk)" if p.deleted else "")
            hits.append(Hit("sha256", p.sha256 or "", f"{where} running {exe}", p.pid))
        if p.exe in paths:
            runs = "runs it" + (" (deleted from disk)" if p.deleted else "")
            hits.append(Hit("paths", p.exe, f"{where} {runs}", p.pid))
    for path, digest in sorted(snap.files.items()):
        if path in paths:
            hits.append(Hit("paths", path, "file exists"))
        if digest in sha:
            hits.append(Hit("sha256", digest or "", f"file {path}"))
    named = [(h.lower(), _names_pool(h)) for h in ioc.pool_hosts]
    for p in snap.processes:
        for pool, names in named:
            if any(names.search(arg) for arg in p.cmdline):
                where = f"pid {p.pid} ({p.name}) names it on its command line"
                hits.append(Hit("pool_hosts", pool, where, p.pid))
    for pid, remote in snap.connections:
        where = f"connection of pid {pid}" if pid else "connection"
        if remote in pools:
            hits.append(Hit("pools", remote, where, pid or None))
        if remote in snap.resolved:
            hits.append(
                Hit("pool_hosts", snap.resolved[remote], f"{where} to {remote}", pid or None)
            )
    cron = {c.strip() for c in ioc.cron_lines}
    for path, line in snap.cron_lines:
        if line.strip() in cron:
            hits.append(Hit("cron_lines", line.strip(), path))
    units = set(ioc.units)
    for path in snap.unit_files:
        if os.path.basename(path) in units:
            hits.append(Hit("units", os.path.basename(path), path))
    return hits


class HashCache:
    """sha256 of files by (device, inode, size, mtime): unchanged files are hashed once."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self.max_entries = max_entries
        self._known: dict[tuple[int, int, int, int], tuple[str | None, str]] = {}

    def sha256(self, path: Path) -> str | None:
        """The file's sha256 (None if too big or unreadable); OSError if it is gone."""
        return self.hash(path)[0]

    def hash(self, path: Path) -> tuple[str | None, str]:
        """``(sha256, "")``, or ``(None, why)`` when too big or unreadable; OSError if the
        file is gone (or, for ``/proc/PID/exe``, another user's process)."""
        st = os.stat(path)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in self._known:
            if len(self._known) >= self.max_entries:
                self._known.clear()
            got = hash_file(path, _HASH_CAP)
            self._known[key] = (got.get("sha256"), str(got.get("hash_error") or ""))
        return self._known[key]


def _remote(addr: Any) -> str:
    return f"[{addr.ip}]:{addr.port}" if ":" in addr.ip else f"{addr.ip}:{addr.port}"


def _executables(dirs: Sequence[Path], errors: list[str]) -> Iterator[Path]:
    seen = 0
    for i, d in enumerate(dirs):
        for path in walk_files(d, errors):
            seen += 1
            if seen > _SCAN_MAX_FILES:
                rest = ", ".join(map(str, dirs[i + 1 :]))
                errors.append(
                    f"{d}: more than {_SCAN_MAX_FILES} files in the scanned folders, "
                    f"the rest{' and ' + rest if rest else ''}"
                )
                return
            try:
                st = path.lstat()
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_size > _HASH_CAP:
                continue
            if st.st_mode & 0o111 or _is_elf(path):
                yield path


def _is_elf(path: Path) -> bool:
    """Whether a file (without an execute bit) is an ELF binary: the dynamic loader runs one
    all the same (``ld-linux-x86-64.so.2 /dev/shm/x``, from a noexec mount too)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.read(fd, 4) == b"\x7fELF"
    except OSError:
        return False
    finally:
        os.close(fd)


def read_host(
    ioc: Ioc,
    paths: HostPaths = HostPaths(),  # noqa: B008 - frozen dataclass, safe as a default
    scan: Sequence[Path] = DEFAULT_SCAN,
    cache: HashCache | None = None,
    resolve: bool = False,
) -> HostSnapshot:
    """Look at this host once, only as far as ``ioc`` needs (hashes only if it has some).

    ``cache`` keeps hashes between calls (the agent checks every few minutes, and a file
    whose inode, size and mtime are unchanged need not be read again). ``resolve`` looks
    the IOC's pool names up, to match connections to their addresses today (a DNS query for
    a mining pool, which a resolver's own monitoring may flag: only when asked)."""
    snap = HostSnapshot()
    hashes = cache if cache is not None else HashCache()
    denied: dict[str, list[int]] = {}  # user -> pids whose executable this user may not read
    unhashed: list[str] = []
    table = ProcessTable(paths.proc)
    # executables matter to hashes and paths; a pool's name is read on command lines, which
    # every user may read: an IOC of pools alone is checked whole without root
    by_exe = bool(ioc.sha256 or ioc.paths)
    procs = (
        table.describe(table.scan(), cmdline=bool(ioc.pool_hosts))
        if by_exe or ioc.pool_hosts
        else []
    )
    for rec in procs:
        link = paths.proc / str(rec.pid) / "exe"
        if not rec.exe:  # a kernel thread, a zombie, gone, or another user's process
            if by_exe and _denied(link):
                denied.setdefault(rec.username or "?", []).append(rec.pid)
            if rec.cmdline and ioc.pool_hosts:
                snap.processes.append(ProcessSeen(rec.pid, rec.name, "", cmdline=rec.cmdline))
            continue
        digest = None
        if ioc.sha256:
            try:
                # the program's bytes: through exe, or the map a dynamic loader made of it
                digest, why = hashes.hash(paths.proc / str(rec.pid) / rec.image)
            except PermissionError:
                denied.setdefault(rec.username or "?", []).append(rec.pid)
                if ioc.pool_hosts:  # its command line is still there to match
                    snap.processes.append(ProcessSeen(rec.pid, rec.name, "", cmdline=rec.cmdline))
                continue
            except OSError:
                continue  # exited
            if digest is None:
                unhashed.append(f"pid {rec.pid} ({rec.name}) {rec.exe}: {why}")
        snap.processes.append(
            ProcessSeen(rec.pid, rec.name, rec.exe, digest, rec.exe_deleted, rec.cmdline)
        )
    if denied:
        snap.errors.append(_denied_note(denied))
    if unhashed:
        snap.errors.append(
            f"the sha256 of {len(unhashed)} running executables: {'; '.join(unhashed[:5])}"
        )
    for p in ioc.paths:
        try:
            os.lstat(p)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            snap.errors.append(f"{p}: {exc.strerror or exc}")
            continue
        snap.files[p] = None
    if ioc.sha256:
        for exe in _executables(scan, snap.errors):
            try:
                digest, why = hashes.hash(exe)
            except OSError:
                continue  # removed meanwhile
            if digest is None:
                snap.errors.append(f"{exe}: {why}")
            snap.files[str(exe)] = digest
    if resolve and ioc.pool_hosts:
        snap.resolved = resolve_pools(ioc.pool_hosts, snap.errors)
    if ioc.pools or snap.resolved:
        try:
            conns = psutil.net_connections(kind="inet")
        except (psutil.Error, OSError) as exc:
            snap.errors.append(f"connections: {exc}")
            conns = []
        snap.connections = [(c.pid, _remote(c.raddr)) for c in conns if c.raddr]
    if ioc.cron_lines:
        for f in paths.cron_files(snap.errors):
            try:
                text = f.read_text(errors="surrogateescape")
            except FileNotFoundError:
                continue
            except OSError as exc:
                snap.errors.append(f"{f}: {exc.strerror}")
                continue
            snap.cron_lines += [(str(f), line) for line in text.splitlines() if line.strip()]
    if ioc.units:
        snap.unit_files = [str(f) for f in paths.unit_files(snap.errors)]
    return snap


def resolve_pools(
    pools: Sequence[str], errors: list[str], timeout_s: float = RESOLVE_TIMEOUT_S
) -> dict[str, str]:
    """``address:port`` -> ``name:port`` for each pool name the resolver knows now; a name
    it could not resolve within ``timeout_s`` (all names together) is added to ``errors``:
    connections to that pool were not checked. Daemon threads: a resolver that hangs does
    not keep the command from exiting."""
    answers: queue.Queue[tuple[str, list[str] | str]] = queue.Queue()

    def ask(pool: str) -> None:
        host, _, port = pool.rpartition(":")
        try:
            infos = socket.getaddrinfo(host.strip("[]"), int(port), proto=socket.IPPROTO_TCP)
        except (OSError, ValueError) as exc:
            answers.put((pool, str(exc)))
            return
        addrs = {str(info[4][0]) for info in infos}
        answers.put((pool, [f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in addrs]))

    for pool in pools:
        threading.Thread(target=ask, args=(pool,), daemon=True, name="resolve").start()
    out: dict[str, str] = {}
    left, deadline = set(pools), time.monotonic() + timeout_s
    while left:
        try:
            pool, got = answers.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        left.discard(pool)
        if isinstance(got, str):
            errors.append(f"the address of the pool {pool}: {got}")
        else:
            out.update(dict.fromkeys(got, pool))
    errors += [
        f"the address of the pool {p}: no answer within {timeout_s:g} s" for p in sorted(left)
    ]
    return out


def _denied_note(denied: Mapping[str, Sequence[int]]) -> str:
    """The processes whose executable could not be read, by user, and what would read them."""
    n = sum(map(len, denied.values()))
    users = ", ".join(
        f"{u}: pid {', '.join(map(str, pids))}" if len(pids) <= 3 else f"{u}: {len(pids)}"
        for u, pids in sorted(denied.items())
    )
    why = (
        "run as root"
        if os.geteuid() != 0
        else "root without CAP_SYS_PTRACE over them, e.g. in another user namespace"
    )
    return f"the executables of {n} process(es) ({users}): permission denied ({why})"


def _denied(link: Path) -> bool:
    """Whether ``/proc/PID/exe`` is there but this user may not read it."""
    try:
        os.readlink(link)
    except PermissionError:
        return True
    except OSError:
        return False
    return False


# --------------------------------------------------------------------------- the agent's watch

#: At most this many IOC files are read from ``--ioc-dir`` (first by name): each becomes a
#: label value of ``minerwatch_ioc_hits``, so the count must stay bounded.
MAX_IOC_FILES = 32


def ioc_label(ident: str) -> str:
    """An IOC id as a metric label value (lowercase code identifier).

    >>> ioc_label("ioc-3F2a.b")
    'ioc_3f2a_b'
    """
    label = re.sub(r"[^a-z0-9_]", "_", ident.lower())
    return (label if label[:1].isalpha() else "ioc_" + label)[:64]


class IocWatcher:
    """``serve --ioc-dir DIR``: the IOC files of a folder, checked against this host every
    ``every`` seconds; a file is re-read when its size or mtime changes.

    :meth:`check` returns the hits of every IOC by its label; a file that is not an IOC
    file is logged once (per version of it) and skipped, never stopping the others.
    """

    def __init__(
        self,
        folder: Path,
        every: float,
        paths: HostPaths = HostPaths(),  # noqa: B008 - frozen dataclass, safe as a default
        scan: Sequence[Path] = DEFAULT_SCAN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.folder = folder
        self.every = every
        self.paths = paths
        self.scan = scan
        self.clock = clock
        self.cache = HashCache()
        self.next_at = 0.0
        self.iocs: dict[Path, tuple[tuple[int, int], Ioc | None]] = {}
        self.errors = 0
        self._unread: set[str] = set()

    def due(self) -> bool:
        return self.clock() >= self.next_at

    def reload(self) -> list[tuple[Path, Ioc]]:
        """The folder's IOC files, re-read where changed; bad ones skipped (logged once)."""
        try:
            names = sorted(p for p in self.folder.glob("*.json") if not p.name.startswith("."))
        except OSError as exc:
            log.warning("cannot read the IOC folder %s: %s", self.folder, exc)
            names = []
        if len(names) > MAX_IOC_FILES:
            log.warning("%s holds %d IOC files; only the first %d are checked",
                        self.folder, len(names), MAX_IOC_FILES)  # fmt: skip
            names = names[:MAX_IOC_FILES]
        current: dict[Path, tuple[tuple[int, int], Ioc | None]] = {}
        for path in names:
            try:
                st = path.stat()
            except OSError:
                continue
            version = (st.st_size, st.st_mtime_ns)
            old = self.iocs.get(path)
            if old is not None and old[0] == version:
                current[path] = old
                continue
            try:
                current[path] = (version, load_ioc(path))
            except InputError as exc:
                self.errors += 1
                log.warning("skipping %s", exc)
                current[path] = (version, None)
        self.iocs = current
        return [(path, ioc) for path, (_, ioc) in current.items() if ioc is not None]

    def check(self) -> dict[str, tuple[Path, Ioc, list[Hit]]]:
        """Check the host against every IOC now: ``{label: (file, ioc, hits)}``."""
        self.next_at = self.clock() + self.every
        iocs = self.reload()
        if not iocs:
            return {}

        # the host is read once for all files: what any of them needs
        def every(key: str) -> tuple[str, ...]:
            return tuple(sorted({v for _, ioc in iocs for v in getattr(ioc, key)}))

        union = Ioc(
            "all",
            sha256=every("sha256"),
            paths=every("paths"),
            pools=every("pools"),
            pool_hosts=every("pool_hosts"),
            cron_lines=every("cron_lines"),
            units=every("units"),
        )
        snap = read_host(union, self.paths, self.scan, self.cache)
        # once while it lasts: the same unreadable part every few minutes is no news
        for e in [e for e in snap.errors if e not in self._unread]:
            log.info("IOC check could not read %s (said once while it lasts)", printable(e))
        self._unread = set(snap.errors)
        return {ioc_label(ioc.id): (path, ioc, find_hits(ioc, snap)) for path, ioc in iocs}


# --------------------------------------------------------------------------- CLI


def run(args: argparse.Namespace) -> int:
    """``minerwatch ioc extract EVIDENCE [--output FILE]``; evidence that names no
    indicator is an :class:`InputError` and nothing is written: ``hunt`` refuses an empty
    IOC file, so writing one would only defer the error to another host."""
    path = _evidence_path(args)
    ioc = extract(read_evidence_file(path), source=path.name)
    for what in ioc.source.get("left_out") or ():
        print(f"minerwatch: note: left out {printable(what)}", file=sys.stderr)
    if ioc.empty():
        raise InputError(
            str(path),
            None,
            f"evidence naming at least one indicator of the suspect ({', '.join(LIST_KEYS)}; "
            "binaries a package shipped, or without a package record of the system's "
            "folders, are left out)",
            f"none for {_suspects(ioc)}; no IOC file written",
        )
    text = json.dumps(ioc.to_json(), indent=1) + "\n"
    if args.output is None or is_stdout(args.output):  # "-" as for score, not a file named -
        sys.stdout.write(text)
    else:
        atomic_write(args.output, text, mode=0o600)  # cron lines and paths, as evidence
        print(f"wrote {ioc.id} to {args.output}", file=sys.stderr)
    return 0


def _evidence_path(args: argparse.Namespace) -> Path:
    """The file given, or, for a bare name that is no file here, the evidence file of that name
    or episode id in the agent's evidence folder (what ``evidence list`` prints)."""
    given = Path(args.evidence)
    if given.is_file() or "/" in str(args.evidence):
        return given  # a missing path is named by the reader
    from minerwatch.service.config import agent_files_config

    cfg = agent_files_config(args.config, args.data_dir)
    return locate(cfg.evidence_dir or cfg.data_dir / "evidence", str(args.evidence))


def _suspects(ioc: Ioc) -> str:
    pids = ioc.source.get("suspect_pids") or []
    if not pids:
        return "its processes (it lists none)"
    return "the suspect " + ", ".join(f"pid {printable(p)}" for p in pids)


def scan_folders(folders: Sequence[Path]) -> tuple[Path, ...]:
    """The ``--scan`` folders, each checked before any is scanned: a folder that is not
    there or cannot be read would otherwise be reported "clean" without being looked at."""
    expected = "a --scan folder this user can read"
    for folder in folders:
        try:
            is_dir = stat.S_ISDIR(folder.stat().st_mode)
            if is_dir:
                with os.scandir(folder):
                    pass
        except FileNotFoundError:
            raise InputError(str(folder), None, expected, "no such folder") from None
        except OSError as exc:
            raise InputError(str(folder), None, expected, exc.strerror or str(exc)) from None
        if not is_dir:
            raise InputError(str(folder), None, expected, "a file, not a folder")
    return tuple(folders)


def run_hunt(args: argparse.Namespace) -> int:
    """``minerwatch hunt IOC-FILE``: 1 on a hit (each printed), 0 when clean, 2 when nothing
    was found but part of the host could not be checked (another user's processes, a folder
    or crontab this user may not read): "clean" would then be a guess."""
    ioc = load_ioc(args.ioc_file)
    scan = DEFAULT_SCAN if args.scan is None else scan_folders(args.scan)
    snap = read_host(ioc, scan=scan, resolve=args.resolve)
    hits = find_hits(ioc, snap)
    if ioc.pool_hosts and not args.resolve:
        print(
            f"minerwatch: note: the pools {', '.join(map(printable, ioc.pool_hosts))} were "
            "matched on command lines only; --resolve also matches connections to their "
            "addresses (a DNS query for a mining pool may itself raise an alert)",
            file=sys.stderr,
        )
    if args.json:
        doc = {"ioc": ioc.id, "hits": [asdict(h) for h in hits], "errors": snap.errors}
        print(json.dumps(doc, indent=1))
    else:
        for h in hits:
            print(f"hit {ioc.id}: {h.kind} {printable(h.value)} -- {printable(h.where)}")
    for e in snap.errors[:_MAX_NOTES]:
        print(f"minerwatch: note: could not check {printable(e)}", file=sys.stderr)
    if len(snap.errors) > _MAX_NOTES:
        more = len(snap.errors) - _MAX_NOTES
        print(f"minerwatch: note: and {more} more not checked", file=sys.stderr)
    if hits:
        return 1
    if snap.errors:
        print(
            f"minerwatch: error: {args.ioc_file}: expected to check the whole host, got "
            f"{len(snap.errors)} part(s) it could not check (above); no indicator of "
            f"{ioc.id} in the rest, which does not make this host clean",
            file=sys.stderr,
        )
        return 2
    if not args.json:
        print(f"clean: no indicator of {ioc.id} on this host")
    return 0
