"""``minerwatch fleet serve``: score every host from Prometheus each interval, export the agent's
metric names with a ``host`` label, and retrain on schedule.

A cycle reads Prometheus with one query per metric for the whole selector (never one per
host): the first cycle the last :data:`LOOKBACK_S`, later ones only what is new since the
previous read (from :data:`OVERLAP_S` before its end). Each host's raw samples are held between
cycles (:class:`Samples`, merged and cut to the lookback), so they are what a full read would
give, and the series whose newest sample has left the lookback are forgotten
(:meth:`FleetServer._forget`), so what is held follows the hosts reporting, not every host
ever seen, and the models of hosts that sent nothing in the lookback are unloaded until they
report again (:class:`Dormant`); answers are parsed straight to numpy arrays and mapped to
telemetry by :func:`host_telemetry` with ``fleet train``'s own mapping
(:func:`~minerwatch.service.fleet.nodeexporter.map_points`; no pandas per cycle), and the windows
completed since the previous cycle are scored with each host's stored model and its own
streaming alert rule (:class:`~minerwatch.baseline.calibrate.AlertState`), as the agent does.
The alert state is written to :data:`STATE_FILE` after every cycle and read back at start, so
a restart neither fires an open alert again nor forgets it. The exposition reuses the agent's
metric families (:func:`~minerwatch.service.exporter.snapshot_families`) with a ``host`` label
added, so the dashboard and the alert rules serve both modes. Retraining runs in a background
thread, one host at a time, through the agent's own :func:`~minerwatch.service.retrain.retrain`
(candidate checked against the current model on recent clean windows) after leaving out the
windows the host alerted on, widened as the agent widens them.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from minerwatch.baseline.calibrate import AlertState
from minerwatch.baseline.exclude import exclusion_margin, exclusion_mask, outside_dismissed
from minerwatch.baseline.fitted import HostModel, alarm_budget
from minerwatch.baseline.store import META, ModelError, load_model, meta_host, read_key
from minerwatch.features.atomic import atomic_write
from minerwatch.features.errors import InputError
from minerwatch.features.io import HostSeries
from minerwatch.features.pipeline import feature_rows
from minerwatch.features.schema import AGENT_METRICS, SCHEMA_VERSION
from minerwatch.service.exporter import (
    METRICS,
    ExpositionCache,
    WebConfigCollector,
    snapshot_families,
)
from minerwatch.service.fleet.dismiss import (
    DISMISSED_FILE,
    STATE_FILE,
    read_dismissed,
    spans_by_host,
)
from minerwatch.service.fleet.nodeexporter import (
    CPU_MODES,
    DEVICE_FILTERS,
    PROCESS_METRICS,
    PROCESS_MODES,
    HostTelemetry,
    Points,
    TargetKey,
    host_of,
    map_points,
    selector_matchers,
    series_selector,
    target_key,
    target_text,
    targets_note,
)
from minerwatch.service.fleet.nodeexporter import (
    METRICS as NODE_METRICS,
)
from minerwatch.service.fleet.promclient import (
    Connection,
    PromClient,
    PrometheusError,
    PrometheusUnavailable,
    RawSeries,
)
from minerwatch.service.httpserver import Server, Serving, bind, bind_error
from minerwatch.service.resume import names as _names
from minerwatch.service.retrain import FAILURE_REASONS
from minerwatch.service.state import AgentSnapshot, package_version
from minerwatch.service.stopflag import StopFlag
from minerwatch.service.units import format_duration
from minerwatch.service.webconfig import LiveProtection

log = logging.getLogger("minerwatch.fleet")

#: Seconds of samples each cycle reads per host: the agent's rolling buffer (the longest
#: feature looks back 15 minutes; twice that so the first windows after a restart are whole).
LOOKBACK_S = 1800.0
#: Time around alerted windows that retraining leaves out, at most (as the agent).
EXCLUDE_MARGIN_S = 3600.0
#: A host whose retraining failed is tried again after this long, twice as long after each
#: failure in a row, at most :data:`RETRY_MAX_S` (or the schedule, if sooner).
RETRY_S = 3600.0
RETRY_MAX_S = 86400.0
#: Alerted windows remembered per host for retraining (older ones are rescored instead).
MAX_REMEMBERED = 10_000
#: Each read after the first starts this long before the previous read's end, so a scrape
#: that Prometheus made visible up to this long after its own timestamp is still read.
OVERLAP_S = 60.0
STATE_FORMAT = 1
#: Help of the one metric only the fleet server exports (the agent's are in ``METRICS``).
UNMODELLED_HELP = (
    "Hosts reporting under --selector without a usable model in --models, so not scored."
)
#: Key of a state-file entry saying since when its host has had no model (Unix seconds).
KEPT_SINCE = "kept_since"
#: Help of the count of series the fleet server holds.
SERIES_HELP = (
    "Series of Prometheus fleet serve holds, those with a sample in the lookback: follows the "
    "hosts reporting, not every host ever seen."
)
#: Help of the count of models the fleet server holds in memory.
MODELS_LOADED_HELP = (
    "Models fleet serve holds in memory: those of the hosts that sent something in the "
    "lookback; a host silent for longer has its model unloaded until it reports again."
)
#: Stages counted in the fleet server's ``minerwatch_errors_total{stage}`` (bounded).
FLEET_STAGES = ("query", "model", "score", "train", "state")
#: The agent's metric families that mean the same for a host scored from Prometheus, by
#: family name (counters without ``_total``, info without ``_info``); the agent-only ones
#: (sampling, responding, host signals) and per-process ones are left out.
PER_HOST = frozenset(
    {
        "minerwatch_anomaly_score",
        "minerwatch_anomaly_threshold",
        "minerwatch_alert_active",
        "minerwatch_heavy_work",
        "minerwatch_alerts",
        "minerwatch_feature_value",
        "minerwatch_feature_contribution",
        "minerwatch_model",
        "minerwatch_model_trained_timestamp_seconds",
        "minerwatch_model_training_windows",
        "minerwatch_model_age_seconds",
        "minerwatch_learning_progress_ratio",
        "minerwatch_learning",
        "minerwatch_telemetry",
        "minerwatch_last_sample_timestamp_seconds",
        "minerwatch_last_score_timestamp_seconds",
        "minerwatch_windows_scored",
        "minerwatch_dismissed_episodes",
    }
)


# -- reading: one query per metric, buffered per host between cycles -----------------------------


@dataclass
class Samples:
    """One host's raw samples of one metric, sorted by series (label order) then time."""

    sid: np.ndarray
    ts: np.ndarray
    value: np.ndarray

    @classmethod
    def empty(cls) -> Samples:
        return cls(np.zeros(0, np.intp), np.zeros(0), np.zeros(0))

    def after(self, start: float) -> Samples:
        keep = self.ts > start
        return self if keep.all() else Samples(self.sid[keep], self.ts[keep], self.value[keep])


class SeriesRegistry:
    """The series of one metric read in the lookback, numbered (``sid``), with what the
    mapping needs of its labels: its host, whether its device counts, its CPU mode, its
    process group, the time of its newest sample (``seen``). ``rank`` orders series as a full
    read's answer does (by label values, label names sorted, a missing label as ""), so sums
    run in the same order either way. Series whose newest sample has left the lookback are
    forgotten (:meth:`forget`: hosts come and go), the others renumbered in the same order."""

    def __init__(self, metric: str, host_label: str | None) -> None:
        self.metric = metric
        self.host_label = host_label
        self.drop = DEVICE_FILTERS.get(metric)
        self.ids: dict[tuple[tuple[str, str], ...], int] = {}
        self.labels: list[dict[str, str]] = []
        self.hosts: list[str] = []
        self.groups: dict[str, int] = {}
        self.group_names: list[str] = []  # by group code
        self._attrs: list[tuple[bool, int, int]] = []
        #: an answer's label set, as the client ordered it -> sid
        self.by_labels: dict[tuple[tuple[str, str], ...], int] = {}
        self.keep = np.zeros(0, bool)  # device counted (network, disk)
        self.mode = np.zeros(0, np.intp)  # index in CPU_MODES, -1 for none
        self.group = np.zeros(0, np.intp)  # process group code, -1 for a mode not counted
        self.rank = np.zeros(0, np.intp)
        self.seen = np.zeros(0)  # time of the newest sample read, -inf for none
        self.target = np.zeros(0, np.intp)  # scrape target, an index in target_keys
        self.target_keys: list[TargetKey] = []

    def sid(self, labels: Mapping[str, str]) -> int:
        key = tuple(sorted((k, v) for k, v in labels.items() if v != "" and k != "__name__"))
        found = self.ids.get(key)
        if found is not None:
            return found
        new = self.ids[key] = len(self.labels)
        lab = dict(key)
        self.labels.append(lab)
        host = lab.get(self.host_label or "instance", "")
        self.hosts.append(host if self.host_label else host_of(host))
        device = lab.get("device", "")
        keep = self.drop is None or not self.drop.match(device)
        mode = lab.get("mode", "")
        group = -1
        if mode in PROCESS_MODES:
            name = lab.get("groupname", "")
            if name not in self.groups:
                self.groups[name] = len(self.group_names)
                self.group_names.append(name)
            group = self.groups[name]
        self._attrs.append((keep, CPU_MODES.index(mode) if mode in CPU_MODES else -1, group))
        return new

    def reorder(self) -> None:
        """The arrays and ranks in label order, after new series were added."""
        self.keep = np.array([a[0] for a in self._attrs], dtype=bool)
        self.mode = np.array([a[1] for a in self._attrs], dtype=np.intp)
        self.group = np.array([a[2] for a in self._attrs], dtype=np.intp)
        codes: dict[TargetKey, int] = {}
        target = [codes.setdefault(target_key(lab), len(codes)) for lab in self.labels]
        self.target = np.array(target, dtype=np.intp)
        self.target_keys = [*codes]
        names = sorted({k for lab in self.labels for k in lab})
        keys = [tuple(lab.get(n, "") for n in names) for lab in self.labels]
        order = sorted(range(len(keys)), key=keys.__getitem__)
        self.rank = np.empty(len(keys), np.intp)
        self.rank[order] = np.arange(len(keys))
        added = len(keys) - len(self.seen)
        self.seen = np.concatenate([self.seen, np.full(added, -np.inf)])

    def forget(self, before: float, held: np.ndarray) -> np.ndarray | None:
        """Forget the series whose newest sample is at or before ``before`` and that are not
        ``held`` (a mask by sid); the others keep their order and are numbered anew. Returns
        each old sid's new one (-1: forgotten), or None when none is forgotten."""
        drop = (self.seen <= before) & ~held
        if not drop.any():
            return None
        kept = np.flatnonzero(~drop)
        new = np.full(len(self.labels), -1, np.intp)
        new[kept] = np.arange(len(kept))
        index = kept.tolist()
        self.labels = [self.labels[i] for i in index]
        self.hosts = [self.hosts[i] for i in index]
        self._attrs = [self._attrs[i] for i in index]
        self.seen = self.seen[kept]
        to = new.tolist()
        self.ids = {k: to[v] for k, v in self.ids.items() if to[v] >= 0}
        self.by_labels = {k: to[v] for k, v in self.by_labels.items() if to[v] >= 0}
        self.reorder()  # the ranks of the series left keep their order
        return new

    def points(self, s: Samples) -> Points:
        """A host's samples of this metric as the mapping takes them."""
        return Points(
            s.sid, s.ts, s.value, self.keep, self.mode, self.group, self.group_names,
            self.target, self.target_keys,
        )  # fmt: skip


def ingest(
    answer: Sequence[RawSeries],
    registry: SeriesRegistry,
    wanted: Mapping[str, int],
    unknown: set[str] | None = None,
) -> dict[int, Samples]:
    """One answer (every host's series) as :class:`Samples` per host index of ``wanted``
    (hosts not in it are dropped, and added to ``unknown``); each host's rows sorted by
    series then time."""
    if not answer:
        return {}
    before = len(registry.labels)
    known = registry.by_labels
    sids = np.empty(len(answer), dtype=np.intp)
    for i, s in enumerate(answer):
        key = tuple(s.labels.items())  # the client's order: one lookup, no sort, per series
        found = known.get(key)
        if found is None:
            found = known[key] = registry.sid(s.labels)
        sids[i] = found
    if len(registry.labels) != before:
        registry.reorder()
    lengths = np.array([len(s.timestamps) for s in answer], dtype=np.intp)
    ts = np.concatenate([s.timestamps for s in answer])
    read = lengths > 0
    if read.any():  # each series' newest sample, for forgetting those that stop
        newest = np.maximum.reduceat(ts, (np.cumsum(lengths) - lengths)[read])
        np.maximum.at(registry.seen, sids[read], newest)
    sid = np.repeat(sids, lengths)
    host_index = np.array([wanted.get(h, -1) for h in registry.hosts], dtype=np.intp)
    if unknown is not None:
        unknown.update(registry.hosts[i] for i in np.unique(sids[host_index[sids] < 0]).tolist())
    owner = host_index[sid]
    order = np.lexsort((ts, registry.rank[sid], owner))
    owner, sid, ts = owner[order], sid[order], ts[order]
    value = np.concatenate([s.values for s in answer])[order]
    bounds = np.searchsorted(owner, np.arange(len(wanted) + 1)).tolist()
    return {
        h: Samples(sid[bounds[h] : bounds[h + 1]], ts[bounds[h] : bounds[h + 1]],
                   value[bounds[h] : bounds[h + 1]])
        for h in range(len(wanted))
        if bounds[h + 1] > bounds[h]
    }  # fmt: skip


def merge_host(
    old: Mapping[str, Samples],
    new: Mapping[str, Samples],
    ranks: Mapping[str, np.ndarray],
    start: float,
) -> dict[str, Samples]:
    """One host's held samples of every metric in ``new`` and the new ones, as one: sorted
    by series (``ranks``) and time, without samples at or before ``start`` nor a second copy
    of one (series, time) (the one already held is kept). One sort for all the metrics."""
    metrics = list(new)
    empty = Samples.empty()
    parts = [p for m in metrics for p in (old.get(m, empty), new[m])]
    sizes = [len(p.ts) for p in parts]
    if not sum(sizes[1::2]):  # nothing new: only the oldest samples leave
        return {m: old.get(m, empty).after(start) for m in metrics}
    which = np.repeat(np.arange(len(parts)) // 2, sizes)
    sid = np.concatenate([p.sid for p in parts])
    ts = np.concatenate([p.ts for p in parts])
    value = np.concatenate([p.value for p in parts])
    rank = np.concatenate([ranks[m][p.sid] for m in metrics for p in (old.get(m, empty), new[m])])
    order = np.lexsort((ts, rank, which))  # stable: of two copies, the held one comes first
    which, sid, ts, value = which[order], sid[order], ts[order], value[order]
    keep = ts > start
    keep[1:] &= (which[1:] != which[:-1]) | (sid[1:] != sid[:-1]) | (ts[1:] != ts[:-1])
    which, sid, ts, value = which[keep], sid[keep], ts[keep], value[keep]
    bounds = np.searchsorted(which, np.arange(len(metrics) + 1)).tolist()
    return {
        m: Samples(sid[bounds[j] : bounds[j + 1]], ts[bounds[j] : bounds[j + 1]],
                   value[bounds[j] : bounds[j + 1]])
        for j, m in enumerate(metrics)
    }  # fmt: skip


# -- the node_exporter mapping on buffered arrays --------------------------------------------------


def host_telemetry(
    host: str,
    samples: Mapping[str, Samples],
    registries: Mapping[str, SeriesRegistry],
    source: str = "",
) -> HostTelemetry:
    """One host's buffered samples as telemetry rows: the mapping ``fleet train`` reads with
    (:func:`~minerwatch.service.fleet.nodeexporter.map_points`) of their points, so the same
    rows and values as a full read of the same samples gives (a test compares the two), with
    what the mapping says of the data (its scrape targets)."""
    points = {m: registries[m].points(s) for m, s in samples.items() if len(s.ts)}
    return map_points(host, points, source)


def read_answers(
    client: PromClient, selector: str, start: float, end: float
) -> dict[str, list[RawSeries]]:
    """Raw samples of every fleet metric in [start, end], one request per metric for the
    whole selector (process-exporter's series are another job, so they are read without it
    and joined by host), parsed to arrays as ``fleet train`` reads them."""
    inner = selector_matchers(selector)
    return {
        metric: client.samples_series(
            series_selector(metric, "" if metric in PROCESS_METRICS else inner), start, end, 15.0
        )
        for metric in NODE_METRICS
    }


# -- per-host state -----------------------------------------------------------------------------


@dataclass
class HostState:
    """One host's model, streaming alert rule and latest values, as the agent keeps its own."""

    model: HostModel
    alert: AlertState
    last_slot: int | None = None
    alerts_total: int = 0
    windows_total: int = 0
    score: float | None = None
    heavy: bool | None = None
    features: dict[str, float] = field(default_factory=dict)
    contributions: dict[str, float] = field(default_factory=dict)
    telemetry: dict[str, float] = field(default_factory=dict)
    sample_ts: float | None = None
    score_ts: float | None = None
    episode_start: float | None = None
    #: Alerted windows (start, end) seen by this server, for retraining to leave out.
    alerted: list[tuple[float, float]] = field(default_factory=list)
    next_retrain: float = math.inf
    #: Retrainings of this model that failed in a row (see FleetServer._retrain_failed).
    retrain_failures: int = 0

    @classmethod
    def of(cls, model: HostModel, old: HostState | None = None) -> HostState:
        """A state for a (new) model; an ongoing episode and the counters stay open."""
        alert = model.alert_state()
        state = cls(model, alert)
        if old is not None:
            alert.active = old.alert.active
            state.last_slot, state.alerts_total = old.last_slot, old.alerts_total
            state.windows_total, state.episode_start = old.windows_total, old.episode_start
            state.alerted = old.alerted
        return state

    def forget_window(self) -> None:
        """The host sent nothing in the lookback (gone, or its exporter down): its latest
        window's score, features and telemetry are no longer published, so no rule keeps
        judging a dead host's last values; the alert rule's state, the counters and the
        last sample and score times stay (``MinerwatchFleetHostNotScored`` names it)."""
        self.score = self.heavy = None
        self.features, self.contributions, self.telemetry = {}, {}, {}

    def saved(self) -> dict[str, object]:
        """What a restart must not lose: the alert rule's state and the alerted windows."""
        a = self.alert
        return {
            "active": a.active, "above": a._above, "strong": a._strong, "fast": a._fast,
            "below": a._below,
            "alert_slot": a._last_slot, "last_slot": self.last_slot,
            "alerts_total": self.alerts_total, "windows_total": self.windows_total,
            "episode_start": self.episode_start, "alerted": coalesce(self.alerted),
            "model": str(self.model.meta.get("sha256", "")),
        }  # fmt: skip

    def snapshot(self, dismissed: int = 0) -> AgentSnapshot:
        """The agent's snapshot fields that mean something for a host scored from afar
        (``dismissed``: its spans in ``fleet dismiss``'s file)."""
        m = self.model
        return AgentSnapshot(
            anomaly_score=self.score,
            anomaly_threshold=m.threshold,
            alert_active=self.alert.active,
            heavy_work=self.heavy,
            alerts_total=self.alerts_total,
            feature_values={k: v for k, v in self.features.items() if math.isfinite(v)},
            feature_contributions=self.contributions,
            model_version=str(m.meta.get("sha256", ""))[:12],
            model_schema_version=SCHEMA_VERSION,
            model_trained_timestamp_seconds=m.meta.get("created_at"),
            model_training_windows=m.meta.get("windows"),
            learning=False,
            learning_progress_ratio=1.0,
            telemetry=self.telemetry,
            last_sample_timestamp_seconds=self.sample_ts,
            last_score_timestamp_seconds=self.score_ts,
            windows_scored_total=self.windows_total,
            dismissed_episodes=dismissed,
        )


@dataclass(frozen=True)
class Dormant:
    """A host with a model in ``--models`` that has sent nothing for longer than the
    lookback (gone, replaced by a new name, its exporter down), or whose model was just
    loaded (checked) and that no read has shown yet: its model is not held, and what it
    publishes (the snapshot it had, without a score: see :meth:`HostState.forget_window`)
    and what a restart or its return must not lose (its alert state) is all that is. Its
    model is loaded again, as on a first sight, in the cycle whose read shows the host."""

    saved: dict[str, object]
    snap: AgentSnapshot
    #: its model's window (the read's start allows for the longest, loaded or not)
    window: float
    #: when its model was trained (``created_at``)
    created: float
    sample_ts: float | None
    score_ts: float | None
    retrain_failures: int

    @classmethod
    def of(cls, state: HostState) -> Dormant:
        return cls(
            state.saved(), state.snapshot(), state.model.window,
            float(state.model.meta.get("created_at", 0.0)), state.sample_ts, state.score_ts,
            state.retrain_failures,
        )  # fmt: skip

    def restored(self, item: HostSaved, saved: dict[str, object]) -> Dormant:
        """With the alert state a restart read back (``item``, parsed from ``saved``)."""
        snap = replace(
            self.snap, alert_active=item.active, alerts_total=item.alerts_total,
            windows_scored_total=item.windows_total,
        )  # fmt: skip
        return replace(self, saved=saved, snap=snap)


def same_model(a: HostModel, b: HostModel) -> bool:
    """Whether two loads are of one saved model (a model saved again with the same trees,
    say another threshold, has the same ``sha256`` but not the same save time)."""
    return all(a.meta.get(k) == b.meta.get(k) for k in ("sha256", "created_at"))


def coalesce(windows: Sequence[tuple[float, float]]) -> list[list[float]]:
    """Overlapping or touching windows as one span each: what retraining leaves out
    (every window widened by a margin) is the same, and an episode of hours is one entry."""
    out: list[list[float]] = []
    for start, end in sorted(windows):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return out


def _kept_since(entry: object, default: float) -> float:
    """When a state-file entry's host lost its model (``default`` when not said, as in
    files written before it was)."""
    v = entry.get(KEPT_SINCE) if isinstance(entry, dict) else None
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else default  # type: ignore[arg-type]


@dataclass(frozen=True)
class HostSaved:
    """One host's entry of the state file, checked."""

    active: bool
    above: int
    below: int
    alert_slot: int | None
    last_slot: int | None
    alerts_total: int
    #: windows in a row far above the threshold (absent from files written before it: the
    #: run above, as the rule then counted)
    strong: int
    windows_total: int
    episode_start: float | None
    alerted: tuple[tuple[float, float], ...]
    #: windows in a row on the fast path (absent from files written before it: none)
    fast: int = 0

    @classmethod
    def parse(cls, item: object) -> HostSaved:
        """Raises ValueError (or TypeError, KeyError) for an entry not as written."""
        if not isinstance(item, dict):
            raise ValueError("a host entry is not an object")

        def count(key: str, none: bool = False) -> int | None:
            v = item[key]
            if v is None and none:
                return None
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"{key!r} is not an integer: {v!r}")
            return v

        def instant(v: object) -> float:
            if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
                raise ValueError(f"not a time: {v!r}")
            return float(v)

        if not isinstance(item["active"], bool):
            raise ValueError(f"'active' is not true or false: {item['active']!r}")
        episode = item["episode_start"]
        windows = item["alerted"]
        if not isinstance(windows, list):
            raise ValueError("'alerted' is not a list")
        pairs = []
        for w in windows:
            if not isinstance(w, list) or len(w) != 2:
                raise ValueError(f"an alerted window is not [start, end]: {w!r}")
            pairs.append((instant(w[0]), instant(w[1])))
        return cls(
            active=item["active"], above=count("above") or 0, below=count("below") or 0,
            strong=(count("strong") if "strong" in item else count("above")) or 0,
            fast=(count("fast") if "fast" in item else 0) or 0,
            alert_slot=count("alert_slot", True), last_slot=count("last_slot", True),
            alerts_total=count("alerts_total") or 0, windows_total=count("windows_total") or 0,
            episode_start=None if episode is None else instant(episode),
            alerted=tuple(pairs[-MAX_REMEMBERED:]),
        )  # fmt: skip

    def apply(self, state: HostState) -> None:
        a = state.alert
        a.active, a._above, a._strong, a._fast, a._below, a._last_slot = (
            self.active,
            self.above,
            min(self.strong, self.above),
            min(self.fast, self.strong, self.above),
            self.below,
            self.alert_slot,
        )
        state.last_slot, state.alerts_total = self.last_slot, self.alerts_total
        state.windows_total, state.episode_start = self.windows_total, self.episode_start
        state.alerted = list(self.alerted)


def score_host(state: HostState, series: HostSeries, now: float) -> list[tuple[float, float, bool]]:
    """Score the windows of ``series`` completed since the host's last scored one.

    Returns (start, end, alerted) per new window. Agent-only columns the model uses are
    scored as unknown, as ``score`` does.
    """
    m = state.model
    unknown = [c for c in m.columns if c in AGENT_METRICS and c not in series.columns]
    ts, values, columns = series.timestamps, series.values, series.columns
    if unknown:
        values = np.hstack([values, np.full((len(ts), len(unknown)), np.nan)])
        columns = (*columns, *unknown)
    win, _, F = feature_rows(
        ts, values, columns, m.window, m.hop, inputs=m.columns, source=series.source,
        host=series.host,
    )  # fmt: skip
    fresh = np.flatnonzero(win.slots > (-1 if state.last_slot is None else state.last_slot))
    last = ts[-1] if len(ts) else None
    if last is not None:
        state.sample_ts = float(last)
        state.telemetry = {
            c: float(v) for c, v in zip(series.columns, values[-1], strict=False) if np.isfinite(v)
        }
    if not len(fresh):
        return []
    scores = m.score(F[fresh])
    heavy = m.heavy(F[fresh])
    out = []
    for j, score, work in zip(fresh.tolist(), scores.tolist(), heavy.tolist(), strict=True):
        start, end, slot = float(win.starts[j]), float(win.ends[j]), int(win.slots[j])
        was = state.alert.active
        alerted = state.alert.update(score, slot, work)
        state.last_slot = slot
        state.windows_total += 1
        if alerted:
            state.alerted.append((start, end))
            if not was:
                state.alerts_total += 1
                state.episode_start = start
        elif was:
            state.episode_start = None
        out.append((start, end, alerted))
    del state.alerted[:-MAX_REMEMBERED]
    f = F[fresh[-1]][None, :]
    state.score = float(scores[-1])
    state.heavy = bool(heavy[-1])
    state.features = dict(zip(m.feature_names, m.full(f)[0].tolist(), strict=True))
    state.contributions = dict(zip(m.feature_names, m.contributions(f)[0].tolist(), strict=True))
    state.score_ts = now
    return out


# -- retraining ----------------------------------------------------------------------------------


def training_samples(
    series: HostSeries,
    alerted: Sequence[tuple[float, float]],
    hop: float,
    alert_windows: int,
    episode_start: float | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """The samples retraining may learn from, and the margin left out around alerts.

    As the agent: every alerted window widened by
    :func:`~minerwatch.baseline.exclude.exclusion_margin` of the history is left out, and so
    is everything from (the start of an episode still open minus the margin) on.
    """
    ts = series.timestamps
    span = float(ts[-1] - ts[0]) if len(ts) > 1 else 0.0
    margin = exclusion_margin(span, hop, alert_windows, cap_s=EXCLUDE_MARGIN_S)
    before = None if episode_start is None else episode_start - margin
    keep = exclusion_mask(ts, alerted, margin, before)
    return ts[keep], series.values[keep], margin


# -- exposition ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetSnapshot:
    """What the fleet server publishes: one agent snapshot per host, and its own counters."""

    hosts: Mapping[str, AgentSnapshot] = field(default_factory=dict)
    errors_total: Mapping[str, int] = field(default_factory=dict)
    retrain_failures_total: Mapping[str, int] = field(default_factory=dict)
    cycle_seconds: float | None = None
    #: Hosts in the latest read without a usable model (None: nothing read yet).
    unmodelled_hosts: int | None = None
    #: Series of Prometheus the server holds (None: nothing read yet).
    series: int | None = None
    #: Models held in memory: those of the hosts that sent something in the lookback.
    models_loaded: int | None = None
    version: str = field(default_factory=package_version)


def fleet_families(snap: FleetSnapshot, now: float) -> Iterator[Metric]:
    """The agent's families for every host with a ``host`` label, then the server's own."""
    merged: dict[str, Metric] = {}
    for host, s in sorted(snap.hosts.items()):
        for family in snapshot_families(s, now):
            if family.name not in PER_HOST:
                continue
            out = merged.get(family.name)
            if out is None:
                out = merged[family.name] = Metric(family.name, family.documentation, family.type)
            for sample in family.samples:
                out.add_sample(sample.name, {"host": host, **sample.labels}, sample.value)
    yield from merged.values()
    if snap.cycle_seconds is not None:
        yield GaugeMetricFamily(
            "minerwatch_score_duration_seconds",
            METRICS["minerwatch_score_duration_seconds"],
            value=snap.cycle_seconds,
        )
    if snap.unmodelled_hosts is not None:
        yield GaugeMetricFamily(
            "minerwatch_unmodelled_hosts",
            UNMODELLED_HELP,
            value=snap.unmodelled_hosts,
        )
    if snap.series is not None:
        yield GaugeMetricFamily("minerwatch_fleet_series", SERIES_HELP, value=snap.series)
    if snap.models_loaded is not None:
        yield GaugeMetricFamily(
            "minerwatch_fleet_models_loaded", MODELS_LOADED_HELP, value=snap.models_loaded
        )
    errors = CounterMetricFamily(
        "minerwatch_errors_total", METRICS["minerwatch_errors_total"], labels=["stage"]
    )
    for stage in FLEET_STAGES:
        errors.add_metric([stage], float(snap.errors_total.get(stage, 0)))
    yield errors
    failures = CounterMetricFamily(
        "minerwatch_retrain_failures_total",
        METRICS["minerwatch_retrain_failures_total"],
        labels=["reason"],
    )
    for reason in FAILURE_REASONS:
        failures.add_metric([reason], float(snap.retrain_failures_total.get(reason, 0)))
    yield failures
    build = InfoMetricFamily("minerwatch_build", METRICS["minerwatch_build_info"])
    build.add_metric([], {"version": snap.version})
    yield build


class _FleetCollector(Collector):
    def __init__(self, current: Callable[[], FleetSnapshot]) -> None:
        self._current = current

    def collect(self) -> Iterator[Metric]:
        yield from fleet_families(self._current(), time.time())


class FleetExporter:
    """``/metrics`` of the latest :class:`FleetSnapshot`, on the agent's HTTP server."""

    def __init__(self, port: int, address: str, web: LiveProtection | None = None) -> None:
        self.snapshot = FleetSnapshot()
        self.registry = CollectorRegistry()
        self.registry.register(_FleetCollector(lambda: self.snapshot))
        self.registry.register(WebConfigCollector(lambda: web))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._cache = ExpositionCache(self.registry, lambda: self.snapshot)
        try:
            serving = Serving(web or LiveProtection(None), self._cache.get)
            self._server: Server = bind(address, port, serving)
        except OSError as exc:
            expected = "an address and port /metrics can listen on (--address, --port)"
            error = bind_error(address, port, exc, expected)
            if error is None:
                raise
            raise error from None
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="minerwatch-fleet-exporter",
            daemon=True,
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# -- the server ----------------------------------------------------------------------------------


class FleetServer:
    """Models, per-host state and the scoring cycle; the loop and the HTTP side are outside,
    so a benchmark can time :meth:`cycle` alone."""

    def __init__(
        self,
        client: PromClient,
        models_dir: Path,
        *,
        selector: str = "",
        host_label: str | None = None,
        key: bytes | None = None,
        retrain_every: float = 0.0,
        history_s: float = 14 * 86400.0,
        clock: Callable[[], float] = time.time,
        incremental: bool = True,
        state_file: Path | None = None,
        forget: bool = True,
        unload: bool = True,
    ) -> None:
        self.client = client
        self.models_dir = models_dir
        self.selector = selector
        self.host_label = host_label
        self.key = key
        self.retrain_every = retrain_every
        self.history_s = history_s
        self.clock = clock
        self.hosts: dict[str, HostState] = {}
        self.errors: dict[str, int] = {}
        self.retrain_failures: dict[str, int] = dict.fromkeys(FAILURE_REASONS, 0)
        self.cycle_seconds: float | None = None
        self.reloaded: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        #: Why the latest cycle could not read Prometheus (None: it could).
        self.query_error: PrometheusError | PrometheusUnavailable | None = None
        #: Read only what is new since the previous cycle (False: the whole lookback, always).
        self.incremental = incremental
        #: Forget the series whose newest sample left the lookback (False: keep every series
        #: ever read, as before; tests and the churn benchmark compare the two).
        self.forget = forget
        #: Unload the models of hosts silent for longer than the lookback (False: keep every
        #: model loaded for as long as it is in --models, as before; tests and the churn
        #: benchmark compare the two).
        self.unload = unload
        #: Hosts with a model in --models, unloaded while they send nothing (see Dormant).
        self.dormant: dict[str, Dormant] = {}
        #: Where the alert state is kept across restarts (None: nowhere).
        self.state_file = state_file
        self.registries: dict[str, SeriesRegistry] = {}
        self.buffers: dict[str, dict[str, Samples]] = {}
        #: End of the latest successful read (None: the next read is a full lookback).
        self.read_end: float | None = None
        self.read_start: float | None = None
        #: Saved state of hosts without a loaded model, written back as it was.
        self.kept_state: dict[str, object] = {}
        #: Points in the latest cycle's answers (the benchmark reports it).
        self.points_read = 0
        #: Spans a responder dismissed as benign, per host (``fleet dismiss``), read from
        #: :data:`DISMISSED_FILE` beside the state file whenever it changes.
        self.dismissed: dict[str, list[tuple[float, float]]] = {}
        self._dismissed_stamp: tuple[int, int] | None = None
        self._dismissals_read = False
        #: Dormant hosts whose dismissals changed: retrained as soon as they are back.
        self._dismissed_dormant: set[str] = set()
        #: Each model's ``meta.json`` as last looked at (inode, mtime, size), and its host.
        self._model_stamps: dict[Path, tuple[int, int, int]] = {}
        self._model_hosts: dict[Path, str] = {}
        #: Whether the first cycle ran (models loaded after it are logged).
        self._started = False
        #: Hosts in the latest read without a model (how many, None before a read; the ones
        #: logged).
        self.unmodelled: int | None = None
        self._unmodelled_named: set[str] = set()
        #: per host, the scrape targets last named in a WARNING (several at once)
        self._targets_named: dict[str, tuple[TargetKey, ...]] = {}
        #: node_exporter targets without --host-label last named in a WARNING
        self._unlabelled_named: set[TargetKey] = set()

    def _error(self, stage: str, what: str) -> None:
        self.errors[stage] = self.errors.get(stage, 0) + 1
        log.warning("%s: %s", stage, what)

    def load_models(self) -> int:
        """Load the models in ``--models`` that are new or changed since the last look, and
        stop serving hosts whose model was removed; how many hosts are served.

        Run at start and before every cycle, so a model ``fleet train`` writes for a new host,
        or over an old one (an atomic rename of ``meta.json``), is used from the next read
        without a restart. Only ``meta.json``'s stat is compared each time (its model file is
        written before it). A model that does not load (corrupt, unsigned, another key) is
        logged and counted (``stage="model"``) once per change of its file: its host keeps the
        model loaded before, or is not scored if it had none.
        """
        try:
            metas = sorted(self.models_dir.glob(f"*/{META}"))
        except OSError as exc:  # the folder unreadable for a moment: keep what is loaded
            self._error("model", f"{self.models_dir}: {exc.strerror or exc}")
            return len(self.hosts) + len(self.dormant)
        stamps: dict[Path, tuple[int, int, int]] = {}
        for meta in metas:
            try:
                st = meta.stat()
            except OSError:
                continue  # removed since the listing
            stamp = stamps[meta] = (st.st_ino, st.st_mtime_ns, st.st_size)
            if self._model_stamps.get(meta) == stamp:
                continue
            host = meta_host(meta)
            if host is None:  # damaged: the host it was (load says why), else unknown
                host = self._model_hosts.get(meta)
            if host is None:
                self._error("model", f"{meta}: expected a model's metadata (JSON naming its "
                                     "host), got something unreadable; not used")  # fmt: skip
                continue
            self._model_hosts[meta] = host
            self.load(host)
        for meta in set(self._model_stamps) - set(stamps):
            gone = self._model_hosts.pop(meta, None)
            if gone is None or gone in self._model_hosts.values():
                continue
            self._dismissed_dormant.discard(gone)
            if gone in self.dormant:
                self.kept_state[gone] = {**self.dormant.pop(gone).saved, KEPT_SINCE: self.clock()}
                log.warning("model of %s removed from %s: no longer published", gone,
                            self.models_dir)  # fmt: skip
            elif gone in self.hosts:
                self.kept_state[gone] = {**self.hosts.pop(gone).saved(), KEPT_SINCE: self.clock()}
                log.warning(
                    "model of %s removed from %s: no longer scored, its series are dropped",
                    gone, self.models_dir,
                )  # fmt: skip
        self._model_stamps = stamps
        return len(self.hosts) + len(self.dormant)

    def load(self, host: str) -> bool:
        dormant = self.dormant.get(host)
        if dormant is not None:  # changed on disk while its host sends nothing: checked, and
            try:  # what it publishes follows it; loaded again only when the host reports
                model = load_model(self.models_dir, host, key=self.key)
            except (ModelError, InputError, OSError, ValueError) as exc:
                self._error("model", f"host {host}: model refused: {exc}; it sends nothing "
                                     "now, and is not scored if it reports again before its "
                                     "model is replaced")  # fmt: skip
                return False
            self.dormant[host] = Dormant.of(self._revive(host, dormant, model))
            if self._started:
                log.info("model of %s replaced on disk (the host sends nothing: not loaded "
                         "until it reports)", host)  # fmt: skip
            return True
        old = self.hosts.get(host)
        try:
            model = load_model(self.models_dir, host, key=self.key)
        except (ModelError, InputError, OSError, ValueError) as exc:
            then = "it keeps the model loaded before" if old else "it is not scored"
            self._error("model", f"host {host}: model refused: {exc}; {then}")
            return False
        if old is not None and same_model(old.model, model):
            return True
        state = self.hosts[host] = HostState.of(model, old)
        if old is None:  # a host not buffered yet: the next read is a full lookback
            self.read_end = None
            saved = self.kept_state.pop(host, None)
            if saved is not None:  # served before (its model removed or refused meanwhile)
                try:
                    HostSaved.parse(saved).apply(state)
                except (ValueError, KeyError, TypeError):
                    pass  # an entry not as written: the host starts afresh
            if self._started:
                log.info("new model for %s: scored from the next read", host)
        elif self._started:
            log.info("model of %s replaced on disk: scoring with the new one", host)
        if self.retrain_every > 0:
            created = float(model.meta.get("created_at", self.clock()))
            state.next_retrain = created + self.retrain_every
        if old is None and self.unload:  # held only once a read shows the host: a start or a
            # --models of every host ever seen must not hold them all (the allocator keeps
            # what it gave once, so a peak of every model would stay the server's size)
            self.dormant[host] = Dormant.of(self.hosts.pop(host))
        return True

    def _revive(self, host: str, dormant: Dormant, model: HostModel) -> HostState:
        """A dormant host's state with ``model``, as a server that kept it loaded has it."""
        state = HostState.of(model)
        try:
            HostSaved.parse(dormant.saved).apply(state)
        except (ValueError, KeyError, TypeError):  # written by saved(): cannot happen
            pass
        state.sample_ts, state.score_ts = dormant.sample_ts, dormant.score_ts
        state.retrain_failures = dormant.retrain_failures
        if self.retrain_every > 0:
            created = float(model.meta.get("created_at", self.clock()))
            state.next_retrain = created + self.retrain_every
            if host in self._dismissed_dormant:  # a dismissal changed while it was away
                state.next_retrain = self.clock()
        return state

    def _wake(self, hosts: Sequence[str]) -> None:
        """Load the models of dormant hosts that report again, and take back their state: they
        are scored from this read on, as by a server that kept their model (the read since
        the previous one holds everything they sent since they came back)."""
        back = []
        for host in hosts:
            dormant = self.dormant.pop(host)
            try:
                model = load_model(self.models_dir, host, key=self.key)
            except (ModelError, InputError, OSError, ValueError) as exc:
                self.kept_state[host] = {**dormant.saved, KEPT_SINCE: self.clock()}
                self._error("model", f"host {host}: model refused: {exc}; it is not scored")
                continue
            self.hosts[host] = self._revive(host, dormant, model)
            if host in self._dismissed_dormant:  # _revive made it due now
                self._dismissed_dormant.discard(host)
                log.info("%s: a dismissal changed, retraining it now", host)
            back.append(host)
        if back:
            log.info("models loaded for %d host(s) that report: %s", len(back),
                     _shown(back))  # fmt: skip

    def _sleep(self, hosts: Sequence[str]) -> None:
        """Unload the models of hosts that sent nothing in the lookback (see Dormant)."""
        for host in hosts:
            self.dormant[host] = Dormant.of(self.hosts.pop(host))
            self.buffers.pop(host, None)
        if hosts:
            log.info(
                "%d host(s) sent nothing for longer than the lookback, their models unloaded "
                "until they report again: %s", len(hosts), _shown(hosts),
            )  # fmt: skip

    def cycle(self) -> dict[str, int]:
        """Read what is new since the previous cycle and score every host's new windows.

        The first read (and the first after a host's model appears) is the whole
        :data:`LOOKBACK_S`; later ones start :data:`OVERLAP_S` before the previous read's
        end and are merged into each host's buffer of raw samples, which then holds what a
        full read of the lookback would give. Returns how many hosts were scored, had no
        data, or failed to score.
        """
        while not self.reloaded.empty():
            host, outcome = self.reloaded.get()
            if outcome == "accepted":
                self.load(host)
        if self._started:
            self.load_models()
        self._started = True
        t0 = time.perf_counter()
        now = self.clock()
        windows = [s.model.window for s in self.hosts.values()]
        windows.extend(d.window for d in self.dormant.values())  # as if they were loaded
        start = now - LOOKBACK_S - 2 * max([60.0, *windows])
        full = (
            not self.incremental
            or self.read_end is None
            or self.read_start is None
            or start < self.read_start  # a longer window than any buffered for
        )
        since = start if full else max(start, min(now, (self.read_end or now) - OVERLAP_S))
        counts = {"scored": 0, "no_data": 0, "failed": 0}
        try:
            answers = read_answers(self.client, self.selector, since, now)
        except (PrometheusError, PrometheusUnavailable) as exc:
            self._error("query", str(exc))
            self.query_error = exc
            counts["failed"] = len(self.hosts) + len(self.dormant)
            return counts  # the next read starts where the last good one ended
        self.query_error = None
        self.points_read = sum(len(s.timestamps) for a in answers.values() for s in a)
        self._buffer(answers, start, full)
        self.read_dismissals()  # after the read: the hosts it shows hold their models
        self.read_start, self.read_end = start, now
        if self.forget:
            self._forget(start)
        silent = []
        counts["no_data"] = len(self.dormant)  # those that did not come back
        for host, state in self.hosts.items():
            present = {m: s for m, s in self.buffers.get(host, {}).items() if len(s.ts)}
            node = [s.ts for m, s in present.items() if m not in PROCESS_METRICS]
            if not node:  # nothing in the lookback: what the last window said is not now
                state.forget_window()
                counts["no_data"] += 1
                silent.append(host)
                continue
            # a scrape ingested between two of the cycle's queries is in some answers only:
            # rows after the oldest "latest sample" of any metric wait for the next cycle
            cut = min(float(ts.max()) for ts in node)
            try:
                mapped = host_telemetry(
                    host, present, self.registries, f"{self.client.connection.url} host {host}"
                )
                data_h = mapped.series
                if not mapped.targets:
                    self._targets_named.pop(host, None)
                elif self._targets_named.get(host) != mapped.targets:
                    log.warning("%s", targets_note(host, mapped.targets))
                    self._targets_named[host] = mapped.targets
                n = int(np.searchsorted(data_h.timestamps, cut, side="right"))
                series = replace(data_h, timestamps=data_h.timestamps[:n], values=data_h.values[:n])
                opened = state.episode_start if state.alert.active else None
                new = score_host(state, series, now)
                if opened is not None and not state.alert.active:
                    self._episode_closed(host, opened)
            except (InputError, ValueError) as exc:
                self._error("score", f"host {host}: {exc}")
                counts["failed"] += 1
                continue
            counts["scored"] += 1
            for start_w, end_w, alerted in new:
                if alerted and state.episode_start == start_w:
                    log.warning(
                        "alert opened on %s: window %.0f-%.0f, score %.3f > %.3f (%s)",
                        host, start_w, end_w, state.score or 0.0, state.model.threshold,
                        ", ".join(f"{k}={v:.3g}" for k, v in _top(state.contributions)),
                    )  # fmt: skip
        if self.unload:
            self._sleep(silent)
        self.save_state()
        self.cycle_seconds = time.perf_counter() - t0
        return counts

    def _buffer(self, answers: Mapping[str, Sequence[RawSeries]], start: float, full: bool) -> None:
        """Each host's samples of every metric: the answers (a full read), or the answers
        merged into what was held, without samples before ``start``."""
        names = list(self.hosts)
        wanted = {h: i for i, h in enumerate(names)}
        for host in [h for h in self.buffers if h not in wanted]:
            del self.buffers[host]
            self._targets_named.pop(host, None)
        per: dict[str, dict[int, Samples]] = {}
        unknown: set[str] = set()
        for metric, answer in answers.items():
            registry = self.registries.get(metric)
            if registry is None:
                registry = self.registries[metric] = SeriesRegistry(metric, self.host_label)
            # process-exporter's series are read without --selector: not the fleet's hosts
            mine = None if metric in PROCESS_METRICS else unknown
            per[metric] = ingest(answer, registry, wanted, mine)
        back = sorted(unknown & self.dormant.keys())
        if back:  # hosts that came back: their samples are taken from these answers
            self._wake(back)
            names = list(self.hosts)
            wanted = {h: i for i, h in enumerate(names)}
            unknown = set()
            for metric, answer in answers.items():
                mine = None if metric in PROCESS_METRICS else unknown
                per[metric] = ingest(answer, self.registries[metric], wanted, mine)
        self._unmodelled(unknown - {""})
        self._unlabelled("" in unknown)
        empty = Samples.empty()
        ranks = {m: self.registries[m].rank for m in answers}
        for i, host in enumerate(names):
            new = {m: per[m].get(i, empty) for m in answers}
            if full:  # (start, now]: whether the server's range includes its start or not
                self.buffers[host] = {m: s.after(start) for m, s in new.items()}
            else:
                self.buffers[host] = merge_host(self.buffers.get(host, {}), new, ranks, start)

    def _forget(self, start: float) -> None:
        """Forget the series whose newest sample is at or before ``start`` (hosts gone, their
        exporter down, a device or process group gone): none of their samples is held, as
        every buffer was just cut to after ``start``, so the next reads map and score exactly
        as if they were kept; what holds the others is renumbered. A series that comes back is
        numbered again when read. So what a cycle keeps and walks through follows the hosts
        reporting in the lookback, not every host ever seen."""
        for metric, registry in self.registries.items():
            if not (registry.seen <= start).any():
                continue
            held = np.zeros(len(registry.labels), dtype=bool)
            for buffer in self.buffers.values():
                samples = buffer.get(metric)
                if samples is not None:
                    held[samples.sid] = True
            new = registry.forget(start, held)
            if new is None:
                continue
            for buffer in self.buffers.values():
                samples = buffer.get(metric)
                if samples is not None:
                    buffer[metric] = Samples(new[samples.sid], samples.ts, samples.value)
            log.debug("%s: %d series held after forgetting those not read since %.0f",
                      metric, len(registry.labels), start)  # fmt: skip

    @property
    def series(self) -> int:
        """Series held in the registries (those read in the lookback, when forgetting)."""
        return sum(len(r.labels) for r in self.registries.values())

    def _unmodelled(self, hosts: set[str]) -> None:
        """Name the hosts that report under ``--selector`` but have no model (or one that was
        refused), once each while they stay so: a new host is otherwise silently unjudged."""
        self.unmodelled = len(hosts)
        new = sorted(hosts - self._unmodelled_named)
        self._unmodelled_named = hosts
        if new:
            shown = _names(new, most=20)
            log.warning(
                "%d host(s) report to Prometheus but have no usable model in %s, so they are "
                "not scored: %s (train them with 'minerwatch fleet train'; a model saved there "
                "is picked up without a restart)", len(new), self.models_dir, shown,
            )  # fmt: skip

    def _unlabelled(self, some: bool) -> None:
        """Name the node_exporter targets whose series lack ``--host-label`` (they name no
        host, so nothing of theirs is scored), once while the set stays the same, as
        ``fleet train|score|export`` do: a relabelling that missed some targets is otherwise
        silent here."""
        targets: set[TargetKey] = set()
        if some and self.host_label:
            for metric, registry in self.registries.items():
                if metric not in PROCESS_METRICS:
                    targets.update(
                        target_key(lab)
                        for lab, host in zip(registry.labels, registry.hosts, strict=True)
                        if host == ""
                    )
        if targets and targets != self._unlabelled_named:
            listed = _names([target_text(t) for t in sorted(targets)], most=5)
            log.warning(
                "--host-label %s: %d node_exporter target(s) without it are not scored: %s "
                "(relabel them, or leave them out with --selector)",
                self.host_label, len(targets), listed,
            )  # fmt: skip
        self._unlabelled_named = targets

    # -- alert state across restarts -------------------------------------------------------

    def save_state(self) -> None:
        """Write every host's alert state (atomically); a failure is counted, never fatal."""
        if self.state_file is None:
            return
        self._expire_kept()
        hosts: dict[str, object] = dict(self.kept_state)
        hosts.update({h: d.saved for h, d in self.dormant.items()})
        hosts.update({h: s.saved() for h, s in self.hosts.items()})
        doc = {"format": STATE_FORMAT, "saved_at": self.clock(), "hosts": hosts}
        try:
            atomic_write(self.state_file, json.dumps(doc, separators=(",", ":")), mode=0o600)
        except OSError as exc:
            self._error("state", f"cannot write {self.state_file}: {exc}")

    def _expire_kept(self) -> None:
        """Forget the alert state of hosts without a model for longer than the history a
        retraining reads (``--days``): their alerted windows are older than anything a
        retraining would leave out, and hosts replaced by new names (autoscaling) would
        otherwise grow the state file, rewritten every cycle, without end."""
        before = self.clock() - self.history_s
        gone = sorted(h for h, v in self.kept_state.items() if _kept_since(v, before) < before)
        for host in gone:
            del self.kept_state[host]
        if gone:
            shown = ", ".join(gone[:10]) + (f" and {len(gone) - 10} more" if len(gone) > 10 else "")
            log.info(
                "forgot the alert state of %d host(s) without a model for longer than the "
                "%.4g days of history a retraining reads: %s",
                len(gone),
                self.history_s / 86400,
                shown,
            )

    def restore_state(self) -> int:
        """Take back the alert state saved by a previous run; how many hosts it had.

        A missing file is a first start. A file that cannot be read or parsed is logged,
        counted (``stage="state"``), moved aside as ``<file>.corrupt`` and ignored: every
        host then starts without an open alert, as on a first start.
        """
        path = self.state_file
        if path is None or not path.exists():
            return 0
        try:
            doc = json.loads(path.read_bytes())
            if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
                raise ValueError(f"not a fleet serve state file of format {STATE_FORMAT}")
            saved = doc["hosts"]
            if not isinstance(saved, dict):
                raise ValueError("'hosts' is not an object")
            restored = {
                h: HostSaved.parse(v) for h, v in saved.items()
                if h in self.hosts or h in self.dormant
            }  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            aside = path.with_name(path.name + ".corrupt")
            try:
                path.replace(aside)
                kept = f"moved to {aside}"
            except OSError as err:
                kept = f"not moved aside ({err}); it will be overwritten"
            self._error(
                "state",
                f"state file {path} is unreadable ({type(exc).__name__}: {exc}); ignored, so "
                f"no alert is taken as open and the alerted windows are forgotten; {kept}",
            )
            return 0
        for host, item in restored.items():
            if host in self.hosts:
                item.apply(self.hosts[host])
            else:
                self.dormant[host] = self.dormant[host].restored(item, saved[host])
        now = self.clock()
        self.kept_state = {
            h: {**v, KEPT_SINCE: _kept_since(v, now)}
            for h, v in saved.items()
            if h not in restored and isinstance(v, dict)
        }
        open_alerts = sorted(h for h, item in restored.items() if item.active)
        log.info(
            "alert state of %d hosts restored from %s (open alerts: %s)", len(restored), path,
            ", ".join(open_alerts) or "none",
        )  # fmt: skip
        return len(restored)

    def read_dismissals(self) -> None:
        """Pick up ``fleet dismiss``'s file when it changed; a host whose dismissed spans
        changed retrains now, so the next page of that work is judged by a model that saw it.
        A damaged file is logged and counted once (stage ``state``); the last good one stays."""
        if self.state_file is None:
            return
        path = self.state_file.parent / DISMISSED_FILE
        try:
            st = path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        except OSError as exc:
            self._error("state", f"{path}: {exc.strerror or exc}")
            return
        if stamp == self._dismissed_stamp:
            return
        self._dismissed_stamp = stamp  # a broken file is said once, not every cycle
        try:
            items = read_dismissed(path)
        except InputError as exc:
            self._error("state", f"{exc}; the dismissals read before stay in force")
            return
        spans = spans_by_host(items)
        if self._dismissals_read:
            changed = {
                h for h in {*spans, *self.dismissed} if spans.get(h) != self.dismissed.get(h)
            }
        else:  # at start: only what was dismissed after the host's model was trained is new
            # (a restart must not retrain every host ever dismissed, from --days of history)
            trained = {h: float(s.model.meta.get("created_at", 0.0)) for h, s in self.hosts.items()}
            trained.update((h, d.created) for h, d in self.dormant.items())
            changed = {
                str(item["host"]) for item in items
                if item["host"] in trained and float(item["at"]) >= trained[item["host"]]
            }  # fmt: skip
        self._dismissals_read = True
        self.dismissed = spans
        now = self.clock()
        for host in sorted(changed & {*self.hosts, *self.dormant}):
            if self.retrain_every <= 0:
                log.warning("%s: a dismissal changed, but --retrain-every 0 never retrains", host)
            elif host in self.dormant:  # its model is not held: retrained once it reports
                log.info("%s: a dismissal changed, retraining it as soon as it reports (it has "
                         "sent nothing in the lookback)", host)  # fmt: skip
                self._dismissed_dormant.add(host)
            else:
                log.info("%s: a dismissal changed, retraining it now", host)
                self.hosts[host].next_retrain = now

    def _dismissed_since(self, host: str, start: float) -> bool:
        """Whether a responder dismissed a span of ``host`` reaching past ``start`` (the
        start of an episode: that episode, open or just closed, is the one dismissed)."""
        return any(end >= start for _, end in self.dismissed.get(host, []))

    def _episode_closed(self, host: str, opened: float) -> None:
        """An episode a responder dismissed while it was open was learnt as far as it had
        gone; now that it is over, retrain at once to learn it whole (as the agent does)
        rather than leave its heavier rest to page again until the schedule comes round."""
        if self.retrain_every > 0 and self._dismissed_since(host, opened):
            log.info("%s: a dismissed episode closed, retraining it now to learn it whole", host)
            self.hosts[host].next_retrain = self.clock()

    def due(self) -> list[str]:
        """Hosts whose model is older than ``--retrain-every`` (and not waiting for a retry)."""
        now = self.clock()
        return [h for h, s in sorted(list(self.hosts.items())) if s.next_retrain <= now]

    def retrain_host(self, connection: Connection, host: str) -> str:
        """Retrain one host from Prometheus, leaving out what it alerted on; the outcome
        (``accepted`` or a :data:`FAILURE_REASONS` reason)."""
        from minerwatch.baseline.batch import score_series
        from minerwatch.service.fleet.train import FleetReader
        from minerwatch.service.retrain import TooFewWindows, retrain

        state = self.hosts.get(host)
        if state is None:  # its model was removed from --models meanwhile
            return "removed"
        model = state.model
        now = self.clock()
        state.next_retrain = now + min(RETRY_S, self.retrain_every)
        reader = FleetReader(connection, now - self.history_s, now, self.selector, self.host_label)
        try:
            series = reader.read(host).series
            # What the current model alerts on in the history (an alert before this server
            # started included), with what this server saw alerting.
            scored = score_series(model, series)
            alerted = [
                (float(a), float(b))
                for a, b, hit in zip(
                    scored.window_start, scored.window_end, scored.alert, strict=True
                )
                if hit
            ]
            episode = state.episode_start if state.alert.active else None
            # what a responder dismissed as benign is learnt, not left out; an open episode
            # dismissed too, as far as it has gone (a lasting new level never closes)
            spans = self.dismissed.get(host, [])
            if episode is not None and self._dismissed_since(host, episode):
                episode = None
            alerted = outside_dismissed([*state.alerted, *alerted], spans)
            ts, values, margin = training_samples(
                series, alerted, model.hop, model.alert_delay_windows, episode
            )
            log.info(
                "retraining %s on %d of %d samples (%.0f s left out around %d alerted windows)",
                host, len(ts), len(series.timestamps), margin, len(alerted),
            )  # fmt: skip
            with tempfile.TemporaryDirectory(prefix=".fleet-retrain-", dir=self.models_dir) as tmp:
                path = Path(tmp) / "input.npz"
                buf = io.BytesIO()
                np.savez(buf, timestamps=ts, values=values, columns=np.array(series.columns))
                path.write_bytes(buf.getvalue())
                result = retrain(
                    path, self.models_dir, host, model.window, model.hop, model.alert_windows,
                    key=self.key, alarms_per_week=alarm_budget(model), **rule_of(model),
                )  # fmt: skip
        except TooFewWindows as exc:
            return self._retrain_failed(host, "too_few_windows", str(exc))
        except (InputError, ValueError, OSError, PrometheusUnavailable) as exc:
            return self._retrain_failed(host, "bad_input", str(exc))
        if not result["accepted"]:
            return self._retrain_failed(host, "rejected", str(result))
        log.info("retrained %s: %d windows, threshold %.4f", host, result["windows"],
                 result["threshold"])  # fmt: skip
        self.reloaded.put((host, "accepted"))
        return "accepted"

    def _retrain_failed(self, host: str, reason: str, why: str) -> str:
        """Count and log a retraining that gave no new model. A failure is tried again after
        RETRY_S, twice as long after each failure in a row (a host whose metrics stay too few
        would otherwise have its whole history read from Prometheus every hour); a candidate
        rejected for alerting more is a training that worked, tried at the usual times."""
        self.retrain_failures[reason] = self.retrain_failures.get(reason, 0) + 1
        state = self.hosts.get(host)
        then = ""
        if state is not None and reason != "rejected":
            state.retrain_failures += 1
            wait = min(RETRY_S * 2.0 ** min(state.retrain_failures - 1, 16), RETRY_MAX_S)
            state.next_retrain = self.clock() + min(wait, self.retrain_every)
            then = f"; tried again in {format_duration(round(min(wait, self.retrain_every)))}"
        self._error("train", f"host {host}: {reason}: {why}{then}")
        return reason

    def snapshot(self) -> FleetSnapshot:
        hosts = {h: s.snapshot(len(self.dismissed.get(h, ()))) for h, s in self.hosts.items()}
        hosts.update(
            (h, replace(d.snap, dismissed_episodes=len(self.dismissed.get(h, ()))))
            for h, d in self.dormant.items()
        )
        return FleetSnapshot(
            hosts=hosts,
            models_loaded=len(self.hosts) if self._started else None,
            errors_total=dict(self.errors),
            retrain_failures_total=dict(self.retrain_failures),
            cycle_seconds=self.cycle_seconds,
            unmodelled_hosts=self.unmodelled,
            series=self.series if self._started else None,
        )


def _shown(hosts: Sequence[str], n: int = 10) -> str:
    """Host names for a log line: the first ``n``, then how many more."""
    return ", ".join(hosts[:n]) + (f" and {len(hosts) - n} more" if len(hosts) > n else "")


def _top(contributions: Mapping[str, float], n: int = 3) -> list[tuple[str, float]]:
    return sorted(((k, v) for k, v in contributions.items() if v > 0), key=lambda kv: -kv[1])[:n]


def _retrainer(server: FleetServer, connection: Connection, stop: StopFlag) -> None:
    """Background thread: retrain hosts as they come due, one at a time, until ``stop``."""
    while not stop.wait(1.0):
        for host in server.due():
            if stop.is_set():
                return
            try:
                server.retrain_host(connection, host)
            except Exception as exc:  # a bug in one host's training must not end retraining
                server._retrain_failed(host, "crashed", f"{type(exc).__name__}: {exc}")


def rule_of(model: HostModel) -> dict[str, Any]:
    """The alert rule's sustain and margin to retrain ``model`` with (a model saved before
    them is retrained with today's defaults)."""
    if model.sustain_windows is None:
        return {}
    return {"sustain_windows": model.sustain_windows, "alert_margin": model.alert_margin}


def state_file(args: argparse.Namespace) -> Path:
    """:data:`STATE_FILE` in ``--state-dir`` (created when missing), else in ``--models``."""
    folder = getattr(args, "state_dir", None)
    if folder is None:
        return Path(args.models) / STATE_FILE
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder) / STATE_FILE


def run_serve(args: argparse.Namespace, connection: Connection) -> int:
    """``fleet serve``: until SIGTERM/SIGINT; exit 2 when no model loads (nothing to serve).

    ``--port`` and ``--web-config`` are checked first: /metrics is bound only after the first
    cycle, which reads Prometheus and may take a while on a big fleet.
    """
    if not 0 <= args.port <= 65535:  # as the agent's [exporter] port
        raise InputError(
            "--port", None, "a port from 0 to 65535 (0 = any free port)", str(args.port)
        )
    web = LiveProtection(args.web_config)  # a bad certificate: exit 2 now
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )  # fmt: skip
    key = read_key(args.model_key) if args.model_key is not None else None
    client = PromClient(connection, concurrency=args.concurrency)
    server = FleetServer(
        client, Path(args.models), selector=args.selector, host_label=args.host_label, key=key,
        retrain_every=args.retrain_every, history_s=args.days * 86400.0,
        state_file=state_file(args),
    )  # fmt: skip
    if not server.load_models():
        raise InputError(str(args.models), None, "at least one model that loads", "none")
    server.restore_state()
    began = time.monotonic()
    counts = server.cycle()
    if isinstance(server.query_error, PrometheusError):  # a refused query or no server at all:
        raise server.query_error  # the next cycles would fail the same way (exit 2)
    exporter = FleetExporter(args.port, args.address, web)
    exporter.snapshot = server.snapshot()
    stop = StopFlag()
    stop.stop_on()  # STOP_SIGNALS, as the agent: SIGHUP's default too would lose its state
    log.info(
        "fleet serve: %d models (%d loaded, the others' hosts sent nothing in the lookback), "
        "%s every %.0f s, metrics on port %d", len(server.hosts) + len(server.dormant),
        len(server.hosts), connection.url, args.interval, exporter.port,
    )  # fmt: skip
    worker = None
    if args.retrain_every > 0:
        worker = threading.Thread(
            target=_retrainer, args=(server, connection, stop), name="fleet-retrain", daemon=True
        )
        worker.start()
    try:
        while True:
            log.info(
                "cycle: %d hosts scored, %d without data, %d failed in %.2f s",
                counts["scored"], counts["no_data"], counts["failed"], time.monotonic() - began,
            )  # fmt: skip
            if stop.wait(max(0.0, args.interval - (time.monotonic() - began))):
                break
            began = time.monotonic()
            counts = server.cycle()
            exporter.snapshot = server.snapshot()
    finally:
        stop.set()
        exporter.stop()
        if worker is not None:
            worker.join(timeout=30)
        server.save_state()
    log.info("fleet serve stopped (%s)", ", ".join(stop.signals) or "no signal")
    return 0
