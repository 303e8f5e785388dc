"""Fleet training in parallel: joblib processes and a real Dask LocalCluster, same models."""

import numpy as np
import pytest
from synth import host_series, write_csv

from minerwatch.baseline.store import list_hosts, load_model
from minerwatch.baseline.train import train_all


@pytest.fixture(scope="module")
def fleet_csv(tmp_path_factory):
    d = tmp_path_factory.mktemp("fleet")
    write_csv(
        d / "fleet.csv", [host_series(f"h{i}", days=1, interval=30, seed=i) for i in range(3)]
    )
    bad = d / "bad.csv"
    write_csv(bad, [host_series("tiny", days=0.01, interval=30, seed=9)])
    return d


def test_joblib_and_dask_train_the_same_models(fleet_csv, tmp_path):
    errors = {}
    progress = []
    a = train_all(
        [fleet_csv],
        tmp_path / "joblib",
        n_jobs=2,
        on_error=lambda h, e: errors.setdefault(h, str(e)),
        progress=lambda done, total, host: progress.append((done, total)),
    )
    assert [r.host for r in a] == ["h0", "h1", "h2"]
    assert "tiny" in errors and "at least" in errors["tiny"]  # reported, not fatal
    assert progress[-1] == (4, 4)
    pytest.importorskip("dask.distributed")
    b = train_all([fleet_csv], tmp_path / "dask", dask_address="local", on_error=lambda h, e: None)
    assert [r.host for r in b] == ["h0", "h1", "h2"]
    assert sorted(list_hosts(tmp_path / "dask")) == ["h0", "h1", "h2"]
    for host in ("h0", "h1", "h2"):
        ma, mb = load_model(tmp_path / "joblib", host), load_model(tmp_path / "dask", host)
        assert ma.threshold == mb.threshold  # same seed, same data: identical models
        np.testing.assert_array_equal(ma.forest.threshold, mb.forest.threshold)
