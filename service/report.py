"""Incident reports: one alert episode, told for the responder who has to close it.

An alert opens a responder's work: confirm (which process, since when, talking to whom),
preserve evidence, contain, kill and clean, check the other hosts, write it up. This module
gathers what the agent already kept about one episode (its event lines, its evidence file,
the samples and scored windows around it in the history, the throttle's audit log) into one
document, the *report*, and renders it as JSON (the data), Markdown or a self-contained
HTML page (:mod:`minerwatch.service.reporthtml`). It only reads the agent's files; it never
changes the history. ``--remediation`` adds the commands a responder would run to clean up,
for review: minerwatch never runs them.

Everything taken from the host (process names, command lines, paths, file contents) is
attacker-controlled: it is kept verbatim in JSON, escaped in HTML, fenced in Markdown and
shell-quoted in remediation commands.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import sqlite3
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from minerwatch.baseline.explain import heavy_work_words
from minerwatch.features.atomic import atomic_write
from minerwatch.features.errors import InputError
from minerwatch.service.config import AgentConfig, agent_files_config, require_folder
from minerwatch.service.evidence import (
    PERSISTENCE_BASELINE,
    evidence_files,
    load_persistence_baseline,
    persistence_status,
    read_evidence_file,
    show,
)
from minerwatch.service.history import dismissal
from minerwatch.service.hostsignals import EVENTS as HOST_SIGNAL_EVENTS
from minerwatch.service.indicators import KnowledgeBase, load_knowledge_base
from minerwatch.service.packages import package_words
from minerwatch.service.scorecsv import is_stdout
from minerwatch.service.terminal import printable
from minerwatch.service.throttle import AUDIT
from minerwatch.service.timefmt import dateable, utc_iso

FORMAT = "minerwatch-incident-report"
FORMAT_VERSION = 1
FORMATS = ("html", "json", "md")
#: History columns the timeline shows (host CPU, busiest process, indicator hits).
TIMELINE_COLUMNS = ("cpu_percent", "top_proc_cpu_percent", "indicator_hits")
#: At most this many points per timeline series: a two-week episode stays a small file.
MAX_POINTS = 1500
_SAFE_ID = re.compile(r"[^A-Za-z0-9_.-]")


def _iso(ts: float | None) -> str | None:
    if ts is None or not dateable(ts):
        return None
    return utc_iso(ts)


def _time(value: Any) -> float | None:
    """:func:`finite_or_none` for a time: None unless a date shows it (a damaged line's 1e308)."""
    f = finite_or_none(value)
    return f if f is not None and dateable(f) else None


def finite_or_none(value: Any) -> float | None:
    """A finite float or None: JSON from the host may hold anything."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _dicts(value: Any) -> list[dict[str, Any]]:
    """The objects of a JSON list; anything else (a hand-edited or hostile file) is empty."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def evidence_id(episode_id: str) -> str:
    """The id as the evidence writer puts it in file names (the same sanitising)."""
    return _SAFE_ID.sub("_", episode_id)[:64].lstrip(".") or "episode"


# -- reading the agent's files ------------------------------------------------------------


class Damaged(str):
    """A note that data was left out (a damaged event line or evidence file): said as a
    warning, since the report or verdict may miss what it held."""


def say(notes: Iterable[str]) -> None:
    """The notes on stderr, damaged data as warnings: a user sees what was left out."""
    for note in notes:
        kind = "warning" if isinstance(note, Damaged) else "note"
        print(f"minerwatch: {kind}: {note}", file=sys.stderr)


#: At most this many damaged line numbers are listed; the count says the rest.
_MAX_LINES_NAMED = 10


def read_events(path: Path, notes: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Event lines grouped by episode id, in file order.

    A damaged line is skipped rather than hiding every other episode, and named once in
    ``notes`` (a :class:`Damaged` warning: its file and line, with a count if several). A
    last line without its newline is what a kill mid-write leaves: a mild note only."""
    episodes: dict[str, list[dict[str, Any]]] = {}
    damaged: list[tuple[int, str]] = []  # line number, "expected ..., got ..."
    cut: int | None = None
    try:
        fh = path.open(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return episodes
    with fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except (ValueError, RecursionError) as exc:
                if not line.endswith("\n"):  # only the last line can lack it
                    cut = n
                    continue
                got = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
                damaged.append((n, f"expected a JSON event line, got {got}"))
                continue
            if isinstance(event, dict) and "id" not in event and "event" in event:
                continue  # not an alert episode's line (an IOC hit, a suspect process)
            if isinstance(event, dict) and event.get("event") in HOST_SIGNAL_EVENTS:
                continue  # a host signal's line (new port, SSH source, wiped log)
            if not isinstance(event, dict) or not isinstance(event.get("id"), str):
                damaged.append((n, "expected an object with an episode 'id'"))
                continue
            episodes.setdefault(event["id"], []).append(event)
    if damaged:
        first, what = damaged[0]
        note = f"{path}:{first}: skipped, {what}"
        if len(damaged) > 1:
            more = [str(n) for n, _ in damaged[1:_MAX_LINES_NAMED]]
            rest = len(damaged) - 1 - len(more)
            listed = ", ".join(more) + (f" and {rest} more" if rest else "")
            note += f"; {len(damaged)} damaged lines skipped in all (also line {listed})"
        notes.append(Damaged(note))
    if cut is not None:
        notes.append(f"{path}:{cut}: skipped the last line, cut short (a stop mid-write)")
    return episodes


def evidence_episodes(
    evidence_dir: Path, notes: list[str] | None = None, known: Iterable[str] = ()
) -> dict[str, Path]:
    """Episode id (as in the file name) -> newest evidence file, for episodes whose event
    lines were lost (a full disk) but whose evidence was kept.

    Such a file is read first: one that is not evidence (broken JSON, another format) never
    becomes an episode; it is skipped and named in ``notes``. Files of the episodes in
    ``known`` (the event log has them) are read when their report is written instead."""
    covered = {evidence_id(k) for k in known}
    out: dict[str, Path] = {}
    for path in evidence_files(evidence_dir):
        eid = _file_episode(path)
        if not eid or eid.startswith(NOT_EPISODES):
            continue
        if eid not in covered:
            try:
                read_evidence_file(path)
            except InputError as exc:
                if notes is not None:
                    notes.append(Damaged(f"{exc}; skipped, not taken for an episode"))
                continue
        out[eid] = path
    return out


def _evidence_without_episode(evidence_dir: Path) -> list[str]:
    """Names of the evidence files of suspects found while learning and of IOC hits, oldest
    first: what a responder paged for them has when no alert episode exists yet."""
    return [
        p.name for p in evidence_files(evidence_dir) if _file_episode(p).startswith(NOT_EPISODES)
    ]


#: IOC hits and suspect processes found while learning have evidence of their own, not alert
#: episodes: the id in their file name starts with one of these.
NOT_EPISODES = ("ioc-hit-", "suspect-")


def _file_episode(path: Path) -> str:
    """The id in an evidence file's name (``<UTC time>-<id>.json``); "" when it has none."""
    return path.stem.split("-", 1)[1] if "-" in path.stem else ""


def episode_summary(episode_id: str, events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The episode as its last event line knows it, plus when it opened and closed."""
    last = dict(events[-1]) if events else {}
    opened = next((e for e in events if e.get("event") == "open"), None)
    closed = next((e for e in reversed(events) if e.get("event") == "close"), None)
    start, end = _time(last.get("start")), _time(last.get("end"))
    return {
        "id": episode_id,
        "host": last.get("host"),
        "start": start,
        "start_utc": _iso(start),
        "end": end,
        "end_utc": _iso(end),
        "duration_s": None if start is None or end is None else end - start,
        "score": finite_or_none(last.get("score")),
        "threshold": finite_or_none(last.get("threshold")),
        "opened_at_utc": _iso(finite_or_none(opened.get("time"))) if opened else None,
        "state": "closed" if closed else "open (or the agent stopped without closing it)",
        "close_reason": closed.get("reason") if closed else None,
        "process": last.get("process") if isinstance(last.get("process"), dict) else None,
        "earlier_processes": _dicts(last.get("earlier_processes")),
        "isolated": _dicts(last.get("isolated")),
        "top_features": _dicts(last.get("top_features")),
        "indicators": _dicts(last.get("indicators")),
        "evidence_path": last.get("evidence"),
        "windows": last.get("windows") if isinstance(last.get("windows"), int) else None,
        "heavy_windows": (
            last.get("heavy_windows") if isinstance(last.get("heavy_windows"), int) else None
        ),
        "heavy_work": _dicts(last.get("heavy_work")),
        "events": [
            {
                "event": e.get("event"),
                "time_utc": _iso(finite_or_none(e.get("time"))),
                "changed": e.get("changed"),
            }
            for e in events
        ],
    }


def heavy_work_note(episode: Mapping[str, Any]) -> str:
    """A note for the responder when the host did heavy work during the episode ("" else)."""
    words = heavy_work_words(episode)
    if not words:
        return ""
    return (
        f"work: {words}. Maintenance (an index rebuild, a backup, an administrator's "
        "tool) reads and writes while it holds the CPU; a miner's CPU brings no I/O. Check "
        "the suspect's role before acting."
    )


def choose_episode(
    events: Mapping[str, list[dict[str, Any]]],
    evidence: Mapping[str, Path],
    wanted: str | None,
    where: str,
    notes: Sequence[str] = (),
    log: Path | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    """The episode asked for, or the latest; an unknown id or no episode at all is an
    :class:`InputError` naming what is there (and how much damaged data in ``notes`` was
    skipped, which may be why there is none).

    The latest is the one the agent wrote last to its event log ``log`` (``events`` is in
    its order), not the one that started last: after the wall clock stepped back, the
    episode the agent lived last starts earlier. An episode known only from its evidence
    (its lines lost) is the latest when its file is newer than the log's last write."""
    known = dict(events)
    for eid in evidence:
        if not any(evidence_id(k) == eid for k in known):
            known[eid] = []

    def started(item: tuple[str, list[dict[str, Any]]]) -> float:
        eid, evs = item
        if evs:
            return finite_or_none(evs[0].get("start")) or 0.0
        return evidence[eid].stat().st_mtime

    if not known:
        skipped = sum(isinstance(n, Damaged) for n in notes)
        got = f"none usable ({skipped} damaged, named above)" if skipped else "none"
        raise InputError(where, None, "at least one alert episode (event log or evidence)", got)
    if wanted is None:
        logged = [eid for eid, evs in events.items() if evs]
        if not logged:
            return max(known.items(), key=started)
        try:
            written = log.stat().st_mtime if log is not None else math.inf
        except OSError:
            written = -math.inf
        later = [e for e in known if not known[e] and started((e, [])) > written]
        if later:
            return max(((e, known[e]) for e in later), key=started)
        return logged[-1], known[logged[-1]]
    if wanted in known:
        return wanted, known[wanted]
    ids = sorted(known, key=lambda k: started((k, known[k])))
    listed = ", ".join(ids[-10:]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
    raise InputError("--episode", None, f"one of the episodes in {where}: {listed}", repr(wanted))


def load_evidence(
    evidence_dir: Path, episode: Mapping[str, Any], notes: list[str]
) -> tuple[dict[str, Any] | None, Path | None]:
    """The episode's evidence file: the one its events name (looked up in ``evidence_dir``
    by name, so a data folder copied elsewhere still works), else by episode id."""
    names: list[str] = []
    if episode.get("evidence_path"):
        names.append(Path(str(episode["evidence_path"])).name)
    names.append(evidence_id(str(episode["id"])))
    for name in names:
        try:
            doc = show(evidence_dir, name)
        except InputError as exc:
            note = Damaged(f"evidence: {exc}")
            if "no such file" not in str(exc) and note not in notes:
                notes.append(note)
            continue
        stem = name.removesuffix(".json")
        files = evidence_files(evidence_dir)
        exact = [p for p in files if p.stem == stem]
        found = exact or [p for p in files if p.stem.endswith(f"-{stem}")]
        return doc, (found[-1] if found else None)
    notes.append(f"evidence: no evidence file for this episode in {evidence_dir}")
    return None, None


def _history_connection(path: Path) -> sqlite3.Connection | None:
    """Read-only: the report must not change the agent's history (not even its WAL)."""
    if not path.is_file():
        return None
    uri = path.resolve().as_uri()
    for query in ("?mode=ro", "?mode=ro&immutable=1"):  # immutable when -shm is not ours
        try:
            conn = sqlite3.connect(f"{uri}{query}", uri=True, timeout=5.0)
            conn.execute("SELECT 1 FROM sqlite_master").fetchall()
            return conn
        except sqlite3.Error:
            continue
    return None


def read_dismissal(history_path: Path, episode_id: str) -> dict[str, Any] | None:
    """Who dismissed the episode as benign, when and why (``minerwatch dismiss``), or None."""
    conn = _history_connection(history_path)
    if conn is None:
        return None
    try:
        row = dismissal(conn, episode_id)
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    if row is None:
        return None
    return {
        "at_utc": _iso(finite_or_none(row[0])),
        "by": str(row[1] or ""),
        "reason": str(row[2] or ""),
    }


def read_timeline(
    history_path: Path, since: float, until: float, notes: list[str]
) -> dict[str, Any]:
    """Samples (the timeline columns) and scored windows from ``since`` to ``until``."""
    out: dict[str, Any] = {"since": since, "until": until, "samples": {}, "windows": []}
    conn = _history_connection(history_path)
    if conn is None:
        notes.append(f"history: no readable history database at {history_path}")
        return out
    try:
        have = {row[1] for row in conn.execute("PRAGMA table_info(samples)")}
        cols = [c for c in TIMELINE_COLUMNS if c in have]
        if cols:
            names = ", ".join(f'"{c}"' for c in cols)
            rows = conn.execute(
                f"SELECT ts, {names} FROM samples WHERE ts >= ? AND ts <= ? ORDER BY ts",
                (since, until),
            ).fetchall()
            rows = _thin(rows, MAX_POINTS)
            out["samples"] = {
                "ts": [finite_or_none(r[0]) for r in rows],
                **{c: [finite_or_none(r[i + 1]) for r in rows] for i, c in enumerate(cols)},
            }
        windows = conn.execute(
            "SELECT window_start, window_end, score, threshold, alert FROM windows"
            " WHERE window_end >= ? AND window_start <= ? ORDER BY window_start",
            (since, until),
        ).fetchall()
        out["windows"] = [
            {
                "start": finite_or_none(s),
                "end": finite_or_none(e),
                "score": finite_or_none(sc),
                "threshold": finite_or_none(th),
                "alert": bool(a),
            }
            for s, e, sc, th, a in _thin(windows, MAX_POINTS)
        ]
    except sqlite3.Error as exc:
        notes.append(f"history: {history_path}: {exc}")
    finally:
        conn.close()
    return out


def _thin(rows: list[Any], most: int) -> list[Any]:
    """Every k-th row so at most ``most`` remain (enough for a plot, not for forensics)."""
    if len(rows) <= most:
        return rows
    step = math.ceil(len(rows) / most)
    return rows[::step]


def read_throttle_actions(
    throttle_dir: Path, since: float, until: float, notes: list[str]
) -> list[dict[str, Any]]:
    """What the throttle did during the episode, from its audit log (JSON lines)."""
    path = throttle_dir / AUDIT
    out: list[dict[str, Any]] = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return out
    except OSError as exc:
        notes.append(f"throttle audit: {path}: {exc.strerror or exc}")
        return out
    for line in lines:
        try:
            a = json.loads(line)
        except json.JSONDecodeError:
            continue
        ts = finite_or_none(a.get("ts")) if isinstance(a, dict) else None
        if ts is not None and since <= ts <= until:
            out.append({**a, "time_utc": _iso(ts)})
    return out


# -- the report document ------------------------------------------------------------------


def _suspect(
    episode: Mapping[str, Any], evidence: Mapping[str, Any] | None, kb: KnowledgeBase
) -> dict[str, Any] | None:
    """The named suspect, with what the evidence file knows about it; connections to pool
    ports and ``stratum+...`` URLs in its command line are marked."""
    named = episode.get("process") if isinstance(episode.get("process"), dict) else None
    procs = _dicts((evidence or {}).get("processes"))
    pid = named.get("pid") if named else None
    rec = next((p for p in procs if p.get("pid") == pid), None)
    if rec is None and named is None and procs:
        rec = procs[0]
    if rec is None and named is None:
        return None
    out: dict[str, Any] = {**(named or {}), **(rec or {})}
    if named and "user" in named and "username" not in out:
        out["username"] = named["user"]
    cmdline = out.get("cmdline")
    out["cmdline"] = [str(a) for a in cmdline] if isinstance(cmdline, list) else []
    out["stratum_urls"] = [
        a for a in out["cmdline"] if any(s in a.lower() for s in kb.stratum_schemes)
    ]
    conns = out.get("connections")
    marked = []
    for c in conns if isinstance(conns, list) else []:
        if not isinstance(c, dict):
            continue
        port = _port(str(c.get("remote") or ""))
        marked.append({**c, "remote_port": port, "pool_port": port in kb.pool_ports})
    out["connections"] = marked
    listening = _dicts((evidence or {}).get("listening"))
    out["listening"] = [e for e in listening if e.get("pid") == out.get("pid")]
    out["parents"] = _dicts(out.get("parents"))
    return out


def _port(address: str) -> int | None:
    """The port of ``1.2.3.4:3333`` or ``[::1]:3333``."""
    _, _, port = address.rpartition(":")
    return int(port) if port.isdigit() else None


def _indicators(
    episode: Mapping[str, Any], evidence: Mapping[str, Any] | None, kb: KnowledgeBase
) -> list[dict[str, Any]]:
    """Indicator hits (evidence first, then the events' list) with the sources they cite."""
    seen: set[tuple[Any, ...]] = set()
    out: list[dict[str, Any]] = []
    for hit in [*_dicts((evidence or {}).get("indicators")), *_dicts(episode.get("indicators"))]:
        if not isinstance(hit, dict):
            continue
        key = tuple(  # as text: a damaged file's list or object here would not hash
            json.dumps(hit.get(k), sort_keys=True, default=str)
            for k in ("indicator_id", "reason", "pid", "detail")
        )
        if key in seen:
            continue
        seen.add(key)
        refs = kb.indicator_sources.get(str(hit.get("indicator_id")), ())
        out.append({**hit, "sources": [{"id": r, **kb.sources[r]} for r in refs]})
    return out


def _persistence(evidence: Mapping[str, Any] | None, baseline_path: Path) -> dict[str, Any]:
    """The evidence's persistence files, and every persistence entry it hashed marked new,
    changed or removed since the baseline the agent took at the end of learning."""
    ev = evidence or {}
    baseline = load_persistence_baseline(baseline_path)
    marked = persistence_status(_dicts(ev.get("persistence")), baseline)
    if baseline is None:
        since = "no baseline snapshot (taken when the agent finishes learning): nothing marked"
    else:
        since = f"marked against the baseline of {baseline.get('taken_at_utc')}"
    return {
        "crontabs": _dicts(ev.get("crontabs")),
        "systemd_units": _dicts(ev.get("systemd_units")),
        "init_scripts": _dicts(ev.get("init_scripts")),
        "authorized_keys": _dicts(ev.get("authorized_keys")),
        "ld_so_preload": ev.get("ld_so_preload")
        if isinstance(ev.get("ld_so_preload"), dict)
        else {},
        "changes": [e for e in marked if e["status"] in ("new", "changed", "removed")],
        "unchanged": sum(e["status"] == "unchanged" for e in marked),
        "baseline": since,
        "note": "files changed within the evidence writer's recent window (7 days by default); "
        "older entries are not listed, except authorized_keys (all)",
    }


def _hunt_detail(suspect: Mapping[str, Any], pools: Sequence[str], evidence: Any) -> str:
    """What to hunt for, and with what: ``ioc extract`` of the evidence, then ``hunt``.

    The sha256 of a byte-for-byte copy of a shipped program (a renamed ``python3`` running
    the miner's script) is that program's on every host: its path is what to look for."""
    package = suspect.get("package")
    copy = package.get("copy_of") if isinstance(package, dict) else None
    if isinstance(copy, dict) and suspect.get("exe"):
        what = (
            f"path {suspect['exe']} (not its sha256: a copy of {copy.get('path')}, "
            "it would match that program on every host)"
        )
    else:
        what = f"sha256 {suspect.get('sha256') or '-'}"
    what += f"; pools {', '.join(pools) or '-'}"
    if not isinstance(evidence, str) or not evidence:
        return what
    return (
        f"minerwatch ioc extract {shlex.quote(evidence)} --output ioc.json, then "
        f"'minerwatch hunt ioc.json' as root on every other host ({what})"
    )


def _checklist(doc: Mapping[str, Any], agent: bool = True) -> list[dict[str, Any]]:
    """The response playbook, step by step, with what the agent has already done (batch
    reports have no agent to dismiss an episode to)."""
    suspect = doc.get("suspect") or {}
    pid = suspect.get("pid")
    throttled = [a for a in doc["throttle_actions"] if a.get("action") == "throttle"]
    released = [a for a in doc["throttle_actions"] if a.get("action") == "release"]
    pools = [c["remote"] for c in suspect.get("connections", []) if c.get("pool_port")]
    isolated = [
        i for i in _dicts(doc["episode"].get("isolated")) if not i.get("dry_run")
    ]  # by the agent ([respond] isolate)
    steps = [
        (
            "confirm",
            "name the process, since when, talking to whom",
            "done" if pid is not None else "to do",
            f"suspect pid {pid} ({suspect.get('name')})" if pid is not None else "no suspect named",
        ),
        (
            "preserve",
            "keep the evidence (process, binary hash, connections, persistence)",
            "done" if doc.get("evidence_file") else "to do",
            doc.get("evidence_file") or "no evidence file; copy the binary and /proc/PID now",
        ),
        (
            "contain",
            "slow or stop the process (auto-throttle) and isolate the host",
            "partly done" if throttled or isolated else "to do",
            "; ".join(
                [f"isolated {i.get('match')}" for i in isolated]
                + (
                    [f"throttled {len(throttled)}x, released {len(released)}x during the episode"]
                    if throttled
                    else ["not throttled (throttling off, or nothing crossed its limits)"]
                )
            ),
        ),
        (
            "clean",
            "kill the process, remove its binary and startup entries",
            "to do",
            "see the remediation list (--remediation); minerwatch never runs it",
        ),
        (
            "hunt",
            "check the other hosts for the same binary and pool addresses",
            "to do",
            _hunt_detail(suspect, pools, doc.get("evidence_file")),
        ),
        ("recover", "rotate the credentials that let it in; rebuild if in doubt", "to do", ""),
        ("report", "write the incident report", "done", "this report"),
    ]
    if agent:
        steps.insert(
            1,
            (
                "or dismiss",
                "legitimate work (see the work note)? mark the episode benign, so the agent "
                "learns it",
                "done" if doc["episode"].get("dismissed") else "if benign",
                f"minerwatch dismiss --episode {doc['episode']['id']} --reason '...'",
            ),
        )
    return [{"step": s, "what": w, "status": st, "detail": d} for s, w, st, d in steps]


def _shipped_package(record: Mapping[str, Any]) -> str:
    """The package that shipped this file unchanged, by the evidence's package record ("" if
    none did, or it was not asked)."""
    pkg = record.get("package")
    if isinstance(pkg, dict) and isinstance(pkg.get("name"), str) and pkg.get("as_shipped") is True:
        return str(pkg["name"])
    return ""


def _shipped_by(suspect: Mapping[str, Any]) -> str:
    """Why the suspect's binary is not the attacker's ("" when it may be): a package's
    program as shipped (``python3`` running a miner's script), or the dynamic loader named
    by evidence from before it was looked through (``ld-linux-x86-64.so.2 /dev/shm/x``)."""
    from minerwatch.features.proctable import is_loader

    exe = str(suspect.get("exe") or "")
    if package := _shipped_package(suspect):
        return f"it is the package {package}'s program as shipped"
    if exe and is_loader(exe):
        return "it is the system's dynamic loader, which ran the program named on its command line"
    return ""


def _preload_remediation(preload: Mapping[str, Any]) -> list[dict[str, str]]:
    """Undo a hijacked ``ld.so.preload``, keeping the libraries a package shipped unchanged
    (a logger such as ``snoopy``, an allocator): they are preloaded on purpose, and deleting
    a package's file breaks it. Nothing when every library is a package's."""
    from minerwatch.service.indicators import preload_entries

    entries = preload_entries(str(preload.get("content") or ""))
    if not preload.get("exists") or not entries:
        return []
    libs = [lib for lib in entries if lib.startswith("/")]
    records = {str(e.get("path")): e for e in preload.get("entries") or [] if isinstance(e, dict)}
    owner = {lib: _shipped_package(records.get(lib, {})) for lib in libs}
    kept = [lib for lib in libs if owner[lib]]
    foreign = [lib for lib in libs if not owner[lib]]
    if not foreign and kept:
        return []
    path = str(preload.get("path") or "/etc/ld.so.preload")
    out = [
        {
            "command": f"cp -a -- {shlex.quote(path)} /root/ld.so.preload.incident",
            "why": "keep the hijacked preload list for analysis",
        }
    ]
    if kept:
        out.append(
            {
                "command": f"printf '%s\\n' {shlex.join(kept)} > {shlex.quote(path)}",
                "why": "keep only the libraries packages shipped unchanged ("
                + ", ".join(f"{k} from {owner[k]}" for k in kept)
                + "): the others hide the miner",
            }
        )
    else:
        out.append(
            {
                "command": f": > {shlex.quote(path)}",
                "why": "restore ld.so.preload to empty (it normally is): it hides the miner",
            }
        )
    for lib in foreign:
        out.append(
            {
                "command": f"rm -f -- {shlex.quote(lib)}",
                "why": "the library ld.so.preload loaded into every process",
            }
        )
    return out


def remediation(doc: Mapping[str, Any]) -> list[dict[str, str]]:
    """Commands a responder would run, for review; every host value is shell-quoted.

    >>> doc = {"suspect": {"pid": 7, "exe": "/tmp/x y", "create_time": 1.0},
    ...        "persistence": {"crontabs": [], "systemd_units": [], "ld_so_preload": {}}}
    >>> [c["command"] for c in remediation(doc)][1]
    "rm -f -- '/tmp/x y'"
    """
    out: list[dict[str, str]] = []
    suspect = doc.get("suspect") or {}
    pid, exe = suspect.get("pid"), str(suspect.get("exe") or "")
    if isinstance(pid, int) and not isinstance(pid, bool) and pid > 1:  # never 0, -1, init
        out.append(
            {
                "command": f"kill -KILL {pid}",
                "why": f"stop the suspect (first check 'ps -o lstart= -p {pid}' still shows "
                f"the start time {suspect.get('create_time_utc') or 'in the evidence'}: pids "
                "are reused)",
            }
        )
    shipped = _shipped_by(suspect)
    if exe and shipped:  # the miner runs inside it (a script, a module): not it
        where = f"/proc/{pid}" if isinstance(pid, int) and pid > 1 else None
        out.append(
            {
                "command": f"ls -l {where}/cwd {where}/fd" if where else f"# keep {exe}",
                "why": f"do not remove {exe}: {shipped}, so what mines is what it runs (a "
                "script, a module, an extension); look where it runs and what it holds open, "
                "and remove that",
            }
        )
    elif exe and not suspect.get("exe_deleted"):
        out.append(
            {
                "command": f"rm -f -- {shlex.quote(exe)}",
                "why": "remove the binary "
                f"(sha256 {suspect.get('sha256') or 'unknown'}; keep a copy for analysis first)",
            }
        )
    # a shipped program's path or name is in every unit and crontab that runs it for good
    names = () if shipped else (exe, Path(exe).name if exe else "", str(suspect.get("name") or ""))
    needles = [n for n in names if len(n) >= 3]
    needles += [u for u in suspect.get("stratum_urls", [])]
    persistence = doc.get("persistence") or {}
    for unit in persistence.get("systemd_units", []):
        path = str(unit.get("path") or "")
        if not path or not _mentions(unit, needles):
            continue
        name = Path(path).name
        out.append(
            {
                "command": f"systemctl disable --now {shlex.quote(name)}",
                "why": f"the unit {path} starts the suspect",
            }
        )
        out.append(
            {
                "command": f"rm -f -- {shlex.quote(path)} && systemctl daemon-reload",
                "why": "remove the unit file",
            }
        )
    for cron in persistence.get("crontabs", []):
        path = str(cron.get("path") or "")
        if not path or not _mentions(cron, needles):
            continue
        if "/var/spool/cron" in path:
            user = Path(path).name
            out.append(
                {
                    "command": f"crontab -u {shlex.quote(user)} -e",
                    "why": f"delete the lines of {path} that start the suspect",
                }
            )
        else:
            out.append(
                {
                    "command": f"rm -f -- {shlex.quote(path)}",
                    "why": "a cron file that starts the suspect",
                }
            )
    out += _preload_remediation(persistence.get("ld_so_preload") or {})
    return [_reviewable(c) for c in out]


def _reviewable(entry: dict[str, str]) -> dict[str, str]:
    """One command per line, as a reviewer reads it: a host value with a newline or another
    control character (legal in file names) turns the command into a comment to do by hand."""
    why = printable(entry["why"])
    if printable(entry["command"]) == entry["command"]:
        return {"command": entry["command"], "why": why}
    return {
        "command": f"# by hand: {printable(entry['command'])}",
        "why": f"{why} (the name holds control characters, shown as \\xNN)",
    }


def _mentions(entry: Mapping[str, Any], needles: Iterable[str]) -> bool:
    text = f"{entry.get('content') or ''}\n{entry.get('link_target') or ''}"
    return any(n and n in text for n in needles)


def build_report(
    cfg: AgentConfig,
    episode_id: str | None = None,
    with_remediation: bool = False,
    now: float | None = None,
) -> dict[str, Any]:
    """The report for one episode (the latest by default) as a JSON-ready dict.

    Raises :class:`InputError` when there is no episode, or none with ``episode_id``.
    """
    assert cfg.event_log is not None and cfg.evidence_dir is not None
    assert cfg.throttle.state_dir is not None
    notes: list[str] = []
    events = read_events(cfg.event_log, notes)
    by_evidence = evidence_episodes(cfg.evidence_dir, notes, known=events)
    try:
        eid, evs = choose_episode(
            events, by_evidence, episode_id, str(cfg.data_dir), notes, cfg.event_log
        )
    except InputError as exc:
        say(notes)  # what was skipped may be why there is no such episode
        others = _evidence_without_episode(cfg.evidence_dir)
        if episode_id is not None or not others:
            raise
        raise InputError(
            exc.path,
            exc.line,
            exc.expected,
            f"{exc.got}; without an alert the agent kept evidence of {len(others)} suspect "
            f"process(es) or IOC hit(s): 'minerwatch evidence show {others[-1]}' (the latest), "
            "'minerwatch ioc extract' to hunt it elsewhere",
        ) from None
    episode = episode_summary(eid, evs)
    evidence, evidence_path = load_evidence(cfg.evidence_dir, episode, notes)
    if evidence is not None and not evs:  # known from its evidence file alone
        written = finite_or_none(evidence.get("written_at"))
        episode.update(
            start=written,
            start_utc=_iso(written),
            end=written,
            end_utc=_iso(written),
            score=finite_or_none(evidence.get("score")),
            threshold=finite_or_none(evidence.get("threshold")),
            host=evidence.get("hostname"),
        )
        notes.append("events: no event lines for this episode; times come from its evidence file")
    if not episode["top_features"] and evidence:
        episode["top_features"] = _dicts(evidence.get("explanation"))
    work = heavy_work_note(episode)
    if work:
        notes.append(work)
    episode["dismissed"] = read_dismissal(cfg.history_path, eid)
    if episode["dismissed"] is not None:
        d = episode["dismissed"]
        notes.append(
            f"dismissed as benign at {d['at_utc']} by {d['by'] or 'unknown'}"
            + (f": {d['reason']}" if d["reason"] else "")
            + "; the agent's retraining learns its windows ('minerwatch dismiss --undo "
            f"{eid}' takes it back)"
        )
    kb = load_knowledge_base()
    start = episode["start"] if episode["start"] is not None else 0.0
    end = episode["end"] if episode["end"] is not None else start
    margin = max(1800.0, 0.5 * (end - start))
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "generated_at_utc": _iso(time.time() if now is None else now),
        "host": episode.get("host") or cfg.host,
        "episode": episode,
        "evidence_file": str(evidence_path) if evidence_path else None,
        "suspect": _suspect(episode, evidence, kb),
        "other_processes": [
            {k: p.get(k) for k in ("pid", "name", "exe", "username", "sha256")}
            for p in _dicts((evidence or {}).get("processes"))
            if p.get("pid") != (episode.get("process") or {}).get("pid")
        ],
        "indicators": _indicators(episode, evidence, kb),
        "features": episode["top_features"],
        "persistence": _persistence(evidence, cfg.data_dir / PERSISTENCE_BASELINE),
        "logged_in": _dicts((evidence or {}).get("logged_in")),
        "timeline": read_timeline(cfg.history_path, start - margin, end + margin, notes),
        "throttle_actions": read_throttle_actions(
            cfg.throttle.state_dir, start - margin, end + margin, notes
        ),
        "notes": notes,
    }
    doc["checklist"] = _checklist(doc)
    if with_remediation:
        doc["remediation"] = remediation(doc)
    return doc


# -- Markdown -------------------------------------------------------------------------------


def _inline(text: Any) -> str:
    """Host text as one inline code span: control characters shown, backticks cannot end it."""
    s = printable(text)
    fence = "`" * (max((len(m) for m in re.findall(r"`+", s)), default=0) + 1)
    return f"{fence} {s} {fence}"


def _block(text: str) -> str:
    s = printable(text, keep="\n")
    fence = "~" * max(3, max((len(m) + 1 for m in re.findall(r"~+", s)), default=0))
    return f"{fence}\n{s}\n{fence}"


def render_markdown(doc: Mapping[str, Any]) -> str:
    """The report as text for a ticket or a mail body."""
    ep = doc["episode"]
    out = [f"# Incident report: {_inline(doc['host'])}, episode {_inline(ep['id'])}", ""]
    out += [
        f"- from {ep['start_utc'] or '-'} to {ep['end_utc'] or '-'} ({ep['state']})",
        f"- score {_fmt(ep['score'])} above threshold {_fmt(ep['threshold'])}",
        f"- evidence: {_inline(doc['evidence_file'] or 'none')}",
        "",
    ]
    s = doc.get("suspect")
    out += ["## Suspect process", ""]
    if s:
        for label, key in (
            ("pid", "pid"),
            ("name", "name"),
            ("exe", "exe"),
            ("run by the dynamic loader", "loader"),
            ("sha256", "sha256"),
            ("user", "username"),
            ("started", "create_time_utc"),
            ("cwd", "cwd"),
        ):
            if key == "loader" and not s.get(key):
                continue  # the kernel ran the program itself: the usual case
            out.append(f"- {label}: {_inline(s.get(key, '-'))}")
            if key == "username":
                out.append(f"- cpu: {cpu_words(s.get('cpu_percent'))}")
        out.append(f"- package: {_inline(package_words(s.get('package')))}")
        chain = " <- ".join(f"{p.get('name')}({p.get('pid')})" for p in s.get("parents", []))
        out.append(f"- parents: {_inline(chain or '-')}")
        out += ["- command line:", "", _block(shlex.join(s.get("cmdline", []))), ""]
        for c in s.get("connections", []):
            mark = " **POOL PORT**" if c.get("pool_port") else ""
            out.append(
                f"- {c.get('proto')} {_inline(c.get('local'))} -> "
                f"{_inline(c.get('remote'))} {c.get('status')}{mark}"
            )
        for u in s.get("stratum_urls", []):
            out.append(f"- **stratum URL** {_inline(u)}")
    else:
        out.append("no suspect was named")
    out += ["", "## Indicators", ""]
    for h in doc["indicators"]:
        refs = "; ".join(f"{r['title']} <{r['url']}>" for r in h["sources"])
        out.append(
            f"- {h.get('indicator_id')} ({h.get('reason')}, {pid_words(h.get('pid'))}, "
            f"{_inline(h.get('detail') or '-')}): {refs}"
        )
    out += [
        "",
        "## Features that drove the score",
        "",
        "| feature | value | usual range | share |",
        "|---|---|---|---|",
    ]
    for f in doc["features"]:
        out.append(
            f"| {f.get('feature')} | {_fmt(f.get('value'))} | "
            f"{_fmt(f.get('typical_low'))} - {_fmt(f.get('typical_high'))} | "
            f"{_fmt(f.get('contribution'))} |"
        )
    out += ["", "## Persistence", "", doc["persistence"]["note"], ""]
    out += [f"Since learning: {doc['persistence'].get('baseline', '')}.", ""]
    for entry in doc["persistence"].get("changes", []):
        out.append(f"- **{entry['status']}** {entry.get('kind')} {_inline(entry.get('path'))}")
    if doc["persistence"].get("changes"):
        out.append("")
    for kind in ("crontabs", "systemd_units", "init_scripts", "authorized_keys"):
        for item in doc["persistence"][kind]:
            out += [
                f"- {kind[:-1]} {_inline(item.get('path'))} changed {item.get('mtime_utc')}",
                "",
            ]
            if item.get("content"):
                out += [_block(str(item["content"])), ""]
    pre = doc["persistence"]["ld_so_preload"]
    if pre.get("exists"):
        out += [
            f"- ld.so.preload {_inline(pre.get('path'))}:",
            "",
            _block(str(pre.get("content") or "")),
            "",
        ]
    out += ["## Response checklist", ""]
    for step in doc["checklist"]:
        box = "x" if step["status"] == "done" else " "
        out.append(
            f"- [{box}] {step['step']}: {step['what']} ({step['status']}) "
            + (_inline(step["detail"]) if step["detail"] else "")
        )
    if "remediation" in doc:
        out += ["", "## Remediation (for review; minerwatch runs none of it)", ""]
        out += [
            _block(
                "\n".join(f"{c['command']}    # {c['why']}" for c in doc["remediation"])
                or "# nothing found"
            )
        ]
    if doc["notes"]:
        out += ["", "## Notes", ""] + [f"- {_inline(n)}" for n in doc["notes"]]
    return "\n".join(out) + "\n"


def cpu_words(value: Any) -> str:
    """The suspect's CPU when the alert named it (batch: its mean), percent of one core."""
    f = finite_or_none(value)
    return "-" if f is None else f"{f:.0f} % of one core"


def pid_words(pid: Any) -> str:
    """An indicator's process; one about the whole host (unexplained CPU) names none."""
    return "host-wide" if pid is None else f"pid {pid}"


def _fmt(value: Any) -> str:
    f = finite_or_none(value)
    return "-" if f is None else f"{f:.4g}"


# -- CLI ------------------------------------------------------------------------------------


def _agent_report(args: argparse.Namespace) -> dict[str, Any]:
    cfg = agent_files_config(args.config, args.data_dir)
    require_folder(cfg.data_dir, "the agent's data folder (--data-dir, data_dir)")
    if not cfg.data_dir.is_dir():
        raise InputError(
            str(cfg.data_dir),
            None,
            "the agent's data folder (--data-dir, data_dir)",
            "no such folder",
        )
    return build_report(cfg, args.episode, args.remediation)


def run(args: argparse.Namespace) -> int:
    """``minerwatch report``: write the report to ``--output`` (0600, atomically) or stdout;
    from the agent's data folder, or (``--scores``) from a batch or fleet score output."""
    scores = getattr(args, "scores", None)
    if scores is not None:
        if args.data_dir is not None or args.config is not None:
            raise InputError("--scores", None, "either --scores or --data-dir/--config", "both")
        from minerwatch.service.reportbatch import build_batch_report

        doc = build_batch_report(scores, args.telemetry or [], args.episode, args.remediation)
    else:
        if getattr(args, "telemetry", None):
            raise InputError("--telemetry", None, "--scores FILE with it", "no --scores")
        doc = _agent_report(args)
    say(doc["notes"])
    if args.format == "json":
        text = json.dumps(doc, indent=1, default=str, allow_nan=False) + "\n"
    elif args.format == "md":
        text = render_markdown(doc)
    else:
        from minerwatch.service.reporthtml import render_html

        text = render_html(doc)
    if args.output is None or is_stdout(args.output):  # "-" as for score, not a file named -
        sys.stdout.write(text)
        return 0
    atomic_write(args.output, text, mode=0o600)  # command lines and paths: owner only
    print(
        f"wrote the {args.format} report of episode {doc['episode']['id']} to {args.output}",
        file=sys.stderr,
    )
    return 0
