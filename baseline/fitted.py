"""``HostModel``: one host's fitted model as numpy arrays, what the store saves and the agent loads.

The agent and batch scoring run it without scikit-learn. score = 1 - (1 - s_if) *
exp(-excess / excess_scale), in [0, 1], higher = more anomalous: ``s_if`` is the isolation
score on robustly scaled features; ``excess`` adds how far the sustained-compute features sit
*above* anything seen in training, which isolation trees cannot express (every point beyond
the training range is isolated at the same depth). Before scoring, an
:class:`~minerwatch.baseline.explain.Explainer` adds the "unexplained CPU" features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from minerwatch.baseline.calibrate import ALARMS_PER_WEEK, AlertState, alert_rule
from minerwatch.baseline.explain import Explainer, derived_names
from minerwatch.baseline.forest import NumpyForest
from minerwatch.baseline.lowrank import LowRank
from minerwatch.baseline.procbase import ProcessBaseline

VECTORS = ("center", "scale", "train_max", "typical_low", "typical_high", "excess_mask")


def hold_unexplained_low(
    Z: np.ndarray, n_base: int, center: np.ndarray, scale: np.ndarray, typical_low: np.ndarray
) -> np.ndarray:
    """``Z`` with the derived "unexplained" columns (from ``n_base`` on) raised to their
    typical low (5th percentile of training), in place.

    Less CPU than the host's work explains is never a miner, and a baseline learnt in a
    few hours has not seen every quiet hour: judged both ways, the evening's drop looked as
    anomalous to the forest as a miner's rise.
    """
    if Z.shape[1] > n_base:
        low = (typical_low[n_base:] - center[n_base:]) / scale[n_base:]
        Z[:, n_base:] = np.maximum(Z[:, n_base:], low)
    return Z


@dataclass(frozen=True)
class HostModel:
    """A fitted baseline reduced to arrays (explainer, scaling, forest, excess, calibration),
    with how to cut its input: the samples' ``columns``, ``window`` and ``hop``.

    ``feature_names`` are the pipeline's features followed by the explainer's derived ones;
    methods take the pipeline's features (``n_base`` columns) and add the derived ones.
    ``HostBaseline.fit`` leaves ``host``, ``columns`` and ``window`` at their defaults;
    :meth:`for_host` fills them in for the store.
    """

    feature_names: tuple[str, ...]
    center: np.ndarray
    scale: np.ndarray
    train_max: np.ndarray
    typical_low: np.ndarray
    typical_high: np.ndarray
    excess_mask: np.ndarray
    forest: NumpyForest
    threshold: float
    alert_windows: int = 3
    clear_windows: int = 3
    #: Windows above the threshold that open an alert without the margin (see
    #: :class:`~minerwatch.baseline.calibrate.AlertState`); None in models saved before it.
    sustain_windows: int | None = None
    alert_margin: float = 0.0
    #: Evidence of work this many training spreads above its median holds the sustain (see
    #: :class:`~minerwatch.baseline.calibrate.AlertState`); 0: never (models saved before it).
    heavy_work: float = 0.0
    #: Windows this far above the threshold that open an alert (the rule's fast path); None:
    #: none (models trained without process tables, or saved before it).
    fast_windows: int | None = None
    fast_margin: float = 0.0
    excess_scale: float = 1.0
    explainer: Explainer | None = None
    forest_columns: np.ndarray | None = None
    seen_max: np.ndarray | None = None
    #: reconstruction error of the extra columns, a derived feature after the explainer's
    lowrank: LowRank | None = None
    #: the error's own sub-score is ``1 - exp(-error / lowrank_unit)``; 0: not judged on its
    #: own (models saved before it judged the error in the forest)
    lowrank_unit: float = 0.0
    host: str = ""
    columns: tuple[str, ...] = ()
    window: float = 60.0
    hop: float = 60.0
    meta: dict[str, Any] = field(default_factory=dict)
    #: The host's process baseline when it was trained with a process table.
    procs: ProcessBaseline | None = None

    def for_host(
        self,
        host: str,
        columns: tuple[str, ...],
        base: tuple[str, ...],
        window: float,
        hop: float,
        meta: dict[str, Any],
    ) -> HostModel:
        """The same model bound to a host's samples, with the pipeline's feature names
        ``base`` (the derived ones follow them)."""
        bound = replace(
            self,
            host=host,
            columns=tuple(columns),
            window=float(window),
            hop=float(hop),
            meta=meta,
        )
        tail = self.lowrank.names if self.lowrank is not None else ()
        if self.explainer is None:
            return replace(bound, feature_names=tuple(base) + tail)
        derived = derived_names(base, self.explainer.targets)
        return replace(
            bound,
            feature_names=tuple(base) + derived + tail,
            explainer=replace(self.explainer, names=derived),
        )

    def _rule(self, identities: bool = True) -> dict[str, Any]:
        """The alert rule's parameters (``identities=False``: see :meth:`alerts`)."""
        return {
            "k": self.alert_windows,
            "clear": self.clear_windows,
            "sustain": self.sustain_windows if identities else None,
            "margin": self.alert_margin,
            "fast": self.fast_windows if identities else None,
            "fast_margin": self.fast_margin,
        }

    def alert_state(self) -> AlertState:
        """The streaming alert rule this model was calibrated for (the agent, ``fleet serve``)."""
        return AlertState(self.threshold, **self._rule())

    @property
    def alert_delay_windows(self) -> int:
        """Windows above the threshold the rule may need before it opens an alert."""
        return max(self.alert_windows, self.sustain_windows or 0)

    def alerts(
        self,
        scores: np.ndarray,
        slots: np.ndarray | None = None,
        identities: bool = True,
        heavy: np.ndarray | None = None,
    ) -> np.ndarray:
        """The same rule over a series of window scores (``score``, ``evaluate``); ``heavy``
        is :meth:`heavy` of the windows' features.

        ``identities=False``: the telemetry had no process table, so no window can carry an
        unknown process's evidence, and marginal evidence opens alerts as in a model trained
        without one.
        """
        return alert_rule(scores, self.threshold, slots, **self._rule(identities), heavy=heavy)

    def heavy(self, F: np.ndarray) -> np.ndarray:
        """Per window (pipeline features ``F``): whether the host did heavy work in it, whose
        marginal evidence the alert rule does not count toward the sustain."""
        if self.explainer is None or self.heavy_work <= 0:
            return np.zeros(len(F), dtype=bool)
        return self.explainer.heavy(np.asarray(F, dtype=np.float64), self.heavy_work)

    def heavy_inputs(self, f: np.ndarray, top: int = 2) -> list[dict[str, Any]]:
        """The evidence of work that made one window heavy (pipeline features ``f``), the
        farthest above its training median first; empty when the window was not heavy."""
        f = np.asarray(f, dtype=np.float64).reshape(1, -1)
        if self.explainer is None or self.heavy_work <= 0:
            return []  # never heavy; else the filter below leaves nothing unless it was
        ex = self.explainer
        spreads = ex.work(f)[0]
        order = np.argsort(-np.nan_to_num(spreads, nan=-np.inf), kind="stable")
        return [
            {
                "feature": self.feature_names[int(ex.inputs[j])],
                "value": float(f[0, int(ex.inputs[j])]),
                "typical": float(ex.in_center[j]),
                "spreads": float(spreads[j]),
            }
            for j in order[:top]
            if spreads[j] >= self.heavy_work
        ]

    @property
    def n_base(self) -> int:
        derived = (len(self.explainer.names) if self.explainer else 0) + (
            len(self.lowrank.names) if self.lowrank else 0
        )
        return len(self.feature_names) - derived

    def full(self, F: np.ndarray) -> np.ndarray:
        """Pipeline features plus the derived ones ("unexplained" CPU, extra columns' error)."""
        F = np.asarray(F, dtype=np.float64)
        if F.ndim != 2 or F.shape[1] != self.n_base:
            raise ValueError(f"expected {self.n_base} features, got {F.shape}")
        if self.lowrank is not None:
            F_x = F if self.explainer is None else np.hstack([F, self.explainer.derive(F)])
            return np.hstack([F_x, self.lowrank.derive(F)])
        if self.explainer is None:
            return F
        return np.hstack([F, self.explainer.derive(F)])

    def standardize(self, F: np.ndarray) -> np.ndarray:
        """Robust z-scores of :meth:`full`; a missing value sits at the centre (neutral);
        unexplained CPU is held at its typical low (:func:`hold_unexplained_low`)."""
        return self._standardize_full(self.full(F))

    def _standardize_full(self, full: np.ndarray) -> np.ndarray:
        Z = (full - self.center) / self.scale
        out: np.ndarray = np.clip(np.nan_to_num(Z, nan=0.0, posinf=1e6, neginf=-1e6), -1e6, 1e6)
        return hold_unexplained_low(out, self.n_base, self.center, self.scale, self.typical_low)

    def excess(self, Z: np.ndarray) -> np.ndarray:
        """Per-feature distance above the training maximum, in training ranges (masked).

        The unit is the distance from the median to the maximum seen in training: a busier
        day than any in training on a host whose load swings widely barely counts, while the
        same absolute rise on a host that is always flat counts a lot.
        """
        unit = np.maximum(self.train_max, 1.0)
        out: np.ndarray = np.maximum(Z - self.train_max, 0.0) / unit * self.excess_mask
        return out

    def forest_input(self, Z: np.ndarray) -> np.ndarray:
        """The standardized columns the forest judges (all of them by default).

        With ``seen_max`` (the largest training values), a value between it and the widened
        edge ``train_max`` is shown to the forest as the largest seen, and one beyond the
        edge is moved down by the margin: within the margin a model of little data has no
        evidence either way, so the forest must not isolate it either.
        """
        if self.seen_max is not None:
            Z = np.where(Z > self.seen_max, self.seen_max + np.maximum(Z - self.train_max, 0), Z)
        return Z if self.forest_columns is None else np.asarray(Z[:, self.forest_columns])

    def score(self, F: np.ndarray) -> np.ndarray:
        """Our 0-1 anomaly score per row of pipeline features, higher = worse."""
        full = self.full(F)
        Z = self._standardize_full(full)
        if self.forest.max_samples < 2:  # trees of one window isolate nothing: neutral
            s_if = np.full(len(Z), 0.5)
        else:
            s_if = self.forest.anomaly_score(self.forest_input(Z))
        e = self.excess(Z).sum(axis=1)
        out: np.ndarray = 1.0 - (1.0 - s_if) * np.exp(-e / self.excess_scale)
        if self.lowrank is not None:
            out = self.combine(out, full[:, -1])
        return out

    def combine(self, score: np.ndarray, error: np.ndarray) -> np.ndarray:
        """``score`` (forest and excess) and the low-rank ``error``'s own sub-score, the
        larger of the two: the error is scaled at training so that both sub-scores reach
        the threshold at the same false-alarm rate, so either can raise an alert alone.

        >>> import numpy as np
        >>> m = HostModel.__new__(HostModel)
        >>> object.__setattr__(m, "lowrank_unit", 2.0)
        >>> m.combine(np.array([0.5, 0.5]), np.array([0.0, 2.0])).round(3).tolist()
        [0.5, 0.632]
        """
        if self.lowrank_unit <= 0:
            return score
        sub = -np.expm1(-np.maximum(np.nan_to_num(error, nan=0.0), 0.0) / self.lowrank_unit)
        out: np.ndarray = np.maximum(score, sub)
        return out

    def contributions(self, F: np.ndarray) -> np.ndarray:
        """Each feature's share of the deviation (rows sum to 1, or 0 when nothing deviates).

        Deviation = distance outside the typical (5th-95th percentile) band in scale units,
        plus the excess above the training maximum, over the features the model judges:
        the part of a window a person would point at when asked "what is unusual here".
        """
        Z = self.standardize(F)
        lo = (self.typical_low - self.center) / self.scale
        hi = (self.typical_high - self.center) / self.scale
        dev = np.maximum(Z - hi, 0.0) + np.maximum(lo - Z, 0.0) + self.excess(Z)
        if self.forest_columns is not None:
            judged = np.zeros(Z.shape[1], dtype=bool)
            judged[self.forest_columns] = True
            judged[-1] |= self.lowrank is not None and self.lowrank_unit > 0  # its own score
            dev = dev * (judged | (self.excess_mask > 0))
        total = dev.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, dev / np.where(total > 0, total, 1.0), 0.0)

    def explain(self, f: np.ndarray, top: int = 3) -> list[dict[str, Any]]:
        """The features that drove one window's score, with the baseline's typical range."""
        f = np.asarray(f, dtype=np.float64).reshape(1, -1)
        full = self.full(f)[0]
        share = self.contributions(f)[0]
        order = [j for j in np.argsort(-share, kind="stable") if share[j] > 0][:top]
        return [
            {
                "feature": self.feature_names[j],
                "value": float(full[j]),
                "typical_low": float(self.typical_low[j]),
                "typical_high": float(self.typical_high[j]),
                "contribution": float(share[j]),
            }
            for j in order
        ]

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything numeric, for the store's ``.npz`` (no pickle)."""
        arrays = {f"forest_{k}": v for k, v in self.forest.to_arrays().items()}
        for name in VECTORS:
            arrays[name] = np.asarray(getattr(self, name), dtype=np.float64)
        if self.explainer is not None:
            arrays.update(self.explainer.to_arrays())
        if self.forest_columns is not None:
            arrays["forest_columns"] = np.asarray(self.forest_columns, dtype=np.int64)
        if self.seen_max is not None:
            arrays["seen_max"] = np.asarray(self.seen_max, dtype=np.float64)
        if self.lowrank is not None:
            arrays.update(self.lowrank.to_arrays())
        if self.procs is not None:
            arrays.update(self.procs.to_arrays())
        return arrays

    def params(self) -> dict[str, Any]:
        """Everything else, for the store's ``meta.json``."""
        return (
            {
                "host": self.host,
                "columns": list(self.columns),
                "window": self.window,
                "hop": self.hop,
                "feature_names": list(self.feature_names[: self.n_base]),
                "derived_names": list(self.explainer.names) if self.explainer else [],
                "threshold": self.threshold,
                "alert_windows": self.alert_windows,
                "clear_windows": self.clear_windows,
                "excess_scale": self.excess_scale,
            }
            | (
                {
                    "sustain_windows": self.sustain_windows,
                    "alert_margin": self.alert_margin,
                    "heavy_work": self.heavy_work,
                }
                if self.sustain_windows is not None
                else {}
            )
            | (
                {"fast_windows": self.fast_windows, "fast_margin": self.fast_margin}
                if self.fast_windows is not None
                else {}
            )
            | (
                {"lowrank_names": list(self.lowrank.names), "lowrank_unit": self.lowrank_unit}
                if self.lowrank
                else {}
            )
        )

    @classmethod
    def from_parts(cls, arrays: dict[str, np.ndarray], params: dict[str, Any]) -> HostModel:
        """Rebuild from :meth:`to_arrays` and :meth:`params`; ``params`` becomes ``meta``."""
        forest = NumpyForest.from_arrays(
            {
                k.removeprefix("forest_"): v
                for k, v in arrays.items()
                if k.startswith("forest_") and k != "forest_columns"
            }
        )
        base = tuple(str(n) for n in params["feature_names"])
        derived = tuple(str(n) for n in params.get("derived_names", []))
        lr_names = tuple(str(n) for n in params.get("lowrank_names", []))  # absent before it
        names = base + derived + lr_names
        explainer = Explainer.from_arrays(arrays, derived) if derived else None
        lowrank = LowRank.from_arrays(arrays, lr_names) if lr_names else None
        vectors = {n: np.asarray(arrays[n], dtype=np.float64) for n in VECTORS}
        columns = arrays.get("forest_columns")
        width = len(columns) if columns is not None else len(names)
        seen = arrays.get("seen_max")  # absent from models saved before it
        if seen is not None:
            vectors["seen_max"] = np.asarray(seen, dtype=np.float64)
        bad = [n for n, v in vectors.items() if v.shape != (len(names),)]
        if bad or forest.n_features != width:
            raise ValueError(f"model arrays do not match {len(names)} features: {bad}")
        return cls(
            feature_names=names,
            **vectors,
            forest=forest,
            threshold=float(params["threshold"]),
            alert_windows=int(params["alert_windows"]),
            clear_windows=int(params["clear_windows"]),
            sustain_windows=(  # absent before it: every window above counts as strong
                int(params["sustain_windows"]) if "sustain_windows" in params else None
            ),
            alert_margin=float(params.get("alert_margin", 0.0)),
            heavy_work=float(params.get("heavy_work", 0.0)),  # absent before it: never
            fast_windows=int(params["fast_windows"]) if "fast_windows" in params else None,
            fast_margin=float(params.get("fast_margin", 0.0)),
            excess_scale=float(params["excess_scale"]),
            explainer=explainer,
            lowrank=lowrank,
            lowrank_unit=float(params.get("lowrank_unit", 0.0)),  # absent before it
            forest_columns=None if columns is None else np.asarray(columns, dtype=np.int64),
            host=str(params["host"]),
            columns=tuple(str(c) for c in params["columns"]),
            window=float(params["window"]),
            hop=float(params["hop"]),
            meta=params,
            procs=ProcessBaseline.from_arrays(arrays),
        )


def alarm_budget(model: HostModel) -> float:
    """The false-alarm budget ``model`` was calibrated for (``--alarms-per-week``), so
    retraining keeps it; the default for models that do not say."""
    params = model.meta.get("params")
    value = params.get("max_alarms_per_week") if isinstance(params, dict) else None
    return float(value) if isinstance(value, int | float) and value > 0 else ALARMS_PER_WEEK


def trained_otherwise(
    model: HostModel,
    window: float,
    hop: float,
    alert_windows: int,
    sustain_windows: int,
    alert_margin: float,
    alarms_per_week: float,
) -> list[str]:
    """What ``model`` was trained with that the settings asked for differ from, in words
    (``"alert_windows 3, asked 5"``); empty when it is the model asked for. Its windows and
    its alert rule and budget are fixed at training (the threshold is calibrated for them),
    so a changed setting takes effect only in a model trained with it. A model from before
    the sustain rule is not told apart for it (retraining gives it today's)."""
    out = []
    if (model.window, model.hop) != (window, hop):
        out.append(
            f"{model.window:g}s windows every {model.hop:g}s, asked {window:g}s every {hop:g}s"
        )
    if model.alert_windows != alert_windows:
        out.append(f"alert_windows {model.alert_windows}, asked {alert_windows}")
    if model.sustain_windows is not None:
        if model.sustain_windows != sustain_windows:
            out.append(f"sustain_windows {model.sustain_windows}, asked {sustain_windows}")
        if not math.isclose(model.alert_margin, alert_margin):
            out.append(f"alert_margin {model.alert_margin:g}, asked {alert_margin:g}")
    budget = alarm_budget(model)
    if not math.isclose(budget, alarms_per_week):
        out.append(f"alarms_per_week {budget:g}, asked {alarms_per_week:g}")
    return out
