"""A robust low-rank model of the extra numeric columns: their joint reconstruction error.

Columns without a meaning in the schema (a public benchmark's 38 server metrics, a site's own
gauges) each get a level and a deviation feature, which judge every column on its own. Much
of what goes wrong on a server shows up as columns leaving their usual *relation* (traffic
without the CPU it usually brings, disk writes without the requests) while each stays in its
own range. Per-machine PCA reconstruction error catches that and is a strong, simple baseline
on such data (Sarfraz et al., "Quo Vadis, Unsupervised Time Series Anomaly Detection?", ICML
2024; the SMD data set comes from the OmniAnomaly paper, Su et al., KDD 2019).

The fit is robust because training data is not clean: columns are scaled by their
interquartile range (never below their standard deviation or their resolution, so a column
that was flat in training does not explode), the subspace is refitted after dropping the
worst-reconstructed training rows, and the error is the root mean square of the residual in
those units. Scoring is numpy only (the agent loads models without scikit-learn).

The baseline judges the error as a sub-score of its own, calibrated for the same false-alarm
budget as the forest and combined with it by the larger of the two
(:meth:`~minerwatch.baseline.fitted.HostModel.combine`), not as one more forest column:
isolation trees would saturate on it and split on it rarely among the per-column features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The derived feature's name; ``x_`` as for the other features of extra columns.
NAME = "x_lowrank_error"
#: Share of the (trimmed) variance the kept components explain.
VARIANCE = 0.9
#: Share of the worst-reconstructed training rows dropped before each refit.
TRIM = 0.05
REFITS = 2
#: Scaled values are clipped here, so one broken column cannot dominate forever.
CLIP = 50.0
#: IQR of a Gaussian in standard deviations.
IQR_PER_SIGMA = 1.349
_ARRAYS = ("columns", "center", "scale", "mean", "components")


@dataclass(frozen=True)
class LowRank:
    """Scaling and principal subspace of some feature columns; ``derive`` gives the error.

    >>> rng = np.random.default_rng(0)
    >>> t = rng.normal(size=(500, 1))
    >>> F = np.hstack([t, 2 * t, -t]) + rng.normal(scale=0.01, size=(500, 3))
    >>> lr = LowRank.fit(F, np.arange(3))
    >>> ok, broken = lr.derive(np.array([[1.0, 2.0, -1.0], [1.0, -2.0, -1.0]]))[:, 0]
    >>> bool(broken > 10 * ok)
    True
    """

    columns: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    mean: np.ndarray
    components: np.ndarray
    names: tuple[str, ...] = (NAME,)

    def scaled(self, F: np.ndarray) -> np.ndarray:
        """Robust z-scores of the modelled columns, missing values at the centre."""
        Z = (np.asarray(F, dtype=np.float64)[:, self.columns] - self.center) / self.scale
        out: np.ndarray = np.clip(np.nan_to_num(Z, nan=0.0, posinf=CLIP, neginf=-CLIP), -CLIP, CLIP)
        return out

    def residual(self, F: np.ndarray) -> np.ndarray:
        """What the subspace does not reconstruct, per column, in scaled units."""
        Y = self.scaled(F) - self.mean
        out: np.ndarray = Y - (Y @ self.components.T) @ self.components
        return out

    def derive(self, F: np.ndarray) -> np.ndarray:
        """One column: the RMS reconstruction error of each row of ``F``."""
        R = self.residual(F)
        out: np.ndarray = np.sqrt(np.mean(R * R, axis=1))[:, None]
        return out

    @classmethod
    def fit(
        cls,
        F: np.ndarray,
        columns: np.ndarray,
        resolution: np.ndarray | None = None,
        variance: float = VARIANCE,
        trim: float = TRIM,
        refits: int = REFITS,
    ) -> LowRank:
        """Fit on the training rows of ``F`` (numpy SVD); ``columns`` are the modelled ones."""
        columns = np.asarray(columns, dtype=np.int64)
        X = np.asarray(F, dtype=np.float64)[:, columns]
        m = len(columns)
        res = np.full(m, 1e-6) if resolution is None else np.asarray(resolution, dtype=np.float64)
        finite = np.isfinite(X).any(axis=0)
        center = np.zeros(m)
        spread = np.zeros(m)
        if len(X) and finite.any():
            Xf = X[:, finite]
            center[finite] = np.nanmedian(Xf, axis=0)
            iqr = np.nanquantile(Xf, 0.75, axis=0) - np.nanquantile(Xf, 0.25, axis=0)
            spread[finite] = np.maximum(iqr / IQR_PER_SIGMA, np.nanstd(Xf, axis=0))
        draft = cls(columns, center, np.maximum(spread, res), np.zeros(m), np.zeros((0, m)))
        Z = draft.scaled(F)
        keep = np.ones(len(Z), dtype=bool)
        model = draft
        for step in range(refits + 1):
            if keep.sum() < 2:
                break
            mean = Z[keep].mean(axis=0)
            _, s, vt = np.linalg.svd(Z[keep] - mean, full_matrices=False)
            power = s * s
            total = power.sum()
            k = int(np.searchsorted(np.cumsum(power) / total, variance) + 1) if total > 0 else 0
            model = cls(columns, center, draft.scale, mean, vt[: min(k, m - 1)])
            if step < refits:
                err = model.derive(F)[:, 0]
                keep = err <= np.quantile(err[keep], 1.0 - trim)
        return model

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {f"lowrank_{k}": np.asarray(getattr(self, k)) for k in _ARRAYS}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], names: tuple[str, ...]) -> LowRank:
        """Rebuild from :meth:`to_arrays`; ``ValueError`` when the shapes do not fit together."""
        cols = np.asarray(arrays["lowrank_columns"]).astype(np.int64)
        vec = {k: np.asarray(arrays[f"lowrank_{k}"], dtype=np.float64) for k in _ARRAYS[1:]}
        m = cols.shape[0] if cols.ndim == 1 else -1
        comp = vec["components"]
        if (
            m < 1
            or len(names) != 1
            or any(vec[k].shape != (m,) for k in ("center", "scale", "mean"))
            or comp.ndim != 2
            or comp.shape[1] != m
            or (cols < 0).any()
            or not (vec["scale"] > 0).all()
        ):
            raise ValueError("low-rank arrays of the wrong shape")
        return cls(cols, **vec, names=tuple(names))
