"""Prometheus exposition of the agent's latest :class:`~minerwatch.service.state.AgentSnapshot`.

The agent swaps the snapshot reference after each loop; the exposition of a snapshot is
rendered once per format (text or OpenMetrics, plain or gzip) by the first scrape that
asks for it and then reused (:class:`ExpositionCache`), so a scrape only sends bytes and
never samples, scores or waits on the agent. The HTTP side (paths, methods, TLS, basic
auth, load bounds) is :mod:`minerwatch.service.httpserver`. With a textfile directory,
``update`` also writes the same minerwatch_* exposition to ``DIR/minerwatch.prom`` for
node_exporter's textfile collector; the process/platform metrics stay out of that file
because node_exporter exports its own.
"""

from __future__ import annotations

import gzip
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.registry import Collector

from minerwatch.features.atomic import atomic_write
from minerwatch.service.config import DEFAULT_ADDRESS, DEFAULT_PORT
from minerwatch.service.httpserver import MAX_CONNECTIONS, Server, Serving, bind
from minerwatch.service.state import ERROR_STAGES, AgentSnapshot
from minerwatch.service.webconfig import LiveProtection

log = logging.getLogger(__name__)

TEXTFILE_NAME = "minerwatch.prom"
#: A rendered exposition is reused for at most this long, even without a new snapshot, so
#: ``process_*`` and ``minerwatch_model_age_seconds`` keep moving if the agent loop stalls.
RENDER_MAX_AGE_S = 1.0

#: Every metric the agent exports (exposed name -> help). deploy/README.md lists the same.
METRICS: dict[str, str] = {
    "minerwatch_anomaly_score": "Anomaly score of the latest window, 0 (normal) to 1.",
    "minerwatch_anomaly_threshold": "Calibrated score above which a window counts as anomalous.",
    "minerwatch_alert_active": "1 while the alert rule is firing on this host, else 0.",
    "minerwatch_heavy_work": (
        "1 when the latest window was heavy work (evidence of work far above its training"
        " median), whose marginal evidence the alert rule does not count toward its sustain."
    ),
    "minerwatch_alerts_total": "Alert episodes started since the agent started.",
    "minerwatch_suspect_processes_total": (
        "Processes named like a miner or disguised (deleted exe, kernel-thread name with an exe,"
        " exe in a temporary folder) seen since the agent started, learning included."
    ),
    "minerwatch_feature_value": "Feature values of the latest scored window.",
    "minerwatch_feature_contribution": "Share of the latest anomaly score due to each feature.",
    "minerwatch_model_info": "Loaded baseline model (value is always 1).",
    "minerwatch_model_trained_timestamp_seconds": "Unix time the loaded model was trained.",
    "minerwatch_model_training_windows": "Number of windows the loaded model was trained on.",
    "minerwatch_model_age_seconds": "Seconds since the loaded model was trained.",
    "minerwatch_learning_progress_ratio": "Progress of the learning phase, 0 to 1.",
    "minerwatch_learning": "1 while the agent is still learning this host's baseline, else 0.",
    "minerwatch_learning_period_seconds": "Learning time the agent needs before its first model.",
    "minerwatch_learning_started_timestamp_seconds": (
        "Unix time the current learning phase started (absent once a model is loaded)."
    ),
    "minerwatch_top_process_cpu_ratio": "CPU of the busiest process as a share of the host, 0-1.",
    "minerwatch_telemetry": "Latest raw telemetry sample; metric is the telemetry column name.",
    "minerwatch_sample_duration_seconds": "Time taken by the latest telemetry sample.",
    "minerwatch_score_duration_seconds": "Time taken to score the latest window.",
    "minerwatch_samples_total": "Telemetry samples taken since the agent started.",
    "minerwatch_windows_scored_total": "Windows scored since the agent started.",
    "minerwatch_errors_total": "Errors since the agent started, by stage.",
    "minerwatch_retrain_failures_total": "Retrainings that gave no new model, by reason.",
    "minerwatch_dismissed_episodes": (
        "Alert episodes a responder dismissed as benign (minerwatch dismiss), in force."
    ),
    "minerwatch_source_up": "1 if the telemetry source worked in the latest sample, else 0.",
    "minerwatch_last_sample_timestamp_seconds": "Unix time of the latest telemetry sample.",
    "minerwatch_last_score_timestamp_seconds": "Unix time of the latest scored window.",
    "minerwatch_indicator_hits": "Mining indicators matched in the latest sample, by indicator.",
    "minerwatch_evidence_info": "Evidence file of the open alert episode (value is always 1).",
    "minerwatch_throttled_processes": "Processes currently throttled by the agent.",
    "minerwatch_throttle_actions_total": "Throttling actions taken since start, by action.",
    "minerwatch_isolated_processes": "Processes the agent has cut off the network (nftables).",
    "minerwatch_ioc_hits": "Matches of each IOC file in the latest check of --ioc-dir, by IOC id.",
    "minerwatch_build_info": "Agent build (value is always 1).",
    "minerwatch_new_listen_ports": (
        "Listening ports (TCP, UDP services) never seen while learning, by proto."
    ),
    "minerwatch_ssh_failed_logins_per_minute": "Failed SSH login attempts in the last minute.",
    "minerwatch_ssh_failed_logins_total": "Failed SSH login attempts since the agent started.",
    "minerwatch_ssh_new_source_logins_total": (
        "SSH logins from a source never seen while learning (each source once)."
    ),
    "minerwatch_log_truncations_total": (
        "Log files that shrank or vanished without rotation, by kind (shrunk, vanished)."
    ),
    "minerwatch_web_config_last_reload_successful": (
        "1 while the web config (--web-config) loaded as last changed, 0 when a change to it or "
        "a file it names did not load (the previous certificate and passwords are served)."
    ),
}


class WebConfigCollector(Collector):
    """``minerwatch_web_config_last_reload_successful`` of a served web config (absent
    without one), as Prometheus' own ``prometheus_config_last_reload_successful``: a renewed
    certificate that does not load is otherwise seen only when the old one expires."""

    def __init__(self, live: Callable[[], LiveProtection | None]) -> None:
        self._live = live

    def collect(self) -> Iterator[Metric]:
        live = self._live()
        if live is not None and live.path is not None:
            name = "minerwatch_web_config_last_reload_successful"
            yield GaugeMetricFamily(name, METRICS[name], value=float(live.last_reload_ok))


class SnapshotCollector(Collector):
    """Builds fresh metric families from whatever snapshot ``get_snapshot`` returns.

    ``extra_errors`` returns errors the exporter itself hit (e.g. textfile writes), added to
    ``minerwatch_errors_total`` so operators see them in the same place.
    """

    def __init__(
        self,
        get_snapshot: Callable[[], AgentSnapshot],
        clock: Callable[[], float] = time.time,
        extra_errors: Callable[[], dict[str, int]] = dict,
    ) -> None:
        self._get_snapshot = get_snapshot
        self._clock = clock
        self._extra_errors = extra_errors

    def collect(self) -> Iterator[Metric]:
        s = self._get_snapshot()
        yield from snapshot_families(s, now=self._clock(), extra_errors=self._extra_errors())


def snapshot_families(
    s: AgentSnapshot, now: float, extra_errors: dict[str, int] | None = None
) -> Iterator[Metric]:
    """Pure conversion of a snapshot to metric families; ``None``/NaN values are left out."""

    def gauge(name: str, value: float | None) -> Iterator[Metric]:
        if value is not None and value == value:  # skip None and NaN
            yield GaugeMetricFamily(name, METRICS[name], value=float(value))

    def labelled(
        name: str, label: str, values: Any, kind: type[GaugeMetricFamily | CounterMetricFamily]
    ) -> Iterator[Metric]:
        family = kind(name, METRICS[name], labels=[label])
        for key, value in sorted(values.items()):
            if value == value:
                family.add_metric([key], float(value))
        if family.samples:
            yield family

    def counter(name: str, value: float) -> Metric:
        return CounterMetricFamily(name, METRICS[name], value=float(value))

    yield from gauge("minerwatch_anomaly_score", s.anomaly_score)
    yield from gauge("minerwatch_anomaly_threshold", s.anomaly_threshold)
    yield from gauge("minerwatch_alert_active", 1.0 if s.alert_active else 0.0)
    if s.heavy_work is not None:
        yield from gauge("minerwatch_heavy_work", 1.0 if s.heavy_work else 0.0)
    yield counter("minerwatch_alerts_total", s.alerts_total)
    yield counter("minerwatch_suspect_processes_total", s.suspect_processes_total)
    yield from labelled("minerwatch_feature_value", "feature", s.feature_values, GaugeMetricFamily)
    yield from labelled(
        "minerwatch_feature_contribution", "feature", s.feature_contributions, GaugeMetricFamily
    )
    if s.model_version is not None:
        info = InfoMetricFamily("minerwatch_model", METRICS["minerwatch_model_info"])
        schema = "" if s.model_schema_version is None else str(s.model_schema_version)
        info.add_metric([], {"schema_version": schema, "model_version": s.model_version})
        yield info
    trained = s.model_trained_timestamp_seconds
    yield from gauge("minerwatch_model_trained_timestamp_seconds", trained)
    yield from gauge("minerwatch_model_training_windows", s.model_training_windows)
    # Age is derived at scrape time so it keeps growing even if the agent loop stalls.
    yield from gauge("minerwatch_model_age_seconds", None if trained is None else now - trained)
    yield from gauge("minerwatch_learning_progress_ratio", s.learning_progress_ratio)
    yield from gauge("minerwatch_learning", 1.0 if s.learning else 0.0)
    yield from gauge("minerwatch_learning_period_seconds", s.learning_period_seconds)
    yield from gauge(
        "minerwatch_learning_started_timestamp_seconds", s.learning_started_timestamp_seconds
    )
    yield from gauge("minerwatch_top_process_cpu_ratio", s.top_process_cpu_ratio)
    yield from labelled("minerwatch_telemetry", "metric", s.telemetry, GaugeMetricFamily)
    yield from gauge("minerwatch_sample_duration_seconds", s.sample_duration_seconds)
    yield from gauge("minerwatch_score_duration_seconds", s.score_duration_seconds)
    yield counter("minerwatch_samples_total", s.samples_total)
    yield counter("minerwatch_windows_scored_total", s.windows_scored_total)
    # Every known stage and source from the start, so the first error is an increase.
    errors = dict.fromkeys(ERROR_STAGES, 0) | {f"source_{name}": 0 for name in s.source_up}
    errors |= s.errors_total
    for stage, count in (extra_errors or {}).items():
        errors[stage] = errors.get(stage, 0) + count
    yield from labelled("minerwatch_errors_total", "stage", errors, CounterMetricFamily)
    yield from labelled(
        "minerwatch_retrain_failures_total", "reason", s.retrain_failures_total, CounterMetricFamily
    )
    yield from gauge("minerwatch_dismissed_episodes", s.dismissed_episodes)
    up = {source: 1.0 if ok else 0.0 for source, ok in s.source_up.items()}
    yield from labelled("minerwatch_source_up", "source", up, GaugeMetricFamily)
    yield from gauge("minerwatch_last_sample_timestamp_seconds", s.last_sample_timestamp_seconds)
    yield from gauge("minerwatch_last_score_timestamp_seconds", s.last_score_timestamp_seconds)
    yield from labelled(
        "minerwatch_indicator_hits", "indicator", s.indicator_hits, GaugeMetricFamily
    )
    if s.evidence_file is not None:
        evidence = InfoMetricFamily("minerwatch_evidence", METRICS["minerwatch_evidence_info"])
        evidence.add_metric([], {"file": s.evidence_file})
        yield evidence
    yield from gauge("minerwatch_throttled_processes", s.throttled_processes)
    yield from labelled(
        "minerwatch_throttle_actions_total", "action", s.throttle_actions_total, CounterMetricFamily
    )
    yield from gauge("minerwatch_isolated_processes", s.isolated_processes)
    yield from labelled("minerwatch_ioc_hits", "ioc", s.ioc_hits, GaugeMetricFamily)
    # Host signals (service/hostsignals.py): absent where the host does not offer them.
    yield from labelled(
        "minerwatch_new_listen_ports", "proto", s.new_listen_ports, GaugeMetricFamily
    )
    yield from gauge("minerwatch_ssh_failed_logins_per_minute", s.ssh_failed_logins_per_minute)
    for name in ("minerwatch_ssh_failed_logins_total", "minerwatch_ssh_new_source_logins_total"):
        total = getattr(s, name.removeprefix("minerwatch_"))
        if total is not None:
            yield counter(name, total)
    yield from labelled(
        "minerwatch_log_truncations_total", "kind", s.log_truncations_total, CounterMetricFamily
    )
    build = InfoMetricFamily("minerwatch_build", METRICS["minerwatch_build_info"])
    build.add_metric([], {"version": s.version})
    yield build


class Exporter:
    """Serves ``/metrics`` for the latest snapshot and optionally mirrors it to a textfile.

    >>> exp = Exporter(port=0, address="127.0.0.1")
    >>> exp.start()
    >>> exp.update(AgentSnapshot(anomaly_score=0.9, anomaly_threshold=0.5))
    >>> exp.registry.get_sample_value("minerwatch_anomaly_score")
    0.9
    >>> exp.stop()

    The defaults are the config's (:data:`~minerwatch.service.config.DEFAULT_ADDRESS`,
    dual-stack ``::``, and port 10091); ``port=0`` picks a free port (see :attr:`port`).
    At most ``max_connections`` connections are served at once (a further one gets ``503``
    and is counted as ``minerwatch_errors_total{stage="exporter"}``); a rendered exposition
    is reused until the next snapshot or for ``render_max_age`` seconds.
    """

    def __init__(
        self,
        port: int = DEFAULT_PORT,
        address: str = DEFAULT_ADDRESS,
        registry: CollectorRegistry | None = None,
        web_config: Path | None = None,
        textfile_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
        max_connections: int = MAX_CONNECTIONS,
        render_max_age: float = RENDER_MAX_AGE_S,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self._port = port
        self.address = address
        self.web_config = web_config
        self.textfile_dir = textfile_dir
        self.max_connections = max_connections
        self._snapshot = AgentSnapshot()
        self._textfile_errors = 0
        self._refused = 0
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._web: LiveProtection | None = None
        collector = self._collector = SnapshotCollector(self.snapshot, clock, self._own_errors)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(collector)
        self.registry.register(WebConfigCollector(lambda: self._web))
        for standard in (ProcessCollector, PlatformCollector):
            try:
                standard(registry=self.registry)
            except ValueError:  # already there, e.g. prometheus_client's global REGISTRY
                log.debug("%s already registered", standard.__name__)
        # The textfile gets only minerwatch_* (node_exporter has its own process metrics).
        self._textfile_registry = CollectorRegistry()
        self._textfile_registry.register(collector)
        self._cache = ExpositionCache(self.registry, self.snapshot, max_age=render_max_age)

    def snapshot(self) -> AgentSnapshot:
        """The snapshot currently being served."""
        return self._snapshot

    def _own_errors(self) -> dict[str, int]:
        errors = {"textfile": self._textfile_errors, "exporter": self._refused}
        return {stage: n for stage, n in errors.items() if n}

    def _on_refused(self) -> None:
        self._refused += 1  # only the accepting thread counts, so no lock is needed

    @property
    def port(self) -> int:
        """The bound port once started (useful with ``port=0``), else the configured one."""
        if self._server is not None:
            return int(self._server.server_address[1])
        return self._port

    def start(self) -> None:
        """Bind and serve in a daemon thread; web config errors raise ``InputError``."""
        if self._server is not None:
            raise RuntimeError("Exporter already started")
        web = self._web = LiveProtection(self.web_config)
        self._server = bind(
            self.address,
            self._port,
            Serving(web, self._render, self.max_connections, self._on_refused),
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            # the poll only bounds how fast stop() returns; 0.1 s cost 0.1 % of a core idle
            kwargs={"poll_interval": 0.5},
            name="minerwatch-exporter",
            daemon=True,
        )
        self._thread.start()
        log.info(
            "serving metrics on %s port %d (%s)",
            self.address,
            self.port,
            "https" if web.current[0] else "http",
        )

    def update(self, snapshot: AgentSnapshot) -> None:
        """Publish a new snapshot (one reference swap) and rewrite the textfile if enabled."""
        self._snapshot = snapshot
        if self.textfile_dir is not None:
            try:
                write_textfile(self.textfile_dir, generate_latest(self._textfile_registry))
            except OSError as err:  # a full disk must not stop the agent; count and log it
                self._textfile_errors += 1
                log.warning("could not write %s: %s", self.textfile_dir / TEXTFILE_NAME, err)

    def stop(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _render(self, accept: str | None, compress: bool = False) -> tuple[bytes, str]:
        return self._cache.get(accept, compress)


class ExpositionCache:
    """The rendered exposition of the current snapshot, once per format, shared by scrapes.

    The first scrape of a new snapshot (or of one rendered more than ``max_age`` seconds
    ago) renders under a lock while concurrent scrapes of the same format wait for it;
    every later scrape gets the same bytes. Formats are the encoder's content type, plain
    or gzip (Prometheus asks for OpenMetrics with gzip, ``curl`` for plain text).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        current: Callable[[], object],
        max_age: float = RENDER_MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._current = current
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        #: (snapshot rendered, when, {(content type, gzip): body}), replaced as a whole.
        self._entry: tuple[object, float, dict[tuple[str, bool], bytes]] = (None, -math.inf, {})
        #: How many times the registry was rendered (what a scrape must not do every time).
        self.renders = 0

    def get(self, accept: str | None, compress: bool) -> tuple[bytes, str]:
        """The body for this ``Accept`` header, gzip-compressed if asked; content type."""
        encoder, content_type = choose_encoder(accept or "")
        key = (content_type, compress)
        snapshot, when, bodies = self._entry
        if snapshot is self._current() and self._clock() - when < self._max_age:
            body = bodies.get(key)
            if body is not None:
                return body, content_type
        with self._lock:  # bodies are only added, and entries only replaced, under the lock
            snapshot, when, bodies = self._entry
            current, now = self._current(), self._clock()
            if snapshot is not current or now - when >= self._max_age:
                bodies = {}
                self._entry = (current, now, bodies)
            body = bodies.get(key)
            if body is None:
                plain = bodies.get((content_type, False))
                if plain is None:
                    plain = bodies[(content_type, False)] = encoder(self._registry)
                    self.renders += 1
                body = bodies[key] = gzip.compress(plain, compresslevel=1) if compress else plain
        return body, content_type


def write_textfile(directory: Path, payload: bytes) -> Path:
    """Atomically replace ``directory/minerwatch.prom`` (temp file, fsync, rename).

    node_exporter may read the file at any moment, so it must never see a partial write;
    the temp name ends in ``.tmp``, which the textfile collector ignores.
    """
    target = directory / TEXTFILE_NAME
    atomic_write(target, payload, mode=0o644)  # node_exporter usually runs as another user
    return target
