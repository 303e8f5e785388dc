"""Block device read/write throughput from ``/proc/diskstats``.

Only whole physical disks are summed: partitions, device-mapper/LVM, md RAID, loop, ram and zram
devices sit on top of (or beside) a physical disk, so adding them would count the same bytes
twice. Each disk gets its own rate (see :func:`minerwatch.features.rates.summed_rate`), so a
hot-plugged or removed disk does not produce a spike.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import ClassVar

from minerwatch.features.rates import NAN, summed_rate
from minerwatch.features.sources.base import DEFAULT_PROC_ROOT, Clock, ProcSource

#: ``/proc/diskstats`` always counts 512-byte sectors, whatever the device's sector size.
SECTOR_BYTES = 512

#: Devices that are not whole physical disks (partitions or virtual layers).
DEFAULT_IGNORE = re.compile(
    r"^(?:loop\d+|ram\d+|zram\d+|fd\d+|dm-\d+|md\d+|sr\d+"
    r"|(?:s|h|v|xv)d[a-z]+\d+|nvme\d+n\d+p\d+|nvme\d+c\d+n\d+|mmcblk\d+p\d+|mmcblk\d+boot\d+)$"
)


def parse_diskstats(text: str) -> dict[str, tuple[int, int]]:
    """Parse ``/proc/diskstats`` into ``{device: (bytes_read, bytes_written)}`` for all devices.

    >>> parse_diskstats(" 254 0 vda 30986 7512 2162722 4602 9609 25921 2982216 8588 0 3252 1\\n")
    {'vda': (1107313664, 1526894592)}
    """
    out: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 10:
            raise ValueError(f"/proc/diskstats: expected >= 10 fields, got {line!r}")
        out[fields[2]] = (int(fields[5]) * SECTOR_BYTES, int(fields[9]) * SECTOR_BYTES)
    return out


def physical_disks(
    stats: dict[str, tuple[int, int]], ignore: re.Pattern[str] = DEFAULT_IGNORE
) -> dict[str, tuple[int, int]]:
    """Keep only whole physical disks.

    >>> sorted(physical_disks({"sda": (1, 1), "sda1": (1, 1), "dm-0": (1, 1), "loop0": (0, 0)}))
    ['sda']
    """
    return {name: v for name, v in stats.items() if not ignore.match(name)}


class DiskSource(ProcSource):
    """``disk_read_bps`` and ``disk_write_bps`` over whole physical disks.

    The first read primes the counters and returns NaN.
    """

    name: ClassVar[str] = "disk"
    columns: ClassVar[tuple[str, ...]] = ("disk_read_bps", "disk_write_bps")

    def __init__(
        self,
        *,
        proc_root: str | Path = DEFAULT_PROC_ROOT,
        clock: Clock = time.monotonic,
        ignore: re.Pattern[str] = DEFAULT_IGNORE,
    ) -> None:
        super().__init__(proc_root=proc_root, clock=clock)
        self.ignore = ignore
        self._prev: dict[str, tuple[int, int]] | None = None
        self._prev_t = math.nan

    def read(self) -> dict[str, float]:
        """Read ``/proc/diskstats`` now and return the interval's byte rates."""
        cur = physical_disks(parse_diskstats(self._read_text("diskstats")), self.ignore)
        now = self.clock()
        prev, dt = self._prev, now - self._prev_t
        self._prev, self._prev_t = cur, now
        if prev is None:
            return {"disk_read_bps": NAN, "disk_write_bps": NAN}
        return {
            "disk_read_bps": summed_rate(_pick(prev, 0), _pick(cur, 0), dt),
            "disk_write_bps": summed_rate(_pick(prev, 1), _pick(cur, 1), dt),
        }


def _pick(counters: dict[str, tuple[int, int]], index: int) -> dict[str, float]:
    """One counter per disk, for :func:`minerwatch.features.rates.summed_rate`."""
    return {name: float(values[index]) for name, values in counters.items()}
