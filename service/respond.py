"""Respond: name the process, keep the evidence, and (only when switched on) throttle.

The agent calls :meth:`Responder.after_tick` every sample, :meth:`Responder.on_alert` when
an alert episode opens and :meth:`Responder.on_episode_window` on each later alerted
window, which renames the suspect and rewrites the evidence when a stronger one or a new
indicator appears (a miner started during an open episode is named, not missed). The
agent's own processes are never suspects. Indicator scans look only at the few busiest
processes the collector already found, so the cost stays flat however many processes the
host runs.
The throttle object is always built, even when throttling is off, because building it
releases whatever a crashed earlier agent left paused (its journal on disk); the isolator
likewise releases what an earlier agent cut off the network. With ``[respond] isolate`` a
suspect that an indicator confirms (or an IOC file names) loses its outbound traffic; with
``ioc_dir`` the host is checked against IOC files every ``ioc_every``. At the end of
learning the persistence entries (cron, units, init scripts, ``ld.so.preload``,
``authorized_keys``) are hashed into a baseline, so a report can say what is new since.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from minerwatch.features.numbers import finite_or_none
from minerwatch.features.proctable import ProcessRecord, ProcessTable
from minerwatch.service.config import AgentConfig
from minerwatch.service.evidence import (
    PERSISTENCE_BASELINE,
    EvidenceWriter,
    HostPaths,
    fit_to_size,
    persistence_entries,
    save_persistence_baseline,
)
from minerwatch.service.indicators import (
    INDICATOR_IDS,
    IndicatorHit,
    indicator_counts,
    load_knowledge_base,
    scan,
)
from minerwatch.service.ioc import DEFAULT_SCAN, IocWatcher
from minerwatch.service.isolate import AgentIsolator
from minerwatch.service.throttle import Throttle

log = logging.getLogger("minerwatch.respond")

#: A different busiest process replaces the named suspect only when it is this much busier
#: (ratio and points of one core), so two processes trading places do not rewrite evidence.
STRONGER_RATIO, STRONGER_POINTS = 1.25, 5.0
#: Indicators that say what one process *is* (not only that it is busy): enough to isolate it.
CONFIRMING = tuple(i for i in INDICATOR_IDS if i not in ("ld_so_preload", "unexplained_cpu"))
#: Most processes isolated for one alert window (a fork bomb of miners is a host matter).
MAX_ISOLATED_PER_WINDOW = 3
#: Evidence of an IOC hit is named ``<time>-ioc-hit-<host>-<ioc>.json``: not an episode's.
IOC_EVIDENCE_PREFIX = "ioc-hit-"


def _describe(p: ProcessRecord) -> dict[str, Any]:
    return {
        "pid": p.pid,
        "name": p.name,
        "exe": p.exe,
        "user": p.username,
        "cpu_percent": round(p.cpu_percent, 1),
        "remote_ports": list(p.remote_ports),
    }


def _evidence_pids(
    episode: dict[str, Any], hits: list[IndicatorHit], top: tuple[Any, ...]
) -> list[int]:
    """The processes an episode's evidence describes: the named suspect first (so the file's
    first process is the one the alert names), then earlier suspects and the processes a
    confirming indicator names, then the busiest. A throttled (stopped) suspect has no CPU
    left and may be out of the busiest when the evidence is rewritten: it stays in."""
    named = [episode.get("process"), *episode.get("earlier_processes", [])]
    pids = [int(p["pid"]) for p in named if isinstance(p, dict) and p.get("pid") is not None]
    pids += [h.pid for h in hits if h.pid is not None and h.indicator_id in CONFIRMING]
    return list(dict.fromkeys([*pids, *(p.pid for p in top)]))


def _keep_known_records(doc: dict[str, Any], path: Path, kept: bytes | None = None) -> None:
    """When evidence is rewritten, a process that has exited since keeps the record the
    earlier write took of it (exe, hash, command line, connections), not a "no such process"
    (``kept``: the earlier write, still in memory for a full disk)."""
    try:
        before = json.loads(path.read_bytes() if kept is None else kept)
        known = {
            p["pid"]: p
            for p in before.get("processes", [])
            if isinstance(p, dict) and "error" not in p and "pid" in p
        }
    except (OSError, ValueError, AttributeError, TypeError):
        return
    doc["processes"] = [
        known.get(p.get("pid"), p) if isinstance(p, dict) and "error" in p else p
        for p in doc.get("processes", [])
    ]


class Responder:
    """Indicators each tick, evidence once per episode, the throttle when enabled."""

    def __init__(self, cfg: AgentConfig, throttle: Throttle | None = None) -> None:
        self.cfg = cfg
        self.kb = load_knowledge_base()
        assert cfg.evidence_dir is not None  # AgentConfig derives it from data_dir
        self.paths = HostPaths.under(cfg.respond.host_root)
        self.evidence = EvidenceWriter(cfg.evidence_dir, paths=self.paths, hostname=cfg.host)
        # Only this process: target selection adds its ancestors and, read afresh each
        # time, its descendants (the training child), so neither is ever throttled.
        self.throttle = throttle or Throttle(cfg.throttle, agent_pids={os.getpid()})
        for action in self.throttle.recovered:
            log.warning(
                "throttle: %s pid %d (%s, %s) left throttled by an earlier run: %s",
                action.action,
                action.pid,
                action.name,
                action.method,
                action.reason,
            )
        self.isolator = AgentIsolator(
            cfg.data_dir / "isolate", cfg.respond.isolate, cfg.respond.isolate_dry_run
        )
        self.hits: list[IndicatorHit] = []
        self._refused_counted = 0
        #: Re-reads the collector's busiest processes with command line and ports.
        self.table = ProcessTable()
        self.ioc = (
            IocWatcher(
                cfg.respond.ioc_dir,
                cfg.respond.ioc_every,
                self.paths,
                scan=[cfg.respond.host_root / d.relative_to("/") for d in DEFAULT_SCAN],
            )
            if cfg.respond.ioc_dir is not None
            else None
        )
        self.ioc_hits: dict[str, int] = {}
        self._ioc_seen: dict[str, set[tuple[str, str, str]]] = {}
        self._ioc_pids: set[int] = set()
        self.baseline_path = cfg.data_dir / PERSISTENCE_BASELINE
        self._baseline_tried = False

    def inspect(self, agent: Any, metrics: dict[str, float]) -> float:
        """Scan the busiest processes; the hit count becomes the sample's ``indicator_hits``."""
        procs = self.table.describe(agent.suspects(), cmdline=True, ports=True)
        visible = finite_or_none(getattr(agent.collector, "visible_proc_cpu_percent", None))
        cpu = finite_or_none(metrics.get("cpu_percent"))
        self.hits = scan(
            procs, self.kb, cpu, visible, self.paths.ld_so_preload, self.paths.dpkg_info
        )
        return float(len(self.hits))

    def after_tick(self, agent: Any, now: float, metrics: dict[str, float]) -> None:
        self.evidence.flush()  # what a full disk refused, once it has room
        refused = self.evidence.refused_total - self._refused_counted
        if refused:  # each file a full disk refused is an evidence error, once
            agent.errors["evidence"] = agent.errors.get("evidence", 0) + refused
            self._refused_counted += refused
        host_cpu = finite_or_none(metrics.get("cpu_percent"))
        if self.throttle.cfg.enabled and host_cpu is not None:
            alert = bool(agent.alert is not None and agent.alert.active)
            for action in self.throttle.update(host_cpu, alert):
                log.warning(
                    "throttle: %s pid %d (%s) by %s: %s",
                    action.action.replace("_", " "),
                    action.pid,
                    action.name,
                    action.method,
                    action.reason,
                )
        self.isolator.keep_in_force(now)
        if self.ioc is not None and self.ioc.due():
            self._check_iocs(agent, now)
        if agent.model is not None and not self._baseline_tried:
            self._baseline_tried = True  # once: a failure is counted, not retried every tick
            if not self.baseline_path.exists():
                self._snapshot_persistence(now)

    def _snapshot_persistence(self, now: float) -> None:
        """The end of learning: hash where a miner would restart from, once."""
        entries = persistence_entries(self.paths)
        save_persistence_baseline(self.baseline_path, entries, now)
        log.info("persistence baseline: %d entries in %s", len(entries), self.baseline_path)

    def _check_iocs(self, agent: Any, now: float) -> None:
        """Check the IOC files; a hit not seen in the previous check gets an event line and
        evidence (the metric shows every check's count)."""
        assert self.ioc is not None
        results = self.ioc.check()
        self.ioc_hits = {label: len(hits) for label, (_, _, hits) in results.items()}
        self._ioc_pids = {h.pid for _, _, hits in results.values() for h in hits if h.pid}
        for label, (path, ioc, hits) in results.items():
            keys = {(h.kind, h.value, h.where) for h in hits}
            new, self._ioc_seen[label] = keys - self._ioc_seen.get(label, set()), keys
            if not new:
                continue
            name = f"{IOC_EVIDENCE_PREFIX}{agent.cfg.host}-{label}"
            pids = sorted({h.pid for h in hits if h.pid})
            found = [asdict(h) for h in hits]
            evidence: Path | None = None
            try:
                doc = self.evidence.collect(
                    name, self.evidence.clock(), math.nan, math.nan, {}, [], pids, []
                )
                doc["ioc"] = {"id": ioc.id, "file": str(path), "source": dict(ioc.source),
                              "hits": found}  # fmt: skip
                evidence = self.evidence.write_document(name, doc)
            except (OSError, ValueError) as exc:
                log.warning("could not write IOC evidence: %s", exc)
                agent.errors["evidence"] = agent.errors.get("evidence", 0) + 1
            line = {"event": "ioc_hit", "host": agent.cfg.host, "time": now, "ioc": ioc.id,
                    "ioc_file": str(path), "hits": found,
                    "evidence": None if evidence is None else str(evidence)}  # fmt: skip
            agent.append_event(line)  # the agent's one writer: kept through a full disk
            log.warning(
                "IOC %s found on %s: %d hit(s) (%s); evidence: %s",
                ioc.id,
                agent.cfg.host,
                len(hits),
                ", ".join(sorted({h.kind for h in hits})),
                evidence or "not written",
            )

    def _isolate(self, episode: dict[str, Any]) -> bool:
        """Isolate the processes a confirming indicator or an IOC hit names; True if any was
        (or, in a dry run, would be) cut off now."""
        if not self.isolator.enabled:
            return False
        named = [h for h in self.hits if h.pid is not None and h.indicator_id in CONFIRMING]
        pids = list(dict.fromkeys([h.pid for h in named if h.pid is not None]))
        suspect = (episode.get("process") or {}).get("pid")
        if suspect in self._ioc_pids and suspect not in pids:
            pids.append(suspect)
        done = False
        for pid in pids[:MAX_ISOLATED_PER_WINDOW]:
            why = sorted({h.indicator_id for h in named if h.pid == pid}) or ["ioc"]
            entry = self.isolator.isolate(pid, f"alert {episode.get('id')}: {', '.join(why)}")
            if entry is not None:
                episode.setdefault("isolated", []).append(
                    {
                        "pid": pid,
                        "match": entry.describe(),
                        "indicators": why,
                        "dry_run": self.isolator.dry_run,
                    }  # fmt: skip
                )
                done = True
        return done

    def on_alert(self, agent: Any, episode: dict[str, Any], f: np.ndarray) -> None:
        """Name the most responsible process and write the evidence file as the episode opens."""
        top = agent.suspects()
        if top:
            episode["process"] = _describe(max(top, key=self._strength))
        episode["indicators"] = [h.as_dict() for h in self.hits]
        self._isolate(episode)
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
        if self._isolate(episode):
            changed.append("isolated")
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
            _evidence_pids(episode, self.hits, top),
            self.hits,
        )
        episode_id = str(episode.get("id") or f"{agent.cfg.host}-{int(episode['start'])}")
        try:
            if episode.get("evidence"):
                path = Path(episode["evidence"])
                doc = self.evidence.collect(
                    path.stem.split("-", 1)[1], self.evidence.clock(), *args
                )
                _keep_known_records(doc, path, self.evidence.pending.get(path))
                self.evidence.store(path, fit_to_size(doc, self.evidence.max_bytes_per_file))
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
            "isolated_processes": self.isolator.isolated_now(),
            "ioc_hits": dict(self.ioc_hits),
        }

    def close(self) -> None:
        """Always release everything on shutdown, whether or not throttling is on."""
        self.evidence.flush()
        if self.evidence.pending:  # said, so a responder knows what the full disk cost
            log.warning(
                "evidence: %d file(s) kept in memory are lost, the disk still full at exit: %s",
                len(self.evidence.pending), ", ".join(str(p) for p in self.evidence.pending),
            )  # fmt: skip
        try:
            self.throttle.release_all("agent shutdown")
        finally:  # a throttle that failed to release must not keep the network cut too
            self.isolator.close()
