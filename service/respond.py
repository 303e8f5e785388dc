"""Respond: name the process, keep the evidence, and (only when switched on) throttle.

The agent calls :meth:`Responder.after_tick` every sample, :meth:`Responder.on_alert` when
an alert episode opens and :meth:`Responder.on_episode_window` on each later alerted
window, which renames the suspect and rewrites the evidence when a stronger one or a new
indicator appears (a miner started during an open episode is named, not missed). The
agent's own processes are never suspects. Indicator scans look only at the few busiest
processes the collector already found, so the cost stays flat however many processes the
host runs.
The throttle object is always built, even when throttling is off, because building it
releases whatever a crashed earlier agent left paused (its journal on disk).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from minerwatch.features.atomic import atomic_write
from minerwatch.features.numbers import finite_or_none
from minerwatch.features.proctable import ProcessRecord, ProcessTable
from minerwatch.service.config import AgentConfig
from minerwatch.service.evidence import EvidenceWriter, fit_to_size
from minerwatch.service.indicators import (
    IndicatorHit,
    indicator_counts,
    load_knowledge_base,
    scan,
)
from minerwatch.service.throttle import Throttle

log = logging.getLogger("minerwatch.respond")

#: A different busiest process replaces the named suspect only when it is this much busier
#: (ratio and points of one core), so two processes trading places do not rewrite evidence.
STRONGER_RATIO, STRONGER_POINTS = 1.25, 5.0


def _describe(p: ProcessRecord) -> dict[str, Any]:
    return {
        "pid": p.pid,
        "name": p.name,
        "exe": p.exe,
        "user": p.username,
        "cpu_percent": round(p.cpu_percent, 1),
        "remote_ports": list(p.remote_ports),
    }


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
        procs = self.table.describe(agent.suspects(), cmdline=True, ports=True)
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
        """Name the most responsible process and write the evidence file as the episode opens."""
        top = agent.suspects()
        if top:
            episode["process"] = _describe(max(top, key=self._strength))
        episode["indicators"] = [h.as_dict() for h in self.hits]
        self._write_evidence(agent, episode, f, top)

    def on_episode_window(self, agent: Any, episode: dict[str, Any], f: np.ndarray) -> list[str]:
        """Update an open episode when a stronger suspect or a new indicator appears;
        returns what changed (``process``, ``indicators``), empty when nothing did."""
        top = agent.suspects()
        changed: list[str] = []
        seen = {(h["indicator_id"], h["pid"]) for h in episode.get("indicators", [])}
        new = [h.as_dict() for h in self.hits if (h.indicator_id, h.pid) not in seen]
        if new:
            episode["indicators"] = [*episode.get("indicators", []), *new]
            changed.append("indicators")
        best = max(top, key=self._strength) if top else None
        if best is not None and self._stronger(best, episode.get("process")):
            if episode.get("process"):
                episode.setdefault("earlier_processes", []).append(episode["process"])
            episode["process"] = _describe(best)
            changed.append("process")
        if changed:
            self._write_evidence(agent, episode, f, top)
        return changed

    def _strength(self, p: ProcessRecord) -> tuple[int, float]:
        """Miner indicators naming the process first, then its CPU."""
        return sum(h.pid == p.pid for h in self.hits), float(p.cpu_percent)

    def _stronger(self, candidate: ProcessRecord, named: dict[str, Any] | None) -> bool:
        """More indicator hits than the named suspect, or as many and clearly more CPU."""
        if named is None:
            return True
        if candidate.pid == named["pid"]:
            return False
        hits: int = sum(h.pid == named["pid"] for h in self.hits)
        mine = self._strength(candidate)[0]
        if mine != hits:
            return mine > hits
        floor = STRONGER_RATIO * float(named["cpu_percent"]) + STRONGER_POINTS
        return float(candidate.cpu_percent) > floor

    def _write_evidence(
        self, agent: Any, episode: dict[str, Any], f: np.ndarray, top: tuple[Any, ...]
    ) -> None:
        """Write the episode's evidence file, or rewrite it in place once it exists."""
        model = agent.model
        args = (
            float(episode["score"]),
            float(model.threshold),
            dict(zip(model.feature_names, model.full(f[None, :])[0].tolist(), strict=True)),
            episode["top_features"],
            [p.pid for p in top],
            self.hits,
        )
        episode_id = str(episode.get("id") or f"{agent.cfg.host}-{int(episode['start'])}")
        try:
            if episode.get("evidence"):
                path = Path(episode["evidence"])
                doc = self.evidence.collect(
                    path.stem.split("-", 1)[1], self.evidence.clock(), *args
                )
                atomic_write(path, fit_to_size(doc, self.evidence.max_bytes_per_file), mode=0o600)
            else:
                written = self.evidence.write(episode_id, *args)
                if written is not None:
                    episode["evidence"] = str(written)
        except (OSError, ValueError) as exc:
            log.warning("could not write evidence: %s", exc)
            agent.errors["evidence"] = agent.errors.get("evidence", 0) + 1

    def snapshot_fields(self) -> dict[str, Any]:
        return {
            "indicator_hits": indicator_counts(self.hits),
            "throttled_processes": self.throttle.throttled_now,
            "throttle_actions_total": dict(self.throttle.actions_total),
        }

    def close(self) -> None:
        """Always release everything on shutdown, whether or not throttling is on."""
        self.throttle.release_all("agent shutdown")
