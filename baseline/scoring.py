"""Series -> windows -> features -> scores and alerts. Numpy-only: batch scoring and the agent.

Training (``minerwatch.baseline.train``) calls :func:`series_features` too, so both sides cut windows and
compute features with the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minerwatch.baseline.calibrate import alert_rule
from minerwatch.baseline.scorer import HostModel
from minerwatch.features.errors import InputError
from minerwatch.features.extract import extract
from minerwatch.features.io import HostSeries
from minerwatch.features.windows import Windows, make_windows, sample_interval


@dataclass(frozen=True)
class Scored:
    """One row per window of a host's scored telemetry."""

    host: str
    window_start: np.ndarray
    window_end: np.ndarray
    slots: np.ndarray
    score: np.ndarray
    alert: np.ndarray
    threshold: float
    features: np.ndarray
    feature_names: tuple[str, ...]
    top_features: list[str]


def series_features(
    series: HostSeries, window: float, hop: float, columns: tuple[str, ...] | None = None
) -> tuple[Windows, tuple[str, ...], np.ndarray]:
    """Windows and feature matrix of a series, restricted to ``columns`` (a model's inputs)."""
    if columns is None:
        columns = series.columns
    missing = [c for c in columns if c not in series.columns]
    if missing:
        raise InputError(
            series.source or series.host,
            None,
            f"the columns the model was trained on for host {series.host!r}",
            f"missing {', '.join(missing)}",
        )
    idx = [series.columns.index(c) for c in columns]
    interval = sample_interval(series.timestamps, window)
    if interval > window:
        raise InputError(
            series.source or series.host,
            None,
            f"samples at most {window:g}s apart (the window length)",
            f"a typical interval of {interval:g}s",
        )
    until = float(series.timestamps[-1]) + interval if len(series.timestamps) else None
    win = make_windows(
        series.timestamps,
        series.values[:, idx],
        columns,
        window,
        hop,
        interval=interval,
        until=until,
    )
    names, F = extract(win)
    return win, names, F


def top_feature_labels(model: HostModel, F: np.ndarray, top: int = 3) -> list[str]:
    """``name=value`` of the strongest contributors per window, ``;``-separated."""
    share = model.scorer.contributions(F)
    F = model.scorer.full(F)
    order = np.argsort(-share, axis=1, kind="stable")[:, :top]
    names = model.scorer.feature_names
    out = []
    for i in range(len(F)):
        parts = [f"{names[j]}={F[i, j]:.4g}" for j in order[i] if share[i, j] > 0]
        out.append(";".join(parts))
    return out


def score_series(model: HostModel, series: HostSeries) -> Scored:
    """Score every complete window of ``series`` with ``model`` and apply the alert rule."""
    win, names, F = series_features(series, model.window, model.hop, model.columns)
    if names != model.scorer.feature_names[: model.scorer.n_base]:
        raise InputError(
            series.source or series.host,
            None,
            f"features {list(model.scorer.feature_names)}",
            f"{list(names)}",
        )
    score = model.scorer.score(F) if len(F) else np.zeros(0)
    alert = alert_rule(
        score, model.threshold, win.slots, model.scorer.alert_windows, model.scorer.clear_windows
    )
    return Scored(
        host=series.host,
        window_start=win.starts.astype(np.float64),
        window_end=win.ends.astype(np.float64),
        slots=win.slots,
        score=score,
        alert=alert,
        threshold=model.threshold,
        features=F,
        feature_names=names,
        top_features=top_feature_labels(model, F) if len(F) else [],
    )
