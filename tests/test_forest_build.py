"""The fast forest builder and the faster forest walk against scikit-learn, bit for bit."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import IsolationForest

from minerwatch.baseline.forest import NumpyForest, average_path_length, export_forest
from minerwatch.baseline.model import HostBaseline, fit_isolation_forest


def export_reference(model: IsolationForest) -> NumpyForest:
    """``export_forest`` as it was before it was vectorised: one tree at a time."""
    trees = model.estimators_
    width = max(est.tree_.node_count for est in trees)
    shape = (len(trees), width)
    arrays = {
        "left": np.full(shape, -1, dtype=np.int64),
        "right": np.full(shape, -1, dtype=np.int64),
        "feature": np.zeros(shape, dtype=np.int64),
        "threshold": np.zeros(shape),
        "path_length": np.zeros(shape),
    }
    for t, (est, cols) in enumerate(zip(trees, model.estimators_features_, strict=True)):
        tree, k = est.tree_, est.tree_.node_count
        arrays["left"][t, :k] = tree.children_left
        arrays["right"][t, :k] = tree.children_right
        internal = tree.children_left >= 0
        arrays["feature"][t, :k] = np.where(internal, cols[np.maximum(tree.feature, 0)], 0)
        arrays["threshold"][t, :k] = tree.threshold
        depth = np.zeros(k)
        depth[0] = 1.0
        for node in range(k):
            if tree.children_left[node] >= 0:
                depth[tree.children_left[node]] = depth[tree.children_right[node]] = depth[node] + 1
        arrays["path_length"][t, :k] = depth + average_path_length(tree.n_node_samples) - 1.0
    return NumpyForest(**arrays, max_samples=model.max_samples_, n_features=model.n_features_in_)


def depths_reference(forest: NumpyForest, X: np.ndarray) -> np.ndarray:
    """``NumpyForest.depths`` as it was before it walked flat arrays in blocks of rows."""
    Xf = np.asarray(X, dtype=np.float64).astype(np.float32).astype(np.float64)
    trees = np.arange(forest.n_trees)[:, None]
    rows = np.arange(len(Xf))[None, :]
    node = np.zeros((forest.n_trees, len(Xf)), dtype=np.int64)
    while True:
        left = forest.left[trees, node]
        active = left >= 0
        if not active.any():
            break
        value = Xf[rows, np.where(active, forest.feature[trees, node], 0)]
        nxt = np.where(value <= forest.threshold[trees, node], left, forest.right[trees, node])
        node = np.where(active, nxt, node)
    lengths = forest.path_length[trees, node]
    total = np.zeros(len(Xf))
    for t in range(forest.n_trees):
        total += lengths[t]
    return total


def assert_same_forest(a: NumpyForest, b: NumpyForest) -> None:
    for name, value in a.to_arrays().items():
        other = b.to_arrays()[name]
        assert value.dtype == other.dtype and value.shape == other.shape, name
        np.testing.assert_array_equal(value, other, err_msg=name)


def data(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, d)) * rng.uniform(0.01, 100, d)
    Z[:, 0] = 0.0  # a constant column: the splitter must skip it
    Z[: n // 3, -1] = np.round(Z[: n // 3, -1])  # ties
    return Z


def sklearn_forest(Z: np.ndarray, n_estimators: int, max_samples: object, seed: object) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_samples > n: scikit-learn warns and uses n
        return IsolationForest(
            n_estimators=n_estimators, max_samples=max_samples, random_state=seed
        ).fit(Z)


@pytest.mark.parametrize(
    ("n", "d", "n_estimators", "max_samples", "seed"),
    [
        (1000, 6, 200, 256, 0),  # n > max_samples
        (300, 3, 50, 256, 7),  # n close to max_samples
        (100, 4, 40, 256, 3),  # n < max_samples
        (5000, 12, 30, 64, 11),
        (256, 1, 20, "auto", 5),  # one (constant) column
        (1, 2, 10, 256, 1),  # one row
        (2, 5, 10, 2, 2**31 - 2),
    ],
)
def test_builder_gives_scikit_learns_forest(n, d, n_estimators, max_samples, seed):
    Z = data(n, d, seed % 1000)
    model = sklearn_forest(Z, n_estimators, max_samples, seed)
    built = fit_isolation_forest(Z, n_estimators, max_samples, seed)
    assert_same_forest(built, export_reference(model))
    assert_same_forest(export_forest(model), export_reference(model))
    if n > 1:  # from one row, NumpyForest scores 1 where scikit-learn says 0.5 (c(1) = 0)
        Q = np.vstack([Z[:50], data(80, d, seed + 1) * 3])
        np.testing.assert_allclose(built.score_samples(Q), model.score_samples(Q), atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 700),
    d=st.integers(1, 9),
    n_estimators=st.integers(1, 30),
    max_samples=st.sampled_from([256, 16, 1, "auto"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_builder_gives_scikit_learns_forest_on_random_shapes(n, d, n_estimators, max_samples, seed):
    Z = data(n, d, seed % 1000)
    model = sklearn_forest(Z, n_estimators, max_samples, seed)
    assert_same_forest(
        fit_isolation_forest(Z, n_estimators, max_samples, seed), export_reference(model)
    )


def test_builder_replicates_the_global_and_a_given_random_state():
    Z = data(800, 5, 4)
    np.random.seed(123)
    model = sklearn_forest(Z, 25, 256, None)
    np.random.seed(123)
    assert_same_forest(fit_isolation_forest(Z, 25, 256, None), export_reference(model))
    model = sklearn_forest(Z, 25, 256, np.random.RandomState(9))
    built = fit_isolation_forest(Z, 25, 256, np.random.RandomState(9))
    assert_same_forest(built, export_reference(model))


def test_options_it_does_not_replicate_go_to_scikit_learn():
    Z = data(600, 4, 8)
    model = sklearn_forest(Z, 20, 0.3, 1)  # a float max_samples: the ensemble itself
    assert_same_forest(fit_isolation_forest(Z, 20, 0.3, 1), export_reference(model))
    with pytest.raises(ValueError):  # scikit-learn's own errors
        fit_isolation_forest(Z, 0, 256, 1)
    with pytest.raises(ValueError):
        fit_isolation_forest(np.empty((0, 4)), 20, 256, 1)


@pytest.mark.parametrize("seed", [0, 5])
def test_host_baseline_is_unchanged(seed, monkeypatch):
    """The whole fit, built the fast way and through scikit-learn's ensemble."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((900, 4)) * [1.0, 10.0, 0.1, 5.0]
    X[::7, 1] = np.nan
    kwargs = {"n_estimators": 40, "random_state": seed, "hop": 600.0, "excess": [0, 1, 0, 0]}
    fast = HostBaseline(**kwargs).fit(X)

    def through_sklearn(Z, n_estimators, max_samples, random_state):
        model = IsolationForest(
            n_estimators=n_estimators, max_samples=max_samples, random_state=random_state
        )
        return export_reference(model.fit(Z))

    monkeypatch.setattr("minerwatch.baseline.model.fit_isolation_forest", through_sklearn)
    slow = HostBaseline(**kwargs).fit(X)
    assert fast.threshold_ == slow.threshold_
    np.testing.assert_array_equal(fast.train_scores_, slow.train_scores_)
    assert_same_forest(fast.host_model_.forest, slow.host_model_.forest)
    Q = rng.standard_normal((200, 4)) * 20
    np.testing.assert_array_equal(fast.anomaly_score(Q), slow.anomaly_score(Q))


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(0, 1300),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(1e-3, 1e3),
)
def test_depths_walk_as_before(n, seed, scale):
    rng = np.random.default_rng(seed)
    forest = fit_isolation_forest(rng.standard_normal((400, 3)) * scale, 30, 128, seed)
    X = rng.standard_normal((n, 3)) * scale * 2
    X[: n // 5, 1] = np.nan  # missing values go right, as in scikit-learn
    X[n // 5 : n // 4] = forest.threshold[0, 0]  # exactly on a threshold: left
    np.testing.assert_array_equal(forest.depths(X), depths_reference(forest, X))
