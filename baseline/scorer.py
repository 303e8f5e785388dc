"""The numpy-only scorer the agent and batch scoring share (no scikit-learn at run time).

score = 1 - (1 - s_if) * exp(-excess / excess_scale), in [0, 1], higher = more anomalous:
``s_if`` is the isolation score on robustly scaled features; ``excess`` adds how far the
sustained-compute features sit *above* anything seen in training, which isolation trees
cannot express (every point beyond the training range is isolated at the same depth).

Before scoring, an :class:`Explainer` adds "unexplained CPU" features: the part of the CPU
(in log space) that a per-host linear model of the host's work (traffic, disk, process churn,
system CPU, time of day) does not account for, in units of its training residual. A traffic
surge or a backup explains its own CPU; a miner's CPU is explained by nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from minerwatch.baseline.forest import NumpyForest

VECTORS = ("center", "scale", "train_max", "typical_low", "typical_high", "excess_mask")


_EXPLAINER_ARRAYS = (
    "targets",
    "inputs",
    "in_center",
    "in_scale",
    "coef",
    "resid_scale",
    "in_low",
    "in_high",
)


def derived_names(base: tuple[str, ...], targets: np.ndarray) -> tuple[str, ...]:
    return tuple(f"{base[int(t)]}_unexplained" for t in targets)


@dataclass(frozen=True)
class Explainer:
    """Per-host ridge regression of log CPU on the context features; residuals as features."""

    names: tuple[str, ...]
    targets: np.ndarray
    inputs: np.ndarray
    in_center: np.ndarray
    in_scale: np.ndarray
    coef: np.ndarray
    resid_scale: np.ndarray
    in_low: np.ndarray
    in_high: np.ndarray

    def design(self, F: np.ndarray) -> np.ndarray:
        """Standardized context, clipped to the training range: a linear model must never
        extrapolate (a backup twice as heavy as any seen would otherwise "explain" negative
        CPU, or a correlated pair of inputs would push the prediction anywhere)."""
        Z = (F[:, self.inputs] - self.in_center) / self.in_scale
        Z = np.clip(np.nan_to_num(Z, nan=0.0, posinf=0.0, neginf=0.0), self.in_low, self.in_high)
        return np.hstack([np.ones((len(F), 1)), Z])

    def derive(self, F: np.ndarray) -> np.ndarray:
        y = np.log1p(np.maximum(F[:, self.targets], 0.0))
        resid = (y - self.design(F) @ self.coef.T) / self.resid_scale
        return resid

    @classmethod
    def fit(
        cls,
        F: np.ndarray,
        targets: np.ndarray,
        inputs: np.ndarray,
        names: tuple[str, ...],
        ridge: float = 1e-3,
    ) -> Explainer:
        targets = np.asarray(targets, dtype=np.int64)
        inputs = np.asarray(inputs, dtype=np.int64)
        X = F[:, inputs]
        in_center = np.nan_to_num(np.nanmedian(X, axis=0), nan=0.0) if len(X) else np.zeros(0)
        in_scale = np.nan_to_num(np.nanstd(X, axis=0), nan=1.0) if len(X) else np.zeros(0)
        in_scale = np.where(in_scale > 1e-9, in_scale, 1.0)
        Zin = np.nan_to_num((X - in_center) / in_scale, nan=0.0)
        low = Zin.min(axis=0) if len(X) else np.zeros(0)
        high = Zin.max(axis=0) if len(X) else np.zeros(0)
        zeros = np.zeros((len(targets), len(inputs) + 1))
        draft = cls(
            names, targets, inputs, in_center, in_scale, zeros, np.ones(len(targets)), low, high
        )
        A = draft.design(F)
        Y = np.log1p(np.maximum(np.nan_to_num(F[:, targets], nan=0.0), 0.0))
        penalty = ridge * len(F) * np.eye(A.shape[1])
        penalty[0, 0] = 0.0  # never shrink the intercept
        coef = np.linalg.solve(A.T @ A + penalty, A.T @ Y).T
        resid = Y - A @ coef.T
        mad = np.median(np.abs(resid - np.median(resid, axis=0)), axis=0) * 1.4826
        return cls(
            names, targets, inputs, in_center, in_scale, coef, np.maximum(mad, 0.05), low, high
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {f"explain_{k}": np.asarray(getattr(self, k)) for k in _EXPLAINER_ARRAYS}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], names: tuple[str, ...]) -> Explainer:
        get = {k: np.asarray(arrays[f"explain_{k}"]) for k in _EXPLAINER_ARRAYS}
        ints = {k: get[k].astype(np.int64) for k in ("targets", "inputs")}
        floats = {k: v.astype(np.float64) for k, v in get.items() if k not in ints}
        return cls(names=names, **ints, **floats)


@dataclass(frozen=True)
class BaselineScorer:
    """A fitted baseline reduced to arrays: explainer, scaling, forest, excess, calibration.

    ``feature_names`` are the pipeline's features followed by the explainer's derived ones;
    methods take the pipeline's features (``n_base`` columns) and add the derived ones.
    """

    feature_names: tuple[str, ...]
    center: np.ndarray
    scale: np.ndarray
    train_max: np.ndarray
    typical_low: np.ndarray
    typical_high: np.ndarray
    excess_mask: np.ndarray
    forest: NumpyForest
    threshold: float
    alert_windows: int = 3
    clear_windows: int = 3
    excess_scale: float = 1.0
    explainer: Explainer | None = None
    forest_columns: np.ndarray | None = None

    def renamed(self, base: tuple[str, ...]) -> BaselineScorer:
        """The same scorer with the pipeline's feature names (derived ones follow them)."""
        if self.explainer is None:
            return replace(self, feature_names=tuple(base))
        derived = derived_names(base, self.explainer.targets)
        return replace(
            self,
            feature_names=tuple(base) + derived,
            explainer=replace(self.explainer, names=derived),
        )

    @property
    def n_base(self) -> int:
        return len(self.feature_names) - (len(self.explainer.names) if self.explainer else 0)

    def full(self, F: np.ndarray) -> np.ndarray:
        """Pipeline features plus the derived "unexplained" ones."""
        F = np.asarray(F, dtype=np.float64)
        if F.ndim != 2 or F.shape[1] != self.n_base:
            raise ValueError(f"expected {self.n_base} features, got {F.shape}")
        if self.explainer is None:
            return F
        return np.hstack([F, self.explainer.derive(F)])

    def standardize(self, F: np.ndarray) -> np.ndarray:
        """Robust z-scores of :meth:`full`; a missing value sits at the centre (neutral)."""
        Z = (self.full(F) - self.center) / self.scale
        return np.clip(np.nan_to_num(Z, nan=0.0, posinf=1e6, neginf=-1e6), -1e6, 1e6)

    def excess(self, Z: np.ndarray) -> np.ndarray:
        """Per-feature distance above the training maximum, in training ranges (masked).

        The unit is the distance from the median to the maximum seen in training: a busier
        day than any in training on a host whose load swings widely barely counts, while the
        same absolute rise on a host that is always flat counts a lot.
        """
        unit = np.maximum(self.train_max, 1.0)
        return np.maximum(Z - self.train_max, 0.0) / unit * self.excess_mask

    def forest_input(self, Z: np.ndarray) -> np.ndarray:
        return Z if self.forest_columns is None else Z[:, self.forest_columns]

    def score(self, F: np.ndarray) -> np.ndarray:
        Z = self.standardize(F)
        s_if = self.forest.anomaly_score(self.forest_input(Z))
        e = self.excess(Z).sum(axis=1)
        return 1.0 - (1.0 - s_if) * np.exp(-e / self.excess_scale)

    def contributions(self, F: np.ndarray) -> np.ndarray:
        """Each feature's share of the deviation (rows sum to 1, or 0 when nothing deviates).

        Deviation = distance outside the typical (5th-95th percentile) band in scale units,
        plus the excess above the training maximum, over the features the model judges:
        the part of a window a person would point at when asked "what is unusual here".
        """
        Z = self.standardize(F)
        lo = (self.typical_low - self.center) / self.scale
        hi = (self.typical_high - self.center) / self.scale
        dev = np.maximum(Z - hi, 0.0) + np.maximum(lo - Z, 0.0) + self.excess(Z)
        if self.forest_columns is not None:
            judged = np.zeros(Z.shape[1], dtype=bool)
            judged[self.forest_columns] = True
            dev = dev * (judged | (self.excess_mask > 0))
        total = dev.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, dev / np.where(total > 0, total, 1.0), 0.0)

    def explain(self, f: np.ndarray, top: int = 3) -> list[dict[str, Any]]:
        """The features that drove one window's score, with the baseline's typical range."""
        f = np.asarray(f, dtype=np.float64).reshape(1, -1)
        full = self.full(f)[0]
        share = self.contributions(f)[0]
        order = [j for j in np.argsort(-share, kind="stable") if share[j] > 0][:top]
        return [
            {
                "feature": self.feature_names[j],
                "value": float(full[j]),
                "typical_low": float(self.typical_low[j]),
                "typical_high": float(self.typical_high[j]),
                "contribution": float(share[j]),
            }
            for j in order
        ]

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"forest_{k}": v for k, v in self.forest.to_arrays().items()}
        for name in VECTORS:
            arrays[name] = np.asarray(getattr(self, name), dtype=np.float64)
        if self.explainer is not None:
            arrays.update(self.explainer.to_arrays())
        if self.forest_columns is not None:
            arrays["forest_columns"] = np.asarray(self.forest_columns, dtype=np.int64)
        return arrays

    def params(self) -> dict[str, Any]:
        return {
            "feature_names": list(self.feature_names[: self.n_base]),
            "derived_names": list(self.explainer.names) if self.explainer else [],
            "threshold": self.threshold,
            "alert_windows": self.alert_windows,
            "clear_windows": self.clear_windows,
            "excess_scale": self.excess_scale,
        }

    @classmethod
    def from_parts(cls, arrays: dict[str, np.ndarray], params: dict[str, Any]) -> BaselineScorer:
        forest = NumpyForest.from_arrays(
            {
                k.removeprefix("forest_"): v
                for k, v in arrays.items()
                if k.startswith("forest_") and k != "forest_columns"
            }
        )
        base = tuple(str(n) for n in params["feature_names"])
        derived = tuple(str(n) for n in params.get("derived_names", []))
        names = base + derived
        explainer = Explainer.from_arrays(arrays, derived) if derived else None
        vectors = {n: np.asarray(arrays[n], dtype=np.float64) for n in VECTORS}
        columns = arrays.get("forest_columns")
        width = len(columns) if columns is not None else len(names)
        bad = [n for n, v in vectors.items() if v.shape != (len(names),)]
        if bad or forest.n_features != width:
            raise ValueError(f"model arrays do not match {len(names)} features: {bad}")
        return cls(
            feature_names=names,
            **vectors,
            forest=forest,
            threshold=float(params["threshold"]),
            alert_windows=int(params["alert_windows"]),
            clear_windows=int(params["clear_windows"]),
            excess_scale=float(params["excess_scale"]),
            explainer=explainer,
            forest_columns=None if columns is None else np.asarray(columns, dtype=np.int64),
        )


@dataclass(frozen=True)
class HostModel:
    """What the store holds for one host: the scorer plus how to cut its input."""

    host: str
    scorer: BaselineScorer
    columns: tuple[str, ...]
    window: float
    hop: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        return self.scorer.threshold
