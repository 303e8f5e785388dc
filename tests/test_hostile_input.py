"""Hostile input everywhere minerwatch reads a file: telemetry, the TOML config, the web config,
the model store and the history database.

Property: every random, truncated or mutated file is either accepted or refused with
:class:`InputError` (the CLI's exit 2) whose message names the file; never another exception,
never a hang, never a partial write. A few cases also run through the real ``minerwatch``
command to show exit 2 and no traceback. ``docs/reliability.md`` ("Hostile input") lists what
is tried here and the outcome.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from entry import ENTRY, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from promtools import free_port
from synth import T0, host_series, write_csv

from minerwatch.baseline.store import ModelError, load_model, save_model, sign
from minerwatch.baseline.train import train_host
from minerwatch.features.errors import InputError
from minerwatch.features.io import read_telemetry
from minerwatch.features.procs import ProcessRows, write_procs_csv
from minerwatch.features.schema import AGENT_COLUMNS
from minerwatch.service.config import OPTIONS, AgentConfig, dump_config, load_config, toml_value
from minerwatch.service.history import History
from minerwatch.service.webconfig import load_web_config

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "deploy" / "minerwatch.toml"

FUZZ = settings(
    max_examples=int(os.environ.get("MINERWATCH_FUZZ_EXAMPLES", "60")),  # more when hunting
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def verdict(read: Callable[[], Any], path: Path, errors: tuple[type[Exception], ...] = ()) -> Any:
    """``read()``'s value when the file is accepted, None when it is refused as it must be:
    an InputError (exit 2) whose message names ``path``. Anything else fails the test."""
    try:
        return read()
    except InputError as exc:
        assert str(path) in str(exc), exc
        assert "\n" not in str(exc).strip() or str(path) in str(exc).splitlines()[0], exc
        return None


@st.composite
def damaged(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` truncated, with bytes flipped, inserted, deleted or overwritten."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "overwrite"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "truncate":
            del data[at:]
        elif op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        else:
            chunk = draw(st.binary(min_size=1, max_size=32))
            data[at : at + len(chunk)] = chunk
    return bytes(data)


#: Values of any TOML type a user could write, including the awkward ones.
toml_scalars = st.one_of(
    st.integers(-(2**53), 2**53),  # sizes above 2**53 bytes print rounded (service/units.py)
    # 0 < |x| < 1e-3 and |x| > 1e15 print with an exponent: see test_config_extreme_durations
    st.floats(-1e15, 1e15).filter(lambda x: x == 0 or abs(x) >= 1e-3),
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.booleans(),
    st.text(max_size=30),
    st.sampled_from(
        ["10s", "0s", "-1s", "1e400s", "1h30m", "256MiB", "0B", "auto", "", " x", "::"]
    ),
)
toml_values = st.one_of(toml_scalars, st.lists(toml_scalars, max_size=3))


def assert_refused(r: subprocess.CompletedProcess[str], path: Path) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and str(path) in r.stderr, r.stderr


# -- the TOML config -------------------------------------------------------------------------------


def check_config(data: bytes) -> AgentConfig | None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "minerwatch.toml"
        path.write_bytes(data)
        cfg = verdict(lambda: load_config(path), path)
        if cfg is not None:  # what is accepted is shown back as TOML that reads the same
            again = Path(d) / "again.toml"
            again.write_text(dump_config(cfg))
            assert load_config(again) == cfg
        return cfg


@FUZZ
@given(st.binary(max_size=600))
def test_config_random_bytes(data):
    check_config(data)


@FUZZ
@given(damaged(SHIPPED.read_bytes()))
def test_config_damaged_example(data):
    check_config(data)


_KEYS = [(s, k) for s, opts in OPTIONS.items() for k in opts]


@FUZZ
@given(st.sampled_from(_KEYS), toml_values, st.sampled_from(["", "\n[agent]\n", "\nx = 1\n"]))
def test_config_field_mutation(key, value, tail):
    """The shipped file with one option set to a value of any type (and maybe more after)."""
    section, name = key
    text = SHIPPED.read_text()
    head = text.index(f"[{section}]")
    pattern = re.compile(rf"^(# )?{name} = .*$", re.M)
    m = pattern.search(text, head)
    assert m is not None
    text = text[: m.start()] + f"{name} = {toml_value(value)}" + text[m.end() :] + tail
    check_config(text.encode())


@pytest.mark.parametrize(("key", "value"), [("interval", 1e306), ("retrain_every", 7.8e-191)])
def test_config_extreme_durations(key, value):
    check_config(f"[agent]\n{key} = {value!r}\n".encode())


def test_config_long_lines_do_not_hang():
    """A header-like line of spaces inside a multi-line string once took minutes to scan."""
    spaces = " " * 20000
    t0 = time.perf_counter()
    assert check_config(f'[agent]\nhost = """\n[{spaces}\n"""\n'.encode()) is None
    assert check_config(f"[{spaces}".encode()) is None
    assert time.perf_counter() - t0 < 5


def test_config_check_command_refuses_hostile_files(tmp_path):
    cases = {
        "binary.toml": os.urandom(64) + b"\xff",
        "truncated.toml": SHIPPED.read_bytes().split(b'interval = "10s"')[0] + b'interval = "1',
        "utf16.toml": SHIPPED.read_text().encode("utf-16"),
        "mutated.toml": SHIPPED.read_bytes().replace(b'interval = "10s"', b"interval = [1, 2]"),
        "nested.toml": b"a = " + b"[" * 5000 + b"]" * 5000,
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        r = run("config", "check", path)
        assert_refused(r, path)
        assert r.stdout == ""


# -- the web config --------------------------------------------------------------------------------

WEB = b"""\
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_ca_file: "ca.crt"
  client_auth_type: RequireAndVerifyClientCert
  min_version: TLS12
basic_auth_users:
  prometheus: $2y$10$abcdefghijklmnopqrstuuNd0xZqXU3dkHYQ/J7Zt7b2cDN.1wOlW
"""


def check_web(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "web.yml"
        path.write_bytes(data)
        cfg = verdict(lambda: load_web_config(path), path)
        if cfg is not None:  # what the exporter does next with it: same contract
            verdict(cfg.ssl_context, path)
            verdict(cfg.authenticator, path)


@FUZZ
@given(st.binary(max_size=400))
def test_web_config_random_bytes(data):
    check_web(data)


@FUZZ
@given(st.text(alphabet=st.sampled_from(list("ab: '\"#\\-\t\n{}[]~$\x00é")), max_size=120))
def test_web_config_yaml_like_text(text):
    check_web(text.encode())


@FUZZ
@given(damaged(WEB))
def test_web_config_damaged(data):
    check_web(data)


@FUZZ
@given(
    st.sampled_from(
        ["cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version", "prometheus"]
    ),
    st.text(max_size=40),
)
def test_web_config_field_mutation(key, value):
    lines = WEB.decode().splitlines()
    i = next(n for n, line in enumerate(lines) if line.strip().startswith(f"{key}:"))
    lines[i] = f"  {key}: {value}"
    check_web("\n".join(lines).encode())


# -- the model store -------------------------------------------------------------------------------


class Stored(tuple):
    """(models folder, meta.json bytes, .npz name, .npz bytes), shown briefly in reports."""

    def __repr__(self) -> str:
        return f"Stored({self[0]})"


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """One saved model."""
    model = train_host(host_series(days=1.5, seed=3), params={"n_estimators": 10})
    models = tmp_path_factory.mktemp("models")
    folder = save_model(models, model)
    npz = next(folder.glob("model-*.npz"))
    return Stored((models, (folder / "meta.json").read_bytes(), npz.name, npz.read_bytes()))


TODAY = host_series(days=0.1, seed=4, start=T0 + 2 * 86400)


def check_model(stored, meta: bytes | None = None, npz: bytes | None = None, resign=False) -> None:
    """Replace meta.json and/or the .npz (re-signing them, as a writer without a key could)
    and load: refused by a ModelError naming a file of the model, or a model that scores."""
    models, meta0, npz_name, npz0 = stored
    with tempfile.TemporaryDirectory() as d:
        copy = Path(d) / "models"
        shutil.copytree(models, copy)
        folder = copy / "web-1"
        npz_bytes = npz0 if npz is None else npz
        meta_bytes = meta0 if meta is None else meta
        if resign:
            meta_doc = json.loads(meta_bytes)
            if npz is not None:
                digest = hashlib.sha256(npz_bytes).hexdigest()
                (folder / npz_name).unlink()
                npz_name = f"model-{digest[:16]}.npz"
                meta_doc.update(model_file=npz_name, sha256=digest)
            meta_doc["signature"] = sign(meta_doc)
            meta_bytes = json.dumps(meta_doc).encode()
        (folder / "meta.json").write_bytes(meta_bytes)
        (folder / npz_name).write_bytes(npz_bytes)
        before = sorted(p.name for p in folder.iterdir())
        try:
            model = load_model(copy, "web-1")
        except ModelError as exc:
            assert str(folder) in str(exc), exc
            model = None
        assert sorted(p.name for p in folder.iterdir()) == before  # loading writes nothing
        if model is not None:
            from minerwatch.baseline.batch import score_series

            with np.errstate(all="ignore"):
                res = verdict(lambda: score_series(model, TODAY), Path(TODAY.source))
            if res is not None:
                assert np.all((res.score >= 0) & (res.score <= 1)), res.score


@FUZZ
@given(st.binary(max_size=300))
def test_store_random_meta(stored, data):
    check_model(stored, meta=data)


@FUZZ
@given(st.data())
def test_store_damaged_meta_and_npz(stored, data):
    _, meta, _, npz = stored
    which = data.draw(st.sampled_from(["meta", "npz"]))
    if which == "meta":
        check_model(stored, meta=data.draw(damaged(meta)))
    else:
        check_model(stored, npz=data.draw(damaged(npz)))


@FUZZ
@given(st.data())
def test_store_meta_field_mutation_even_when_resigned(stored, data):
    """Any field set to a value of any JSON type: refused as modified; re-signed (no key in
    use), refused by the field checks or loaded as a model that scores in [0, 1]."""
    meta = json.loads(stored[1])
    field = data.draw(st.sampled_from(sorted(meta) + ["new_field"]))
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=6,
    )
    value = data.draw(
        json_values | st.just(meta.get(field)) | st.sampled_from([0.0, 1.0, -1, 2.0, "1", []])
    )
    if data.draw(st.booleans()):
        meta.pop(field, None)
    else:
        meta[field] = value
    check_model(stored, meta=json.dumps(meta).encode(), resign=data.draw(st.booleans()))


@FUZZ
@given(st.data())
def test_store_array_mutation_resigned(stored, data):
    """One array replaced by another of any numeric dtype and shape, or values scrambled, then
    re-signed: the structure checks refuse it, or the model still scores in [0, 1]."""
    with np.load(io.BytesIO(stored[3])) as f:
        arrays = {k: f[k] for k in f.files}
    name = data.draw(st.sampled_from(sorted(arrays)))
    old = arrays[name]
    how = data.draw(st.sampled_from(["values", "shape", "dtype", "drop", "text"]))
    if how == "values" and old.size:
        flat = old.astype(np.float64).ravel().copy()
        i = data.draw(st.integers(0, flat.size - 1))
        flat[i] = data.draw(st.sampled_from([np.nan, np.inf, -1.0, 1e300, 0.0, float(flat.size)]))
        with np.errstate(invalid="ignore"):  # NaN or inf into an integer array: garbage
            arrays[name] = flat.reshape(old.shape).astype(old.dtype)
    elif how == "shape":
        arrays[name] = np.zeros(data.draw(st.lists(st.integers(0, 4), max_size=3)))
    elif how == "dtype":
        arrays[name] = old.astype(data.draw(st.sampled_from([np.int8, np.float16, np.bool_])))
    elif how == "drop":
        del arrays[name]
    else:
        arrays[name] = np.array(["x"] * max(old.size, 1))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    check_model(stored, npz=buf.getvalue(), resign=True)


def test_store_special_npz_contents(stored):
    """A pickled object array, a compressed member, and plain .npy instead of .npz."""
    with np.load(io.BytesIO(stored[3])) as f:
        arrays = {k: f[k] for k in f.files}
    cases = []
    buf = io.BytesIO()
    np.savez(buf, **{**arrays, "center": np.array([object()], dtype=object)})
    cases.append(buf.getvalue())
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    cases.append(buf.getvalue())
    buf = io.BytesIO()
    np.save(buf, arrays["center"])
    cases.append(buf.getvalue())
    for data in cases:
        check_model(stored, npz=data, resign=True)


def test_score_command_refuses_hostile_models(stored, tmp_path):
    models, meta, npz_name, npz = stored
    csv_path = tmp_path / "today.csv"
    write_csv(csv_path, [TODAY])
    for what, path_name, data in [
        ("meta", "meta.json", os.urandom(200)),
        ("meta", "meta.json", meta[: len(meta) // 2]),
        ("npz", npz_name, npz[: len(npz) // 2]),
    ]:
        copy = tmp_path / f"models-{what}-{len(data)}"
        shutil.copytree(models, copy)
        (copy / "web-1" / path_name).write_bytes(data)
        out = tmp_path / "scores.csv"
        r = run("score", csv_path, "--models", copy, "--output", out)
        assert_refused(r, copy / "web-1" / path_name)
        assert not out.exists() and not list(tmp_path.glob(".scores.csv*"))


# -- the history database --------------------------------------------------------------------------


class Blob(bytes):
    def __repr__(self) -> str:
        return f"<{len(self)} bytes>"


@pytest.fixture(scope="module")
def history_bytes(tmp_path_factory) -> bytes:
    """A real history.db with samples and windows, checkpointed into one file."""
    path = tmp_path_factory.mktemp("hist") / "history.db"
    h = History(path, clock=lambda: T0 + 1000)
    for i in range(50):
        h.add_sample(T0 + 10 * i, {"cpu_percent": float(i), "load1": 0.5})
    h.add_window(T0, T0 + 60, 0.9, 0.5, True)
    h.close()
    return Blob(path.read_bytes())


def check_history(data: bytes | None, setup: Callable[[sqlite3.Connection], None] | None = None):
    """Open a hostile history.db as the agent does and use it: never an exception; the file
    is used, moved aside, or (unusable) the store keeps data in memory."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "state" / "history.db"
        path.parent.mkdir(mode=0o700)
        if data is not None:
            path.write_bytes(data)
        if setup is not None:
            conn = sqlite3.connect(path, isolation_level=None)
            setup(conn)
            conn.close()
        now = T0 + 2000
        h = History(path, clock=lambda: now)
        try:
            h.add_sample(now, {"cpu_percent": 5.0})
            h.add_window(now - 60, now, 0.1, 0.5, False)
            ts, values = h.samples()
            assert values.shape == (len(ts), len(AGENT_COLUMNS))
            assert np.all(np.isfinite(ts)) and now in ts
            assert not np.isinf(values).any()
            for w in h.windows():
                assert all(isinstance(x, float) and math.isfinite(x) for x in w[:2])
            h.alerted_windows()
            assert h.span_seconds() >= 0 and h.count() >= 1
            h.prune()
        finally:
            h.close()
        aside = list(path.parent.glob("history.db.corrupt-*"))
        if aside or h.degraded is None:
            # moved aside, or used: either way a database the agent can read again
            again = History(path, clock=lambda: now)
            assert again.degraded is None, again.degraded
            assert now in again.samples()[0]
            again.close()


@FUZZ
@given(st.binary(max_size=2000))
def test_history_random_bytes(data):
    check_history(data)


@FUZZ
@given(st.data())
def test_history_damaged_database(history_bytes, data):
    check_history(data.draw(damaged(history_bytes)))


def test_history_whose_check_reports_bytes_that_are_not_utf8(history_bytes):
    """A byte flipped in the schema's text: SQLite's quick_check names the bad statement in
    its answer, bytes and all, and reading that answer raised UnicodeDecodeError, not a
    database error: the agent could not start (found by the fuzz test above)."""
    assert b"NOT NULL, end" in history_bytes
    check_history(history_bytes.replace(b"NOT NULL, end", b"NOT \xceULL, end", 1))


_SQL_VALUES = st.one_of(
    st.none(),
    st.floats(allow_nan=True),
    st.integers(-(2**63), 2**63 - 1),
    st.text(max_size=8),
    st.binary(max_size=8),
)


@FUZZ
@given(st.lists(st.tuples(_SQL_VALUES, _SQL_VALUES, _SQL_VALUES), min_size=1, max_size=5))
def test_history_hostile_rows(history_bytes, rows):
    """Rows SQLite's dynamic typing lets in: text, blobs, NULLs where numbers belong."""

    def setup(conn: sqlite3.Connection) -> None:
        for ts, cpu, alert in rows:
            for sql, values in [
                ('INSERT INTO samples (ts, "cpu_percent") VALUES (?, ?)', (ts, cpu)),
                ("INSERT INTO windows VALUES (?, ?, ?, ?, ?)", (cpu, ts, alert, cpu, alert)),
            ]:
                try:
                    conn.execute(sql, values)
                except sqlite3.IntegrityError:  # NULL where the schema says NOT NULL
                    pass

    check_history(history_bytes, setup)


@pytest.mark.parametrize(
    "schema",
    [
        "CREATE TABLE samples (x TEXT)",
        "CREATE TABLE samples (ts REAL); CREATE TABLE windows (a, b)",
        "CREATE VIEW samples AS SELECT 1 AS ts",
        "CREATE TABLE windows (window_start, window_end, score, threshold, alert, extra)",
        "CREATE TABLE other (a); CREATE TRIGGER t AFTER INSERT ON other BEGIN SELECT 1; END",
    ],
)
def test_history_foreign_schema(schema):
    check_history(None, lambda conn: conn.executescript(schema))


def test_agent_moves_a_garbage_history_aside_and_starts_fresh(tmp_path):
    (tmp_path / "history.db").write_bytes(os.urandom(4096))
    port = free_port()
    proc = subprocess.Popen(
        [*ENTRY, "serve", "--data-dir", str(tmp_path), "--port", str(port),
         "--address", "127.0.0.1", "--interval", "1s", "--window", "3s", "--learn-for", "1h",
         "--host", "hostile"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while _count(tmp_path / "history.db") < 2:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "moved aside" in out
    assert len(list(tmp_path.glob("history.db.corrupt-*"))) == 1


def _count(path: Path) -> int:
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


# -- telemetry files -------------------------------------------------------------------------------


def _csv_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.csv"
        a = host_series("web-1", days=0.01, interval=30, seed=1)
        b = host_series("db-1", days=0.01, interval=30, seed=2)
        write_csv(path, [a, b])
        return path.read_bytes()


CSV = _csv_bytes()


def check_telemetry(data: bytes, suffix: str = ".csv") -> None:
    """Accepted as series with the documented guarantees, or refused naming the file."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"telemetry{suffix}"
        path.write_bytes(data)
        fleet = verdict(lambda: read_telemetry([path]), path)
        for host, s in (fleet or {}).items():
            assert isinstance(host, str) and s.host == host
            assert s.values.shape == (len(s.timestamps), len(s.columns))
            assert np.all(np.diff(s.timestamps) > 0), "sorted, duplicates dropped"
            assert np.all(np.isfinite(s.timestamps))
            assert not np.isinf(s.values).any(), "non-finite values become NaN"


@FUZZ
@given(st.binary(max_size=500))
def test_telemetry_random_bytes(data):
    check_telemetry(data)


@FUZZ
@given(st.binary(max_size=300))
def test_telemetry_random_parquet(data):
    check_telemetry(data, ".parquet")


@FUZZ
@given(damaged(CSV))
def test_telemetry_damaged_csv(data):
    check_telemetry(data)


def _procs_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.procs.csv"
        ts = host_series("web-1", days=0.01, interval=30, seed=1).timestamps
        n = len(ts)
        rows = ProcessRows.from_lists(
            ts,
            range(n),
            ['we"b, 1'] * n,
            ["/srv/app/bin/app (deleted)"] * n,
            ["app"] * n,
            [5.0] * n,
        )
        write_procs_csv(path, "web-1", rows)
        return path.read_bytes()


PROCS = _procs_bytes()


def check_procs(data: bytes, suffix: str = ".procs.csv") -> None:
    """A process table beside good samples: read with them, or refused naming the file."""
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "t.csv").write_bytes(CSV)
        path = Path(d) / f"t{suffix}"
        path.write_bytes(data)
        fleet = verdict(lambda: read_telemetry([d]), path)
        for s in (fleet or {}).values():
            if s.procs is not None:
                n = len(s.procs)
                assert all(len(a) == n for a in vars(s.procs).values() if a is not None)
                assert np.all(np.isfinite(s.procs.timestamps))
                assert np.all(np.diff(s.procs.timestamps) >= 0), "sorted by time"


@FUZZ
@given(st.binary(max_size=500))
def test_process_table_random_bytes(data):
    check_procs(data)


@FUZZ
@given(st.binary(max_size=300))
def test_process_table_random_parquet(data):
    check_procs(data, ".procs.parquet")


@FUZZ
@given(damaged(PROCS))
def test_process_table_damaged_csv(data):
    check_procs(data)


_CELLS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        ["", "nan", "NaN", "inf", "-inf", "1e400", "True", "0x10", "1_000", " 5 ", '"5"', "1,2"]
    ),
    st.floats().map(repr),
)


@FUZZ
@given(st.data())
def test_telemetry_cell_and_header_mutation(data):
    lines = CSV.decode().splitlines()
    row = data.draw(st.integers(0, len(lines) - 1))
    cells = lines[row].split(",")
    col = data.draw(st.integers(0, len(cells) - 1))
    cells[col] = data.draw(_CELLS)
    lines[row] = ",".join(cells)
    if data.draw(st.booleans()):
        del lines[data.draw(st.integers(0, len(lines) - 1))]
    check_telemetry(("\n".join(lines) + "\n").encode())


def test_score_command_refuses_hostile_telemetry(stored, tmp_path):
    models = stored[0]
    cases = {
        "binary.csv": os.urandom(300),
        "truncated.csv": CSV[: len(CSV) // 3] + b"\x00\xff",
        "header.csv": CSV.replace(b"timestamp", b"time", 1),
        "cell.csv": CSV.replace(b"web-1,", b"web-1,abc,", 1),
        "fake.parquet": b"PAR1" + os.urandom(100),
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        out = tmp_path / "scores.csv"
        r = run("score", path, "--models", models, "--output", out)
        assert_refused(r, path)
        assert not out.exists() and not list(tmp_path.glob(".scores.csv*"))
