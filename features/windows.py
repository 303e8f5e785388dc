"""Samples -> fixed windows on an absolute grid (window start = k * hop, Unix seconds).

The grid is absolute so that training, batch scoring and the live agent cut the same windows
from the same samples whatever order or file they came in. A window is kept only when enough
samples cover it (``min_coverage`` of the expected count): a gap gives *no* window, never a
window of zeros that would look like an idle or an anomalous host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Columns whose within-window minimum is kept: a sustained plateau keeps its floor high.
FLOOR_COLUMNS = ("cpu_percent", "top_proc_cpu_percent")


@dataclass(frozen=True)
class Windows:
    """Per-window aggregates of one host's samples (rows sorted by slot)."""

    slots: np.ndarray
    hop: float
    window: float
    count: np.ndarray
    means: np.ndarray
    floors: np.ndarray
    columns: tuple[str, ...]
    floor_columns: tuple[str, ...]

    @property
    def starts(self) -> np.ndarray:
        return self.slots * self.hop

    @property
    def ends(self) -> np.ndarray:
        return self.slots * self.hop + self.window

    def __len__(self) -> int:
        return len(self.slots)


def sample_interval(timestamps: np.ndarray, default: float) -> float:
    """The typical spacing of samples (median positive step); ``default`` if unknown."""
    steps = np.diff(np.asarray(timestamps, dtype=np.float64))
    steps = steps[steps > 0]
    return float(np.median(steps)) if steps.size else float(default)


def make_windows(
    timestamps: np.ndarray,
    values: np.ndarray,
    columns: tuple[str, ...],
    window: float = 60.0,
    hop: float = 60.0,
    interval: float | None = None,
    min_coverage: float = 0.5,
    until: float | None = None,
) -> Windows:
    """Aggregate samples into windows [k*hop, k*hop + window).

    ``until`` drops windows that end after it (the live agent passes "now" so a window is
    scored only once it is complete). Rows need not be sorted; NaN values are ignored.
    """
    if not (window > 0 and hop > 0 and hop <= window):
        raise ValueError(f"need 0 < hop <= window, got window={window} hop={hop}")
    ts = np.asarray(timestamps, dtype=np.float64)
    vals = np.asarray(values, dtype=np.float64).reshape(len(ts), len(columns))
    floor_cols = tuple(c for c in FLOOR_COLUMNS if c in columns)
    if interval is None:
        interval = sample_interval(np.sort(ts), window)
    if interval > window:
        raise ValueError(f"sample interval {interval:g}s is longer than the window {window:g}s")
    empty = Windows(
        np.zeros(0, dtype=np.int64),
        hop,
        window,
        np.zeros(0, dtype=np.int64),
        np.zeros((0, len(columns))),
        np.zeros((0, len(floor_cols))),
        columns,
        floor_cols,
    )
    if ts.size == 0:
        return empty
    last = np.floor(ts / hop).astype(np.int64)
    slot_parts, row_parts = [], []
    for j in range(math.ceil(window / hop)):
        k = last - j
        inside = ts < k * hop + window
        slot_parts.append(k[inside])
        row_parts.append(np.flatnonzero(inside))
    slot_all = np.concatenate(slot_parts)
    rows = np.concatenate(row_parts)
    slots, inverse = np.unique(slot_all, return_inverse=True)
    n = len(slots)
    count = np.bincount(inverse, minlength=n)
    sub = vals[rows]
    finite = np.isfinite(sub)
    means = np.full((n, len(columns)), np.nan)
    for j in range(len(columns)):
        w = np.where(finite[:, j], sub[:, j], 0.0)
        total = np.bincount(inverse, weights=w, minlength=n)
        seen = np.bincount(inverse, weights=finite[:, j].astype(np.float64), minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            means[:, j] = np.where(seen > 0, total / np.maximum(seen, 1), np.nan)
    floors = np.full((n, len(floor_cols)), np.inf)
    for j, name in enumerate(floor_cols):
        np.fmin.at(floors[:, j], inverse, sub[:, columns.index(name)])
    floors[np.isinf(floors)] = np.nan
    expected = window / interval
    keep = count >= max(1.0, min_coverage * expected)
    if until is not None:
        keep &= slots * hop + window <= until + 1e-9
    return Windows(
        slots[keep], hop, window, count[keep], means[keep], floors[keep], columns, floor_cols
    )
