"""The agent's training child: ``python -m minerwatch.service.retrain --input X.npz ...``.

It runs in its own process so the agent never imports scikit-learn. The input holds the
samples the agent chose (alerted windows and their surroundings already removed, so a miner
that keeps running is never learnt as normal). A candidate replaces the current model only
if it loads back from the store and its alert rate on the most recent clean windows is no
higher than the current model's. The outcome is one JSON line on stdout; a failure carries
one of :data:`FAILURE_REASONS`, which the agent counts in
``minerwatch_retrain_failures_total{reason}``.
"""

from __future__ import annotations

import argparse
import io
import json
import sqlite3
import sys
import tempfile
from array import array
from pathlib import Path
from typing import Any

import numpy as np

from minerwatch.baseline.batch import score_series
from minerwatch.baseline.calibrate import ALARMS_PER_WEEK, ALERT_MARGIN, SUSTAIN_WINDOWS
from minerwatch.baseline.exclude import exclusion_mask, outside_dismissed
from minerwatch.baseline.fitted import trained_otherwise
from minerwatch.baseline.store import ModelError, load_model, read_key, save_model
from minerwatch.features.atomic import atomic_write
from minerwatch.features.errors import InputError
from minerwatch.features.io import from_arrays
from minerwatch.features.procs import ProcessRows
from minerwatch.features.schema import AGENT_COLUMNS
from minerwatch.features.windows import make_windows
from minerwatch.service.history import dismissed_spans

#: One window is enough to start: a model of few windows is conservative by construction
#: (:func:`minerwatch.baseline.calibrate.extrapolation_margin`), so the learning period the
#: user asks for is the one they get.
MIN_AGENT_WINDOWS = 1

#: Why a retraining gave no new model (bounded: these are label values).
FAILURE_REASONS = (
    "too_few_windows",  # nothing (or too little) left after leaving out alerted time
    "bad_input",  # unreadable history or samples, or a model that did not load back
    "crashed",  # the child died without an answer (killed, out of memory, a bug)
    "rejected",  # the candidate alerted more than the current model on recent clean windows
    "unloadable",  # the agent could not load the model the child stored
)


#: Longest process text kept (Linux paths end at PATH_MAX, 4096 bytes).
MAX_TEXT = 4096


class TooFewWindows(InputError):
    """Not enough complete windows to train on (after leaving out alerted time)."""


def read_history(
    db: Path, since: float, before: float | None = None, margin_s: float = 3600.0
) -> tuple[np.ndarray, np.ndarray]:
    """Samples from the agent's SQLite history for training, leaving out alerted time.

    Read here, in the training child, so the agent never holds two weeks of samples in
    memory (the daily retraining would otherwise push its RSS past 180 MB). Left out: every
    alerted window widened by ``margin_s``, and everything from ``before`` on (an episode
    still open), so a miner that keeps running is never learnt as normal. Episodes a
    responder dismissed as benign are learnt (:func:`outside_dismissed`).
    """
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        have = {row[1] for row in conn.execute("PRAGMA table_info(samples)")}
        cols = ", ".join(f'"{c}"' if c in have else "NULL" for c in AGENT_COLUMNS)
        rows = conn.execute(
            f"SELECT ts, {cols} FROM samples WHERE ts >= ? ORDER BY ts", (since,)
        ).fetchall()
        alerted = conn.execute(
            "SELECT window_start, window_end FROM windows WHERE alert = 1 AND window_end >= ?",
            (since - margin_s,),
        ).fetchall()
        alerted = outside_dismissed(alerted, dismissed_spans(conn))
    finally:
        conn.close()
    data = np.array(rows, dtype=np.float64).reshape(len(rows), 1 + len(AGENT_COLUMNS))
    ts, values = data[:, 0], data[:, 1:]
    keep = exclusion_mask(ts, alerted, margin_s, before)
    return ts[keep], values[keep]


def read_history_procs(db: Path, timestamps: np.ndarray) -> dict[str, np.ndarray]:
    """The process rows of the samples kept for training, as ``procs_*`` arrays for the npz
    (none from a history written before process tables). Streamed, texts numbered: two weeks
    are over a million rows of a few hundred distinct texts."""
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    texts: dict[str, int] = {}
    ts, pid, cpu, gc = array("d"), array("q"), array("d"), array("d")
    codes = (array("l"), array("l"), array("l"))
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'procs'").fetchone():
            return {}
        lo = float(timestamps.min()) if len(timestamps) else 0.0
        have = {row[1] for row in conn.execute("PRAGMA table_info(procs)")}
        gc_col = "gc" if "gc" in have else "NULL"  # a history from before GC threads were read
        cursor = conn.execute(
            f"SELECT ts, pid, name, exe, user, cpu, {gc_col} FROM procs WHERE ts >= ? ORDER BY ts",
            (lo,),
        )
        for row in cursor:
            if not isinstance(row[0], float | int):
                continue
            ts.append(float(row[0]))
            pid.append(int(row[1]) if isinstance(row[1], int) else 0)
            cpu.append(float(row[5]) if isinstance(row[5], float | int) else np.nan)
            gc.append(float(row[6]) if isinstance(row[6], float | int) else np.nan)
            for k, value in enumerate(row[2:5]):
                text = str(value or "")[:MAX_TEXT]
                codes[k].append(texts.setdefault(text, len(texts)))
    finally:
        conn.close()
    t = np.frombuffer(ts, dtype=np.float64)
    keep = np.isin(t, timestamps)  # alerted time is left out of the processes too
    table = np.array(list(texts), dtype=str) if texts else np.array([""], dtype=str)
    return {
        "procs_ts": t[keep].copy(),
        "procs_pid": np.frombuffer(pid, dtype=np.int64)[keep].copy(),
        "procs_cpu": np.frombuffer(cpu, dtype=np.float64)[keep].copy(),
        "procs_gc": np.frombuffer(gc, dtype=np.float64)[keep].copy(),
        "procs_text": table,
        **{
            f"procs_{field}": np.asarray(c, dtype=np.int64)[keep]
            for field, c in zip(("name", "exe", "user"), codes, strict=True)
        },
    }


def procs_from_npz(npz: Any) -> ProcessRows | None:
    """The process table :func:`read_history_procs` wrote (texts as codes into one table of
    distinct texts: per-row fixed-width text would be as wide as the longest path on every
    row), or None (a history without one)."""
    if "procs_ts" not in npz.files:
        return None
    table = np.array(npz["procs_text"].tolist(), dtype=object)
    return ProcessRows.from_lists(
        npz["procs_ts"],
        npz["procs_pid"],
        table[npz["procs_name"]],
        table[npz["procs_exe"]],
        table[npz["procs_user"]],
        npz["procs_cpu"],
        npz["procs_gc"] if "procs_gc" in npz.files else None,
    )


def retrain(
    input_path: Path,
    models: Path,
    host: str,
    window: float,
    hop: float,
    alert_windows: int = 3,
    validate_s: float = 86400.0,
    alarms_per_week: float = ALARMS_PER_WEEK,
    key: bytes | None = None,
    sustain_windows: int = SUSTAIN_WINDOWS,
    alert_margin: float = ALERT_MARGIN,
) -> dict[str, Any]:
    # scikit-learn: only ever imported in this child process
    from minerwatch.baseline.train import train_host

    with np.load(input_path, allow_pickle=False) as npz:
        ts, values = npz["timestamps"], npz["values"]
        columns = tuple(str(c) for c in npz["columns"])
        procs = procs_from_npz(npz)
    have = len(make_windows(ts, values, columns, window, hop)) if len(ts) > 1 else 0
    if have < MIN_AGENT_WINDOWS:
        raise TooFewWindows(
            str(input_path),
            None,
            f"at least {MIN_AGENT_WINDOWS} complete {window:g}s window(s) outside alerted time",
            str(have),
        )
    series = from_arrays(host, ts, values, columns, source=str(input_path))
    series.procs = procs
    # a try-out (``--learn-for 10m``) has few windows; the store records how many
    model = train_host(
        series,
        window,
        hop,
        params={
            "alert_windows": alert_windows,
            "sustain_windows": sustain_windows,
            "alert_margin": alert_margin,
            "max_alarms_per_week": alarms_per_week,
        },
        min_windows=MIN_AGENT_WINDOWS,
    )
    recent = from_arrays(
        host,
        ts[ts >= ts.max() - validate_s],
        values[ts >= ts.max() - validate_s],
        columns,
        source="recent clean history",
    )
    if procs is not None and len(ts):
        recent.procs = procs.between(float(ts.max()) - validate_s, np.inf)
    with tempfile.TemporaryDirectory(dir=models.parent, prefix=".candidate-") as tmp:
        save_model(Path(tmp), model, key=key)
        candidate = load_model(Path(tmp), host, key=key)  # must load back through every check
        new_rate = float(score_series(candidate, recent).alert.mean()) if len(ts) else 0.0
        try:
            current = load_model(models, host, key=key)
            # a model of other windows, alert rule or budget (a setting changed) is not what
            # was asked for: replaced, not compared (a larger budget alerts more by design;
            # scoring other windows could also fail on the samples)
            asked = (alert_windows, sustain_windows, alert_margin, alarms_per_week)
            if trained_otherwise(current, window, hop, *asked):
                old_rate = None
            else:
                old_rate = float(score_series(current, recent).alert.mean())
        except (ModelError, InputError, ValueError):
            old_rate = None
        accepted = old_rate is None or new_rate <= old_rate
        if accepted:
            save_model(models, model, key=key)
    return {
        "accepted": accepted,
        "windows": model.meta["windows"],
        "threshold": model.threshold,
        "alert_rate_new": new_rate,
        "alert_rate_old": old_rate,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minerwatch.service.retrain")
    p.add_argument(
        "--input",
        required=True,
        type=Path,
        help="training samples (npz); written from --history when given",
    )
    p.add_argument("--history", type=Path, help="the agent's history.db to read samples from")
    p.add_argument("--since", type=float, default=0.0, help="oldest sample to use (Unix s)")
    p.add_argument("--before", type=float, default=None, help="use only samples before this")
    p.add_argument("--margin", type=float, default=3600.0, help="left out around alerts, s")
    p.add_argument("--models", required=True, type=Path)
    p.add_argument("--host", required=True)
    p.add_argument("--window", type=float, default=60.0)
    p.add_argument("--hop", type=float, default=60.0)
    p.add_argument("--alert-windows", type=int, default=3)
    p.add_argument("--sustain-windows", type=int, default=SUSTAIN_WINDOWS)
    p.add_argument("--alert-margin", type=float, default=ALERT_MARGIN)
    p.add_argument("--alarms-per-week", type=float, default=ALARMS_PER_WEEK)
    p.add_argument("--model-key", type=Path, help="HMAC key file to sign the model with")
    args = p.parse_args(argv)
    try:
        if args.history is not None:
            ts, values = read_history(args.history, args.since, args.before, args.margin)
            buf = io.BytesIO()  # kept beside the model: what it was trained on
            procs = read_history_procs(args.history, ts)
            arrays: dict[str, Any] = {"timestamps": ts, "values": values, **procs}
            np.savez(buf, columns=np.array(AGENT_COLUMNS), **arrays)
            atomic_write(args.input, buf.getvalue(), mode=0o600)
        key = read_key(args.model_key) if args.model_key else None
        result = retrain(
            args.input,
            args.models,
            args.host,
            args.window,
            args.hop,
            args.alert_windows,
            key=key,
            alarms_per_week=args.alarms_per_week,
            sustain_windows=args.sustain_windows,
            alert_margin=args.alert_margin,
        )
    except (InputError, ValueError, OSError, sqlite3.Error) as exc:
        reason = "too_few_windows" if isinstance(exc, TooFewWindows) else "bad_input"
        print(json.dumps({"accepted": False, "error": str(exc), "reason": reason}))
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
