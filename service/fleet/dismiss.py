"""``minerwatch fleet dismiss``: a responder's verdict that a host's alert was benign, for
``fleet serve``.

Fleet mode's retraining, like the agent's, leaves alerted time out so a miner never becomes
normal; the same legitimate work would then page every time it comes back. A dismissal names
the host and the span; ``fleet serve`` (which reads :data:`DISMISSED_FILE` in its state folder
every cycle) retrains that host at once, and the training learns the span instead of leaving
it out. The file is JSON, 0600, written atomically under a lock, and keeps who dismissed what,
when and why.
"""

from __future__ import annotations

import argparse
import fcntl
import getpass
import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from minerwatch.features.atomic import atomic_write
from minerwatch.features.errors import InputError
from minerwatch.service.terminal import printable

#: In ``fleet serve``'s state folder (its ``--state-dir``, else its ``--models`` folder).
DISMISSED_FILE = "fleet-dismissed.json"
#: ``fleet serve``'s alert state kept across restarts, beside :data:`DISMISSED_FILE`
#: (defined here so that ``fleet dismiss`` can look for it without importing the server).
STATE_FILE = "fleet-serve-state.json"
FORMAT = "minerwatch-fleet-dismissals"
#: Longest reason kept: a note for the record, not a document.
MAX_REASON = 500
#: How far past this machine's clock ``--end`` may reach (clocks differ a little): a span
#: ending later would dismiss, unseen, every alert of the host until then, a miner's too.
FUTURE_SLACK_S = 300.0


def read_dismissed(path: Path) -> list[dict[str, Any]]:
    """The dismissals in the file (none when there is no file); a file that is not ours or
    is damaged is an :class:`InputError` naming it and what was expected."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(str(path), None, "a readable dismissals file", str(exc)) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(str(path), exc.lineno, "JSON", exc.msg) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(str(path), None, f'an object with "format": "{FORMAT}"', "another file")
    items = doc.get("dismissed")
    if not isinstance(items, list):
        raise InputError(str(path), None, '"dismissed" as a list', type(items).__name__)
    out = []
    for i, item in enumerate(items):
        ok = isinstance(item, dict) and isinstance(item.get("host"), str)
        ok = ok and all(
            isinstance(item.get(k), int | float) and math.isfinite(item[k])
            for k in ("start", "end", "at")
        )
        if not ok or item["start"] > item["end"]:
            raise InputError(
                str(path),
                None,
                f"dismissed[{i}] with host, start <= end and at (finite Unix seconds)",
                repr(item)[:120],
            )
        out.append(item)
    return out


def spans_by_host(items: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Host -> the (start, end) spans dismissed on it."""
    out: dict[str, list[tuple[float, float]]] = {}
    for item in items:
        out.setdefault(item["host"], []).append((float(item["start"]), float(item["end"])))
    return out


def _owner(folder: Path) -> tuple[int, int] | None:
    """Whom the files written into ``folder`` must belong to: its owner, when root writes
    into a folder of another user (fleet serve's state folder under its own system user,
    deploy/minerwatch-fleet.service); else None, the writer's own. A record only root could
    read would be refused by fleet serve, and the dismissal would never take effect."""
    if os.geteuid() != 0:
        return None
    st = folder.stat()
    return None if st.st_uid == 0 else (st.st_uid, st.st_gid)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One writer at a time (read, change, write), even from two shells."""
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        owner = _owner(path.parent)
        if owner is not None:  # so the folder's user can take the lock after root did
            os.fchown(fd, *owner)
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write(path: Path, items: list[dict[str, Any]]) -> None:
    doc = {"format": FORMAT, "version": 1, "dismissed": items}
    atomic_write(path, json.dumps(doc, indent=1) + "\n", mode=0o600, owner=_owner(path.parent))


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _folder(args: argparse.Namespace) -> Path:
    folder = Path(args.state_dir)
    if not folder.is_dir():
        raise InputError(str(folder), None, "fleet serve's state folder", "no such folder")
    return folder / DISMISSED_FILE


def check_state_folder(folder: Path) -> None:
    """Refuse to record a dismissal where ``fleet serve`` would never read it: a folder with
    no state file of fleet serve (:data:`STATE_FILE`), no dismissals file and no
    model (``<host>/meta.json``, as fleet serve finds them) is a mistyped path, and a record
    there would silently change nothing."""
    from minerwatch.baseline.store import list_hosts

    if (folder / STATE_FILE).exists() or (folder / DISMISSED_FILE).exists():
        return
    if list_hosts(folder):
        return
    raise InputError(
        str(folder), None, f"fleet serve's state folder: its --state-dir (holding {STATE_FILE}) "
        "or its --models folder (holding models)", "a folder holding neither (mistyped?)",
    )  # fmt: skip


def run_dismiss(args: argparse.Namespace) -> int:
    """Dismiss ``--host`` from ``--start`` to ``--end``; or ``--list``; or ``--undo``."""
    path = _folder(args)
    if args.list:
        items = read_dismissed(path)
        if args.json:
            print(json.dumps(items, indent=1))
        elif not items:
            print(f"no dismissed alerts in {path}")
        for item in [] if args.json else items:
            print(
                f"{printable(item['host']):<24} {_utc(item['start'])} to {_utc(item['end'])}  "
                f"dismissed {_utc(item['at'])} by {printable(item.get('by') or '-')}  "
                f"{printable(item.get('reason') or '-')}"
            )
        return 0
    if args.host is None or args.start is None:
        raise InputError("fleet dismiss", None, "--host and --start (or --list)", "missing")
    reason = " ".join((args.reason or "").split())
    if not args.undo:  # checked before the folder is touched: a usage error changes nothing
        if args.end is None or args.end < args.start:
            got = "none (--end is required to dismiss)" if args.end is None else _utc(args.end)
            raise InputError("--end", None, "a time at or after --start", got)
        if args.end > time.time() + FUTURE_SLACK_S:  # it would dismiss alerts yet to come
            raise InputError(
                "--end",
                None,
                "the end of an alert that has happened, not a time in the future (for an "
                "alert still open, the current time: it is learnt whole when it closes)",
                _utc(args.end),
            )
        if len(reason) > MAX_REASON:
            raise InputError("--reason", None, f"at most {MAX_REASON} characters", f"{len(reason)}")
        check_state_folder(path.parent)
    with _locked(path):
        items = read_dismissed(path)
        if args.undo:
            kept = [i for i in items if not (i["host"] == args.host and i["start"] == args.start)]
            if len(kept) == len(items):
                raise InputError(
                    str(path), None, f"a dismissal of {args.host} from {args.start:g}", "none"
                )
            _write(path, kept)
            print(
                f"dismissal of {args.host} from {_utc(args.start)} undone: fleet serve retrains "
                "the host within a cycle and leaves that span out again"
            )
            return 0
        if any(i["host"] == args.host and i["start"] == args.start for i in items):
            print(f"{args.host} from {_utc(args.start)} was already dismissed; nothing changed")
            return 0
        by = os.environ.get("SUDO_USER") or getpass.getuser()
        record = {"host": args.host, "start": args.start, "end": args.end}
        items.append({**record, "at": time.time(), "by": by, "reason": reason})
        _write(path, items)
    print(
        f"dismissed {args.host} from {_utc(args.start)} to {_utc(args.end)} as benign: fleet "
        "serve retrains the host within a cycle and learns that span instead of leaving it out"
    )
    return 0
