"""Benchmark on public labelled server data: SMD (per machine) and NAB's server series.

    python -m minerwatch.bench.public_data --smd ../shared/data/smd --nab ../shared/data/nab \\
        --output benchmarks/results

Prints the point-wise / point-adjusted / event-level tables for our baseline and the reference
detectors (a naive IsolationForest, a plain per-machine PCA), and writes ``smd.json`` /
``nab.json`` into ``--output``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from minerwatch.bench import public

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"


def machine_line() -> str:
    return (
        f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {platform.platform()}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--smd", type=Path, default=DATA / "smd", help="SMD, or any folder in its layout"
    )
    p.add_argument("--nab", type=Path, default=DATA / "nab")
    p.add_argument("--skip-smd", action="store_true")
    p.add_argument("--skip-nab", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="seed of the reference IsolationForest")
    p.add_argument("--output", type=Path, help="folder for smd.json / nab.json")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine_line()}", file=sys.stderr)
    results = {}
    for name, path, skip, fn in (
        ("smd", args.smd, args.skip_smd, public.evaluate_smd),
        ("nab", args.nab, args.skip_nab, public.evaluate_nab),
    ):
        if skip:
            continue
        t0 = time.perf_counter()
        res = fn(path, seed=args.seed)
        res["meta"]["seconds"] = round(time.perf_counter() - t0, 1)
        res["meta"]["machine"] = machine_line()
        results[name] = res
        if args.output is not None:
            args.output.mkdir(parents=True, exist_ok=True)
            (args.output / f"{name}.json").write_text(json.dumps(res, indent=1) + "\n")
        if not args.json:
            print(public.format_point_table(res))
            print(f"({res['meta']['seconds']} s)\n")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
