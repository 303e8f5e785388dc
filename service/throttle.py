"""Auto-throttle: when host CPU stays high, cap the busiest non-core processes, and never
leave one paused.

The agent calls ``Throttle.update(host_cpu, alert_active)`` every tick. A write-ahead journal
on disk lists every process being throttled before it is touched; a new ``Throttle`` (after a
crash or ``kill -9``) releases whatever the journal lists, and so does
``minerwatch throttle release`` with no agent running. Every action is one JSON line in an
audit log (never a command line).

Example (dry run over an invented table)::

    >>> import tempfile
    >>> from minerwatch.service.protect import ProcInfo
    >>> miner = ProcInfo(4242, 1, "xmrig", "/tmp/.x/xmrig", "www-data", 1.0, 190.0, "/")
    >>> state = Path(tempfile.mkdtemp())
    >>> cfg = ThrottleConfig(enabled=True, hold_s=0, dry_run=True, state_dir=state)
    >>> t = Throttle(cfg, proc_reader=lambda: [miner], mechanisms=[])
    >>> [(a.action, a.pid) for a in t.update(99.0, alert_active=True)]
    [('dry_run', 4242)]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from minerwatch.features.atomic import atomic_write
from minerwatch.features.errors import InputError
from minerwatch.service import durations
from minerwatch.service.cgroups import (
    Mechanism,
    ProcessGone,
    Throttled,
    build_mechanisms,
    release_record,
)
from minerwatch.service.protect import ProcInfo, ProcReader, same_process, select_targets

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("/var/lib/minerwatch/throttle")
JOURNAL = "throttle-journal.json"
AUDIT = "throttle-audit.jsonl"
ACTION_KINDS = ("throttle", "release", "dry_run", "skip")
METHODS = ("auto", "cgroup2", "cgroup1", "sigstop")


@dataclass(frozen=True)
class ThrottleConfig:
    """Options of the auto-throttle; off unless ``enabled``.

    ``cpu_percent``/``hold_s`` trigger, ``release_cpu_percent``/``release_hold_s`` release
    (hysteresis); ``quota_percent`` is the share of one core a throttled process keeps.
    """

    enabled: bool = False
    cpu_percent: float = 90.0
    hold_s: float = 30.0
    release_cpu_percent: float = 70.0
    release_hold_s: float = 60.0
    dry_run: bool = False
    only_when_alert: bool = False
    max_targets: int = 3
    min_proc_cpu_percent: float = 5.0
    quota_percent: float = 10.0
    method: str = "auto"
    allow_names: tuple[str, ...] = ()
    allow_users: tuple[str, ...] = ()
    allow_units: tuple[str, ...] = ()
    cgroup_root: Path = Path("/sys/fs/cgroup")
    state_dir: Path = DEFAULT_STATE_DIR

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], path: str = "config", lines: Mapping[str, int] | None = None
    ) -> ThrottleConfig:
        """Build from a config-file section; unknown keys and wrong types raise InputError.

        Durations accept seconds or strings like ``"30s"``, ``"2m"``. ``lines`` maps keys to
        their line numbers when the caller knows them.
        """
        known = {f.name: f for f in fields(cls)}
        kw: dict[str, Any] = {}
        for key, value in data.items():
            line = (lines or {}).get(key)
            if key not in known:
                raise InputError(path, line, f"a throttle option ({', '.join(known)})", repr(key))
            default = getattr(cls, key)
            try:
                kw[key] = _coerce(key, value, default)
            except (TypeError, ValueError) as exc:
                raise InputError(path, line, f"{key}: {exc}", repr(value)) from None
        cfg = cls(**kw)
        cfg.validate(path)
        return cfg

    def validate(self, path: str = "config") -> None:
        """Reject values that would make the throttle misbehave."""
        if self.method not in METHODS:
            raise InputError(path, None, f"method one of {METHODS}", repr(self.method))
        if not 0 < self.quota_percent <= 100:
            raise InputError(path, None, "quota_percent in (0, 100]", str(self.quota_percent))
        if self.release_cpu_percent > self.cpu_percent:
            raise InputError(
                path, None, "release_cpu_percent <= cpu_percent", str(self.release_cpu_percent)
            )
        if self.hold_s < 0 or self.release_hold_s < 0 or self.max_targets < 0:
            raise InputError(path, None, "non-negative hold times and max_targets", None)


def parse_duration(text: str | float) -> float:
    """Seconds from ``30``, ``"30s"``, ``"2m"``, ``"1h"``, ``"500ms"`` (ValueError for argparse).

    >>> parse_duration("2m"), parse_duration("500ms"), parse_duration(7)
    (120.0, 0.5, 7.0)
    """
    try:
        return durations.parse_duration(text)
    except InputError as exc:
        raise ValueError(str(exc)) from None


def _coerce(key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise TypeError("expected true or false")
        return value
    if key in ("hold_s", "release_hold_s"):
        return parse_duration(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("expected an integer")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError("expected a number")
        return float(value)
    if isinstance(default, tuple):
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise TypeError("expected a list of strings")
        return tuple(value)
    if isinstance(default, Path):
        return Path(str(value))
    return str(value)


# --------------------------------------------------------------------------- journal and audit


@dataclass
class JournalState:
    """What is throttled now, and what an operator released by hand (not to be re-taken)."""

    throttled: list[Throttled] = field(default_factory=list)
    exempt: list[tuple[int, float]] = field(default_factory=list)


class Journal:
    """The on-disk list of throttled processes, rewritten atomically on every change.

    A lock file serialises the agent and ``minerwatch throttle release`` run by hand.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / JOURNAL
        self._mutex = threading.RLock()
        self._held: JournalState | None = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[JournalState]:
        """Read under an exclusive lock; changes are saved on exit, even on an exception
        (every change to the state follows a change already made to a process).

        Re-entrant in one thread, so a nested use shares the state instead of deadlocking.
        """
        with self._mutex:
            if self._held is not None:
                yield self._held
                return
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.state_dir / (JOURNAL + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                state = self._held = self.load()
                before = _dump(state)
                try:
                    yield state
                finally:
                    if _dump(state) != before:
                        self._save(state)
            finally:
                self._held = None
                os.close(fd)

    def load(self) -> JournalState:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return JournalState()
        except (OSError, ValueError) as exc:
            # A journal we cannot read must not be silently dropped: keep it for a human.
            raise InputError(str(self.path), None, "a throttle journal (JSON)", str(exc)) from exc
        return JournalState(
            throttled=[Throttled.from_json(d) for d in raw.get("throttled", [])],
            exempt=[(int(p), float(c)) for p, c in raw.get("exempt", [])],
        )

    def _save(self, state: JournalState) -> None:
        atomic_write(self.path, _dump(state), mode=0o600)

def _dump(state: JournalState) -> str:
    return json.dumps(
        {
            "version": 1,
            "throttled": [r.to_json() for r in state.throttled],
            "exempt": [list(e) for e in state.exempt],
        },
        indent=1,
    )


@dataclass(frozen=True)
class Action:
    """One thing the throttle did or would do; one audit line."""

    ts: float
    action: str
    pid: int
    name: str
    method: str
    reason: str
    host_cpu: float | None = None


class AuditLog:
    """Append-only JSON lines, 0600, fsynced: the evidence of what was done to which process."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, action: Action) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(asdict(action), sort_keys=True) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- controller


class Throttle:
    """The auto-throttle controller the agent drives once per tick.

    Constructing one first releases everything a previous run left in the journal (even when
    ``cfg.enabled`` is False), so a crashed agent never leaves a process paused. Use it as a
    context manager, or call ``release_all`` on shutdown.
    """

    def __init__(
        self,
        cfg: ThrottleConfig,
        agent_pids: set[int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        proc_reader: Callable[[], Sequence[ProcInfo]] | None = None,
        mechanisms: Sequence[Mechanism] | None = None,
        proc_root: Path = Path("/proc"),
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.agent_pids = {os.getpid()} if agent_pids is None else set(agent_pids)
        self.clock = clock
        self.wall_clock = wall_clock
        self.proc_root = proc_root
        self.proc_reader = proc_reader if proc_reader is not None else ProcReader(proc_root)
        self._mechanisms = list(mechanisms) if mechanisms is not None else None
        self.journal = Journal(cfg.state_dir)
        self.audit = AuditLog(cfg.state_dir / AUDIT)
        self.actions_total: dict[str, int] = dict.fromkeys(ACTION_KINDS, 0)
        self._lock = threading.RLock()
        self.throttled_now = 0
        self._over_since: float | None = None
        self._under_since: float | None = None
        self.recovered = self.recover()

    # -- public API ---------------------------------------------------------------------

    @property
    def mechanisms(self) -> list[Mechanism]:
        """Resolved lazily so a disabled throttle never probes cgroups."""
        if self._mechanisms is None:
            self._mechanisms = build_mechanisms(
                self.cfg.method, self.cfg.cgroup_root, self.cfg.quota_percent, self.proc_root
            )
        return self._mechanisms

    def recover(self) -> list[Action]:
        """Release everything the journal lists (left by a crashed or killed agent)."""
        return self.release_all("recovered from journal at agent start")

    def throttled(self) -> list[Throttled]:
        """Processes throttled now (the journal is the truth: the CLI may have released some)."""
        return list(self.journal.load().throttled)

    def update(self, host_cpu_percent: float, alert_active: bool = False) -> list[Action]:
        """One tick: apply the hold time and hysteresis, throttle or release as needed."""
        with self._lock:
            now = self.clock()
            actions = self._drop_gone(host_cpu_percent)
            if not self.cfg.enabled:
                return actions
            cfg = self.cfg
            hot = host_cpu_percent >= cfg.cpu_percent and (alert_active or not cfg.only_when_alert)
            if hot:
                self._under_since = None
                self._over_since = now if self._over_since is None else self._over_since
                if now - self._over_since >= cfg.hold_s:
                    actions += self._throttle_top(host_cpu_percent)
                    self._over_since = now  # another full hold before taking more
            elif host_cpu_percent < cfg.release_cpu_percent:
                self._over_since = None
                if self.throttled():
                    self._under_since = now if self._under_since is None else self._under_since
                    if now - self._under_since >= cfg.release_hold_s:
                        reason = f"host cpu below {cfg.release_cpu_percent:g}%"
                        actions += self.release_all(reason, host_cpu_percent)
                        self._under_since = None
                else:
                    self._under_since = None
            else:
                self._over_since = self._under_since = None
            return actions

    def release(self, pid: int, reason: str = "released on request") -> list[Action]:
        """Release one process now."""
        with self._lock, self._journal() as state:
            recs = [r for r in state.throttled if r.pid == pid]
            return [self._release_locked(state, r, reason, None) for r in recs]

    def release_all(
        self, reason: str = "agent shutdown", host_cpu: float | None = None
    ) -> list[Action]:
        """Release every throttled process; safe to call repeatedly."""
        with self._lock, self._journal() as state:
            return [self._release_locked(state, r, reason, host_cpu) for r in list(state.throttled)]

    def __enter__(self) -> Throttle:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release_all("agent shutdown")

    # -- internals ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _journal(self) -> Iterator[JournalState]:
        """The locked journal; keeps ``throttled_now`` current so a scrape reads no file."""
        with self.journal.locked() as state:
            try:
                yield state
            finally:
                self.throttled_now = len(state.throttled)

    def _record(self, action: Action) -> Action:
        self.actions_total[action.action] = self.actions_total.get(action.action, 0) + 1
        try:
            self.audit.write(action)
        except OSError as exc:
            log.error("audit log %s: %s", self.audit.path, exc)
        log.info(
            "throttle %s pid=%d (%s): %s", action.action, action.pid, action.name, action.reason
        )
        return action

    def _action(
        self, kind: str, rec: Throttled | ProcInfo, method: str, reason: str, cpu: float | None
    ) -> Action:
        return self._record(Action(self.wall_clock(), kind, rec.pid, rec.name, method, reason, cpu))

    def _release_locked(
        self, state: JournalState, rec: Throttled, reason: str, cpu: float | None
    ) -> Action:
        try:
            alive = release_record(rec, self.proc_root)
        except OSError as exc:
            # Keep it in the journal: a later release (or restart) will try again.
            return self._action("skip", rec, rec.method, f"release failed: {exc}", cpu)
        state.throttled.remove(rec)
        if not alive:
            return self._action("skip", rec, rec.method, "process exited; dropped", cpu)
        return self._action("release", rec, rec.method, reason, cpu)

    def _drop_gone(self, cpu: float) -> list[Action]:
        """Forget processes that exited (or whose pid was reused); undo their cgroup."""
        with self._journal() as state:
            gone = [
                r for r in state.throttled if not same_process(r.pid, r.create_time, self.proc_root)
            ]
            actions = [self._release_locked(state, r, "process exited", cpu) for r in gone]
            state.exempt = [e for e in state.exempt if same_process(e[0], e[1], self.proc_root)]
            return actions

    def _throttle_top(self, cpu: float) -> list[Action]:
        cfg = self.cfg
        with self._journal() as state:
            busy = {r.pid for r in state.throttled} | {p for p, _ in state.exempt}
            limit = cfg.max_targets - len(state.throttled)
            targets = select_targets(
                self.proc_reader(), cfg, self.agent_pids, exclude=busy, limit=limit
            )
            reason = f"host cpu {cpu:.0f}% >= {cfg.cpu_percent:g}% for {cfg.hold_s:g}s"
            if cfg.dry_run:
                method = self.mechanisms[0].method if self.mechanisms else "none"
                return [self._action("dry_run", p, method, reason, cpu) for p in targets]
            return [self._throttle_one(state, p, reason, cpu) for p in targets]

    def _throttle_one(self, state: JournalState, proc: ProcInfo, reason: str, cpu: float) -> Action:
        errors = []
        for mech in self.mechanisms:
            try:
                rec = mech.plan(proc)
            except ProcessGone:
                return self._action("skip", proc, mech.method, "process exited", cpu)
            state.throttled.append(rec)
            self.journal._save(state)  # write-ahead: on disk before the process is touched
            try:
                mech.apply(rec)
            except (ProcessGone, OSError) as exc:
                with contextlib.suppress(OSError):
                    release_record(rec, self.proc_root)
                state.throttled.remove(rec)
                self.journal._save(state)
                if isinstance(exc, ProcessGone):
                    return self._action("skip", proc, mech.method, "process exited", cpu)
                errors.append(f"{mech.method}: {exc}")
                continue
            return self._action("throttle", proc, mech.method, reason, cpu)
        return self._action("skip", proc, "none", "; ".join(errors) or "no mechanism", cpu)


class ThrottleCollector(Collector):
    """Prometheus view of a Throttle, built from counters it already keeps.

    Register with ``registry.register(ThrottleCollector(throttle))``.
    """

    def __init__(self, throttle: Throttle) -> None:
        self.throttle = throttle

    def collect(self) -> Iterator[Metric]:
        t = self.throttle
        yield GaugeMetricFamily(
            "minerwatch_throttled_processes", "Processes throttled now.", value=t.throttled_now
        )
        actions = CounterMetricFamily(
            "minerwatch_throttle_actions",
            "Throttle actions taken, by kind (throttle, release, dry_run, skip).",
            labels=["action"],
        )
        for kind, n in sorted(t.actions_total.items()):
            actions.add_metric([kind], n)
        yield actions


# --------------------------------------------------------------------------- CLI


def release_from_journal(
    state_dir: Path = DEFAULT_STATE_DIR, pid: int | None = None, proc_root: Path = Path("/proc")
) -> int:
    """Release journaled processes (all, or one pid) without a running agent; returns how
    many were released. Released processes are marked exempt so a running agent does not
    take them again."""
    journal, audit = Journal(state_dir), AuditLog(state_dir / AUDIT)
    count = 0
    with journal.locked() as state:
        for rec in [r for r in state.throttled if pid is None or r.pid == pid]:
            try:
                alive = release_record(rec, proc_root)
            except OSError as exc:
                log.error("pid %d: release failed: %s", rec.pid, exc)
                continue
            state.throttled.remove(rec)
            kind, reason = ("release", "released by operator") if alive else ("skip", "exited")
            if alive:
                count += 1
                state.exempt.append((rec.pid, rec.create_time))
            with contextlib.suppress(OSError):
                audit.write(Action(time.time(), kind, rec.pid, rec.name, rec.method, reason))
    return count


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``minerwatch throttle {release [PID], status}``."""
    p = subparsers.add_parser("throttle", help="inspect or release throttled processes")
    sub = p.add_subparsers(dest="throttle_command", required=True)
    rel = sub.add_parser("release", help="release throttled processes (all, or one PID)")
    rel.add_argument("pid", nargs="?", type=int, help="only this process")
    st = sub.add_parser("status", help="list throttled processes")
    st.add_argument("--json", action="store_true", help="print the journal as JSON")
    for q in (rel, st):
        q.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    return p


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The throttle flags of ``minerwatch serve``; defaults None so the config file wins."""
    g = parser.add_argument_group("auto-throttle")
    g.add_argument("--throttle", action="store_true", default=None, help="enable auto-throttle")
    g.add_argument("--throttle-cpu", type=float, metavar="PCT", help="host CPU trigger (90)")
    g.add_argument("--throttle-hold", type=parse_duration, metavar="DUR", help="hold time (30s)")
    g.add_argument("--throttle-dry-run", action="store_true", default=None, help="only log")


def config_from_args(args: argparse.Namespace, base: ThrottleConfig) -> ThrottleConfig:
    """Overlay the ``serve`` flags on a config (defaults < file < flags)."""
    over: dict[str, Any] = {}
    if getattr(args, "throttle", None):
        over["enabled"] = True
    if getattr(args, "throttle_cpu", None) is not None:
        over["cpu_percent"] = args.throttle_cpu
        over["release_cpu_percent"] = min(base.release_cpu_percent, args.throttle_cpu)
    if getattr(args, "throttle_hold", None) is not None:
        over["hold_s"] = args.throttle_hold
    if getattr(args, "throttle_dry_run", None):
        over["dry_run"] = True
    cfg = replace(base, **over)
    cfg.validate("command line")
    return cfg


def run(args: argparse.Namespace) -> int:
    """Run ``minerwatch throttle ...``; returns the exit code."""
    if args.throttle_command == "release":
        n = release_from_journal(args.state_dir, args.pid)
        print(f"released {n} process{'es' if n != 1 else ''}")
        return 0 if n or args.pid is None else 1
    state = Journal(args.state_dir).load()
    if args.json:
        print(_dump(state))
        return 0
    if not state.throttled:
        print("no throttled processes")
    for r in state.throttled:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.since))
        print(f"{r.pid:>8}  {r.name:<16} {r.method:<8} since {since}")
    return 0
