import json
import os

import numpy as np
import pytest
from synth import host_series

from minerwatch.baseline.batch import score_series
from minerwatch.baseline.store import ModelError, host_dirname, list_hosts, load_model, save_model
from minerwatch.baseline.train import train_host


@pytest.fixture(scope="module")
def model():
    return train_host(host_series(days=2, seed=3), params={"n_estimators": 30})


def test_round_trip_scores_identically(tmp_path, model):
    save_model(tmp_path, model)
    again = load_model(tmp_path, model.host)
    test = host_series(days=0.5, seed=4, start=model.meta["train_end"])
    a, b = score_series(model, test), score_series(again, test)
    np.testing.assert_array_equal(a.score, b.score)
    assert again.threshold == model.threshold
    assert list_hosts(tmp_path) == [model.host]
    meta = json.loads((tmp_path / "web-1" / "meta.json").read_text())
    for key in (
        "feature_names",
        "schema_version",
        "windows",
        "train_start",
        "train_end",
        "threshold",
        "versions",
        "created_at",
        "sha256",
    ):
        assert key in meta


def test_retrain_replaces_atomically_and_cleans_up(tmp_path, model):
    save_model(tmp_path, model)
    other = train_host(host_series(days=2, seed=5), params={"n_estimators": 30})
    save_model(tmp_path, other)
    files = sorted(p.name for p in (tmp_path / "web-1").iterdir())
    assert files == [
        "meta.json",
        json.loads((tmp_path / "web-1/meta.json").read_text())["model_file"],
    ]
    assert load_model(tmp_path, "web-1").threshold == other.threshold


def test_tampered_model_is_refused(tmp_path, model):
    folder = save_model(tmp_path, model)
    npz = next(folder.glob("model-*.npz"))
    data = bytearray(npz.read_bytes())
    data[-40] ^= 0xFF
    npz.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        load_model(tmp_path, model.host)


def test_schema_mismatch_is_refused(tmp_path, model):
    folder = save_model(tmp_path, model)
    meta = json.loads((folder / "meta.json").read_text())
    meta["feature_names"] = meta["feature_names"][:-1]
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="retrain"):
        load_model(tmp_path, model.host)


def test_world_writable_folder_is_refused(tmp_path, model):
    folder = save_model(tmp_path, model)
    os.chmod(folder, 0o777)
    with pytest.raises(ModelError, match="not writable by group or others"):
        load_model(tmp_path, model.host)


def test_missing_model_and_odd_host_names(tmp_path):
    with pytest.raises(ModelError, match="trained model"):
        load_model(tmp_path, "ghost")
    assert "/" not in host_dirname("../../etc") and host_dirname("..") not in (".", "..")
    assert host_dirname("a/b") != host_dirname("a_b")


def test_missing_columns_named_when_scoring(model):
    test = host_series(days=0.2, seed=4)
    keep = [i for i, c in enumerate(test.columns) if c != "load1"]
    from minerwatch.features.errors import InputError
    from minerwatch.features.io import from_arrays

    cut = from_arrays(
        "web-1",
        test.timestamps,
        test.values[:, keep],
        tuple(test.columns[i] for i in keep),
        source="cut.csv",
    )
    with pytest.raises(InputError, match="missing load1"):
        score_series(model, cut)


def test_malformed_metadata_is_a_model_error(tmp_path, model):
    folder = save_model(tmp_path, model)
    meta = json.loads((folder / "meta.json").read_text())
    del meta["columns"]
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="missing columns"):
        load_model(tmp_path, model.host)
