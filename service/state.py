"""The agent's latest state as one immutable value the exporter reads.

The agent builds a new :class:`AgentSnapshot` after each sample/score and hands it to
``Exporter.update``; scrapes only read the current reference, so they never wait for, or
race with, the sampling loop. Mappings are copied into read-only views at construction,
so a caller mutating its own dict afterwards cannot change a published snapshot.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache
from importlib import metadata
from types import MappingProxyType
from typing import Any

from minerwatch.features.schema import METRIC_COLUMNS

#: Label values must be short code identifiers: this keeps label cardinality bounded and
#: makes it impossible to leak a command line, process name or pid through a label.
_LABEL_ID = re.compile(r"[a-z][a-z0-9_]{0,63}")

#: Every stage that counts errors in ``minerwatch_errors_total{stage}``: the one list, so
#: each is exported as 0 from the start and ``rate()``/``increase()`` see the first error.
#: A telemetry source's failures are counted as ``source_<name>`` for each name in
#: ``AgentSnapshot.source_up`` (zero series for those too).
ERROR_STAGES: tuple[str, ...] = (
    "sample",  # the collector as a whole raised
    "indicators",  # the indicator scan of the busiest processes
    "respond",  # throttling and other responses after a sample
    "event_log",  # appending an alert event line
    "evidence",  # writing an evidence file
    "train",  # a training child failed
    "model",  # a stored model could not be loaded
    "history",  # the SQLite history database
    "textfile",  # writing the node_exporter textfile
    "exporter",  # scrape connections refused because all slots were busy
    "listen_ports",  # reading the listening sockets (service/hostsignals.py)
    "ssh_log",  # reading SSH logins from the journal or the auth log
    "log_watch",  # scanning the log folder for shrinking or vanishing files
    "host_signals",  # host signals as a whole, or their state file
)

#: An evidence file name as ``EvidenceWriter`` makes it: UTC time, then the episode id made
#: of the configured host name and the episode's start second (no process data).
_EVIDENCE_NAME = re.compile(r"\d{8}T\d{6}Z-[A-Za-z0-9_.-]{1,64}\.json")


@lru_cache(maxsize=1)
def package_version() -> str:
    """The installed minerwatch version, or ``"unknown"`` when run from a bare checkout."""
    try:
        return metadata.version("minerwatch")
    except metadata.PackageNotFoundError:
        return "unknown"


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)
class AgentSnapshot:
    """Everything the exporter publishes, as of the agent's last loop iteration.

    ``None`` means "not known yet" (no model, no score, no sample) and the matching metric
    is left out of the exposition rather than exported as NaN. Timestamps are Unix seconds.

    >>> s = AgentSnapshot(anomaly_score=0.2, anomaly_threshold=0.6, samples_total=10)
    >>> s.alert_active, s.learning, dict(s.feature_values)
    (False, True, {})
    """

    # Scoring.
    anomaly_score: float | None = None
    anomaly_threshold: float | None = None
    alert_active: bool = False
    # The latest window was heavy work (its marginal evidence does not count toward the sustain).
    heavy_work: bool | None = None
    alerts_total: int = 0
    suspect_processes_total: int = 0
    feature_values: Mapping[str, float] = field(default_factory=_empty)
    feature_contributions: Mapping[str, float] = field(default_factory=_empty)
    # Model.
    model_version: str | None = None
    model_schema_version: int | None = None
    model_trained_timestamp_seconds: float | None = None
    model_training_windows: int | None = None
    learning: bool = True
    learning_progress_ratio: float = 0.0
    learning_period_seconds: float | None = None
    learning_started_timestamp_seconds: float | None = None
    # Latest sample.
    top_process_cpu_ratio: float | None = None
    telemetry: Mapping[str, float] = field(default_factory=_empty)
    last_sample_timestamp_seconds: float | None = None
    last_score_timestamp_seconds: float | None = None
    sample_duration_seconds: float | None = None
    score_duration_seconds: float | None = None
    source_up: Mapping[str, bool] = field(default_factory=_empty)
    indicator_hits: Mapping[str, int] = field(default_factory=_empty)
    # Path of the open alert episode's evidence file (one series at a time, no process data).
    evidence_file: str | None = None
    # Counters since agent start.
    samples_total: int = 0
    windows_scored_total: int = 0
    errors_total: Mapping[str, int] = field(default_factory=_empty)
    # Retrainings that gave no new model, by reason (every reason present, zero at start).
    retrain_failures_total: Mapping[str, int] = field(default_factory=_empty)
    # Alert episodes a responder dismissed as benign (``minerwatch dismiss``), in force.
    dismissed_episodes: int | None = None
    # Throttling.
    throttled_processes: int = 0
    throttle_actions_total: Mapping[str, int] = field(default_factory=_empty)
    # Isolation and IOC checks (labels: IOC file ids made code identifiers, at most 32).
    isolated_processes: int = 0
    ioc_hits: Mapping[str, int] = field(default_factory=_empty)
    # Host signals (service/hostsignals.py); None/empty = not watched on this host.
    new_listen_ports: Mapping[str, int] = field(default_factory=_empty)  # by proto
    ssh_failed_logins_per_minute: float | None = None
    ssh_failed_logins_total: int | None = None
    ssh_new_source_logins_total: int | None = None
    log_truncations_total: Mapping[str, int] = field(default_factory=_empty)  # by kind
    # Build.
    version: str = field(default_factory=package_version)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Mapping):
                # Freeze a private copy; validate keys because they become label values.
                frozen = MappingProxyType(dict(value))
                allowed = METRIC_COLUMNS if f.name == "telemetry" else None
                for key in frozen:
                    _check_label(f.name, key, allowed)
                object.__setattr__(self, f.name, frozen)
        if self.evidence_file is not None:
            object.__setattr__(self, "evidence_file", _evidence_label(self.evidence_file))
        for name in ("anomaly_score", "learning_progress_ratio", "top_process_cpu_ratio"):
            # Ratios are clamped, not rejected: a rounding error must not stop the agent.
            value = getattr(self, name)
            if value is not None and not math.isnan(value):
                object.__setattr__(self, name, min(1.0, max(0.0, float(value))))


def _check_label(field_name: str, key: object, allowed: tuple[str, ...] | None) -> None:
    """Reject keys that could not be a code-defined identifier (programming error)."""
    if allowed is not None:
        if key not in allowed:
            raise ValueError(
                f"AgentSnapshot.{field_name}: {key!r} is not a telemetry column "
                f"(expected one of minerwatch.features.schema.METRIC_COLUMNS)"
            )
        return
    if not isinstance(key, str) or not _LABEL_ID.fullmatch(key):
        raise ValueError(
            f"AgentSnapshot.{field_name}: label value {key!r} must match {_LABEL_ID.pattern} "
            "(labels carry code identifiers only, never process names or command lines)"
        )


def _evidence_label(path: str) -> str:
    """The path as a label value: the name must be an evidence writer's (else ValueError);
    a folder that is not printable UTF-8 is dropped rather than stop the agent mid-alert."""
    folder, _, name = path.rpartition("/")
    if not _EVIDENCE_NAME.fullmatch(name):
        raise ValueError(
            f"AgentSnapshot.evidence_file: {path!r} is not an evidence file "
            f"(expected a name matching {_EVIDENCE_NAME.pattern}, never process data)"
        )
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return name
    return path if path.isprintable() and len(folder) <= 1024 else name
