"""Public labelled server data (SMD, NAB): loaders and the per-machine train/score/measure runner.

The threshold always comes from the training part alone (the model's own calibration, or the
naive forest's highest training score); the best-threshold F1 is reported beside it only as an
upper bound. Loaders are plain functions of a root folder so tests can point them at fixtures.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from minerwatch.bench import metrics
from minerwatch.bench.reference import NaiveIForest, PcaReconstruction
from minerwatch.features.errors import InputError
from minerwatch.features.io import HostSeries

#: SMD metric names in file order, as the dataset's first author listed them (OmniAnomaly #22).
SMD_COLUMNS: tuple[str, ...] = (
    "cpu_r",
    "load_1",
    "load_5",
    "load_15",
    "mem_shmem",
    "mem_u",
    "mem_u_e",
    "total_mem",
    "disk_q",
    "disk_r",
    "disk_rb",
    "disk_svc",
    "disk_u",
    "disk_w",
    "disk_wa",
    "disk_wb",
    "si",
    "so",
    "eth1_fi",
    "eth1_fo",
    "eth1_pi",
    "eth1_po",
    "tcp_tw",
    "tcp_use",
    "active_opens",
    "curr_estab",
    "in_errs",
    "in_segs",
    "listen_overflows",
    "out_rsts",
    "out_segs",
    "passive_opens",
    "retransegs",
    "tcp_timeouts",
    "udp_in_dg",
    "udp_out_dg",
    "udp_rcv_buf_errs",
    "udp_snd_buf_errs",
)
SMD_STEP = 60.0
NAB_STEP = 300.0
NAB_PROBATION = 0.15
NAB_PROBATION_MAX = 750

Progress = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _note(msg: str) -> None:
    print(f"minerwatch: note: {msg}", file=sys.stderr, flush=True)


@dataclass
class Case:
    """One machine or file: training series, test series and one 0/1 label per test sample."""

    name: str
    train: HostSeries
    test: HostSeries
    label: np.ndarray


# --------------------------------------------------------------------------- SMD


SMD_PARTS = ("train", "test", "test_label")
_SUFFIXES = (".txt.gz", ".txt")


def smd_columns(n: int) -> tuple[str, ...]:
    """Column names for ``n`` columns: SMD's own for its 38, else ``m1``..``mN`` (1-based, as
    SMD's interpretation labels number metrics)."""
    return SMD_COLUMNS if n == len(SMD_COLUMNS) else tuple(f"m{i}" for i in range(1, n + 1))


def _smd_file(root: Path, part: str, machine: str) -> Path:
    for suffix in _SUFFIXES:
        if (root / part / f"{machine}{suffix}").is_file():
            return root / part / f"{machine}{suffix}"
    expected = f"a {part} file for machine {machine!r} ({machine}.txt or {machine}.txt.gz)"
    raise InputError(str(root / part / f"{machine}.txt.gz"), None, expected, "none")


def smd_machines(root: Path, note: Progress | None = None) -> list[str]:
    """Machines of a folder in SMD's layout: ``train/``, ``test/`` and ``test_label/``, one
    ``<machine>.txt[.gz]`` per machine in each. A machine without all three is left out, and
    ``note`` (default: stderr) says which and what it lacks."""
    root = Path(root)
    for part in SMD_PARTS:
        if not (root / part).is_dir():
            expected = "a folder in SMD's layout (train/, test/, test_label/)"
            raise InputError(str(root / part), None, expected, "no such folder")
    found = {
        part: {
            p.name.removesuffix(".gz").removesuffix(".txt")
            for p in (root / part).iterdir()
            if p.name.endswith(_SUFFIXES) and p.is_file()
        }
        for part in SMD_PARTS
    }
    complete = sorted(set.intersection(*found.values()))
    left_out = []
    for m in sorted(set.union(*found.values()) - set(complete)):
        lacks = " and ".join(f"{part}/{m}.txt[.gz]" for part in SMD_PARTS if m not in found[part])
        left_out.append(f"machine {m!r}: no {lacks}")
    if not complete:
        expected = "<machine>.txt or .txt.gz files in train/, test/ and test_label/"
        got = "no machine with all three" + (f" ({left_out[0]})" if left_out else "")
        raise InputError(str(root / "train"), None, expected, got)
    for text in left_out:  # a lost label file must not shrink the benchmark unsaid
        (note or _note)(f"{root}: {text}: left out")
    return complete


def _open_text(path: Path) -> list[str]:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                return fh.read().splitlines()
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise InputError(str(path), None, "a readable text or gzip file", str(exc)) from None


def _load_matrix(path: Path, cols: int | None, what: str = "") -> np.ndarray:
    """Rows of comma-separated numbers, all as wide as the first (or ``cols``); a bad line
    is named with its number and what was expected."""
    rows: list[list[float]] = []
    for lineno, line in enumerate(_open_text(path), start=1):
        if not line.strip():
            continue
        cells = line.split(",")
        want = cols if cols is not None else (len(rows[0]) if rows else len(cells))
        try:
            values = [float(c) for c in cells]
        except ValueError:
            values = []
        if len(values) != want:
            expected = f"{want} columns (comma-separated numbers{what})"
            raise InputError(str(path), lineno, expected, repr(line[:80]))
        if any(math.isinf(v) for v in values):
            expected = "finite numbers (nan for a missing value)"
            raise InputError(str(path), lineno, expected, repr(line[:80]))
        rows.append(values)
    if not rows:
        raise InputError(str(path), None, "at least one row of comma-separated numbers", "none")
    return np.asarray(rows, dtype=np.float64)


def load_smd(root: Path, machine: str) -> Case:
    """One machine of a folder in SMD's layout (any number of columns, the same in its train
    and test files); samples are 60 s apart and the test part follows the training part."""
    root = Path(root)
    train_path = _smd_file(root, "train", machine)
    test_path = _smd_file(root, "test", machine)
    train = _load_matrix(train_path, None)
    like = f", as in train/{machine}"
    test = _load_matrix(test_path, train.shape[1], like)
    label_path = _smd_file(root, "test_label", machine)
    labels = _load_matrix(label_path, 1, ", one 0 or 1 per test row")[:, 0]
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if bad.size:
        got = f"{labels[bad[0]]:g} in row {bad[0] + 1}"
        raise InputError(str(label_path), None, "labels 0 or 1", got)
    label = labels > 0.5
    if label.size != test.shape[0]:
        raise InputError(
            str(label_path),
            None,
            f"{test.shape[0]} labels (one per row of test/{machine})",
            str(label.size),
        )
    for path, part in ((train_path, train), (test_path, test)):
        gaps = np.isnan(part)
        if gaps.any():  # read as missing values, as a sample without that metric
            _note(
                f"{path}: {int(gaps.sum())} nan cells in {int(gaps.any(axis=1).sum())} rows, "
                "read as missing values"
            )
    columns = smd_columns(train.shape[1])
    t_train = np.arange(train.shape[0]) * SMD_STEP
    t_test = (train.shape[0] + np.arange(test.shape[0])) * SMD_STEP
    return Case(
        machine,
        HostSeries(machine, t_train, train, columns, source=str(train_path)),
        HostSeries(machine, t_test, test, columns, source=str(test_path)),
        label,
    )


# --------------------------------------------------------------------------- NAB


def _nab_time(text: str) -> float:
    return datetime.fromisoformat(text.strip()).replace(tzinfo=UTC).timestamp()


def nab_files(root: Path) -> list[str]:
    """``<category>/<file>.csv`` keys of the series present under ``root``."""
    root = Path(root)
    found = sorted(str(p.relative_to(root)) for p in root.glob("*/*.csv"))
    if not found:
        raise InputError(str(root), None, "a NAB folder with <category>/*.csv", "no CSV files")
    return found


def load_nab(root: Path, key: str, windows: dict[str, list[list[str]]]) -> Case:
    """One NAB series: the probationary period (first 15 %, at most 750 rows) trains, the rest
    is scored; a sample is anomalous when it lies inside a labelled window (ends included)."""
    path = Path(root) / key
    ts: list[float] = []
    vals: list[float] = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["timestamp", "value"]:
            raise InputError(str(path), 1, "header 'timestamp,value'", str(header))
        for lineno, row in enumerate(reader, start=2):
            try:
                ts.append(_nab_time(row[0]))
                vals.append(float(row[1]))
            except (ValueError, IndexError):
                raise InputError(
                    str(path), lineno, "'YYYY-MM-DD HH:MM:SS,<number>'", repr(",".join(row))
                ) from None
    t = np.asarray(ts)
    v = np.asarray(vals)[:, None]
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    keep = np.concatenate(([True], np.diff(t) > 0))
    t, v = t[keep], v[keep]
    if key not in windows:
        raise InputError(str(path), None, "an entry in combined_windows.json", "none")
    label = np.zeros(t.size, bool)
    for start, end in windows[key]:
        label |= (t >= _nab_time(start)) & (t <= _nab_time(end))
    n_train = min(int(NAB_PROBATION * t.size), NAB_PROBATION_MAX)
    cols = ("value",)
    return Case(
        key,
        HostSeries(key, t[:n_train], v[:n_train], cols, source=f"nab/{key}"),
        HostSeries(key, t[n_train:], v[n_train:], cols, source=f"nab/{key}"),
        label[n_train:],
    )


def nab_windows(root: Path) -> dict[str, list[list[str]]]:
    path = Path(root) / "labels" / "combined_windows.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(str(path), None, "NAB label windows", "no such file") from None


# --------------------------------------------------------------------------- runner


def points_from_windows(
    timestamps: np.ndarray,
    window_start: np.ndarray,
    window_end: np.ndarray,
    values: np.ndarray,
    fill: float | bool,
) -> np.ndarray:
    """Give each sample the value of the last window that starts at or before it and contains it;
    samples in no window get ``fill`` (the model saw too little data there)."""
    ts = np.asarray(timestamps, dtype=float)
    idx = np.searchsorted(window_start, ts, "right") - 1
    inside = (idx >= 0) & (ts < np.asarray(window_end)[np.clip(idx, 0, None)])
    out = np.full(ts.size, fill, dtype=np.asarray(values).dtype)
    out[inside] = np.asarray(values)[idx[inside]]
    return out


def smd_cases(root: Path, machines: Sequence[str] | None = None) -> list[Case]:
    """The named machines of a folder in SMD's layout (default: every one), loaded."""
    return [load_smd(root, name) for name in (machines or smd_machines(root))]


def fit_and_score(case: Case, window: float, params: dict | None = None) -> tuple[Any, Any]:
    """Our baseline trained on ``case.train`` (windows and hop ``window``) and its scored
    windows of ``case.test``, as ``minerwatch evaluate --smd/--nab`` makes them."""
    from minerwatch.baseline.batch import score_series
    from minerwatch.baseline.train import train_host

    model = train_host(case.train, window=window, hop=window, params=params)
    return model, score_series(model, case.test)


def run_case(
    case: Case, window: float, seed: int = 0, params: dict | None = None
) -> dict[str, metrics.PointReport]:
    """Train our baseline and the reference detectors on ``case.train``, score ``case.test``
    point by point."""
    _, scored = fit_and_score(case, window, params)
    t = case.test.timestamps
    pred = points_from_windows(t, scored.window_start, scored.window_end, scored.alert, False)
    score = points_from_windows(
        t, scored.window_start, scored.window_end, np.asarray(scored.score, dtype=float), np.nan
    )
    out = {"minerwatch": metrics.point_report(pred, case.label, score)}

    starts = np.floor(t / window) * window
    starts = np.unique(starts)
    ends = starts + window
    references = {
        "naive_iforest": NaiveIForest(window=window, hop=window, seed=seed),
        "pca": PcaReconstruction(window=window, hop=window),
    }
    for name, ref in references.items():
        ref.fit(case.train)
        r_score = ref.score(case.test, starts, ends)
        r_pred = points_from_windows(t, starts, ends, r_score > ref.threshold_, False)
        r_pts = points_from_windows(t, starts, ends, r_score, np.nan)
        out[name] = metrics.point_report(r_pred, case.label, r_pts)
    return out


def _assemble(dataset: str, results: dict[str, dict[str, metrics.PointReport]], meta: dict) -> dict:
    """JSON shape: ``mean`` and one entry per series for our detector, the same under
    ``reference.<detector>`` for the reference detectors, plus ``meta``."""

    def block(detector: str) -> dict:
        reports = {name: r[detector] for name, r in results.items()}
        out: dict = {"mean": metrics.mean_reports(list(reports.values()))}
        out.update({name: rep.as_dict() for name, rep in reports.items()})
        return out

    detectors = sorted({d for r in results.values() for d in r})
    out = block("minerwatch")
    out["reference"] = {d: block(d) for d in detectors if d != "minerwatch"}
    out["meta"] = {"dataset": dataset, **meta}
    return out


#: The false-alarm budget for the public benchmarks. Their machines are labelled anomalous
#: about 4 % of the time (SMD) and carry many short incidents, far from a fleet where an
#: operator wants one false alarm per host per week; a budget of one alert episode per
#: machine-day matches that prior. It is a parameter of the threshold calibration on the
#: training split only, never fitted to test labels.
PUBLIC_PARAMS: dict = {"max_alarms_per_week": 7.0, "threshold_margin": 0.0}


def evaluate_smd(
    root: Path,
    machines: list[str] | None = None,
    seed: int = 0,
    params: dict | None = None,
    progress: Progress = _stderr,
) -> dict:
    """Train one baseline per SMD machine on its train split and score its test split."""
    names = machines or smd_machines(root)
    for name in names:  # every file is checked before the first machine is trained
        load_smd(root, name)
    results = {}
    for i, name in enumerate(names, 1):
        progress(f"smd {i}/{len(names)}: {name}")
        results[name] = run_case(
            load_smd(root, name), SMD_STEP, seed, PUBLIC_PARAMS if params is None else params
        )
    return _assemble(
        "smd",
        results,
        {
            "path": str(root),
            "seed": seed,
            "window_s": SMD_STEP,
            "machines": len(names),
            "params": PUBLIC_PARAMS if params is None else params,
        },
    )


def evaluate_nab(
    root: Path,
    files: list[str] | None = None,
    seed: int = 0,
    params: dict | None = None,
    progress: Progress = _stderr,
) -> dict:
    """Train on each NAB file's probationary period and score the rest."""
    windows = nab_windows(root)
    names = files or nab_files(root)
    results = {}
    for i, name in enumerate(names, 1):
        progress(f"nab {i}/{len(names)}: {name}")
        results[name] = run_case(
            load_nab(root, name, windows),
            NAB_STEP,
            seed,
            PUBLIC_PARAMS if params is None else params,
        )
    return _assemble(
        "nab",
        results,
        {
            "path": str(root),
            "seed": seed,
            "window_s": NAB_STEP,
            "files": len(names),
            "params": PUBLIC_PARAMS if params is None else params,
        },
    )


def _fmt(x: float | int | None) -> str:
    if x is None:
        return "   -  "
    return f"{x:6d}" if isinstance(x, int) else f"{x:6.3f}"


def series_names(block: dict) -> list[str]:
    """The per-machine or per-file keys of a result block (not ``mean``/``reference``/``meta``)."""
    return [k for k in block if k not in ("mean", "reference", "meta")]


def format_point_table(result: dict) -> str:
    """Readable table: one row per series and the mean, for every detector."""
    cols = [
        ("f1", "F1"),
        ("precision", "P"),
        ("recall", "R"),
        ("f1_pa", "F1-PA"),
        ("event_f1", "evF1"),
        ("best_f1", "bestF1*"),
        ("fp", "FP pts"),
    ]
    lines = []
    blocks = {"minerwatch": result, **result["reference"]}
    for det, block in blocks.items():
        names = series_names(block)
        width = max([len(n) for n in names] + [12])
        lines.append(f"== {det} ({result['meta']['dataset']}) ==")
        lines.append(f"{'series':<{width}} " + " ".join(f"{h:>7}" for _, h in cols))
        for name in [*names, "mean"]:
            row = block[name]
            lines.append(f"{name:<{width}} " + " ".join(f"{_fmt(row.get(k)):>7}" for k, _ in cols))
        pooled = block["mean"]
        lines.append(
            f"{'pooled':<{width}} {_fmt(pooled['pooled_f1']):>7} "
            f"{_fmt(pooled['pooled_precision']):>7} {_fmt(pooled['pooled_recall']):>7} "
            f"{_fmt(pooled['pooled_pa_f1']):>7}"
        )
        lines.append("")
    lines.append(
        "F1, P, R: point-wise, threshold from training only (honest). F1-PA: with point "
        "adjustment. evF1: event level. FP pts: false-positive points (a file without "
        "anomalies has only this)."
    )
    lines.append("bestF1*: best threshold chosen on the test labels: an upper bound, not a result.")
    return "\n".join(lines)
