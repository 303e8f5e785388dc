"""The extra columns' joint reconstruction error: the numpy model, its place in the baseline and
the store, and a relation broken between columns caught through ``minerwatch train``/``score``."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minerwatch.baseline.batch import score_series
from minerwatch.baseline.fitted import HostModel
from minerwatch.baseline.lowrank import NAME, LowRank
from minerwatch.baseline.store import load_model, save_model
from minerwatch.baseline.train import train_host
from minerwatch.features.io import HostSeries

MINERWATCH = str(Path(sys.executable).with_name("minerwatch"))
EXTRA = ("a", "b", "c", "d", "e")


def _related(n, rng, noise=0.02):
    """Five columns driven by two hidden loads, each in [0.1, 0.9]."""
    load = rng.uniform(0.2, 0.8, size=(n, 2))
    mix = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.8, 0.2], [0.2, 0.8]])
    return load @ mix.T + rng.normal(scale=noise, size=(n, 5))


def test_broken_relation_scores_far_above_kept_one():
    rng = np.random.default_rng(0)
    X = _related(2000, rng)
    lr = LowRank.fit(X, np.arange(5))
    assert lr.components.shape == (2, 5)  # two loads explain it
    kept = np.array([[0.3, 0.7, 0.5, 0.38, 0.62]])
    broken = np.array([[0.3, 0.7, 0.5, 0.62, 0.38]])  # every value in its usual range
    assert lr.derive(broken)[0, 0] > 5 * max(lr.derive(kept)[0, 0], 0.1)
    train = lr.derive(X)[:, 0]
    assert lr.derive(broken)[0, 0] > train.max()


def test_trimming_keeps_contamination_out_of_the_subspace():
    rng = np.random.default_rng(1)
    X = _related(2000, rng)
    X[:80, 3] += 0.6  # 4 % of training with the relation broken (an unlabelled incident)
    X[:80, 4] -= 0.6
    clean = _related(500, np.random.default_rng(9))
    probe = clean + np.array([0.0, 0.0, 0.0, 0.3, -0.3])
    plain = LowRank.fit(X, np.arange(5), refits=0)
    robust = LowRank.fit(X, np.arange(5))
    # the untrimmed subspace tilts toward the incident: it finds the next one less unusual
    # and normal rows more so
    assert np.median(robust.derive(probe)) > 1.5 * np.median(plain.derive(probe))
    assert np.median(robust.derive(clean)) < 0.7 * np.median(plain.derive(clean))


def test_flat_and_missing_columns_do_not_explode():
    rng = np.random.default_rng(2)
    X = np.hstack([_related(500, rng), np.full((500, 1), 0.25)])
    lr = LowRank.fit(X, np.arange(6), resolution=np.full(6, 1e-3))
    row = np.array([[0.5, 0.5, 0.5, 0.5, 0.5, np.nan]])
    err = lr.derive(row)[0, 0]
    assert np.isfinite(err) and err < 5
    moved = row.copy()
    moved[0, 5] = 1e9  # clipped: one broken column cannot dominate without bound
    assert np.isfinite(lr.derive(moved)[0, 0])


def test_arrays_round_trip_and_bad_shapes():
    lr = LowRank.fit(_related(300, np.random.default_rng(3)), np.arange(5))
    arrays = lr.to_arrays()
    back = LowRank.from_arrays(arrays, (NAME,))
    F = _related(10, np.random.default_rng(4))
    assert np.array_equal(back.derive(F), lr.derive(F))
    bad = dict(arrays, lowrank_mean=np.zeros(4))
    with pytest.raises(ValueError, match="low-rank"):
        LowRank.from_arrays(bad, (NAME,))


def _series(n, rng, start=0.0, break_at=None):
    """10-s samples of CPU and five columns following two slow loads (periods 3 h and 80 min)."""
    t = start + np.arange(n) * 10.0
    load = 0.5 + 0.3 * np.column_stack([np.sin(t / 1719.0), np.sin(t / 764.0 + 1.0)])
    mix = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.8, 0.2], [0.2, 0.8]])
    X = load @ mix.T + rng.normal(scale=0.01, size=(n, 5))
    if break_at is not None:  # column d turns against the loads it followed, within its range
        X[break_at:, 3] = 1.0 - X[break_at:, 3]
    return t, np.hstack([np.full((n, 1), 20.0), X])


def test_model_judges_extra_columns_jointly_and_stores_it(tmp_path):
    rng = np.random.default_rng(5)
    t, V = _series(6 * 60 * 12, rng)
    model = train_host(HostSeries("h", t, V, ("cpu_percent", *EXTRA)))
    assert model.feature_names[-1] == NAME and model.lowrank is not None
    assert model.lowrank.columns.size == 2 * len(EXTRA)  # levels and deviations
    t2, V2 = _series(6 * 60, rng, start=t[-1] + 10, break_at=6 * 30)
    scored = score_series(model, HostSeries("h", t2, V2, ("cpu_percent", *EXTRA)))
    half = len(scored.score) // 2
    first = int(np.flatnonzero(scored.alert)[0])
    assert half <= first <= half + 5  # within minutes of the break, not before
    assert scored.top_features[first].startswith(f"{NAME}=")
    save_model(tmp_path, model)
    loaded = load_model(tmp_path, "h")
    assert np.array_equal(loaded.score(scored.features), model.score(scored.features))
    assert loaded.meta["lowrank_names"] == [NAME]


def test_models_without_it_load_and_score_as_before(tmp_path):
    rng = np.random.default_rng(6)
    t, V = _series(6 * 60 * 3, rng)
    model = train_host(HostSeries("h", t, V[:, :2], ("cpu_percent", "a")))  # one extra column
    assert model.lowrank is None and NAME not in model.feature_names
    assert "lowrank_names" not in model.params()
    assert not any(k.startswith("lowrank_") for k in model.to_arrays())
    save_model(tmp_path, model)
    loaded = load_model(tmp_path, "h")
    F = np.tile(model.center[: model.n_base], (3, 1))
    assert np.array_equal(loaded.score(F), model.score(F))
    params = dict(model.params(), lowrank_names=[NAME])  # names without arrays: refused
    with pytest.raises(KeyError):
        HostModel.from_parts(model.to_arrays(), params)


def _write_csv(path, t, V):
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "host", "cpu_percent", *EXTRA])
        for ti, row in zip(t, V, strict=True):
            w.writerow([f"{ti:.0f}", "h1", *(f"{v:.5f}" for v in row)])


def test_train_and_score_commands_name_the_broken_relation(tmp_path):
    rng = np.random.default_rng(7)
    t, V = _series(6 * 60 * 12, rng, start=1.767e9)
    t2, V2 = _series(6 * 60, rng, start=t[-1] + 10, break_at=6 * 30)
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    _write_csv(tmp_path / "train" / "h1.csv", t, V)
    _write_csv(tmp_path / "test" / "h1.csv", t2, V2)
    models, out = tmp_path / "models", tmp_path / "scores.csv"
    run = [MINERWATCH, "train", str(tmp_path / "train"), "--models", str(models)]
    done = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    run = [
        MINERWATCH,
        "score",
        str(tmp_path / "test"),
        "--models",
        str(models),
        "--output",
        str(out),
    ]
    done = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(out.open()))
    first = next(i for i, r in enumerate(rows) if r["alert"] == "1")
    assert len(rows) // 2 <= first <= len(rows) // 2 + 5
    assert rows[first]["top_features"].startswith(f"{NAME}=")


def test_store_refuses_low_rank_columns_outside_the_features(tmp_path):
    from dataclasses import replace

    from minerwatch.baseline.store import ModelError

    t, V = _series(6 * 60 * 6, np.random.default_rng(8))
    model = train_host(HostSeries("h", t, V, ("cpu_percent", *EXTRA)))
    assert model.lowrank is not None
    cols = model.lowrank.columns.copy()
    cols[0] = model.n_base + 3  # would read a derived or missing column
    save_model(tmp_path, replace(model, lowrank=replace(model.lowrank, columns=cols)))
    with pytest.raises(ModelError, match="low-rank columns out of range"):
        load_model(tmp_path, "h")


def _baseline_on(X, **kw):
    from minerwatch.baseline.model import HostBaseline

    d = X.shape[1]
    return HostBaseline(
        n_estimators=50,
        random_state=0,
        max_alarms_per_week=7.0,
        excess=np.ones(d),
        lowrank_features=np.arange(d),
        resolution=np.full(d, 1e-3),
        **kw,
    ).fit(X)


def test_error_is_its_own_calibrated_sub_score_not_a_forest_column():
    from minerwatch.baseline.calibrate import WEEK, count_episodes

    rng = np.random.default_rng(11)
    X = _related(3 * 1440, rng)  # three days of one-minute windows
    est = _baseline_on(X)
    model = est.host_model_
    err_col = len(model.feature_names) - 1
    assert model.feature_names[err_col] == NAME and model.lowrank_unit > 0
    assert model.forest_columns is not None and err_col not in model.forest_columns
    assert model.excess_mask[err_col] == 0  # judged once, by its own sub-score
    assert set(model.forest_columns) == set(range(5))  # the columns one by one, as before
    # the combined training scores (forest's out-of-fold, error's own) keep the budget
    allowed = int(7.0 * len(X) * 60.0 / WEEK)
    assert count_episodes(est.train_scores_, est.threshold_, None, 3, 3) <= allowed
    # a broken relation, every value in range: the further off, the higher the score (no
    # saturation as in a forest, where every point past the training range scores alike)
    base = np.array([0.3, 0.7, 0.5, 0.38, 0.62])
    rows = np.array([base + np.array([0, 0, 0, s, -s]) for s in (0.1, 0.2, 0.3, 0.4)])
    scores = model.score(rows)
    assert (np.diff(scores) > 0).all() and scores[1] > model.threshold
    error = model.full(rows)[:, -1]
    assert np.allclose(scores, np.maximum(model.combine(np.zeros(4), error), scores))
    assert model.explain(rows[-1])[0]["feature"] == NAME


def test_models_that_judged_the_error_in_the_forest_still_load(tmp_path):
    from dataclasses import replace

    rng = np.random.default_rng(12)
    t, V = _series(6 * 60 * 6, rng)
    model = train_host(HostSeries("h", t, V, ("cpu_percent", *EXTRA)))
    assert model.params()["lowrank_unit"] == model.lowrank_unit > 0
    old_params = {k: v for k, v in model.params().items() if k != "lowrank_unit"}
    old = HostModel.from_parts(model.to_arrays(), old_params)  # saved before the sub-score
    assert old.lowrank_unit == 0.0
    F = np.tile(model.center[: model.n_base], (4, 1))
    F[:, -3] += np.arange(4)  # the error grows; without the sub-score it is not judged alone
    assert np.array_equal(old.score(F), replace(model, lowrank_unit=0.0).score(F))
    save_model(tmp_path, model)
    assert load_model(tmp_path, "h").lowrank_unit == model.lowrank_unit
