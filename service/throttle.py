"""Auto-throttle: when host CPU stays high, cap the busiest non-core processes, and never
leave one paused.

The agent calls ``Throttle.update(host_cpu, alert_active)`` every tick. A write-ahead journal
on disk lists every process being throttled before it is touched; a new ``Throttle`` (after a
crash or ``kill -9``) releases whatever the journal lists, and so does
``minerwatch throttle release`` with no agent running. Every action is one JSON line in an
audit log (never a command line).

Example (dry run over an invented table)::

    >>> import tempfile
    >>> from minerwatch.features.proctable import ProcessRecord
    >>> miner = ProcessRecord(4242, 1, "xmrig", "/tmp/.x/xmrig", "www-data", 1.0, 190.0)
    >>> state = Path(tempfile.mkdtemp())
    >>> cfg = ThrottleConfig(enabled=True, hold=0, dry_run=True, state_dir=state)
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
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from minerwatch.features.atomic import atomic_write
from minerwatch.features.errors import InputError
from minerwatch.features.proctable import ProcessRecord, ProcessTable
from minerwatch.service.cgroups import (
    Cgroup1Quota,
    Cgroup2Quota,
    Mechanism,
    ProcessGone,
    SigStop,
    Throttled,
    build_mechanisms,
    is_same,
    release_record,
    still_running,
)
from minerwatch.service.config import DEFAULT_STATE_DIR, load_config
from minerwatch.service.config import ThrottleConfig as ThrottleConfig  # the controller's options
from minerwatch.service.journalfile import Damaged, array_items, dumps_keeping
from minerwatch.service.targets import select_targets

log = logging.getLogger(__name__)

JOURNAL = "throttle-journal.json"
JOURNAL_VERSION = 1
#: The methods a journal record can be undone by.
JOURNAL_METHODS = (SigStop.method, Cgroup2Quota.method, Cgroup1Quota.method)
#: The kernel's largest possible pid (``PID_MAX_LIMIT`` on 64-bit Linux).
PID_MAX = 1 << 22
AUDIT = "throttle-audit.jsonl"
ACTION_KINDS = ("throttle", "release", "dry_run", "skip")


# --------------------------------------------------------------------------- journal and audit


class Exempt(NamedTuple):
    """A process an operator released by hand: not taken again for as long as it runs.
    Who it is as a throttle record says it (``start_ticks`` and ``boot_id`` survive a step
    of the wall clock; None in older journals, which name it by create time alone)."""

    pid: int
    create_time: float
    start_ticks: int | None = None
    boot_id: str | None = None

    def to_json(self) -> list[object]:
        head: list[object] = [self.pid, self.create_time]
        return head if self.start_ticks is None else [*head, self.start_ticks, self.boot_id]

    def running(self, proc_root: Path = Path("/proc")) -> bool:
        return still_running(*self, proc_root)


@dataclass
class JournalState:
    """What is throttled now, and what an operator released by hand (not to be re-taken);
    ``damaged``: entries that do not check, written back as they were (never acted on)."""

    throttled: list[Throttled] = field(default_factory=list)
    exempt: list[Exempt] = field(default_factory=list)
    damaged: list[Damaged] = field(default_factory=list)


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
                        self._save_after(state)
            finally:
                self._held = None
                os.close(fd)

    def load(self) -> JournalState:
        try:
            text = self.path.read_text()
            raw = json.loads(text)
        except FileNotFoundError:
            return JournalState()
        except (OSError, ValueError) as exc:
            # A journal we cannot read must not be silently dropped: keep it for a human.
            raise InputError(str(self.path), None, "a throttle journal (JSON)", str(exc)) from exc
        return parse_journal(raw, str(self.path), text)

    def _save(self, state: JournalState) -> None:
        atomic_write(self.path, _dump(state), mode=0o600)

    def _save_after(self, state: JournalState) -> None:
        """Save what changed once the lock is released. A throttle is saved before the process
        is touched (``_save``, which raises), so what is left to save here is releases and
        exemptions: when the disk refuses it (full), the journal on disk still lists processes
        already released, which a later release checks and skips. That must not turn into a
        crash, or an agent restarted on a full disk would exit before it could run at all."""
        try:
            self._save(state)
        except OSError as exc:
            log.error(
                "throttle journal %s not updated (%s): it may still list released processes",
                self.path,
                exc.strerror or exc,
            )


#: What a journal must look like, for the message when it does not.
JOURNAL_SHAPE = (
    "a throttle journal: an object with a 'throttled' list of {pid, create_time, method, ...} "
    "and an optional 'exempt' list of [pid, create_time(, start_ticks, boot_id)]"
)


class _Shape(Exception):
    """What was found where the journal's shape was broken (a path into it, and the value)."""


def _kind(value: object) -> str:
    """A value as the message shows it: its JSON type and a short ``repr``.

    >>> _kind("abc"), _kind([1, 2]), _kind(None)
    ("a string 'abc'", 'an array [1, 2]', 'null')
    """
    if value is None:
        return "null"
    names = {bool: "a boolean", str: "a string", list: "an array", dict: "an object"}
    kind = names.get(type(value), "a number")
    text = repr(value)
    return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"


def _get_pid(value: object, where: str, lowest: int = 1) -> int:
    """A pid that can be signalled (``lowest`` 1: never 0 or -1, a group or every process)."""
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= PID_MAX:
        raise _Shape(f"{where} is {_kind(value)} (a pid is a whole number {lowest}..{PID_MAX})")
    return value


def _get_time(value: object, where: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise _Shape(f"{where} is {_kind(value)} (expected seconds since the epoch)")
    return float(value)


def _get_text(value: object, where: str, *, optional: bool = False) -> str | None:
    if isinstance(value, str) or (optional and value is None):
        return value
    raise _Shape(f"{where} is {_kind(value)} (expected a string)")


def _get_record(d: object, where: str) -> Throttled:
    if not isinstance(d, dict):
        raise _Shape(
            f"{where} is {_kind(d)} (expected an object {{pid, create_time, method, ...}})"
        )
    for key in ("pid", "create_time", "method"):
        if key not in d:
            raise _Shape(f"{where} has no {key!r}")
    method = d["method"]
    ticks = d.get("start_ticks")
    if ticks is not None and (isinstance(ticks, bool) or not isinstance(ticks, int) or ticks < 0):
        raise _Shape(f"{where}.start_ticks is {_kind(ticks)} (expected clock ticks since boot)")
    if method not in JOURNAL_METHODS:
        raise _Shape(f"{where}.method is {_kind(method)} (one of {', '.join(JOURNAL_METHODS)})")
    cgroup_dir = _get_text(d.get("cgroup_dir"), f"{where}.cgroup_dir", optional=True)
    original_dir = _get_text(d.get("original_dir"), f"{where}.original_dir", optional=True)
    if method != SigStop.method and (cgroup_dir is None or original_dir is None):
        raise _Shape(f"{where} is a {method} record without cgroup_dir and original_dir")
    return Throttled(
        pid=_get_pid(d["pid"], f"{where}.pid"),
        create_time=_get_time(d["create_time"], f"{where}.create_time"),
        name=_get_text(d.get("name", ""), f"{where}.name") or "",
        method=method,
        since=_get_time(d.get("since", 0.0), f"{where}.since"),
        cgroup_dir=cgroup_dir,
        original_dir=original_dir,
        start_ticks=ticks,
        boot_id=_get_text(d.get("boot_id"), f"{where}.boot_id", optional=True),
    )


def _get_exempt(e: object, where: str) -> Exempt:
    if not isinstance(e, list) or len(e) not in (2, 4):
        raise _Shape(f"{where} is {_kind(e)} (expected [pid, create_time(, start_ticks, boot_id)])")
    # Only compared, never signalled: any pid the kernel could have given is harmless here.
    pid, created = _get_pid(e[0], f"{where}[0]", lowest=0), _get_time(e[1], f"{where}[1]")
    if len(e) == 2:
        return Exempt(pid, created)
    ticks = e[2]
    if isinstance(ticks, bool) or not isinstance(ticks, int) or ticks < 0:
        raise _Shape(f"{where}[2] is {_kind(ticks)} (expected clock ticks since boot)")
    return Exempt(pid, created, ticks, _get_text(e[3], f"{where}[3]", optional=True))


def parse_journal(raw: object, path: str, text: str | None = None) -> JournalState:
    """The journal's decoded JSON (``text``: as it is in the file), checked before anything
    acts on it. A journal of another shape is an InputError naming the file (the file itself
    is left alone for a human); one entry of a wrong shape is ``damaged``: named, kept as it
    is in the file, and the valid entries still work.

    >>> parse_journal({"throttled": [], "exempt": [[42, 1.5]]}, "j.json").exempt
    [Exempt(pid=42, create_time=1.5, start_ticks=None, boot_id=None)]
    >>> try:
    ...     parse_journal({"throttled": "abc"}, "j.json")
    ... except InputError as exc:
    ...     print(exc.path, "-", exc.got)
    j.json - 'throttled' is a string 'abc'
    >>> print(parse_journal({"throttled": [7]}, "j.json").damaged[0].why)
    throttled[0] is a number 7 (expected an object {pid, create_time, method, ...})
    """
    try:
        if not isinstance(raw, dict):
            raise _Shape(f"{_kind(raw)} at the top")
        if raw.get("version", JOURNAL_VERSION) != JOURNAL_VERSION:
            raise _Shape(f"version {_kind(raw['version'])} (this agent reads {JOURNAL_VERSION})")
        if "throttled" not in raw:
            keys = ", ".join(map(repr, raw)) or "none"
            raise _Shape(f"an object without 'throttled' (its keys: {keys})")
        throttled, exempt = raw["throttled"], raw.get("exempt", [])
        if not isinstance(throttled, list):
            raise _Shape(f"'throttled' is {_kind(throttled)}")
        if not isinstance(exempt, list):
            raise _Shape(f"'exempt' is {_kind(exempt)}")
    except _Shape as exc:
        raise InputError(path, None, JOURNAL_SHAPE, str(exc)) from None
    state = JournalState()
    for key, items in (("throttled", throttled), ("exempt", exempt)):
        texts = array_items(text, key) if text is not None else []
        for i, item in enumerate(items):
            try:
                if key == "throttled":
                    state.throttled.append(_get_record(item, f"{key}[{i}]"))
                else:
                    state.exempt.append(_get_exempt(item, f"{key}[{i}]"))
            except _Shape as exc:
                kept = texts[i] if len(texts) == len(items) else json.dumps(item)
                state.damaged.append(Damaged(path, f"{key}[{i}]", str(exc), kept))
    return state


def _dump(state: JournalState) -> str:
    """The journal's text; damaged entries go back as they were, ahead of their list."""
    kept = {
        key: [d.raw for d in state.damaged if d.where.startswith(key + "[")]
        for key in ("throttled", "exempt")
    }
    doc = {
        "version": JOURNAL_VERSION,
        "throttled": [r.to_json() for r in state.throttled],
        "exempt": [e.to_json() for e in state.exempt],
    }
    return dumps_keeping(doc, kept)


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
        proc_reader: Callable[[], Sequence[ProcessRecord]] | None = None,
        mechanisms: Sequence[Mechanism] | None = None,
        proc_root: Path = Path("/proc"),
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.agent_pids = {os.getpid()} if agent_pids is None else set(agent_pids)
        self.clock = clock
        self.wall_clock = wall_clock
        self.proc_root = proc_root
        # Lifetime CPU for processes it has not seen yet: a running miner is found at once.
        self.proc_reader = proc_reader or ProcessTable(proc_root, lifetime_cpu_for_unseen=True).read
        self._mechanisms = list(mechanisms) if mechanisms is not None else None
        state_dir = cfg.state_dir or DEFAULT_STATE_DIR
        self.journal = Journal(state_dir)
        self.audit = AuditLog(state_dir / AUDIT)
        self.actions_total: dict[str, int] = dict.fromkeys(ACTION_KINDS, 0)
        self._lock = threading.RLock()
        self.throttled_now = 0
        self._over_since: float | None = None
        self._under_since: float | None = None
        self._reported: set[Damaged] = set()
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
            release_level = cfg.release_cpu_percent
            assert release_level is not None  # ThrottleConfig fills it in from the trigger
            hot = host_cpu_percent >= cfg.cpu_percent and (alert_active or not cfg.only_when_alert)
            if hot:
                self._under_since = None
                self._over_since = now if self._over_since is None else self._over_since
                if now - self._over_since >= cfg.hold:
                    actions += self._throttle_top(host_cpu_percent)
                    self._over_since = now  # another full hold before taking more
            elif host_cpu_percent < release_level:
                self._over_since = None
                if self.throttled():
                    self._under_since = now if self._under_since is None else self._under_since
                    if now - self._under_since >= cfg.release_hold:
                        reason = f"host cpu below {release_level:g}%"
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
            for bad in state.damaged:
                if bad not in self._reported:  # once: the journal is read at every tick
                    self._reported.add(bad)
                    log.error("throttle journal %s", bad)
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
        self, kind: str, rec: Throttled | ProcessRecord, method: str, reason: str, cpu: float | None
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
            gone = [r for r in state.throttled if not is_same(r, self.proc_root)]
            actions = [self._release_locked(state, r, "process exited", cpu) for r in gone]
            state.exempt = [e for e in state.exempt if e.running(self.proc_root)]
            return actions

    def _throttle_top(self, cpu: float) -> list[Action]:
        cfg = self.cfg
        with self._journal() as state:
            busy = {r.pid for r in state.throttled} | {e.pid for e in state.exempt}
            limit = cfg.max_targets - len(state.throttled)
            targets = select_targets(
                self.proc_reader(), cfg, self.agent_pids, exclude=busy, limit=limit
            )
            reason = f"host cpu {cpu:.0f}% >= {cfg.cpu_percent:g}% for {cfg.hold:g}s"
            if cfg.dry_run:
                method = self.mechanisms[0].method if self.mechanisms else "none"
                return [self._action("dry_run", p, method, reason, cpu) for p in targets]
            return [self._throttle_one(state, p, reason, cpu) for p in targets]

    def _throttle_one(
        self, state: JournalState, proc: ProcessRecord, reason: str, cpu: float
    ) -> Action:
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


# --------------------------------------------------------------------------- CLI


#: What ``release_journaled`` did with one journal record.
RELEASED, EXITED, FAILED = "released", "exited", "failed"


def release_journaled(
    state_dir: Path = DEFAULT_STATE_DIR,
    pid: int | None = None,
    proc_root: Path = Path("/proc"),
    damaged: list[Damaged] | None = None,
) -> list[tuple[Throttled, str, str]]:
    """Release journaled processes (all, or one pid) without a running agent: each record
    with what became of it (``RELEASED``, ``EXITED``: dropped, nothing to release; ``FAILED``:
    kept for a later release) and the error of a failure. Released processes are marked
    exempt so a running agent does not take them again. Without a journal nothing was ever
    throttled: nothing is created. Entries of a wrong shape are left as they are, and added
    to ``damaged``."""
    journal, audit = Journal(state_dir), AuditLog(state_dir / AUDIT)
    if not journal.path.exists():
        return []
    done: list[tuple[Throttled, str, str]] = []
    with journal.locked() as state:
        if damaged is not None:
            damaged.extend(state.damaged)
        for rec in [r for r in state.throttled if pid is None or r.pid == pid]:
            try:
                alive = release_record(rec, proc_root)
            except OSError as exc:
                done.append((rec, FAILED, str(exc)))
                continue
            state.throttled.remove(rec)
            kind, reason = ("release", "released by operator") if alive else ("skip", "exited")
            if alive:
                state.exempt.append(Exempt(rec.pid, rec.create_time, rec.start_ticks, rec.boot_id))
            done.append((rec, RELEASED if alive else EXITED, ""))
            with contextlib.suppress(OSError):
                audit.write(Action(time.time(), kind, rec.pid, rec.name, rec.method, reason))
    return done


def release_from_journal(
    state_dir: Path = DEFAULT_STATE_DIR, pid: int | None = None, proc_root: Path = Path("/proc")
) -> int:
    """:func:`release_journaled`, counting the processes released."""
    return sum(what == RELEASED for _, what, _ in release_journaled(state_dir, pid, proc_root))


def _local(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def run(args: argparse.Namespace) -> int:
    """Run ``minerwatch throttle status|release [PID]``; works with no agent running.

    The journal is in ``--state-dir``, else where the config (``--config``) keeps it. A PID
    that is not in the journal is bad input (InputError, exit code 2); a release that failed
    exits 1 (the record is kept for another try). Every record is named with what was done.
    """
    state_dir: Path = (
        args.state_dir or load_config(args.config).throttle.state_dir or DEFAULT_STATE_DIR
    )
    if args.throttle_command == "release":
        damaged: list[Damaged] = []
        done = release_journaled(state_dir, args.pid, damaged=damaged)
        if args.pid is not None and not done:
            _say_damaged(damaged)
            raise InputError(
                str(state_dir / JOURNAL),
                None,
                "the PID of a throttled process (see `minerwatch throttle status`)",
                str(args.pid),
            )
        for rec, what, error in done:
            what_it_was = f"pid {rec.pid} ({rec.name}, {rec.method} since {_local(rec.since)})"
            if what == RELEASED:
                print(f"released {what_it_was}")
            elif what == EXITED:
                print(
                    f"{what_it_was} had exited (the pid is not that process any more): "
                    "dropped from the journal"
                )
            else:
                print(
                    f"minerwatch: error: could not release {what_it_was}: {error}", file=sys.stderr
                )
        n = sum(what == RELEASED for _, what, _ in done)
        print(f"released {n} process{'es' if n != 1 else ''}")
        if any(what == FAILED for _, what, _ in done):
            _say_damaged(damaged)
            return 1
        return _say_damaged(damaged)
    state = Journal(state_dir).load()
    if args.json:
        print(_dump(state))
        return _say_damaged(state.damaged)
    if not state.throttled:
        print("no throttled processes")
    else:
        print(f"{'PID':>8}  {'NAME':<16} {'METHOD':<8} SINCE (local time)")
    for r in state.throttled:
        gone = "" if is_same(r) else "  (exited: pid is not that process)"
        print(f"{r.pid:>8}  {r.name:<16} {r.method:<8} since {_local(r.since)}{gone}")
    return _say_damaged(state.damaged)


def _say_damaged(damaged: Sequence[Damaged]) -> int:
    """Name each damaged entry on stderr; the exit code: 2 if there was one (bad input)."""
    for bad in damaged:
        print(f"minerwatch: error: {bad}", file=sys.stderr)
    return 2 if damaged else 0
