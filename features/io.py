"""Read telemetry files (CSV, or Parquet with pyarrow) into per-host series, with clear errors.

Files may hold many hosts and rows in any order; duplicate timestamps keep the first row and
are counted, non-finite values become NaN (a gap in that metric, never a fake zero), and so do
values a known column cannot hold (:data:`~minerwatch.features.schema.VALID_RANGES`: a negative
rate, a CPU share of the host over 100 %). Values read as missing, and process tables that match
no host sample, are told once per file (``note``, by default on stderr).

CSV goes through pandas' C parser. Its silent leniencies (short rows padded with NaN, blank-
looking lines skipped, ``True`` read as 1.0) are checked for afterwards; anything the fast path
cannot vouch for is read again one cell at a time with the csv module (:func:`_read_csv_exact`),
which defines the semantics and names the file, line and column of the first problem. pandas
is imported only inside the readers: the on-host agent imports this module (via
:func:`from_arrays`) and must never load pandas.
"""

from __future__ import annotations

import csv
import itertools
import math
import mmap
import os
import shutil
import sys
import tempfile
import warnings
import weakref
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from minerwatch.features.errors import InputError
from minerwatch.features.hostsplit import Piece, split_csv
from minerwatch.features.procs import (
    GC_COLUMN,
    PROC_TABLE_COLUMNS,
    ProcessRows,
    is_procs_file,
    pid_ok,
    read_procs,
    share_ok,
)
from minerwatch.features.schema import HOST, TIMESTAMP, VALID_RANGES, expected_range

if TYPE_CHECKING:  # annotations only: pandas is imported inside the CSV reader
    from _csv import Reader

    import pandas as pd

SUFFIXES = (".csv", ".parquet")

#: Cells read as a gap (NaN) besides the empty cell, matched case-insensitively after strip.
NA_WORDS = ("na", "nan", "null")

# Every spelling the exact path reads as NaN without stripping, for pandas' exact-match set.
_NA_TOKENS = [""] + sorted(
    {"".join(cs) for word in NA_WORDS for cs in itertools.product(*((c, c.upper()) for c in word))}
)

# First bytes of files that are certainly not CSV text, with what to tell the operator.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip-compressed data; decompress it first (gunzip)"),
    (b"BZh", "bzip2-compressed data; decompress it first (bunzip2)"),
    (b"\xfd7zXZ\x00", "xz-compressed data; decompress it first (unxz)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data; decompress it first (unzstd)"),
    (b"PK\x03\x04", "a zip archive; extract it first"),
    (b"\xff\xfe", "UTF-16 text; save it as UTF-8"),
    (b"\xfe\xff", "UTF-16 text; save it as UTF-8"),
)

#: Compressed telemetry a folder may hold beside plain files, and how to unpack it.
_PACKED = {
    ".gz": "decompress it first (gunzip)",
    ".bz2": "decompress it first (bunzip2)",
    ".xz": "decompress it first (unxz)",
    ".zst": "decompress it first (unzstd)",
    ".zip": "extract it first",
}

_CHUNK = 1 << 24  # bytes per slice when counting commas in a mapped file


@dataclass
class HostSeries:
    """One host's samples, sorted by time with unique timestamps."""

    host: str
    timestamps: np.ndarray
    values: np.ndarray
    columns: tuple[str, ...]
    source: str = ""
    duplicates: int = 0
    nonfinite: int = field(default=0)
    #: The host's process table (schema 2); None when no process table was given.
    procs: ProcessRows | None = None

    def column(self, name: str) -> np.ndarray:
        return self.values[:, self.columns.index(name)]


@dataclass
class _Table:
    """One file: numeric columns (incl. timestamp), and hosts as codes into ``hosts``.

    ``hosts`` holds stripped names in order of first appearance; codes avoid a Python string
    per row. ``lines``: the file line of each row (None: row r is line r + 2, a header and one
    line per row); a Parquet table's rows are counted from 1 instead (``parquet``; ``lines``
    then their numbers in the file, when the table holds some of its rows).
    """

    metrics: list[str]
    numeric: dict[str, np.ndarray]
    codes: np.ndarray
    hosts: list[str]
    lines: np.ndarray | None = None
    parquet: bool = False
    #: The values read as missing by :func:`_screen` (set by :func:`_read`).
    gaps: _Gaps | None = None

    def where(self, path: Path, row: int) -> str:
        """Row ``row`` of this table as a place in its file, for messages."""
        if self.parquet:
            return f"{path}, row {int(self.lines[row]) if self.lines is not None else row + 1}"
        return f"{path}:{int(self.lines[row]) if self.lines is not None else row + 2}"


@dataclass(frozen=True)
class _Gaps:
    """The values of one file read as missing: outside their column's range, or infinite;
    the first of them (by row, then column in file order) at ``row`` of ``column``."""

    out_of_range: int
    infinite: int
    row: int
    column: str
    value: float


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders expanded to their telemetry files (sorted)."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for packed in sorted(path.iterdir()):
                # web-1.csv.gz beside web-1.csv: skipped, its host would be silently missing
                if packed.suffix in _PACKED and packed.suffixes[-2:-1] == [".csv"]:
                    raise InputError(
                        str(packed),
                        None,
                        "plain .csv or .parquet telemetry in the folder",
                        f"compressed data; {_PACKED[packed.suffix]}",
                    )
            found = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
            if not found:
                raise InputError(str(path), None, "a folder with .csv or .parquet files", "none")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise InputError(str(path), None, "an existing file or folder", "nothing there")
    return paths


def _to_float(text: str) -> float:
    if text == "" or text.lower() in NA_WORDS:
        return math.nan
    return float(text)


def read_table(path: Path) -> tuple[list[str], dict[str, np.ndarray], list[str]]:
    """Return (metric column names, numeric columns incl. timestamp, host per row).

    The file is fully validated, finite timestamps included.
    """
    table = _read(path)
    hosts: list[str] = np.array(table.hosts, dtype=object)[table.codes].tolist()
    return table.metrics, table.numeric, hosts


def _read(path: Path, piece: Piece | None = None) -> _Table:
    """A file, or with ``piece`` (a host's rows of a Parquet file) those rows."""
    table = _read_parquet(path, piece) if path.suffix == ".parquet" else _read_csv(path)
    _check_seconds(path, table)
    table.gaps = _screen(table)
    return table


def _read_piece(piece: Piece) -> _Table:
    """A host's rows of a file holding several, their lines (rows) numbered as in the file."""
    if piece.path is None:  # Parquet: filtered at read
        return _read(piece.source, piece)
    table = _read(piece.path)
    at = table.lines if table.lines is not None else np.arange(len(table.codes)) + 2
    table.lines = _line_map(piece)[at - 2]
    return table


def _read_procs_piece(piece: Piece) -> dict[str, ProcessRows]:
    if piece.path is None:
        return read_procs_parquet(piece.source, piece)
    return _read_procs(piece.path)


def _line_map(piece: Piece) -> np.ndarray:
    assert piece.lines is not None
    return np.fromfile(piece.lines, dtype=np.int64)


_R = TypeVar("_R")


def _moved(read: Callable[[Piece], _R], piece: Piece) -> _R:
    """``read(piece)``, an error in its temporary file told at the line of the file it was
    cut from (the line map of :mod:`~minerwatch.features.hostsplit`)."""
    try:
        return read(piece)
    except InputError as exc:
        if piece.path is None:
            raise
        temp = str(piece.path)
        line = exc.line
        if exc.path.startswith(temp + ":") and exc.line is None:
            line = int(exc.path[len(temp) + 1 :])
        elif exc.path != temp:
            raise
        if line is not None and line >= 2:
            lines = _line_map(piece)
            line = int(lines[line - 2]) if line - 2 < len(lines) else line
        raise InputError(str(piece.source), line, exc.expected, exc.got) from None


def _shown_item(item: Path | Piece) -> str:
    return f"{item.source.name} ({item.host})" if isinstance(item, Piece) else item.name


@dataclass
class _PieceGaps:
    """What the pieces of files cut by host read as missing, told once per file when its
    last piece is read (as reading it whole tells it): counts summed, the first by line."""

    left: dict[Path, int]
    found: dict[Path, tuple[int, int, int, str, float]] = field(default_factory=dict)

    def add(self, piece: Piece, table: _Table, tell: Callable[[str], None]) -> None:
        path = piece.source
        gaps = table.gaps
        if gaps is not None:
            line = int(table.lines[gaps.row]) if table.lines is not None else gaps.row + 2
            out_of_range, infinite = gaps.out_of_range, gaps.infinite
            column, value = gaps.column, gaps.value
            seen = self.found.get(path)
            if seen is not None:
                out_of_range, infinite = out_of_range + seen[0], infinite + seen[1]
                if seen[2] < line:
                    line, column, value = seen[2:]
            self.found[path] = (out_of_range, infinite, line, column, value)
        self.left[path] = self.left.get(path, 1) - 1
        if self.left[path] <= 0 and path in self.found:
            out_of_range, infinite, line, column, value = self.found.pop(path)
            where = f"{path}, row {line}" if table.parquet else f"{path}:{line}"
            tell(_gaps_text(where, _Gaps(out_of_range, infinite, line, column, value)))


#: Beyond this a timestamp is not Unix seconds (the year 5138): milliseconds or finer.
_MOST_SECONDS = 1e11


def _check_seconds(path: Path, table: _Table) -> None:
    """Refuse timestamps in milliseconds (or micro-, nanoseconds), naming the first: read as
    seconds they put samples hours apart, and every host would be skipped for its interval."""
    ts = table.numeric[TIMESTAMP]
    far = np.flatnonzero(np.abs(ts) >= _MOST_SECONDS)
    if far.size:
        row = int(far[0])
        raise InputError(
            table.where(path, row),
            None,
            "a timestamp in Unix seconds (10 digits until the year 2286)",
            f"{_shown(float(ts[row]))}: milliseconds or finer? divide by 1000",
        )


def _screen(table: _Table) -> _Gaps | None:
    """Turn the values a known column cannot hold into NaN (a gap, as an empty cell), and
    count them with the infinite ones (:func:`from_arrays` makes those NaN); None when none.

    Every format goes through here, so the fast and exact CSV paths and Parquet agree.
    """
    out_of_range = infinite = 0
    first: tuple[int, str, float] | None = None
    for name in table.metrics:
        col = table.numeric[name]
        bad = np.isinf(col)
        infinite += int(np.count_nonzero(bad))
        limits = VALID_RANGES.get(name)
        if limits is not None:
            with np.errstate(invalid="ignore"):
                outside = ((col < limits[0]) | (col > limits[1])) & ~bad
            count = int(np.count_nonzero(outside))
            if count:
                out_of_range += count
                table.numeric[name] = np.where(outside, np.nan, col)  # a new array: pandas'
                bad |= outside  # may be read-only
        if bad.any():
            row = int(np.argmax(bad))
            if first is None or row < first[0]:
                first = (row, name, float(col[row]))
    if first is None:
        return None
    return _Gaps(out_of_range, infinite, *first)


def _shown(value: float) -> str:
    """A number as a person would write it: ``250``, ``-5``, ``100.7``, ``1e+308``, ``inf``."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _gaps_note(path: Path, table: _Table, gaps: _Gaps) -> str:
    return _gaps_text(table.where(path, gaps.row), gaps)


def _gaps_text(where: str, gaps: _Gaps) -> str:
    """The note of the values read as missing, the first of them at ``where``."""
    count = gaps.out_of_range + gaps.infinite
    if count == 1:
        said = "1 value read as missing, as an empty cell is; it is"
    else:
        kinds = (
            f" ({gaps.out_of_range} outside their column's range, {gaps.infinite} infinite)"
            if gaps.out_of_range and gaps.infinite
            else ""
        )
        said = f"{count} values read as missing, as empty cells are{kinds}; the first is"
    expected = "a finite number" if math.isinf(gaps.value) else expected_range(gaps.column)
    return (
        f"{where}: {said} in column {gaps.column!r}: expected {expected}, got {_shown(gaps.value)}"
    )


def _to_stderr(text: str) -> None:
    print(f"minerwatch: note: {text}", file=sys.stderr)


# --------------------------------------------------------------------------- CSV


def _check_magic(head: bytes, where: str) -> None:
    """Refuse compressed and binary formats by their first bytes, saying what they are."""
    for magic, what in _MAGIC:
        if head.startswith(magic):
            if magic == b"BZh" and head[4:10] != b"1AY&SY":
                continue  # only bzip2 when the block magic follows
            raise InputError(where, None, "a CSV file of UTF-8 text", what)


def _check_text(data: bytes, where: str) -> None:
    """Name the line of the first NUL or non-UTF-8 byte (a binary file, or another encoding)."""
    _check_magic(data[:16], where)
    nul = data.find(b"\0")
    bad = -1
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = exc.start
    if nul < 0 and bad < 0:
        return
    at = min(i for i in (nul, bad) if i >= 0)
    if at == nul:
        got = "a NUL byte (a binary file?)"
    else:
        got = f"the byte 0x{data[at]:02x}, which is not UTF-8 (Latin-1? a binary file?)"
    raise InputError(where, data.count(b"\n", 0, at) + 1, "a CSV file of UTF-8 text", got)


def _header(raw: list[str] | None, where: str) -> list[str]:
    """The stripped column names of the first line, or InputError for line 1."""
    if raw is None or not any(h.strip() for h in raw):
        raise InputError(where, 1, "a header line starting with 'timestamp,host'", "empty file")
    header = [h.strip() for h in raw]
    missing = [c for c in (TIMESTAMP, HOST) if c not in header]
    if missing:
        raise InputError(where, 1, f"columns {', '.join(missing)} in the header", str(header))
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise InputError(where, 1, "unique column names", f"repeated {dup}")
    return header


def _read_csv(path: Path) -> _Table:
    with path.open("rb") as fh:
        _check_magic(fh.read(16), str(path))
    table = _read_csv_fast(path)
    return table if table is not None else _read_csv_exact(path)


def _read_csv_exact(path: Path) -> _Table:
    """Reference semantics, one cell at a time; raises the first problem with file and line.

    Order of checks: format and encoding, header, field count per line (as read), then the
    first empty host, the first bad number (columns in header order), the first non-finite
    timestamp. Slow; used only when the fast path declines a file.
    """
    where = str(path)
    _check_text(path.read_bytes(), where)
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        try:
            return _scan(reader, where)
        except csv.Error as exc:
            raise InputError(where, reader.line_num, "a well-formed CSV line", str(exc)) from None


def _scan(reader: Reader, where: str) -> _Table:
    header = _header(next(reader, None), where)
    width = len(header)
    host_at = header.index(HOST)
    numeric_names = [h for h in header if h != HOST]
    numeric_at = [i for i, h in enumerate(header) if h != HOST]
    values = [array("d") for _ in numeric_at]
    bad: dict[int, tuple[int, str]] = {}  # numeric column -> first (line, cell) not a number
    names: dict[str, int] = {}
    codes = array("q")
    lines = array("q")
    blank_host: int | None = None
    line = reader.line_num + 1  # where the next record starts
    for row in reader:
        if row:
            if len(row) != width:
                raise InputError(where, line, f"{width} fields", f"{len(row)}")
            host = row[host_at].strip()
            if not host and blank_host is None:
                blank_host = line
            codes.append(names.setdefault(host, len(names)))
            lines.append(line)
            for j, i in enumerate(numeric_at):
                cell = row[i]
                try:
                    values[j].append(_to_float(cell.strip()))
                except ValueError:
                    values[j].append(math.nan)
                    bad.setdefault(j, (line, cell))
        line = reader.line_num + 1
    if not lines:
        raise InputError(where, 2, "at least one data row", "only a header")
    if blank_host is not None:
        raise InputError(where, blank_host, "a host name", "an empty cell")
    if bad:
        j = min(bad)
        at, cell = bad[j]
        name = numeric_names[j]
        what = "a number (Unix seconds)" if name == TIMESTAMP else f"a number in {name!r}"
        raise InputError(where, at, what, repr(cell))
    numeric = {
        name: np.array(col, dtype=np.float64)
        for name, col in zip(numeric_names, values, strict=True)
    }
    ts = numeric[TIMESTAMP]
    nonfinite = np.flatnonzero(~np.isfinite(ts))
    if nonfinite.size:
        first = int(nonfinite[0])
        raise InputError(where, lines[first], "a finite timestamp", str(ts[first]))
    metrics = [h for h in header if h not in (TIMESTAMP, HOST)]
    return _Table(
        metrics,
        numeric,
        np.array(codes, dtype=np.intp),
        list(names),
        lines=np.array(lines, dtype=np.int64),
    )


def _read_csv_fast(path: Path) -> _Table | None:
    """Read with pandas' C parser; None when the file needs :func:`_read_csv_exact`.

    None is returned for anything pandas would read differently from the exact path, so both
    give the same tables and the same errors: quotes, NUL bytes, a bad header, pandas errors,
    rows pandas pads or skips, empty or padded host names, non-finite timestamps.
    """
    with path.open("rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return None
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if mm.find(b'"') >= 0 or mm.find(b"\0") >= 0:
                return None  # quoting rules and binary data: leave them to the csv module
            end = mm.find(b"\n")
            if end < 0:
                return None
            first = mm[:end]
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    text = text.removesuffix("\r")
    if "\r" in text:
        return None  # old Mac line ends: the header is not one line to pandas
    try:
        header = _header(next(csv.reader([text]), None), str(path))
    except InputError:
        return None  # the exact path checks the whole file's encoding before the header
    frame = _pandas_csv(path, header)
    if frame is None:
        return None
    return _vouch(path, header, frame, data_start=end + 1)


def _pandas_kwargs() -> dict[str, Any]:
    """Parser options that only some pandas versions need."""
    import pandas as pd

    major, minor = (int(p) for p in pd.__version__.split(".")[:2])
    # Before 3.1 the default float parser may differ from Python's float() in the last bit.
    return {"float_precision": "round_trip"} if (major, minor) < (3, 1) else {}


def _pandas_csv(path: Path, header: list[str]) -> pd.DataFrame | None:
    """The data rows as a DataFrame (host as category), or None if pandas refuses the file.

    ``skip_blank_lines=False`` keeps blank lines as rows (checked in :func:`_vouch`) and makes
    whitespace-only lines fail, as they do in the exact path. In the first column only the
    empty cell is NaN, so a one-field row of NaN is always an empty line. A ParserWarning means
    pandas dropped fields (an over-long first row), so it is treated as a failure.
    """
    import pandas as pd

    numeric = [h for h in header if h != HOST]
    dtypes: dict[str, Any] = {h: np.float64 for h in numeric}
    dtypes[HOST] = "category"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame: pd.DataFrame = pd.read_csv(
                path,
                engine="c",
                header=None,
                names=header,
                skiprows=1,
                index_col=False,
                dtype=dtypes,
                na_values={h: [""] if h == header[0] else _NA_TOKENS for h in numeric},
                keep_default_na=False,
                skip_blank_lines=False,
                encoding="utf-8",
                **_pandas_kwargs(),
            )
    except (ValueError, OverflowError, pd.errors.ParserWarning):
        return None  # bad number, too many fields, not UTF-8...: the exact path names it
    return frame


def _vouch(path: Path, header: list[str], frame: pd.DataFrame, data_start: int) -> _Table | None:
    """Check pandas' frame against the exact semantics; the table, or None to read exactly."""
    import pandas as pd

    numeric_names = [h for h in header if h != HOST]
    numeric: dict[str, np.ndarray] = {}
    for name in numeric_names:
        if frame[name].dtype != np.float64:
            return None
        numeric[name] = frame[name].to_numpy(dtype=np.float64)
    n = len(frame)
    codes = frame[HOST].cat.codes.to_numpy()
    cats = [str(c) for c in frame[HOST].cat.categories]
    stripped = [c.strip() for c in cats]
    if any(s == "" and c != "" for s, c in zip(stripped, cats, strict=True)):
        return None  # a host of spaces: an error the exact path reports with its line
    no_host = codes < 0
    if "" in cats:
        no_host |= codes == cats.index("")
    blank = np.flatnonzero(no_host)
    # A row without a host is fine only as a blank line: no numbers either (commas checked below).
    if blank.size and not all(np.isnan(numeric[name][blank]).all() for name in numeric_names):
        return None
    if blank.size == n:
        return None
    # pandas pads short rows with NaN, so a short row has NaN in the last column. Every line
    # has at most width-1 commas (more is a pandas error), so equal totals mean exact widths.
    last = header[-1]
    padded = 0 if last == HOST else int(np.isnan(numeric[last]).sum()) - blank.size
    if blank.size and padded:
        return None
    if blank.size or padded:
        expected = (len(header) - 1) * (n - blank.size)
        if _count_commas(path, data_start) != expected:
            return None
    if not _no_booleans(path, header, numeric):
        return None
    lines: np.ndarray | None = None  # row r is line r + 2: no quotes, blank lines kept as rows
    if blank.size:
        keep = ~no_host
        numeric = {name: col[keep] for name, col in numeric.items()}
        codes = codes[keep]
        lines = np.flatnonzero(keep) + 2
    if not np.isfinite(numeric[TIMESTAMP]).all():
        return None
    # Hosts: codes of stripped names in order of first appearance, as the exact path numbers them.
    remap = np.full(len(cats), -1, dtype=np.intp)
    names: dict[str, int] = {}
    for k in pd.unique(codes):
        remap[k] = names.setdefault(stripped[k], len(names))
    metrics = [h for h in header if h not in (TIMESTAMP, HOST)]
    return _Table(metrics, numeric, remap[codes], list(names), lines=lines)


def _count_commas(path: Path, start: int) -> int:
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return sum(mm[i : i + _CHUNK].count(b",") for i in range(start, len(mm), _CHUNK))


def _no_booleans(path: Path, header: list[str], numeric: dict[str, np.ndarray]) -> bool:
    """False if pandas may have read a column of True/False words as 1.0/0.0.

    pandas falls back to booleans only when every non-NA cell of a column is such a word, so
    for a column of only 0/1 values one cell decides: it is looked up in the file.
    """
    for name, col in numeric.items():
        head = col[:1000]
        if np.any((head != 0) & (head != 1) & ~np.isnan(head)):
            continue
        present = np.flatnonzero(~np.isnan(col))
        if present.size == 0 or np.any((col[present] != 0) & (col[present] != 1)):
            continue
        # Row r is line r + 2: no quotes, blank lines kept as rows, one record per line.
        with path.open(encoding="utf-8-sig", newline="") as fh:
            line = next(itertools.islice(fh, int(present[0]) + 1, None), "")
        cells = line.rstrip("\r\n").split(",")
        try:
            _to_float(cells[header.index(name)].strip())
        except (ValueError, IndexError):
            return False
    return True


# --------------------------------------------------------------------------- Parquet


def _read_parquet(path: Path, piece: Piece | None = None) -> _Table:
    """A Parquet file, or with ``piece`` the rows of its host (their numbers in ``lines``)."""
    where = str(path)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(where, None, "pyarrow installed for Parquet", "no pyarrow") from None
    rows: np.ndarray | None = None
    try:
        if piece is None:
            table = pq.read_table(path)
        else:
            table = pq.read_table(path, filters=[(HOST, "in", list(piece.raw))])
            rows = _rows_of(path, piece.raw)
    except pa.ArrowException as exc:
        raise InputError(where, None, "a Parquet file", str(exc).splitlines()[0]) from None
    names = list(table.column_names)
    missing = [c for c in (TIMESTAMP, HOST) if c not in names]
    if missing:
        raise InputError(where, None, f"columns {', '.join(missing)}", str(names))
    numeric: dict[str, np.ndarray] = {}
    for name in names:
        if name == HOST:
            continue
        column = table.column(name)
        if name == TIMESTAMP and pa.types.is_timestamp(column.type):
            numeric[name] = _unix_seconds(column)
            continue
        try:
            numeric[name] = np.asarray(column.to_numpy(), dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(
                where, None, f"numbers in {name!r}", f"non-numeric ({column.type})"
            ) from None
    ts = numeric[TIMESTAMP]
    bad = np.flatnonzero(~np.isfinite(ts))
    if bad.size:
        at = int(rows[bad[0]]) if rows is not None else int(bad[0]) + 1
        raise InputError(where, at + 1, "a finite timestamp", str(ts[bad[0]]))
    hosts = table.column(HOST)
    if hosts.null_count == 0 and (
        pa.types.is_string(hosts.type) or pa.types.is_large_string(hosts.type)
    ):
        encoded = hosts.combine_chunks().dictionary_encode()
        codes = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.intp)
        host_names = [str(h) for h in encoded.dictionary.to_pylist()]
    else:  # other types as their str(), a null as "None", as before
        codes, host_names = _factorize([str(h) for h in hosts.to_pylist()])
    metrics = [n for n in names if n not in (TIMESTAMP, HOST)]
    return _Table(metrics, numeric, codes, host_names, lines=rows, parquet=True)


def _rows_of(path: Path, raw: Sequence[str]) -> np.ndarray:
    """The numbers (from 1) of the rows of a Parquet file whose host cell is one of ``raw``."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    column = pq.read_table(path, columns=[HOST]).column(HOST)
    mask = pc.is_in(column, value_set=_pa_strings(raw)).to_numpy(zero_copy_only=False)
    return np.flatnonzero(mask) + 1


def _pa_strings(raw: Sequence[str]) -> Any:
    import pyarrow as pa

    return pa.array(list(raw), type=pa.string())


def _parquet_hosts(path: Path) -> dict[str, tuple[str, ...]] | None:
    """The hosts of a Parquet file, each with the cells read as it (names stripped); None
    when its host column is not plain text without nulls (the file is then read whole)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        column = pq.read_table(path, columns=[HOST]).column(HOST)
        if column.null_count or not (
            pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
        ):
            return None
        found: dict[str, list[str]] = {}
        for raw in column.unique().to_pylist():
            found.setdefault(str(raw).strip(), []).append(str(raw))
    except Exception:  # noqa: BLE001 - any failure: the full reader names the problem
        return None
    if "" in found:
        return None
    return {host: tuple(raw) for host, raw in found.items()}


def _unix_seconds(column: Any) -> np.ndarray:
    """A Parquet ``timestamp`` column (pandas' ``datetime64``) as Unix seconds; a value without
    a time zone is UTC, as pandas makes it from Unix seconds. Its raw numbers are counts of the
    column's unit since the epoch (nanoseconds for pandas), not seconds; a null is NaN."""
    import pyarrow as pa

    per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[column.type.unit]
    ticks: np.ndarray = np.asarray(column.cast(pa.int64()).to_numpy(zero_copy_only=False))
    if ticks.dtype.kind == "f":  # nulls made it float: NaN stays NaN
        return np.asarray(ticks / per_second, dtype=np.float64)
    whole, part = np.divmod(ticks, per_second)  # exact seconds, then the fraction
    seconds: np.ndarray = whole.astype(np.float64) + part / per_second
    return seconds


def _factorize(values: list[str]) -> tuple[np.ndarray, list[str]]:
    index: dict[str, int] = {}
    codes = np.fromiter((index.setdefault(v, len(index)) for v in values), np.intp, len(values))
    return codes, list(index)


# --------------------------------------------------------------------------- series


@dataclass
class _Chunk:
    """One host's rows from one file: timestamps and an (n, len(columns)) value matrix."""

    timestamps: np.ndarray
    values: np.ndarray
    columns: list[str]
    source: str


def read_telemetry(
    inputs: Sequence[str | Path],
    note: Callable[[str], None] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, HostSeries]:
    """Read telemetry files and folders into one :class:`HostSeries` per host.

    ``note`` is told (once per file, naming it) what was read but not used as it is: values
    read as missing (out of their column's range, or infinite) and process rows that match no
    host sample. By default it prints to stderr. ``progress`` is told (files read, files, name)
    after each file: a month of a fleet's process tables takes minutes to read.

    The whole input is held at once; :class:`TelemetryGroups` reads a fleet a few hosts at a
    time.

    >>> # series = read_telemetry(["fleet/"]); series["web-1"].column("cpu_percent")
    """
    paths = expand_inputs(inputs)
    return _read_files(paths, _to_stderr if note is None else note, progress, 0, len(paths))


def _spill_dir() -> str | None:
    """Where a big file's pieces go: ``TMPDIR`` when set, else ``/var/tmp`` (on disk), not
    ``/tmp``, which is memory on many systems (Debian 13, Fedora, Arch mount a tmpfs there):
    a copy of the file in memory would undo what reading a host at a time saves."""
    if os.environ.get("TMPDIR"):
        return None  # tempfile honours it
    return "/var/tmp" if os.path.isdir("/var/tmp") and os.access("/var/tmp", os.W_OK) else None


class TelemetryGroups:
    """A fleet's telemetry a few hosts at a time, each host whole, so that a month of a
    hundred hosts does not have to fit in memory at once (about 340 MB per host-month at
    10-second samples with process tables).

    Files are first scanned for the hosts they hold (their host column only); files that
    share a host are read together, and groups are read one after another until they hold
    at least ``least`` hosts, which are then yielded. With one file per host (and its
    process table) that is ``least`` hosts in memory. A file holding several hosts is cut by
    host (:func:`~minerwatch.features.hostsplit.split_csv` into a temporary folder, removed
    when this object goes; Parquet filtered at read), each host's piece read and named as that
    file, so it is no more read whole unless it cannot be cut. A file whose hosts cannot be
    scanned (unreadable, malformed) makes one group of everything, and the full reader then
    says what is wrong with it.

    ``hosts``: the number of hosts with samples in the input, known before the first group
    is yielded. ``scan_progress`` and ``progress`` are told (files done, files, name) while
    scanning and while reading; ``note`` as for :func:`read_telemetry`. ``skip``, given the
    input's host names, returns those to leave out (already trained): files holding only
    them are not read.
    """

    def __init__(
        self,
        inputs: Sequence[str | Path],
        least: int = 1,
        note: Callable[[str], None] | None = None,
        progress: Callable[[int, int, str], None] | None = None,
        scan_progress: Callable[[int, int, str], None] | None = None,
        skip: Callable[[list[str]], Iterable[str]] | None = None,
    ) -> None:
        files = expand_inputs(inputs)
        self.least = max(1, least)
        self.note = _to_stderr if note is None else note
        self.progress = progress
        self._temp: Path | None = None
        #: The files as read: a file holding several hosts is cut into one Piece per host.
        self.paths: list[Path | Piece] = []
        found: list[frozenset[str] | None] = []
        for done, path in enumerate(files, start=1):
            if scan_progress is not None:
                scan_progress(done - 1, len(files), path.name)
            tell = _share_told(scan_progress, done - 1, len(files), path.name)
            pieces, hosts = self._cut(path, done, tell, scan=len(files) > 1)
            self.paths.extend(pieces or [path])
            found.extend([frozenset({p.host}) for p in pieces] or [hosts])
        if scan_progress is not None and files:
            scan_progress(len(files), len(files), "")
        self.groups = _share_hosts(found)
        self._found = found
        sampled = [h for p, h in zip(self.paths, found, strict=True) if not _is_procs(p)]
        known = [h for h in sampled if h is not None]
        self._sampled = frozenset().union(*known) if len(known) == len(sampled) else None
        #: Hosts left out by ``skip``, sorted; known, like ``hosts``, before the first yield.
        self.skipped: list[str] = []
        self._skip = skip
        if skip is not None and self._sampled is not None:
            self.skipped = sorted(skip(sorted(self._sampled)))
            gone = set(self.skipped)

            def left_out(group: list[int]) -> bool:
                held = {h for i in group if not _is_procs(self.paths[i]) for h in found[i] or ()}
                return bool(held) and held <= gone

            self.groups = [g for g in self.groups if not left_out(g)]  # not even read
        self.hosts = len(self._sampled) - len(self.skipped) if self._sampled is not None else 0

    def _cut(
        self, path: Path, index: int, progress: Callable[[float], None], scan: bool
    ) -> tuple[list[Piece], frozenset[str] | None]:
        """The pieces of ``path`` by host when it holds several (none when one), and its
        hosts; ``scan``: find them another way when it cannot be cut (else None)."""
        if path.suffix == ".parquet":
            raw = _parquet_hosts(path)
            if raw is None:
                return [], hosts_in(path) if scan else None
            if len(raw) < 2:
                return [], frozenset(raw)
            import pyarrow.parquet as pq

            rows = pq.read_metadata(path).num_rows
            return [Piece(path, h, rows, raw=raw[h]) for h in sorted(raw)], frozenset(raw)
        if self._temp is None:
            self._temp = Path(tempfile.mkdtemp(prefix="minerwatch-hosts-", dir=_spill_dir()))
            weakref.finalize(self, shutil.rmtree, self._temp, ignore_errors=True)
        folder = self._temp / str(index)
        folder.mkdir()
        split = split_csv(path, folder, progress)
        if split is None:
            shutil.rmtree(folder, ignore_errors=True)
            return [], hosts_in(path) if scan else None
        return [split.pieces[h] for h in sorted(split.pieces)], split.hosts

    def __iter__(self) -> Iterator[dict[str, HostSeries]]:
        done, total = 0, sum(len(g) for g in self.groups)  # the files of skipped hosts not
        batch: dict[str, HostSeries] = {}
        left: dict[Path, int] = {}
        for i in (i for group in self.groups for i in group):
            if isinstance(piece := self.paths[i], Piece):
                left[piece.source] = left.get(piece.source, 0) + 1
        gaps = _PieceGaps(left)
        for group in self.groups:
            paths = [self.paths[i] for i in group]
            read = _read_files(paths, self.note, self.progress, done, total, self._sampled, gaps)
            done += len(paths)
            if self._sampled is None:  # one group of everything: counted as read
                if self._skip is not None:
                    self.skipped = sorted(self._skip(sorted(read)))
                self.hosts = len(read) - len(self.skipped)
            for host in self.skipped:
                read.pop(host, None)
            batch.update(read)
            if len(batch) >= self.least:
                yield batch
                batch = {}
        if batch:
            yield batch

    @property
    def names(self) -> frozenset[str] | None:
        """The hosts with samples in the input, from the scan (None: a single file that could
        not be scanned, or a file among several that could not be)."""
        return self._sampled

    def only(self, hosts: Iterable[str]) -> dict[str, HostSeries]:
        """The series of ``hosts`` (those present), reading only the files that hold them."""
        wanted = set(hosts)
        files = sorted(
            i for group in self.groups if any(self._holds(i, wanted) for i in group) for i in group
        )
        paths = [self.paths[i] for i in files]
        read = _read_files(paths, self.note, None, 0, len(paths), self._sampled)
        return {h: read[h] for h in sorted(wanted & set(read))}

    def _holds(self, i: int, hosts: set[str]) -> bool:
        found = self._found[i]
        return found is None or not found.isdisjoint(hosts)


def _is_procs(item: Path | Piece) -> bool:
    return is_procs_file(item.source if isinstance(item, Piece) else item)


def _share_told(
    progress: Callable[[int, int, str], None] | None, done: int, total: int, name: str
) -> Callable[[float], None]:
    """A cut's share of bytes done, told as scan progress of that file (``web.csv 40%``)."""

    def tell(share: float) -> None:
        if progress is not None:
            progress(done, total, f"{name} {int(share * 100)}%")

    return tell


def hosts_in(path: Path) -> frozenset[str] | None:
    """The host names a telemetry file holds, from its host column alone (stripped, as the
    reader does); None when that cannot be told cheaply, for the full reader to explain."""
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            column = pq.read_table(path, columns=[HOST]).column(HOST).unique()
            return frozenset(str(v).strip() for v in column.to_pylist() if v is not None) - {""}
        import pandas as pd

        with path.open("rb") as fh:
            head = fh.read(4096)
        if b"\0" in head or any(head.startswith(magic) for magic, _ in _MAGIC):
            return None
        names: set[str] = set()
        with pd.read_csv(
            path,
            usecols=lambda c: str(c).strip() == HOST,
            dtype=str,
            keep_default_na=False,
            encoding="utf-8-sig",
            chunksize=1 << 20,
        ) as chunks:
            for chunk in chunks:
                if chunk.shape[1] != 1:
                    return None
                names.update(chunk.iloc[:, 0].unique().tolist())
        return frozenset(n.strip() for n in names) - {""}
    except Exception:  # noqa: BLE001 - any failure: the full reader names the problem
        return None


def _share_hosts(found: Sequence[frozenset[str] | None]) -> list[list[int]]:
    """File indexes grouped so that files holding a common host are in one group (in file
    order, groups by their first file); one group of all when any file is unknown (None)."""
    if any(hosts is None for hosts in found):
        return [list(range(len(found)))] if found else []
    parent = list(range(len(found)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, hosts in enumerate(found):
        for host in hosts or ():
            j = first.setdefault(host, i)
            a, b = root(i), root(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(len(found)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def _read_files(
    paths: Sequence[Path | Piece],
    tell: Callable[[str], None],
    progress: Callable[[int, int, str], None] | None,
    before: int,
    total: int,
    sampled: frozenset[str] | None = None,
    gaps: _PieceGaps | None = None,
) -> dict[str, HostSeries]:
    """Read ``paths`` (files ``before``.. of ``total``, for ``progress``) into series by host;
    ``sampled``: every host with samples in the whole input, for the notes. A :class:`Piece`
    (a host's rows of a file holding several) is read and named as its file; ``gaps`` then
    gathers what its pieces read as missing into one note per file."""
    parts: dict[str, list[_Chunk]] = {}
    procs: list[tuple[Path, dict[str, ProcessRows], int | None]] = []
    for done, item in enumerate(paths, start=before + 1):
        path = item.source if isinstance(item, Piece) else item
        if progress is not None and done > 1:
            # names the file being read (and the host, of a file cut by host)
            progress(done - 1, total, _shown_item(item))
        if is_procs_file(path):
            if isinstance(item, Piece):
                procs.append((path, _moved(_read_procs_piece, item), item.rows))
            else:
                procs.append((path, _read_procs(path), None))
            continue
        table = _moved(_read_piece, item) if isinstance(item, Piece) else _read(path)
        if isinstance(item, Piece) and gaps is not None:
            gaps.add(item, table, tell)
        elif table.gaps is not None:
            tell(_gaps_note(path, table, table.gaps))
        # One stable sort groups the rows by host and keeps each host's rows in file order
        # (on the smallest integer type, where numpy sorts by radix).
        key = table.codes.astype(np.min_scalar_type(max(len(table.hosts) - 1, 0)))
        order = np.argsort(key, kind="stable")
        ends = np.cumsum(np.bincount(table.codes, minlength=len(table.hosts)))
        start = 0
        for host, end in zip(table.hosts, ends.tolist(), strict=True):
            rows = order[start:end]
            start = end
            # Column by column into contiguous rows of a transposed matrix: from_arrays'
            # row gather then writes the row-major result in one pass.
            values = np.empty((len(table.metrics), rows.size))
            for j, name in enumerate(table.metrics):
                np.take(table.numeric[name], rows, out=values[j], mode="clip")  # unbuffered
            ts = table.numeric[TIMESTAMP][rows]
            parts.setdefault(host, []).append(_Chunk(ts, values.T, table.metrics, str(path)))
        del table
    if progress is not None and before + len(paths) == total and total:
        progress(total, total, "")
    out = {host: _merge(host, chunks) for host, chunks in parts.items()}
    _attach_procs(out, procs, tell, sampled)
    return out


def _attach_procs(
    out: dict[str, HostSeries],
    tables: list[tuple[Path, dict[str, ProcessRows], int | None]],
    tell: Callable[[str], None],
    sampled: frozenset[str] | None = None,
) -> None:
    """Give each host the rows of its process tables that describe its samples.

    Rows are matched to samples by host and equal timestamp (:meth:`ProcessRows.sample_index`).
    A table's rows of a host without samples, or of a host none of whose sample timestamps they
    carry, describe nothing: they are left out, and ``tell`` says so naming the table (a
    host with no table left is read without process features, as if it had none).
    """
    kept: dict[str, list[ProcessRows]] = {}
    unmatched: list[tuple[Path, str, int, float]] = []
    for path, by_host, file_rows in tables:
        orphans = {h: len(r) for h, r in by_host.items() if h not in out}
        if orphans:
            count = sum(orphans.values())
            total = sum(len(r) for r in by_host.values()) if file_rows is None else file_rows
            lead = f"its {total} rows are" if count == total else f"{count} of its {total} rows are"
            many = len(orphans) > 1
            tell(
                f"{path}: {lead} of host{'s' if many else ''} {_listed(list(orphans))}, which "
                f"{'have' if many else 'has'} no samples in the input (hosts with samples: "
                f"{_listed(sorted(out if sampled is None else sampled)) or 'none'}): not used"
            )
        for host, rows in by_host.items():
            series = out.get(host)
            if series is None:
                continue
            if len(rows) and not (rows.sample_index(series.timestamps) >= 0).any():
                unmatched.append((path, host, len(rows), _closest(rows.timestamps, series)))
                continue
            kept.setdefault(host, []).append(rows)
    for path, host, count, gap in unmatched:
        tell(
            f"{path}: none of its {count} rows of host {host} has the timestamp of a sample of "
            f"host {host} (rows are matched to samples by equal timestamps; the closest is "
            f"{gap:.6g} s from one): "
            + (
                "these rows are not used"
                if host in kept
                else f"not used, host {host} is read without process features"
            )
        )
    for host, rows_list in kept.items():
        out[host].procs = _first_of_each(ProcessRows.concat(rows_list))


def _first_of_each(rows: ProcessRows) -> ProcessRows:
    """``rows`` with each process listed once per sample: of the rows with the same timestamp,
    pid and name (a shipper re-sending a chunk, overlapping files of one host) the first is kept,
    as for duplicated samples, so a repeated row does not count its process's CPU twice."""
    import pandas as pd

    if len(rows) < 2:
        return rows
    keys = pd.DataFrame({"t": rows.timestamps, "p": rows.pids, "n": rows.names})
    repeated = keys.duplicated(keep="first").to_numpy()
    return rows.take(np.flatnonzero(~repeated)) if repeated.any() else rows


def _closest(times: np.ndarray, series: HostSeries) -> float:
    """The smallest distance between one of ``times`` and a sample of ``series`` (sorted)."""
    ts = series.timestamps
    if not len(ts) or not len(times):
        return math.inf
    at = np.searchsorted(ts, times)
    left = ts[np.maximum(at - 1, 0)]
    right = ts[np.minimum(at, len(ts) - 1)]
    return float(np.minimum(np.abs(times - left), np.abs(times - right)).min())


def _listed(names: Sequence[str], most: int = 10) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _read_procs(path: Path) -> dict[str, ProcessRows]:
    """A process table by host: CSV through pandas when it parses cleanly (a week of a host
    is a million rows), else the exact reader, which names the line at fault."""
    if path.name.endswith(".procs.parquet"):
        return read_procs_parquet(path)
    import pandas as pd

    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
        if head[:2] == b"\x1f\x8b" or b"\0" in head:
            return read_procs(path)  # refused there, naming the file
        text = {c: str for c in ("host", "name", "exe", "user")}
        frame = pd.read_csv(
            path, dtype=text, keep_default_na=False, encoding="utf-8-sig", **_pandas_kwargs()
        )
        frame.columns = [str(c).strip() for c in frame.columns]
        if not set(PROC_TABLE_COLUMNS) <= set(frame.columns):
            return read_procs(path)
        gc = GC_COLUMN in frame.columns
        numbers = {
            c: _numeric(frame[c])
            for c in (TIMESTAMP, "pid", "cpu_percent", *((GC_COLUMN,) if gc else ()))
        }
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError):
        return read_procs(path)
    ts = numbers[TIMESTAMP].to_numpy(np.float64)
    hosts = frame[HOST].str.strip()
    with np.errstate(invalid="ignore"):
        fine = (
            np.isfinite(ts).all()
            and pid_ok(numbers["pid"].to_numpy(np.float64)).all()
            and all(share_ok(numbers[c].to_numpy(np.float64)).all() for c in numbers if "cpu" in c)
            and not (hosts == "").any()
        )
    if not fine:  # the exact reader names the first bad line
        return read_procs(path)
    out: dict[str, ProcessRows] = {}
    name, exe, user = (_shared(frame[c]) for c in ("name", "exe", "user"))
    for host, at in hosts.groupby(hosts, sort=False).indices.items():
        out[str(host)] = ProcessRows.from_lists(
            ts[at],
            np.nan_to_num(numbers["pid"].to_numpy(np.float64)[at]).astype(np.int64),
            name[at],
            exe[at],
            user[at],
            numbers["cpu_percent"].to_numpy(np.float64)[at],
            numbers[GC_COLUMN].to_numpy(np.float64)[at] if gc else None,
        )
    return out


def _numeric(column: pd.Series) -> pd.Series:
    """A process table's column as numbers, a blank cell as NaN (the exact reader's empty
    cell); ValueError for anything else that is not a number, the exact reader then names it.

    Blank cells must not become the word ``nan`` on the way: pandas 3's ``to_numeric`` refuses
    it, which sent every table with an empty ``gc_cpu_percent`` to the slow exact reader.
    """
    import pandas as pd

    if pd.api.types.is_numeric_dtype(column):
        return column
    text = column.astype(str)
    return pd.to_numeric(text.where(text.str.strip() != "", None), errors="raise")


def _shared(column: pd.Series) -> np.ndarray:
    """A text column as an object array holding one string object per distinct value.

    A month of a host's process table is millions of rows of a few dozen names: one object per
    row (as ``to_numpy`` makes them) held about 0.5 GB per host, and a fleet's tables the
    machine's memory.
    """
    import pandas as pd

    codes, uniques = pd.factorize(column)
    distinct = np.empty(len(uniques), dtype=object)
    distinct[:] = [str(u) for u in uniques]
    shared: np.ndarray = distinct[codes]
    return shared


def read_procs_parquet(path: Path, piece: Piece | None = None) -> dict[str, ProcessRows]:
    """A Parquet process table by host (the CSV reader is in :mod:`~minerwatch.features.procs`);
    with ``piece``, the rows of its host only."""
    where = str(path)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(where, None, "pyarrow installed for Parquet", "no pyarrow") from None
    row_of: np.ndarray | None = None
    try:
        if piece is None:
            arrow = pq.read_table(path)
        else:
            arrow = pq.read_table(path, filters=[(HOST, "in", list(piece.raw))])
            row_of = _rows_of(path, piece.raw)
        frame = arrow.to_pandas()
    except pa.ArrowException as exc:
        raise InputError(where, None, "a Parquet file", str(exc).splitlines()[0]) from None
    if TIMESTAMP in arrow.column_names and pa.types.is_timestamp(arrow.column(TIMESTAMP).type):
        frame[TIMESTAMP] = _unix_seconds(arrow.column(TIMESTAMP))
    missing = [c for c in PROC_TABLE_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(
            where, None, f"columns {', '.join(PROC_TABLE_COLUMNS)}", f"missing {missing}"
        )
    import pandas as pd

    def numbers(column: str, expected: str, ok: Any) -> np.ndarray:
        raw = frame[column]
        values: np.ndarray = pd.to_numeric(raw, errors="coerce").to_numpy(np.float64)
        bad = np.flatnonzero((raw.notna().to_numpy() & np.isnan(values)) | ~ok(values))
        if bad.size:
            cell = raw.iloc[bad[0]]
            shown = repr(cell) if isinstance(cell, str) else str(cell)
            got = f"{shown} in row {row_of[bad[0]] if row_of is not None else bad[0] + 1}"
            raise InputError(where, None, f"{expected} in column {column!r}", got)
        return values

    with np.errstate(invalid="ignore"):
        ts = numbers(TIMESTAMP, "a finite timestamp", np.isfinite)
        pid = numbers("pid", "a process id (a whole number >= 0)", pid_ok)
        cpu = numbers("cpu_percent", "a percentage >= 0", share_ok)
        gc = numbers(GC_COLUMN, "a percentage >= 0", share_ok) if GC_COLUMN in frame else None
    hosts = frame[HOST].fillna("").astype(str).str.strip()
    empty = np.flatnonzero((hosts == "").to_numpy())
    if empty.size:
        raise InputError(where, None, "a host name in column 'host'", f"none in row {empty[0] + 1}")
    out: dict[str, ProcessRows] = {}
    name, exe, user = (_shared(frame[c].fillna("").astype(str)) for c in ("name", "exe", "user"))
    for host, at in frame.groupby(hosts.to_numpy(), sort=False).indices.items():
        out[str(host)] = ProcessRows.from_lists(
            ts[at],
            np.nan_to_num(pid[at]).astype(np.int64),
            name[at],
            exe[at],
            user[at],
            cpu[at],
            gc[at] if gc is not None else None,
        )
    return out


def _merge(host: str, chunks: list[_Chunk]) -> HostSeries:
    columns: list[str] = []
    for chunk in chunks:
        columns.extend(c for c in chunk.columns if c not in columns)
    source = ", ".join(sorted({c.source for c in chunks}))
    if len(chunks) == 1:
        only = chunks[0]
        return from_arrays(host, only.timestamps, only.values, tuple(columns), source)
    ts = np.concatenate([c.timestamps for c in chunks])
    values = np.full((len(ts), len(columns)), np.nan)
    row = 0
    for chunk in chunks:
        n = len(chunk.timestamps)
        at = [columns.index(c) for c in chunk.columns]
        values[row : row + n, at] = chunk.values
        row += n
    return from_arrays(host, ts, values, tuple(columns), source)


def from_arrays(
    host: str,
    timestamps: np.ndarray,
    values: np.ndarray,
    columns: tuple[str, ...],
    source: str = "",
) -> HostSeries:
    """Sort, drop duplicate timestamps (first wins) and turn inf into NaN.

    Returns new arrays (never views of the inputs). No pandas: the agent calls this.
    """
    ts = np.asarray(timestamps, dtype=np.float64)
    vals = np.asarray(values, dtype=np.float64).reshape(len(ts), len(columns))
    order = np.argsort(ts, kind="stable")
    ts = ts[order]
    keep = np.ones(len(ts), dtype=bool)
    keep[1:] = ts[1:] != ts[:-1]
    inf = int(np.isinf(vals).sum())  # duplicates included, as they were in the file
    out = vals[order[keep]]
    if inf:
        out[np.isinf(out)] = np.nan
    return HostSeries(
        host=host,
        timestamps=ts[keep],
        values=out,
        columns=columns,
        source=source,
        duplicates=int((~keep).sum()),
        nonfinite=inf,
    )
