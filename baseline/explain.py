"""Explaining CPU by the host's own work: "unexplained CPU" features for the model.

A per-host ridge regression predicts log CPU from the context features (traffic, disk,
process churn, system CPU, time of day); what it does not account for, in units of its
residual spread, becomes a feature. A traffic surge or a backup explains its own CPU; a
miner's CPU is explained by nothing.

An explanation is only as good as the data it was fitted on. With too few windows for its
coefficients the fit is noise fitted to noise (on a quiet host, ten windows and nine
coefficients once turned 0.75 % CPU into "11 units unexplained"), so the explainer then
explains nothing: the feature is the raw (log) CPU level against its training median. It
never extrapolates blindly: inputs are clipped to their training range and the prediction to
the range it took in training. Only *evidence of work* (packets, disk bytes, context
switches, I/O wait: things a pure compute loop such as a miner does not produce) may reach
beyond it, by at most :data:`REACH` training standard deviations and only in the direction
that adds CPU: a traffic surge a little bigger than any in training brings its packets with
its CPU; a miner's CPU brings none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

_ARRAYS = (
    "targets",
    "inputs",
    "in_center",
    "in_scale",
    "coef",
    "resid_scale",
    "in_low",
    "in_high",
    "in_reach",
    "pred_low",
    "pred_high",
)

#: Rows per coefficient below which no explanation is fitted (see :func:`min_windows`).
ROWS_PER_COEF = 11
#: How far past its training maximum an input that is evidence of work still explains CPU,
#: in training standard deviations of that input.
REACH = 2.0


def min_windows(inputs: int) -> int:
    """Fewest windows an explanation with ``inputs`` context features is fitted on.

    With ``q = inputs + 1`` coefficients on ``n`` rows, least squares' out-of-sample error
    variance is about ``(n - 1) / (n - q - 1)`` times its in-sample one (Gaussian design);
    below ``11 q + 1`` rows that optimism exceeds 10 %, and an explanation that looked exact
    in training claims CPU it cannot account for.

    >>> min_windows(8)
    100
    """
    return ROWS_PER_COEF * (inputs + 1) + 1


def heavy_work_words(episode: Mapping[str, Any]) -> str:
    """What the responder reads about heavy work in an alert episode (its ``windows``,
    ``heavy_windows`` and ``heavy_work`` inputs; "" when there was none): maintenance (an
    index rebuild, a backup, an administrator's tool) reads and writes while it holds the CPU,
    a miner does not. Fields of the wrong type (an edited event log) are ignored.

    >>> heavy_work_words({"windows": 5, "heavy_windows": 3,
    ...                   "heavy_work": [{"feature": "disk_read_bps", "spreads": 45.2}]})
    'heavy work in 3 of 5 windows (disk_read_bps 45 spreads above its training median)'
    >>> heavy_work_words({"windows": 5, "heavy_windows": 0})
    ''
    """
    heavy, windows = episode.get("heavy_windows"), episode.get("windows")
    if not isinstance(heavy, int) or not isinstance(windows, int) or heavy <= 0:
        return ""
    inputs = episode.get("heavy_work")
    named = [
        f"{i['feature']} {float(i['spreads']):.0f} spreads"
        for i in (inputs if isinstance(inputs, list) else [])
        if isinstance(i, Mapping)
        and isinstance(i.get("feature"), str)
        and isinstance(i.get("spreads"), int | float)
    ]
    where = "its training median" if len(named) == 1 else "their training medians"
    return f"heavy work in {heavy} of {windows} windows" + (
        f" ({', '.join(named)} above {where})" if named else ""
    )


def derived_names(base: tuple[str, ...], targets: np.ndarray) -> tuple[str, ...]:
    """Names of the residual features, one per explained target (``<target>_unexplained``)."""
    return tuple(f"{base[int(t)]}_unexplained" for t in targets)


@dataclass(frozen=True)
class Explainer:
    """Per-host ridge regression of log CPU on the context features; residuals as features.

    ``coef`` rows are (intercept, slopes); all slopes zero is "no explanation".
    ``pred_low``/``pred_high`` bound the prediction to the range it took in training;
    ``in_reach`` (at least ``in_high``) is how far an input adds CPU beyond its training
    maximum, through its positive slopes only.
    """

    names: tuple[str, ...]
    targets: np.ndarray
    inputs: np.ndarray
    in_center: np.ndarray
    in_scale: np.ndarray
    coef: np.ndarray
    resid_scale: np.ndarray
    in_low: np.ndarray
    in_high: np.ndarray
    in_reach: np.ndarray
    pred_low: np.ndarray
    pred_high: np.ndarray

    @property
    def explains(self) -> bool:
        """False when the explainer degraded to "no explanation" (too few windows)."""
        return bool(np.any(self.coef[:, 1:] != 0.0))

    def _standardized(self, F: np.ndarray) -> np.ndarray:
        Z = (F[:, self.inputs] - self.in_center) / self.in_scale
        out: np.ndarray = np.nan_to_num(Z, nan=0.0, posinf=0.0, neginf=0.0)
        return out

    def design(self, F: np.ndarray) -> np.ndarray:
        """Standardized context, clipped to the training range: a linear model must never
        extrapolate (a backup twice as heavy as any seen would otherwise "explain" negative
        CPU, or a correlated pair of inputs would push the prediction anywhere)."""
        return self._design(self._standardized(F))

    def _design(self, Z: np.ndarray) -> np.ndarray:
        clipped = np.clip(Z, self.in_low, self.in_high)
        return np.hstack([np.ones((len(Z), 1)), clipped])

    def predict(self, F: np.ndarray) -> np.ndarray:
        """Log CPU the context accounts for: within the range it took in training, plus what
        evidence of work beyond its training maximum adds (positive slopes, up to its reach)."""
        Z = self._standardized(F)
        pred: np.ndarray = np.clip(self._design(Z) @ self.coef.T, self.pred_low, self.pred_high)
        beyond = np.clip(Z - self.in_high, 0.0, self.in_reach - self.in_high)
        if beyond.any():
            pred = pred + beyond @ np.maximum(self.coef[:, 1:], 0.0).T
        return pred

    def heavy(self, F: np.ndarray, spreads: float) -> np.ndarray:
        """Per row of ``F``: whether some evidence of work (an input that may explain CPU past
        its training range) sits at least ``spreads`` training standard deviations above its
        training median. Such work may hold more CPU than any training window did (an index
        rebuild on more cores than before) without the straight line accounting for it."""
        evidence = self.in_reach > self.in_high
        if spreads <= 0 or not evidence.any():
            return np.zeros(len(F), dtype=bool)
        return np.asarray((self._standardized(F)[:, evidence] >= spreads).any(axis=1), dtype=bool)

    def work(self, F: np.ndarray) -> np.ndarray:
        """Per row of ``F`` and input: training spreads above its training median for the
        evidence of work, NaN for the other inputs (what made a window heavy, in words for
        the responder: a reindex reads and writes, a miner does not)."""
        evidence = self.in_reach > self.in_high
        out: np.ndarray = np.where(evidence, self._standardized(F), np.nan)
        return out

    def derive(self, F: np.ndarray) -> np.ndarray:
        """The residual features of ``F``'s rows, in residual-spread units."""
        y = np.log1p(np.maximum(F[:, self.targets], 0.0))
        resid: np.ndarray = (y - self.predict(F)) / self.resid_scale
        return resid

    @classmethod
    def fit(
        cls,
        F: np.ndarray,
        targets: np.ndarray,
        inputs: np.ndarray,
        names: tuple[str, ...],
        ridge: float = 1e-3,
        resolution: np.ndarray | None = None,
        evidence: np.ndarray | None = None,
    ) -> Explainer:
        """Fit on the rows of ``F``; ``resolution`` is each target's smallest meaningful
        change in its own unit (percent CPU): the residual spread is never taken below one
        such step at the target's typical level, so a host that was flat in training does
        not turn a 2 % wiggle into many "units" of unexplained CPU. ``evidence`` marks the
        inputs (a boolean per input) that may explain CPU up to :data:`REACH` past their
        training maximum."""
        targets = np.asarray(targets, dtype=np.int64)
        inputs = np.asarray(inputs, dtype=np.int64)
        n = len(F)
        X = F[:, inputs]
        in_center = np.nan_to_num(np.nanmedian(X, axis=0), nan=0.0) if n else np.zeros(0)
        in_scale = np.nan_to_num(np.nanstd(X, axis=0), nan=1.0) if n else np.zeros(0)
        in_scale = np.where(in_scale > 1e-9, in_scale, 1.0)
        Zin = np.nan_to_num((X - in_center) / in_scale, nan=0.0)
        low = Zin.min(axis=0) if n else np.zeros(0)
        high = Zin.max(axis=0) if n else np.zeros(0)
        unbounded = np.full(len(targets), np.inf)
        zeros = np.zeros((len(targets), len(inputs) + 1))
        draft = cls(
            names,
            targets,
            inputs,
            in_center,
            in_scale,
            zeros,
            np.ones(len(targets)),
            low,
            high,
            high,
            -unbounded,
            unbounded,
        )
        A = draft.design(F)
        raw = np.maximum(np.nan_to_num(F[:, targets], nan=0.0), 0.0)
        Y = np.log1p(raw)
        q = A.shape[1]
        if n >= min_windows(len(inputs)):
            penalty = ridge * n * np.eye(q)
            penalty[0, 0] = 0.0  # never shrink the intercept
            coef = np.linalg.solve(A.T @ A + penalty, A.T @ Y).T
            optimism = np.sqrt((n - 1) / (n - q - 1))
        else:  # no explanation: the level against its training median
            coef = np.zeros((len(targets), q))
            coef[:, 0] = np.median(Y, axis=0) if n else 0.0
            optimism = 1.0
        fitted = A @ coef.T
        resid = Y - fitted
        mad = np.median(np.abs(resid - np.median(resid, axis=0)), axis=0) * 1.4826 * optimism
        step = np.full(len(targets), 0.05) if resolution is None else np.asarray(resolution)
        level = np.median(raw, axis=0) if n else np.zeros(len(targets))
        floor = np.maximum(np.log1p(step / (1.0 + level)), 0.05)
        reach = high.copy()
        if evidence is not None and n >= min_windows(len(inputs)):
            reach = np.where(np.asarray(evidence, dtype=bool), high + REACH, high)
        return cls(
            names,
            targets,
            inputs,
            in_center,
            in_scale,
            coef,
            np.maximum(mad, floor),
            low,
            high,
            reach,
            fitted.min(axis=0) if n else -unbounded,
            fitted.max(axis=0) if n else unbounded,
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {f"explain_{k}": np.asarray(getattr(self, k)) for k in _ARRAYS}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], names: tuple[str, ...]) -> Explainer:
        unbounded = np.full(len(names), np.inf)
        defaults = {"pred_low": -unbounded, "pred_high": unbounded}  # models saved before them
        if "explain_in_reach" not in arrays:  # saved before it: nothing reaches past training
            defaults["in_reach"] = np.asarray(arrays["explain_in_high"])
        get = {
            k: np.asarray(arrays[f"explain_{k}"] if f"explain_{k}" in arrays else defaults[k])
            for k in _ARRAYS
        }
        ints = {k: get[k].astype(np.int64) for k in ("targets", "inputs")}
        floats = {k: v.astype(np.float64) for k, v in get.items() if k not in ints}
        return cls(names=names, **ints, **floats)
