"""The numpy-only scorer the agent and batch scoring share (no scikit-learn at run time).

score = 1 - (1 - s_if) * exp(-excess / excess_scale), in [0, 1], higher = more anomalous:
``s_if`` is the isolation score on robustly scaled features; ``excess`` adds how far the
sustained-compute features sit *above* anything seen in training, which isolation trees
cannot express (every point beyond the training range is isolated at the same depth).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from baseline.forest import NumpyForest


@dataclass(frozen=True)
class BaselineScorer:
    """A fitted baseline reduced to arrays: scaling, forest, excess and calibration."""

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
    excess_scale: float = 4.0

    def standardize(self, F: np.ndarray) -> np.ndarray:
        """Robust z-scores; a missing feature sits at the centre (neutral, never alarming)."""
        F = np.asarray(F, dtype=np.float64)
        if F.ndim != 2 or F.shape[1] != len(self.feature_names):
            raise ValueError(f"expected {len(self.feature_names)} features, got {F.shape}")
        Z = (F - self.center) / self.scale
        return np.clip(np.nan_to_num(Z, nan=0.0, posinf=1e6, neginf=-1e6), -1e6, 1e6)

    def excess(self, Z: np.ndarray) -> np.ndarray:
        """Per-feature distance above the training maximum, in scale units (masked)."""
        return np.maximum(Z - self.train_max, 0.0) * self.excess_mask

    def score(self, F: np.ndarray) -> np.ndarray:
        Z = self.standardize(F)
        s_if = self.forest.anomaly_score(Z)
        e = self.excess(Z).sum(axis=1)
        return 1.0 - (1.0 - s_if) * np.exp(-e / self.excess_scale)

    def contributions(self, F: np.ndarray) -> np.ndarray:
        """Each feature's share of the deviation (rows sum to 1, or 0 when nothing deviates).

        Deviation = distance outside the typical (5th-95th percentile) band in scale units,
        plus the excess above the training maximum: the part of a window a person would
        point at when asked "what is unusual here".
        """
        Z = self.standardize(F)
        lo = (self.typical_low - self.center) / self.scale
        hi = (self.typical_high - self.center) / self.scale
        dev = np.maximum(Z - hi, 0.0) + np.maximum(lo - Z, 0.0) + self.excess(Z)
        total = dev.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, dev / np.where(total > 0, total, 1.0), 0.0)

    def explain(self, f: np.ndarray, top: int = 3) -> list[dict[str, Any]]:
        """The features that drove one window's score, with the baseline's typical range."""
        f = np.asarray(f, dtype=np.float64).reshape(1, -1)
        share = self.contributions(f)[0]
        order = [j for j in np.argsort(-share, kind="stable") if share[j] > 0][:top]
        return [
            {
                "feature": self.feature_names[j],
                "value": float(f[0, j]),
                "typical_low": float(self.typical_low[j]),
                "typical_high": float(self.typical_high[j]),
                "contribution": float(share[j]),
            }
            for j in order
        ]

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"forest_{k}": v for k, v in self.forest.to_arrays().items()}
        for name in ("center", "scale", "train_max", "typical_low", "typical_high"):
            arrays[name] = np.asarray(getattr(self, name), dtype=np.float64)
        arrays["excess_mask"] = self.excess_mask.astype(np.float64)
        return arrays

    def params(self) -> dict[str, Any]:
        return {
            "feature_names": list(self.feature_names),
            "threshold": self.threshold,
            "alert_windows": self.alert_windows,
            "clear_windows": self.clear_windows,
            "excess_scale": self.excess_scale,
        }

    @classmethod
    def from_parts(cls, arrays: dict[str, np.ndarray], params: dict[str, Any]) -> BaselineScorer:
        forest = NumpyForest.from_arrays(
            {k.removeprefix("forest_"): v for k, v in arrays.items() if k.startswith("forest_")}
        )
        names = tuple(str(n) for n in params["feature_names"])
        vectors = {
            n: np.asarray(arrays[n], dtype=np.float64)
            for n in ("center", "scale", "train_max", "typical_low", "typical_high", "excess_mask")
        }
        bad = [n for n, v in vectors.items() if v.shape != (len(names),)]
        if bad or forest.n_features != len(names):
            raise ValueError(f"model arrays do not match {len(names)} features: {bad}")
        return cls(
            feature_names=names,
            center=vectors["center"],
            scale=vectors["scale"],
            train_max=vectors["train_max"],
            typical_low=vectors["typical_low"],
            typical_high=vectors["typical_high"],
            excess_mask=vectors["excess_mask"],
            forest=forest,
            threshold=float(params["threshold"]),
            alert_windows=int(params["alert_windows"]),
            clear_windows=int(params["clear_windows"]),
            excess_scale=float(params["excess_scale"]),
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
