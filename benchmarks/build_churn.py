"""A real parallel C build under the real collector: how a build looks in the process table.

    python -m minerwatch.bench.build_churn SRC_DIR --jobs 2 --rounds 3 --interval 10s

Compiles every ``*.c`` under ``SRC_DIR`` (a real project's sources: the docs use the Brotli
library from its PyPI sdist, ``pip download --no-binary :all: --no-deps brotli``) with
``make -jJOBS``, ``--rounds`` times from clean, while ``minerwatch collect`` records this host
and its process table; then prints JSON: how many compiler, assembler and linker processes the
table listed, how long each stayed listed (its last sample's time minus its first), the
longest any build process stayed listed, and the share of the build's CPU the table shows.

The simulator assumes a build is many processes of seconds each (``simprocs.Procs._units``),
and the process baseline's 15-minute per-process floors rely on it: this checks the
assumption on one real build on this machine. Nothing here is timed for speed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from minerwatch.bench.public_data import machine_line
from minerwatch.service.units import parse_duration

#: Processes a gcc build runs per unit of work (driver, compiler, assembler, linker).
BUILD_NAMES = ("gcc", "cc", "cc1", "cc1plus", "as", "collect2", "ld")


def sources(src: Path) -> list[Path]:
    """The C files built: every one under ``src`` but those in a ``test`` folder."""
    return sorted(p for p in src.rglob("*.c") if "test" not in p.parts)


def makefile(src: Path, out: Path) -> str:
    """A Makefile with one explicit rule per source file and a shared library at the end."""
    headers = {p.parent for p in src.rglob("*.h")}
    includes = sorted({str(d) for d in headers} | {str(d) for d in src.rglob("include")})
    flags = " ".join(f"-I{d}" for d in includes)
    lines = [f"CFLAGS = -O2 -fPIC {flags}", f"all: {out}/liball.so"]
    objects = []
    for j, source in enumerate(sources(src)):
        obj = f"{out}/o{j}.o"
        objects.append(obj)
        lines += [f"{obj}: {source}", "\t$(CC) $(CFLAGS) -c -o $@ $<"]
    lines += [f"{out}/liball.so: {' '.join(objects)}", "\t$(CC) -shared -o $@ $^"]
    return "\n".join(lines) + "\n"


def lifetimes(table: Path) -> dict[str, list[float]]:
    """Per process name, how long each build process stayed listed (seconds)."""
    seen: dict[tuple[str, str], list[float]] = {}
    with table.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row["name"] in BUILD_NAMES:
                seen.setdefault((row["name"], row["pid"]), []).append(float(row["timestamp"]))
    out: dict[str, list[float]] = {}
    for (name, _), stamps in seen.items():
        out.setdefault(name, []).append(max(stamps) - min(stamps))
    return out


def listed_share(samples: Path, table: Path, start: float, end: float) -> float:
    """Build processes' CPU in the table over the host's busy CPU, samples inside the build."""
    busy = 0.0
    with samples.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if start < float(row["timestamp"]) <= end:
                busy += float(row["cpu_percent"]) * float(row["cpu_cores"] or os.cpu_count() or 1)
    shown = 0.0
    with table.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if start < float(row["timestamp"]) <= end and row["name"] in (*BUILD_NAMES, "make"):
                shown += float(row["cpu_percent"])
    return shown / busy if busy else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("src", type=Path, help="folder of C sources (searched recursively)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="make -j (default: cores)")
    p.add_argument("--rounds", type=int, default=3, help="builds from clean (default: 3)")
    p.add_argument("--interval", default="10s", help="collector interval (default: 10s)")
    args = p.parse_args(argv)
    interval = parse_duration(args.interval)
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine_line()}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="minerwatch-build-") as tmp:
        work = Path(tmp)
        (work / "Makefile").write_text(makefile(args.src.resolve(), work / "obj"))
        (work / "obj").mkdir()
        samples = work / "host.csv"
        collect = subprocess.Popen(
            [str(Path(sys.executable).with_name("minerwatch")), "collect", "--interval",
             args.interval, "--duration", "1h", "--output", str(samples), "--host", "build"],
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            time.sleep(2 * interval)  # primed, and a sample of the host before the build
            start = time.time()
            seconds = []
            for _ in range(args.rounds):
                for obj in (work / "obj").glob("*"):
                    obj.unlink()
                t0 = time.monotonic()
                if subprocess.run(["make", "-s", f"-j{args.jobs}"], cwd=work).returncode:
                    print(
                        "build_churn: the build failed (see make's output above)", file=sys.stderr
                    )
                    return 1
                seconds.append(time.monotonic() - t0)
            end = time.time()
            time.sleep(2 * interval)
        finally:
            collect.send_signal(signal.SIGINT)
            collect.wait(timeout=60)
        table = samples.with_name("host.procs.csv")
        life = lifetimes(table)
        share = listed_share(samples, table, start, end)
    longest = max((max(v) for v in life.values() if v), default=0.0)
    result: dict[str, Any] = {
        "sources": len(sources(args.src)),
        "jobs": args.jobs,
        "build_seconds": [round(s, 1) for s in seconds],
        "interval_s": interval,
        "listed": {
            name: {
                "processes": len(v),
                "median_listed_s": round(statistics.median(v), 1),
                "max_listed_s": round(max(v), 1),
            }
            for name, v in sorted(life.items())
        },
        "longest_listed_s": round(longest, 1),
        "build_cpu_listed_share": round(share, 3),
        "machine": machine_line(),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
