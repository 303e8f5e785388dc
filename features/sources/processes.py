"""Per-process CPU: process count, the busiest process, and who the busiest processes are.

One :meth:`ProcessTable.scan <minerwatch.features.proctable.ProcessTable.scan>` per sample
reads each process's start time and CPU seconds (one ``/proc/<pid>/stat`` read each). CPU
percent per process is the increase in its user+system seconds since the previous sample
divided by the interval, in percent of ONE core as ``top`` shows it (so up to
``100 * ncores``). Processes are keyed by ``(pid, start time)`` so a recycled pid never
inherits another process's counters. Processes that vanish or deny access are expected:
they are counted in :attr:`ProcessesSource.skipped`, never fatal.

Only the few busiest processes get the costlier look-ups (exe, user, cgroup, connections).
"""

from __future__ import annotations

import heapq
import math
from pathlib import Path
from typing import ClassVar

from minerwatch.features.procs import TOP_PROCESSES
from minerwatch.features.proctable import ProcessRecord, ProcessTable, boot_clock
from minerwatch.features.rates import NAN
from minerwatch.features.sources.base import DEFAULT_PROC_ROOT, Clock

#: Busiest processes using at least this much CPU (percent of one core) get their threads
#: read for garbage-collector time.
GC_MIN_CPU = 1.0


class ProcessesSource:
    """``procs_total``, ``top_proc_cpu_percent``, ``cpu_cores``; keeps :attr:`top` (the busiest
    processes, with their garbage-collector threads' CPU) and :attr:`visible_cpu_percent`.

    The first read primes per-process counters: ``top_proc_cpu_percent`` is NaN and ``top``
    empty. ``visible_cpu_percent`` is the summed CPU of all processes seen in both samples (or
    started in between), percent of the whole host; CPU of processes that started and exited
    between two samples is not in it, so a gap to the host's CPU is normal on fork-heavy hosts.
    """

    name: ClassVar[str] = "processes"
    columns: ClassVar[tuple[str, ...]] = ("procs_total", "top_proc_cpu_percent", "cpu_cores")

    def __init__(
        self,
        *,
        proc_root: str | Path = DEFAULT_PROC_ROOT,
        clock: Clock = boot_clock,
        top_n: int = TOP_PROCESSES,
        ports_min_cpu: float = 5.0,
        ncpu: int | None = None,
    ) -> None:
        #: The process-table reader; ``clock`` is its time base (see :class:`ProcessTable`).
        self.table = ProcessTable(proc_root, clock, ncpu=ncpu)
        self.top_n = top_n
        #: Connections are looked up only for top processes at least this busy (percent of one
        #: core): the busy ones are those explanations and miner indicators are about.
        self.ports_min_cpu = ports_min_cpu
        #: The busiest processes of the latest interval, busiest first (replaced atomically).
        self.top: tuple[ProcessRecord, ...] = ()
        #: CPU of all visible processes over the latest interval, percent of the whole host.
        self.visible_cpu_percent: float = NAN

    @property
    def skipped(self) -> dict[str, int]:
        """Cumulative counts of expected per-process failures (vanished, denied, zombie)."""
        return self.table.skipped

    def read(self) -> dict[str, float]:
        """Scan all processes once and return the interval's process metrics."""
        rows = self.table.scan()
        known = [r for r in rows if not math.isnan(r.cpu_percent)]
        total_cpu = sum(r.cpu_percent for r in known)
        # Clamped: tick rounding over short intervals can push the sum a little past 100.
        self.visible_cpu_percent = min(100.0, total_cpu / self.table.ncpu) if known else NAN
        leaders = heapq.nlargest(self.top_n, known, key=lambda r: r.cpu_percent)
        busy = self.ports_min_cpu
        self.top = tuple(
            self.table.describe(
                leaders,
                ports=lambda r: r.cpu_percent >= busy,
                gc=lambda r: r.cpu_percent >= GC_MIN_CPU,
            )
        )
        return {
            "procs_total": float(len(rows)),
            "top_proc_cpu_percent": max((r.cpu_percent for r in known), default=NAN),
            "cpu_cores": float(self.table.ncpu),
        }
