"""One way to write files that must never be seen half-written or lost: models, state,
journals, evidence, metrics for node_exporter, generated data."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO


def atomic_write(
    path: Path, data: bytes | str, mode: int = 0o644, owner: tuple[int, int] | None = None
) -> Path:
    """Write ``data`` to ``path`` atomically with permission bits ``mode`` (and ``owner``,
    (uid, gid), before it is seen: root writing into a service user's folder).

    A uniquely named temp file in the same folder (created 0600 and exclusively, so a planted
    symlink cannot redirect it) is written, fsynced, given ``mode``, renamed over ``path``,
    and the folder is fsynced: readers see the old file or the new one, and after a crash the
    rename has either happened or not. The temp name starts with ``.`` and ends in ``.tmp``,
    which globbing readers (node_exporter's ``*.prom``, the model store) skip.
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            if owner is not None:
                os.fchown(fh.fileno(), *owner)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _temp_beside(path: Path) -> tuple[int, str]:
    """A new temp file in ``path``'s folder (0600, exclusive), hidden and ``.tmp``; a failure
    is named as the caller gave ``path``, not as the temp file beside it."""
    try:
        return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None


def _fsync_folder(folder: Path) -> None:
    """Make the renames in ``folder`` survive a crash."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def stage(path: Path, write: Callable[[TextIO], object], mode: int = 0o644) -> Path:
    """A temp file beside ``path`` holding the UTF-8 text ``write`` wrote, fsynced, with
    ``mode``: to be moved over ``path`` by :func:`replace_together` with files that must change
    at the same moment (a host's samples and process table). Temp name as :func:`atomic_write`'s.

    Removed if writing fails, and the error names ``path`` (a write that fails with ENOSPC
    names no file, and the temp file's name means nothing to a user).
    """
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            write(fh)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno is None or exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def replace_together(moves: Sequence[tuple[Path, Path]], remove: Sequence[Path] = ()) -> None:
    """Remove each of ``remove``, then move each staged (temp, path) over its path, in order,
    and fsync the folders: a caller that must not be stopped between them defers stops around
    this (:func:`~minerwatch.service.terminate.stops_deferred`).

    A path that is a folder fails before anything changes (renaming over it would fail after
    the first move), naming it; a move refused otherwise (EPERM in a sticky folder, EIO)
    leaves the earlier ones done.
    """
    for _, path in moves:
        if Path(path).is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    for path in remove:
        Path(path).unlink(missing_ok=True)
    for tmp, path in moves:
        os.replace(tmp, path)
    for folder in {Path(p).parent for _, p in moves} | {Path(p).parent for p in remove}:
        _fsync_folder(folder)
