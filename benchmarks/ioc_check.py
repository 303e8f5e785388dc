"""Cost of the agent's ``--ioc-dir`` check on this machine: one check of every IOC file against
the live host (every process's binary hashed through ``/proc/PID/exe``, connections, cron and
unit files), first with nothing hashed yet, then with the agent's hash cache warm.

    python -m minerwatch.bench.ioc_check --files 8 --repeats 7

Prints one JSON object: the machine, how many processes the host ran, and the median (and
max) wall and CPU time of a cold and of a warm check. The IOC files are made up (random
hashes, paths that do not exist), so every check looks at everything and finds nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from minerwatch.service.ioc import IocWatcher


def _ioc(i: int) -> dict[str, Any]:
    return {
        "format": "minerwatch-ioc",
        "version": 1,
        "id": f"ioc-bench-{i}",
        "sha256": [secrets.token_hex(32) for _ in range(3)],
        "paths": [f"/nonexistent/bench-{i}/kx"],
        "pools": [f"203.0.113.{i % 250}:3333"],
        "cron_lines": [f"*/5 * * * * /nonexistent/bench-{i}/kx"],
        "units": [f"bench-{i}.service"],
    }


def _timed(watcher: IocWatcher) -> tuple[float, float]:
    cpu0, t0 = time.process_time(), time.perf_counter()
    watcher.check()
    return time.perf_counter() - t0, time.process_time() - cpu0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=8, help="IOC files in the folder")
    ap.add_argument("--repeats", type=int, default=7, help="checks of each kind")
    args = ap.parse_args(argv)
    cold: list[tuple[float, float]] = []
    warm: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i in range(args.files):
            (folder / f"{i:02d}.json").write_text(json.dumps(_ioc(i)))
        for _ in range(args.repeats):
            w = IocWatcher(folder, 0.0)  # a new watcher: nothing hashed yet
            cold.append(_timed(w))
            warm.append(_timed(w))
    doc = {
        "machine": {
            "nproc": os.cpu_count(),
            "python": sys.version.split()[0],
            "kernel": os.uname().release,
            "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        },
        "processes": len(psutil.pids()),
        "ioc_files": args.files,
        "repeats": args.repeats,
    }
    for name, runs in (("cold", cold), ("warm", warm)):
        doc[name] = {
            "wall_s_median": round(statistics.median(r[0] for r in runs), 3),
            "wall_s_max": round(max(r[0] for r in runs), 3),
            "cpu_s_median": round(statistics.median(r[1] for r in runs), 3),
        }
    print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
