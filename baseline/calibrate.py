"""Deciding: the alert rule over consecutive windows and the threshold calibration.

The model only scores; this module decides. An episode opens when ``k`` consecutive windows
score above the threshold (one hot window is a blip, a miner is a plateau) and closes after
``clear`` consecutive windows below it, so one campaign is one episode, not a flapping series.
The threshold is the lowest one that keeps out-of-fold training scores within the allowed
number of episodes (default: one false alarm per host per week).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

WEEK = 7 * 86400.0


@dataclass
class AlertState:
    """Streaming form of the alert rule; the batch form below runs the same code."""

    threshold: float
    k: int = 3
    clear: int = 3
    active: bool = False
    _above: int = 0
    _below: int = 0
    _last_slot: int | None = field(default=None, repr=False)

    def update(self, score: float, slot: int | None = None) -> bool:
        """Feed one window's score; returns whether the window is alerted."""
        if slot is not None and self._last_slot is not None and slot - self._last_slot > 1:
            missed = slot - self._last_slot - 1  # a gap: no evidence either way
            self._above = 0
            self._below += missed
            if self.active and self._below >= self.clear:
                self.active = False
        self._last_slot = slot
        above = bool(np.isfinite(score) and score > self.threshold)
        if above:
            self._above += 1
            self._below = 0
            if self._above >= self.k:
                self.active = True
        else:
            self._above = 0
            self._below += 1
            if self.active and self._below >= self.clear:
                self.active = False
        return self.active


def alert_rule(
    scores: np.ndarray,
    threshold: float,
    slots: np.ndarray | None = None,
    k: int = 3,
    clear: int = 3,
) -> np.ndarray:
    """Alert flag per window (windows in time order; ``slots`` = window index on the grid)."""
    state = AlertState(threshold=threshold, k=k, clear=clear)
    slot_list = [None] * len(scores) if slots is None else [int(s) for s in slots]
    return np.array(
        [state.update(float(s), sl) for s, sl in zip(scores, slot_list, strict=True)], dtype=bool
    )


def episodes(alert: np.ndarray, slots: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Runs of alerted windows as (first index, last index), split where slots jump."""
    alert = np.asarray(alert, dtype=bool)
    if slots is None:
        slots = np.arange(len(alert))
    out: list[tuple[int, int]] = []
    start = None
    for i, flag in enumerate(alert):
        contiguous = i > 0 and slots[i] - slots[i - 1] == 1
        if flag and (start is None or not contiguous):
            if start is not None:
                out.append((start, i - 1))
            start = i
        elif not flag and start is not None:
            out.append((start, i - 1))
            start = None
    if start is not None:
        out.append((start, len(alert) - 1))
    return out


def count_episodes(
    scores: np.ndarray, threshold: float, slots: np.ndarray | None, k: int, clear: int
) -> int:
    return len(episodes(alert_rule(scores, threshold, slots, k, clear), slots))


def calibrate_threshold(
    scores: np.ndarray,
    slots: np.ndarray | None = None,
    hop: float = 60.0,
    max_alarms_per_week: float = 1.0,
    k: int = 3,
    clear: int = 3,
) -> float:
    """Lowest threshold whose alert episodes on ``scores`` stay within the weekly budget."""
    scores = np.asarray(scores, dtype=np.float64)
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        return 1.0
    span = (len(scores) if slots is None else float(np.ptp(slots)) + 1.0) * hop
    allowed = int(np.floor(max_alarms_per_week * span / WEEK))
    candidates = np.unique(np.quantile(finite, np.linspace(0.5, 1.0, 201)))
    candidates = np.append(candidates, np.nextafter(finite.max(), np.inf))
    lo, hi = 0, len(candidates) - 1  # episodes fall (weakly) as the threshold rises
    while lo < hi:
        mid = (lo + hi) // 2
        if count_episodes(scores, float(candidates[mid]), slots, k, clear) <= allowed:
            hi = mid
        else:
            lo = mid + 1
    return float(candidates[lo])
