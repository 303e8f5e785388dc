"""Scoring a series: one host's samples -> feature rows -> scores, alerts and top features.

Numpy-only (no scikit-learn): ``minerwatch score`` and the retraining child's acceptance check
run it. Feature rows come from :func:`~minerwatch.features.pipeline.feature_rows`, the same
function training and the agent call.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from minerwatch.baseline.fitted import HostModel
from minerwatch.baseline.procbase import with_process_columns
from minerwatch.features.errors import InputError
from minerwatch.features.pipeline import feature_rows
from minerwatch.features.schema import AGENT_METRICS

if TYPE_CHECKING:  # the readers stay out of the numpy-only scoring path
    from minerwatch.features.io import HostSeries


#: Columns of the scores file (Unix seconds; ``top_features`` is ``;``-separated ``name=value``;
#: ``heavy_work`` 1 where the host did heavy work, which holds the alert rule's sustain).
SCORE_COLUMNS = (
    "host",
    "window_start",
    "window_end",
    "score",
    "threshold",
    "alert",
    "top_features",
    "processes",
    "heavy_work",
)


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
    #: Agent-only columns the model uses that the input lacked, scored as unknown.
    unknown: tuple[str, ...] = ()
    #: Per window that alerted, the unfamiliar processes in words (``; ``-separated); empty
    #: for the others and without a process table.
    processes: list[str] = field(default_factory=list)
    #: Per window, whether the host did heavy work (its marginal evidence then does not count
    #: toward the sustain); empty = none, as for a model without process tables.
    heavy: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def rows(self) -> list[list[object]]:
        """The windows as rows of :data:`SCORE_COLUMNS`, as ``score`` and ``fleet score`` write."""
        return [
            [
                self.host,
                f"{self.window_start[j]:.0f}",
                f"{self.window_end[j]:.0f}",
                f"{self.score[j]:.6f}",
                f"{self.threshold:.6f}",
                int(self.alert[j]),
                self.top_features[j],
                self.processes[j] if self.processes else "",
                int(self.heavy[j]) if len(self.heavy) else 0,
            ]
            for j in range(len(self.score))
        ]


def top_feature_labels(model: HostModel, F: np.ndarray, top: int = 3) -> list[str]:
    """``name=value`` of the strongest contributors per window, ``;``-separated."""
    share = model.contributions(F)
    F = model.full(F)
    order = np.argsort(-share, axis=1, kind="stable")[:, :top]
    names = model.feature_names
    out = []
    for i in range(len(F)):
        parts = [f"{names[j]}={F[i, j]:.4g}" for j in order[i] if share[i, j] > 0]
        out.append(";".join(parts))
    return out


def with_unknown(series: HostSeries, columns: tuple[str, ...]) -> HostSeries:
    """``series`` plus ``columns`` holding no value (NaN) in every sample."""
    blank = np.full((len(series.timestamps), len(columns)), np.nan)
    return replace(
        series, values=np.hstack([series.values, blank]), columns=series.columns + columns
    )


def score_series(model: HostModel, series: HostSeries) -> Scored:
    """Score every complete window of ``series`` with ``model`` and apply the alert rule.

    A model the agent trained also uses the columns only the agent records (``indicator_hits``:
    it needs the process table). Telemetry from ``collect`` or a fleet export lacks them; they
    are scored as unknown (NaN), which the model places at the host's usual value, so the
    other features score exactly as they would with the agent's data and the missing signal
    neither raises nor lowers the score. ``Scored.unknown`` names them.
    """
    if model.procs is not None:  # process features: from the table, or unknown without one
        series = with_process_columns(series, model.procs)
    unknown = tuple(c for c in model.columns if c in AGENT_METRICS and c not in series.columns)
    if unknown:
        series = with_unknown(series, unknown)
    win, names, F = feature_rows(
        series.timestamps,
        series.values,
        series.columns,
        model.window,
        model.hop,
        inputs=model.columns,
        source=series.source,
        host=series.host,
    )
    if names != model.feature_names[: model.n_base]:
        raise InputError(
            series.source or series.host,
            None,
            f"features {list(model.feature_names)}",
            f"{list(names)}",
        )
    score = model.score(F) if len(F) else np.zeros(0)
    identities = series.procs is not None
    heavy = model.heavy(F)
    alert = model.alerts(score, win.slots, identities=identities, heavy=heavy)
    processes: list[str] = []
    if model.procs is not None and series.procs is not None:
        processes = [
            "; ".join(model.procs.describe(series.procs.between(s, e + 1e-6))) if a else ""
            for s, e, a in zip(win.starts.tolist(), win.ends.tolist(), alert.tolist(), strict=True)
        ]
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
        unknown=unknown,
        processes=processes,
        heavy=np.asarray(heavy, dtype=bool),
    )
