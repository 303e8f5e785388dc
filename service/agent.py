"""``minerwatch serve``: the on-host agent. Sample, learn, score, explain, export, respond.

One loop on a fixed schedule: every ``interval`` it samples the host, stores the sample,
and when a window completes scores it with the host's numpy-only model. For ``learn_for``
it is in learning mode; training (and retraining on history that excludes alerted time)
runs in a child process, so this process never imports scikit-learn or pandas. A young
model is retrained each time the history has doubled, then every ``retrain_every`` (0:
never). The agent's own CPU (its loop, scrapes, evidence, the training child) is taken out
of the host's before anything is stored or scored: what the host does, not what we do.
An alert episode writes an event line and a WARNING when it opens, another when a stronger
suspect or a new indicator appears, and a last one when it closes. A scrape only reads the
latest :class:`~minerwatch.service.state.AgentSnapshot`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from minerwatch.baseline.calibrate import AlertState
from minerwatch.baseline.exclude import exclusion_margin, exclusion_mask, outside_dismissed
from minerwatch.baseline.explain import heavy_work_words
from minerwatch.baseline.fitted import HostModel, trained_otherwise
from minerwatch.baseline.procbase import Carry
from minerwatch.baseline.store import (
    META,
    ModelError,
    host_dirname,
    list_hosts,
    load_model,
    read_key,
)
from minerwatch.features.atomic import atomic_write
from minerwatch.features.collector import Collector
from minerwatch.features.errors import InputError
from minerwatch.features.pipeline import feature_rows
from minerwatch.features.procs import PROC_COLUMNS, disguise, rows_from_records, table_exe
from minerwatch.features.schema import AGENT_COLUMNS, METRIC_COLUMNS, SCHEMA_VERSION
from minerwatch.service.config import AgentConfig
from minerwatch.service.exporter import Exporter
from minerwatch.service.history import History
from minerwatch.service.hostsignals import LOGROTATE_STATUS, HostSignals
from minerwatch.service.retrain import FAILURE_REASONS
from minerwatch.service.state import AgentSnapshot
from minerwatch.service.stopflag import StopFlag

log = logging.getLogger("minerwatch.agent")

#: Samples kept in memory for the rolling features (the longest looks back 15 minutes).
LOOKBACK_S = 1800.0
#: Event lines kept while the disk refuses them (a full disk), oldest dropped first.
UNWRITTEN_EVENTS = 1000
#: Once the history covers the learning period, samples before it is counted again: every
#: stored timestamp is read for it, which a model-less agent (training failing, backing off)
#: did at each sample (a week of history: 60,000 rows every 10 s).
RECOUNT_LEARNT_EVERY = 60
#: Longest wait before a failed training is tried again (it doubles after each failure).
BACKOFF_MAX_S = 3600.0
#: Time around an alert episode that retraining leaves out, at most (less with little
#: history, see :func:`~minerwatch.baseline.exclude.exclusion_margin`).
EXCLUDE_MARGIN_S = 3600.0
#: Host CPU columns the agent's own CPU is taken out of, by which part of it (user, system).
_OWN_PARTS = {"cpu_percent": (1.0, 1.0), "cpu_user_percent": (1.0, 0.0),
              "cpu_system_percent": (0.0, 1.0)}  # fmt: skip


def _tree_cpu_seconds(children: tuple[int, ...]) -> tuple[float, float]:
    """(user, system) CPU seconds of this process, its reaped children and ``children``
    still running; a child that has just exited counts once, as reaped or as running."""
    t = os.times()
    user, system = t.user + t.children_user, t.system + t.children_system
    for pid in children:
        try:
            c = psutil.Process(pid).cpu_times()
        except psutil.Error:  # exited and reaped between the two reads: counted above
            continue
        user += c.user + c.children_user
        system += c.system + c.children_system
    return user, system


class OwnCpu:
    """The agent's own CPU over each sampling interval, in percent of the host.

    The training child (seconds of a full core), evidence collection and scrapes are the
    agent's work, not the host's: scored as host activity, the window after each retraining
    scored 1.0. Subtracting them keeps every window scored (a miner that starts during a
    retraining is still seen, and the alert rule's consecutive windows are not broken by a
    gap), which skipping those windows would not.
    """

    def __init__(
        self,
        read: Callable[[tuple[int, ...]], tuple[float, float]] = _tree_cpu_seconds,
        clock: Callable[[], float] = time.monotonic,
        ncpu: int | None = None,
    ) -> None:
        self.read = read
        self.clock = clock
        self.ncpu = ncpu or os.cpu_count() or 1
        self._last: tuple[float, float, float] | None = None

    def interval_percent(self, children: tuple[int, ...] = ()) -> tuple[float, float]:
        """(user, system) percent of the host since the previous call ((0, 0) the first time)."""
        user, system = self.read(children)
        now = self.clock()
        last, self._last = self._last, (now, user, system)
        if last is None or now <= last[0]:
            return 0.0, 0.0
        per = 100.0 / ((now - last[0]) * self.ncpu)
        return max(0.0, (user - last[1]) * per), max(0.0, (system - last[2]) * per)


def without_own(
    metrics: dict[str, float],
    own: tuple[float, float],
    top: tuple[Any, ...],
    own_pids: set[int],
) -> dict[str, float]:
    """``metrics`` with the agent's own CPU (``own``: user, system percent of the host) taken
    out of the host's CPU, and the busiest process being the busiest one that is not ours.

    >>> m = {"cpu_percent": 30.0, "cpu_user_percent": 25.0, "top_proc_cpu_percent": 50.0}
    >>> without_own(m, (20.0, 5.0), (), set())["cpu_percent"]
    5.0
    """
    out = dict(metrics)
    for column, (u, s) in _OWN_PARTS.items():
        value = out.get(column)
        if value is not None and np.isfinite(value):
            out[column] = max(0.0, float(value) - u * own[0] - s * own[1])
    if top and top[0].pid in own_pids:
        others = [p.cpu_percent for p in top if p.pid not in own_pids]
        out["top_proc_cpu_percent"] = float(others[0]) if others else 0.0
    return out


#: The agent's in-memory rows: the stored columns, then the process baseline's columns.
ROW_COLUMNS = (*AGENT_COLUMNS, *PROC_COLUMNS)


def make_data_dir(cfg: AgentConfig) -> Path:
    """The state folder, private to the agent (history, journal and evidence live there)."""
    path = Path(cfg.data_dir)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def lock_data_dir(path: Path) -> int:
    """Hold ``path/agent.lock`` for the life of the process (the returned descriptor).

    Two agents on one data folder would interleave their samples in one history, train on
    each other's alerts, and the second's start would release what the first throttled or
    isolated: the second is refused (InputError, exit 2) naming the first one's pid.
    """
    import fcntl

    lock = path / "agent.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise InputError(
            str(path),
            None,
            "a data folder no other agent is using (--data-dir, data_dir)",
            f"one in use by the agent with pid {holder} ({lock} is locked)",
        ) from None
    try:  # the pid only names the holder to a refused second agent: the lock is the flock
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError as exc:  # a full disk must not stop the agent releasing what it holds
        log.warning("could not write the agent's pid into %s: %s", lock, exc.strerror or exc)
    return fd


def _warn_if_open(path: Path) -> None:
    """Say so when the data folder is open to others: its files stay 0600, but their names
    (evidence of an incident, the suspect's name in them) are listed to anyone."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning(
            "data folder %s is open to other users (mode %03o): its files are private (0600), "
            "but make the folder private too: chmod 700 %s",
            path,
            mode,
            path,
        )


class Agent:
    """The agent's state and one ``tick``; ``run`` repeats it until ``stop``."""

    def __init__(
        self,
        cfg: AgentConfig,
        collector: Collector | None = None,
        exporter: Exporter | None = None,
        clock: Callable[[], float] = time.time,
        responder: Any = None,
        own_cpu: OwnCpu | None = None,
        signals: HostSignals | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.data_dir = make_data_dir(cfg)
        self.models_dir = self.data_dir / "models"
        self.models_dir.mkdir(exist_ok=True, mode=0o700)  # the host's process identities
        # read once at start: a missing or too open key file stops the agent (exit 2)
        self.model_key = read_key(cfg.model_key) if cfg.model_key else None
        self.collector = collector or Collector(cfg.interval, host=cfg.host)
        # primed with the collector, so both measure the same intervals; a replayed
        # collector (tests) is not this host, so nothing is taken out of it by default
        self.own_cpu = own_cpu if own_cpu is not None or collector else OwnCpu()
        if self.own_cpu is not None:
            self.own_cpu.interval_percent()
        self.history = History(
            cfg.history_path, cfg.history_retention, cfg.history_max_bytes, interval_s=cfg.interval
        )
        self.exporter = exporter
        self.responder = responder
        # listening ports, SSH logins and wiped logs of this host (not of a replayed one)
        self.signals = signals if signals is not None or collector else _host_signals(cfg, clock)
        if self.signals is not None and hasattr(responder, "evidence"):
            responder.evidence.sections["host_signals"] = self.signals.evidence_section
        self.model: HostModel | None = None
        #: Sample count when the history last covered ``learn_for`` (see learning_progress)
        self._learnt_at: int | None = None
        #: per-process CPU floors, carried from sample to sample (and across a model swap: a
        #: process the new baseline judges otherwise is fed or dropped from the next sample)
        self.carry = Carry()
        self.alert: AlertState | None = None
        self.recent: deque[tuple[float, np.ndarray]] = deque()
        self.last_slot: int | None = None
        self.child: subprocess.Popen[str] | None = None
        self.next_retrain = 0.0
        #: Retrainings that failed in a row (see _backoff)
        self._train_failures = 0
        self.episode: dict[str, Any] | None = None
        self.counters = {"samples": 0, "windows": 0, "alerts": 0}
        self.errors: dict[str, int] = {}
        self.retrain_failures = dict.fromkeys(FAILURE_REASONS, 0)
        self.last: dict[str, Any] = {}
        #: (pid, start time) of processes already reported as suspect
        self.flagged: set[tuple[int, float]] = set()
        #: Event lines the disk refused, written before the next one (see append_event)
        self._unwritten: deque[str] = deque(maxlen=UNWRITTEN_EVENTS)
        self.stopping = StopFlag()
        if not self._load_model(at_start=True):
            self._say_other_hosts()
        self._reload_recent()
        #: Dismissals (``minerwatch dismiss``) up to this time are learnt or being learnt: a
        #: model trained after them read them; while learning, the first training will.
        self.dismissed, changed = self.history.dismissals()
        self.dismissals_seen = (
            float(self.model.meta.get("created_at", 0.0)) if self.model is not None else changed
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self) -> None:
        """Tick on a drift-free schedule until :meth:`stop`; always cleans up."""
        if self.exporter is not None:
            self.exporter.update(self.snapshot())
            self.exporter.start()
            if self.signals is not None:  # its own /metrics is no new listening port
                self.signals.own_ports({self.exporter.port})
        # The first sample comes one interval after start, not at once: the counters were read
        # milliseconds before, and CPU time moves in 10 ms ticks, so an immediate sample read
        # 0 % CPU and no busy process. Stored, that zero held every CPU floor (minima over 3
        # to 15 minutes) at 0 after each restart, and a miner still running could not alert.
        next_at = time.monotonic() + self.cfg.interval
        try:
            while not self.stopping.wait(max(0.0, next_at - time.monotonic())):
                self.tick()
                next_at += self.cfg.interval
        finally:
            self.shutdown()

    def stop(self, *_: object) -> None:
        self.stopping.set()

    def shutdown(self) -> None:
        """Release what the responder holds whatever else fails on the way out: a process
        left paused or cut off the network outlives the agent."""
        if self.episode is not None:
            try:
                self._close_episode("shutdown")
            except Exception as exc:  # a full disk, a broken history: still release below
                log.error("closing the open episode at shutdown failed: %s", exc)
        if self.responder is not None:
            self.responder.close()
        if self.child is not None and self.child.poll() is None:
            self.child.terminate()  # a half-trained model is never saved: the store is atomic
            try:
                self.child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.child.kill()
        if self.exporter is not None:
            # The textfile outlives the agent: left as it was, an open alert stayed at
            # alert_active 1 and node_exporter kept paging for a miner no agent watched. As
            # over HTTP the alert ends with the agent (MinerwatchAgentStalled then says nothing
            # samples the host), and what the responder released shows released.
            try:
                self.exporter.update(dataclasses.replace(self.snapshot(), alert_active=False))
            except Exception as exc:
                log.error("publishing the agent's last state at shutdown failed: %s", exc)
            self.exporter.stop()
        if self.signals is not None:
            self.signals.close()
        self.history.close()

    # -- one iteration -----------------------------------------------------------------------

    def tick(self) -> None:
        now = self.clock()
        t0 = time.perf_counter()
        try:
            metrics = self.collector.sample()
        except Exception as exc:  # a collector bug must not kill the agent; count it
            self._error("sample", exc)
            return
        if self.own_cpu is not None:
            own = self.own_cpu.interval_percent(self.child_pids())
            metrics = without_own(metrics, own, self.collector.top_processes, self.own_pids())
        self.last["sample_s"] = time.perf_counter() - t0
        self.last["sample_ts"] = now
        self.last["metrics"] = metrics
        self.counters["samples"] += 1
        if self.responder is not None:
            try:
                metrics = {**metrics, "indicator_hits": self.responder.inspect(self, metrics)}
            except Exception as exc:  # indicators are best effort; scoring goes on
                self._error("indicators", exc)
        self.history.add_sample(now, metrics)
        procs = self.suspects()
        self.history.add_procs(
            now,
            [
                (p.pid, p.name, table_exe(p), p.username, p.cpu_percent, p.gc_cpu_percent)
                for p in procs
            ],
        )
        self._flag_processes(now, procs)
        row = np.array(
            [metrics.get(c, np.nan) for c in AGENT_COLUMNS] + self._proc_columns(now, procs),
            dtype=np.float64,
        )
        self._clock_stepped_back(now)
        self.recent.append((now, row))
        while self.recent and self.recent[0][0] < now - LOOKBACK_S - 2 * self.cfg.window:
            self.recent.popleft()
        self._poll_child()
        if self.model is not None:
            self._score(now)
        self._learn_dismissals(now)
        self._maybe_train(now)
        if self.signals is not None:
            try:
                self.signals.tick(now)
            except Exception as exc:  # host signals are best effort; scoring goes on
                self._error("host_signals", exc)
        if self.responder is not None:
            try:
                self.responder.after_tick(self, now, metrics)
            except Exception as exc:  # responding is best effort; scoring goes on
                self._error("respond", exc)
        if self.exporter is not None:
            self.exporter.update(self.snapshot())

    def _score(self, now: float) -> None:
        assert self.model is not None
        newest = int(np.floor((now - self.model.window) / self.model.hop))
        if self.last_slot is not None and newest <= self.last_slot:
            return  # no window has completed since the last one scored
        t0 = time.perf_counter()
        win, _, F = feature_rows(
            np.array([t for t, _ in self.recent]),
            np.vstack([r for _, r in self.recent]),
            ROW_COLUMNS,
            self.model.window,
            self.model.hop,
            inputs=self.model.columns,
            interval=self.cfg.interval,
            until=now,
        )
        fresh = [i for i, s in enumerate(win.slots) if self.last_slot is None or s > self.last_slot]
        if not fresh:
            return
        for i in fresh:
            self._score_window(win.starts[i], win.ends[i], int(win.slots[i]), F[i])
        self.last["score_s"] = time.perf_counter() - t0
        self.last["score_ts"] = now

    def _score_window(self, start: float, end: float, slot: int, f: np.ndarray) -> None:
        assert self.model is not None and self.alert is not None
        model = self.model
        score = float(model.score(f[None, :])[0])
        was = self.alert.active
        heavy = bool(model.heavy(f[None, :])[0])
        alerted = self.alert.update(score, slot, heavy)
        self.last_slot = slot
        self.counters["windows"] += 1
        self.history.add_window(start, end, score, model.threshold, alerted)
        share = model.contributions(f[None, :])[0]
        self.last["score"] = score
        self.last["heavy_work"] = heavy
        full = model.full(f[None, :])[0]
        self.last["features"] = dict(zip(model.feature_names, full.tolist(), strict=True))
        self.last["contributions"] = dict(zip(model.feature_names, share.tolist(), strict=True))
        if alerted and (not was or self.episode is None):  # None: closed by a clock step
            self._open_episode(start, end, score, f, heavy)
        elif alerted and self.episode is not None:
            self.episode["end"] = end
            self._count_work(heavy, f)
            if score > self.episode["score"]:
                self.episode.update(score=score, top_features=model.explain(f, top=3))
            changed: list[str] = []
            if self.responder is not None:
                try:
                    changed = self.responder.on_episode_window(self, self.episode, f)
                except Exception as exc:  # responding is best effort; scoring goes on
                    self._error("respond", exc)
            if changed:
                self._event("update", changed=changed)
                log.warning("alert on %s: %s", self.cfg.host, self._describe(self.episode))
        elif not alerted and self.episode is not None:
            self._close_episode()

    # -- alert episodes ----------------------------------------------------------------------

    def _open_episode(
        self, start: float, end: float, score: float, f: np.ndarray, heavy: bool = False
    ) -> None:
        """Name the suspect, keep the evidence, then say it at once: event line and WARNING."""
        assert self.model is not None
        self.counters["alerts"] += 1
        self.episode = {
            "id": f"{self.cfg.host}-{int(start)}",
            "start": start,
            "end": end,
            "score": score,
            "threshold": self.model.threshold,
            "top_features": self.model.explain(f, top=3),
        }
        self._count_work(heavy, f)
        if self.model.procs is not None:  # in words: "exe /tmp/.x/kswapd0, never seen ..."
            self.episode["processes"] = self.model.procs.describe(
                rows_from_records(end, self.suspects())
            )
        if self.responder is not None:
            try:
                self.responder.on_alert(self, self.episode, f)
            except Exception as exc:  # the alert is said even if the evidence is not kept
                self._error("respond", exc)
        self._event("open")
        log.warning("alert opened on %s: %s", self.cfg.host, self._describe(self.episode))

    def _count_work(self, heavy: bool, f: np.ndarray) -> None:
        """How many of the episode's windows were heavy work, and the heaviest evidence: an
        index rebuild or a backup reads and writes, a miner's CPU brings no I/O."""
        assert self.model is not None
        ep = self.episode
        if ep is None:
            return
        ep["windows"] = int(ep.get("windows", 0)) + 1
        ep["heavy_windows"] = int(ep.get("heavy_windows", 0)) + int(heavy)
        if heavy:
            work = self.model.heavy_inputs(f)
            before = ep.get("heavy_work") or [{"spreads": float("-inf")}]
            if work and work[0]["spreads"] > before[0]["spreads"]:
                ep["heavy_work"] = work

    def _close_episode(self, reason: str = "cleared") -> None:
        assert self.episode is not None
        self._event("close", reason=reason)
        self.history.extend_dismissal(self.episode["id"], self.episode["end"])
        if (
            self.model is not None
            and self.cfg.retrain_every > 0
            and self.history.is_dismissed(self.episode["id"])
        ):
            # dismissed while open, it was learnt as far as it had gone: now learn it whole
            self.next_retrain = min(self.next_retrain, self.clock())
        log.warning(
            "alert closed on %s (%s) after %.0f s: %s",
            self.cfg.host,
            reason,
            self.episode["end"] - self.episode["start"],
            self._describe(self.episode),
        )
        self.episode = None

    def _event(self, kind: str, **extra: Any) -> None:
        """Append one line about the current episode to the event log (0600, JSON)."""
        assert self.episode is not None and self.cfg.event_log is not None
        line = {"event": kind, "host": self.cfg.host, "time": self.clock(), **self.episode, **extra}
        self.append_event(line)

    @staticmethod
    def _describe(episode: dict[str, Any]) -> str:
        """One log line's worth: score, threshold, top features, suspect, evidence file.
        Process names are JSON-quoted, so a name with a newline cannot forge a log line."""
        features = ", ".join(
            f"{t['feature']}={t['value']:.3g} (typical {t['typical_low']:.3g}-"
            f"{t['typical_high']:.3g})"
            for t in episode.get("top_features", [])
        )
        proc = episode.get("process")
        suspect = (
            f"pid {proc['pid']} {json.dumps(proc['name'])} at {proc['cpu_percent']:g}% of a core"
            if proc
            else "none found"
        )
        hits = sorted({h["indicator_id"] for h in episode.get("indicators", [])})
        return (
            f"score {episode['score']:.4f} above threshold {episode['threshold']:.4f}; "
            f"top features: {features or 'none'}; busiest process: {suspect}; "
            f"indicators: {', '.join(hits) or 'none'}; "
            f"unfamiliar processes: {json.dumps(episode.get('processes') or 'none')}; "
            f"{heavy_work_words(episode) or 'no heavy work'}; "
            f"evidence: {episode.get('evidence') or 'not written'}"
        )

    # -- learning ----------------------------------------------------------------------------

    def learning_progress(self) -> float:
        """Share of ``learn_for`` the stored history spans (1 once a model is loaded): the
        learning period asked for is the one used, the config refuses one too short."""
        if self.model is not None:
            return 1.0
        span = self.history.span_seconds()
        if span >= self.cfg.learn_for:  # only then read every stamp (cheap while learning)
            # a wall clock stepped ahead (or days of the agent stopped) is no time learnt:
            # counted as such, it ended learning after seconds of samples
            done = self.counters["samples"]
            cached = self._learnt_at
            if cached is not None and done - cached < RECOUNT_LEARNT_EVERY:
                return 1.0  # learnt: a model-less agent (training failing) need not recount
            span = self.history.covered_seconds(self.max_gap())
            self._learnt_at = done if span >= self.cfg.learn_for else None
        return min(1.0, span / self.cfg.learn_for)

    def max_gap(self) -> float:
        """The longest gap between two samples counted as time learnt: a window, or two
        intervals (a restart); more is time nothing was sampled, or a clock step."""
        return max(self.cfg.window, 2.0 * self.cfg.interval)

    def retrain_period(self, model: HostModel) -> float:
        """Time from ``model``'s training to the next one: as long as the history it learnt
        from (so a young model is relearnt each time the history has doubled and its margins
        shrink), at most ``retrain_every``; never with ``retrain_every = 0``."""
        if self.cfg.retrain_every <= 0:
            return float("inf")
        meta = model.meta
        span = float(meta.get("train_end", 0.0)) - float(meta.get("train_start", 0.0))
        # the time its windows cover, not their first to last: a clock step ahead while it
        # learnt made a model of minutes wait a day for the next training
        span = min(span, float(meta.get("windows", 0)) * model.hop + model.window)
        return min(self.cfg.retrain_every, max(span, model.window, self.cfg.interval))

    def own_pids(self) -> set[int]:
        """This process and its children (the training child), whose CPU is not the host's."""
        return {os.getpid(), *self.child_pids()}

    def child_pids(self) -> tuple[int, ...]:
        return () if self.child is None else (self.child.pid,)

    def suspects(self) -> tuple[Any, ...]:
        """The busiest processes of the latest sample that are not the agent's own."""
        own = self.own_pids()
        me = os.getpid()
        return tuple(p for p in self.collector.top_processes if p.pid not in own and p.ppid != me)

    def _open_episode_dismissed(self) -> bool:
        return self.episode is not None and self.history.is_dismissed(self.episode["id"])

    def _learn_dismissals(self, now: float) -> None:
        """Retrain soon after a responder dismisses an episode as benign (or undoes that), so
        the next index rebuild of the kind that paged is judged by a model that has seen
        one. Waits for a running training, and for an open episode to close unless it is the
        one dismissed: that one is learnt as far as it has gone, since a lasting new level
        (a service moved here for good) would otherwise page until it ends."""
        self.dismissed, changed = self.history.dismissals()
        if changed <= self.dismissals_seen or self.child is not None:
            return
        if self.episode is not None and not self._open_episode_dismissed():
            return
        self.dismissals_seen = changed
        if self.model is None:
            return  # still learning: the first training reads the dismissals anyway
        if self.cfg.retrain_every <= 0:
            log.warning(
                "an alert episode was dismissed, but retrain_every = 0 keeps this model as it "
                "is: it does not learn the episode"
            )
            return
        log.info("an alert episode was dismissed or a dismissal undone: retraining now")
        self.next_retrain = min(self.next_retrain, now)

    def _maybe_train(self, now: float) -> None:
        if self.child is not None:
            return
        due = now >= self.next_retrain and (self.model is not None or self.learning_progress() >= 1)
        if not due:
            return
        since = now - self.cfg.retrain_history
        assert self.cfg.hop is not None  # AgentConfig derives it from the window
        history_s = min(self.cfg.retrain_history, self.history.span_seconds())
        margin = exclusion_margin(
            history_s,
            self.cfg.hop,
            max(self.cfg.alert_windows, self.cfg.sustain_windows),
            cap_s=EXCLUDE_MARGIN_S,
        )
        before = None  # an open episode stays out (with its margin) unless it was dismissed
        if self.episode is not None and not self._open_episode_dismissed():
            before = self.episode["start"] - margin
        path = self.data_dir / "train-input.npz"
        source: list[str] = []
        if self.history.path is not None and self.history.degraded is None:
            # the child reads the database itself: two weeks of samples never pass through
            # the agent's memory
            source = [
                "--history",
                str(self.history.path),
                "--since",
                str(since),
                "--margin",
                str(margin),
            ]
            source += [] if before is None else ["--before", str(before)]
        else:
            ts, values = self.history.samples(since=since)
            alerted = outside_dismissed(
                self.history.alerted_windows(), self.history.dismissed_spans()
            )
            keep = exclusion_mask(ts, alerted, margin, before)
            buf = io.BytesIO()
            np.savez(buf, timestamps=ts[keep], values=values[keep], columns=np.array(AGENT_COLUMNS))
            try:
                atomic_write(path, buf.getvalue(), mode=0o600)
            except OSError as exc:  # a full disk: scoring goes on, training waits
                why = f"the training input could not be written: {exc}"
                self._retrain_failed("bad_input", why, self._backoff(now))
                return
        cmd = [
            sys.executable,
            "-m",
            "minerwatch.service.retrain",
            "--input",
            str(path),
            "--models",
            str(self.models_dir),
            "--host",
            self.cfg.host,
            "--window",
            str(self.cfg.window),
            "--hop",
            str(self.cfg.hop),
            "--alert-windows",
            str(self.cfg.alert_windows),
            "--sustain-windows",
            str(self.cfg.sustain_windows),
            "--alert-margin",
            str(self.cfg.alert_margin),
            "--alarms-per-week",
            str(self.cfg.alarms_per_week),
            *source,
            *([] if self.cfg.model_key is None else ["--model-key", str(self.cfg.model_key)]),
        ]
        log.info(
            "training a model for %s in a child process (%.0f s of history, %.0f s left out "
            "around alerts)",
            self.cfg.host,
            history_s,
            margin,
        )
        # output goes to files: a pipe nobody reads while the child runs could fill and block it
        try:
            out = os.open(self.data_dir / "train.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                self.child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
            finally:
                os.close(out)
        except OSError as exc:  # the agent goes on scoring; the next attempt is after a backoff
            why = f"the training child could not be started: {exc}"
            self._retrain_failed("crashed", why, self._backoff(now))
            return
        self.next_retrain = float("inf")  # set again from the child's outcome

    def _poll_child(self) -> None:
        if self.child is None or self.child.poll() is None:
            return
        rc, self.child = self.child.returncode, None
        try:
            lines = (self.data_dir / "train.log").read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        result: dict[str, Any] = {}
        for line in reversed(lines):  # the child's answer is its last JSON object line
            try:
                parsed = json.loads(line)
            except ValueError:
                continue
            if isinstance(parsed, dict):
                result = parsed
                break
        now = self.clock()
        backoff = self._backoff(now)
        if rc != 0:
            reason = result.get("reason")
            reason = reason if reason in self.retrain_failures else "crashed"
            self._retrain_failed(reason, result.get("error") or "; ".join(lines[-3:]), backoff)
            return
        log.info("training finished: %s", result)
        if not result.get("accepted"):
            period = backoff - now if self.model is None else self.retrain_period(self.model)
            self._retrain_failed(
                "rejected",
                f"the new model alerted on {result.get('alert_rate_new')} of recent clean windows,"
                f" the current one on {result.get('alert_rate_old')}",
                now + period,
            )
        elif not self._load_model():
            self._retrain_failed("unloadable", "see the model error above", backoff)
        else:
            assert self.model is not None
            self._train_failures = 0
            self.next_retrain = now + self.retrain_period(self.model)  # on the agent's clock

    def _backoff(self, now: float) -> float:
        """When to try a failed training again: not every tick on data that cannot work, and
        twice as long after each failure in a row (at most an hour): a disk that stays full
        would otherwise start a child reading the whole history every minute."""
        base = max(60.0, 6 * self.cfg.interval)
        return now + min(base * 2.0 ** min(self._train_failures, 16), max(base, BACKOFF_MAX_S))

    def _retrain_failed(self, reason: str, why: str, retry_at: float) -> None:
        """Count a retraining that gave no new model, by reason, and say why in the log."""
        self.retrain_failures[reason] += 1
        if reason != "rejected":
            self.errors["train"] = self.errors.get("train", 0) + 1
        log.warning("retraining gave no new model (%s): %s", reason, why)
        self.next_retrain = retry_at
        # a model rejected for alerting more is a training that worked
        self._train_failures = 0 if reason == "rejected" else self._train_failures + 1

    def _load_model(self, at_start: bool = False) -> bool:
        if not (self.models_dir / host_dirname(self.cfg.host) / META).is_file():
            return False
        try:
            model = load_model(self.models_dir, self.cfg.host, key=self.model_key)
            unknown = [c for c in model.columns if c not in ROW_COLUMNS]
            if unknown:
                raise ModelError(
                    str(self.models_dir),
                    None,
                    "a model of the agent's columns",
                    f"one that needs {unknown}",
                )
            if model.window < self.cfg.interval:  # no window would hold a sample: cannot score
                raise ModelError(
                    str(self.models_dir / host_dirname(self.cfg.host) / META),
                    None,
                    f"a model of windows at least --interval ({self.cfg.interval:g}s) long",
                    f"one of {model.window:g}s windows (trained before --interval or --window "
                    "changed)",
                )
        except (ModelError, InputError, OSError, ValueError) as exc:
            if not at_start:
                self._error("model", exc)
                return False
            # an upgrade (another format or feature set) or a changed configuration: the
            # history is kept, and learning restarts from it, not from nothing
            self.errors["model"] = self.errors.get("model", 0) + 1
            progress = self.learning_progress()
            log.warning(
                "the stored model for %s cannot be used, relearning from the stored history "
                "(%.0f%% of --learn-for %gs: %s): %s",
                self.cfg.host,
                100 * progress,
                self.cfg.learn_for,
                "training now" if progress >= 1 else "training once it is covered",
                exc,
            )
            return False
        self.model = model
        old = self.alert
        self.alert = model.alert_state()
        if old is not None:  # keep an ongoing episode open across a model swap
            self.alert.active = old.active
        period = self.retrain_period(model)
        self.next_retrain = float(model.meta.get("created_at", self.clock())) + period
        log.info(
            "model for %s loaded: %d windows, threshold %.4f, next training %s",
            self.cfg.host,
            int(model.meta.get("windows", 0)),
            model.threshold,
            "never" if period == float("inf") else f"{period:.0f} s after this one",
        )
        c = self.cfg
        hop = c.hop if c.hop is not None else c.window  # AgentConfig derives it from the window
        asked = (c.window, hop, c.alert_windows, c.sustain_windows, c.alert_margin)
        differs = trained_otherwise(model, *asked, c.alarms_per_week)
        if differs:
            # trained before a setting changed: scored as it was trained (what it learnt,
            # calibrated for its own rule) only until a model of the settings asked for
            # replaces it
            if c.retrain_every > 0:
                self.next_retrain = self.clock()
                then = "scoring with it until a model of those, trained now, replaces it"
            else:
                then = "retrain_every = 0 keeps it: it is scored as it was trained"
            log.warning(
                "the model for %s was trained otherwise than the configuration asks (%s): %s",
                c.host,
                "; ".join(differs),
                then,
            )
        return True

    def _say_other_hosts(self) -> None:
        """A host renamed, or a data folder copied from another host: the models there are
        not this host's, and what it learns from is the history stored under the old name."""
        others = sorted(h for h in list_hosts(self.models_dir) if h != self.cfg.host)
        if others:
            log.warning(
                "no model for %s in %s, but one for %s: learning %s from the stored history "
                "(a renamed host keeps its history; a data folder copied from another host "
                "holds that host's, so start such a host on an empty data folder)",
                json.dumps(self.cfg.host),
                self.models_dir,
                ", ".join(json.dumps(h) for h in others[:5]),
                json.dumps(self.cfg.host),
            )

    def _reload_recent(self) -> None:
        """After a restart, the last hour of stored samples feeds the rolling features again."""
        now = self.clock()
        ts, values = self.history.samples(since=now - LOOKBACK_S - 2 * self.cfg.window)
        blank = np.full(len(PROC_COLUMNS), np.nan)  # process columns are not stored
        for t, row in zip(ts, values, strict=True):
            self.recent.append((float(t), np.concatenate([row, blank])))
        if len(ts):
            assert self.cfg.hop is not None  # AgentConfig derives it from the window
            self.last_slot = int(np.floor(now / self.cfg.hop)) - 1

    # -- processes ---------------------------------------------------------------------------

    def _proc_columns(self, now: float, procs: Sequence[Any]) -> list[float]:
        """This sample's process columns under the model's process baseline (NaN without
        one: the process features are then unknown, neutral)."""
        base = self.model.procs if self.model is not None else None
        if base is None:
            return [np.nan] * len(PROC_COLUMNS)
        rows = rows_from_records(now, procs)
        values: list[float] = base.columns(rows, np.array([now]), self.carry)[0].tolist()
        return values

    def _flag_processes(self, now: float, procs: Sequence[Any]) -> None:
        """Say at once when a process matches a miner's name or a disguise, learning or not:
        a host already mining when first learnt is the common case. One WARNING, one event
        line and one evidence file per process (its windows never train the baseline)."""
        for p in procs:
            why = disguise(p.name, table_exe(p))
            key = (p.pid, p.create_time)
            if not why or not p.cpu_percent >= 1.0 or key in self.flagged:
                continue
            if len(self.flagged) > 1000:  # bounded: a churn of short-lived ones
                self.flagged.clear()
            self.flagged.add(key)
            self.counters["flagged"] = self.counters.get("flagged", 0) + 1
            learning = self.model is None
            evidence = None
            if self.responder is not None:
                try:
                    name = f"suspect-{self.cfg.host}-{p.pid}"
                    doc = self.responder.evidence.collect(
                        name, now, np.nan, np.nan, {}, [], [p.pid], self.responder.hits
                    )
                    doc["suspect"] = {"why": why, "learning": learning}
                    evidence = str(self.responder.evidence.write_document(name, doc))
                except Exception as exc:  # the warning is said even if evidence fails
                    self._error("evidence", exc)
            line = {
                "event": "suspect_process",
                "host": self.cfg.host,
                "time": now,
                "learning": learning,
                "process": {"pid": p.pid, "name": p.name, "exe": table_exe(p), "user": p.username,
                            "cpu_percent": p.cpu_percent},
                "why": why,
                "evidence": evidence,
            }  # fmt: skip
            self.append_event(line)
            log.warning(
                "suspect process on %s%s: pid %d %s (%s) at %.0f%% of a core; evidence: %s",
                self.cfg.host,
                " while learning (left out of the baseline)" if learning else "",
                p.pid,
                json.dumps(table_exe(p) or p.name),
                why,
                p.cpu_percent,
                evidence or "not written",
            )

    def append_event(self, line: dict[str, Any]) -> None:
        """Append one JSON line to the event log. Lines a full disk refused are kept and
        written first, so an alert opened on a full disk still has its ``open`` line before
        its ``close``; a partly written line is cut off again, so no line is ever torn."""
        if self.cfg.event_log is None:
            return
        self._unwritten.append(json.dumps(line, sort_keys=True) + "\n")
        data = memoryview("".join(self._unwritten).encode("utf-8"))
        try:
            fd = os.open(self.cfg.event_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            self._error("event_log", exc)
            return
        size = -1
        try:
            size = os.fstat(fd).st_size
            while data:
                data = data[os.write(fd, data) :]
        except OSError as exc:
            if size >= 0:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
            self._error("event_log", exc)
            return
        finally:
            os.close(fd)
        self._unwritten.clear()

    def _clock_stepped_back(self, now: float) -> None:
        """A wall clock stepped back leaves samples stamped in what is now the future: they
        are dropped from the rolling features (which must not mix two timelines). Scoring
        goes on at the new clock, as after a restart: waiting until the clock passed the
        last window scored (so that no time is scored twice) left the host unwatched for
        the step's length, a day for a day, years for an RTC corrected years back. The
        re-lived span's windows are then stored a second time, one per clock. An open alert
        episode is closed (``clock_stepped_back``): its windows stay in one timeline. The
        alert itself stays on, so the first window of the new clock still above the
        threshold opens the next episode at once (new evidence, nothing resolved in between);
        one below it counts toward clearing it, as any. (It waited, the alert on and the
        host unwatched, until the clock passed the episode's last window.)"""
        if not self.recent or now >= self.recent[-1][0]:
            return
        ahead = self.recent[-1][0] - now
        while self.recent and self.recent[-1][0] >= now:
            self.recent.pop()
        if math.isfinite(self.next_retrain) and self.next_retrain > now:
            self.next_retrain = max(now, self.next_retrain - ahead)  # as far off as it was
        if self.model is None:
            log.warning("the clock stepped back %.0f s: rolling features restart from now", ahead)
            return
        self.last_slot = int(np.floor((now - self.model.window) / self.model.hop))
        if self.alert is not None:
            self.alert.rebase(self.last_slot)
        closed = self.episode is not None
        if closed:
            self._close_episode("clock_stepped_back")
        log.warning(
            "the clock stepped back %.0f s: rolling features restart from now and scoring "
            "goes on at the new clock (the %.0f s lived again are scored a second time%s)",
            ahead,
            ahead,
            "; the open alert episode is closed, the alert still on" if closed else "",
        )

    def _error(self, stage: str, exc: BaseException) -> None:
        self.errors[stage] = self.errors.get(stage, 0) + 1
        log.warning("%s failed: %s", stage, exc)

    # -- export ------------------------------------------------------------------------------

    def snapshot(self) -> AgentSnapshot:
        m = self.model
        metrics = self.last.get("metrics") or {}
        top = metrics.get("top_proc_cpu_percent")
        cores = os.cpu_count() or 1
        errors = dict(self.errors)
        if self.history.errors_total:
            errors["history"] = self.history.errors_total
        for name, n in getattr(self.collector, "errors", {}).items():
            if n:
                errors[f"source_{name}"] = n
        extra: dict[str, Any] = {}
        if self.responder is not None:
            extra = self.responder.snapshot_fields()
        if self.signals is not None:
            extra |= self.signals.snapshot_fields()
            for stage, n in self.signals.errors.items():
                errors[stage] = errors.get(stage, 0) + n
        telemetry = {
            k: float(v)
            for k, v in metrics.items()
            if k in METRIC_COLUMNS and v is not None and np.isfinite(v)
        }
        return AgentSnapshot(
            anomaly_score=self.last.get("score") if m is not None else None,
            anomaly_threshold=m.threshold if m is not None else None,
            alert_active=bool(self.alert.active) if self.alert is not None else False,
            heavy_work=self.last.get("heavy_work") if m is not None else None,
            alerts_total=self.counters["alerts"],
            suspect_processes_total=self.counters.get("flagged", 0),
            feature_values={
                k: v for k, v in (self.last.get("features") or {}).items() if np.isfinite(v)
            },
            feature_contributions=self.last.get("contributions") or {},
            model_version=str(m.meta.get("sha256", ""))[:12] if m is not None else None,
            model_schema_version=SCHEMA_VERSION if m is not None else None,
            model_trained_timestamp_seconds=m.meta.get("created_at") if m is not None else None,
            model_training_windows=m.meta.get("windows") if m is not None else None,
            learning=m is None,
            learning_progress_ratio=self.learning_progress(),
            learning_period_seconds=self.cfg.learn_for,
            # learning is measured from the first stored sample (see learning_progress)
            learning_started_timestamp_seconds=(
                (self.last.get("sample_ts") or self.clock()) - self.history.span_seconds()
                if m is None
                else None
            ),
            evidence_file=(self.episode or {}).get("evidence"),
            top_process_cpu_ratio=(
                min(1.0, max(0.0, top / (100.0 * cores)))
                if top is not None and np.isfinite(top)
                else None
            ),
            telemetry=telemetry,
            last_sample_timestamp_seconds=self.last.get("sample_ts"),
            last_score_timestamp_seconds=self.last.get("score_ts"),
            sample_duration_seconds=self.last.get("sample_s"),
            score_duration_seconds=self.last.get("score_s"),
            source_up={
                name: n == 0 or name in getattr(self.collector, "_ok", set())
                for name, n in getattr(self.collector, "errors", {}).items()
            },
            samples_total=self.counters["samples"],
            windows_scored_total=self.counters["windows"],
            errors_total=errors,
            retrain_failures_total=dict(self.retrain_failures),
            dismissed_episodes=self.dismissed,
            **extra,
        )


def _host_signals(cfg: AgentConfig, clock: Callable[[], float]) -> HostSignals:
    """The host signals of ``cfg``'s host, state in its data folder."""
    return HostSignals(
        Path(cfg.data_dir),
        cfg.learn_for,
        cfg.event_log,
        cfg.host,
        clock,
        auth_log=cfg.auth_log,
        log_dir=cfg.log_dir,
        logrotate_status=LOGROTATE_STATUS
        if cfg.logrotate_status is None
        else (cfg.logrotate_status,),
    )


# -- command line ------------------------------------------------------------------------------


def serve(cfg: AgentConfig, log_level: str = "INFO") -> int:
    """Run the agent until SIGTERM, SIGINT or SIGHUP (``minerwatch serve``; flags and config are
    read by the CLI, so a bad one is reported before this module is even imported)."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data_dir = make_data_dir(cfg)
    lock = lock_data_dir(data_dir)  # before the responder releases what a crash left held
    _warn_if_open(data_dir)
    exporter = Exporter(
        port=cfg.exporter.port,
        address=cfg.exporter.address,
        web_config=cfg.exporter.web_config,
        textfile_dir=cfg.exporter.textfile_dir,
    )
    responder = None
    try:
        from minerwatch.service.respond import Responder
    except ImportError:
        pass
    else:
        responder = Responder(cfg)
    agent = Agent(cfg, exporter=exporter, responder=responder)

    agent.stopping.stop_on()  # STOP_SIGNALS: SIGHUP's default too would keep what it holds
    port = exporter.port if exporter else 0
    log.info(
        "minerwatch agent for %s: metrics on %s:%s, data in %s",
        cfg.host,
        cfg.exporter.address,
        port or "a free port (the exporter's line names it)",
        cfg.data_dir,
    )
    try:
        agent.run()
    finally:
        os.close(lock)
    # the journal shows why the agent went away (a stop by systemd, or by someone else)
    stopped_by = ", ".join(agent.stopping.signals) or "no signal"
    log.info("minerwatch agent for %s stopped (%s)", cfg.host, stopped_by)
    return 0
