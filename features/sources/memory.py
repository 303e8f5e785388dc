"""Memory in use from ``/proc/meminfo``."""

from __future__ import annotations

from typing import ClassVar

from minerwatch.features.sources.base import ProcSource


def parse_meminfo(text: str) -> dict[str, int]:
    """Parse ``/proc/meminfo`` into ``{field: kibibytes}`` (unit-less fields kept as counts).

    >>> parse_meminfo("MemTotal:  1000 kB\\nMemAvailable:   250 kB\\nHugePages_Total: 0\\n")
    {'MemTotal': 1000, 'MemAvailable': 250, 'HugePages_Total': 0}
    """
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        fields = rest.split()
        if fields:
            out[key.strip()] = int(fields[0])
    return out


def mem_used_percent(meminfo: dict[str, int]) -> float:
    """Percent of memory in use, ``100 * (MemTotal - MemAvailable) / MemTotal``.

    ``MemAvailable`` (the kernel's estimate of memory obtainable without swapping) is what
    ``free`` and psutil use; page cache that can be dropped does not count as used.

    >>> mem_used_percent({"MemTotal": 1000, "MemAvailable": 250})
    75.0
    """
    total = meminfo.get("MemTotal", 0)
    if total <= 0 or "MemAvailable" not in meminfo:
        raise ValueError("/proc/meminfo lacks MemTotal or MemAvailable")
    used = total - meminfo["MemAvailable"]
    return min(100.0, max(0.0, 100.0 * used / total))


class MemorySource(ProcSource):
    """``mem_percent``: memory in use, percent of total."""

    name: ClassVar[str] = "memory"
    columns: ClassVar[tuple[str, ...]] = ("mem_percent",)

    def read(self) -> dict[str, float]:
        """Read ``/proc/meminfo`` now."""
        return {"mem_percent": mem_used_percent(parse_meminfo(self._read_text("meminfo")))}
