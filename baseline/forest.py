"""A numpy-only isolation forest scorer, so the on-host agent never imports scikit-learn.

Training happens with scikit-learn's ``IsolationForest`` (or its trees grown the same way,
:func:`~minerwatch.baseline.model.fit_isolation_forest`); :func:`export_forest` and
:func:`export_trees` flatten the trees into a few padded arrays that :class:`NumpyForest`
walks for all trees at once, a block of rows at a time. The arithmetic mirrors
scikit-learn's ``score_samples`` (inputs rounded to float32 like its tree code, path length =
node depth + c(n_node_samples) - 1), so both agree to ~1e-12.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Array names stored in a model file, in a fixed order.
ARRAY_NAMES = ("left", "right", "feature", "threshold", "path_length")
#: Rows walked through all trees at once: enough to amortise numpy's per-call cost, few
#: enough that the (trees, rows) index arrays stay in cache.
_ROWS_PER_PASS = 512


def average_path_length(n: np.ndarray) -> np.ndarray:
    """c(n): the mean depth of an unsuccessful search in a BST of ``n`` points (Liu et al. 2008)."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


@dataclass(frozen=True)
class NumpyForest:
    """Trees as padded ``(n_trees, max_nodes)`` arrays; leaves have ``left == -1``."""

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    path_length: np.ndarray
    max_samples: int
    n_features: int

    @property
    def n_trees(self) -> int:
        return int(self.left.shape[0])

    def depths(self, X: np.ndarray) -> np.ndarray:
        """Sum over trees of each row's path length (depth + c(leaf size) - 1)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected {self.n_features} features, got shape {X.shape}")
        # scikit-learn's trees compare float32 inputs against float64 thresholds.
        values = X.astype(np.float32).astype(np.float64).ravel()
        n, width = X.shape[0], self.left.shape[1]
        # flat indices into the raveled arrays: ``take`` is much cheaper than 2-d indexing
        left, right = self.left.ravel(), self.right.ravel()
        feature, threshold = self.feature.ravel(), self.threshold.ravel()
        root = (np.arange(self.n_trees) * width)[:, None]
        total = np.zeros(n)
        for lo in range(0, n, _ROWS_PER_PASS):
            rows = np.arange(lo, min(n, lo + _ROWS_PER_PASS))
            offset = (rows * self.n_features)[None, :]
            node = np.repeat(root, len(rows), axis=1)
            while True:
                child = left.take(node)
                split = child >= 0
                if not split.any():
                    break
                value = values.take(offset + np.where(split, feature.take(node), 0))
                nxt = np.where(value <= threshold.take(node), child, right.take(node)) + root
                node = np.where(split, nxt, node)
            lengths = self.path_length.ravel().take(node)
            part = np.zeros(len(rows))
            for t in range(self.n_trees):  # same summation order as scikit-learn
                part += lengths[t]
            total[rows] = part
        return total

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """Same sign as scikit-learn: the opposite of the anomaly score, higher = more normal."""
        return -self.anomaly_score(X)

    def anomaly_score(self, X: np.ndarray) -> np.ndarray:
        """The isolation score s(x) = 2^(-E[h(x)] / c(max_samples)) in (0, 1]; higher = worse."""
        denominator = self.n_trees * float(average_path_length(np.array([self.max_samples]))[0])
        depths = self.depths(X)
        if denominator == 0:
            return np.ones_like(depths)
        return np.power(2.0, -depths / denominator)

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {name: getattr(self, name) for name in ARRAY_NAMES}
        arrays["shape"] = np.array([self.max_samples, self.n_features], dtype=np.int64)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> NumpyForest:
        max_samples, n_features = (int(v) for v in arrays["shape"])
        parts = {name: np.asarray(arrays[name]) for name in ARRAY_NAMES}
        shapes = {parts[name].shape for name in ARRAY_NAMES}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"inconsistent forest arrays: {sorted(shapes)}")
        return cls(
            left=parts["left"].astype(np.int64),
            right=parts["right"].astype(np.int64),
            feature=parts["feature"].astype(np.int64),
            threshold=parts["threshold"].astype(np.float64),
            path_length=parts["path_length"].astype(np.float64),
            max_samples=max_samples,
            n_features=n_features,
        )


def export_forest(model: Any) -> NumpyForest:
    """Flatten a fitted scikit-learn ``IsolationForest`` (duck-typed: no import needed here)."""
    return export_trees(
        model.estimators_, model.estimators_features_, model.max_samples_, model.n_features_in_
    )


def export_trees(
    trees: Sequence[Any], subsets: Sequence[Any], max_samples: int, n_features: int
) -> NumpyForest:
    """Flatten fitted scikit-learn trees (``.tree_``), each seeing the columns ``subsets[t]``."""
    if len(trees) != len(subsets):
        raise ValueError(f"{len(trees)} trees but {len(subsets)} column subsets")
    structs = [est.tree_ for est in trees]
    width = max(tree.node_count for tree in structs)
    shape = (len(structs), width)
    left = np.full(shape, -1, dtype=np.int64)
    right = np.full(shape, -1, dtype=np.int64)
    feature = np.zeros(shape, dtype=np.int64)
    threshold = np.zeros(shape, dtype=np.float64)
    n_node_samples = np.zeros(shape, dtype=np.float64)
    for t, (tree, cols) in enumerate(zip(structs, subsets, strict=True)):
        k = tree.node_count
        left[t, :k] = tree.children_left
        right[t, :k] = tree.children_right
        internal = tree.children_left >= 0
        feature[t, :k] = np.where(internal, np.asarray(cols)[np.maximum(tree.feature, 0)], 0)
        threshold[t, :k] = tree.threshold
        n_node_samples[t, :k] = tree.n_node_samples
    # padding past a tree's last node has no samples and keeps a path length of 0
    real = n_node_samples > 0
    path_length = np.where(
        real, _node_depths(left, right) + average_path_length(n_node_samples) - 1.0, 0.0
    )
    return NumpyForest(
        left=left,
        right=right,
        feature=feature,
        threshold=threshold,
        path_length=path_length,
        max_samples=int(max_samples),
        n_features=int(n_features),
    )


def _node_depths(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Depth of every node of every tree with the root at 1 (0 for padding), as
    scikit-learn's ``compute_node_depths``: one pass per level for all trees at once."""
    depth = np.zeros(left.shape, dtype=np.float64)
    depth[:, 0] = 1.0
    trees, nodes = np.nonzero(left >= 0)  # the splits
    level = 1.0
    while True:
        at = depth[trees, nodes] == level
        if not at.any():
            return depth
        t, parent = trees[at], nodes[at]
        depth[t, left[t, parent]] = level + 1.0
        depth[t, right[t, parent]] = level + 1.0
        level += 1.0
