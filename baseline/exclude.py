"""What training must not learn: time the agent alerted on, its surroundings, an open episode.

A miner that keeps running must never become "normal", so retraining leaves that time out.
Numpy only: the agent (fallback input) and the training child both select data with it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def exclusion_mask(
    timestamps: np.ndarray,
    windows: Iterable[tuple[float, float]],
    margin_s: float = 0.0,
    before: float | None = None,
) -> np.ndarray:
    """True for timestamps outside every window widened by ``margin_s`` on both sides
    (and, with ``before``, earlier than it: an episode still open has no end yet).

    >>> exclusion_mask(np.array([0.0, 10.0, 20.0, 30.0]), [(10.0, 15.0)], 5.0).tolist()
    [True, False, False, True]
    """
    ts = np.asarray(timestamps, dtype=float)
    keep = np.ones(ts.shape, dtype=bool)
    for start, end in windows:
        keep &= (ts < start - margin_s) | (ts > end + margin_s)
    if before is not None:
        keep &= ts < before
    return keep
