"""One sampling pass on a host with many processes: is it still well under the interval?

    python -m minerwatch.bench.proc_scan --processes 10000 --passes 10

Times, on this host as it is and again with ``--processes`` more idle processes, the three
layers of the agent's sampling pass: ``ProcessTable.scan`` (one ``/proc/<pid>/stat`` read per
process), the processes source (the scan plus the details of the busiest few), and
``Collector.sample`` (every source: what the agent runs each tick). The extra processes are
sleepers forked by a helper that is the init of its own PID namespace (``unshare --pid``), so
killing it makes the kernel kill all of them; it needs root (or user namespaces). Prints
JSON: per layer the median, 90th percentile and maximum wall time in milliseconds over
``--passes`` passes (after one priming pass) and the median CPU time (on a busy machine the
wall time mostly waits for a core), the process count seen, the load average and the
machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from minerwatch.features.collector import Collector
from minerwatch.features.proctable import ProcessTable
from minerwatch.features.sources.processes import ProcessesSource

#: Forks ``n`` children that wait in pause(), says "ready", then waits itself.
_SLEEPERS = """
import os, signal, sys
for _ in range(int(sys.argv[1])):
    if os.fork() == 0:
        signal.pause()
        os._exit(0)
print("ready", flush=True)
signal.pause()
"""


class Sleepers:
    """``n`` idle processes in a PID namespace of their own; :meth:`close` ends them all."""

    def __init__(self, n: int) -> None:
        cmd = ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-S", "-c"]
        self.proc = subprocess.Popen(
            [*cmd, _SLEEPERS, str(n)], stdout=subprocess.PIPE, start_new_session=True
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"ready":
            self.close()
            raise RuntimeError(f"could not start {n} processes in a PID namespace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # the namespace's init dies: the kernel kills every sleeper
        self.proc.wait(timeout=60)


def _timed(fn: Callable[[], Any], passes: int, pause: float) -> dict[str, float]:
    """Median, p90 and max wall time of ``fn`` in ms, after one priming call, and its median
    CPU time (this process's user + system: what the pass costs whatever else runs)."""
    fn()
    took, cpu = [], []
    for _ in range(passes):
        time.sleep(pause)
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        took.append(1e3 * (time.perf_counter() - t0))
        cpu.append(1e3 * (time.process_time() - c0))
    took.sort()
    return {
        "median_ms": round(statistics.median(took), 1),
        "p90_ms": round(took[min(len(took) - 1, int(0.9 * len(took)))], 1),
        "max_ms": round(took[-1], 1),
        "cpu_median_ms": round(statistics.median(cpu), 1),
    }


def measure(passes: int, pause: float) -> dict[str, Any]:
    """The three layers of one sampling pass, on the host as it is now."""
    table, source, collector = ProcessTable(), ProcessesSource(), Collector(interval=1.0)
    seen = len(table.scan())
    return {
        "processes_seen": seen,
        "proc_table_scan": _timed(table.scan, passes, pause),
        "processes_source": _timed(source.read, passes, pause),
        "collector_sample": _timed(collector.sample, passes, pause),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=10_000, help="idle processes to add")
    parser.add_argument("--passes", type=int, default=10, help="timed passes per layer")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between passes")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"before": measure(args.passes, args.pause)}
    t0 = time.monotonic()
    sleepers = Sleepers(args.processes)
    try:
        report["spawn_s"] = round(time.monotonic() - t0, 1)
        report["with_extra"] = measure(args.passes, args.pause)
    finally:
        sleepers.close()
    report |= {
        "extra_processes": args.processes,
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "command": "python -m minerwatch.bench.proc_scan " + " ".join(sys.argv[1:]),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
