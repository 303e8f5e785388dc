"""Samples -> feature rows: the one function training, batch scoring, the agent and the
benchmarks call, so every path cuts the same windows and computes the same features.

Numpy and ``minerwatch.features`` only: the agent imports it and must never load pandas or
scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from minerwatch.features.errors import InputError
from minerwatch.features.extract import extract
from minerwatch.features.procs import GC_COLUMNS
from minerwatch.features.windows import Windows, make_windows, sample_interval

#: CPU of known processes' garbage collectors, in all and in the busiest process
#: (:mod:`minerwatch.baseline.procbase`).
GC, GC_TOP = GC_COLUMNS
#: Columns a model may have been trained with that other data lacks without harm: the core
#: count only scales the GC credit.
OPTIONAL = ("cpu_cores",)


class FeatureRows(NamedTuple):
    """One feature row per complete window on the grid."""

    windows: Windows
    names: tuple[str, ...]
    matrix: np.ndarray


def without_gc(values: np.ndarray, columns: Sequence[str]) -> np.ndarray:
    """``values`` with the CPU familiar processes spent collecting garbage taken out of the
    host's CPU (where the core count is known) and the busiest process's own out of its CPU.

    A GC storm is a JVM at many cores for minutes, doing no work: to the CPU features it is a
    miner inside a familiar process. Its collector threads name it (the process baseline
    credits them only to processes this host has run), so the features judge the rest.
    Without the column (no process table, or an older one) nothing changes.

    >>> v = np.array([[50.0, 300.0, 4.0, 200.0, 190.0], [50.0, 300.0, 4.0, np.nan, np.nan]])
    >>> cols = ("cpu_percent", "top_proc_cpu_percent", "cpu_cores", GC, GC_TOP)
    >>> without_gc(v, cols)[:, :2].tolist()
    [[0.0, 110.0], [50.0, 300.0]]
    """
    cols = tuple(columns)
    if GC not in cols:
        return values
    gc = values[:, cols.index(GC)]
    has = np.isfinite(gc) & (gc > 0)
    if not has.any():
        return values
    out = values.copy()
    if "top_proc_cpu_percent" in cols and GC_TOP in cols:
        j, top = cols.index("top_proc_cpu_percent"), values[:, cols.index(GC_TOP)]
        ok = np.isfinite(top) & (top > 0)
        out[:, j] = np.where(ok, np.maximum(out[:, j] - np.where(ok, top, 0.0), 0.0), out[:, j])
    if "cpu_percent" in cols and "cpu_cores" in cols:
        j, cores = cols.index("cpu_percent"), values[:, cols.index("cpu_cores")]
        ok = has & np.isfinite(cores) & (cores >= 1)
        less = out[:, j] - np.where(ok, gc, 0.0) / np.where(ok, cores, 1.0)
        out[:, j] = np.where(ok, np.maximum(less, 0.0), out[:, j])
    return out


def feature_rows(
    timestamps: np.ndarray,
    values: np.ndarray,
    columns: Sequence[str],
    window: float,
    hop: float,
    inputs: Sequence[str] | None = None,
    interval: float | None = None,
    until: float | None = None,
    source: str = "",
    host: str = "",
) -> FeatureRows:
    """Cut one host's samples into windows on the absolute grid and compute their features.

    ``columns`` name the columns of ``values``; ``inputs`` (a model's columns) picks and
    orders the ones to use, all of them by default. ``interval`` is the sampling interval,
    estimated from the timestamps when not given. ``until`` drops windows that end after it;
    by default the last sample's interval ends the data, so only complete windows get a row.
    ``source`` and ``host`` say where the samples came from in errors.

    >>> ts = np.arange(0.0, 300.0, 10.0)
    >>> rows = feature_rows(ts, np.full((30, 1), 50.0), ("cpu_percent",), 60.0, 60.0)
    >>> rows.windows.slots.tolist(), rows.names[0], rows.matrix.shape
    ([0, 1, 2, 3, 4], 'cpu_percent', (5, 6))
    """
    have = tuple(columns)
    use = have if inputs is None else tuple(inputs)
    where = source or host
    blank = tuple(c for c in OPTIONAL if c in use and c not in have)
    if blank:  # data that never had them (a fleet, an older file): unknown, not an error
        values = np.hstack(
            [
                np.asarray(values, dtype=np.float64).reshape(len(timestamps), len(have)),
                np.full((len(timestamps), len(blank)), np.nan),
            ]
        )
        have += blank
    missing = [c for c in use if c not in have]
    if missing:
        for_host = f" for host {host!r}" if host else ""
        raise InputError(
            where,
            None,
            f"the columns the model was trained on{for_host}",
            f"missing {', '.join(missing)}",
        )
    ts = np.asarray(timestamps, dtype=np.float64)
    picked = np.asarray(values, dtype=np.float64).reshape(len(ts), len(have))
    picked = picked[:, [have.index(c) for c in use]]
    picked = without_gc(picked, use)
    if interval is None:
        interval = sample_interval(np.sort(ts), window)
    if interval > window:
        raise InputError(
            where,
            None,
            f"samples at most {window:g}s apart (the window length)",
            f"a typical interval of {interval:g}s",
        )
    if until is None and ts.size:
        until = float(ts.max()) + interval
    win = make_windows(ts, picked, use, window, hop, interval=interval, until=until)
    names, matrix = extract(win)
    return FeatureRows(win, names, matrix)
