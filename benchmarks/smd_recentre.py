"""SMD: would absorbing a lasting new level of the extra columns help the drift machines?

    python -m minerwatch.bench.smd_recentre --smd ../shared/data/smd --lag 1d --span 1d

A miner is a level of CPU that stays, so the product never learns a lasting CPU level on its
own. The other columns (memory, TCP counters) are not how a miner shows, and two SMD machines
(``2-2``, ``2-8``) move to new levels of them for good in their test half. This replays the
simplest way to absorb such a move: every column minus how far the median of an earlier
stretch (``--span`` long, ending ``--lag`` before the row) sits from the training median,
then trains and scores each machine as ``minerwatch evaluate --smd`` does (threshold from
the train split only). The lag keeps incidents of hours from absorbing themselves. Evaluation
code: trains with scikit-learn and reads with pandas.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from minerwatch.bench import public
from minerwatch.features.errors import InputError
from minerwatch.service.units import parse_duration


def recentred(case: public.Case, lag: int, span: int) -> public.Case:
    """``case`` with each column moved back by its lagged rolling median's drift."""
    import pandas as pd

    values = np.vstack([case.train.values, case.test.values])
    earlier = pd.DataFrame(values).rolling(span, min_periods=span // 2).median().shift(lag)
    drift = np.nan_to_num(earlier.to_numpy() - np.nanmedian(case.train.values, axis=0))
    moved = values - drift
    n = len(case.train.timestamps)
    return replace(
        case,
        train=replace(case.train, values=moved[:n]),
        test=replace(case.test, values=moved[n:]),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minerwatch.bench.smd_recentre")
    p.add_argument("--smd", type=Path, required=True, help="folder in SMD's layout")
    p.add_argument("--lag", default="1d", help="how long before a row its stretch ends")
    p.add_argument("--span", default="1d", help="length of the stretch whose median is taken")
    p.add_argument("--machines", default="", help="comma-separated (default: every one)")
    args = p.parse_args(argv)
    try:
        lag = int(parse_duration(args.lag, "--lag") // public.SMD_STEP)
        span = int(parse_duration(args.span, "--span") // public.SMD_STEP)
        if min(lag, span) < 1:
            raise InputError("--lag/--span", None, "at least one sample (60s)", f"{lag}/{span}")
        names = [m for m in args.machines.split(",") if m] or public.smd_machines(args.smd)
        out: dict[str, dict[str, float]] = {}
        for name in names:
            case = public.load_smd(args.smd, name)
            plain = public.run_case(case, public.SMD_STEP, 0, public.PUBLIC_PARAMS)["minerwatch"]
            moved = public.run_case(
                recentred(case, lag, span), public.SMD_STEP, 0, public.PUBLIC_PARAMS
            )["minerwatch"]
            out[name] = {"f1": plain.f1, "f1_recentred": moved.f1}
            print(f"{name}: F1 {plain.f1:.3f} -> {moved.f1:.3f}", file=sys.stderr, flush=True)
    except InputError as exc:
        print(f"minerwatch: {exc}", file=sys.stderr)
        return 2
    means = {k: float(np.mean([v[k] for v in out.values()])) for k in ("f1", "f1_recentred")}
    print(json.dumps({"lag": args.lag, "span": args.span, "mean": means, "machines": out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
