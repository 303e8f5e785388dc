"""The one interface every telemetry source implements.

Like node_exporter's collectors: each source is a small class that owns a fixed set of metric
columns and produces them in ``read()``. The collector calls every source once per sample; a
source that raises one of :data:`SOURCE_ERRORS` leaves its columns NaN and has its error counted,
and the other sources go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import psutil

#: A monotonic clock returning seconds; injectable so rate tests control time.
Clock = Callable[[], float]

#: Exceptions that mean "this source could not read this time" (file missing, unreadable or
#: unparsable, psutil refusing). Anything else is a bug and propagates.
SOURCE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, psutil.Error)

DEFAULT_PROC_ROOT = Path("/proc")


@runtime_checkable
class Source(Protocol):
    """A telemetry source: ``columns`` it owns, ``read()`` returning a value for each.

    ``read()`` may omit a column (it becomes NaN) and may return NaN for rates it cannot compute
    yet (the first reading only primes its counters).
    """

    name: ClassVar[str]
    columns: ClassVar[tuple[str, ...]]

    def read(self) -> dict[str, float]:
        """Read the source now and return ``{column: value}``."""
        ...


class ProcSource:
    """Base for sources that parse files under a ``/proc`` root with a monotonic clock.

    Both are constructor parameters so tests can point a source at a fake ``/proc`` tree and
    drive time by hand.
    """

    name: ClassVar[str] = ""
    columns: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, *, proc_root: str | Path = DEFAULT_PROC_ROOT, clock: Clock = time.monotonic
    ) -> None:
        self.proc_root = Path(proc_root)
        self.clock = clock

    def _read_text(self, *parts: str) -> str:
        """Read one ``/proc`` file as text (small files: one syscall-sized read)."""
        return self.proc_root.joinpath(*parts).read_text(encoding="ascii", errors="replace")
