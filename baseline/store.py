"""The model store: ``<models>/<host>/meta.json`` + ``model-<sha>.npz`` (arrays only, no pickle).

``meta.json`` is the commit point: the arrays are written first under a content-addressed
name, then the metadata naming them is replaced atomically, then stale array files go. A
crash at any point leaves the previous model or the new one, never a mix.

The whole model is signed, not only its arrays: ``meta.json`` carries the ``.npz``'s sha256
and a ``signature`` over the canonical form of every other metadata field (threshold, alert
rule, features, columns, schema, window, host...), so editing ``threshold`` to 0.01 (a flood)
or 1.0 (a host silenced) is refused like a changed array. The plain ``sha256`` signature
catches accidents and naive edits, but whoever can write the model folder can recompute it;
with a key file (``--model-key``), models also carry an HMAC-SHA256 and a host holding the
key loads only models signed with it, so a model trained centrally and copied to hosts cannot
be swapped by someone who can write the folder but not read the key. A host without the key
still loads HMAC-signed models through their plain hash.

Loading reads each file once and checks, before anything is used: ownership and permissions
(no path others can write), the signature (HMAC when a key is given), the sha256 of the
arrays, every metadata field's type, the host, the telemetry and feature schema, the arrays'
dtypes and structure (``allow_pickle=False``, stored zip members, tree links that cannot
loop), and that the model scores a neutral row to a number in [0, 1]. Anything else is a
:class:`ModelError` naming the file.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import math
import os
import platform
import re
import stat
import time
import zipfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from minerwatch.baseline.explain import derived_names
from minerwatch.baseline.fitted import VECTORS, HostModel
from minerwatch.features.atomic import atomic_write
from minerwatch.features.errors import InputError
from minerwatch.features.extract import feature_names
from minerwatch.features.schema import READABLE_VERSIONS, SCHEMA_VERSION

#: 2: ``meta.json`` is signed as a whole (``signature``); 1 signed only the arrays.
FORMAT_VERSION = 2
META = "meta.json"
SIGNATURE = "signature"
#: A key shorter than this is refused: HMAC is only as strong as its key.
MIN_KEY_BYTES = 16
#: Far above any real metadata (a few KB); a bigger file is not read into memory.
MAX_META_BYTES = 1 << 20
#: Windows overlapping any one point; far above any sensible hop (a window's 1 %).
MAX_HOPS_PER_WINDOW = 1000
_MODEL_FILE = re.compile(r"model-[0-9a-f]{16}\.npz")
#: What to do about a model that cannot be used: train it again ('minerwatch train', or the
#: agent learns anew when its own model is refused).
_RETRAIN = "retrain it"


class ModelError(InputError):
    """A model that cannot be trusted or used; the CLI maps it to exit code 2."""


def host_dirname(host: str) -> str:
    """A file-system-safe, reversible folder name for a host (no traversal, no separators)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", lambda m: f"%{ord(m.group()):02X}", host)
    return safe if safe not in ("", ".", "..") else "%" + safe.encode().hex()


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for dist in ("minerwatch", "scikit-learn"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


# -- signing ---------------------------------------------------------------------------------------


def canonical(meta: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: the metadata without its signature as compact, key-sorted,
    ASCII JSON. Python's float repr round-trips, so parsing ``meta.json`` and dumping it again
    gives the same bytes whatever the file's layout.

    >>> canonical({"b": 1.5, "a": "é", "signature": {}})
    b'{"a":"\\\\u00e9","b":1.5}'
    """
    body = {k: v for k, v in meta.items() if k != SIGNATURE}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign(meta: Mapping[str, Any], key: bytes | None = None) -> dict[str, str]:
    """The ``signature`` field for ``meta``: a sha256 always, an HMAC-SHA256 with a key."""
    data = canonical(meta)
    out = {"sha256": hashlib.sha256(data).hexdigest()}
    if key is not None:
        out["hmac_sha256"] = hmac.new(key, data, hashlib.sha256).hexdigest()
    return out


def read_key(path: Path) -> bytes:
    """The model key (the file's raw bytes), refused unless only its owner (you or root) can
    read or write it: a key others can read signs their models too.

    Make one with ``head -c 32 /dev/urandom > FILE && chmod 600 FILE``.
    """
    where = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a FIFO must not block
    except OSError as exc:
        got = "a symbolic link" if os.path.islink(path) else exc.strerror or str(exc)
        raise InputError(where, None, "a readable model key file", got) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise InputError(where, None, "a regular model key file", "something else")
    with os.fdopen(fd, "rb") as fh:
        if st.st_uid not in (os.getuid(), 0):
            raise InputError(where, None, "a key file owned by you or root", f"uid {st.st_uid}")
        if st.st_mode & 0o077:
            raise InputError(
                where,
                None,
                "a key file only its owner can read or write (chmod 600)",
                f"mode {stat.filemode(st.st_mode)}",
            )
        key = fh.read(1 << 16)
    if len(key) < MIN_KEY_BYTES:
        raise InputError(
            where,
            None,
            f"a key of at least {MIN_KEY_BYTES} bytes (head -c 32 /dev/urandom > FILE)",
            f"{len(key)} bytes",
        )
    return key


# -- saving ----------------------------------------------------------------------------------------


def save_model(models_dir: Path, model: HostModel, key: bytes | None = None) -> Path:
    """Write one host's model atomically, signed (with an HMAC too when ``key`` is given);
    returns its folder."""
    folder = Path(models_dir) / host_dirname(model.host)
    folder.mkdir(parents=True, exist_ok=True, mode=0o755)
    buf = io.BytesIO()
    arrays: dict[str, Any] = model.to_arrays()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    name = f"model-{digest[:16]}.npz"
    fields: dict[str, Any] = {
        **model.meta,
        "format_version": FORMAT_VERSION,
        "schema_version": SCHEMA_VERSION,
        **model.params(),
        "model_file": name,
        "sha256": digest,
        "versions": _versions(),
        "created_at": time.time(),
    }
    fields.pop(SIGNATURE, None)  # a loaded model's meta carries the old one
    # signed as it will be read back: JSON types only (tuples become lists, and so on)
    meta: dict[str, Any] = json.loads(json.dumps(fields))
    meta[SIGNATURE] = sign(meta, key)
    atomic_write(folder / name, data)
    atomic_write(folder / META, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    for stale in folder.glob("model-*.npz"):
        if stale.name != name:
            stale.unlink(missing_ok=True)
    return folder


# -- loading ---------------------------------------------------------------------------------------


def check_trusted(path: Path) -> None:
    """Refuse files or folders that another user could have written."""
    st = path.stat()
    if st.st_uid not in (os.getuid(), 0):
        raise ModelError(str(path), None, "owned by you or root", f"owned by uid {st.st_uid}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not (
        stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
    ):
        raise ModelError(
            str(path), None, "not writable by group or others", f"mode {stat.filemode(st.st_mode)}"
        )


def list_hosts(models_dir: Path, since: float | None = None) -> list[str]:
    """Hosts with a model in ``models_dir`` (read from their metadata, not verified); with
    ``since``, only those saved at or after it (what a run interrupted has on disk, also the
    model saved just before the interruption, which the run may not have counted yet)."""
    hosts = (meta_host(meta, since) for meta in sorted(Path(models_dir).glob(f"*/{META}")))
    return [host for host in hosts if host is not None]


def meta_host(meta: Path, since: float | None = None) -> str | None:
    """The host a model's ``meta.json`` names (not verified); None if it cannot be read, or
    with ``since``, if it says it was saved before then (whole seconds)."""
    try:
        doc = json.loads(meta.read_bytes()[:MAX_META_BYTES])
        if since is not None and float(doc["created_at"]) < int(since):
            return None
        return str(doc["host"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None


def saved_since(
    models_dir: Path, hosts: list[str], since: float, key: bytes | None = None
) -> list[str]:
    """The hosts whose model in ``models_dir`` is whole and verified (as scoring loads it)
    and was saved at or after ``since`` (whole seconds): what a run interrupted after that
    time already trained (``--skip-trained-since``). Any other host is to be trained."""
    recent = []
    for host in hosts:
        try:
            model = load_model(models_dir, host, key=key)
        except ModelError:
            continue
        if float(model.meta.get("created_at", 0.0)) >= int(since):
            recent.append(host)
    return recent


def load_model(models_dir: Path, host: str, key: bytes | None = None) -> HostModel:
    """Load and verify one host's model; raises :class:`ModelError` with the reason.

    With ``key``, only a model carrying a valid HMAC made with that key is accepted; without,
    the plain sha256 signature must match.
    """
    folder = Path(models_dir) / host_dirname(host)
    meta_path = folder / META
    where = str(meta_path)
    if not meta_path.is_file():
        raise ModelError(where, None, f"a trained model for host {host!r}", "none")
    for path in (Path(models_dir), folder, meta_path):
        check_trusted(path)
    meta = _read_meta(meta_path)
    _verify_signature(meta, meta_path, key)
    _check_fields(meta, where)
    if meta["host"] != host:
        raise ModelError(
            where, None, f"a model for host {host!r}", f"one for {meta['host']!r} (copied?)"
        )
    columns = tuple(meta["columns"])
    expected = feature_names(columns)
    if tuple(meta["feature_names"]) != expected:
        raise ModelError(
            where,
            None,
            f"features {list(expected)} of this version",
            f"{meta['feature_names']} ({_RETRAIN})",
        )
    model_path = folder / meta["model_file"]
    if not model_path.is_file():
        raise ModelError(str(model_path), None, "the model file named in meta.json", "missing")
    check_trusted(model_path)
    data = model_path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if not hmac.compare_digest(digest, meta["sha256"]):
        raise ModelError(
            str(model_path),
            None,
            f"sha256 {meta['sha256']} as signed in meta.json",
            f"{digest} (the file was modified after training; {_RETRAIN})",
        )
    arrays = _read_arrays(data, str(model_path))
    try:
        model = HostModel.from_parts(arrays, meta)
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise ModelError(
            str(model_path), None, "consistent model arrays", f"{type(exc).__name__}: {exc}"
        ) from None
    _check_structure(model, str(model_path))
    return model


def _read_meta(path: Path) -> dict[str, Any]:
    where = str(path)
    with path.open("rb") as fh:
        raw = fh.read(MAX_META_BYTES + 1)
    if len(raw) > MAX_META_BYTES:
        raise ModelError(where, None, f"model metadata under {MAX_META_BYTES} bytes", "more")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelError(where, None, "UTF-8 JSON", f"byte 0x{raw[exc.start]:02x}") from None
    except ValueError as exc:
        raise ModelError(where, getattr(exc, "lineno", None), "valid JSON", str(exc)) from None
    except RecursionError:
        raise ModelError(where, None, "valid JSON", "nesting too deep") from None
    if not isinstance(meta, dict):
        raise ModelError(where, None, "a JSON object of model metadata", type(meta).__name__)
    return meta


def _verify_signature(meta: dict[str, Any], path: Path, key: bytes | None) -> None:
    """The whole metadata (hence the arrays' sha256) is what training wrote, or refuse."""
    where = str(path)
    version, signature = meta.get("format_version"), meta.get(SIGNATURE)
    if version != FORMAT_VERSION or not isinstance(signature, dict):
        raise ModelError(
            where,
            None,
            f"a signed model (format {FORMAT_VERSION})",
            f"format {version!r}{'' if isinstance(signature, dict) else ', unsigned'}"
            f" (written by another minerwatch version; {_RETRAIN})",
        )
    modified = f"a mismatch: {path.name} was modified after training (restore it or {_RETRAIN})"
    expected = sign(meta, key)
    if key is not None:
        got = signature.get("hmac_sha256")
        if not isinstance(got, str):
            raise ModelError(
                where, None, "a model signed with the model key (HMAC-SHA256)", "no HMAC"
            )
        if not hmac.compare_digest(got, expected["hmac_sha256"]):
            raise ModelError(
                where,
                None,
                "an HMAC-SHA256 made with the model key",
                "a mismatch: signed with another key, or modified after training",
            )
        return
    got = signature.get("sha256")
    if not isinstance(got, str) or not hmac.compare_digest(got, expected["sha256"]):
        raise ModelError(where, None, "a signature that matches the model's metadata", modified)


def _is_number(v: Any, positive: bool = False) -> bool:
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    return ok and (not positive or v > 0)


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1_000_000


def _is_names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


#: Every field the loader uses, with the check its value must pass (even when signed: a
#: signature says who wrote a model, not that the writer made no mistake).
_FIELDS: dict[str, tuple[str, Any]] = {
    "host": ("a string", lambda v: isinstance(v, str)),
    "columns": ("a list of column names", _is_names),
    "feature_names": ("a list of feature names", _is_names),
    "derived_names": ("a list of feature names", _is_names),
    "window": ("a positive number of seconds", lambda v: _is_number(v, positive=True)),
    "hop": ("a positive number of seconds", lambda v: _is_number(v, positive=True)),
    "threshold": ("a number from 0 to 1", lambda v: _is_number(v) and 0 <= v <= 1),
    "alert_windows": ("a whole number of windows, at least 1", _is_count),
    "clear_windows": ("a whole number of windows, at least 1", _is_count),
    "sustain_windows": ("a whole number of windows, at least 1", _is_count),
    "alert_margin": ("a number, at least 0", lambda v: _is_number(v) and v >= 0),
    "heavy_work": ("a number, at least 0", lambda v: _is_number(v) and v >= 0),
    "fast_windows": ("a whole number of windows, at least 1", _is_count),
    "fast_margin": ("a number, at least 0", lambda v: _is_number(v) and v >= 0),
    "excess_scale": ("a positive number", lambda v: _is_number(v, positive=True)),
    "model_file": ("a file name model-<16 hex>.npz", lambda v: isinstance(v, str)),
    "sha256": ("a sha256 in hex", lambda v: isinstance(v, str)),
    "schema_version": (
        f"telemetry schema {' or '.join(map(str, READABLE_VERSIONS))}",
        lambda v: v in READABLE_VERSIONS,
    ),
}


#: Fields models saved by earlier versions lack (their loader's defaults keep the old rule).
_OPTIONAL = frozenset(
    {
        "derived_names",
        "sustain_windows",
        "alert_margin",
        "heavy_work",
        "fast_windows",
        "fast_margin",
    }
)


def _check_fields(meta: dict[str, Any], where: str) -> None:
    missing = [k for k in _FIELDS if k not in meta and k not in _OPTIONAL]
    if missing:
        raise ModelError(where, None, "model metadata", f"missing {', '.join(missing)}")
    meta.setdefault("derived_names", [])
    for name, (expected, ok) in _FIELDS.items():
        if name not in meta:  # an optional field a model saved before it lacks
            continue
        value = meta[name]
        if not ok(value):
            retrain = f" ({_RETRAIN})" if name == "schema_version" else ""
            raise ModelError(where, None, f"{name} to be {expected}", f"{value!r:.80}{retrain}")
    if not _MODEL_FILE.fullmatch(meta["model_file"]):
        raise ModelError(
            where, None, "model_file to be model-<16 hex>.npz", f"{meta['model_file']!r:.80}"
        )
    if not re.fullmatch(r"[0-9a-f]{64}", meta["sha256"]):
        raise ModelError(where, None, "sha256 to be 64 hex digits", f"{meta['sha256']!r:.80}")
    window, hop = meta["window"], meta["hop"]
    if not window / MAX_HOPS_PER_WINDOW <= hop <= window:  # scoring loops window/hop times
        raise ModelError(
            where, None, f"window/{MAX_HOPS_PER_WINDOW} <= hop <= window ({window:g})", f"{hop!r}"
        )


#: Arrays allowed to hold text (see :meth:`ProcessBaseline.to_arrays`).
TEXT_ARRAYS = frozenset({"procs_identities"})


def _read_arrays(data: bytes, where: str) -> dict[str, np.ndarray]:
    """Numeric arrays from ``.npz`` bytes; nothing a pickle or a zip bomb could hide in."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                if info.compress_type != zipfile.ZIP_STORED or info.file_size > len(data):
                    raise ModelError(where, None, "uncompressed .npy members", info.filename)
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise ModelError(where, None, "a numpy .npz file", f"{type(exc).__name__}: {exc}") from None
    # the process baseline's identities are the one text array: fixed-width unicode, which
    # numpy loads without pickle
    bad = [
        k
        for k, v in arrays.items()
        if v.dtype.kind not in "biuf" and not (k in TEXT_ARRAYS and v.dtype.kind == "U")
    ]
    if bad:
        raise ModelError(where, None, "numeric arrays", f"{', '.join(sorted(bad))} are not")
    return arrays


def _check_structure(model: HostModel, where: str) -> None:
    """Indices inside their arrays and tree links that only go forward, so scoring can
    neither read out of bounds nor loop; then one neutral row must score in [0, 1]."""
    f = model.forest
    n_nodes = f.left.shape[1]
    node = np.arange(n_nodes)[None, :]
    internal = f.left >= 0
    problems = []
    if f.n_trees < 1 or n_nodes < 1 or f.max_samples < 1 or f.n_features < 1:
        problems.append("an empty forest")
    elif (
        (internal & ((f.left <= node) | (f.right <= node) | (f.right >= n_nodes))).any()
        or (f.left >= n_nodes).any()
        or (internal & ((f.feature < 0) | (f.feature >= f.n_features))).any()
    ):
        problems.append("tree links or features out of range")
    if model.forest_columns is not None:
        cols = model.forest_columns
        if cols.ndim != 1 or ((cols < 0) | (cols >= len(model.feature_names))).any():
            problems.append("forest columns out of range")
    e = model.explainer
    explainer_arrays: list[np.ndarray] = []
    if e is not None:
        explainer_arrays = [v for v in vars(e).values() if isinstance(v, np.ndarray)]
        n, t = model.n_base, len(e.names)
        k = e.inputs.shape[0] if e.inputs.ndim == 1 else -1
        per_input = (e.in_center, e.in_scale, e.in_low, e.in_high)
        shapes_ok = (
            k >= 0
            and e.targets.shape == (t,)
            and all(a.shape == (k,) for a in per_input)
            and e.coef.shape == (t, k + 1)
            and e.resid_scale.shape == (t,)
        )
        if not shapes_ok:
            problems.append("explainer arrays of the wrong shape")
        elif not all(((a >= 0) & (a < n)).all() for a in (e.targets, e.inputs)):
            problems.append("explainer indices out of range")
        elif e.names != derived_names(model.feature_names[:n], e.targets):
            problems.append("derived_names that do not match the explainer's targets")
    lr = model.lowrank
    if lr is not None and ((lr.columns < 0) | (lr.columns >= model.n_base)).any():
        problems.append("low-rank columns out of range")
    floats = [getattr(model, v) for v in VECTORS] + [f.path_length, f.threshold]
    floats += [] if lr is None else [lr.center, lr.scale, lr.mean, lr.components]
    floats += [a for a in explainer_arrays if a.dtype.kind == "f"]
    if not all(np.isfinite(a).all() for a in floats):
        problems.append("non-finite numbers")
    if not problems:
        try:
            with np.errstate(all="ignore"):
                probe = model.score(np.asarray(model.center[None, : model.n_base]))
        except (ValueError, IndexError, TypeError) as exc:
            problems.append(f"a neutral window failing to score ({exc})")
        else:
            if probe.shape != (1,) or not 0.0 <= float(probe[0]) <= 1.0:
                problems.append(f"a neutral window scoring {probe.tolist()}")
    if problems:
        raise ModelError(where, None, "a consistent model", "; ".join(problems))
