"""glibc's heap around one training task in a worker that Dask's nanny started.

Dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536`` (its default
``distributed.nanny.pre-spawn-environ``) so that idle workers hand memory back to the OS.
Setting a malloc threshold by environment also switches off glibc's *dynamic* mmap
threshold (mallopt(3), "M_MMAP_THRESHOLD"), so it stays at 128 KiB: every array a task
makes above that is a fresh ``mmap``, zero-filled page by page, and unmapped when freed. A
host-week's fit makes thousands of such arrays; measured with ``fleet train``, a task's CPU
doubled (see docs/benchmarks.md, "Dask's nanny and glibc's heap").

:func:`roomy_heap` lets glibc keep freed memory for the length of one task and restores the
worker's thresholds afterwards, then trims, so an idle worker holds what Dask expects. It does
nothing where the variable is not set (the agent, a plain ``train``) or off glibc. The
thresholds are the process's: in a worker running several tasks at once, the first to end
restores them for all (slower again, never wrong).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
GLIBC_MMAP_THRESHOLD = 128 * 1024  # DEFAULT_MMAP_THRESHOLD_MIN: where a fixed threshold starts
TASK_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TASK_TRIM_THRESHOLD = 256 * 1024 * 1024


@cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    # gnu_get_libc_version: glibc's alone (musl has mallopt as a no-op and no such function)
    if not all(hasattr(libc, f) for f in ("gnu_get_libc_version", "mallopt", "malloc_trim")):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


def _env_bytes(name: str) -> int | None:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return None


@contextmanager
def roomy_heap() -> Iterator[None]:
    """For the body, a heap that keeps freed memory when ``MALLOC_TRIM_THRESHOLD_`` pinned it."""
    trim = _env_bytes("MALLOC_TRIM_THRESHOLD_")
    libc = _glibc() if trim is not None else None
    if libc is None or trim is None:
        yield
        return
    mmap = _env_bytes("MALLOC_MMAP_THRESHOLD_") or GLIBC_MMAP_THRESHOLD
    libc.mallopt(M_MMAP_THRESHOLD, TASK_MMAP_THRESHOLD)
    libc.mallopt(M_TRIM_THRESHOLD, TASK_TRIM_THRESHOLD)
    try:
        yield
    finally:
        libc.mallopt(M_TRIM_THRESHOLD, trim)
        libc.mallopt(M_MMAP_THRESHOLD, mmap)
        libc.malloc_trim(0)
