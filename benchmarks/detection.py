"""Detection benchmark on a fresh labelled simulation: simulate, then evaluate every detector.

    python -m minerwatch.bench.detection --seed 7 --output benchmarks/results/detection-7

Use a new seed for each reported run, so the detector is never tuned to one fleet. Prints the
per-kind tables for our baseline and the reference detectors; ``--output`` also keeps the
report (report.md, per-host PNGs, report.json) and the simulated data is kept under
``--workdir`` if given (a temporary folder otherwise).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from minerwatch.bench.evaluate import evaluate_simulated, format_text
from minerwatch.bench.public_data import machine_line
from minerwatch.bench.simulate import simulate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, required=True, help="simulation seed (use a fresh one)")
    p.add_argument("--hosts", type=int, default=12)
    p.add_argument("--train-days", type=float, default=7.0)
    p.add_argument("--test-days", type=float, default=3.0)
    p.add_argument("--window", type=float, default=60.0)
    p.add_argument("--hop", type=float, default=60.0)
    p.add_argument("--grace", type=float, default=0.0)
    p.add_argument("--workdir", type=Path, help="keep the simulated data here")
    p.add_argument(
        "--no-procs", action="store_true", help="simulate without process tables (schema 1 data)"
    )
    p.add_argument("--output", type=Path, help="write report.md, plots and report.json here")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine_line()}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="minerwatch-bench-") as tmp:
        data = args.workdir or Path(tmp) / "sim"
        t0 = time.perf_counter()
        simulate(
            data,
            hosts=args.hosts,
            train_days=args.train_days,
            test_days=args.test_days,
            seed=args.seed,
            procs=not args.no_procs,
        )
        t_sim = time.perf_counter() - t0
        result = evaluate_simulated(
            data, None, args.output, args.window, args.hop, args.grace, seed=0
        )
        result["meta"]["seconds"] = {
            "simulate": round(t_sim, 1),
            "evaluate": round(time.perf_counter() - t0 - t_sim, 1),
        }
        result["meta"]["machine"] = machine_line()
        if args.output is not None:
            (args.output / "report.json").write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"simulation seed {args.seed}: {args.hosts} hosts, {args.train_days:g} train + "
            f"{args.test_days:g} test days; window {args.window:g} s hop {args.hop:g} s"
            f"{'; no process tables' if args.no_procs else ''}\n"
        )
        print(format_text(result))
        print(f"({result['meta']['seconds']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
