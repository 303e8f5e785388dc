"""Windows -> feature vectors: the one set of pure functions shared by training and scoring.

A miner is a *sustained* plateau of CPU, usually dominated by one process, not explained by
more requests, often at hours when the host is normally quiet. Legitimate load follows the
host's daily rhythm, comes with traffic, disk or many short processes, and mostly ends soon.
The features below therefore look at CPU now and at its *floor* over 3, 5 and 15 minutes
(a floor only rises when the load is sustained, so a short burst leaves it alone), the
busiest process's floors and share, the host's work (traffic, disk, context switches,
running processes, system and iowait CPU) that may explain the CPU, and the time of day.
Rolling features look only backwards, so a live agent and a batch job produce identical
values from identical samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from minerwatch.features.procs import GC_COLUMNS, SUSTAINED_COLUMNS
from minerwatch.features.windows import Windows

DAY = 86400.0


#: Feature roles. "context" features describe the work the host is doing (traffic, disk,
#: process churn, system CPU) and only serve to *explain* CPU, so a backup or a deploy is not
#: an anomaly on its own. "explained" features are CPU levels and floors: the baseline judges
#: the part of them the context does not explain (their residuals), not their raw level.
#: "compute" features are judged as they are; "time" feeds both the explanation and the
#: judgement, so a cron at its usual hour is normal and the same load at 3 a.m. is not.
COMPUTE, EXPLAINED, CONTEXT, TIME = "compute", "explained", "context", "time"


@dataclass(frozen=True)
class FeatureSpec:
    """One feature: its inputs, role, unit of resolution and whether excess above range counts.

    ``resolution`` is the smallest change that means anything (a floor for the scale, so a
    feature that never moved in training does not turn a tiny wiggle into an alarm).
    ``excess``: values far *above* everything seen in training raise the score directly
    (isolation trees saturate outside the training range and cannot say "far").
    ``evidence`` (context only): evidence of work a pure compute loop does not produce, which
    may explain CPU somewhat beyond its training range (:mod:`minerwatch.baseline.explain`).
    """

    name: str
    inputs: tuple[str, ...]
    resolution: float
    excess: bool = False
    role: str = COMPUTE
    evidence: bool = False
    #: a column that, when the data has it, gives a better version of this feature
    unless: str = ""


class _Context:
    """Dense per-slot arrays of one host's windows, with the rolling helpers."""

    def __init__(self, win: Windows) -> None:
        self.win = win
        self.first = int(win.slots[0]) if len(win) else 0
        self.size = int(win.slots[-1]) - self.first + 1 if len(win) else 0
        self.index = (win.slots - self.first).astype(np.int64)

    def slots_for(self, seconds: float) -> int:
        return max(1, int(round(seconds / self.win.hop)))

    def dense(self, values: np.ndarray) -> np.ndarray:
        out = np.full(self.size, np.nan)
        out[self.index] = values
        return out

    def mean(self, name: str) -> np.ndarray:
        return self.win.means[:, self.win.columns.index(name)]

    def floor(self, name: str) -> np.ndarray:
        return self.win.floors[:, self.win.floor_columns.index(name)]

    def rolling_mean(self, values: np.ndarray, seconds: float) -> np.ndarray:
        n = self.slots_for(seconds)
        x = self.dense(values)
        ok = np.isfinite(x)
        cs = np.concatenate([[0.0], np.cumsum(np.where(ok, x, 0.0))])
        cn = np.concatenate([[0.0], np.cumsum(ok)])
        hi = np.arange(1, self.size + 1)
        lo = np.maximum(hi - n, 0)
        total, seen = cs[hi] - cs[lo], cn[hi] - cn[lo]
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(seen > 0, total / np.maximum(seen, 1), np.nan)
        return out[self.index]

    def rolling_min(self, values: np.ndarray, seconds: float) -> np.ndarray:
        n = self.slots_for(seconds)
        x = np.concatenate([np.full(n - 1, np.nan), self.dense(values)])
        view = sliding_window_view(x, n)
        out: np.ndarray = np.fmin.reduce(view, axis=1)[self.index]
        return out


def _log1p(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.log1p(np.maximum(x, 0.0))
    return out


def _tod(c: _Context, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    return fn(2 * np.pi * ((c.win.starts % DAY) / DAY))


_CPU = ("cpu_percent",)
_TOP = ("top_proc_cpu_percent",)
_PPS = ("net_rx_pps", "net_tx_pps")
_SUSTAINED, _SUSTAINED_TOP = SUSTAINED_COLUMNS

#: Every feature the pipeline knows, with the function that computes it.
REGISTRY: tuple[tuple[FeatureSpec, Callable[[_Context], np.ndarray]], ...] = (
    (FeatureSpec("cpu_percent", _CPU, 2.0, role=EXPLAINED), lambda c: c.mean("cpu_percent")),
    (
        FeatureSpec("cpu_floor_3m", _CPU, 2.0, role=EXPLAINED),
        lambda c: c.rolling_min(c.floor("cpu_percent"), 180),
    ),
    (
        FeatureSpec("cpu_floor_5m", _CPU, 2.0, role=EXPLAINED),
        lambda c: c.rolling_min(c.floor("cpu_percent"), 300),
    ),
    (
        FeatureSpec("cpu_floor_15m", _CPU, 2.0, role=EXPLAINED, unless=_SUSTAINED),
        lambda c: c.rolling_min(c.floor("cpu_percent"), 900),
    ),
    (
        # with a process table, the 15-minute floors are the processes' own (the CPU each
        # held in every sample, summed; the largest): a build's thousands of compiler
        # processes of seconds each hold none of it, a miner all of its own
        FeatureSpec("cpu_sustained_15m", (_SUSTAINED,), 5.0, role=EXPLAINED),
        lambda c: c.mean(_SUSTAINED),
    ),
    (
        FeatureSpec("top_sustained_15m", (_SUSTAINED_TOP,), 5.0, role=EXPLAINED),
        lambda c: c.mean(_SUSTAINED_TOP),
    ),
    (
        FeatureSpec("top_proc_floor_3m", _TOP, 5.0, role=EXPLAINED),
        lambda c: c.rolling_min(c.floor("top_proc_cpu_percent"), 180),
    ),
    (
        FeatureSpec("top_proc_floor_5m", _TOP, 5.0, role=EXPLAINED),
        lambda c: c.rolling_min(c.floor("top_proc_cpu_percent"), 300),
    ),
    (
        FeatureSpec("top_proc_floor_15m", _TOP, 5.0, role=EXPLAINED, unless=_SUSTAINED_TOP),
        lambda c: c.rolling_min(c.floor("top_proc_cpu_percent"), 900),
    ),
    (
        # percent-of-one-core over percent-of-host: the share of busy CPU one process holds,
        # times the core count (a per-host constant the baseline absorbs)
        FeatureSpec("top_proc_share_5m", (*_CPU, *_TOP), 0.05),
        lambda c: c.rolling_min(
            c.mean("top_proc_cpu_percent") / np.maximum(c.mean("cpu_percent"), 1.0), 300
        ),
    ),
    (
        FeatureSpec("net_pps_log_5m", _PPS, 0.1, role=CONTEXT, evidence=True),
        lambda c: c.rolling_mean(_log1p(c.mean("net_rx_pps") + c.mean("net_tx_pps")), 300),
    ),
    (
        FeatureSpec(
            "disk_bps_log_5m",
            ("disk_read_bps", "disk_write_bps"),
            0.1,
            role=CONTEXT,
            evidence=True,
        ),
        lambda c: c.rolling_mean(_log1p(c.mean("disk_read_bps") + c.mean("disk_write_bps")), 300),
    ),
    (
        FeatureSpec("ctx_switches_log_5m", ("ctx_switches_ps",), 0.1, role=CONTEXT, evidence=True),
        lambda c: c.rolling_mean(_log1p(c.mean("ctx_switches_ps")), 300),
    ),
    (
        FeatureSpec("procs_running_5m", ("procs_running",), 1.0, role=CONTEXT),
        lambda c: c.rolling_mean(c.mean("procs_running"), 300),
    ),
    (
        FeatureSpec("cpu_system_5m", ("cpu_system_percent",), 1.0, role=CONTEXT),
        lambda c: c.rolling_mean(c.mean("cpu_system_percent"), 300),
    ),
    (
        FeatureSpec("cpu_iowait_5m", ("cpu_iowait_percent",), 1.0, role=CONTEXT, evidence=True),
        lambda c: c.rolling_mean(c.mean("cpu_iowait_percent"), 300),
    ),
    (
        # written by the agent only: a host normally has no miner indicators at all, so
        # any hit is far above the training range and raises the score through the excess
        FeatureSpec("indicator_hits", ("indicator_hits",), 1.0, excess=True),
        lambda c: c.mean("indicator_hits"),
    ),
    # From the process table, through the host's process baseline (baseline/procbase.py):
    # zero in training by construction, so any CPU held by a new or disguised process is
    # above the training range and raises the score through the excess. The new and odd
    # CPU count from the first window (miners are caught in minutes); a never-seen installed
    # tool (or a familiar one under another user), a known process far above its peak or at
    # an hour it never runs count only once sustained (an administrator's copy, a colleague's
    # compile, a GC storm, a late job).
    (
        FeatureSpec("proc_new_cpu", ("proc_new_cpu_percent",), 25.0, excess=True),
        lambda c: c.mean("proc_new_cpu_percent"),
    ),
    (
        # the column is already each process's own 15-minute floor (a build's thousands of
        # short compiler processes never hold one), summed
        FeatureSpec("proc_new_tool_floor_15m", ("proc_new_tool_cpu_percent",), 100.0, excess=True),
        lambda c: c.mean("proc_new_tool_cpu_percent"),
    ),
    (
        FeatureSpec("proc_odd_cpu", ("proc_odd_cpu_percent",), 10.0, excess=True),
        lambda c: c.mean("proc_odd_cpu_percent"),
    ),
    (
        FeatureSpec("proc_surge_floor_15m", ("proc_surge_cpu_percent",), 50.0, excess=True),
        lambda c: c.rolling_min(c.mean("proc_surge_cpu_percent"), 900),
    ),
    (
        FeatureSpec("proc_offhour_floor_15m", ("proc_offhour_cpu_percent",), 100.0, excess=True),
        lambda c: c.rolling_min(c.mean("proc_offhour_cpu_percent"), 900),
    ),
    (FeatureSpec("tod_sin", (), 0.05, role=TIME), lambda c: _tod(c, np.sin)),
    (FeatureSpec("tod_cos", (), 0.05, role=TIME), lambda c: _tod(c, np.cos)),
)

#: Schema columns that feed the features above; any other numeric column is "extra".
USED_COLUMNS = frozenset(col for spec, _ in REGISTRY for col in spec.inputs)
EXTRA_PREFIX = "x_"


def feature_specs(columns: tuple[str, ...]) -> tuple[FeatureSpec, ...]:
    """The features computable from ``columns``: known ones, then two per extra column."""
    known = tuple(
        spec
        for spec, _ in REGISTRY
        if all(i in columns for i in spec.inputs) and spec.unless not in columns
    )
    extras: list[FeatureSpec] = []
    for col in columns:
        if col in USED_COLUMNS or col in _IGNORED:
            continue
        extras.append(FeatureSpec(f"{EXTRA_PREFIX}{col}", (col,), 1e-3))
        extras.append(FeatureSpec(f"{EXTRA_PREFIX}{col}_dev_15m", (col,), 1e-3, excess=True))
    return known + tuple(extras)


#: Schema metrics that drift with no bearing on compute hijacking (memory grows, process
#: counts change with deploys); they stay in the data but do not become features.
_IGNORED = frozenset(
    {
        "mem_percent",
        "procs_total",
        "tcp_established",
        "net_rx_bps",
        "net_tx_bps",
        "cpu_user_percent",
        "load1",
        "cpu_cores",
        *GC_COLUMNS,  # not judged: taken out of the CPU columns (pipeline.py)
    }
)


def feature_names(columns: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(spec.name for spec in feature_specs(columns))


def extract(win: Windows) -> tuple[tuple[str, ...], np.ndarray]:
    """Compute the feature matrix (one row per window) for the columns ``win`` carries."""
    specs = feature_specs(win.columns)
    out = np.full((len(win), len(specs)), np.nan)
    if len(win) == 0:
        return tuple(s.name for s in specs), out
    ctx = _Context(win)
    functions = {spec.name: fn for spec, fn in REGISTRY}
    for j, spec in enumerate(specs):
        if spec.name in functions:
            with np.errstate(invalid="ignore", divide="ignore"):
                out[:, j] = functions[spec.name](ctx)
            continue
        col = spec.inputs[0]
        base = ctx.mean(col)
        out[:, j] = (
            base if not spec.name.endswith("_dev_15m") else base - ctx.rolling_mean(base, 900)
        )
    return tuple(s.name for s in specs), out
