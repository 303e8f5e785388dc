"""Process tables: which processes used the CPU in each sample (telemetry schema 2).

A process table sits beside the host samples (``web-1.procs.csv`` next to ``web-1.csv``):
one row per listed process per sample, matched to the host sample by ``host`` and
``timestamp``. Identities are normalised here, once, for the collector, the simulator,
training and the agent alike: a deploy into a new release folder or a compiler upgrade must
be the *same* identity, while an executable from ``/dev/shm`` or a kernel thread's name on
a file on disk must stand out. Numpy and the standard library only (the agent imports it).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from minerwatch.features.atomic import replace_together, stage
from minerwatch.features.errors import InputError

if TYPE_CHECKING:
    from minerwatch.features.proctable import ProcessRecord

#: The process table's required columns, in the order the collector writes them.
PROC_TABLE_COLUMNS = ("timestamp", "host", "pid", "name", "exe", "user", "cpu_percent")
#: Optional column: CPU of the process's garbage-collector threads, percent of one core
#: (empty: not read). A GC storm is housekeeping, not work a miner does.
GC_COLUMN = "gc_cpu_percent"
#: The header every writer of a process table writes.
PROC_TABLE_HEADER = (*PROC_TABLE_COLUMNS, GC_COLUMN)
#: Thread names (``/proc/<pid>/task/<tid>/comm``) of managed runtimes' garbage collectors:
#: HotSpot's G1 and Parallel workers (``GC Thread#0``) and G1's concurrent threads, ZGC,
#: Shenandoah, .NET's server and background GC, Kotlin/Native's collector.
GC_THREAD_PREFIXES = (
    "GC Thread",
    "GC thread",
    "G1 Conc",
    "G1 Refine",
    "G1 Main Marker",
    "G1 Marker",  # JDK 9-11's concurrent marking workers
    "ZWorker",
    "ZDriver",
    "Shenandoah",
    ".NET Server GC",
    ".NET BGC",
)
#: CPU of known processes' garbage collectors, in all and in the busiest process: not judged,
#: taken out of the CPU columns (:func:`~minerwatch.features.pipeline.without_gc`).
GC_COLUMNS = ("proc_gc_cpu_percent", "proc_gc_top_cpu_percent")
#: The host's 15-minute CPU floors by process (each process's own floor, summed; the largest).
SUSTAINED_COLUMNS = ("proc_sustained_cpu_percent", "proc_sustained_top_cpu_percent")
#: Per-sample columns the process baseline derives from a process table (see
#: :mod:`minerwatch.baseline.procbase`), percent of one core.
PROC_COLUMNS = (
    "proc_new_cpu_percent",
    "proc_new_tool_cpu_percent",
    "proc_odd_cpu_percent",
    "proc_surge_cpu_percent",
    "proc_offhour_cpu_percent",
    *GC_COLUMNS,
    *SUSTAINED_COLUMNS,
)
#: The collector lists this many of the busiest processes per sample.
TOP_PROCESSES = 10
#: File names ending so are process tables; every other telemetry file is host samples.
PROCS_SUFFIXES = (".procs.csv", ".procs.parquet")
DELETED = " (deleted)"

#: Folders written by package managers: a never-seen program there is an installed tool
#: (an administrator's ``rsync``), judged more slowly than one from anywhere else.
SYSTEM_DIRS = (
    "/usr/bin/",
    "/usr/sbin/",
    "/bin/",
    "/sbin/",
    "/usr/lib/",
    "/usr/lib64/",
    "/usr/libexec/",
    "/lib/",
    "/lib64/",
    "/usr/share/",
)
#: Hidden folders aside, where no installed program runs from: the indicator knowledge
#: base's temporary folders (``service/data/indicators.json``, read once) plus these.
VOLATILE_DIRS = ("/dev/", "/run/user/", "/proc/")
_DIGITS = re.compile(r"\d+")
MEMFD = "/memfd:"
_MEMFD_ID = re.compile(r"[-.:]?[0-9a-f]{6,}$")


@functools.cache
def _kb() -> tuple[frozenset[str], tuple[str, ...], frozenset[str]]:
    """(kernel-thread names, temporary folders, miner names) from the indicator knowledge base,
    the one list of them (its sources are named there)."""
    text = resources.files("minerwatch.service").joinpath("data/indicators.json").read_text("utf-8")
    ind = json.loads(text)["indicators"]
    return (
        frozenset(ind["fake_kernel_thread"]["kernel_thread_names"]),
        tuple(d.rstrip("/") + "/" for d in ind["exe_in_tmp"]["dirs"]) + VOLATILE_DIRS,
        frozenset(n.lower() for n in ind["miner_name"]["names"]),
    )


def kernel_thread_base(name: str) -> str:
    """``kworker/0:1-events`` -> ``kworker``: kernel threads suffix cpu and queue after / or :."""
    name = name.strip()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    for sep in ("/", ":"):
        name = name.split(sep, 1)[0]
    return name


def is_gc_thread(name: str) -> bool:
    """Whether a thread's name is one a runtime gives its garbage collector.

    >>> is_gc_thread("GC Thread#3"), is_gc_thread("G1 Conc#0"), is_gc_thread("pool-1-thread-1")
    (True, True, False)
    """
    return name.startswith(GC_THREAD_PREFIXES)


def clean_text(text: str) -> str:
    """Text safe to write as UTF-8: undecodable bytes of a process name (read from /proc
    with surrogate escapes) become U+FFFD; a hostile name cannot break a file or the store."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def is_procs_file(path: Path) -> bool:
    return any(path.name.endswith(s) for s in PROCS_SUFFIXES)


def normalize_name(name: str) -> str:
    """Digits become ``#``: ``kworker/1:2`` and ``kworker/0:0`` are one identity."""
    return _DIGITS.sub("#", name)


def normalize_exe(exe: str) -> str:
    """The executable's path with release, version and architecture folders folded.

    A folder whose name holds a digit (``releases/20261201-ab12``, ``gcc/.../12``,
    ``python3.11``) becomes ``#``; digit runs in the file name become ``#``. ``(deleted)``
    is dropped here (it is a flag of its own, :func:`is_deleted`).
    """
    path = exe.removesuffix(DELETED)
    if not path:
        return ""
    if path.startswith(MEMFD):  # runc, sandboxes: /memfd:sealed-91173221a7ea
        return _MEMFD_ID.sub("", path)
    parts = path.split("/")
    folded = ["#" if any(ch.isdigit() for ch in p) else p for p in parts[:-1]]
    return "/".join([*folded, _DIGITS.sub("#", parts[-1])])


def identity(name: str, exe: str, user: str) -> str:
    """One process identity: normalised name, normalised exe and user, NUL-separated."""
    return f"{normalize_name(name)}\0{normalize_exe(exe)}\0{user}"


def is_memfd(exe: str) -> bool:
    """An in-memory executable (``memfd_create``), which the kernel always shows as deleted:
    container runtimes and sandboxes run that way every day."""
    return exe.startswith(MEMFD)


def is_deleted(exe: str) -> bool:
    """Removed from disk while running (an in-memory executable is not)."""
    return exe.endswith(DELETED) and not is_memfd(exe)


def odd_place(exe: str) -> bool:
    """An executable under a temporary or volatile folder (no installed program runs there)."""
    path = exe.removesuffix(DELETED)
    return bool(path) and path.startswith(_kb()[1])


def hidden_place(exe: str) -> bool:
    """An executable inside a hidden folder (``~/.x/``): odd when new, learnable when usual
    (``~/.local/bin`` is where user tools live)."""
    parts = exe.removesuffix(DELETED).split("/")[:-1]
    return any(p.startswith(".") and p not in (".", "..") for p in parts)


def kernel_like(name: str, exe: str) -> bool:
    """A kernel thread's name on a process that has an executable file."""
    return bool(exe) and kernel_thread_base(name) in _kb()[0]


def miner_name(name: str, exe: str) -> bool:
    """A known miner binary's name as the process or executable name."""
    base = exe.removesuffix(DELETED).rsplit("/", 1)[-1]
    return name.lower() in _kb()[2] or base.lower() in _kb()[2]


def in_system_dir(exe: str) -> bool:
    return exe.removesuffix(DELETED).startswith(SYSTEM_DIRS)


def disguise(name: str, exe: str) -> str:
    """Why a process is suspect on any host (no baseline needed), or ``""``: a miner's
    name, or the disguises of the indicator knowledge base (plus hidden folders)."""
    if miner_name(name, exe):
        return "a known miner's name"
    if is_deleted(exe):
        return "deleted exe"
    if kernel_like(name, exe):
        return "kernel-thread name with an exe"
    if odd_place(exe):
        return "exe in a temporary folder"
    return ""


@dataclass(frozen=True)
class ProcessRows:
    """A process table as equal-length arrays, sorted by time (stable)."""

    timestamps: np.ndarray
    pids: np.ndarray
    names: np.ndarray
    exes: np.ndarray
    users: np.ndarray
    cpu: np.ndarray
    gc: np.ndarray | None = None  # GC threads' CPU per row; None: not recorded

    def __len__(self) -> int:
        return len(self.timestamps)

    @classmethod
    def from_lists(
        cls,
        timestamps: Sequence[float] | np.ndarray,
        pids: Sequence[int] | np.ndarray,
        names: Sequence[str] | np.ndarray,
        exes: Sequence[str] | np.ndarray,
        users: Sequence[str] | np.ndarray,
        cpu: Sequence[float] | np.ndarray,
        gc: Sequence[float] | np.ndarray | None = None,
    ) -> ProcessRows:
        ts = np.asarray(timestamps, dtype=np.float64)
        order = np.argsort(ts, kind="stable")

        def text(values: Sequence[str] | np.ndarray) -> np.ndarray:
            out = np.empty(len(ts), dtype=object)
            out[:] = list(values)
            return out[order]

        return cls(
            timestamps=ts[order],
            pids=np.asarray(pids, dtype=np.int64)[order],
            names=text(names),
            exes=text(exes),
            users=text(users),
            cpu=np.asarray(cpu, dtype=np.float64)[order],
            gc=None if gc is None else np.asarray(gc, dtype=np.float64)[order],
        )

    @classmethod
    def empty(cls) -> ProcessRows:
        return cls.from_lists([], [], [], [], [], [])

    @classmethod
    def concat(cls, parts: Sequence[ProcessRows]) -> ProcessRows:
        if not parts:
            return cls.empty()
        return cls.from_lists(
            np.concatenate([p.timestamps for p in parts]),
            np.concatenate([p.pids for p in parts]),
            np.concatenate([p.names for p in parts]),
            np.concatenate([p.exes for p in parts]),
            np.concatenate([p.users for p in parts]),
            np.concatenate([p.cpu for p in parts]),
            None
            if all(p.gc is None for p in parts)
            else np.concatenate([p.gc_or_nan() for p in parts]),
        )

    def between(self, start: float, end: float) -> ProcessRows:
        """Rows with ``start <= timestamp < end``."""
        lo, hi = np.searchsorted(self.timestamps, [start, end], side="left")
        return self.take(slice(int(lo), int(hi)))

    def take(self, which: slice | np.ndarray) -> ProcessRows:
        return ProcessRows(
            self.timestamps[which],
            self.pids[which],
            self.names[which],
            self.exes[which],
            self.users[which],
            self.cpu[which],
            None if self.gc is None else self.gc[which],
        )

    def gc_or_nan(self) -> np.ndarray:
        return np.full(len(self), np.nan) if self.gc is None else self.gc

    def sample_index(self, timestamps: np.ndarray) -> np.ndarray:
        """For each row, the index of the host sample with the same timestamp (-1: none)."""
        ts = np.asarray(timestamps, dtype=np.float64)
        at = np.searchsorted(ts, self.timestamps)
        at = np.minimum(at, max(len(ts) - 1, 0))
        ok = (len(ts) > 0) & (ts[at] == self.timestamps) if len(ts) else np.zeros(len(self), bool)
        return np.where(ok, at, -1).astype(np.int64)


def write_procs_csv(path: Path, host: str, rows: ProcessRows, append: bool = False) -> None:
    """Write (or append to) a process table; a new file is written whole, atomically."""
    if append and path.exists():
        with path.open("a", encoding="utf-8", newline="") as fh:
            csv.writer(fh).writerows(_table_rows(host, rows))
        return
    tmp = stage(path, lambda fh: write_procs_rows(fh, host, rows), mode=0o600)
    try:
        replace_together([(tmp, path)])
    finally:
        tmp.unlink(missing_ok=True)  # gone once moved; left only by a failed move


def write_procs_rows(fh: TextIO, host: str, rows: ProcessRows) -> None:
    """A whole process table (header and rows) into an open text file (``newline=""``)."""
    writer = csv.writer(fh)
    writer.writerow(PROC_TABLE_HEADER)
    writer.writerows(_table_rows(host, rows))


def _table_rows(host: str, rows: ProcessRows) -> Iterable[list[object]]:
    return (
        [f"{t:.3f}".rstrip("0").rstrip("."), host, int(p), n, e, u, f"{c:.2f}", _gc_text(g)]
        for t, p, n, e, u, c, g in zip(
            rows.timestamps.tolist(),
            rows.pids.tolist(),
            rows.names.tolist(),
            rows.exes.tolist(),
            rows.users.tolist(),
            rows.cpu.tolist(),
            rows.gc_or_nan().tolist(),
            strict=True,
        )
    )


def _gc_text(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else ""


def table_exe(record: ProcessRecord) -> str:
    """The executable as a process table holds it: `` (deleted)`` kept as a mark."""
    return record.exe + DELETED if record.exe_deleted and record.exe else record.exe


def rows_from_records(ts: float, records: Iterable[ProcessRecord]) -> ProcessRows:
    """One sample's process rows from the process table's records."""
    recs = list(records)
    return ProcessRows.from_lists(
        [ts] * len(recs),
        [r.pid for r in recs],
        [r.name for r in recs],
        [table_exe(r) for r in recs],
        [r.username for r in recs],
        [r.cpu_percent for r in recs],
        [r.gc_cpu_percent for r in recs],
    )


def _float(text: str, where: str, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(where, line, f"a number in column {column!r}", repr(text)) from None
    return value


def pid_ok(v: Any) -> Any:
    """Per value (array or number): a process id, a whole number >= 0, or missing (NaN: read
    as 0, as an empty cell is). Every process-table reader checks with it."""
    return np.isnan(v) | ((v >= 0) & (v < 2**31) & (v == np.floor(v)))


def share_ok(v: Any) -> Any:
    """Per value (array or number): a CPU share, finite and >= 0, or missing (NaN: unknown).
    A negative or infinite share would pass for a quiet or a runaway process."""
    return np.isnan(v) | (np.isfinite(v) & (v >= 0))


def _percent(text: str, where: str, line: int, column: str) -> float:
    """A CPU share (:func:`share_ok`); an empty cell is unknown."""
    if not text.strip():
        return float("nan")
    value = _float(text, where, line, column)
    if not share_ok(value):
        raise InputError(where, line, f"a percentage >= 0 in column {column!r}", repr(text))
    return value


def read_procs_csv(path: Path) -> dict[str, ProcessRows]:
    """One :class:`ProcessRows` per host of a process table (extra columns are ignored)."""
    where = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(where, None, "a readable process table", str(exc)) from None
    if raw[:2] == b"\x1f\x8b" or b"\0" in raw[:4096]:
        raise InputError(where, None, "a process table as UTF-8 CSV text", "binary data")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(where, None, "UTF-8 text", f"an invalid byte at {exc.start}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        raise InputError(where, 1, f"a header with {', '.join(PROC_TABLE_COLUMNS)}", "empty file")
    header = [h.strip() for h in header]
    missing = [c for c in PROC_TABLE_COLUMNS if c not in header]
    if missing:
        raise InputError(
            where, 1, f"a header with {', '.join(PROC_TABLE_COLUMNS)}", f"missing {missing}"
        )
    at = [header.index(c) for c in PROC_TABLE_COLUMNS]
    gc_at = header.index(GC_COLUMN) if GC_COLUMN in header else -1
    need = max(at) + 1  # the optional GC column may be left off a row's end
    cols: dict[str, list[list[object]]] = {}
    for row in reader:
        line = reader.line_num  # the physical line (a quoted name may hold a newline)
        if not row:
            continue
        if len(row) < need:
            raise InputError(where, line, f"at least {need} fields", f"{len(row)}")
        t, host, pid, name, exe, user, cpu = (row[i] for i in at)
        ts = _float(t, where, line, "timestamp")
        if not np.isfinite(ts):
            raise InputError(where, line, "a finite timestamp", repr(t))
        if not host.strip():
            raise InputError(where, line, "a host name in column 'host'", "an empty cell")
        pid_v = _float(pid, where, line, "pid") if pid.strip() else 0.0
        if math.isnan(pid_v) or not pid_ok(pid_v):  # "nan" is no empty cell
            raise InputError(
                where, line, "a process id (a whole number >= 0) in column 'pid'", repr(pid)
            )
        cpu_v = _percent(cpu, where, line, "cpu_percent")
        gc_v = _percent(row[gc_at] if 0 <= gc_at < len(row) else "", where, line, GC_COLUMN)
        bucket = cols.setdefault(host.strip(), [[], [], [], [], [], [], []])
        for k, v in enumerate((ts, int(pid_v), name, exe, user, cpu_v, gc_v)):
            bucket[k].append(v)
    return {
        host: ProcessRows.from_lists(
            b[0],  # type: ignore[arg-type]
            b[1],  # type: ignore[arg-type]
            b[2],  # type: ignore[arg-type]
            b[3],  # type: ignore[arg-type]
            b[4],  # type: ignore[arg-type]
            b[5],  # type: ignore[arg-type]
            b[6] if gc_at >= 0 else None,  # type: ignore[arg-type]
        )
        for host, b in cols.items()
    }


def read_procs(path: Path) -> dict[str, ProcessRows]:
    """A process table file (CSV or Parquet) by host."""
    if path.name.endswith(".procs.parquet"):
        from minerwatch.features.io import read_procs_parquet  # pyarrow stays out of the agent

        return read_procs_parquet(path)
    return read_procs_csv(path)
