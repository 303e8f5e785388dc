"""``minerwatch fleet serve``: score every host from Prometheus each interval, export the agent's
metric names with a ``host`` label, and retrain on schedule.

A cycle reads the last :data:`LOOKBACK_S` of every host with one query per metric for the
whole selector (never one per host), splits the answers by host, maps them to telemetry with
the same code as ``fleet train`` (:func:`~minerwatch.service.fleet.nodeexporter.telemetry`),
and scores the windows completed since the previous cycle with each host's stored model and
its own streaming alert rule (:class:`~minerwatch.baseline.calibrate.AlertState`), as the
agent does. The exposition reuses the agent's metric families
(:func:`~minerwatch.service.exporter.snapshot_families`) with a ``host`` label added, so the
dashboard and the alert rules serve both modes. Retraining runs in a background thread, one
host at a time, through the agent's own :func:`~minerwatch.service.retrain.retrain` (candidate
checked against the current model on recent clean windows) after leaving out the windows the
host alerted on, widened as the agent widens them.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import queue
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from minerwatch.baseline.calibrate import AlertState
from minerwatch.baseline.exclude import exclusion_margin, exclusion_mask
from minerwatch.baseline.fitted import HostModel
from minerwatch.baseline.store import ModelError, list_hosts, load_model, read_key
from minerwatch.features.errors import InputError
from minerwatch.features.io import HostSeries
from minerwatch.features.pipeline import feature_rows
from minerwatch.features.schema import AGENT_METRICS, SCHEMA_VERSION
from minerwatch.service.exporter import METRICS, ExpositionCache, snapshot_families
from minerwatch.service.fleet.nodeexporter import (
    METRICS as NODE_METRICS,
)
from minerwatch.service.fleet.nodeexporter import (
    PROCESS_METRICS,
    SERIES_ID,
    host_of,
    selector_matchers,
    series_selector,
    telemetry,
)
from minerwatch.service.fleet.promclient import (
    TIMESTAMP,
    VALUE,
    Connection,
    PromClient,
    PrometheusError,
    PrometheusUnavailable,
)
from minerwatch.service.httpserver import Server, Serving, bind
from minerwatch.service.retrain import FAILURE_REASONS
from minerwatch.service.state import AgentSnapshot, package_version
from minerwatch.service.webconfig import load_web_config

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("minerwatch.fleet")

#: Seconds of samples each cycle reads per host: the agent's rolling buffer (the longest
#: feature looks back 15 minutes; twice that so the first windows after a restart are whole).
LOOKBACK_S = 1800.0
#: Time around alerted windows that retraining leaves out, at most (as the agent).
EXCLUDE_MARGIN_S = 3600.0
#: A host whose retraining failed is tried again after this long (or the schedule, if sooner).
RETRY_S = 3600.0
#: Alerted windows remembered per host for retraining (older ones are rescored instead).
MAX_REMEMBERED = 10_000
#: Stages counted in the fleet server's ``minerwatch_errors_total{stage}`` (bounded).
FLEET_STAGES = ("query", "model", "score", "train")
#: The agent's metric families that mean the same for a host scored from Prometheus, by
#: family name (counters without ``_total``, info without ``_info``); the agent-only ones
#: (sampling, responding, host signals) and per-process ones are left out.
PER_HOST = frozenset(
    {
        "minerwatch_anomaly_score",
        "minerwatch_anomaly_threshold",
        "minerwatch_alert_active",
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
    }
)


# -- reading: one query per metric, split by host ----------------------------------------------


def split_by_host(frame: pd.DataFrame, host_label: str | None) -> dict[str, pd.DataFrame]:
    """One long answer (every host's series) as a frame per host, label columns kept."""
    label = host_label or "instance"
    if not len(frame) or label not in frame.columns:
        return {}
    column = frame[label]
    names = [str(c) for c in column.cat.categories]
    hosts = names if host_label else [host_of(n) for n in names]
    uniq = sorted(set(hosts))
    index = {h: i for i, h in enumerate(uniq)}
    per_category = np.array([index[h] for h in hosts], dtype=np.intp)
    codes = per_category[column.cat.codes.to_numpy()]
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(uniq) + 1))
    drop = [c for c in ("__name__",) if c in frame.columns]
    frame = frame.drop(columns=drop) if drop else frame
    # every series of the fleet numbered once, so the mapping need not group each host again
    labels = [c for c in frame.columns if c not in (TIMESTAMP, VALUE)]
    frame[SERIES_ID] = frame.groupby(labels, observed=True, sort=False).ngroup().to_numpy()
    return {
        h: frame.iloc[order[bounds[i] : bounds[i + 1]]]
        for i, h in enumerate(uniq)
        if bounds[i + 1] > bounds[i]
    }


def read_fleet(
    client: PromClient, selector: str, host_label: str | None, start: float, end: float
) -> dict[str, dict[str, pd.DataFrame]]:
    """Raw samples of every fleet metric in [start, end]: metric -> host -> long frame.

    One request per metric for the whole selector (process-exporter's series are another
    job, so they are read without it and joined by host).
    """
    inner = selector_matchers(selector)
    out: dict[str, dict[str, pd.DataFrame]] = {}
    for metric in NODE_METRICS:
        sel = series_selector(metric, "" if metric in PROCESS_METRICS else inner)
        out[metric] = split_by_host(client.samples(sel, start, end, 15.0), host_label)
    return out


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
    features: dict[str, float] = field(default_factory=dict)
    contributions: dict[str, float] = field(default_factory=dict)
    telemetry: dict[str, float] = field(default_factory=dict)
    sample_ts: float | None = None
    score_ts: float | None = None
    episode_start: float | None = None
    #: Alerted windows (start, end) seen by this server, for retraining to leave out.
    alerted: list[tuple[float, float]] = field(default_factory=list)
    next_retrain: float = math.inf

    @classmethod
    def of(cls, model: HostModel, old: HostState | None = None) -> HostState:
        """A state for a (new) model; an ongoing episode and the counters stay open."""
        alert = AlertState(model.threshold, model.alert_windows, model.clear_windows)
        state = cls(model, alert)
        if old is not None:
            alert.active = old.alert.active
            state.last_slot, state.alerts_total = old.last_slot, old.alerts_total
            state.windows_total, state.episode_start = old.windows_total, old.episode_start
            state.alerted = old.alerted
        return state

    def snapshot(self) -> AgentSnapshot:
        """The agent's snapshot fields that mean something for a host scored from afar."""
        m = self.model
        return AgentSnapshot(
            anomaly_score=self.score,
            anomaly_threshold=m.threshold,
            alert_active=self.alert.active,
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
        )


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
    out = []
    for j, score in zip(fresh.tolist(), scores.tolist(), strict=True):
        start, end, slot = float(win.starts[j]), float(win.ends[j]), int(win.slots[j])
        was = state.alert.active
        alerted = state.alert.update(score, slot)
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

    def __init__(self, port: int, address: str, web_config: Path | None = None) -> None:
        self.snapshot = FleetSnapshot()
        self.registry = CollectorRegistry()
        self.registry.register(_FleetCollector(lambda: self.snapshot))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._cache = ExpositionCache(self.registry, lambda: self.snapshot)
        tls, auth = None, None
        if web_config is not None:
            config = load_web_config(web_config)
            tls = config.ssl_context()
            auth = config.authenticator()
        self._server: Server = bind(address, port, Serving(tls, auth, self._cache.get))
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

    def _error(self, stage: str, what: str) -> None:
        self.errors[stage] = self.errors.get(stage, 0) + 1
        log.warning("%s: %s", stage, what)

    def load_models(self) -> int:
        """(Re)load every host's model; a model that does not verify is counted and skipped."""
        for host in list_hosts(self.models_dir):
            self.load(host)
        return len(self.hosts)

    def load(self, host: str) -> bool:
        try:
            model = load_model(self.models_dir, host, key=self.key)
        except (ModelError, InputError, OSError, ValueError) as exc:
            self._error("model", str(exc))
            return False
        old = self.hosts.get(host)
        if old is not None and old.model.meta.get("sha256") == model.meta.get("sha256"):
            return True
        state = self.hosts[host] = HostState.of(model, old)
        if self.retrain_every > 0:
            created = float(model.meta.get("created_at", self.clock()))
            state.next_retrain = created + self.retrain_every
        return True

    def cycle(self) -> dict[str, int]:
        """Read every host's last :data:`LOOKBACK_S` and score its new windows.

        Returns how many hosts were scored, had no data, or failed to score.
        """
        while not self.reloaded.empty():
            host, outcome = self.reloaded.get()
            if outcome == "accepted":
                self.load(host)
        t0 = time.perf_counter()
        now = self.clock()
        start = now - LOOKBACK_S - 2 * max([60.0, *(s.model.window for s in self.hosts.values())])
        counts = {"scored": 0, "no_data": 0, "failed": 0}
        try:
            data = read_fleet(self.client, self.selector, self.host_label, start, now)
        except (PrometheusError, PrometheusUnavailable) as exc:
            self._error("query", str(exc))
            self.query_error = exc
            counts["failed"] = len(self.hosts)
            return counts
        self.query_error = None
        for host, state in self.hosts.items():
            frames = {metric: per.get(host) for metric, per in data.items()}
            present = {k: v for k, v in frames.items() if v is not None}
            if not any(k not in PROCESS_METRICS for k in present):
                counts["no_data"] += 1
                continue
            # a scrape ingested between two of the cycle's queries is in some answers only:
            # rows after the oldest "latest sample" of any metric wait for the next cycle
            cut = min(
                float(f[TIMESTAMP].max()) for k, f in present.items() if k not in PROCESS_METRICS
            )
            try:
                data_h = telemetry(
                    host, present, source=f"{self.client.connection.url} host {host}"
                ).series
                n = int(np.searchsorted(data_h.timestamps, cut, side="right"))
                series = replace(data_h, timestamps=data_h.timestamps[:n], values=data_h.values[:n])
                new = score_host(state, series, now)
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
        self.cycle_seconds = time.perf_counter() - t0
        return counts

    def due(self) -> list[str]:
        """Hosts whose model is older than ``--retrain-every`` (and not waiting for a retry)."""
        now = self.clock()
        return [h for h, s in sorted(self.hosts.items()) if s.next_retrain <= now]

    def retrain_host(self, connection: Connection, host: str) -> str:
        """Retrain one host from Prometheus, leaving out what it alerted on; the outcome
        (``accepted`` or a :data:`FAILURE_REASONS` reason)."""
        from minerwatch.baseline.batch import score_series
        from minerwatch.service.fleet.train import FleetReader
        from minerwatch.service.retrain import TooFewWindows, retrain

        state = self.hosts[host]
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
            ts, values, margin = training_samples(
                series, [*state.alerted, *alerted], model.hop, model.alert_windows, episode
            )
            log.info(
                "retraining %s on %d of %d samples (%.0f s left out around %d alerted windows)",
                host, len(ts), len(series.timestamps), margin, len(alerted) + len(state.alerted),
            )  # fmt: skip
            with tempfile.TemporaryDirectory(prefix=".fleet-retrain-", dir=self.models_dir) as tmp:
                path = Path(tmp) / "input.npz"
                buf = io.BytesIO()
                np.savez(buf, timestamps=ts, values=values, columns=np.array(series.columns))
                path.write_bytes(buf.getvalue())
                result = retrain(
                    path, self.models_dir, host, model.window, model.hop, model.alert_windows,
                    key=self.key,
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
        self.retrain_failures[reason] = self.retrain_failures.get(reason, 0) + 1
        self._error("train", f"host {host}: {reason}: {why}")
        return reason

    def snapshot(self) -> FleetSnapshot:
        return FleetSnapshot(
            hosts={h: s.snapshot() for h, s in self.hosts.items()},
            errors_total=dict(self.errors),
            retrain_failures_total=dict(self.retrain_failures),
            cycle_seconds=self.cycle_seconds,
        )


def _top(contributions: Mapping[str, float], n: int = 3) -> list[tuple[str, float]]:
    return sorted(((k, v) for k, v in contributions.items() if v > 0), key=lambda kv: -kv[1])[:n]


def _retrainer(server: FleetServer, connection: Connection, stop: threading.Event) -> None:
    """Background thread: retrain hosts as they come due, one at a time, until ``stop``."""
    while not stop.wait(1.0):
        for host in server.due():
            if stop.is_set():
                return
            try:
                server.retrain_host(connection, host)
            except Exception as exc:  # a bug in one host's training must not end retraining
                server._retrain_failed(host, "crashed", f"{type(exc).__name__}: {exc}")


def run_serve(args: argparse.Namespace, connection: Connection) -> int:
    """``fleet serve``: until SIGTERM/SIGINT; exit 2 when no model loads (nothing to serve)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )  # fmt: skip
    key = read_key(args.model_key) if args.model_key is not None else None
    client = PromClient(connection, concurrency=args.concurrency)
    server = FleetServer(
        client, Path(args.models), selector=args.selector, host_label=args.host_label, key=key,
        retrain_every=args.retrain_every, history_s=args.days * 86400.0,
    )  # fmt: skip
    if not server.load_models():
        raise InputError(str(args.models), None, "at least one model that loads", "none")
    began = time.monotonic()
    counts = server.cycle()
    if isinstance(server.query_error, PrometheusError):  # a refused query or no server at all:
        raise server.query_error  # the next cycles would fail the same way (exit 2)
    exporter = FleetExporter(args.port, args.address, args.web_config)
    exporter.snapshot = server.snapshot()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "fleet serve: %d models, %s every %.0f s, metrics on port %d", len(server.hosts),
        connection.url, args.interval, exporter.port,
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
    return 0
