"""The agent's memory: recent telemetry samples and scored windows in one SQLite file.

The agent retrains from this history, leaving out windows it alerted on, so a miner that has
been running for a while never becomes "normal". A store that fails (full disk, read-only or
corrupt file) must not take the agent down: it reports the problem in ``degraded`` and
``errors_total``, keeps new data in a bounded in-memory ring, and retries the disk later.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from minerwatch.features.procs import clean_text
from minerwatch.features.schema import AGENT_COLUMNS as STORED_COLUMNS  # metrics + agent extras
from minerwatch.features.schema import SCHEMA_VERSION  # the samples table follows it

log = logging.getLogger(__name__)

MiB = 1024 * 1024
_CORRUPT = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_WIDTH = 1 + len(STORED_COLUMNS)  # timestamp + metrics
_ROW_BYTES = 8 * _WIDTH
#: Space a full disk must gain before the store tries to write again before ``retry_s``.
SPACE_TO_RETRY = 256 * 1024
_FINITE = "1.7976931348623157e308"  # the largest double: BETWEEN -it AND it = a finite number
#: What our tables look like; a database with other tables of these names is not ours.
_WINDOW_COLUMNS = ["window_start", "window_end", "score", "threshold", "alert"]

Window = tuple[float, float, float, float, bool]


class _Ring:
    """Fixed-capacity ring of float rows that grows lazily, so an idle store costs nothing."""

    def __init__(self, capacity: int, width: int) -> None:
        self.capacity = max(1, capacity)
        self._buf = np.empty((min(self.capacity, 256), width))
        self._start = 0
        self._len = 0

    def __len__(self) -> int:
        return self._len

    @property
    def nbytes(self) -> int:
        return self._len * self._buf.shape[1] * self._buf.itemsize

    def append(self, row: Sequence[float]) -> None:
        size = len(self._buf)
        if self._len == size and size < self.capacity:
            self._reset(self.rows(), min(2 * size, self.capacity))
            size = len(self._buf)
        if self._len < size:
            self._buf[(self._start + self._len) % size] = row
            self._len += 1
        else:  # full: overwrite the oldest row
            self._buf[self._start] = row
            self._start = (self._start + 1) % size

    def rows(self) -> np.ndarray:
        """A copy of the rows, oldest inserted first."""
        idx = (self._start + np.arange(self._len)) % len(self._buf)
        return self._buf[idx]

    def keep_from(self, cutoff: float) -> None:
        """Drop rows whose first column (the time) is before ``cutoff``."""
        rows = self.rows()
        kept = rows[rows[:, 0] >= cutoff]
        if len(kept) != len(rows):
            self._reset(kept, len(self._buf))

    def clear(self) -> None:
        self._reset(self._buf[:0], min(self.capacity, 256))

    def _reset(self, rows: np.ndarray, size: int) -> None:
        buf = np.empty((max(size, len(rows), 1), self._buf.shape[1]))
        buf[: len(rows)] = rows
        self._buf, self._start, self._len = buf, 0, len(rows)


class History:
    """Telemetry samples and scored windows, kept for ``retention_s`` and at most ``max_bytes``.

    A sample older than ``retention_s`` stays while fewer than a retention's worth of samples
    (at ``interval_s``) follow it, so a clock stepped far ahead cannot age the history away.

    ``path=None`` keeps everything in memory. Timestamps are Unix seconds; ``clock`` is only
    used to decide what is too old and when to retry a failed disk.

    >>> h = History(None)
    >>> h.add_sample(100.0, {"cpu_percent": 12.5})
    >>> ts, values = h.samples()
    >>> ts.tolist(), values.shape[1] == len(STORED_COLUMNS), float(values[0, 0])
    ([100.0], True, 12.5)
    """

    def __init__(
        self,
        path: Path | None,
        retention_s: float = 14 * 86400,
        max_bytes: int = 256 * MiB,
        clock: Callable[[], float] = time.time,
        *,
        interval_s: float = 10.0,
        prune_every: int = 1000,
        retry_s: float = 300.0,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.retention_s = float(retention_s)
        self.max_bytes = int(max_bytes)
        self.clock = clock
        self.prune_every = max(1, int(prune_every))
        self.retry_s = float(retry_s)
        #: Why the store is not writing to disk right now, or None when it is (or path is None).
        self.degraded: str | None = None
        #: The most recent problem, kept after recovery so operators can still see it.
        self.last_error: str | None = None
        self.errors_total = 0
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._next_retry = 0.0
        #: Free bytes on the database's file system when a write last failed for a full
        #: disk (None otherwise): more free space than that is a reason to retry at once.
        self._free_when_full: int | None = None
        self._inserts = 0
        rows_for_retention = math.ceil(self.retention_s / max(interval_s, 1e-3)) + 1
        #: Samples a retention holds at the sampling interval: pruning by age never goes
        #: below this many, so a clock that jumps ahead cannot age the history away.
        self._keep_rows = rows_for_retention
        capacity = max(1, min(rows_for_retention, self.max_bytes // _ROW_BYTES))
        self._ring = _Ring(capacity, _WIDTH)
        self._mem_windows: deque[Window] = deque(maxlen=capacity)
        self._columns = ", ".join(f'"{c}"' for c in STORED_COLUMNS)
        self._reopen = False
        self._clock_warned = False
        if self.path is not None:
            with self._lock:
                if self._open():
                    self.degraded = None  # e.g. a corrupt file was replaced by a fresh one
                    self._prune_locked()

    # -- public API --------------------------------------------------------------------------

    def add_sample(self, ts: float, metrics: Mapping[str, float | None]) -> None:
        """Store one sample; metrics outside the schema are ignored, missing ones become NaN."""
        row = (float(ts), *(_number(metrics.get(c)) for c in STORED_COLUMNS))
        with self._lock:
            self._maybe_recover()
            if not self._insert_samples([row]):
                self._ring.append([np.nan if v is None else v for v in row])
            self._inserts += 1
            if self._inserts % self.prune_every == 0:
                self._prune_locked()

    def add_procs(self, ts: float, rows: Sequence[tuple[int, str, str, str, float, float]]) -> None:
        """Store one sample's process rows (pid, name, exe, user, cpu, its GC threads' cpu).
        Only on disk: while the database is unwritable they are dropped (the samples are what
        must not be lost; training then learns fewer processes, never wrong ones)."""
        if not rows:
            return
        data = [
            (float(ts), int(p), clean_text(n), clean_text(e), clean_text(u), _number(c), _number(g))
            for p, n, e, u, c, g in rows
        ]
        with self._lock:
            if self._conn is None or self.degraded is not None:
                return
            self._write(
                "insert procs",
                lambda c: c.executemany(
                    "INSERT INTO procs (ts, pid, name, exe, user, cpu, gc)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    data,
                ),
            )

    def add_window(
        self, start: float, end: float, score: float, threshold: float, alert: bool
    ) -> None:
        """Store one scored window so retraining can skip the ones that alerted."""
        window: Window = (float(start), float(end), float(score), float(threshold), bool(alert))
        with self._lock:
            self._maybe_recover()
            if not self._insert_windows([window]):
                self._mem_windows.append(window)

    def samples(
        self, since: float | None = None, until: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Timestamps (n,) and values (n, len(STORED_COLUMNS)) with ``since <= ts < until``.

        Rows are sorted by time; values missing from a sample are NaN.
        """
        lo = -math.inf if since is None else float(since)
        hi = math.inf if until is None else float(until)
        with self._lock:
            parts = [self._ring.rows()]
            if self._conn is not None:
                try:
                    rows = self._conn.execute(
                        f"SELECT ts, {self._columns} FROM samples WHERE ts >= ? AND ts < ?"
                        " ORDER BY ts",
                        (lo, hi),
                    ).fetchall()
                    parts.append(_float_rows(rows))
                except sqlite3.Error as e:
                    self._on_db_error("read samples", e)
        data = np.concatenate(parts)
        data = data[np.isfinite(data[:, 0]) & (data[:, 0] >= lo) & (data[:, 0] < hi)]
        values = data[:, 1:]
        values[~np.isfinite(values)] = np.nan  # a gap, whatever another writer left there
        data = data[np.argsort(data[:, 0], kind="stable")]
        return data[:, 0].copy(), data[:, 1:].copy()

    def windows(self, since: float | None = None) -> list[Window]:
        """Every stored window ending at or after ``since``, by start time."""
        lo = -math.inf if since is None else float(since)
        with self._lock:
            out = [w for w in self._mem_windows if w[1] >= lo]
            if self._conn is not None:
                try:
                    rows = self._conn.execute(
                        "SELECT window_start, window_end, score, threshold, alert FROM windows"
                        " WHERE window_end >= ?",
                        (lo,),
                    )
                    out += [w for w in map(_window, rows) if w is not None and w[1] >= lo]
                except sqlite3.Error as e:
                    self._on_db_error("read windows", e)
        return sorted(out)

    def alerted_windows(self, since: float | None = None) -> list[tuple[float, float]]:
        """(start, end) of windows that alerted and end at or after ``since``."""
        return [(w[0], w[1]) for w in self.windows(since) if w[4]]

    def dismissed_spans(self) -> list[tuple[float, float]]:
        """(start, end) of the episodes a responder dismissed as benign (``minerwatch
        dismiss``); none while the database is unreadable, so retraining then leaves every
        alerted window out, as it would without them."""
        with self._lock:
            if self._conn is None:
                return []
            try:
                return dismissed_spans(self._conn)
            except sqlite3.Error as e:
                self._on_db_error("read dismissals", e)
                return []

    def is_dismissed(self, episode_id: str) -> bool:
        """Whether a responder dismissed this episode (and did not undo it); False while the
        database is unreadable, so an open episode then stays out of training."""
        with self._lock:
            if self._conn is None:
                return False
            try:
                return dismissal(self._conn, episode_id) is not None
            except sqlite3.Error as e:
                self._on_db_error("read dismissals", e)
                return False

    def extend_dismissal(self, episode_id: str, end: float) -> None:
        """An episode dismissed while it was open closes at ``end``: the dismissal covers its
        windows up to there (the command could only know its end so far)."""
        with self._lock:
            if self._conn is None or self.degraded is not None:
                return
            try:
                if not _has_dismissed(self._conn):
                    return
            except sqlite3.Error as e:
                self._on_db_error("read dismissals", e)
                return
            self._write(
                "extend dismissal",
                lambda c: c.execute(
                    "UPDATE dismissed SET end = ? WHERE episode = ? AND end < ?"
                    " AND undone_at IS NULL",
                    (float(end), episode_id, float(end)),
                ),
            )

    def dismissals(self) -> tuple[int, float]:
        """Episodes dismissed as benign and in force, and when one was last dismissed or a
        dismissal undone (0 if never): the agent retrains soon after a change, so the next page
        of that kind is judged by a model that saw it."""
        with self._lock:
            if self._conn is None:
                return 0, 0.0
            try:
                if not _has_dismissed(self._conn):
                    return 0, 0.0
                row = self._conn.execute(
                    "SELECT sum(undone_at IS NULL), max(max(at, coalesce(undone_at, at)))"
                    " FROM dismissed"
                ).fetchone()
            except sqlite3.Error as e:
                self._on_db_error("read dismissals", e)
                return 0, 0.0
        count, changed = row if row else (0, 0.0)
        finite = isinstance(changed, float | int) and math.isfinite(changed)
        return (int(count) if isinstance(count, int) else 0), (float(changed) if finite else 0.0)

    def span_seconds(self) -> float:
        """Time from the first to the last stored sample (0 with fewer than two)."""
        ts, _ = self._bounds()
        return ts[1] - ts[0] if ts else 0.0

    def covered_seconds(self, max_gap: float) -> float:
        """Time the stored samples cover: the gaps between consecutive samples, each counted
        up to ``max_gap``. Unlike :meth:`span_seconds`, a wall clock stepped a day ahead, or
        an agent stopped for a night, adds at most ``max_gap``: nothing was sampled then."""
        with self._lock:
            parts = [self._ring.rows()[:, 0]]
            if self._conn is not None:
                try:
                    rows = self._conn.execute(
                        f"SELECT ts FROM samples WHERE ts BETWEEN -{_FINITE} AND {_FINITE}"
                    ).fetchall()
                    parts.append(np.array([r[0] for r in rows], dtype=np.float64))
                except sqlite3.Error as e:
                    self._on_db_error("read samples", e)
        ts = np.sort(np.concatenate(parts))
        ts = ts[np.isfinite(ts)]
        return float(np.clip(np.diff(ts), 0.0, max(0.0, float(max_gap))).sum()) if len(ts) else 0.0

    def count(self) -> int:
        """Number of stored samples, on disk and in memory."""
        return self._bounds()[1]

    def size_bytes(self) -> int:
        """Bytes the data occupies: what ``max_bytes`` limits (live database pages + ring)."""
        with self._lock:
            return self._used_bytes() + self._ring.nbytes

    def prune(self) -> None:
        """Delete samples older than retention that a retention's worth of newer samples
        follows, then the oldest until under ``max_bytes``."""
        with self._lock:
            self._prune_locked()

    def close(self) -> None:
        """Try once more to save samples held in memory, then close the database."""
        with self._lock:
            if self._conn is not None and (len(self._ring) or self._mem_windows):
                self._prune_locked()
                if self._flush():
                    self.degraded = None
            if self._conn is not None:
                try:
                    self._conn.execute("PRAGMA optimize")
                except sqlite3.Error as e:
                    self._on_db_error("optimize", e)
                self._conn.close()
                self._conn = None

    def __enter__(self) -> History:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- opening and recovery ----------------------------------------------------------------

    def _open(self) -> bool:
        """Open (creating 0600 in a 0700 directory) and check the database.

        True when it is ready for writing. A corrupt file is moved aside and replaced; a
        database that opens but cannot be written is kept for reading.
        """
        assert self.path is not None
        self._reopen = False
        conn = self._create_and_connect()
        if conn is None:
            return False
        if self._is_corrupt(conn):
            conn.close()
            if not self._move_aside(self.path):
                return False
            conn = self._create_and_connect()
            if conn is None:
                return False
            if self._is_corrupt(conn):
                conn.close()
                return False
        try:
            self._setup(conn)
        except sqlite3.Error as e:
            self._on_db_error("set up database", e)
            if not _has_tables(conn):
                conn.close()
                conn = _read_only_connection(self.path)
            self._conn = conn  # still serves what is on disk
            return False
        self._conn = conn
        return True

    def _create_and_connect(self) -> sqlite3.Connection | None:
        """Private folder and file, then a connection; None (with the reason kept) on failure."""
        assert self.path is not None
        try:
            self._prepare_files(self.path)
        except OSError as e:
            self._fail(f"cannot create {self.path}: {e.strerror or e}")
            return None
        return self._connect(self.path)

    @staticmethod
    def _prepare_files(path: Path) -> None:
        """Create the directory 0700 and the file 0600 (SQLite gives its WAL files the same)."""
        if not path.parent.exists():
            path.parent.mkdir(parents=True, mode=0o700)
            os.chmod(path.parent, 0o700)  # mkdir's mode is filtered by the umask
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        elif path.stat().st_mode & 0o077:
            try:
                os.chmod(path, 0o600)
            except PermissionError:  # not ours: use it as it is, but say so
                log.warning("history: %s is readable by others and cannot be made private", path)

    def _connect(self, path: Path) -> sqlite3.Connection | None:
        try:
            return sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            self._on_db_error("open database", e)
            return None

    def _is_corrupt(self, conn: sqlite3.Connection) -> bool:
        """Run the quick check and look at the schema; True means "move the file aside"."""
        try:
            result = conn.execute("PRAGMA quick_check").fetchall()
            foreign = None
            if result == [("ok",)]:
                try:
                    foreign = _foreign_schema(conn)
                except (sqlite3.OperationalError, UnicodeDecodeError) as e:  # not UTF-8 text
                    foreign = f"unreadable schema ({e})"
        except sqlite3.DatabaseError as e:
            self._on_db_error("check database", e)
            return _code(e) in _CORRUPT
        except UnicodeDecodeError:  # the check quotes damaged schema text, bytes and all
            self._record("database failed quick_check: an answer that is not UTF-8 text")
            return True
        if result != [("ok",)]:
            self._record(f"database failed quick_check: {result[0][0]}")
            return True
        if foreign is not None:
            self._record(f"database is not a minerwatch history: {foreign}")
            return True
        return False

    def _move_aside(self, path: Path) -> bool:
        """Rename a corrupt database (and its WAL files) to ``<name>.corrupt-<ts>``."""
        stamp = int(self.clock())
        target = path.with_name(f"{path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            target = path.with_name(f"{path.name}.corrupt-{stamp}.{n}")
            n += 1
        try:
            os.replace(path, target)
            for suffix in ("-wal", "-shm"):
                extra = path.with_name(path.name + suffix)
                if extra.exists():
                    os.replace(extra, target.with_name(target.name + suffix))
        except OSError as e:
            self._fail(f"corrupt database could not be moved aside: {e.strerror or e}")
            return False
        log.warning(
            "history: corrupt database %s moved aside to %s; starting a new one", path, target
        )
        return True

    def _setup(self, conn: sqlite3.Connection) -> None:
        # auto_vacuum only takes effect on a new, empty database; it lets prune() shrink the file.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        metric_defs = ", ".join(f'"{c}" REAL' for c in STORED_COLUMNS)
        conn.execute(f"CREATE TABLE IF NOT EXISTS samples (ts REAL NOT NULL, {metric_defs})")
        conn.execute("CREATE INDEX IF NOT EXISTS samples_ts ON samples (ts)")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS windows (window_start REAL NOT NULL,"
            " window_end REAL NOT NULL, score REAL, threshold REAL,"
            " alert INTEGER NOT NULL)"
        )
        conn.execute("CREATE INDEX IF NOT EXISTS windows_end ON windows (window_end)")
        # the process table of each sample (schema 2): training learns the host's processes
        conn.execute(
            "CREATE TABLE IF NOT EXISTS procs (ts REAL NOT NULL, pid INTEGER, name TEXT,"
            " exe TEXT, user TEXT, cpu REAL, gc REAL)"
        )
        conn.execute("CREATE INDEX IF NOT EXISTS procs_ts ON procs (ts)")
        conn.execute(DISMISSED_TABLE)
        if "gc" not in {row[1] for row in conn.execute("PRAGMA table_info(procs)")}:
            conn.execute("ALTER TABLE procs ADD COLUMN gc REAL")  # a history from before it
        # A newer schema may add metric columns: old rows read back as NaN for them.
        have = {row[1] for row in conn.execute("PRAGMA table_info(samples)")}
        for c in STORED_COLUMNS:
            if c not in have:
                conn.execute(f'ALTER TABLE samples ADD COLUMN "{c}" REAL')
        # SQLite's dynamic typing lets any writer store text or blobs in a REAL column: drop
        # rows without a finite time and blank other non-numbers, so every reader (this one,
        # the training child) sees numbers or gaps. One scan, like quick_check's.
        finite = f"BETWEEN -{_FINITE} AND {_FINITE}"
        conn.execute(f"DELETE FROM samples WHERE ts IS NULL OR NOT ts {finite}")
        conn.execute(
            "DELETE FROM windows WHERE window_start IS NULL OR window_end IS NULL"
            f" OR NOT window_start {finite} OR NOT window_end {finite}"
        )
        number = "IN ('integer', 'real', 'null')"
        fix = ", ".join(
            f'"{c}" = CASE WHEN typeof("{c}") {number} THEN "{c}" END' for c in STORED_COLUMNS
        )
        odd = " OR ".join(f'typeof("{c}") NOT {number}' for c in STORED_COLUMNS)
        conn.execute(f"UPDATE samples SET {fix} WHERE {odd}")
        # Also a write probe: a read-only file fails here rather than at the first sample.
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _maybe_recover(self) -> None:
        """While degraded, every ``retry_s`` reopen if needed, prune, and save the ring."""
        if self.path is None or self.degraded is None:
            return
        if self.clock() < self._next_retry and not self._space_returned():
            return
        self._next_retry = self.clock() + self.retry_s
        if self._conn is None or self._reopen:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if not self._open():
                return
        before = self.errors_total
        self._prune_locked()
        if self.errors_total == before and self._flush():
            log.warning(
                "history: recovered, writing to %s again (was: %s)", self.path, self.degraded
            )
            self.degraded = None

    def _flush(self) -> bool:
        """Move samples and windows held in memory into the database."""
        rows = [tuple(None if math.isnan(v) else v for v in r) for r in self._ring.rows()]
        windows = list(self._mem_windows)

        def save(c: sqlite3.Connection) -> None:
            self._exec_samples(c, rows)
            self._exec_windows(c, windows)

        if self._write("save memory", save):
            self._ring.clear()
            self._mem_windows.clear()
            return True
        return False

    # -- writing -----------------------------------------------------------------------------

    def _insert_samples(self, rows: list[tuple[float | None, ...]]) -> bool:
        if self._conn is None or self.degraded is not None:
            return False
        return self._write("insert sample", lambda c: self._exec_samples(c, rows))

    def _insert_windows(self, windows: list[Window]) -> bool:
        if self._conn is None or self.degraded is not None:
            return False
        return self._write("insert window", lambda c: self._exec_windows(c, windows))

    def _exec_samples(
        self, conn: sqlite3.Connection, rows: Iterable[tuple[float | None, ...]]
    ) -> None:
        marks = ", ".join("?" * _WIDTH)
        conn.executemany(f"INSERT INTO samples (ts, {self._columns}) VALUES ({marks})", rows)

    @staticmethod
    def _exec_windows(conn: sqlite3.Connection, windows: Iterable[Window]) -> None:
        conn.executemany(
            "INSERT INTO windows VALUES (?, ?, ?, ?, ?)",
            [(s, e, sc, th, int(a)) for s, e, sc, th, a in windows],
        )

    def _write(self, what: str, fn: Callable[[sqlite3.Connection], object]) -> bool:
        """Run ``fn`` in one transaction; a failure is recorded and returns False."""
        conn = self._conn
        if conn is None:
            return False
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                fn(conn)
                conn.execute("COMMIT")
            except sqlite3.Error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            self._on_db_error(what, e)
            return False
        return True

    # -- retention ---------------------------------------------------------------------------

    def _prune_locked(self) -> None:
        # A sample goes when it is older than the retention by the clock *and* a retention's
        # worth of samples (at the sampling interval) is stored after it. Age alone trusts the
        # clock: one that jumps ahead past the retention (a wrong RTC at boot, a bad time
        # server) and stays there would delete the whole history at the next prune. The count
        # is what the clock cannot fake; after an outage it keeps older samples a little
        # longer, and the size bound below holds either way.
        cutoff = min(self.clock() - self.retention_s, self._time_of_newest(self._keep_rows))
        bounds, _ = self._bounds()
        if bounds is not None and bounds[1] < self.clock() - self.retention_s:
            if not self._clock_warned:
                self._clock_warned = True
                log.warning(
                    "history: the clock is %.1f days past the newest stored sample; keeping "
                    "the stored samples until %d newer ones are stored (is the clock right?)",
                    (self.clock() - bounds[1]) / 86400,
                    self._keep_rows,
                )
        self._ring.keep_from(cutoff)
        kept = [w for w in self._mem_windows if w[1] >= cutoff]
        if len(kept) != len(self._mem_windows):
            self._mem_windows = deque(kept, maxlen=self._mem_windows.maxlen)
        conn = self._conn
        if conn is None:
            return
        if not self._write(
            "prune by age",
            lambda c: (
                c.execute("DELETE FROM samples WHERE ts < ?", (cutoff,)),
                c.execute("DELETE FROM windows WHERE window_end < ?", (cutoff,)),
                c.execute("DELETE FROM procs WHERE ts < ?", (cutoff,)),
            ),
        ):
            return
        for _ in range(4):  # each pass estimates bytes per row; a few passes converge
            used, n = self._used_bytes(), self._db_count()
            if used <= self.max_bytes or n == 0:
                break
            excess = math.ceil((used - 0.9 * self.max_bytes) / (used / n))

            def prune(c: sqlite3.Connection, k: int = excess) -> None:
                c.execute(
                    "DELETE FROM samples WHERE rowid IN"
                    " (SELECT rowid FROM samples ORDER BY ts LIMIT ?)",
                    (k,),
                )
                c.execute(
                    "DELETE FROM windows WHERE window_end <"
                    " COALESCE((SELECT MIN(ts) FROM samples), 0)"
                )
                c.execute("DELETE FROM procs WHERE ts < COALESCE((SELECT MIN(ts) FROM samples), 0)")

            if not self._write("prune by size", prune):
                return
        try:
            # executescript steps the pragma to the end; execute() would free only one page.
            conn.executescript("PRAGMA incremental_vacuum;")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as e:
            self._on_db_error("vacuum", e)

    def _time_of_newest(self, k: int) -> float:
        """Time of the k-th newest sample (on disk or held in memory); -inf with fewer."""
        ring = self._ring.rows()[:, 0] if len(self._ring) else np.empty(0)
        disk = np.empty(0)
        if self._conn is not None:
            try:
                if len(ring):  # rare (the disk refused writes): merge both
                    rows = self._conn.execute(
                        "SELECT ts FROM samples ORDER BY ts DESC LIMIT ?", (k,)
                    ).fetchall()
                    disk = np.array([r[0] for r in rows], dtype=float)
                else:
                    row = self._conn.execute(
                        "SELECT ts FROM samples ORDER BY ts DESC LIMIT 1 OFFSET ?", (k - 1,)
                    ).fetchone()
                    return -math.inf if row is None else float(row[0])
            except sqlite3.Error as e:
                self._on_db_error("count samples", e)
                return -math.inf
        both = np.concatenate([ring, disk])
        if len(both) < k:
            return -math.inf
        return float(np.partition(both, len(both) - k)[len(both) - k])

    def _used_bytes(self) -> int:
        if self._conn is None:
            return 0
        try:
            pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
            free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
            size = self._conn.execute("PRAGMA page_size").fetchone()[0]
        except sqlite3.Error as e:
            self._on_db_error("measure database", e)
            return 0
        return int((pages - free) * size)

    def _db_count(self) -> int:
        return self._bounds(memory=False)[1]

    def _bounds(self, memory: bool = True) -> tuple[tuple[float, float] | None, int]:
        """((first, last) sample time or None, number of samples)."""
        with self._lock:
            lo, hi, n = math.inf, -math.inf, 0
            if memory and len(self._ring):
                ts = self._ring.rows()[:, 0]
                lo, hi, n = float(ts.min()), float(ts.max()), len(ts)
            if self._conn is not None:
                try:
                    first, last, count = self._conn.execute(
                        "SELECT MIN(ts), MAX(ts), COUNT(*) FROM samples"
                    ).fetchone()
                    if count and (_number(first) is None or _number(last) is None):
                        # text, blobs or infinities another writer left: only numbers count
                        first, last, count = self._conn.execute(
                            "SELECT MIN(ts), MAX(ts), COUNT(*) FROM samples"
                            f" WHERE ts BETWEEN -{_FINITE} AND {_FINITE}"
                        ).fetchone()
                except sqlite3.Error as e:
                    self._on_db_error("count samples", e)
                else:
                    if count:
                        lo, hi, n = min(lo, float(first)), max(hi, float(last)), n + count
        return ((lo, hi) if n else None), n

    # -- error reporting ---------------------------------------------------------------------

    def _space_returned(self) -> bool:
        """True when a full disk has since gained ``SPACE_TO_RETRY`` bytes (one statvfs per
        sample while full): writing resumes at the next sample, not the next retry. The
        level is re-read at every failure, so a disk that stays full is not retried again."""
        if self._free_when_full is None:
            return False
        free = _free_bytes(self.path)
        return free is not None and free >= self._free_when_full + SPACE_TO_RETRY

    def _on_db_error(self, what: str, e: sqlite3.Error) -> None:
        # Only a full disk can heal with the same connection (prune frees space); anything
        # else (read-only, I/O error, corruption) is retried with a fresh open.
        self._reopen = self._reopen or _code(e) != sqlite3.SQLITE_FULL
        full = _code(e) == sqlite3.SQLITE_FULL
        self._free_when_full = (_free_bytes(self.path) or 0) if full else None
        if _code(e) in _CORRUPT and self._conn is not None:
            # Reading a corrupt file again would only fail again: drop it until the retry,
            # where _open() moves it aside.
            self._conn.close()
            self._conn = None
        self._fail(f"{what} failed: {e}")

    def _fail(self, reason: str) -> None:
        """Enter (or stay in) degraded mode: data goes to memory until a retry succeeds."""
        if self.path is not None and self.degraded is None:
            log.warning("history: %s; keeping new data in memory (%s)", reason, self.path)
        self.degraded = reason
        self._next_retry = self.clock() + self.retry_s
        self._record(reason)

    def _record(self, reason: str) -> None:
        self.errors_total += 1
        self.last_error = reason


def _free_bytes(path: Path | None) -> int | None:
    """Bytes free for this process on the file system holding ``path`` (None if unknown)."""
    if path is None:
        return None
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return None
    return int((st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize)


def _number(value: object) -> float | None:
    """A finite float, or None (SQL NULL, read back as NaN) for missing or unusable values."""
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _float_rows(rows: list[Any]) -> np.ndarray:
    """Sample rows as floats. SQLite's dynamic typing lets any writer put text or blobs into
    a REAL column; such a cell reads as NaN (a gap) instead of failing the whole read."""
    try:
        return np.array(rows, dtype=float).reshape(len(rows), _WIDTH)
    except (ValueError, TypeError, OverflowError):
        cells = [[math.nan if (f := _number(v)) is None else f for v in row] for row in rows]
        return np.array(cells, dtype=float).reshape(len(rows), _WIDTH)


def _window(row: Sequence[Any]) -> Window | None:
    """A stored window as numbers, or None when its start or end is not a finite number."""
    start, end, score, threshold = (_number(v) for v in row[:4])
    if start is None or end is None:
        return None
    nan = math.nan
    alert = _number(row[4])
    return (
        start,
        end,
        nan if score is None else score,
        nan if threshold is None else threshold,
        bool(alert),
    )


def _code(e: sqlite3.Error) -> int:
    """The primary SQLite result code of an error (extended codes carry it in the low byte)."""
    return int(getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF


def _read_only_connection(path: Path) -> sqlite3.Connection | None:
    """Open a database we may not write (not even its WAL index) just to read old samples."""
    try:
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro&immutable=1",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error:
        return None
    if _has_tables(conn):
        return conn
    conn.close()
    return None


#: Episodes a responder dismissed as benign: retraining learns their windows instead of
#: leaving them out. ``undone_at`` is set (the row kept, for the record) when undone.
DISMISSED_TABLE = (
    "CREATE TABLE IF NOT EXISTS dismissed (episode TEXT PRIMARY KEY, host TEXT,"
    " start REAL NOT NULL, end REAL NOT NULL, at REAL NOT NULL, by TEXT, reason TEXT,"
    " undone_at REAL)"
)


def dismissed_spans(conn: sqlite3.Connection) -> list[tuple[float, float]]:
    """(start, end) of every dismissal not undone; none in a history from before them."""
    if not _has_dismissed(conn):
        return []
    rows = conn.execute("SELECT start, end FROM dismissed WHERE undone_at IS NULL").fetchall()
    return [
        (float(s), float(e))
        for s, e in rows
        if isinstance(s, float | int) and isinstance(e, float | int) and s <= e
    ]


def dismissal(conn: sqlite3.Connection, episode_id: str) -> tuple[Any, Any, Any] | None:
    """(at, by, reason) of the episode's dismissal in force, or None."""
    if not _has_dismissed(conn):
        return None
    row = conn.execute(
        "SELECT at, by, reason FROM dismissed WHERE episode = ? AND undone_at IS NULL",
        (episode_id,),
    ).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def _has_dismissed(conn: sqlite3.Connection) -> bool:
    """A history from before dismissals (or one that could not be set up) has no table."""
    query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'dismissed'"
    return conn.execute(query).fetchone() is not None


def _foreign_schema(conn: sqlite3.Connection) -> str | None:
    """Why the database's schema is not one this store wrote (None when it is, or is empty):
    tables of our names with other columns, views or triggers."""
    rows = conn.execute(
        "SELECT type, name FROM sqlite_master WHERE type IN ('view', 'trigger')"
        " OR name IN ('samples', 'windows', 'samples_ts', 'windows_end')"
    ).fetchall()
    expected = {
        "samples": "table",
        "windows": "table",
        "samples_ts": "index",
        "windows_end": "index",
    }
    for kind, name in rows:
        if expected.get(name) != kind:
            return f"a {kind} named {name!r}"
    names = {name for _, name in rows}
    if "samples" in names:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(samples)")]
        if "ts" not in columns:
            return "table 'samples' without a ts column"
    if "windows" in names:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(windows)")]
        if columns != _WINDOW_COLUMNS:
            return f"table 'windows' with columns {columns}"
    return None


def _has_tables(conn: sqlite3.Connection) -> bool:
    try:
        row = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'samples'").fetchone()
    except sqlite3.Error:
        return False
    return row is not None
