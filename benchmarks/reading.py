"""Reading speed of telemetry CSV: the pandas reader against the pre-pandas csv-module reader.

    python -m minerwatch.bench.reading                  # ~1 M rows, 4 hosts, 5 repetitions
    python -m minerwatch.bench.reading --json           # the same, printed as JSON

Simulates a fleet with :mod:`minerwatch.bench.simulate` (its value formats, gaps and re-sent
rows), merges the hosts' files into one file ordered by time, as a fleet export looks, and
times ``read_telemetry`` of both readers on that file, alternating them in every repetition.
Reports median rows/s and the ratio (target >= 10x). Since pandas 3.1 the C parser splits a
large file between threads; the same reader limited to one thread is timed too, so the gain
on one core is visible. Both readers must return the same series, or the run fails.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import heapq
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from minerwatch.bench.public_data import machine_line
from minerwatch.bench.simulate import simulate
from minerwatch.features.errors import InputError
from minerwatch.features.io import HostSeries, expand_inputs, read_telemetry
from minerwatch.features.schema import HOST, TIMESTAMP

TARGET_RATIO = 10.0
SAMPLES_PER_DAY = 86400 / 30.0  # the simulator's default interval

Reader = Callable[[Sequence[str | Path]], dict[str, HostSeries]]


# -- legacy_read: the pre-pandas reader, kept ONLY to measure against -------------------------
#
# A copy of features/io.py's reader before it used pandas (csv module, one Python string per
# cell), names prefixed, behaviour unchanged. Not used by minerwatch itself: do not fix or
# extend it here, fix features/io.py.


def _legacy_to_float(text: str) -> float:
    if text == "" or text.lower() in ("na", "nan", "null"):
        return math.nan
    return float(text)


def _legacy_column_to_array(cells: list[str], name: str, path: str, header_line: int) -> np.ndarray:
    try:
        return np.array(cells, dtype=np.float64)
    except ValueError:
        pass
    out = np.empty(len(cells))
    for i, cell in enumerate(cells):
        try:
            out[i] = _legacy_to_float(cell.strip())
        except ValueError:
            what = "a number (Unix seconds)" if name == TIMESTAMP else f"a number in {name!r}"
            raise InputError(path, header_line + 1 + i, what, repr(cell)) from None
    return out


def _legacy_read_table(path: Path) -> tuple[list[str], dict[str, np.ndarray], list[str]]:
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
        name: _legacy_column_to_array(cells, name, where, 1)
        for name, cells in zip(header, columns, strict=True)
        if name != HOST
    }
    metrics = [h for h in header if h not in (TIMESTAMP, HOST)]
    return metrics, numeric, hosts


def _legacy_merge(host: str, chunks: list[tuple[dict[str, np.ndarray], str]]) -> HostSeries:
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
    source = ", ".join(sorted({s for _, s in chunks}))
    return _legacy_from_arrays(host, ts, values, tuple(columns), source)


def _legacy_from_arrays(
    host: str, timestamps: np.ndarray, values: np.ndarray, columns: tuple[str, ...], source: str
) -> HostSeries:
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


def legacy_read(inputs: Sequence[str | Path]) -> dict[str, HostSeries]:
    """The pre-pandas ``read_telemetry`` (CSV only), kept for this measurement only."""
    parts: dict[str, list[tuple[dict[str, np.ndarray], str]]] = {}
    for path in expand_inputs(inputs):
        metrics, numeric, hosts = _legacy_read_table(path)
        ts = numeric[TIMESTAMP]
        bad = np.flatnonzero(~np.isfinite(ts))
        if bad.size:
            raise InputError(str(path), int(bad[0]) + 2, "a finite timestamp", str(ts[bad[0]]))
        host_arr = np.array(hosts, dtype=object)
        for host in dict.fromkeys(hosts):
            mask = host_arr == host
            sub = {name: numeric[name][mask] for name in [TIMESTAMP, *metrics]}
            parts.setdefault(host, []).append((sub, str(path)))
    return {host: _legacy_merge(host, chunks) for host, chunks in parts.items()}


# -- the measurement ---------------------------------------------------------------------------


def make_fleet_file(folder: Path, rows: int, hosts: int, seed: int) -> Path:
    """Simulate ``hosts`` hosts and merge their CSV files into ``folder/fleet.csv`` by time."""
    days = rows / (hosts * SAMPLES_PER_DAY)
    # host samples only: this measures the samples reader (process tables have their own)
    simulate(folder / "sim", hosts=hosts, train_days=days, test_days=0, seed=seed, procs=False)
    streams: list[list[tuple[float, str]]] = []
    header = ""
    for path in sorted((folder / "sim" / "train").glob("*.csv")):
        lines = path.read_text().splitlines()
        header = lines[0]
        streams.append([(float(line.split(",", 1)[0]), line) for line in lines[1:]])
    merged = heapq.merge(*streams, key=lambda item: item[0])
    out = folder / "fleet.csv"
    with out.open("w") as fh:
        fh.write(header + "\n")
        fh.writelines(line + "\n" for _, line in merged)
    return out


@contextlib.contextmanager
def one_thread() -> Iterator[bool]:
    """pandas' parallel CSV reading limited to one thread; yields False if pandas has none."""
    import pandas as pd

    try:
        pd.get_option("mode.max_threads")
    except KeyError:  # pandas before 3.1: reading is single-threaded anyway
        yield False
        return
    with pd.option_context("mode.max_threads", 1):
        yield True


def timed(reader: Reader, path: Path, single: bool = False) -> tuple[float, float]:
    """Wall and CPU seconds of one read."""
    with one_thread() if single else contextlib.nullcontext():
        wall, cpu = time.perf_counter(), time.process_time()
        reader([path])
        return time.perf_counter() - wall, time.process_time() - cpu


def check_same(a: dict[str, HostSeries], b: dict[str, HostSeries]) -> None:
    """Both readers must return the same series; a benchmark of a wrong reader is void."""
    if list(a) != list(b):
        raise SystemExit(f"readers disagree on hosts: {list(a)} vs {list(b)}")
    for host in a:
        x, y = a[host], b[host]
        same = (
            x.columns == y.columns
            and np.array_equal(x.timestamps, y.timestamps)
            and np.array_equal(x.values, y.values, equal_nan=True)
            and (x.duplicates, x.nonfinite, x.source) == (y.duplicates, y.nonfinite, y.source)
        )
        if not same:
            raise SystemExit(f"readers disagree on host {host}")


def measure(path: Path, reps: int) -> dict[str, Any]:
    """Median wall time and rows/s of each reader over ``reps`` alternating repetitions."""
    fleet = read_telemetry([path])  # also the warm-up: imports pandas, fills the page cache
    check_same(legacy_read([path]), fleet)
    rows = sum(1 for _ in path.open()) - 1
    runs: dict[str, list[tuple[float, float]]] = {"legacy": [], "pandas": [], "pandas_1thread": []}
    for _ in range(reps):
        runs["legacy"].append(timed(legacy_read, path))
        runs["pandas"].append(timed(read_telemetry, path))
        runs["pandas_1thread"].append(timed(read_telemetry, path, single=True))
    result: dict[str, Any] = {
        "rows": rows,
        "hosts": len(fleet),
        "columns": 2 + len(next(iter(fleet.values())).columns),
        "megabytes": round(path.stat().st_size / 1e6, 1),
        "repetitions": reps,
    }
    for name, samples in runs.items():
        wall = statistics.median(s[0] for s in samples)
        result[name] = {
            "median_s": round(wall, 3),
            "min_s": round(min(s[0] for s in samples), 3),
            "max_s": round(max(s[0] for s in samples), 3),
            "median_cpu_s": round(statistics.median(s[1] for s in samples), 3),
            "rows_per_s": round(rows / wall),
        }
    legacy = result["legacy"]["median_s"]
    result["ratio"] = round(legacy / result["pandas"]["median_s"], 1)
    result["ratio_1thread"] = round(legacy / result["pandas_1thread"]["median_s"], 1)
    result["target_met"] = result["ratio"] >= TARGET_RATIO
    return result


def format_text(result: dict[str, Any]) -> str:
    lines = [
        f"{result['rows']:,} rows, {result['hosts']} hosts, {result['columns']} columns, "
        f"{result['megabytes']} MB; median of {result['repetitions']} repetitions",
    ]
    labels = {
        "legacy": "pre-pandas csv reader",
        "pandas": "pandas reader",
        "pandas_1thread": "pandas reader, 1 thread",
    }
    for key, label in labels.items():
        r = result[key]
        ratio = "" if key == "legacy" else f"  {result['legacy']['median_s'] / r['median_s']:.1f}x"
        lines.append(
            f"  {label:<24} {r['median_s']:7.3f} s  {r['rows_per_s']:>10,} rows/s"
            f"  (cpu {r['median_cpu_s']:.3f} s){ratio}"
        )
    verdict = "met" if result["target_met"] else "NOT met"
    lines.append(f"target >= {TARGET_RATIO:g}x: {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="about this many rows")
    p.add_argument("--hosts", type=int, default=4)
    p.add_argument("--reps", type=int, default=5, help="timed repetitions of each reader")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", type=Path, help="keep the generated files here")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="minerwatch-reading-") as tmp:
        folder = args.workdir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        path = make_fleet_file(folder, args.rows, args.hosts, args.seed)
        result = measure(path, args.reps)
    import pandas as pd

    result["machine"] = machine_line()
    result["nproc"] = os.cpu_count()
    result["versions"] = {"pandas": pd.__version__, "numpy": np.__version__}
    result["date_utc"] = f"{datetime.now(UTC):%Y-%m-%d %H:%M}"
    given = sys.argv[1:] if argv is None else argv
    result["command"] = " ".join(["python -m minerwatch.bench.reading", *given])
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"# {result['date_utc']} UTC on {result['machine']}")
        print(format_text(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
