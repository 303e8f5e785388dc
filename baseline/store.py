"""The model store: ``<models>/<host>/meta.json`` + ``model-<sha>.npz`` (arrays only, no pickle).

``meta.json`` is the commit point: the arrays are written first under a content-addressed
name, then the metadata naming them is replaced atomically, then stale array files go. A
crash at any point leaves the previous model or the new one, never a mix. Loading checks
ownership and permissions (no path others can write), the sha256, the telemetry schema and
the feature schema, and loads with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import re
import stat
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from minerwatch.baseline.fitted import HostModel
from minerwatch.features.atomic import atomic_write
from minerwatch.features.errors import InputError
from minerwatch.features.extract import feature_names
from minerwatch.features.schema import SCHEMA_VERSION

FORMAT_VERSION = 1
META = "meta.json"


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


def save_model(models_dir: Path, model: HostModel) -> Path:
    """Write one host's model atomically; returns its folder."""
    folder = Path(models_dir) / host_dirname(model.host)
    folder.mkdir(parents=True, exist_ok=True, mode=0o755)
    buf = io.BytesIO()
    arrays: dict[str, Any] = model.to_arrays()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    name = f"model-{digest[:16]}.npz"
    atomic_write(folder / name, data)
    meta: dict[str, Any] = {
        **model.meta,
        "format_version": FORMAT_VERSION,
        "schema_version": SCHEMA_VERSION,
        **model.params(),
        "model_file": name,
        "sha256": digest,
        "versions": _versions(),
        "created_at": time.time(),
    }
    atomic_write(folder / META, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    for stale in folder.glob("model-*.npz"):
        if stale.name != name:
            stale.unlink(missing_ok=True)
    return folder


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


def list_hosts(models_dir: Path) -> list[str]:
    """Hosts with a model in ``models_dir`` (read from their metadata)."""
    hosts = []
    for meta in sorted(Path(models_dir).glob(f"*/{META}")):
        try:
            hosts.append(str(json.loads(meta.read_text())["host"]))
        except (OSError, ValueError, KeyError):
            continue
    return hosts


def load_model(models_dir: Path, host: str) -> HostModel:
    """Load and verify one host's model; raises :class:`ModelError` with the reason."""
    folder = Path(models_dir) / host_dirname(host)
    meta_path = folder / META
    if not meta_path.is_file():
        raise ModelError(str(meta_path), None, f"a trained model for host {host!r}", "none")
    for path in (Path(models_dir), folder, meta_path):
        check_trusted(path)
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as exc:
        raise ModelError(
            str(meta_path), getattr(exc, "lineno", None), "valid JSON", str(exc)
        ) from None
    required = (
        "host",
        "columns",
        "feature_names",
        "window",
        "hop",
        "threshold",
        "alert_windows",
        "clear_windows",
        "excess_scale",
        "model_file",
        "sha256",
    )
    missing = [k for k in required if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise ModelError(str(meta_path), None, "model metadata", f"missing {', '.join(missing)}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            str(meta_path), None, f"model format {FORMAT_VERSION}", str(meta.get("format_version"))
        )
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ModelError(
            str(meta_path),
            None,
            f"telemetry schema {SCHEMA_VERSION}",
            f"{meta.get('schema_version')} (retrain the model)",
        )
    model_path = folder / str(meta.get("model_file", ""))
    if model_path.parent != folder or not model_path.is_file():
        raise ModelError(str(model_path), None, "the model file named in meta.json", "missing")
    check_trusted(model_path)
    data = model_path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta.get("sha256"):
        raise ModelError(
            str(model_path),
            None,
            f"sha256 {meta.get('sha256')}",
            f"{digest} (the file was modified; retrain)",
        )
    columns = tuple(meta["columns"])
    expected = feature_names(columns)
    if tuple(meta["feature_names"]) != expected:
        raise ModelError(
            str(meta_path),
            None,
            f"features {list(expected)} of this version",
            f"{meta['feature_names']} (retrain the model)",
        )
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    try:
        return HostModel.from_parts(arrays, meta)
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelError(
            str(model_path), None, "consistent model arrays", f"{type(exc).__name__}: {exc}"
        ) from None
