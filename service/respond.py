"""Respond: name the process, keep the evidence, and (only when switched on) throttle.

The agent calls :meth:`Responder.after_tick` every sample and :meth:`Responder.on_alert`
when an alert episode opens. Indicator scans look only at the few busiest processes the
collector already found, so the cost stays flat however many processes the host runs.
The throttle object is always built, even when throttling is off, because building it
releases whatever a crashed earlier agent left paused (its journal on disk).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from minerwatch.features.numbers import finite_or_none
from minerwatch.features.proctable import ProcessTable
from minerwatch.service.config import AgentConfig
from minerwatch.service.evidence import EvidenceWriter
from minerwatch.service.indicators import (
    IndicatorHit,
    indicator_counts,
    load_knowledge_base,
    scan,
)
from minerwatch.service.throttle import Throttle

log = logging.getLogger("minerwatch.respond")


class Responder:
    """Indicators each tick, evidence once per episode, the throttle when enabled."""

    def __init__(self, cfg: AgentConfig, throttle: Throttle | None = None) -> None:
        self.cfg = cfg
        self.kb = load_knowledge_base()
        assert cfg.evidence_dir is not None  # AgentConfig derives it from data_dir
        self.evidence = EvidenceWriter(cfg.evidence_dir)
        self.throttle = throttle or Throttle(cfg.throttle, agent_pids={os.getpid()})
        for action in self.throttle.recovered:
            log.warning("released a process left throttled by an earlier run: %s", action)
        self.hits: list[IndicatorHit] = []
        #: Re-reads the collector's busiest processes with command line and ports.
        self.table = ProcessTable()

    def inspect(self, agent: Any, metrics: dict[str, float]) -> float:
        """Scan the busiest processes; the hit count becomes the sample's ``indicator_hits``."""
        procs = self.table.describe(agent.collector.top_processes, cmdline=True, ports=True)
        visible = finite_or_none(getattr(agent.collector, "visible_proc_cpu_percent", None))
        self.hits = scan(procs, self.kb, finite_or_none(metrics.get("cpu_percent")), visible)
        return float(len(self.hits))

    def after_tick(self, agent: Any, now: float, metrics: dict[str, float]) -> None:
        host_cpu = finite_or_none(metrics.get("cpu_percent"))
        if self.throttle.cfg.enabled and host_cpu is not None:
            alert = bool(agent.alert is not None and agent.alert.active)
            for action in self.throttle.update(host_cpu, alert):
                log.warning("throttle: %s", action)

    def on_alert(self, agent: Any, episode: dict[str, Any], f: np.ndarray) -> None:
        """Name the most responsible process and write the evidence file, once per episode."""
        top = agent.collector.top_processes
        if top:
            p = top[0]
            episode["process"] = {
                "pid": p.pid,
                "name": p.name,
                "exe": p.exe,
                "user": p.username,
                "cpu_percent": round(p.cpu_percent, 1),
                "remote_ports": list(p.remote_ports),
            }
        episode["indicators"] = [h.as_dict() for h in self.hits]
        model = agent.model
        try:
            path = self.evidence.write(
                f"{agent.cfg.host}-{int(episode['start'])}",
                float(episode["score"]),
                float(model.threshold),
                dict(zip(model.feature_names, model.full(f[None, :])[0].tolist(), strict=True)),
                episode["top_features"],
                [p.pid for p in top],
                self.hits,
            )
        except OSError as exc:
            log.warning("could not write evidence: %s", exc)
            agent.errors["evidence"] = agent.errors.get("evidence", 0) + 1
            return
        if path is not None:
            episode["evidence"] = str(path)

    def snapshot_fields(self) -> dict[str, Any]:
        return {
            "indicator_hits": indicator_counts(self.hits),
            "throttled_processes": self.throttle.throttled_now,
            "throttle_actions_total": dict(self.throttle.actions_total),
        }

    def close(self) -> None:
        """Always release everything on shutdown, whether or not throttling is on."""
        self.throttle.release_all("agent shutdown")
