"""The telemetry collector: every registered source once per sample, one row of metrics.

:class:`Collector` is what the on-host agent calls every ``interval`` seconds; :func:`record`
is the fixed-interval loop behind ``minerwatch collect`` that appends rows to a CSV file.
Only the standard library, psutil and numpy are imported here (the agent must stay light).
"""

from __future__ import annotations

import csv
import fcntl
import io
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from minerwatch.features.errors import InputError
from minerwatch.features.procs import (
    PROC_TABLE_COLUMNS,
    PROC_TABLE_HEADER,
    clean_text,
    table_exe,
)
from minerwatch.features.proctable import ProcessRecord
from minerwatch.features.schema import METRIC_COLUMNS, TELEMETRY_COLUMNS
from minerwatch.features.sources import SOURCE_ERRORS, ProcessesSource, Source, build_sources
from minerwatch.features.sources.base import Clock

log = logging.getLogger(__name__)

NAN = float("nan")


class Collector:
    """Reads all telemetry sources and returns one row of :data:`METRIC_COLUMNS` per sample.

    The constructor reads every source once to prime the counters, so the first ``sample()``
    already covers a real interval (from construction to the call) and has no NaN rates. A
    source that fails leaves its columns NaN for that sample, increments ``errors[name]``
    and records ``last_error[name]``; the other sources are unaffected.

    ``interval`` is the cadence the caller intends (kept for the agent and for :func:`record`);
    ``sample()`` itself measures the real elapsed time on ``clock``.

    >>> c = Collector()                      # doctest: +SKIP
    >>> row = c.sample()                     # doctest: +SKIP
    >>> 0 <= row["cpu_percent"] <= 100       # doctest: +SKIP
    True
    >>> c.top_processes[0].name              # doctest: +SKIP
    'python3'
    """

    def __init__(
        self,
        interval: float = 10.0,
        host: str | None = None,
        clock: Clock = time.monotonic,
        sources: Mapping[str, Source] | None = None,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        self.interval = interval
        self.host = host or socket.gethostname()
        self.clock = clock
        self.sources: dict[str, Source] = build_sources(clock) if sources is None else dict(sources)
        _check_columns(self.sources)
        #: Failed reads per source since construction (priming included).
        self.errors: dict[str, int] = dict.fromkeys(self.sources, 0)
        #: The latest error message per source that has failed at least once.
        self.last_error: dict[str, str] = {}
        #: Wall-clock cost of each source's latest read, seconds (for self-monitoring).
        self.durations: dict[str, float] = dict.fromkeys(self.sources, 0.0)
        self._ok: set[str] = set()
        self._processes = next(
            (s for s in self.sources.values() if isinstance(s, ProcessesSource)), None
        )
        self._read_all()

    def _read_all(self) -> dict[str, float]:
        row = dict.fromkeys(METRIC_COLUMNS, NAN)
        ok: set[str] = set()
        for name, source in self.sources.items():
            started = time.perf_counter()
            try:
                values = source.read()
            except SOURCE_ERRORS as exc:
                self.errors[name] += 1
                self.last_error[name] = f"{type(exc).__name__}: {exc}"
                if name in self._ok or self.errors[name] == 1:  # log transitions, not every miss
                    log.warning("telemetry source %s failed: %s", name, exc)
                continue
            finally:
                self.durations[name] = time.perf_counter() - started
            ok.add(name)
            for column in source.columns:
                row[column] = float(values.get(column, NAN))
        self._ok = ok
        return row

    def sample(self) -> dict[str, float]:
        """Read every source now; metrics for the interval since the previous sample.

        Returns a dict with exactly the keys of :data:`METRIC_COLUMNS`, in that order; a value
        is NaN where its source failed or a rate was undefined (counter reset, no elapsed time).
        """
        return self._read_all()

    @property
    def top_processes(self) -> tuple[ProcessRecord, ...]:
        """The busiest processes of the latest interval, busiest first (empty if unknown)."""
        if self._processes is None or ProcessesSource.name not in self._ok:
            return ()
        return self._processes.top

    @property
    def visible_proc_cpu_percent(self) -> float:
        """Summed CPU of all visible processes over the latest interval, percent of the host.

        Compare with ``cpu_percent`` (from ``/proc/stat``): a large, lasting gap means CPU
        spent by something the process list does not show. Short-lived processes that exited
        between samples also fall in the gap, so judge it against the host's own baseline.
        """
        if self._processes is None or ProcessesSource.name not in self._ok:
            return NAN
        return self._processes.visible_cpu_percent

    @property
    def proc_skipped(self) -> dict[str, int]:
        """Cumulative expected per-process failures (vanished, access denied, zombie)."""
        return dict(self._processes.skipped) if self._processes is not None else {}


def _check_columns(sources: Mapping[str, Source]) -> None:
    """Each metric column belongs to at most one source, and only schema columns exist."""
    owner: dict[str, str] = {}
    for name, source in sources.items():
        for column in source.columns:
            if column not in METRIC_COLUMNS:
                raise ValueError(f"source {name!r} produces unknown column {column!r}")
            if column in owner:
                raise ValueError(
                    f"column {column!r} produced by both {owner[column]!r} and {name!r}"
                )
            owner[column] = name


def _format_value(value: float) -> str:
    """Up to 6 significant digits; NaN/inf as an empty field (a missing value)."""
    if not math.isfinite(value):
        return ""
    if value == 0:
        return "0"
    return f"{value:.6g}"


def format_row(ts: float, host: str, metrics: Mapping[str, float]) -> list[str]:
    """One CSV row in :data:`TELEMETRY_COLUMNS` order; missing or NaN metrics are empty.

    >>> format_row(1700000000.12345, "web1", {"cpu_percent": 12.3456789, "load1": 0.0})[:4]
    ['1700000000.123', 'web1', '12.3457', '']
    """
    return [
        f"{ts:.3f}",
        host,
        *(_format_value(float(metrics.get(c, NAN))) for c in METRIC_COLUMNS),
    ]


def _check_header(
    output: Path,
    header: Sequence[str] = TELEMETRY_COLUMNS,
    what: str = "telemetry",
    also: Sequence[str] | None = None,
) -> bool:
    """True if ``output`` already has rows; InputError if its header is neither ``header``
    nor ``also`` (appending to another file would leave it unreadable)."""
    try:
        with output.open(newline="", encoding="utf-8") as f:
            first = next(csv.reader(f), None)
    except FileNotFoundError:
        return False
    except UnicodeDecodeError:
        first = ["(not UTF-8 text)"]
    if first is None:
        return False
    if tuple(first) not in (tuple(header), tuple(also or header)):
        raise InputError(str(output), 1, f"the {what} header {','.join(header)}", ",".join(first))
    return True


def check_output_name(output: Path) -> None:
    """``collect`` writes CSV text: a ``.parquet`` name would hold text readers refuse, and a
    ``.procs.csv`` name is read as a process table (its own table would be ``.procs.procs.csv``)."""
    name = output.name
    if not name.endswith(".csv") or name.endswith(".procs.csv"):
        raise InputError(
            str(output), None, "a file name ending in .csv (not .procs.csv)", repr(name)
        )


def procs_path_for(output: Path) -> Path:
    """``web-1.csv`` -> ``web-1.procs.csv``: the process table beside the samples."""
    return output.with_name(output.name.removesuffix(output.suffix) + ".procs.csv")


def proc_rows(ts: str, host: str, records: Sequence[ProcessRecord]) -> list[list[object]]:
    """Process-table rows of one sample (the timestamp as the sample row writes it)."""
    return [
        [
            ts,
            host,
            r.pid,
            clean_text(r.name),
            clean_text(table_exe(r)),
            clean_text(r.username),
            _format_value(r.cpu_percent),
            _format_value(r.gc_cpu_percent),
        ]
        for r in records
    ]


@dataclass(frozen=True)
class Recorded:
    """What :func:`record` did: ``rows`` samples written of ``planned``; ``interrupted`` when
    Ctrl-C (or a signal the caller turns into KeyboardInterrupt) ended it early; ``error`` the
    write that failed (disk full...), after which both files were cut back to the last sample
    written whole."""

    rows: int
    planned: int
    interrupted: bool = False
    error: OSError | None = None
    #: The KeyboardInterrupt that ended it early (a Terminated names its signal)
    stop: KeyboardInterrupt | None = None


def _open_append(path: Path) -> int:
    """An append descriptor; a file it creates is the owner's only (process tables name users
    and executables, as the agent's history does, which is 0600 too)."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _cannot_append(path: Path, exc: OSError) -> InputError:
    return InputError(str(path), None, "a file this user can append to", exc.strerror or str(exc))


def _writable(path: Path) -> int:
    """:func:`_open_append`, or exit 2 naming the file (a read-only or full file system, a
    folder this user cannot write in)."""
    try:
        return _open_append(path)
    except OSError as exc:
        raise _cannot_append(path, exc) from None


def _lock(fd: int, path: Path) -> None:
    """Hold ``path`` for this run, or exit 2: two recordings appending to one file interleave
    their rows (a sample's process rows away from it, timestamps out of order)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _flock_holder(fd)
        who = f"process {holder}" if holder is not None else "another process"
        raise InputError(
            str(path),
            None,
            "a file no other `minerwatch collect` is appending to",
            f"{who} holds it (a recording still running?)",
        ) from None


def _flock_holder(fd: int) -> int | None:
    """The pid /proc/locks names for a flock on ``fd``'s file, when it names one."""
    st = os.fstat(fd)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if "FLOCK" in fields and key in fields:
            pid = fields[fields.index(key) - 1]
            return int(pid) if pid.isdigit() else None
    return None


def _write_all(fd: int, data: bytes, path: Path) -> None:
    """All of ``data`` or an OSError naming ``path`` (a short write is retried, as a full disk
    reports one before it fails)."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        view = view[n:]


def _csv_bytes(rows: Sequence[Sequence[object]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue().encode("utf-8")


def _check_complete_last_line(path: Path) -> None:
    """Appending after a cut-off line (a copy stopped half-way, an older collector killed by a
    full disk) would glue the new row to it: refused, naming the line."""
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b"")) + 1
    raise InputError(
        str(path),
        lines,
        "a complete last line (ending in a newline) to append after",
        "a cut-off line",
    )


def record(
    output: Path,
    interval: float,
    duration: float,
    host: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    collector: Collector | None = None,
    wall_clock: Clock = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Recorded:
    """Sample every ``interval`` seconds for ``duration`` seconds, appending rows to ``output``.

    The schedule is fixed on the collector's monotonic clock (sample k is due at
    ``start + k * interval``), so slow samples do not make it drift; a slot missed entirely
    (host stalled for more than an interval) is skipped rather than sampled twice in a row.
    A new or empty file gets the ``timestamp,host,<metrics>`` header; an existing file must
    already have it and end with a complete line (InputError otherwise), and no other recording
    may hold it (a flock for the run; InputError naming the holder). New files are 0600. The
    recording's own process is left out of the process table, as the agent leaves itself out.
    Each sample is written as it is taken, its process rows first, each file in one write, so
    a run killed at any moment leaves complete rows. Ctrl-C ends the recording early: the
    rows written so far are complete and ``interrupted`` is set. A write that fails (disk
    full) cuts both files back to the last whole sample and ends the run with ``error`` set.
    ``progress(rows_written, rows_planned)`` is called after each row.

    ``collector``, ``wall_clock`` and ``sleep`` are for tests; ``host`` is ignored when a
    collector is given.
    """
    if not interval > 0:
        raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
    output = Path(output)
    check_output_name(output)
    held = _lock_existing(output)
    try:
        return _record(output, interval, duration, host, progress, collector, wall_clock, sleep)
    finally:
        if held is not None:
            os.close(held)


def _lock_existing(output: Path) -> int | None:
    """A descriptor holding the lock on ``output`` when it exists (before its last line is
    checked: a recording still running may be half-way through one), else None."""
    try:
        fd = os.open(output, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _cannot_append(output, exc) from None
    try:
        _lock(fd, output)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _record(
    output: Path,
    interval: float,
    duration: float,
    host: str | None,
    progress: Callable[[int, int], None] | None,
    collector: Collector | None,
    wall_clock: Clock,
    sleep: Callable[[float], None],
) -> Recorded:
    has_rows = _check_header(output)
    procs_path = procs_path_for(output)
    # tables from before the GC column: rows with it still read (extra fields are ignored)
    _check_header(procs_path, PROC_TABLE_HEADER, "process table", PROC_TABLE_COLUMNS)
    for path in (output, procs_path):
        if path.exists():
            _check_complete_last_line(path)
    planned = int(duration / interval + 1e-9) if duration > 0 else 0
    rows = 0
    existed = {path for path in (output, procs_path) if path.exists()}
    pfd = _writable(procs_path)
    try:
        fd = _writable(output)
    except BaseException:
        os.close(pfd)
        if procs_path not in existed:
            procs_path.unlink()
        raise
    if output not in existed:  # created just now; another run may have created it too
        try:
            _lock(fd, output)
        except BaseException:
            os.close(fd)
            os.close(pfd)
            raise  # nothing unlinked: the files are the other run's
    try:
        try:  # refused before the first sample, not when it is due
            if os.fstat(pfd).st_size == 0:
                _write_all(pfd, _csv_bytes([PROC_TABLE_HEADER]), procs_path)
            if not has_rows:
                _write_all(fd, _csv_bytes([TELEMETRY_COLUMNS]), output)
        except OSError as exc:
            for path in {output, procs_path} - existed:  # no empty files left behind
                if path.stat().st_size == 0:
                    path.unlink()
            raise _cannot_append(Path(exc.filename), exc) from None
        try:
            coll = collector or Collector(interval=interval, host=host)
            clock = coll.clock
            me = os.getpid()
            start = clock()
            for k in range(1, planned + 1):
                due = start + k * interval
                now = clock()
                if now > due + interval:
                    continue  # this slot passed entirely while we were stalled
                if due > now:
                    sleep(due - now)
                metrics = coll.sample()
                ts = wall_clock()
                row = format_row(ts, coll.host, metrics)
                # not this recording itself, as the agent leaves itself out of its history
                mine = [p for p in coll.top_processes if p.pid != me and p.ppid != me]
                table = _csv_bytes(proc_rows(row[0], coll.host, mine))
                sample = _csv_bytes([row])
                kept = (os.fstat(pfd).st_size, os.fstat(fd).st_size)
                try:
                    # the process rows first: a sample row is never without its processes
                    _write_all(pfd, table, procs_path)
                    _write_all(fd, sample, output)
                except OSError as exc:
                    os.ftruncate(pfd, kept[0])  # frees what the cut-off sample took
                    os.ftruncate(fd, kept[1])
                    return Recorded(rows, planned, error=exc)
                rows += 1
                if progress is not None:
                    progress(rows, planned)
        except KeyboardInterrupt as exc:
            log.info("recording interrupted after %d rows", rows)
            return Recorded(rows, planned, interrupted=True, stop=exc)
    finally:
        os.close(fd)
        os.close(pfd)
    return Recorded(rows, planned)
