"""One way to write files that must never be seen half-written or lost: models, state,
journals, evidence, metrics for node_exporter, generated data."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically with permission bits ``mode``.

    A uniquely named temp file in the same folder (created 0600 and exclusively, so a planted
    symlink cannot redirect it) is written, fsynced, given ``mode``, renamed over ``path``,
    and the folder is fsynced: readers see the old file or the new one, and after a crash the
    rename has either happened or not. The temp name starts with ``.`` and ends in ``.tmp``,
    which globbing readers (node_exporter's ``*.prom``, the model store) skip.
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:  # named as the caller gave it, not as the temp file beside it
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path
