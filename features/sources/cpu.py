"""Host CPU, load and scheduler activity from ``/proc/stat`` and ``/proc/loadavg``.

CPU shares are computed over the CPU time the kernel actually gave this host: **steal is left
out of the denominator** (time the hypervisor ran someone else is not ours and says nothing about
what runs here), so ``cpu_percent = user + nice + system + irq + softirq = 100 - idle - iowait``
and the busy/idle shares add up to 100 even on a noisy cloud neighbour. ``guest`` and
``guest_nice`` are already included in ``user`` and ``nice`` by the kernel and are not added again.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from minerwatch.features.rates import NAN, rate, share_percent
from minerwatch.features.sources.base import DEFAULT_PROC_ROOT, Clock, ProcSource


@dataclass(frozen=True)
class CpuTimes:
    """Aggregate CPU time counters from the ``cpu`` line of ``/proc/stat``, in ticks."""

    user: int
    nice: int
    system: int
    idle: int
    iowait: int = 0
    irq: int = 0
    softirq: int = 0
    steal: int = 0

    @property
    def accounted(self) -> int:
        """Ticks this host had (everything except steal)."""
        return (
            self.user + self.nice + self.system + self.idle + self.iowait + self.irq + self.softirq
        )


@dataclass(frozen=True)
class ProcStat:
    """The parts of ``/proc/stat`` the collector uses."""

    cpu: CpuTimes
    ctxt: int
    procs_running: int


@dataclass(frozen=True)
class LoadAvg:
    """``/proc/loadavg``: three load averages and the runnable/total task counts."""

    load1: float
    load5: float
    load15: float
    running: int
    total: int


_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def parse_proc_stat(text: str) -> ProcStat:
    """Parse ``/proc/stat`` text; ValueError if the aggregate ``cpu`` line or a count is missing.

    >>> s = parse_proc_stat("cpu  10 2 5 80 3 0 0 0 0 0\\nctxt 99\\nprocs_running 2\\n")
    >>> s.cpu.user, s.cpu.idle, s.ctxt, s.procs_running
    (10, 80, 99, 2)
    """
    cpu: CpuTimes | None = None
    ctxt: int | None = None
    running: int | None = None
    for line in text.splitlines():
        key, _, rest = line.partition(" ")
        if key == "cpu":
            values = [int(v) for v in rest.split()]
            if len(values) < 4:
                raise ValueError(f"/proc/stat cpu line has {len(values)} fields, expected >= 4")
            cpu = CpuTimes(**dict(zip(_CPU_FIELDS, values, strict=False)))
        elif key == "ctxt":
            ctxt = int(rest)
        elif key == "procs_running":
            running = int(rest)
    if cpu is None or ctxt is None or running is None:
        missing = [
            n for n, v in (("cpu", cpu), ("ctxt", ctxt), ("procs_running", running)) if v is None
        ]
        raise ValueError(f"/proc/stat lacks {', '.join(missing)}")
    return ProcStat(cpu=cpu, ctxt=ctxt, procs_running=running)


def parse_loadavg(text: str) -> LoadAvg:
    """Parse ``/proc/loadavg`` ("0.04 0.13 0.07 1/93 5605").

    >>> parse_loadavg("0.04 0.13 0.07 1/93 5605\\n")
    LoadAvg(load1=0.04, load5=0.13, load15=0.07, running=1, total=93)
    """
    fields = text.split()
    if len(fields) < 4 or "/" not in fields[3]:
        raise ValueError(f"/proc/loadavg: expected 'l1 l5 l15 running/total ...', got {text!r}")
    running, _, total = fields[3].partition("/")
    return LoadAvg(float(fields[0]), float(fields[1]), float(fields[2]), int(running), int(total))


def cpu_shares(prev: CpuTimes, cur: CpuTimes) -> dict[str, float]:
    """Percent of the host's CPU time spent busy, in user, in system and in iowait.

    All NaN when no tick elapsed or a counter went backwards (CPU hot-unplug, reboot).

    >>> cpu_shares(CpuTimes(0, 0, 0, 0), CpuTimes(30, 10, 10, 40, 10, 0, 0, 999))
    {'cpu_percent': 50.0, 'cpu_user_percent': 40.0, 'cpu_system_percent': 10.0, \
'cpu_iowait_percent': 10.0}
    """
    deltas = {f: getattr(cur, f) - getattr(prev, f) for f in _CPU_FIELDS}
    total = cur.accounted - prev.accounted
    if total <= 0 or any(d < 0 for d in deltas.values()):
        return dict.fromkeys(CpuSource.columns[:4], NAN)
    user = deltas["user"] + deltas["nice"]
    system = deltas["system"] + deltas["irq"] + deltas["softirq"]
    return {
        "cpu_percent": share_percent(user + system, total),
        "cpu_user_percent": share_percent(user, total),
        "cpu_system_percent": share_percent(system, total),
        "cpu_iowait_percent": share_percent(deltas["iowait"], total),
    }


class CpuSource(ProcSource):
    """CPU shares, 1-minute load, runnable tasks and context switches per second.

    ``procs_running`` is the kernel's count of runnable *tasks* (threads), which is what reveals
    a multi-threaded miner whose main thread sleeps. The first read primes the counters and
    returns NaN for the CPU shares and ``ctx_switches_ps``.
    """

    name: ClassVar[str] = "cpu"
    columns: ClassVar[tuple[str, ...]] = (
        "cpu_percent",
        "cpu_user_percent",
        "cpu_system_percent",
        "cpu_iowait_percent",
        "load1",
        "procs_running",
        "ctx_switches_ps",
    )

    def __init__(
        self, *, proc_root: str | Path = DEFAULT_PROC_ROOT, clock: Clock = time.monotonic
    ) -> None:
        super().__init__(proc_root=proc_root, clock=clock)
        self._prev: ProcStat | None = None
        self._prev_t = math.nan

    def read(self) -> dict[str, float]:
        """Read both files and return this interval's values."""
        stat = parse_proc_stat(self._read_text("stat"))
        now = self.clock()
        load = parse_loadavg(self._read_text("loadavg"))
        prev, prev_t = self._prev, self._prev_t
        self._prev, self._prev_t = stat, now
        out: dict[str, float] = {
            "load1": load.load1,
            "procs_running": float(stat.procs_running),
        }
        if prev is None:
            out.update(dict.fromkeys(self.columns[:4], NAN))
            out["ctx_switches_ps"] = NAN
        else:
            out.update(cpu_shares(prev.cpu, stat.cpu))
            out["ctx_switches_ps"] = rate(prev.ctxt, stat.ctxt, now - prev_t)
        return out
