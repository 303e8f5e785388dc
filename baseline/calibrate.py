"""Deciding: the alert rule over consecutive windows and the threshold calibration.

The model only scores; this module decides. An episode opens when ``k`` consecutive windows
score far above the threshold (:data:`ALERT_MARGIN`: an unknown or disguised process, CPU far
past anything in training), when ``fast`` (2) score farther still (:data:`FAST_MARGIN`: a
new or disguised miner scores ten or more units above it from its first windows), or when
``sustain`` consecutive windows score above it at all (a
familiar process working harder than usual: GC storms, compiles and admin jobs last minutes,
a miner inside a familiar process runs for hours); one hot window is a blip, a miner is a
plateau. A window in which the host does *heavy work* (some evidence of work, such as disk
bytes or packets, far above its training median: :data:`HEAVY_WORK`) does not count toward
the sustain: a reindex on more cores than any in training or a traffic surge bigger than any
before holds marginal evidence for as long as the work lasts, a miner holds it after the work
too. It closes after ``clear`` consecutive windows below the threshold, so one campaign is
one episode, not a flapping series.
The threshold is the lowest one that keeps out-of-fold training scores within the allowed
number of episodes (default: :data:`ALARMS_PER_WEEK`), counted as if ``k`` windows above it
opened an alert whatever the margin: the rule's most eager reading but for the fast path, so
the margin, the sustain and heavy work only ever remove episodes from what the calibration
allowed. The fast path can add one only where two windows in a row score :data:`FAST_MARGIN`
above the threshold and the third does not score above it at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DAY = 86400.0
WEEK = 7 * DAY
#: The default false-alarm budget: one episode per host in four weeks. A fleet of 500 hosts
#: then pages for benign load about 18 times a week, not 500; new and disguised processes
#: still score far above such a threshold (docs/benchmarks.md, "False-alarm budget").
ALARMS_PER_WEEK = 0.25
#: How far above the threshold a window must score to open an alert after ``k`` windows, in
#: units of surprise ``-ln(1 - score)``: 2 means ``1 - score`` is e^2 (7.4) times smaller than
#: at the threshold. Below it, evidence must last :data:`SUSTAIN_WINDOWS` windows.
ALERT_MARGIN = 2.0
#: Windows in a row above the threshold that open an alert however small the margin (8 minutes
#: at the default 60-s window). docs/benchmarks.md, "Marginal evidence must last".
SUSTAIN_WINDOWS = 8
#: Evidence of work at least this many training standard deviations above its training median
#: makes a window one of heavy work, whose marginal evidence does not count toward the sustain.
#: docs/benchmarks.md, "Heavy work holds the sustain".
HEAVY_WORK = 2.0
#: Windows in a row, and how far above the threshold (units of surprise, twice the margin:
#: ``1 - score`` 55 times smaller than at the threshold at the default margin), that open an
#: alert without waiting for the third. docs/benchmarks.md, "Two windows for evidence far
#: above the threshold". Training takes twice the model's own margin.
FAST_WINDOWS = 2
FAST_MARGIN = 2 * ALERT_MARGIN


def strong_threshold(threshold: float, margin: float) -> float:
    """The score ``margin`` units of surprise above ``threshold`` (1 stays 1).

    >>> round(strong_threshold(0.9, 2.0), 4), strong_threshold(0.9, 0.0), strong_threshold(1.0, 2.0)
    (0.9865, 0.9, 1.0)
    """
    if margin <= 0 or threshold >= 1.0:
        return threshold
    return float(-np.expm1(np.log1p(-max(threshold, 0.0)) - margin))


@dataclass
class AlertState:
    """Streaming form of the alert rule; the batch form below runs the same code."""

    threshold: float
    k: int = 3
    clear: int = 3
    #: Windows above the threshold that open an alert whatever the margin; None: ``k`` (then
    #: every window above counts as strong, the rule of models trained before the margin).
    sustain: int | None = None
    #: Surprise margin above the threshold for a window to count toward ``k``.
    margin: float = 0.0
    #: Windows at least ``fast_margin`` above the threshold that open an alert; None: no such
    #: path (models trained without process tables, or before it).
    fast: int | None = None
    fast_margin: float = 0.0
    active: bool = False
    _above: int = 0
    _strong: int = 0
    _fast: int = 0
    _below: int = 0
    _last_slot: int | None = field(default=None, repr=False)
    _strong_at: float = field(default=1.0, init=False, repr=False)
    _fast_at: float = field(default=1.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._strong_at = (
            self.threshold
            if self.sustain is None
            else strong_threshold(self.threshold, self.margin)
        )
        self._fast_at = strong_threshold(self.threshold, self.fast_margin)

    def rebase(self, slot: int) -> None:
        """Go on from ``slot`` on another timeline (the wall clock stepped back): the next
        window is no gap, and whether the alert is on is kept."""
        self._last_slot = slot

    def update(self, score: float, slot: int | None = None, heavy: bool = False) -> bool:
        """Feed one window's score (``heavy``: the host did heavy work in it, so a margin
        below :attr:`margin` does not count toward the sustain); returns whether the window
        is alerted."""
        if slot is not None and self._last_slot is not None and slot - self._last_slot > 1:
            missed = slot - self._last_slot - 1  # a gap: no evidence either way
            self._above = self._strong = self._fast = 0
            self._below += missed
            if self.active and self._below >= self.clear:
                self.active = False
        self._last_slot = slot
        above = bool(np.isfinite(score) and score > self.threshold)
        if above:
            strong = score > self._strong_at
            self._above = self._above + 1 if strong or not heavy else 0
            self._strong = self._strong + 1 if strong else 0
            self._fast = self._fast + 1 if strong and score > self._fast_at else 0
            self._below = 0
            sustain = self.k if self.sustain is None else self.sustain
            fast = self.fast is not None and self._fast >= self.fast
            if self._strong >= self.k or self._above >= sustain or fast:
                self.active = True
        else:
            self._above = self._strong = self._fast = 0
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
    sustain: int | None = None,
    margin: float = 0.0,
    heavy: np.ndarray | None = None,
    fast: int | None = None,
    fast_margin: float = 0.0,
) -> np.ndarray:
    """Alert flag per window (windows in time order; ``slots`` = window index on the grid;
    ``heavy``: per window, whether the host did heavy work in it)."""
    state = AlertState(threshold, k, clear, sustain, margin, fast, fast_margin)
    slot_list = [None] * len(scores) if slots is None else [int(s) for s in slots]
    work = [False] * len(scores) if heavy is None else [bool(h) for h in heavy]
    return np.array(
        [state.update(float(s), sl, h) for s, sl, h in zip(scores, slot_list, work, strict=True)],
        dtype=bool,
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
    """``len(episodes(alert_rule(scores, threshold, slots, k, clear), slots))``, vectorised."""
    return _EpisodeCounter(len(scores), slots, k, clear).count(scores, threshold)


class _EpisodeCounter:
    """The alert rule's episodes counted with numpy, for the calibration's many thresholds.

    The rule's state is a hysteresis: the alert is on after window ``i`` exactly when its
    last switch-on (``k`` above in a row) came after its last switch-off (``clear`` windows
    not above, a missed slot counting as one, at a gap or after a window). What depends on
    the slots alone is worked out once; tests/test_forest_build.py holds the counts to
    :func:`alert_rule` and :func:`episodes` on random scores, gaps and ``k``/``clear``.
    """

    def __init__(self, n: int, slots: np.ndarray | None, k: int, clear: int) -> None:
        self.k, self.clear = k, clear
        self.index = np.arange(n)
        step: np.ndarray = np.ones(max(n - 1, 0), dtype=np.int64)
        contiguous: np.ndarray = np.ones(max(n - 1, 0), dtype=bool)
        if slots is not None:
            slots = np.asarray(slots)
            if slots.shape != (n,):
                raise ValueError(f"expected {n} slots, got shape {slots.shape}")
            step = np.diff(slots.astype(np.int64))  # alert_rule's int(slot)
            contiguous = np.diff(slots) == 1  # episodes' test, on the slots as given
        self.gap = np.append(False, step > 1)
        missed = np.append(0, np.where(step > 1, step - 1, 0))
        self.missed_before = np.cumsum(missed)  # missed slots up to and including each gap
        self.gap_start = np.maximum.accumulate(np.where(self.gap, self.index, 0))
        self.split = np.append(True, ~contiguous)  # an episode cannot continue across these

    def count(self, scores: np.ndarray, threshold: float) -> int:
        scores = np.asarray(scores, dtype=np.float64)
        index = self.index
        if scores.shape != index.shape:
            raise ValueError(f"expected {len(index)} scores, got shape {scores.shape}")
        if not len(index):
            return 0
        with np.errstate(invalid="ignore"):
            above = np.isfinite(scores) & (scores > threshold)
        # switch-on: the k-th window of a run above threshold (a gap restarts the run)
        last_below = np.maximum.accumulate(np.where(above, -1, index))
        run = index - np.maximum(last_below + 1, self.gap_start) + 1
        on = above & (run >= self.k)
        # windows not above (missed slots included) since the last one above, before window i
        last_above = np.maximum.accumulate(np.where(above, index, -1))
        before = np.append(-1, last_above[:-1])
        missed = self.missed_before - np.where(before >= 0, self.missed_before[before], 0)
        below = missed + (index - 1 - before)
        # events in time order: a gap's check (2i) comes before window i's own (2i + 1)
        off_gap = self.gap & (below >= self.clear)
        off_own = ~above & (below + 1 >= self.clear)
        last_on = np.maximum.accumulate(np.where(on, 2 * index + 1, -1))
        last_off = np.maximum.accumulate(
            np.maximum(np.where(off_gap, 2 * index, -1), np.where(off_own, 2 * index + 1, -1))
        )
        alert = last_on > last_off
        starts = alert & (self.split | ~np.append(False, alert[:-1]))
        return int(np.count_nonzero(starts))


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
    counter = _EpisodeCounter(len(scores), slots, k, clear)
    lo, hi = 0, len(candidates) - 1  # episodes fall (weakly) as the threshold rises
    while lo < hi:
        mid = (lo + hi) // 2
        if counter.count(scores, float(candidates[mid])) <= allowed:
            hi = mid
        else:
            lo = mid + 1
    return float(candidates[lo])


#: The smallest spread of the "surprise" ``-ln(1 - score)`` that means anything: 5 % of the
#: distance of a score to 1. It keeps a handful of tied training scores from looking exact.
SURPRISE_RESOLUTION = 0.05


def extrapolation_margin(
    n: int, hop: float = 60.0, max_alarms_per_week: float = 1.0, span: float | None = None
) -> float:
    """How many spreads (sigma) above the largest of ``n`` training windows the edge of normal
    must sit so that about ``max_alarms_per_week`` future windows a week cross it.

    The largest of ``n`` windows is about their ``n/(n+1)`` quantile; the budget needs the
    ``1 - 1/m`` one, ``m`` being the windows of one budget period (a week of ``hop`` steps
    per allowed alarm). Reading both from the Student-t predictive distribution of a new
    window (a Gaussian whose spread is itself estimated from the same windows) gives the gap
    ``(t(1 - 1/m) - t(n/(n+1))) * sqrt(1 + 1/n)`` spreads, with ``n - 1`` degrees of
    freedom. It is what the quantile's uncertainty costs.

    Windows from a stretch shorter than a day (``span`` seconds) are not independent draws
    from the host's week: they all come from one part of its daily cycle, and the rest of
    the day may be busier. Their number counts in proportion to the share of the day they
    cover (``n * span / day``, a cluster-sampling design effect), so a model of ten minutes
    cannot alert at all, one of two hours judges with about 5 spreads of margin, one of a
    day with 0.5, and one of a week or more with none: there the calibration on training
    scores is itself the answer. A zero budget is treated as one alarm in a thousand weeks.

    >>> round(extrapolation_margin(10), 1), round(extrapolation_margin(1440, span=86400.0), 2)
    (4.8, 0.53)
    >>> extrapolation_margin(10, span=600.0), round(extrapolation_margin(120, span=7200.0), 1)
    (inf, 4.8)
    >>> extrapolation_margin(1), extrapolation_margin(20000)
    (inf, 0.0)
    """
    from scipy.stats import t  # training only: the agent never calls this

    m = WEEK / (hop * max(max_alarms_per_week, 1e-3))
    n_eff = float(n) if span is None else n * min(1.0, max(span, 0.0) / DAY)
    if n_eff < 2:
        return float("inf")
    if n_eff + 1 >= m:
        return 0.0
    gap = float(t.ppf(1.0 - 1.0 / m, n_eff - 1) - t.ppf(n_eff / (n_eff + 1.0), n_eff - 1))
    return max(0.0, gap * float(np.sqrt(1.0 + 1.0 / n_eff)))


def widen_threshold(threshold: float, scores: np.ndarray, margin: float) -> float:
    """``threshold`` raised by ``margin`` spreads of the training scores' surprise.

    Scores are compared as surprise ``u = -ln(1 - score)``, the scale on which the model's
    excess term adds up (``score = 1 - (1 - s_if) * exp(-excess)``); the spread is the
    robust one (MAD) of the training scores, at least :data:`SURPRISE_RESOLUTION`. With an
    infinite margin the threshold is 1: a model of one window never alerts.

    >>> widen_threshold(0.5, np.array([0.4, 0.5]), 0.0), widen_threshold(0.5, np.zeros(2), 1e9)
    (0.5, 1.0)
    """
    if margin <= 0:
        return threshold
    finite = np.asarray(scores, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    u = -np.log1p(-np.clip(finite, 0.0, 1.0 - 1e-12))
    spread = float(np.median(np.abs(u - np.median(u))) * 1.4826) if u.size else 0.0
    surprise = -np.log1p(-min(max(threshold, 0.0), 1.0 - 1e-12))
    surprise += margin * max(spread, SURPRISE_RESOLUTION)
    return float(-np.expm1(-surprise)) if np.isfinite(surprise) else 1.0
