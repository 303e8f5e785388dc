"""Miner indicators: a small knowledge base kept as data, and pure checks over processes.

The anomaly model says *that* a window is odd; indicators say *why it may be mining*. Each
check is a pure function over a :class:`~minerwatch.features.proctable.ProcessRecord` (read
with its command line and ports by the process table), so it is tested on literals; only
the ``/etc/ld.so.preload`` read touches the live system.

Hits carry only bounded values: an indicator id from :data:`INDICATOR_IDS`, a reason code
from :data:`REASON_CODES`, the pid, and a ``detail`` taken from the knowledge base itself
(the matched miner name, port, scheme or directory), never text the process controls.
Command lines are used for matching and then dropped.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

from minerwatch.features.errors import InputError
from minerwatch.features.procs import is_memfd, kernel_thread_base
from minerwatch.features.proctable import ProcessRecord
from minerwatch.service.packages import DPKG_INFO, package_record

#: The bounded set of indicator ids (metric label values and feature-name suffixes).
INDICATOR_IDS: tuple[str, ...] = (
    "miner_name",
    "pool_port",
    "stratum_url",
    "exe_in_tmp",
    "exe_deleted",
    "fake_kernel_thread",
    "ld_so_preload",
    "unexplained_cpu",
)

#: Reason codes each indicator may report; together with the id they form a bounded label set.
REASON_CODES: dict[str, tuple[str, ...]] = {
    "miner_name": ("process_name", "exe_name", "argv0_name"),
    "pool_port": ("remote_port",),
    "stratum_url": ("cmdline_scheme",),
    "exe_in_tmp": ("exe_dir",),
    "exe_deleted": ("exe_unlinked",),
    "fake_kernel_thread": ("bracketed_argv0_with_exe", "kernel_thread_name_with_exe"),
    "ld_so_preload": ("non_empty",),
    "unexplained_cpu": ("host_above_visible",),
}

DEFAULT_LD_PRELOAD = Path("/etc/ld.so.preload")


@dataclass(frozen=True)
class KnowledgeBase:
    """Validated indicator data; build it with :func:`load_knowledge_base`."""

    miner_names: frozenset[str]
    pool_ports: frozenset[int]
    stratum_schemes: tuple[str, ...]
    tmp_dirs: tuple[str, ...]
    kernel_thread_names: frozenset[str]
    min_gap_percent: float
    min_ratio: float
    sources: Mapping[str, Mapping[str, str]]
    indicator_sources: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True)
class IndicatorHit:
    """One indicator firing: bounded id and reason code, the pid (None for host-wide ones).

    ``detail`` is a value from the knowledge base or a number computed here (the matched
    port, name, scheme, directory, CPU gap), for explanations only, never a metric label.
    """

    indicator_id: str
    reason: str
    pid: int | None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form for explanations and evidence files."""
        return {
            "indicator_id": self.indicator_id,
            "reason": self.reason,
            "pid": self.pid,
            "detail": self.detail,
        }


# ---------------------------------------------------------------------------------------
# Knowledge base loading and validation


def default_kb_path() -> Path:
    """The knowledge base shipped inside the package (``service/data/indicators.json``)."""
    return Path(str(resources.files("minerwatch.service").joinpath("data/indicators.json")))


def load_knowledge_base(path: Path | str | None = None) -> KnowledgeBase:
    """Read and validate an indicator knowledge base; every problem names the key at fault.

    >>> kb = load_knowledge_base()
    >>> 3333 in kb.pool_ports and "xmrig" in kb.miner_names
    True
    """
    where = Path(path) if path is not None else default_kb_path()
    try:
        text = where.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(str(where), None, "a readable indicator knowledge base", str(exc)) from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(str(where), exc.lineno, "valid JSON", exc.msg) from exc
    return parse_knowledge_base(raw, str(where))


def parse_knowledge_base(raw: Any, where: str = "<knowledge base>") -> KnowledgeBase:
    """Validate already-decoded knowledge-base JSON (split out so tests can feed literals)."""
    v = _Validator(where)
    top = v.mapping(raw, "top level")
    v.equal(top.get("format"), "minerwatch-indicators", "format")
    v.equal(top.get("version"), 1, "version")
    sources_raw = v.mapping(top.get("sources"), "sources")
    sources: dict[str, dict[str, str]] = {}
    for sid, entry in sources_raw.items():
        e = v.mapping(entry, f"sources.{sid}")
        sources[sid] = {k: v.text(e.get(k), f"sources.{sid}.{k}") for k in ("title", "url", "fact")}
        if not sources[sid]["url"].startswith("https://"):
            v.fail(f"sources.{sid}.url starting with https://", repr(sources[sid]["url"]))
    indicators = v.mapping(top.get("indicators"), "indicators")
    unknown = sorted(set(indicators) - set(INDICATOR_IDS))
    if unknown:
        v.fail(f"indicator ids among {', '.join(INDICATOR_IDS)}", ", ".join(unknown))
    cited: dict[str, tuple[str, ...]] = {}
    ind: dict[str, Mapping[str, Any]] = {}
    for iid in INDICATOR_IDS:
        entry = v.mapping(indicators.get(iid), f"indicators.{iid}")
        v.text(entry.get("description"), f"indicators.{iid}.description")
        refs = tuple(v.texts(entry.get("sources"), f"indicators.{iid}.sources"))
        if not refs:
            v.fail(f"at least one source in indicators.{iid}.sources", "[]")
        for ref in refs:
            if ref not in sources:
                v.fail(f"indicators.{iid}.sources to name a key of 'sources'", repr(ref))
        cited[iid] = refs
        ind[iid] = entry
    names = v.texts(ind["miner_name"].get("names"), "indicators.miner_name.names")
    ports = ind["pool_port"].get("ports")
    if not isinstance(ports, list) or not ports:
        v.fail("indicators.pool_port.ports as a non-empty list of ports", repr(ports))
    for port in ports:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            v.fail("indicators.pool_port.ports to hold integers 1-65535", repr(port))
    schemes = v.texts(ind["stratum_url"].get("schemes"), "indicators.stratum_url.schemes")
    dirs = v.texts(ind["exe_in_tmp"].get("dirs"), "indicators.exe_in_tmp.dirs")
    for d in dirs:
        if not d.startswith("/") or d.endswith("/"):
            v.fail("indicators.exe_in_tmp.dirs as absolute paths without a trailing /", repr(d))
    kthreads = v.texts(
        ind["fake_kernel_thread"].get("kernel_thread_names"),
        "indicators.fake_kernel_thread.kernel_thread_names",
    )
    cpu = ind["unexplained_cpu"]
    gap = v.number(cpu.get("min_gap_percent"), "indicators.unexplained_cpu.min_gap_percent")
    ratio = v.number(cpu.get("min_ratio"), "indicators.unexplained_cpu.min_ratio")
    if not 0 < gap <= 100:
        v.fail("indicators.unexplained_cpu.min_gap_percent in (0, 100]", repr(gap))
    if ratio < 1:
        v.fail("indicators.unexplained_cpu.min_ratio >= 1", repr(ratio))
    return KnowledgeBase(
        miner_names=frozenset(n.lower() for n in names),
        pool_ports=frozenset(ports),
        stratum_schemes=tuple(s.lower() for s in schemes),
        tmp_dirs=tuple(dirs),
        kernel_thread_names=frozenset(kthreads),
        min_gap_percent=gap,
        min_ratio=ratio,
        sources=sources,
        indicator_sources=cited,
    )


class _Validator:
    """Small helpers that raise :class:`InputError` naming the file and the key."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, expected: str, got: str | None) -> NoReturn:
        raise InputError(self.where, None, expected, got)

    def mapping(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(f"{key} as a JSON object", type(value).__name__)
        return value

    def text(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(f"{key} as a non-empty string", repr(value))
        return value

    def texts(self, value: Any, key: str) -> list[str]:
        if not isinstance(value, list) or not value:
            self.fail(f"{key} as a non-empty list of strings", repr(value))
        return [self.text(item, key) for item in value]

    def number(self, value: Any, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(f"{key} as a number", repr(value))
        return float(value)

    def equal(self, value: Any, want: Any, key: str) -> None:
        if value != want:
            self.fail(f"{key} = {want!r}", repr(value))


# ---------------------------------------------------------------------------------------
# Pure checks


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def check_miner_name(p: ProcessRecord, kb: KnowledgeBase) -> IndicatorHit | None:
    """Known miner binary name as process name, executable name or argv[0]."""
    candidates = (
        ("process_name", p.name),
        ("exe_name", _basename(p.exe)),
        ("argv0_name", _basename(p.cmdline[0]) if p.cmdline else ""),
    )
    for reason, value in candidates:
        low = value.lower()
        if low in kb.miner_names:
            return IndicatorHit("miner_name", reason, p.pid, low)
    return None


def check_pool_port(p: ProcessRecord, kb: KnowledgeBase) -> IndicatorHit | None:
    """A connection to a remote mining-pool port (the lowest such port is reported)."""
    matched = sorted(port for port in set(p.remote_ports) if port in kb.pool_ports)
    return IndicatorHit("pool_port", "remote_port", p.pid, str(matched[0])) if matched else None


def check_stratum_url(p: ProcessRecord, kb: KnowledgeBase) -> IndicatorHit | None:
    """A Stratum URL scheme anywhere in the command line; only the scheme is reported."""
    joined = " ".join(p.cmdline).lower()
    for scheme in kb.stratum_schemes:
        if scheme in joined:
            return IndicatorHit("stratum_url", "cmdline_scheme", p.pid, scheme)
    return None


def check_exe_in_tmp(p: ProcessRecord, kb: KnowledgeBase) -> IndicatorHit | None:
    """Executable under a world-writable temporary directory (by path prefix)."""
    for d in kb.tmp_dirs:
        if p.exe.startswith(d + "/"):
            return IndicatorHit("exe_in_tmp", "exe_dir", p.pid, d)
    return None


def check_exe_deleted(p: ProcessRecord, kb: KnowledgeBase) -> IndicatorHit | None:
    """Executable unlinked from disk while the process runs. An in-memory executable
    (``memfd_create``: container runtimes, sandboxes) always reads as deleted and is not."""
    del kb
    hit = p.exe_deleted and not is_memfd(p.exe)
    return IndicatorHit("exe_deleted", "exe_unlinked", p.pid) if hit else None


def check_fake_kernel_thread(p: ProcessRecord, kb: KnowledgeBase) -> IndicatorHit | None:
    """Named like a kernel thread yet backed by an executable, which real kernel threads lack."""
    if not p.exe:
        return None
    argv0 = p.cmdline[0].strip() if p.cmdline else ""
    if len(argv0) > 2 and argv0.startswith("[") and argv0.endswith("]"):
        return IndicatorHit(
            "fake_kernel_thread", "bracketed_argv0_with_exe", p.pid, kernel_thread_base(argv0)
        )
    for candidate in (p.name, argv0):
        base = kernel_thread_base(candidate)
        if base and base in kb.kernel_thread_names:
            return IndicatorHit("fake_kernel_thread", "kernel_thread_name_with_exe", p.pid, base)
    return None


PROCESS_CHECKS = (
    check_miner_name,
    check_pool_port,
    check_stratum_url,
    check_exe_in_tmp,
    check_exe_deleted,
    check_fake_kernel_thread,
)


def unexplained_cpu_gap(
    host_cpu_percent: float,
    visible_cpu_percent: float,
    min_gap_percent: float = 25.0,
    min_ratio: float = 2.0,
) -> float | None:
    """The CPU gap in percentage points when it is too large to be accounting noise, else None.

    Both inputs are percent of the whole host (0-100): host CPU from ``/proc/stat`` and the
    sum of all visible processes' CPU. A rootkit can hide a miner's process but not its CPU
    time, so a gap that is both large (``> min_gap_percent``) and dominant (host more than
    ``min_ratio`` times the visible sum) is a sign of a hidden process.

    >>> unexplained_cpu_gap(90.0, 10.0)
    80.0
    >>> unexplained_cpu_gap(90.0, 60.0) is None
    True
    """
    gap = host_cpu_percent - visible_cpu_percent
    if gap > min_gap_percent and host_cpu_percent > min_ratio * visible_cpu_percent:
        return gap
    return None


def preload_entries(text: str) -> list[str]:
    """Library entries in ``ld.so.preload`` text (whitespace separated, ``#`` comments dropped)."""
    entries: list[str] = []
    for line in text.splitlines():
        entries.extend(line.split("#", 1)[0].split())
    return entries


def read_ld_preload(path: Path = DEFAULT_LD_PRELOAD) -> str | None:
    """The file's text, or None when it does not exist or cannot be read."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


#: The last answer of :func:`foreign_preloads`: the file's text and its libraries' stat keys.
_preload_seen: tuple[tuple[object, ...], list[str]] | None = None


def foreign_preloads(text: str, info: Path = DPKG_INFO) -> list[str]:
    """The entries of ``ld.so.preload`` text that no package shipped as they are now: a
    package's library preloaded on purpose (``snoopy``'s logger, an allocator) is how that
    host is, not a rootkit. Without a dpkg database every entry counts. Asked again only
    when the text or a library's inode, size or mtime changes: the agent looks every tick."""
    global _preload_seen
    entries = preload_entries(text)
    key: list[object] = [text, str(info)]
    for lib in entries:
        try:
            st = os.stat(lib)
            key.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, stat.S_ISREG(st.st_mode)))
        except OSError:
            key.append(None)
    if _preload_seen is not None and _preload_seen[0] == tuple(key):
        return list(_preload_seen[1])
    foreign = [lib for lib, k in zip(entries, key[2:], strict=True) if not _shipped(lib, k, info)]
    _preload_seen = (tuple(key), foreign)
    return list(foreign)


def _shipped(lib: str, key: object, info: Path) -> bool:
    """Whether ``lib`` is a regular file a package shipped with this very content."""
    if not lib.startswith("/") or not isinstance(key, tuple) or not key[-1]:
        return False  # a FIFO named there must not block the check
    record = package_record(lib, Path(lib), info)
    return record["manager"] == "dpkg" and record["as_shipped"] is True


def scan(
    procs: Iterable[ProcessRecord],
    kb: KnowledgeBase,
    host_cpu_percent: float | None,
    visible_cpu_percent: float | None,
    ld_preload_path: Path = DEFAULT_LD_PRELOAD,
    dpkg_info: Path = DPKG_INFO,
) -> list[IndicatorHit]:
    """Run every check; at most one hit per (indicator, pid).

    ``procs`` should come from ``ProcessTable.describe(..., cmdline=True, ports=True)``:
    without command line and ports the Stratum, pool-port and argv checks cannot fire.
    ``visible_cpu_percent`` must be the sum over *all* visible processes in percent of the
    whole host (not just the top few); pass None for either CPU figure to skip that check.
    """
    hits: list[IndicatorHit] = []
    for p in procs:
        for check in PROCESS_CHECKS:
            hit = check(p, kb)
            if hit is not None:
                hits.append(hit)
    text = read_ld_preload(ld_preload_path)
    if text is not None and foreign_preloads(text, dpkg_info):
        hits.append(IndicatorHit("ld_so_preload", "non_empty", None))
    if host_cpu_percent is not None and visible_cpu_percent is not None:
        gap = unexplained_cpu_gap(
            host_cpu_percent, visible_cpu_percent, kb.min_gap_percent, kb.min_ratio
        )
        if gap is not None:
            hits.append(IndicatorHit("unexplained_cpu", "host_above_visible", None, f"{gap:.1f}"))
    return hits


def indicator_counts(hits: Iterable[IndicatorHit]) -> dict[str, int]:
    """Hits per indicator id, every id present (zero by default), in :data:`INDICATOR_IDS` order.

    >>> indicator_counts([IndicatorHit("pool_port", "remote_port", 7)])["pool_port"]
    1
    """
    counts = dict.fromkeys(INDICATOR_IDS, 0)
    for hit in hits:
        if hit.indicator_id not in counts:
            raise ValueError(f"unknown indicator id {hit.indicator_id!r}")
        counts[hit.indicator_id] += 1
    return counts
