"""Read telemetry files (CSV, or Parquet with pyarrow) into per-host series, with clear errors.

Files may hold many hosts and rows in any order; duplicate timestamps keep the first row and
are counted, non-finite values become NaN (a gap in that metric, never a fake zero).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minerwatch.features.errors import InputError
from minerwatch.features.schema import HOST, TIMESTAMP

SUFFIXES = (".csv", ".parquet")


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

    def column(self, name: str) -> np.ndarray:
        return self.values[:, self.columns.index(name)]


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders expanded to their telemetry files (sorted)."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
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
    if text == "" or text.lower() in ("na", "nan", "null"):
        return math.nan
    return float(text)


def _column_to_array(cells: list[str], name: str, path: str, header_line: int) -> np.ndarray:
    try:
        return np.array(cells, dtype=np.float64)
    except ValueError:
        pass
    out = np.empty(len(cells))
    for i, cell in enumerate(cells):
        try:
            out[i] = _to_float(cell.strip())
        except ValueError:
            what = "a number (Unix seconds)" if name == TIMESTAMP else f"a number in {name!r}"
            raise InputError(path, header_line + 1 + i, what, repr(cell)) from None
    return out


def read_table(path: Path) -> tuple[list[str], dict[str, np.ndarray], list[str]]:
    """Return (metric column names, numeric columns incl. timestamp, host per row)."""
    if path.suffix == ".parquet":
        return _read_parquet(path)
    where = str(path)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise InputError(where, 1, "a header line starting with 'timestamp,host'", "empty file")
        header = [h.strip() for h in header]
        missing = [c for c in (TIMESTAMP, HOST) if c not in header]
        if missing:
            raise InputError(where, 1, f"columns {', '.join(missing)} in the header", str(header))
        dup = sorted({h for h in header if header.count(h) > 1})
        if dup:
            raise InputError(where, 1, "unique column names", f"repeated {dup}")
        width = len(header)
        columns: list[list[str]] = [[] for _ in range(width)]
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != width:
                raise InputError(where, lineno, f"{width} fields", f"{len(row)}")
            for col, cell in zip(columns, row, strict=True):
                col.append(cell)
    if not columns[0]:
        raise InputError(where, 2, "at least one data row", "only a header")
    hosts = [h.strip() for h in columns[header.index(HOST)]]
    blank = next((i for i, h in enumerate(hosts) if not h), None)
    if blank is not None:
        raise InputError(where, blank + 2, "a host name", "an empty cell")
    numeric = {
        name: _column_to_array(cells, name, where, 1)
        for name, cells in zip(header, columns, strict=True)
        if name != HOST
    }
    metrics = [h for h in header if h not in (TIMESTAMP, HOST)]
    return metrics, numeric, hosts


def _read_parquet(path: Path) -> tuple[list[str], dict[str, np.ndarray], list[str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(str(path), None, "pyarrow installed for Parquet", "no pyarrow") from None
    table = pq.read_table(path)
    names = list(table.column_names)
    missing = [c for c in (TIMESTAMP, HOST) if c not in names]
    if missing:
        raise InputError(str(path), None, f"columns {', '.join(missing)}", str(names))
    numeric: dict[str, np.ndarray] = {}
    for name in names:
        if name == HOST:
            continue
        try:
            numeric[name] = np.asarray(table.column(name).to_numpy(), dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(str(path), None, f"numbers in {name!r}", "non-numeric") from None
    hosts = [str(h) for h in table.column(HOST).to_pylist()]
    return [n for n in names if n not in (TIMESTAMP, HOST)], numeric, hosts


def read_telemetry(inputs: Sequence[str | Path]) -> dict[str, HostSeries]:
    """Read telemetry files and folders into one :class:`HostSeries` per host.

    >>> # series = read_telemetry(["fleet/"]); series["web-1"].column("cpu_percent")
    """
    parts: dict[str, list[tuple[dict[str, np.ndarray], str]]] = {}
    for path in expand_inputs(inputs):
        metrics, numeric, hosts = read_table(path)
        ts = numeric[TIMESTAMP]
        bad = np.flatnonzero(~np.isfinite(ts))
        if bad.size:
            raise InputError(str(path), int(bad[0]) + 2, "a finite timestamp", str(ts[bad[0]]))
        host_arr = np.array(hosts, dtype=object)
        for host in dict.fromkeys(hosts):
            mask = host_arr == host
            sub = {name: numeric[name][mask] for name in [TIMESTAMP, *metrics]}
            parts.setdefault(host, []).append((sub, str(path)))
    return {host: _merge(host, chunks) for host, chunks in parts.items()}


def _merge(host: str, chunks: list[tuple[dict[str, np.ndarray], str]]) -> HostSeries:
    columns: list[str] = []
    for sub, _ in chunks:
        columns.extend(c for c in sub if c != TIMESTAMP and c not in columns)
    ts = np.concatenate([sub[TIMESTAMP] for sub, _ in chunks])
    values = np.full((len(ts), len(columns)), np.nan)
    row = 0
    for sub, _ in chunks:
        n = len(sub[TIMESTAMP])
        for j, name in enumerate(columns):
            if name in sub:
                values[row : row + n, j] = sub[name]
        row += n
    return from_arrays(host, ts, values, tuple(columns), ", ".join(sorted({s for _, s in chunks})))


def from_arrays(
    host: str,
    timestamps: np.ndarray,
    values: np.ndarray,
    columns: tuple[str, ...],
    source: str = "",
) -> HostSeries:
    """Sort, drop duplicate timestamps (first wins) and turn inf into NaN."""
    ts = np.asarray(timestamps, dtype=np.float64)
    vals = np.asarray(values, dtype=np.float64).reshape(len(ts), len(columns))
    order = np.argsort(ts, kind="stable")
    ts, vals = ts[order], vals[order]
    keep = np.ones(len(ts), dtype=bool)
    keep[1:] = ts[1:] != ts[:-1]
    nonfinite = ~np.isfinite(vals)
    nonfinite_count = int(np.isinf(vals).sum())
    vals = np.where(nonfinite, np.nan, vals)
    return HostSeries(
        host=host,
        timestamps=ts[keep],
        values=vals[keep],
        columns=columns,
        source=source,
        duplicates=int((~keep).sum()),
        nonfinite=nonfinite_count,
    )
