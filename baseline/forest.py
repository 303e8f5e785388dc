"""A numpy-only isolation forest scorer, so the on-host agent never imports scikit-learn.

Training happens with scikit-learn's ``IsolationForest``; :func:`export_forest` flattens its
trees into a few padded arrays that :class:`NumpyForest` walks for all trees at once. The
arithmetic mirrors scikit-learn's ``score_samples`` (inputs rounded to float32 like its tree
code, path length = node depth + c(n_node_samples) - 1), so both agree to ~1e-12.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Array names stored in a model file, in a fixed order.
ARRAY_NAMES = ("left", "right", "feature", "threshold", "path_length")


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
        Xf = X.astype(np.float32).astype(np.float64)
        n = Xf.shape[0]
        trees = np.arange(self.n_trees)[:, None]
        rows = np.arange(n)[None, :]
        node = np.zeros((self.n_trees, n), dtype=np.int64)
        while True:
            left = self.left[trees, node]
            active = left >= 0
            if not active.any():
                break
            feat = self.feature[trees, node]
            value = Xf[rows, np.where(active, feat, 0)]
            go_left = value <= self.threshold[trees, node]
            nxt = np.where(go_left, left, self.right[trees, node])
            node = np.where(active, nxt, node)
        lengths = self.path_length[trees, node]
        total = np.zeros(n)
        for t in range(self.n_trees):  # same summation order as scikit-learn
            total += lengths[t]
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
    trees = model.estimators_
    subsets = model.estimators_features_
    width = max(est.tree_.node_count for est in trees)
    shape = (len(trees), width)
    left = np.full(shape, -1, dtype=np.int64)
    right = np.full(shape, -1, dtype=np.int64)
    feature = np.zeros(shape, dtype=np.int64)
    threshold = np.zeros(shape, dtype=np.float64)
    path_length = np.zeros(shape, dtype=np.float64)
    for t, (est, cols) in enumerate(zip(trees, subsets, strict=True)):
        tree = est.tree_
        k = tree.node_count
        left[t, :k] = tree.children_left
        right[t, :k] = tree.children_right
        internal = tree.children_left >= 0
        feature[t, :k] = np.where(internal, np.asarray(cols)[np.maximum(tree.feature, 0)], 0)
        threshold[t, :k] = tree.threshold
        path_length[t, :k] = (
            _node_depths(tree.children_left, tree.children_right)
            + average_path_length(tree.n_node_samples)
            - 1.0
        )
    return NumpyForest(
        left=left,
        right=right,
        feature=feature,
        threshold=threshold,
        path_length=path_length,
        max_samples=int(model.max_samples_),
        n_features=int(model.n_features_in_),
    )


def _node_depths(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Depth of every node with the root at 1, as scikit-learn's ``compute_node_depths``."""
    depth = np.zeros(len(left), dtype=np.float64)
    depth[0] = 1.0
    for node in range(len(left)):  # children always have larger ids than their parent
        if left[node] >= 0:
            depth[left[node]] = depth[node] + 1.0
            depth[right[node]] = depth[node] + 1.0
    return depth
