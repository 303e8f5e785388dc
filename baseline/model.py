"""``HostBaseline``: a scikit-learn estimator that learns one host's normal load.

Robust scaling + ``IsolationForest`` + a threshold calibrated on out-of-fold training scores
for a false-alarm budget, reduced at the end of ``fit`` to a numpy-only
:class:`~minerwatch.baseline.fitted.HostModel` (what the model store saves and the agent runs).
Rows of ``X`` are windows in time order; pass ``slots`` (window index on the time grid) when
there are gaps so the alert rule does not bridge them.

A baseline learnt from few windows is conservative, not jumpy: the edge of normal of every
excess feature and the threshold are both widened by
:func:`~minerwatch.baseline.calibrate.extrapolation_margin` spreads, a margin that is
infinite for one window, about 5 spreads for ten windows of a minute and nothing once the
training span covers the false-alarm budget's week; and the explanation of CPU by the host's
work is only fitted on enough windows (:mod:`~minerwatch.baseline.explain`). So "score above
threshold" means about the same false-alarm rate whether learning ran two minutes or two
weeks: a short learning period gives fewer alerts, never more.
"""

from __future__ import annotations

from dataclasses import replace
from numbers import Integral
from typing import Any

import numpy as np
from sklearn import config_context
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.ensemble import IsolationForest
from sklearn.tree import ExtraTreeRegressor
from sklearn.utils import check_random_state
from sklearn.utils.random import sample_without_replacement
from sklearn.utils.validation import check_is_fitted, validate_data

from minerwatch.baseline.calibrate import (
    ALERT_MARGIN,
    FAST_WINDOWS,
    HEAVY_WORK,
    SUSTAIN_WINDOWS,
    calibrate_threshold,
    extrapolation_margin,
    widen_threshold,
)
from minerwatch.baseline.explain import Explainer, derived_names
from minerwatch.baseline.fitted import HostModel, hold_unexplained_low
from minerwatch.baseline.forest import NumpyForest, export_forest, export_trees
from minerwatch.baseline.lowrank import LowRank

#: Out-of-fold calibration splits the history into blocks this long, dealt round-robin.
FOLD_BLOCK_S = 6 * 3600.0
#: A Gaussian's interquartile range in standard deviations.
IQR_PER_SIGMA = 1.349
#: Standardized values are clipped here when scoring; an edge this far out is never reached.
MAX_Z = 1e6
#: The smallest change of the low-rank error (an RMS of robust z-scores) that means anything.
LOWRANK_RESOLUTION = 0.1
#: scikit-learn's bound for the seeds its ensembles draw (``sklearn.ensemble._bagging``).
_MAX_INT = int(np.iinfo(np.int32).max)


class HostBaseline(OutlierMixin, BaseEstimator):  # type: ignore[misc]  # sklearn: untyped
    """Per-host anomaly baseline; ``anomaly_score`` is in [0, 1], higher = more anomalous.

    scikit-learn's sign conventions hold for its method names: ``score_samples`` is higher
    for normal windows, ``decision_function`` is negative for alerts, ``predict`` gives -1.
    ``periods`` gives each feature's period in seconds (time of day: a day; 0: none): a
    feature whose period is longer than the training span is neither judged nor used to
    explain, since every part of the cycle not yet seen would look anomalous.

    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(500, 3))
    >>> model = HostBaseline(n_estimators=50, random_state=0).fit(X)
    >>> bool(model.anomaly_score(np.array([[9.0, 9.0, 9.0]]))[0] > model.threshold_)
    True
    """

    def __init__(
        self,
        n_estimators: int = 200,
        max_samples: int | str = 256,
        max_alarms_per_week: float = 1.0,
        alert_windows: int = 3,
        clear_windows: int = 3,
        sustain_windows: int = SUSTAIN_WINDOWS,
        alert_margin: float = ALERT_MARGIN,
        hop: float = 60.0,
        excess_scale: float = 1.0,
        threshold_margin: float = 0.04,
        folds: int = 3,
        resolution: Any = None,
        excess: Any = None,
        explain_targets: Any = None,
        explain_inputs: Any = None,
        forest_features: Any = None,
        periods: Any = None,
        random_state: int | None = None,
        lowrank_features: Any = None,
        explain_evidence: Any = None,
        heavy_work: float = HEAVY_WORK,
        fast_windows: int = FAST_WINDOWS,
        fast_margin: float | None = None,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.max_alarms_per_week = max_alarms_per_week
        self.alert_windows = alert_windows
        self.clear_windows = clear_windows
        self.sustain_windows = sustain_windows
        self.alert_margin = alert_margin
        self.heavy_work = heavy_work
        self.fast_windows = fast_windows
        self.fast_margin = fast_margin
        self.hop = hop
        self.excess_scale = excess_scale
        self.threshold_margin = threshold_margin
        self.folds = folds
        self.resolution = resolution
        self.excess = excess
        self.explain_targets = explain_targets
        self.explain_inputs = explain_inputs
        self.forest_features = forest_features
        self.periods = periods
        self.random_state = random_state
        self.lowrank_features = lowrank_features
        self.explain_evidence = explain_evidence

    def fit(self, X: Any, y: Any = None, slots: Any = None) -> HostBaseline:
        X = validate_data(self, X, ensure_all_finite="allow-nan", dtype=np.float64)
        n, d = X.shape
        slots = np.arange(n) if slots is None else np.asarray(slots, dtype=np.int64)
        if slots.shape != (n,):
            raise ValueError(f"slots must have one entry per row ({n}), got {slots.shape}")
        base_names = tuple(getattr(self, "feature_names_in_", [f"x{j}" for j in range(d)]))
        # a feature of the time of day says nothing before a whole day has been seen: every
        # unseen hour would look anomalous and explain nothing reliably
        # the time the windows cover, not their first to last: a host's clock stepped a day
        # ahead (or an agent stopped overnight) while it learnt is no day seen
        span = (
            min(float(np.ptp(slots)) + 1.0, float(len(np.unique(slots)))) * self.hop if n else 0.0
        )
        unseen = self._vector(self.periods, d, 0.0) > span
        explainer = None
        if self.explain_targets is not None and len(self.explain_targets):
            targets = np.asarray(self.explain_targets, dtype=np.int64)
            derived = derived_names(base_names, targets)
            inputs = np.asarray(
                [] if self.explain_inputs is None else self.explain_inputs, dtype=np.int64
            )
            inputs = inputs[~unseen[inputs]]
            base_resolution = self._vector(self.resolution, d, 1e-6)[targets]
            evidence = np.isin(inputs, np.asarray(self.explain_evidence or [], dtype=np.int64))
            explainer = Explainer.fit(
                X, targets, inputs, derived, resolution=base_resolution, evidence=evidence
            )
            X_full = np.hstack([X, explainer.derive(X)])
        else:
            derived, X_full = (), X
        # the extra columns judged together: their joint reconstruction error (lowrank.py)
        lr_cols = np.asarray(
            [] if self.lowrank_features is None else self.lowrank_features, dtype=np.int64
        )
        lowrank = None
        if len(lr_cols) >= 2 and n:
            res = self._vector(self.resolution, d, 1e-6)[lr_cols]
            lowrank = LowRank.fit(X, lr_cols, res)
            X_full = np.hstack([X_full, lowrank.derive(X)])
            derived += lowrank.names
        n_derived = len(derived)
        # derived features are in units of their residual spread, which is never below one
        # resolution step of CPU: one unit is the smallest change that means anything
        resolution = np.append(self._vector(self.resolution, d, 1e-6), np.ones(n_derived))
        if lowrank is not None:  # RMS of z-scores: a tenth of one is the smallest change
            resolution[-1] = LOWRANK_RESOLUTION
        excess_mask = np.append(self._vector(self.excess, d, 0.0) > 0, np.ones(n_derived, bool))
        # the joint error is judged on its own (its calibrated sub-score, below), not by the
        # forest: among many per-column features the trees split on it too rarely, and
        # isolation saturates, so an error ten times the usual scored like one twice as large
        forest_derived = np.arange(n_derived - (lowrank is not None))
        if lowrank is not None:
            excess_mask[-1] = False
        mask = (self._vector(self.forest_features, d, 1.0) > 0) & ~unseen
        if not mask.any() and not len(forest_derived):  # nothing left: judge what there is
            mask = np.ones(d, dtype=bool)
        forest_columns = (
            None
            if mask.all() and not n_derived
            else np.append(np.flatnonzero(mask), d + forest_derived).astype(np.int64)
        )
        center = np.nan_to_num(_nanquantile(X_full, 0.5), nan=0.0)
        iqr = _nanquantile(X_full, 0.75) - _nanquantile(X_full, 0.25)
        scale = np.maximum(np.nan_to_num(iqr, nan=0.0), resolution)
        low = np.nan_to_num(_nanquantile(X_full, 0.05), nan=0.0)
        high = np.nan_to_num(_nanquantile(X_full, 0.95), nan=0.0)
        Z = np.nan_to_num((X_full - center) / scale, nan=0.0)
        Z = hold_unexplained_low(Z, d, center, scale, low)  # as the model will score
        Zf = Z if forest_columns is None else Z[:, forest_columns]
        # the training maximum is about the n/(n+1) quantile; the budget needs a higher one
        margin = extrapolation_margin(n, self.hop, self.max_alarms_per_week, span)
        sigma = np.maximum(np.nan_to_num(iqr, nan=0.0) / IQR_PER_SIGMA, resolution) / scale
        forest = self._forest(self.random_state, Zf)
        draft = HostModel(
            feature_names=base_names + derived,
            center=center,
            scale=scale,
            train_max=np.minimum(Z.max(axis=0) + margin * sigma, MAX_Z),
            seen_max=Z.max(axis=0),
            typical_low=low,
            typical_high=high,
            excess_mask=excess_mask.astype(np.float64),
            forest=forest,
            threshold=1.0,
            alert_windows=self.alert_windows,
            clear_windows=self.clear_windows,
            sustain_windows=max(self.sustain_windows, self.alert_windows),
            alert_margin=self.alert_margin,
            heavy_work=self.heavy_work,
            fast_windows=self.fast_windows,
            # twice the margin unless given: an agent configured with another margin keeps
            # the fast path above it
            fast_margin=(
                2.0 * self.alert_margin if self.fast_margin is None else float(self.fast_margin)
            ),
            excess_scale=self.excess_scale,
            explainer=explainer,
            forest_columns=forest_columns,
            hop=self.hop,
            lowrank=lowrank,
        )
        folds = self._folds(slots, n)
        oof = self._out_of_fold_scores(X, Zf, folds, draft)
        if lowrank is not None:
            # in-sample: a subspace of a few components is not optimistic the way isolation
            # trees are (its residual shrinks by about k/n), and its trimmed refit already
            # scores the worst training rows as unseen; held-out 6-hour blocks would instead
            # take every regime seen once for an anomaly, and set the bar far too high
            errors = X_full[:, -1]
            draft = replace(draft, lowrank_unit=self._lowrank_unit(errors, slots, oof))
            oof = draft.combine(oof, errors)
        threshold = self._calibrate(oof, slots)
        threshold = min(widen_threshold(threshold, oof, margin) + self.threshold_margin, 1.0)
        self.host_model_ = replace(draft, threshold=threshold)
        self.threshold_ = threshold
        self.train_scores_ = oof
        self.extrapolation_margin_ = margin
        self.offset_ = -threshold
        return self

    def _forest(self, seed: int | None, Z: np.ndarray) -> NumpyForest:
        n = len(Z)
        size = min(self.max_samples, n) if isinstance(self.max_samples, int) else self.max_samples
        return fit_isolation_forest(Z, self.n_estimators, size, seed)

    def _calibrate(self, scores: np.ndarray, slots: np.ndarray) -> float:
        return calibrate_threshold(
            scores,
            slots,
            self.hop,
            self.max_alarms_per_week,
            self.alert_windows,
            self.clear_windows,
        )

    def _folds(self, slots: np.ndarray, n: int) -> np.ndarray | None:
        """The out-of-fold split: blocks of a few hours dealt round-robin, so each fold still
        sees every time of day; None when there are too few windows to split."""
        if self.folds < 2 or n < 20 * self.folds:
            return None
        block = np.floor(slots * self.hop / FOLD_BLOCK_S).astype(np.int64)
        fold: np.ndarray = (block - block.min()) % self.folds
        if len(np.unique(fold)) < self.folds:
            fold = (np.arange(n) * self.folds) // n
        return fold

    def _out_of_fold_scores(
        self, X: np.ndarray, Z: np.ndarray, fold: np.ndarray | None, draft: HostModel
    ) -> np.ndarray:
        """Scores each window with a forest that did not see it, so the threshold is honest.

        In-sample isolation scores are optimistic: calibrating on them puts the threshold too
        low and every new day brings false alarms.
        """
        if fold is None:
            return draft.score(X)
        out = np.empty(len(X))
        for k in range(self.folds):
            held = fold == k
            seed = None if self.random_state is None else self.random_state + k + 1
            part = self._forest(seed, Z[~held])
            out[held] = replace(draft, forest=part).score(X[held])
        return out

    def _lowrank_unit(self, errors: np.ndarray, slots: np.ndarray, oof: np.ndarray) -> float:
        """The low-rank error's scale as a sub-score: the error and the rest of the score are
        each calibrated on their own out-of-fold training values for the same false-alarm
        budget, and the error is scaled so that its threshold lands on the rest's
        (sub-score ``1 - exp(-error / unit)``, see :meth:`HostModel.combine`)."""
        error_threshold = max(self._calibrate(errors, slots), LOWRANK_RESOLUTION)
        surprise = -np.log1p(-min(self._calibrate(oof, slots), 1.0 - 1e-12))
        return float(error_threshold / max(surprise, 1e-6))

    @staticmethod
    def _vector(value: Any, d: int, default: float) -> np.ndarray:
        if value is None:
            return np.full(d, default)
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
        if arr.shape != (d,):
            raise ValueError(f"expected {d} values, got {arr.shape[0]}")
        return arr

    def anomaly_score(self, X: Any) -> np.ndarray:
        """Our 0-1 score, higher = more anomalous."""
        check_is_fitted(self)
        X = validate_data(self, X, ensure_all_finite="allow-nan", dtype=np.float64, reset=False)
        return self.host_model_.score(X)

    def score_samples(self, X: Any) -> np.ndarray:
        return -self.anomaly_score(X)

    def decision_function(self, X: Any) -> np.ndarray:
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        return np.where(self.decision_function(X) < 0, -1, 1)

    def explain(self, X: Any, top: int = 3) -> list[list[dict[str, Any]]]:
        check_is_fitted(self)
        X = validate_data(self, X, ensure_all_finite="allow-nan", dtype=np.float64, reset=False)
        return [self.host_model_.explain(row, top) for row in X]

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags


def fit_isolation_forest(
    Z: np.ndarray, n_estimators: int, max_samples: int | str | float, random_state: Any
) -> NumpyForest:
    """The exported ``IsolationForest(n_estimators, max_samples, random_state=...).fit(Z)``,
    bit for bit, at about a quarter of the cost.

    The ensemble spends most of its time per tree on cloning, parameter checks and fresh
    ``RandomState`` objects (~0.4 ms each; re-seeding one takes ~5 us), not on growing the
    tree. This draws the same numbers in the same order as scikit-learn's
    ``IsolationForest.fit`` and ``BaseBagging._fit`` (targets from one
    ``check_random_state``, tree seeds from another; per tree, its ``random_state`` and then
    its columns and rows from generators seeded with the tree's seed) and grows the same
    ``ExtraTreeRegressor`` on the drawn rows, which is what the ensemble's 0/1
    ``sample_weight`` amounts to. tests/test_forest_build.py holds it to the ensemble array
    by array; options it does not replicate (a float ``max_samples``) and inputs the
    ensemble rejects go to the ensemble itself.
    """
    X = np.asarray(Z, dtype=np.float32)  # IsolationForest's validate_data, as float32
    n = X.shape[0] if X.ndim == 2 else 0
    if max_samples == "auto":
        size: int = min(256, n)
    elif isinstance(max_samples, Integral) and not isinstance(max_samples, bool):
        size = min(int(max_samples), n)
    else:
        size = 0
    exact = isinstance(n_estimators, Integral) and n_estimators >= 1 and X.size and size >= 1
    if not exact:
        model = IsolationForest(
            n_estimators=n_estimators, max_samples=max_samples, random_state=random_state
        )
        return export_forest(model.fit(Z))
    d = X.shape[1]
    y = check_random_state(random_state).uniform(size=n)
    seeds = check_random_state(random_state).randint(_MAX_INT, size=int(n_estimators))
    depth = int(np.ceil(np.log2(max(size, 2))))
    rng = np.random.RandomState(0)  # re-seeded for each draw: the same stream, far cheaper
    trees, subsets = [], []
    with config_context(skip_parameter_validation=True):  # our tree's options are valid
        for seed in seeds:
            rng.seed(seed)
            tree_seed = rng.randint(_MAX_INT)  # BaseEnsemble._make_estimator
            rng.seed(seed)  # _bagging._generate_bagging_indices: columns, then rows
            columns = sample_without_replacement(d, d, random_state=rng)
            rows = np.sort(sample_without_replacement(n, size, random_state=rng))
            rng.seed(tree_seed)
            tree = ExtraTreeRegressor(  # IsolationForest's, given rng in RandomState(tree_seed)
                max_features=1, splitter="random", max_depth=depth, random_state=rng
            )
            trees.append(tree.fit(X[rows], y[rows], check_input=False))
            subsets.append(columns)
    return export_trees(trees, subsets, size, d)


def _nanquantile(X: np.ndarray, q: float) -> np.ndarray:
    out = np.full(X.shape[1], np.nan)
    seen = np.isfinite(X).any(axis=0)
    if seen.any():
        out[seen] = np.nanquantile(X[:, seen], q, axis=0)
    return out
