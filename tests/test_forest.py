import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import IsolationForest

from minerwatch.baseline.forest import NumpyForest, export_forest


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n_train=st.integers(2, 400),
    n_features=st.integers(1, 8),
    n_trees=st.integers(1, 40),
    max_features=st.sampled_from([1.0, 0.5]),
    scale=st.floats(1e-3, 1e4),
)
def test_numpy_forest_matches_sklearn(seed, n_train, n_features, n_trees, max_features, scale):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_train, n_features)) * scale
    X[: n_train // 4] = np.round(X[: n_train // 4])  # ties exercise the <= comparison
    model = IsolationForest(
        n_estimators=n_trees, max_features=max_features, random_state=seed % 1000
    ).fit(X)
    forest = export_forest(model)
    Q = np.vstack([X[:50], rng.standard_normal((60, n_features)) * scale * 3])
    np.testing.assert_allclose(forest.score_samples(Q), model.score_samples(Q), rtol=0, atol=1e-9)


def test_round_trip_through_arrays():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 4))
    forest = export_forest(IsolationForest(n_estimators=30, random_state=0).fit(X))
    again = NumpyForest.from_arrays(forest.to_arrays())
    np.testing.assert_array_equal(again.anomaly_score(X), forest.anomaly_score(X))


def test_outlier_scores_higher():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((500, 3))
    forest = export_forest(IsolationForest(n_estimators=50, random_state=0).fit(X))
    s = forest.anomaly_score(np.array([[0.0, 0.0, 0.0], [8.0, -8.0, 8.0]]))
    assert 0 < s[0] < s[1] <= 1
