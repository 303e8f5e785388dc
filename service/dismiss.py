"""``minerwatch dismiss``: a responder's verdict that an alert episode was benign.

The agent's retraining leaves every alerted window out, so that a miner never becomes normal.
The price is that legitimate work the model has never seen (an index rebuild, an
administrator's new tool) pages again each time it comes back. Dismissing the episode records
it in the agent's history; the agent retrains within a minute (once no other episode is open)
and that training learns the episode's windows instead of leaving them out. Undoing a dismissal
starts another retraining that leaves them out again.

What a dismissal cannot do: a process that matched an indicator or a miner's disguise is
never learnt (training leaves it out whatever the verdict), and the record keeps who
dismissed which episode, when and why.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sqlite3
import sys
import time
from datetime import UTC, datetime
from typing import Any

from minerwatch.features.errors import InputError
from minerwatch.service.config import AgentConfig, agent_files_config, require_folder
from minerwatch.service.history import DISMISSED_TABLE, dismissal
from minerwatch.service.report import (
    choose_episode,
    episode_summary,
    evidence_episodes,
    read_events,
    say,
)
from minerwatch.service.respond import CONFIRMING
from minerwatch.service.terminal import printable

#: Longest reason kept: a note for the record, not a document.
MAX_REASON = 500


def _utc(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _who() -> str:
    """The person behind ``sudo`` if there is one, else the user running the command."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def _connect(cfg: AgentConfig) -> sqlite3.Connection:
    """The agent's history, opened for writing but never created: a missing file means the
    data folder is wrong (or the agent never ran), which is worth saying, not hiding."""
    db = cfg.history_path
    if not db.is_file():
        raise InputError(
            str(db), None, "the agent's history database (run 'minerwatch serve' first)", "none"
        )
    if not os.access(db, os.R_OK | os.W_OK):
        raise InputError(
            str(db),
            None,
            "write access to the agent's history (run as the agent's user: root with the unit "
            "file)",
            "permission denied",
        )
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=rw", uri=True, timeout=10.0)
        conn.execute(DISMISSED_TABLE)
    except sqlite3.Error as exc:
        raise InputError(
            str(db), None, "a writable minerwatch history database", str(exc)
        ) from None
    return conn


def dismiss(
    cfg: AgentConfig, episode_id: str | None, reason: str, now: float | None = None
) -> dict[str, Any]:
    """Record the episode (the latest by default) as benign; return the record, with
    ``"already"`` set when it was dismissed before (nothing changes then)."""
    notes: list[str] = []
    assert cfg.event_log is not None and cfg.evidence_dir is not None
    events = read_events(cfg.event_log, notes)
    by_evidence = evidence_episodes(cfg.evidence_dir, notes, known=events)
    say(notes)  # damaged lines first: the episode may be missing because of them
    eid, evs = choose_episode(
        events, by_evidence, episode_id, str(cfg.event_log), notes, cfg.event_log
    )
    episode = episode_summary(eid, evs)
    start, end = episode["start"], episode["end"]
    if start is None or end is None:
        raise InputError(
            str(cfg.event_log),
            None,
            f"event lines with the start and end of episode {eid}",
            "none usable (only its evidence file is left, or its line is damaged): there are no "
            "windows to learn",
        )
    conn = _connect(cfg)
    try:
        with conn:
            # the write lock before the read: two responders dismissing at once, the second
            # waits and is told "already", instead of replacing the first's who and why
            conn.execute("BEGIN IMMEDIATE")
            row = dismissal(conn, eid)
            record = {
                "episode": eid,
                "host": episode["host"],
                "start": start,
                "end": end,
                "state": episode["state"],
            }
            if row is not None:
                return {**record, "at": row[0], "by": row[1], "reason": row[2], "already": True}
            record["confirming"] = _confirming(episode)
            windows = conn.execute(
                "SELECT count(*) FROM windows WHERE alert = 1 AND window_start < ?"
                " AND window_end > ?",
                (end, start),
            ).fetchone()[0]
            if not windows:  # a record the retraining has nothing to learn from
                raise InputError(
                    str(cfg.history_path),
                    None,
                    f"the alerted windows of episode {eid} ({_utc(start)} to {_utc(end)}), for "
                    "the retraining to learn",
                    "none: they are older than the history keeps, or the history was started "
                    "afresh since; nothing dismissed",
                )
            at = time.time() if now is None else now
            by = _who()
            conn.execute(
                "INSERT OR REPLACE INTO dismissed (episode, host, start, end, at, by, reason,"
                " undone_at) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                (eid, episode["host"], start, end, at, by, reason),
            )
    except sqlite3.Error as exc:
        raise InputError(
            str(cfg.history_path), None, "a writable history database", str(exc)
        ) from None
    finally:
        conn.close()
    return {**record, "at": at, "by": by, "reason": reason, "windows": windows, "already": False}


def _confirming(episode: dict[str, Any]) -> list[str]:
    """The episode's indicators that say what a process *is* (a miner's name, a pool port,
    a stratum URL, a disguise), in words: a benign verdict on those deserves a second look."""
    out = []
    for h in episode.get("indicators") or []:
        if isinstance(h, dict) and h.get("indicator_id") in CONFIRMING:
            pid = h.get("pid")
            out.append(f"{h['indicator_id']}" + (f" (pid {pid})" if pid is not None else ""))
    return list(dict.fromkeys(out))


def undo(cfg: AgentConfig, episode_id: str, now: float | None = None) -> dict[str, Any]:
    """Take a dismissal back: the next retraining leaves the episode's windows out again."""
    conn = _connect(cfg)
    try:
        with conn:
            conn.execute("BEGIN IMMEDIATE")  # as dismiss: one writer from read to write
            row = conn.execute(
                "SELECT host, start, end, at, by, reason FROM dismissed"
                " WHERE episode = ? AND undone_at IS NULL",
                (episode_id,),
            ).fetchone()
            if row is None:
                raise InputError(
                    str(cfg.history_path),
                    None,
                    f"a dismissal of episode {episode_id!r} (see 'minerwatch dismiss --list')",
                    "none",
                )
            at = time.time() if now is None else now
            conn.execute("UPDATE dismissed SET undone_at = ? WHERE episode = ?", (at, episode_id))
    except sqlite3.Error as exc:
        raise InputError(
            str(cfg.history_path), None, "a writable history database", str(exc)
        ) from None
    finally:
        conn.close()
    keys = ("host", "start", "end", "at", "by", "reason")
    return {"episode": episode_id, **dict(zip(keys, row, strict=True)), "undone_at": at}


def dismissals(cfg: AgentConfig) -> list[dict[str, Any]]:
    """Every dismissal in force, oldest first."""
    conn = _connect(cfg)
    try:
        rows = conn.execute(
            "SELECT episode, host, start, end, at, by, reason FROM dismissed"
            " WHERE undone_at IS NULL ORDER BY at"
        ).fetchall()
    except sqlite3.Error as exc:
        raise InputError(
            str(cfg.history_path), None, "a readable history database", str(exc)
        ) from None
    finally:
        conn.close()
    keys = ("episode", "host", "start", "end", "at", "by", "reason")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def _reason(text: str | None) -> str:
    if text is None:
        return ""
    clean = " ".join(text.split())
    if len(clean) > MAX_REASON:
        raise InputError("--reason", None, f"at most {MAX_REASON} characters", f"{len(clean)}")
    return clean


def run(args: argparse.Namespace) -> int:
    """Dismiss (default), ``--undo`` or ``--list``; the outcome on stdout."""
    cfg = agent_files_config(args.config, args.data_dir)
    require_folder(cfg.data_dir, "the agent's data folder (--data-dir, data_dir)")
    if args.list:
        if args.undo or args.episode or args.reason is not None:
            raise InputError("--list", None, "--list alone", "with --episode, --undo or --reason")
        records = dismissals(cfg)
        if args.json:
            print(json.dumps(records, indent=1))
            return 0
        if not records:
            print(f"no dismissed episodes in {cfg.history_path}")
            return 0
        print(f"{'episode':<32} {'alerted from':<21} {'to':<21} {'dismissed':<21} by  reason")
        for r in records:
            print(
                f"{r['episode']:<32} {_utc(r['start']):<21} {_utc(r['end']):<21} "
                f"{_utc(r['at']):<21} {printable(r['by'])}  {printable(r['reason'] or '-')}"
            )
        return 0
    if args.undo is not None:
        if args.episode or args.reason is not None:
            raise InputError("--undo", None, "--undo ID alone", "with --episode or --reason")
        record = undo(cfg, args.undo)
        if args.json:
            print(json.dumps(record, indent=1))
        else:
            print(
                f"dismissal of episode {record['episode']} undone: the agent's next retraining, "
                "within a minute once no episode is open, leaves its windows out again"
            )
        return 0
    record = dismiss(cfg, args.episode, _reason(args.reason))
    if args.json:
        print(json.dumps(record, indent=1))
    elif record["already"]:
        print(
            f"episode {record['episode']} was already dismissed at {_utc(record['at'])} by "
            f"{record['by']}; nothing changed"
        )
    else:
        when = (
            "within a minute"
            if record["state"] == "closed"
            else "within a minute, with its windows so far (it is still open, or the agent "
            "stopped without closing it)"
        )
        print(
            f"dismissed episode {record['episode']} on {record['host']} "
            f"({_utc(record['start'])} to {_utc(record['end'])}, {record['windows']} alerted "
            f"windows) as benign: the agent's next retraining, {when}, learns these windows "
            "instead of leaving them out; 'minerwatch dismiss --undo "
            f"{record['episode']}' takes it back"
        )
    if record.get("confirming"):
        eid = record["episode"]
        print(
            f"minerwatch: warning: episode {eid} matched miner indicators "
            f"({', '.join(record['confirming'])}): dismissed as asked, but check "
            f"'minerwatch report --episode {eid}' (the latest episode is dismissed unless "
            f"--episode names one); those processes are never learnt, and "
            f"'minerwatch dismiss --undo {eid}' takes it back",
            file=sys.stderr,
        )
    if cfg.retrain_every <= 0:
        print(
            f"minerwatch: warning: retrain_every = 0 in {args.config or 'the defaults'}: the "
            "agent never retrains, so it will not learn this",
            file=sys.stderr,
        )
    return 0
