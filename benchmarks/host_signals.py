"""Cost of the agent's host signals per tick: listening ports, SSH log, log folder scan.

    python -m minerwatch.bench.host_signals                 # this host's /var/log, 200 ticks
    python -m minerwatch.bench.host_signals --log-files 1000  # a made-up folder of 1000 logs
    python -m minerwatch.bench.host_signals --json

Times :meth:`HostSignals.tick` on this machine as the agent runs it: listening sockets
through netlink, the real log folder (``--log-dir``, default ``/var/log``) scanned every
tick, and a temporary auth log that gets ``--lines`` sshd lines appended before each tick
(a brute force of that many attempts per interval). Reports the median and 95th percentile
wall and CPU time per tick, the CPU share of one core at the agent's default 10 s interval
(the agent's whole budget is 0.25 %), and the peak memory the reading added.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from minerwatch.service.hostsignals import HostSignals, scan_logs

INTERVAL_S = 10.0


def measure(log_dir: Path, ticks: int, lines: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        auth = Path(tmp) / "auth.log"
        auth.write_text("")
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        signals = HostSignals(
            Path(tmp),
            learn_for=0.0,  # scored from the first tick, as after learning
            event_log=None,
            host="bench",
            clock=time.time,
            auth_log=auth,
            log_dir=log_dir,
            journal=False,
        )
        line = (
            "Dec  3 11:00:00 h sshd[{}]: Failed password for root from 203.0.113.{} port 4 ssh2\n"
        )
        signals.tick(time.time())  # opens the log at its end, takes the first folder scan
        wall: list[float] = []
        cpu: list[float] = []
        for i in range(ticks):
            with auth.open("a") as fh:
                fh.writelines(line.format(i, n % 250) for n in range(lines))
            w0, c0 = time.perf_counter(), time.process_time()
            signals.tick(time.time())
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
        signals.close()
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert signals.failed_total == ticks * lines, "every attempt must be counted"
    q = statistics.quantiles(cpu, n=20)
    return {
        "ticks": ticks,
        "log_dir": str(log_dir),
        "log_files": len(scan_logs(log_dir)),
        "ssh_lines_per_tick": lines,
        "wall_ms_median": round(statistics.median(wall) * 1e3, 3),
        "cpu_ms_median": round(statistics.median(cpu) * 1e3, 3),
        "cpu_ms_p95": round(q[18] * 1e3, 3),
        "cpu_percent_of_core_at_10s": round(statistics.median(cpu) / INTERVAL_S * 100, 4),
        "peak_rss_added_kib": rss1 - rss0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log-dir", type=Path, default=Path("/var/log"))
    parser.add_argument("--ticks", type=int, default=200)
    parser.add_argument("--lines", type=int, default=50, help="sshd lines appended per tick")
    parser.add_argument(
        "--log-files", type=int, default=0, help="scan a made-up folder of this many logs instead"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.getLogger("minerwatch.hostsignals").setLevel(logging.ERROR)  # this host's ports
    if args.log_files:
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.log_files):
                folder = Path(tmp) / f"app{i % 20}"
                folder.mkdir(exist_ok=True)
                (folder / f"log{i}.log").write_bytes(b"x" * 100)
            result = measure(Path(tmp), args.ticks, args.lines)
    else:
        result = measure(args.log_dir, args.ticks, args.lines)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for key, value in result.items():
            print(f"{key:28} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
