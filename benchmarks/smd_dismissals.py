"""SMD with a responder who dismisses each false alarm (``minerwatch dismiss``), point-wise F1.

    python -m minerwatch.bench.smd_dismissals --smd ../shared/data/smd

Asks whether dismissing lets a machine whose test half drifts to levels never seen in
training (SMD's ``machine-2-2``, ``2-8``) learn them. Each machine is trained on its train
split as ``minerwatch evaluate --smd`` does; every alert episode that touches no labelled
anomaly is dismissed ``--respond-minutes`` after it paged, the machine retrains on its train
split plus the test rows seen so far (alerted time left out except the dismissed episodes,
as the agent does) and the rest of the test is scored by the new model. The labels decide
what is benign: the responder is an oracle. Evaluation code: trains with scikit-learn.
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
from minerwatch.bench.dismissals import RESPOND_S, retrained_like
from minerwatch.bench.public_data import machine_line
from minerwatch.features.errors import InputError


def labelled_events(name: str, t: np.ndarray, label: np.ndarray) -> list[metrics.Event]:
    """The labelled anomalies as events (first and last labelled sample of each run)."""
    edges = np.flatnonzero(np.diff(np.r_[0, label.astype(int), 0]))
    return [
        metrics.Event(name, "anomaly", True, float(t[a]), float(t[b - 1]))
        for a, b in zip(edges[::2], edges[1::2], strict=True)
    ]


def run_machine(case: public.Case, respond_s: float) -> dict[str, Any]:
    """Point-wise figures of the baseline and of the baseline with dismissals."""
    params = public.PUBLIC_PARAMS
    model, scored = public.fit_and_score(case, public.SMD_STEP, params)
    ws = np.asarray(scored.window_start, dtype=float)
    we = np.asarray(scored.window_end, dtype=float)
    base = np.asarray(scored.alert, dtype=bool)
    t = case.test.timestamps
    events = labelled_events(case.name, t, case.label)
    dismissed, retrains = retrained_like(
        model, case.train, case.test, ws, we, base, events, params, respond_s
    )
    out: dict[str, Any] = {"retrains": retrains}
    for key, alert in (("minerwatch", base), ("dismissed", dismissed)):
        pred = public.points_from_windows(t, ws, we, alert, False)
        out[key] = metrics.point_report(pred, case.label).as_dict()
    return out


def _f1(report: dict[str, Any]) -> float:
    """F1 of a point report (nan where it has none: no labelled and no flagged point)."""
    value = report["f1"]
    return float("nan") if value is None else float(value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smd", type=Path, required=True, help="a folder in SMD's layout")
    p.add_argument("--machines", nargs="*", help="machine names (default: every one)")
    p.add_argument(
        "--respond-minutes",
        type=float,
        default=RESPOND_S / 60,
        help="minutes from a page to its dismissal (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    try:
        cases = public.smd_cases(args.smd, args.machines)
    except InputError as exc:
        print(f"minerwatch: {exc}", file=sys.stderr)
        return 2
    print(f"# {machine_line()}", file=sys.stderr)
    results: dict[str, Any] = {}
    for i, case in enumerate(cases, 1):
        t0 = time.perf_counter()
        results[case.name] = run_machine(case, args.respond_minutes * 60)
        r = results[case.name]
        print(
            f"smd {i}/{len(cases)}: {case.name} F1 {_f1(r['minerwatch']):.3f} -> "
            f"{_f1(r['dismissed']):.3f}, {r['retrains']} dismissed "
            f"({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
        )
    means = {
        key: float(np.nanmean([_f1(r[key]) for r in results.values()]))
        for key in ("minerwatch", "dismissed")
    }
    if args.json:
        print(json.dumps({"machines": results, "mean_f1": means}, indent=1))
    else:
        print(f"{'machine':<16} {'F1':>6} {'dismissed':>10} {'retrains':>9}")
        for name, r in results.items():
            print(
                f"{name:<16} {_f1(r['minerwatch']):>6.3f} {_f1(r['dismissed']):>10.3f} "
                f"{r['retrains']:>9}"
            )
        print(f"{'mean':<16} {means['minerwatch']:>6.3f} {means['dismissed']:>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
