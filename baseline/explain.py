"""Explaining CPU by the host's own work: "unexplained CPU" features for the model.

A per-host ridge regression predicts log CPU from the context features (traffic, disk,
process churn, system CPU, time of day); what it does not account for, in units of its
training residual, becomes a feature. A traffic surge or a backup explains its own CPU; a
miner's CPU is explained by nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

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
)


def derived_names(base: tuple[str, ...], targets: np.ndarray) -> tuple[str, ...]:
    """Names of the residual features, one per explained target (``<target>_unexplained``)."""
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
        """The residual features of ``F``'s rows, in training-residual units."""
        y = np.log1p(np.maximum(F[:, self.targets], 0.0))
        resid: np.ndarray = (y - self.design(F) @ self.coef.T) / self.resid_scale
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
        return {f"explain_{k}": np.asarray(getattr(self, k)) for k in _ARRAYS}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], names: tuple[str, ...]) -> Explainer:
        get = {k: np.asarray(arrays[f"explain_{k}"]) for k in _ARRAYS}
        ints = {k: get[k].astype(np.int64) for k in ("targets", "inputs")}
        floats = {k: v.astype(np.float64) for k, v in get.items() if k not in ints}
        return cls(names=names, **ints, **floats)
