"""Telemetry sources, one module each, all listed in :data:`SOURCES` (like node_exporter).

Every source class takes keyword-only constructor arguments with production defaults, at least
``clock`` (a monotonic clock for rates), so :func:`build_sources` can create them uniformly.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from minerwatch.features.sources.base import SOURCE_ERRORS, Clock, ProcSource, Source
from minerwatch.features.sources.cpu import CpuSource
from minerwatch.features.sources.disk import DiskSource
from minerwatch.features.sources.memory import MemorySource
from minerwatch.features.sources.network import NetworkSource
from minerwatch.features.sources.processes import ProcessesSource

#: The registration map: source name -> class. Order is the order sources are read.
SOURCES: dict[str, Callable[..., Source]] = {
    CpuSource.name: CpuSource,
    MemorySource.name: MemorySource,
    DiskSource.name: DiskSource,
    NetworkSource.name: NetworkSource,
    ProcessesSource.name: ProcessesSource,
}


def build_sources(clock: Clock = time.monotonic) -> dict[str, Source]:
    """One instance of every registered source, all sharing ``clock``."""
    return {name: cls(clock=clock) for name, cls in SOURCES.items()}


__all__ = [
    "SOURCES",
    "SOURCE_ERRORS",
    "Clock",
    "CpuSource",
    "DiskSource",
    "MemorySource",
    "NetworkSource",
    "ProcSource",
    "ProcessesSource",
    "Source",
    "build_sources",
]
