"""The agent's training child: ``python -m service.retrain --input X.npz --models DIR ...``.

It runs in its own process so the agent never imports scikit-learn. The input holds the
samples the agent chose (alerted windows and their surroundings already removed, so a miner
that keeps running is never learnt as normal). A candidate replaces the current model only
if it loads back from the store and its alert rate on the most recent clean windows is no
higher than the current model's. The outcome is one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from baseline.scoring import score_series
from baseline.store import ModelError, load_model, save_model
from features.errors import InputError
from features.io import from_arrays

MIN_AGENT_WINDOWS = 8


def retrain(
    input_path: Path,
    models: Path,
    host: str,
    window: float,
    hop: float,
    alert_windows: int = 3,
    validate_s: float = 86400.0,
) -> dict[str, Any]:
    from baseline.train import train_host  # scikit-learn: only ever in this child process

    with np.load(input_path, allow_pickle=False) as npz:
        ts, values = npz["timestamps"], npz["values"]
        columns = tuple(str(c) for c in npz["columns"])
    series = from_arrays(host, ts, values, columns, source=str(input_path))
    # a try-out (``--learn-for 10m``) has few windows; the store records how many
    model = train_host(
        series, window, hop, params={"alert_windows": alert_windows}, min_windows=MIN_AGENT_WINDOWS
    )
    recent = from_arrays(
        host,
        ts[ts >= ts.max() - validate_s],
        values[ts >= ts.max() - validate_s],
        columns,
        source="recent clean history",
    )
    with tempfile.TemporaryDirectory(dir=models.parent, prefix=".candidate-") as tmp:
        save_model(Path(tmp), model)
        candidate = load_model(Path(tmp), host)  # must load back through every check
        new_rate = float(score_series(candidate, recent).alert.mean()) if len(ts) else 0.0
        try:
            current = load_model(models, host)
            old_rate = float(score_series(current, recent).alert.mean())
        except (ModelError, InputError):
            current, old_rate = None, None
        accepted = current is None or new_rate <= old_rate
        if accepted:
            save_model(models, model)
    return {
        "accepted": accepted,
        "windows": model.meta["windows"],
        "threshold": model.threshold,
        "alert_rate_new": new_rate,
        "alert_rate_old": old_rate,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m service.retrain")
    p.add_argument("--input", required=True, type=Path)
    p.add_argument("--models", required=True, type=Path)
    p.add_argument("--host", required=True)
    p.add_argument("--window", type=float, default=60.0)
    p.add_argument("--hop", type=float, default=60.0)
    p.add_argument("--alert-windows", type=int, default=3)
    args = p.parse_args(argv)
    try:
        result = retrain(
            args.input, args.models, args.host, args.window, args.hop, args.alert_windows
        )
    except (InputError, ValueError, OSError) as exc:
        print(json.dumps({"accepted": False, "error": str(exc)}))
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
