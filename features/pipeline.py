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
from minerwatch.features.windows import Windows, make_windows, sample_interval


class FeatureRows(NamedTuple):
    """One feature row per complete window on the grid."""

    windows: Windows
    names: tuple[str, ...]
    matrix: np.ndarray


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
