"""The model store: round trips, whole-model signatures, the key file, and tampering caught
through the real ``minerwatch train`` / ``score`` commands."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from entry import ENTRY, run
from synth import T0, host_series, write_csv

from minerwatch.baseline.batch import score_series
from minerwatch.baseline.store import (
    FORMAT_VERSION,
    ModelError,
    host_dirname,
    list_hosts,
    load_model,
    read_key,
    save_model,
    sign,
)
from minerwatch.baseline.train import train_host
from minerwatch.features.errors import InputError


@pytest.fixture(scope="module")
def model():
    return train_host(host_series(days=2, seed=3), params={"n_estimators": 30})


def make_key(path: Path, data: bytes | None = None, mode: int = 0o600) -> Path:
    path.write_bytes(os.urandom(32) if data is None else data)
    os.chmod(path, mode)
    return path


def edit_meta(folder: Path, **changes) -> dict:
    """Change fields of meta.json as an editor would, leaving the signature as it was."""
    meta = json.loads((folder / "meta.json").read_text())
    meta.update(changes)
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


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
        "signature",
    ):
        assert key in meta
    assert meta["format_version"] == FORMAT_VERSION
    assert set(meta["signature"]) == {"sha256"}  # no key, no HMAC
    # a loaded model saves again (its old signature is not carried into the new one)
    save_model(tmp_path, again)
    assert load_model(tmp_path, model.host).threshold == model.threshold


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


@pytest.mark.parametrize(
    "changes",
    [
        {"threshold": 0.01},  # every window alerts
        {"threshold": 1.0},  # the host is silenced
        {"alert_windows": 1000},
        {"clear_windows": 1},
        {"excess_scale": 1e9},
        {"window": 30.0},
        {"hop": 120.0},
        {"columns": ["cpu_percent"]},
        {"feature_names": ["cpu_now"]},
        {"schema_version": 1},  # same value as an int: the layout changes nothing
        {"windows": 10**6},
        {"created_at": 0.0},
        {"sha256": "0" * 64},
        {"injected": "field"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_any_edited_metadata_field_is_refused(tmp_path, model, changes):
    folder = save_model(tmp_path, model)
    before = json.loads((folder / "meta.json").read_text())
    edit_meta(folder, **changes)
    after = json.loads((folder / "meta.json").read_text())
    if {k: after[k] for k in changes} == {k: before.get(k) for k in changes}:
        load_model(tmp_path, model.host)  # no real change (schema_version 1 -> 1): accepted
        return
    with pytest.raises(ModelError, match=r"meta.json was modified after training") as err:
        load_model(tmp_path, model.host)
    assert err.value.path == str(folder / "meta.json")


def test_layout_of_meta_json_does_not_matter(tmp_path, model):
    folder = save_model(tmp_path, model)
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps(dict(reversed(meta.items()))))  # one line
    assert load_model(tmp_path, model.host).threshold == model.threshold


def test_tampered_arrays_are_refused(tmp_path, model):
    folder = save_model(tmp_path, model)
    npz = next(folder.glob("model-*.npz"))
    data = bytearray(npz.read_bytes())
    data[-40] ^= 0xFF
    npz.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256.*was modified after training") as err:
        load_model(tmp_path, model.host)
    assert err.value.path == str(npz)


def test_old_unsigned_models_are_refused_with_retrain(tmp_path, model):
    folder = save_model(tmp_path, model)
    meta = json.loads((folder / "meta.json").read_text())
    del meta["signature"]
    meta["format_version"] = 1
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"signed model \(format 2\), got format 1, unsigned.*"):
        load_model(tmp_path, model.host)
    with pytest.raises(ModelError, match="retrain it"):
        load_model(tmp_path, model.host)


def test_model_copied_from_another_host_is_refused(tmp_path, model):
    folder = save_model(tmp_path, model)
    shutil.copytree(folder, tmp_path / "db-7")
    with pytest.raises(ModelError, match="a model for host 'db-7', got one for 'web-1'"):
        load_model(tmp_path, "db-7")


def test_hmac_signed_models(tmp_path, model):
    key = read_key(make_key(tmp_path / "model.key"))
    other = read_key(make_key(tmp_path / "other.key"))
    models = tmp_path / "models"
    folder = save_model(models, model, key=key)
    assert set(json.loads((folder / "meta.json").read_text())["signature"]) == {
        "sha256",
        "hmac_sha256",
    }
    assert load_model(models, model.host, key=key).threshold == model.threshold
    # without the key an HMAC-signed model still loads through its plain hash
    assert load_model(models, model.host).threshold == model.threshold
    with pytest.raises(ModelError, match="signed with another key, or modified"):
        load_model(models, model.host, key=other)
    # someone who can write the folder but not read the key: edits and re-signs the sha256
    meta = edit_meta(folder, threshold=1.0)
    meta["signature"] = {"sha256": sign(meta)["sha256"]}
    (folder / "meta.json").write_text(json.dumps(meta))
    load_model(models, model.host)  # a host without the key cannot tell: the trade-off
    with pytest.raises(ModelError, match="signed with the model key .HMAC-SHA256., got no HMAC"):
        load_model(models, model.host, key=key)
    # or keeps the old HMAC next to the edited field
    save_model(models, model, key=key)
    edit_meta(folder, threshold=1.0)
    with pytest.raises(ModelError, match="signed with another key, or modified"):
        load_model(models, model.host, key=key)


@pytest.mark.parametrize(
    ("data", "mode", "message"),
    [
        (None, 0o640, "only its owner can read or write"),
        (None, 0o604, "only its owner can read or write"),
        (None, 0o620, "only its owner can read or write"),
        (b"short", 0o600, "at least 16 bytes"),
        (b"", 0o400, "at least 16 bytes"),
    ],
)
def test_bad_key_files_are_refused(tmp_path, data, mode, message):
    path = make_key(tmp_path / "model.key", data, mode)
    with pytest.raises(InputError, match=message) as err:
        read_key(path)
    assert err.value.path == str(path)


def test_key_file_that_is_missing_a_folder_or_a_link(tmp_path):
    with pytest.raises(InputError, match="readable model key file"):
        read_key(tmp_path / "none.key")
    with pytest.raises(InputError, match="regular model key file"):
        read_key(tmp_path)
    target = make_key(tmp_path / "real.key")
    (tmp_path / "link.key").symlink_to(target)
    with pytest.raises(InputError, match="symbolic link"):
        read_key(tmp_path / "link.key")
    assert len(read_key(target)) == 32


def test_signed_but_looping_trees_are_refused_not_hung(tmp_path, model):
    """A writer who re-signs (no key in use) still cannot make scoring loop or read out of
    bounds: the structure is checked after the signature."""
    import io

    folder = save_model(tmp_path, model)
    npz = next(folder.glob("model-*.npz"))
    with np.load(npz) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["forest_left"] = arrays["forest_left"].copy()
    arrays["forest_left"][0, 0] = 0  # the root is its own left child
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    resign_arrays(folder, buf.getvalue())
    with pytest.raises(ModelError, match="tree links or features out of range"):
        load_model(tmp_path, model.host)


def resign_arrays(folder: Path, data: bytes) -> None:
    import hashlib

    for old in folder.glob("model-*.npz"):
        old.unlink()
    digest = hashlib.sha256(data).hexdigest()
    name = f"model-{digest[:16]}.npz"
    (folder / name).write_bytes(data)
    meta = json.loads((folder / "meta.json").read_text())
    meta.update(model_file=name, sha256=digest)
    meta["signature"] = sign(meta)
    (folder / "meta.json").write_text(json.dumps(meta))


def test_schema_mismatch_is_refused_even_when_signed(tmp_path, model):
    folder = save_model(tmp_path, model)
    meta = json.loads((folder / "meta.json").read_text())
    meta["feature_names"] = meta["feature_names"][:-1]
    meta["signature"] = sign(meta)
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="retrain it"):
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
    meta["signature"] = sign(meta)  # signed by a buggy writer: still refused, by name
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="missing columns"):
        load_model(tmp_path, model.host)


# -- through the real command ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def signed_fleet(tmp_path_factory):
    """Models trained by ``minerwatch train --model-key`` and a day to score."""
    d = tmp_path_factory.mktemp("signed")
    write_csv(d / "train.csv", [host_series("web-1", days=2, interval=30, seed=1)])
    write_csv(
        d / "today.csv", [host_series("web-1", days=0.5, interval=30, seed=9, start=T0 + 2 * 86400)]
    )
    key = make_key(d / "model.key")
    r = run("train", d / "train.csv", "--models", d / "models", "--model-key", key)
    assert r.returncode == 0, r.stderr
    return d


@pytest.fixture
def copy(signed_fleet, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(signed_fleet / "models", models)
    return models


def test_score_with_the_right_key_works(signed_fleet, copy, tmp_path):
    out = tmp_path / "scores.csv"
    key = signed_fleet / "model.key"
    r = run(
        "score", signed_fleet / "today.csv", "--models", copy, "--output", out, "--model-key", key
    )
    assert r.returncode == 0, r.stderr
    assert len(out.read_text().splitlines()) > 100


def test_score_refuses_an_edited_threshold(signed_fleet, copy, tmp_path):
    edit_meta(copy / "web-1", threshold=0.01)
    for key_args in ([], ["--model-key", signed_fleet / "model.key"]):
        r = run(
            "score", signed_fleet / "today.csv", "--models", copy, "--output", tmp_path / "s.csv",
            *key_args,
        )  # fmt: skip
        assert r.returncode == 2, r.stderr
        assert f"{copy / 'web-1' / 'meta.json'}" in r.stderr and "modified" in r.stderr
        assert "Traceback" not in r.stderr


def test_score_refuses_a_wrong_key_and_a_bad_key_file(signed_fleet, copy, tmp_path):
    wrong = make_key(tmp_path / "wrong.key")
    r = run(
        "score", signed_fleet / "today.csv", "--models", copy, "--output", tmp_path / "s.csv",
        "--model-key", wrong,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "signed with another key" in r.stderr and "Traceback" not in r.stderr
    open_key = make_key(tmp_path / "open.key", mode=0o644)
    r = run(
        "score", signed_fleet / "today.csv", "--models", copy, "--output", tmp_path / "s.csv",
        "--model-key", open_key,
    )  # fmt: skip
    assert r.returncode == 2 and str(open_key) in r.stderr and "chmod 600" in r.stderr
    assert not (tmp_path / "s.csv").exists()
    r = run(
        "train", signed_fleet / "train.csv", "--models", tmp_path / "m", "--model-key", open_key
    )
    assert r.returncode == 2 and str(open_key) in r.stderr
    assert not (tmp_path / "m").exists()  # refused before any work


def _metrics(port: int) -> str | None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return r.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def _serve_with_key(data_dir: Path, key: Path) -> tuple[str, str]:
    """Run ``minerwatch serve --model-key`` until it has sampled; (metrics, log)."""
    import signal
    import time

    from promtools import free_port

    port = free_port()
    proc = subprocess.Popen(
        [*ENTRY, "serve", "--data-dir", str(data_dir), "--port", str(port),
         "--address", "127.0.0.1", "--interval", "1s", "--host", "web-1", "--model-key", str(key)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while (text := _metrics(port)) is None or not re.search(
            r"^minerwatch_samples_total [1-9]", text, re.M
        ):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in out, out
    return text, out


def test_agent_loads_only_models_signed_with_its_key(signed_fleet, tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    shutil.copytree(signed_fleet / "models", data / "models")
    text, _ = _serve_with_key(data, signed_fleet / "model.key")
    assert "minerwatch_model_info{" in text
    text, log = _serve_with_key(data, make_key(tmp_path / "wrong.key"))
    assert "minerwatch_model_info{" not in text
    assert (
        "cannot be used, relearning from the stored history" in log
        and "signed with another key" in log
    )


def test_agent_refuses_a_bad_key_file_at_start(tmp_path):
    key = make_key(tmp_path / "open.key", mode=0o644)
    r = run("serve", "--data-dir", tmp_path / "data", "--model-key", key, "--port", "0")
    assert r.returncode == 2 and str(key) in r.stderr and "Traceback" not in r.stderr


def test_alert_rule_fields_round_trip_and_older_models_keep_their_rule(tmp_path, model):
    from dataclasses import replace

    ruled = replace(
        model, sustain_windows=8, alert_margin=2.0, heavy_work=2.5, fast_windows=2, fast_margin=4.0
    )
    folder = save_model(tmp_path, ruled)
    meta = json.loads((folder / "meta.json").read_text())
    assert (meta["sustain_windows"], meta["alert_margin"], meta["heavy_work"]) == (8, 2.0, 2.5)
    assert (meta["fast_windows"], meta["fast_margin"]) == (2, 4.0)
    back = load_model(tmp_path, model.host)
    assert (back.sustain_windows, back.alert_margin, back.heavy_work) == (8, 2.0, 2.5)
    assert (back.alert_state().fast, back.alert_state().fast_margin) == (2, 4.0)
    busy = np.full((3, back.n_base), 1e9)  # every input, evidence of work too, far above
    assert back.heavy(busy).all()
    # saved before heavy work held the sustain and the fast path: neither
    for name in ("heavy_work", "fast_windows", "fast_margin"):
        del meta[name]
    meta["signature"] = sign(meta)
    (folder / "meta.json").write_text(json.dumps(meta))
    older = load_model(tmp_path, model.host)
    assert older.heavy_work == 0.0 and older.sustain_windows == 8
    assert older.fast_windows is None and older.alert_state().fast is None
    assert not older.heavy(busy).any()
    # a model saved before the fields (signed without them) loads with the k-window rule
    for name in ("sustain_windows", "alert_margin"):
        del meta[name]
    meta["signature"] = sign(meta)
    (folder / "meta.json").write_text(json.dumps(meta))
    old = load_model(tmp_path, model.host)
    assert old.sustain_windows is None and old.alert_state().sustain is None


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("sustain_windows", 0, "sustain_windows to be a whole number of windows, at least 1"),
        ("sustain_windows", "8", "sustain_windows to be a whole number of windows, at least 1"),
        ("alert_margin", -1.0, "alert_margin to be a number, at least 0"),
        ("heavy_work", "2", "heavy_work to be a number, at least 0"),
        ("fast_windows", 0, "fast_windows to be a whole number of windows, at least 1"),
        ("fast_margin", -4.0, "fast_margin to be a number, at least 0"),
    ],
)
def test_bad_alert_rule_fields_are_refused_by_name(tmp_path, model, field, value, expected):
    from dataclasses import replace

    folder = save_model(tmp_path, replace(model, sustain_windows=8, alert_margin=2.0))
    meta = json.loads((folder / "meta.json").read_text())
    meta[field] = value
    meta["signature"] = sign(meta)  # signed by a buggy writer: still refused, by name
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=re.escape(expected)):
        load_model(tmp_path, model.host)
