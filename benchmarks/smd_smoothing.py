"""SMD: would scoring sequences of windows rank the anomalies better? Best-threshold F1 of
the window score smoothed over the last k windows.

    python -m minerwatch.bench.smd_smoothing --smd ../shared/data/smd

Each machine is trained and scored as ``minerwatch evaluate --smd`` does; the score of each
window is then replaced by the mean (or the minimum) of the last ``k`` windows' scores, the
simplest sequence-aware score, and the best point-wise F1 over all thresholds (an upper
bound: it peeks at the test labels) is reported per ``k``. The minimum of three is close to
what the alert rule does (three windows above the threshold open an alert). If no ``k``
raises the bound well above the honest figure's target, smoothing cannot reach it either.
Evaluation code: trains with scikit-learn.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from minerwatch.bench import metrics, public
from minerwatch.bench.public_data import machine_line
from minerwatch.features.errors import InputError

SPANS = (1, 3, 5, 10)


def trailing(score: np.ndarray, k: int, how: str) -> np.ndarray:
    """Each window's score replaced by the ``how`` ("mean" or "min") of the last ``k``
    windows' (fewer at the start), so only the past is used, as a live scorer would."""
    s = np.asarray(score, dtype=float)
    if k <= 1 or s.size == 0:
        return s.copy()
    pad = np.concatenate([np.full(k - 1, np.nan), s])
    stack = np.lib.stride_tricks.sliding_window_view(pad, k)
    with np.errstate(all="ignore"):
        out = np.nanmean(stack, axis=1) if how == "mean" else np.nanmin(stack, axis=1)
    return np.asarray(out, dtype=float)


def run_machine(case: public.Case, spans: tuple[int, ...] = SPANS) -> dict[str, Any]:
    """The honest F1 of the alert rule and the best F1 of each smoothed score."""
    _, scored = public.fit_and_score(case, public.SMD_STEP, public.PUBLIC_PARAMS)
    t = case.test.timestamps
    ws, we = scored.window_start, scored.window_end
    alert = public.points_from_windows(t, ws, we, scored.alert, False)
    out: dict[str, Any] = {"f1": metrics.point_prf(alert, case.label)[2]}
    raw = np.asarray(scored.score, dtype=float)
    for how in ("mean", "min"):
        for k in spans:
            pts = public.points_from_windows(t, ws, we, trailing(raw, k, how), np.nan)
            out[f"best_{how}{k}"] = metrics.best_f1(pts, case.label)[0]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smd", type=Path, required=True, help="a folder in SMD's layout")
    p.add_argument("--machines", nargs="*", help="machine names (default: every one)")
    p.add_argument(
        "--spans",
        type=int,
        nargs="+",
        default=list(SPANS),
        help="windows to smooth over (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    if any(k < 1 for k in args.spans):
        p.error("--spans: every span must be 1 or more windows")
    try:
        cases = public.smd_cases(args.smd, args.machines)
    except InputError as exc:
        print(f"minerwatch: {exc}", file=sys.stderr)
        return 2
    print(f"# {machine_line()}", file=sys.stderr)
    spans = tuple(args.spans)
    results: dict[str, dict[str, Any]] = {}
    for i, case in enumerate(cases, 1):
        t0 = time.perf_counter()
        results[case.name] = run_machine(case, spans)
        took = time.perf_counter() - t0
        print(f"smd {i}/{len(cases)}: {case.name} ({took:.0f} s)", file=sys.stderr)
    keys = list(next(iter(results.values())))
    means = {k: float(np.nanmean([r[k] for r in results.values()])) for k in keys}
    if args.json:
        print(json.dumps({"machines": results, "mean": means}, indent=1))
        return 0
    print(f"{'machine':<16}" + "".join(f"{k:>11}" for k in keys))
    for name, row in [*results.items(), ("mean", means)]:
        print(f"{name:<16}" + "".join(f"{row[k]:>11.3f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
