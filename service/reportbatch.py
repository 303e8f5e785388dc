"""The incident report of an alert episode found in batch or fleet mode, where no agent kept
events, evidence or history: from a ``score``/``fleet score`` output and the telemetry files
it scored.

The scores give the episode (consecutive windows whose ``alert`` is 1, per host), its score,
threshold and top features; the telemetry gives the timeline (host CPU and the busiest
process) and, when it has a process table, the process that used the most CPU during the
episode. The document has the shape of :func:`~minerwatch.service.report.build_report`'s,
so the same JSON, Markdown and HTML renderers write it; what only an agent can know
(evidence, connections, persistence) is said to be missing, not left blank.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from minerwatch.baseline.batch import SCORE_COLUMNS
from minerwatch.features.errors import InputError
from minerwatch.features.io import TelemetryGroups
from minerwatch.service.indicators import load_knowledge_base
from minerwatch.service.report import (
    FORMAT,
    FORMAT_VERSION,
    MAX_POINTS,
    TIMELINE_COLUMNS,
    _checklist,
    _iso,
    _suspect,
    _thin,
    heavy_work_note,
    remediation,
)
from minerwatch.service.timefmt import dateable


def _top_features(text: str) -> list[dict[str, Any]]:
    """``name=value;...`` (as ``score`` writes it) as the report's feature rows.

    >>> _top_features("cpu_floor_5m=97.5;top_share=0.9")[0]
    {'feature': 'cpu_floor_5m', 'value': 97.5}
    """
    out: list[dict[str, Any]] = []
    for part in text.split(";"):
        name, _, value = part.partition("=")
        if name.strip():
            try:
                out.append({"feature": name.strip(), "value": float(value)})
            except ValueError:
                out.append({"feature": name.strip(), "value": None})
    return out


#: The columns of a scores file the report needs (``score`` may write more after them).
NEEDED = ("host", "window_start", "window_end", "score", "threshold", "alert", "top_features")


def _seconds(text: str) -> float:
    """A window's start or end: finite Unix seconds a date can show (nan, inf or 1e30 in a
    hand-edited file would fail later, unnamed)."""
    value = float(text)
    if not dateable(value):
        raise ValueError(f"{text.strip()!r}, not Unix seconds of a time in the years 1 to 9999")
    return value


def read_scores(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Rows of a scores file by host, sorted by window start; a bad row names its line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(str(path), None, "a readable scores file", str(exc)) from exc
    try:
        text = data.decode("utf-8-sig")  # a BOM: saved by a spreadsheet
    except UnicodeDecodeError as exc:
        raise InputError(
            str(path),
            data.count(b"\n", 0, exc.start) + 1,
            "a scores file of UTF-8 text",
            f"the byte 0x{data[exc.start]:02x}, which is not UTF-8 (saved as Latin-1?)",
        ) from None
    rows: dict[str, list[dict[str, Any]]] = {}
    with io.StringIO(text, newline="") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, None) or []]
        if not set(NEEDED) <= set(header):
            raise InputError(
                str(path),
                1,
                "the header of 'minerwatch score' (" + ",".join(SCORE_COLUMNS) + ")",
                ",".join(header)[:120] or "an empty file",
            )
        at = {name: header.index(name) for name in NEEDED}
        heavy_at = header.index("heavy_work") if "heavy_work" in header else None
        for n, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise InputError(str(path), n, f"{len(header)} fields", str(len(row)))
            try:
                parsed = {
                    "start": _seconds(row[at["window_start"]]),
                    "end": _seconds(row[at["window_end"]]),
                    "score": float(row[at["score"]]),
                    "threshold": float(row[at["threshold"]]),
                    "alert": int(row[at["alert"]]) == 1,
                    "top_features": row[at["top_features"]],
                    # files written before the column: not known
                    "heavy": None if heavy_at is None else int(row[heavy_at]) == 1,
                }
            except ValueError as exc:
                raise InputError(
                    str(path),
                    n,
                    "numbers in the window, score, alert and heavy_work fields",
                    str(exc),
                ) from None
            rows.setdefault(row[at["host"]], []).append(parsed)
    for windows in rows.values():
        windows.sort(key=lambda w: w["start"])
    return rows


def find_episodes(rows: Mapping[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Alert episodes: each run of consecutive alerted windows of one host.

    >>> w = lambda s, a: {"start": s, "end": s + 60, "score": 0.9, "threshold": 0.5,
    ...                   "alert": a, "top_features": ""}
    >>> list(find_episodes({"h": [w(0, 0), w(60, 1), w(120, 1), w(180, 0)]}))
    ['h-60']
    """
    out: dict[str, dict[str, Any]] = {}
    for host, windows in rows.items():
        run: list[dict[str, Any]] = []
        for w in [*windows, None]:
            if w is not None and w["alert"]:
                run.append(w)
                continue
            if run:
                peak = max(run, key=lambda r: r["score"])
                eid = f"{host}-{int(run[0]['start'])}"
                out[eid] = {
                    "id": eid,
                    "host": host,
                    "start": run[0]["start"],
                    "end": run[-1]["end"],
                    "score": peak["score"],
                    "threshold": peak["threshold"],
                    "windows": len(run),
                    "heavy_windows": (
                        sum(bool(r.get("heavy")) for r in run)
                        if all(r.get("heavy") is not None for r in run)
                        else None
                    ),
                    "top_features": _top_features(peak["top_features"]),
                }
                run = []
    return out


def _busiest(series: Any, start: float, end: float) -> dict[str, Any] | None:
    """The process with the most CPU over the episode, from the telemetry's process table."""
    procs = getattr(series, "procs", None)
    if procs is None or not len(procs):
        return None
    sel = (procs.timestamps >= start) & (procs.timestamps <= end)
    if not sel.any():
        return None
    keys = [(int(p), str(e)) for p, e in zip(procs.pids[sel], procs.exes[sel], strict=True)]
    cpu = procs.cpu[sel]
    total: dict[tuple[int, str], float] = {}
    for key, c in zip(keys, cpu.tolist(), strict=True):
        total[key] = total.get(key, 0.0) + (c if np.isfinite(c) else 0.0)
    best = max(total, key=lambda k: total[k])
    i = keys.index(best)
    idx = np.flatnonzero(sel)[i]
    return {
        "pid": best[0],
        "name": str(procs.names[idx]),
        "exe": best[1],
        "username": str(procs.users[idx]),
        "cpu_percent": round(total[best] / max(1, keys.count(best)), 1),
        "source": "telemetry process table (batch mode: no live details)",
    }


def build_batch_report(
    scores: Path,
    telemetry: Sequence[Path],
    episode_id: str | None = None,
    with_remediation: bool = False,
    now: float | None = None,
) -> dict[str, Any]:
    """The report of one episode (the latest by default) found in ``scores``."""
    notes: list[str] = []
    by_host = read_scores(scores)
    episodes = find_episodes(by_host)
    if not episodes:
        raise InputError(str(scores), None, "at least one alerted window (alert = 1)", "none")
    if episode_id is None:
        ep = max(episodes.values(), key=lambda e: e["start"])
    elif episode_id in episodes:
        ep = episodes[episode_id]
    else:
        known = ", ".join(sorted(episodes, key=lambda k: episodes[k]["start"])[-10:])
        raise InputError("--episode", None, f"one of the episodes in {scores}: {known}",
                         repr(episode_id))  # fmt: skip
    start, end = float(ep["start"]), float(ep["end"])
    margin = max(1800.0, 0.5 * (end - start))
    timeline: dict[str, Any] = {
        "since": start - margin, "until": end + margin, "samples": {}, "windows": [],
    }  # fmt: skip
    # only the files holding this host are read: the folder may hold a month of a fleet
    series = (
        TelemetryGroups(list(telemetry)).only([ep["host"]]).get(ep["host"]) if telemetry else None
    )
    if series is None:
        notes.append(
            f"telemetry: no samples of host {ep['host']} given (--telemetry): no CPU timeline"
            if telemetry
            else "telemetry: none given (--telemetry): no CPU timeline, no busiest process"
        )
    else:
        sel = (series.timestamps >= start - margin) & (series.timestamps <= end + margin)
        rows = _thin(np.flatnonzero(sel).tolist(), MAX_POINTS)
        samples: dict[str, list[float | None]] = {"ts": [float(series.timestamps[i]) for i in rows]}
        for c in TIMELINE_COLUMNS:
            if c in series.columns:
                col = series.column(c)
                samples[c] = [float(col[i]) if np.isfinite(col[i]) else None for i in rows]
        timeline["samples"] = samples
    for w in by_host.get(ep["host"], []):
        if w["end"] >= start - margin and w["start"] <= end + margin:
            timeline["windows"].append({k: w[k] for k in ("start", "end", "score", "threshold",
                                                          "alert")})  # fmt: skip
    timeline["windows"] = _thin(timeline["windows"], MAX_POINTS)
    suspect = _busiest(series, start, end) if series is not None else None
    if series is not None and suspect is None:
        notes.append("telemetry: no process table for the episode: no suspect named")
    notes.append(
        "batch mode: no agent kept evidence, connections or persistence for this episode; "
        "run 'minerwatch hunt' or collect evidence on the host"
    )
    work = heavy_work_note(ep)
    if work:
        notes.append(work)
    episode = {
        "id": ep["id"],
        "host": ep["host"],
        "start": start,
        "start_utc": _iso(start),
        "end": end,
        "end_utc": _iso(end),
        "duration_s": end - start,
        "score": ep["score"],
        "threshold": ep["threshold"],
        "opened_at_utc": None,
        "state": f"{ep['windows']} alerted windows in {scores.name}",
        "close_reason": None,
        "process": suspect,
        "earlier_processes": [],
        "top_features": ep["top_features"],
        "indicators": [],
        "evidence_path": None,
        "events": [],
        "windows": ep["windows"],
        "heavy_windows": ep["heavy_windows"],
        "heavy_work": [],
    }
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "generated_at_utc": _iso(time.time() if now is None else now),
        "host": ep["host"],
        "episode": episode,
        "evidence_file": None,
        "suspect": _suspect(episode, None, load_knowledge_base()),
        "other_processes": [],
        "indicators": [],
        "features": ep["top_features"],
        "persistence": {
            "crontabs": [],
            "systemd_units": [],
            "init_scripts": [],
            "authorized_keys": [],
            "ld_so_preload": {},
            "changes": [],
            "unchanged": 0,
            "baseline": "batch mode: no persistence baseline",
            "note": "batch mode: persistence is only known to an agent on the host",
        },  # fmt: skip
        "logged_in": [],
        "timeline": timeline,
        "throttle_actions": [],
        "notes": notes,
    }
    doc["checklist"] = _checklist(doc, agent=False)
    if with_remediation:
        doc["remediation"] = remediation(doc)
    return doc
