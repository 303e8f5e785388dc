"""Opt-in network isolation: cut a suspect process (or the whole host) off the network with
nftables, and always be able to undo it.

Everything lives in one dedicated table, ``inet minerwatch``, so releasing is deleting that
table and nothing else on the host's firewall is touched. The table is a pure function of a
journal (:func:`ruleset`): every change writes the journal first (atomically, under a lock),
then loads the whole table in one ``nft -f -`` transaction. A release after a crash reads the
journal, and ``release --all`` deletes the table even when the journal is lost.

A process is matched by its cgroup v2 path when the host has one and the cgroup holds neither
the whole host nor this command, else by its user id (never root's: that would cut off sshd
and the agent). Host isolation drops everything but loopback, SSH from the sources the
operator names, and Prometheus scrapes of the agent's exporter port.

Example (the ruleset is plain text, so dry runs and tests read it)::

    >>> ruleset([Isolation("process", pid=4242, create_time=1.0, uid=33)]).splitlines()[5].strip()
    'meta skuid 33 counter drop comment "pid 4242"'
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from minerwatch.features.atomic import atomic_write
from minerwatch.features.errors import InputError
from minerwatch.features.proctable import (
    ProcessTable,
    parse_proc_cgroup,
    parse_status_uid,
    same_start,
)
from minerwatch.service.cgroups import identify, still_running
from minerwatch.service.config import DEFAULT_DATA_DIR, agent_files_config
from minerwatch.service.journalfile import Damaged, array_items, dumps_keeping

log = logging.getLogger(__name__)

TABLE = "minerwatch"
FAMILY = "inet"
JOURNAL = "isolate-journal.json"
AUDIT = "isolate-audit.jsonl"
SSH_PORT = 22
#: ``Isolation.by`` of what the agent isolated on its own (it releases only those).
AGENT = "agent"
_NFT_TIMEOUT_S = 30.0


#: The kernel's largest possible pid (``PID_MAX_LIMIT`` on 64-bit Linux).
PID_MAX = 1 << 22


def _kind(value: object) -> str:
    """A journal value as an error shows it: its JSON type and a short ``repr``.

    >>> _kind("65534"), _kind(None)
    ("a string '65534'", 'null')
    """
    if value is None:
        return "null"
    names = {bool: "a boolean", str: "a string", list: "an array", dict: "an object"}
    text = repr(value)
    return f"{names.get(type(value), 'a number')} {text if len(text) <= 60 else text[:57] + '...'}"


@dataclass(frozen=True)
class Isolation:
    """One journaled isolation: a process (matched by ``cgroup`` or ``uid``) or the host."""

    kind: str  # "process" or "host"
    pid: int = 0
    create_time: float = 0.0
    uid: int | None = None
    cgroup: str = ""  # cgroup v2 path (relative to the cgroup2 mount); "" = match the uid
    allow_ssh_from: tuple[str, ...] = ()
    ssh_port: int = SSH_PORT
    exporter_port: int = 0
    since: float = 0.0
    by: str = "operator"  # or AGENT: what the agent cut off it releases on its own
    #: Who the process is after a step of the wall clock (which moves every create time):
    #: its start in clock ticks since boot, and the boot. None in older journals.
    start_ticks: int | None = None
    boot_id: str | None = None

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @staticmethod
    def from_json(d: object, where: str = "entry") -> Isolation:
        """An entry as the journal holds it, every field checked (a missing one takes its
        default): a value nft would refuse, or read as another rule, is a ValueError saying
        which field of ``where`` holds what, before any table is loaded from it."""
        if not isinstance(d, dict):
            raise ValueError(f"{where} is {_kind(d)} (expected an object)")
        kind = d.get("kind")
        if kind not in ("process", "host"):
            raise ValueError(f"{where}.kind is {_kind(kind)} (expected 'process' or 'host')")

        def whole(key: str, low: int, high: int, default: int) -> int:
            value = d.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(
                    f"{where}.{key} is {_kind(value)} (expected a whole number {low}..{high})"
                )
            return value

        def seconds(key: str) -> float:
            value = d.get(key, 0.0)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"{where}.{key} is {_kind(value)} (expected seconds since 1970)")
            return float(value)

        cgroup = d.get("cgroup") or ""
        if not isinstance(cgroup, str) or any(c in cgroup for c in '"\\\n'):
            raise ValueError(f"{where}.cgroup is {_kind(cgroup)} (expected a cgroup v2 path)")
        uid = d.get("uid")
        if uid is not None or (kind == "process" and not cgroup):
            uid = whole("uid", 0, 2**32 - 2, -1)
        sources = d.get("allow_ssh_from") or []
        if not isinstance(sources, list) or not all(isinstance(x, str) for x in sources):
            raise ValueError(f"{where}.allow_ssh_from is {_kind(sources)} (expected CIDRs)")
        try:
            _networks(sources)
        except ValueError as exc:
            raise ValueError(f"{where}.allow_ssh_from: {exc}") from None
        if kind == "host" and not sources:
            raise ValueError(f"{where}.allow_ssh_from is empty (SSH would be cut off)")
        by = d.get("by", "operator")
        if by not in ("operator", AGENT):
            raise ValueError(f"{where}.by is {_kind(by)} (expected 'operator' or '{AGENT}')")
        ticks = d.get("start_ticks")
        if ticks is not None:
            ticks = whole("start_ticks", 0, 2**63 - 1, 0)
        boot = d.get("boot_id")
        if boot is not None and not isinstance(boot, str):
            raise ValueError(f"{where}.boot_id is {_kind(boot)} (expected a string)")
        return Isolation(
            kind=str(kind),
            pid=whole("pid", 1 if kind == "process" else 0, PID_MAX, 0),
            create_time=seconds("create_time"),
            uid=uid,
            cgroup=cgroup,
            allow_ssh_from=tuple(sources),
            ssh_port=whole("ssh_port", 1, 65535, SSH_PORT),
            exporter_port=whole("exporter_port", 0, 65535, 0),
            since=seconds("since"),
            by=str(by),
            start_ticks=ticks,
            boot_id=boot,
        )

    def describe(self) -> str:
        if self.kind == "host":
            return (
                f"host: only loopback, ssh (port {self.ssh_port}) from "
                f"{', '.join(self.allow_ssh_from)} and scrapes of port {self.exporter_port}"
            )
        how = f'cgroup "{self.cgroup}"' if self.cgroup else f"uid {self.uid}"
        return f"pid {self.pid}: outbound traffic of {how} dropped"


# --------------------------------------------------------------------------- the ruleset


def _networks(cidrs: Sequence[str]) -> tuple[list[str], list[str]]:
    """IPv4 and IPv6 networks, normalised; raises ValueError on a bad one."""
    v4: list[str] = []
    v6: list[str] = []
    for text in cidrs:
        net = ipaddress.ip_network(text, strict=False)
        (v4 if net.version == 4 else v6).append(str(net))
    return v4, v6


def _process_rule(entry: Isolation) -> str:
    if entry.cgroup:
        level = len([p for p in entry.cgroup.split("/") if p])
        match = f'socket cgroupv2 level {level} "{entry.cgroup.strip("/")}"'
    else:
        match = f"meta skuid {entry.uid}"
    return f'{match} counter drop comment "pid {entry.pid}"'


def ruleset(entries: Sequence[Isolation], table: str = TABLE) -> str:
    """The ``nft -f`` script that makes table ``inet <table>`` hold exactly ``entries``.

    It first creates and deletes the table, so loading it replaces any old one in the same
    transaction; with no entries that is all it does (everything released). Process rules
    come first in ``output`` so a suspect cannot use loopback either (a local pool proxy);
    host isolation turns both chains' policy to drop. What leaves from the SSH and exporter
    ports are answers only (``ct state established``): a process that dials out from port
    10091 (free whenever the agent is down) is not an exporter answering a scrape.
    """
    head = f"table {FAMILY} {table} {{}}\ndelete table {FAMILY} {table}\n"
    if not entries:
        return head
    hosts = [e for e in entries if e.kind == "host"]
    policy = "drop" if hosts else "accept"
    out = [_process_rule(e) for e in entries if e.kind == "process"]
    inp: list[str] = []
    if hosts:
        inp.append('iif "lo" accept')
        out.append('oif "lo" accept')
        for h in hosts:
            v4, v6 = _networks(h.allow_ssh_from)
            for family, nets in (("ip", v4), ("ip6", v6)):
                if nets:
                    inp.append(
                        f"{family} saddr {{ {', '.join(nets)} }} tcp dport {h.ssh_port} accept"
                    )
                    out.append(
                        f"{family} daddr {{ {', '.join(nets)} }} tcp sport {h.ssh_port} "
                        "ct state established accept"
                    )
            if h.exporter_port:
                inp.append(f"tcp dport {h.exporter_port} accept")
                out.append(f"tcp sport {h.exporter_port} ct state established accept")
    lines = [f"table {FAMILY} {table} {{"]
    for name, hook, rules in (("input", "input", inp), ("output", "output", out)):
        if not rules and not hosts:
            continue
        lines.append(f"    chain {name} {{")
        lines.append(f"        type filter hook {hook} priority filter; policy {policy};")
        lines.extend(f"        {r}" for r in rules)
        lines.append("    }")
    lines.append("}")
    return head + "\n".join(lines) + "\n"


def apply_ruleset(script: str, nft: str = "nft") -> None:
    """Load ``script`` in one nftables transaction (all of it or none of it)."""
    exe = shutil.which(nft)
    if exe is None:
        raise InputError(nft, None, "nftables' nft command (apt-get install nftables)", "none")
    try:
        done = subprocess.run(
            [exe, "-f", "-"],
            input=script,
            capture_output=True,
            text=True,
            timeout=_NFT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise OSError(f"nft did not answer within {_NFT_TIMEOUT_S:g}s") from exc
    if done.returncode != 0:
        why = done.stderr.strip().splitlines()[0] if done.stderr.strip() else "no message"
        if "Operation not permitted" in done.stderr:
            raise InputError(
                "nft", None, "root or CAP_NET_ADMIN (deploy/minerwatch-isolate.conf)", why
            )
        raise OSError(f"nft -f - failed ({done.returncode}): {why}")


def table_present(nft: str = "nft", table: str = TABLE) -> bool | None:
    """Whether table ``inet <table>`` is loaded; None if nft cannot tell (missing, denied)."""
    exe = shutil.which(nft)
    if exe is None:
        return None
    try:
        done = subprocess.run(
            [exe, "list", "table", FAMILY, table],
            capture_output=True,
            text=True,
            timeout=_NFT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None
    if done.returncode == 0:
        return True
    return False if "No such file" in done.stderr else None


# --------------------------------------------------------------------------- journal


def table_for(state_dir: Path) -> str:
    """The nftables table of the journal in ``state_dir``: ``minerwatch`` for the default data
    folder (``/var/lib/minerwatch``), else ``minerwatch-`` and 12 hex digits of the folder's
    sha256, so that two agents (or an agent and a hand-run ``isolate --data-dir``) on one
    host never load, or delete, each other's isolations.

    >>> table_for(Path("/var/lib/minerwatch/isolate")), len(table_for(Path("/srv/x/isolate")))
    ('minerwatch', 23)
    """
    where = state_dir.resolve()
    if where == (DEFAULT_DATA_DIR / "isolate").resolve():
        return TABLE
    return f"{TABLE}-{hashlib.sha256(str(where).encode()).hexdigest()[:12]}"


class Journal:
    """The isolations in force, one JSON file rewritten atomically under a lock file.

    ``table`` is the nftables table its isolations are loaded into: the one the journal
    names, else (a journal written before tables were per data folder, listing something)
    ``minerwatch``, else the folder's own (:func:`table_for`). ``damaged``: the entries of
    the latest ``load`` that do not check; ``save`` writes them back as they were.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / JOURNAL
        self.table = table_for(state_dir)
        self.damaged: list[Damaged] = []

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """An exclusive lock over load-change-save (the agent and a hand-run command)."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.state_dir / (JOURNAL + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def load(self) -> list[Isolation]:
        """The valid entries; those of a wrong shape go to ``damaged`` (kept, never loaded
        into the table: nft might refuse them, or read them as other rules)."""
        self.damaged = []
        try:
            text = self.path.read_text()
            raw = json.loads(text)
            if not isinstance(raw, dict) or not isinstance(raw.get("isolated"), list):
                raise ValueError(f"{_kind(raw)[:70]} (expected an object with an 'isolated' list)")
            table = raw.get("table", TABLE if raw["isolated"] else self.table)
            if not isinstance(table, str) or not (
                table == TABLE
                or (table.startswith(TABLE + "-") and len(table) == len(TABLE) + 13)
                and all(c in "0123456789abcdef" for c in table[len(TABLE) + 1 :])
            ):
                raise ValueError(f"'table' is {_kind(table)} (expected minerwatch[-12 hex digits])")
            texts = array_items(text, "isolated")
            entries = []
            for i, d in enumerate(raw["isolated"]):
                try:
                    entries.append(Isolation.from_json(d, f"isolated[{i}]"))
                except ValueError as exc:
                    kept = texts[i] if len(texts) == len(raw["isolated"]) else json.dumps(d)
                    note = "left out of every load of the table (its rule cannot be written)"
                    self.damaged.append(
                        Damaged(str(self.path), f"isolated[{i}]", str(exc), kept, note)
                    )
            self.table = table
            return entries
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            # Never drop a journal silently: it says what is blocked. `release --all` clears it.
            raise InputError(
                str(self.path),
                None,
                "an isolation journal (JSON with 'isolated'); `isolate release --all` clears it",
                str(exc),
            ) from exc

    def save(self, entries: Sequence[Isolation]) -> None:
        """Write ``entries`` (and the damaged entries of the latest load, as they were)."""
        doc: dict[str, object] = {"version": 1, "isolated": [e.to_json() for e in entries]}
        if entries or self.damaged:
            doc["table"] = self.table
        kept = {"isolated": [d.raw for d in self.damaged]}
        atomic_write(self.path, dumps_keeping(doc, kept), mode=0o600)


def _audit(state_dir: Path, action: str, entry: Isolation | None, reason: str) -> None:
    """One fsynced JSON line per change: what was cut off, when, and why."""
    line = {"ts": time.time(), "action": action, "reason": reason}
    if entry is not None:
        line.update(kind=entry.kind, pid=entry.pid, match=entry.describe())
    fd = os.open(state_dir / AUDIT, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(line, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- planning


def cgroup2_mount(mounts: str) -> Path | None:
    """Where the unified (v2) hierarchy is mounted, from ``/proc/self/mounts`` text.

    >>> cgroup2_mount("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\\n")
    PosixPath('/sys/fs/cgroup')
    """
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "cgroup2":
            return Path(parts[1])
    return None


def _inside(path: str, parent: str) -> bool:
    parent = parent.rstrip("/")
    return path == parent or path.startswith(parent + "/") or not parent


def plan_process(
    pid: int, by: str = "auto", proc_root: Path = Path("/proc"), now: float | None = None
) -> Isolation:
    """The isolation of one process: its cgroup v2 path if that is narrow, else its uid."""
    rec = ProcessTable(proc_root).lookup(pid)
    if rec is None:
        raise InputError("--process", None, "the PID of a running process", str(pid))
    where = f"pid {pid}"
    try:
        uid = parse_status_uid((proc_root / str(pid) / "status").read_text())
        cgroups = parse_proc_cgroup((proc_root / str(pid) / "cgroup").read_text())
        mine = parse_proc_cgroup((proc_root / "self" / "cgroup").read_text()).get("", "/")
        mounts = (proc_root / "self" / "mounts").read_text()
    except FileNotFoundError as exc:
        raise InputError("--process", None, "the PID of a running process", str(pid)) from exc
    who = identify(rec, proc_root)
    ticks, boot = who.get("start_ticks"), who.get("boot_id")
    if not who or not still_running(pid, rec.create_time, ticks, boot, proc_root):
        # what was read above is the suspect's
        raise InputError("--process", None, "a running process", f"pid {pid} exited")
    # nft resolves cgroup paths under /sys/fs/cgroup: a hybrid host's "unified" will not do
    v2 = cgroup2_mount(mounts) == Path("/sys/fs/cgroup") and "" in cgroups
    path = cgroups.get("", "/")
    quotable = not any(c in path for c in '"\\\n')
    narrow = v2 and quotable and path.strip("/") != "" and not _inside(mine, path)
    if by == "cgroup" and not narrow:
        raise InputError(
            "--by cgroup",
            None,
            f"{where} in its own cgroup v2 (not the root, not minerwatch's own)",
            f"{path!r}" if v2 else "no cgroup v2 on this host",
        )
    since = time.time() if now is None else now
    if narrow and by != "uid":
        return Isolation("process", pid, rec.create_time, uid, path, since=since, **who)
    if uid is None or uid == 0 or uid == os.getuid():
        raise InputError(
            "--process",
            None,
            f"{where} to run as a user of its own, to be matched by uid (it shares root's or "
            "minerwatch's; isolate the host with --host instead)",
            f"uid {uid}",
        )
    return Isolation("process", pid, rec.create_time, uid, "", since=since, **who)


def plan_host(
    allow_ssh_from: Sequence[str], exporter_port: int, ssh_port: int = SSH_PORT
) -> Isolation:
    """Host isolation; refuses to lock out the SSH session it is run from, or to keep open
    a port that cannot exist (nft would refuse the whole ruleset; a dry run would show it)."""
    if isinstance(ssh_port, bool) or not 1 <= ssh_port <= 65535:
        raise InputError("--ssh-port", None, "a TCP port from 1 to 65535", str(ssh_port))
    if not allow_ssh_from:
        raise InputError(
            "--allow-ssh-from", None, "at least one CIDR to keep SSH from (e.g. 10.0.0.0/8)"
        )
    try:
        nets = [ipaddress.ip_network(c, strict=False) for c in allow_ssh_from]
    except ValueError as exc:
        raise InputError("--allow-ssh-from", None, "CIDRs like 10.0.0.0/8", str(exc)) from exc
    client = os.environ.get("SSH_CONNECTION", "").split()
    if client:
        try:
            addr = ipaddress.ip_address(client[0])
        except ValueError:
            addr = None
        if addr is not None and not any(addr in n for n in nets if n.version == addr.version):
            raise InputError(
                "--allow-ssh-from",
                None,
                f"a CIDR holding this SSH session's client {addr} (it would be cut off)",
                ", ".join(allow_ssh_from),
            )
    return Isolation(
        "host",
        allow_ssh_from=tuple(str(n) for n in nets),
        ssh_port=ssh_port,
        exporter_port=exporter_port,
        since=time.time(),
    )


# --------------------------------------------------------------------------- actions


def isolate(
    state_dir: Path,
    entry: Isolation,
    proc_root: Path = Path("/proc"),
    reason: str = "requested by operator",
    damaged: list[Damaged] | None = None,
) -> Isolation:
    """Journal ``entry`` (write-ahead), then load the table; undone if loading fails.
    Returns the entry in force: an operator's isolation of the same process stays the
    operator's when the agent asks for it too (else the agent would release it on shutdown).

    The process is checked against its start time after the journal is written and before
    the table is loaded, so a pid reused meanwhile is never cut off for the old suspect.
    Entries of a wrong shape are kept as they are (not loaded) and added to ``damaged``.
    """
    journal = Journal(state_dir)
    with journal.locked():
        entries = journal.load()
        if damaged is not None:
            damaged.extend(journal.damaged)
        held = [e for e in entries if _same_target(e, entry) and e.by != AGENT]
        if entry.by == AGENT and held:
            return held[0]
        wanted = _merge(entries, entry)
        script = ruleset(wanted, journal.table)  # a bad entry fails here, before any write
        journal.save(wanted)
        if entry.kind == "process" and not _current(entry, proc_root):
            journal.save(entries)
            raise InputError("--process", None, "a running process", f"pid {entry.pid} exited")
        try:
            apply_ruleset(script)
        except BaseException:
            journal.save(entries)
            raise
        _audit(state_dir, "isolate", entry, reason)
    return entry


def _current(entry: Isolation, proc_root: Path) -> bool:
    """The host, or the process still running (by start ticks and boot when recorded, which
    a step of the wall clock does not move; else by create time)."""
    if entry.kind == "host":
        return True
    return still_running(entry.pid, entry.create_time, entry.start_ticks, entry.boot_id, proc_root)


def _same_target(a: Isolation, b: Isolation) -> bool:
    """The same host isolation, or the same process: its pid *and* start (an entry of an
    exited process whose pid another one took is another target)."""
    if a.kind != b.kind:
        return False
    if a.kind == "host":
        return True
    if a.start_ticks is not None and b.start_ticks is not None and a.boot_id and b.boot_id:
        return (a.pid, a.start_ticks, a.boot_id) == (b.pid, b.start_ticks, b.boot_id)
    return a.pid == b.pid and same_start(a.create_time, b.create_time)


def _merge(entries: Sequence[Isolation], entry: Isolation) -> list[Isolation]:
    """``entries`` with ``entry`` replacing one for the same process (or the host).

    Entries of processes that exited stay, also when their pid now names another process:
    a miner respawned by cron under the same uid (or in the same unit's cgroup) stays cut
    off until an operator releases it.
    """
    return [e for e in entries if not _same_target(e, entry)] + [entry]


def release(
    state_dir: Path,
    pid: int | None = None,
    host: bool = False,
    force: bool = False,
    by: str | None = None,
    reason: str = "released by operator",
    damaged: list[Damaged] | None = None,
) -> list[Isolation]:
    """Release the matching isolations (all without ``pid``/``host``); returns them.

    The table is reloaded without them before the journal forgets them, so a failure leaves
    both as they were. ``force`` deletes the whole table even when the journal is unreadable.
    ``by`` keeps the choice to what that party isolated (the agent releases only its own).
    Entries of a wrong shape stay as they are (``force`` drops them too), added to ``damaged``.
    """
    journal = Journal(state_dir)
    if force:
        with journal.locked():
            try:
                gone = journal.load()
            except InputError:
                gone = []
            if table_present(table=journal.table) is not False or gone:
                apply_ruleset(ruleset([], journal.table))
            journal.damaged = []
            journal.save([])
            for e in gone:
                _audit(state_dir, "release", e, "released by operator (--all)")
        return gone
    if not journal.path.exists():
        return []
    with journal.locked():
        entries = journal.load()
        if damaged is not None:
            damaged.extend(journal.damaged)
        chosen = [
            e
            for e in entries
            if (by is None or e.by == by)
            and (
                (pid is None and not host)
                or (pid is not None and e.kind == "process" and e.pid == pid)
                or (host and e.kind == "host")
            )
        ]
        if not chosen:
            return []
        keep = [e for e in entries if e not in chosen]
        apply_ruleset(ruleset(keep, journal.table))
        journal.save(keep)
        for e in chosen:
            _audit(state_dir, "release", e, reason)
        return chosen


# --------------------------------------------------------------------------- the agent's side

AGENT_ACTIONS = ("isolate", "release", "dry_run", "failed", "reload")
#: How often a switched-on agent checks that the journal's isolations are still loaded.
KEEP_IN_FORCE_EVERY_S = 10.0


class AgentIsolator:
    """What ``serve`` does with ``[respond] isolate``: cut a confirmed suspect off once, and
    never leave it cut off when the agent is gone.

    Built at every start, whether isolation is on or not, because building it releases what
    an earlier agent isolated and could not release (``kill -9``, a crash): the journal's
    entries marked ``by = "agent"``. :meth:`close` releases them on shutdown. Entries an
    operator made with ``minerwatch isolate`` are never touched. Each process (pid and start
    time) is isolated at most once per agent run, so one an operator released stays released.
    """

    def __init__(
        self,
        state_dir: Path,
        enabled: bool = False,
        dry_run: bool = False,
        proc_root: Path = Path("/proc"),
    ) -> None:
        self.state_dir = state_dir
        self.enabled = enabled
        self.dry_run = dry_run
        self.proc_root = proc_root
        self.actions_total = dict.fromkeys(AGENT_ACTIONS, 0)
        self._tried: set[tuple[int, float]] = set()
        self._next_check = 0.0
        self._reported: set[Damaged] = set()
        self.recovered = self._release("released at start: left by an earlier agent run")

    def isolate(self, pid: int, reason: str) -> Isolation | None:
        """Isolate ``pid`` (as ``isolate --process``) unless off, done before, or impossible;
        the entry is returned (also in a dry run), None otherwise. Never raises for one
        process: a failure is logged and counted."""
        if not self.enabled:
            return None
        rec = ProcessTable(self.proc_root).lookup(pid)
        if rec is None:
            return None
        # its start in ticks: a create time moves with every step of the wall clock
        key = (pid, rec.create_time if rec.start_ticks is None else float(rec.start_ticks))
        if key in self._tried:
            return None
        self._tried.add(key)
        try:
            entry = replace(plan_process(pid, proc_root=self.proc_root), by=AGENT)
            if self.dry_run:
                self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                _audit(self.state_dir, "dry_run", entry, reason)
                self.actions_total["dry_run"] += 1
                log.warning("isolate (dry run): would cut off %s (%s)", entry.describe(), reason)
                return entry
            damaged: list[Damaged] = []
            held = isolate(self.state_dir, entry, self.proc_root, reason=reason, damaged=damaged)
            self._report(damaged)
        except (InputError, OSError) as exc:
            self.actions_total["failed"] += 1
            log.warning("could not isolate pid %d: %s", pid, exc)
            return None
        if held.by != AGENT:
            log.warning(
                "pid %d is already isolated by an operator: left as it is (%s)", pid, reason
            )
            return None
        self.actions_total["isolate"] += 1
        log.warning(
            "isolated %s (%s); undo with `minerwatch isolate release`", entry.describe(), reason
        )
        return entry

    def keep_in_force(self, now: float) -> None:
        """Load the journal's isolations again when their table is gone: a firewall reload
        (``systemctl reload nftables``, ``nft flush ruleset`` from configuration management)
        deletes it, and every process cut off, the agent's and the operators', was back on
        the network without a word. Only when isolation is switched on; at most every
        :data:`KEEP_IN_FORCE_EVERY_S`, and only while the journal lists something."""
        if not self.enabled or self.dry_run or now < self._next_check:
            return
        self._next_check = now + KEEP_IN_FORCE_EVERY_S
        journal = Journal(self.state_dir)
        if not journal.path.exists():
            return
        try:
            with journal.locked():
                entries = journal.load()
                self._report(journal.damaged)
                if not entries or table_present(table=journal.table) is not False:
                    return
                apply_ruleset(ruleset(entries, journal.table))
        except (InputError, OSError) as exc:
            self.actions_total["failed"] += 1
            log.error("the isolations' nftables table is gone and could not be loaded: %s", exc)
            return
        self.actions_total["reload"] += 1
        _audit(self.state_dir, "reload", None, f"table {FAMILY} {journal.table} was gone")
        log.warning(
            "the nftables table %s %s was gone (a firewall reload?): loaded again from the "
            "journal, %d isolation(s) in force: %s",
            FAMILY, journal.table, len(entries), "; ".join(e.describe() for e in entries),
        )  # fmt: skip

    def isolated_now(self) -> int:
        """Processes the agent has cut off now (from the journal: an operator may release)."""
        try:
            return sum(e.by == AGENT for e in Journal(self.state_dir).load())
        except InputError:
            return 0

    def close(self) -> None:
        """Release everything the agent isolated (shutdown)."""
        self._release("agent shutdown")

    def _release(self, reason: str) -> list[Isolation]:
        if not Journal(self.state_dir).path.exists():
            return []
        damaged: list[Damaged] = []
        try:
            gone = release(self.state_dir, by=AGENT, reason=reason, damaged=damaged)
        except (InputError, OSError) as exc:
            log.error("could not release what the agent isolated: %s", exc)
            return []
        finally:
            self._report(damaged)
        self.actions_total["release"] += len(gone)
        for e in gone:
            log.warning("released %s (%s)", e.describe(), reason)
        return gone

    def _report(self, damaged: Sequence[Damaged]) -> None:
        """Log each damaged entry once per agent run."""
        for bad in damaged:
            if bad not in self._reported:
                self._reported.add(bad)
                log.error("isolation journal %s", bad)


# --------------------------------------------------------------------------- CLI

#: Why the table can be loaded while the journal lists nothing.
_FOREIGN = "its journal was lost, or it is another data folder's"


def run(args: argparse.Namespace) -> int:
    """Run ``minerwatch isolate [--process PID | --host ...] | release | status``.

    The journal is in ``args.state_dir`` (the CLI sets it from ``--data-dir``/``--config``).
    """
    state_dir: Path = args.state_dir
    command = args.isolate_command
    damaged: list[Damaged] = []
    if command == "status":
        journal = Journal(state_dir)
        entries = journal.load()
        damaged = journal.damaged
        table = journal.table
        present = table_present(table=table)
        if args.json:
            doc = {
                "table": table,
                "table_loaded": present,
                "isolated": [e.to_json() for e in entries],
            }
            print(json.dumps(doc, indent=1))
            return _say_damaged(damaged)
        if not entries:
            print("nothing isolated")
        for e in entries:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.since))
            exited = "" if _current(e, Path("/proc")) else "; the process has exited"
            print(f"{e.describe()} (by the {e.by}, since {since}{exited})")
        shown = {True: "loaded", False: "not loaded", None: "unknown (nft unavailable)"}
        if present and not entries:
            shown[True] = f"loaded, but {state_dir / JOURNAL} lists nothing ({_FOREIGN})"
        if present is False and entries:
            shown[False] = (
                "NOT loaded: nothing listed above is cut off (the table was deleted by someone "
                "else, e.g. a firewall reload)"
            )
        print(f"nftables table {FAMILY} {table}: {shown[present]}")
        return _say_damaged(damaged)
    table = Journal(state_dir).table  # the folder's own (a journal may name another)
    if command == "release":
        was_loaded = table_present(table=table) if args.all else None
        released = release(state_dir, args.pid, args.host, force=args.all, damaged=damaged)
        if (args.pid is not None or args.host) and not released:
            _say_damaged(damaged)
            raise InputError(
                str(state_dir / JOURNAL),
                None,
                "an isolated process or host (see `minerwatch isolate status`)",
                f"pid {args.pid}" if args.pid is not None else "no host isolation",
            )
        if not released and not damaged and not args.all and table_present(table=table):
            raise InputError(
                str(state_dir / JOURNAL),
                None,
                f"a journal of what table {FAMILY} {table} holds; `minerwatch isolate release "
                "--all` deletes the table",
                f"nothing listed, but the table is loaded ({_FOREIGN})",
            )
        for e in released:
            print(f"released {e.describe()}")
        if not released and was_loaded:
            print(f"deleted nftables table {FAMILY} {table} (the journal listed nothing)")
        elif not released and not damaged:
            print("nothing was isolated")
        return _say_damaged(damaged)
    if args.process is None and not args.host:
        raise InputError("isolate", None, "--process PID, --host, 'status' or 'release'", "none")
    if args.process is not None:
        entry = plan_process(args.process, args.by)
    else:
        cfg = agent_files_config(args.config, args.data_dir)
        entry = plan_host(args.allow_ssh_from or [], cfg.exporter.port, args.ssh_port)
    if args.dry_run:
        journal = Journal(state_dir)
        print(ruleset(_merge(journal.load(), entry), journal.table), end="")
        return _say_damaged(journal.damaged)
    isolate(state_dir, entry, damaged=damaged)
    print(f"isolated {entry.describe()}; undo with `minerwatch isolate release`")
    return _say_damaged(damaged)


def _say_damaged(damaged: Sequence[Damaged]) -> int:
    """Name each damaged entry on stderr; the exit code: 2 if there was one (bad input)."""
    for bad in damaged:
        print(f"minerwatch: error: {bad}", file=sys.stderr)
    return 2 if damaged else 0
