"""Reference detectors that the baseline has to beat, on the same window grid as the baseline.

* ``static_rule``: CPU above 85 % for 3 hours straight (the rule many fleets actually run);
* ``cpu_5m``: CPU above 80 % for 5 minutes straight (the eager version of the same rule);
* ``naive_iforest``: scikit-learn's IsolationForest on plain window means of every metric column,
  alerting above the highest score seen in training (no features, no calibration, no filtering);
* ``pca``: per-machine PCA reconstruction error of standardised window means, alerting above
  the highest training error (the strong simple baseline of Sarfraz et al., "Quo Vadis,
  Unsupervised Time Series Anomaly Detection?", ICML 2024; for the public data sets);
* ``new_exe``: an executable never seen in training uses at least 50 % of a core (the "look
  for unknown processes" step of incident-response playbooks, as a rule; needs process tables).

Each returns one boolean per window ``[start, end)``; a window is alerted when the rule fires at
any sample inside it.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np

from minerwatch.features.io import HostSeries

CPU = "cpu_percent"


def window_grid(timestamps: np.ndarray, window: float, hop: float) -> tuple[np.ndarray, np.ndarray]:
    """Windows ``[k*hop, k*hop + window)`` covering the samples; windows without samples dropped."""
    ts = np.asarray(timestamps, dtype=float)
    if ts.size == 0:
        return np.empty(0), np.empty(0)
    first = np.floor((ts[0] - window) / hop + 1) * hop
    starts = np.arange(first, ts[-1] + 1e-9, hop)
    lo = np.searchsorted(ts, starts, "left")
    hi = np.searchsorted(ts, starts + window, "left")
    keep = hi > lo
    return starts[keep], starts[keep] + window


def window_means(series: HostSeries, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Mean of each column over each window ``[start, end)``, NaN samples skipped (NaN if none)."""
    ts = series.timestamps
    vals = np.asarray(series.values, dtype=float)
    ok = np.isfinite(vals)
    csum = np.vstack([np.zeros((1, vals.shape[1])), np.cumsum(np.where(ok, vals, 0.0), axis=0)])
    ccnt = np.vstack([np.zeros((1, vals.shape[1])), np.cumsum(ok, axis=0)])
    lo = np.searchsorted(ts, starts, "left")
    hi = np.searchsorted(ts, ends, "left")
    count = ccnt[hi] - ccnt[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (csum[hi] - csum[lo]) / count, np.nan)


def sustained(timestamps: np.ndarray, above: np.ndarray, duration: float) -> np.ndarray:
    """Per sample: has ``above`` held continuously for at least ``duration`` seconds?

    A run's length counts one sampling interval for its first sample (ten 30-s samples above =
    300 s); a hole in the data longer than two intervals breaks the run.
    """
    ts = np.asarray(timestamps, dtype=float)
    a = np.asarray(above, dtype=bool)
    if ts.size == 0:
        return np.zeros(0, bool)
    step = float(np.median(np.diff(ts))) if ts.size > 1 else 0.0
    breaks = np.ones(ts.size, bool)
    breaks[1:] = ~a[:-1] | (np.diff(ts) > 2 * step)
    run_id = np.cumsum(breaks)
    first_idx = np.flatnonzero(breaks)
    run_start = ts[first_idx][run_id - 1]
    return a & (ts - run_start + step >= duration - 1e-9)


def _any_in_windows(
    timestamps: np.ndarray, flag: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> np.ndarray:
    csum = np.concatenate(([0], np.cumsum(flag)))
    lo = np.searchsorted(timestamps, starts, "left")
    hi = np.searchsorted(timestamps, ends, "left")
    return (csum[hi] - csum[lo]) > 0


def cpu_rule(
    series: HostSeries,
    starts: np.ndarray,
    ends: np.ndarray,
    threshold: float,
    duration: float,
    column: str = CPU,
) -> np.ndarray:
    """Alert windows where CPU has stayed above ``threshold`` % for ``duration`` s (NaN: below)."""
    cpu = series.column(column)
    with np.errstate(invalid="ignore"):
        above = cpu > threshold
    fire = sustained(series.timestamps, above, duration)
    return _any_in_windows(series.timestamps, fire, starts, ends)


def static_rule(series: HostSeries, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """CPU > 85 % for 3 h: the common static alert."""
    return cpu_rule(series, starts, ends, 85.0, 3 * 3600.0)


def cpu_5m(series: HostSeries, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """CPU > 80 % for 5 min: a fast static alert."""
    return cpu_rule(series, starts, ends, 80.0, 300.0)


def _measured(series: HostSeries) -> HostSeries:
    """``series`` without ``cpu_cores``: it describes the machine, it does not measure it (a
    constant column would only take the naive forest's random splits)."""
    if "cpu_cores" not in series.columns:
        return series
    keep = [j for j, c in enumerate(series.columns) if c != "cpu_cores"]
    return replace(
        series, values=series.values[:, keep], columns=tuple(series.columns[j] for j in keep)
    )


class _OnWindowMeans:
    """A reference detector on plain window means of the measured columns, alerting above its
    highest training score (no false alarm in training by construction). Scores follow our
    convention: higher = more anomalous. Subclasses learn from and score the means."""

    threshold_: float

    def __init__(self, window: float, hop: float) -> None:
        self.window = window
        self.hop = hop

    def _train_means(self, series: HostSeries) -> np.ndarray:
        """The training split's window means; the columns they were taken from are kept."""
        series = _measured(series)
        starts, ends = window_grid(series.timestamps, self.window, self.hop)
        self.columns_ = series.columns
        return window_means(series, starts, ends)

    def _means(self, series: HostSeries, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        series = _measured(series)
        if series.columns != self.columns_:
            missing = sorted(set(self.columns_) - set(series.columns))
            raise ValueError(f"columns differ from training; missing {missing}")
        return window_means(series, starts, ends)

    def score(self, series: HostSeries, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def alert(self, series: HostSeries, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        return self.score(series, starts, ends) > self.threshold_


class NaiveIForest(_OnWindowMeans):
    """IsolationForest on window means; threshold = highest training score."""

    def __init__(
        self, window: float = 60.0, hop: float = 60.0, seed: int = 0, n_estimators: int = 100
    ) -> None:
        super().__init__(window, hop)
        self.seed = seed
        self.n_estimators = n_estimators

    def fit(self, series: HostSeries) -> NaiveIForest:
        from sklearn.ensemble import IsolationForest

        x = self._train_means(series)
        self.fill_ = np.nan_to_num(np.nanmean(x, axis=0), nan=0.0) if x.size else None
        x = self._fill(x)
        self.forest_ = IsolationForest(n_estimators=self.n_estimators, random_state=self.seed)
        self.forest_.fit(x)
        self.threshold_ = float(np.max(-self.forest_.score_samples(x)))
        return self

    def _fill(self, x: np.ndarray) -> np.ndarray:
        return np.where(np.isfinite(x), x, self.fill_[None, :])

    def score(self, series: HostSeries, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        return -self.forest_.score_samples(self._fill(self._means(series, starts, ends)))


class PcaReconstruction(_OnWindowMeans):
    """Squared reconstruction error of standardised window means from the principal subspace
    that keeps ``variance`` of the training variance (at most one component fewer than the
    columns: with one column the error is its squared z-score). Threshold = highest training
    error, as the naive forest's. No trimming, no features: the plain reference, so a gain of
    our own low-rank sub-score over it is measured rather than assumed."""

    def __init__(self, window: float = 60.0, hop: float = 60.0, variance: float = 0.9) -> None:
        super().__init__(window, hop)
        self.variance = variance

    def fit(self, series: HostSeries) -> PcaReconstruction:
        x = self._train_means(series)
        if not len(x):
            raise ValueError(f"{series.host}: no training window to learn a subspace from")
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a column without any value
            self.center_ = np.nan_to_num(np.nanmean(x, axis=0), nan=0.0)
            scale = np.nan_to_num(np.nanstd(x, axis=0), nan=0.0)
        self.scale_ = np.where(scale > 1e-9, scale, 1.0)
        z = self._standard(x)
        _, sv, vt = np.linalg.svd(z, full_matrices=False)
        share = np.cumsum(sv**2) / max(float(np.sum(sv**2)), 1e-12)
        k = max(0, min(int(np.searchsorted(share, self.variance - 1e-12)) + 1, z.shape[1] - 1))
        self.components_ = vt[:k].T
        self.threshold_ = float(np.max(self._error(z)))
        return self

    def _standard(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.center_[None, :]) / self.scale_[None, :]
        return np.where(np.isfinite(z), z, 0.0)

    def _error(self, z: np.ndarray) -> np.ndarray:
        resid = z - z @ self.components_ @ self.components_.T
        return np.asarray(np.sum(resid**2, axis=1))

    def score(self, series: HostSeries, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        return self._error(self._standard(self._means(series, starts, ends)))


class NewExeRule:
    """Alert when an executable never seen in training uses at least ``min_cpu`` % of one core.

    Executables are compared as written (``/srv/app/releases/<id>/...`` after a deploy is a new
    one: that is the rule's weakness, measured on purpose); an empty exe (unreadable, kernel
    threads) never alerts. A window is alerted when any of its samples has such a process.
    """

    def __init__(self, min_cpu: float = 50.0) -> None:
        self.min_cpu = min_cpu

    def fit(self, series: HostSeries) -> NewExeRule:
        if series.procs is None:
            raise ValueError(f"{series.host}: no process table to learn executables from")
        self.known_ = frozenset(str(e) for e in series.procs.exes.tolist() if e)
        return self

    def fires(self, series: HostSeries) -> np.ndarray:
        """Per process row of ``series.procs``: does this row fire the rule?"""
        procs = series.procs
        if procs is None:
            raise ValueError(f"{series.host}: no process table to score")
        exes = procs.exes.tolist()
        new = np.fromiter((bool(e) and e not in self.known_ for e in exes), bool, len(exes))
        with np.errstate(invalid="ignore"):
            return new & (procs.cpu >= self.min_cpu)

    def alert(self, series: HostSeries, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        procs = series.procs
        if procs is None:
            raise ValueError(f"{series.host}: no process table to score")
        ts = np.asarray(procs.timestamps, dtype=float)
        fire = self.fires(series)
        return _any_in_windows(ts, fire.astype(np.int64), starts, ends)
