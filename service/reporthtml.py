"""The incident report as one self-contained HTML page: opens from a mail attachment offline.

No script, no stylesheet or image fetched from anywhere: the style is inline and the
timeline is a PNG drawn by matplotlib (when installed) embedded as base64, else an SVG
drawn here. Every value from the host goes through :func:`html.escape`: process names and
command lines are chosen by the attacker.
"""

from __future__ import annotations

import base64
import html
import io
import math
import shlex
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from minerwatch.service.packages import package_words
from minerwatch.service.report import cpu_words, finite_or_none
from minerwatch.service.terminal import printable

_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1150px}
h1{font-size:22px}h3{font-size:14px}
h2{font-size:17px;border-bottom:1px solid #ccc;padding-bottom:3px}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ccc;padding:3px 7px;
text-align:left;vertical-align:top;font-size:13px}th{background:#f2f2f2}
code,pre{font-family:ui-monospace,monospace;font-size:12px;background:#f6f6f6}
pre{padding:6px;white-space:pre-wrap;word-break:break-all}
.hot{background:#ffd6d6;font-weight:bold}.done{color:#176117;font-weight:bold}
.todo{color:#9a5b00;font-weight:bold}.note{color:#666;font-size:12px}
"""


def _e(value: Any) -> str:
    """Escaped text; control characters shown as \\xNN so they cannot hide anything."""
    text = printable(value, keep="\n\t")
    return html.escape(text, quote=True)


def _fmt(value: Any) -> str:
    f = finite_or_none(value)
    return "-" if f is None else f"{f:.4g}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """``rows`` hold HTML already escaped by the caller."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{f'<tr>{head}</tr>' if head else ''}{body}</table>"


# -- the timeline plot ------------------------------------------------------------------------


def _series(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The plot's data: sample times and columns, windows, alert span, throttle times."""
    tl = doc["timeline"]
    ep = doc["episode"]
    return {
        "samples": tl.get("samples") or {},
        "windows": [w for w in tl.get("windows") or [] if finite_or_none(w.get("end")) is not None],
        "span": (finite_or_none(ep.get("start")), finite_or_none(ep.get("end"))),
        "actions": [
            (finite_or_none(a.get("ts")), str(a.get("action"))) for a in doc["throttle_actions"]
        ],
    }


def timeline_png(doc: Mapping[str, Any]) -> str | None:
    """The timeline as a base64 PNG (matplotlib, no pyplot state), or None without it."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    data = _series(doc)
    samples, windows = data["samples"], data["windows"]
    fig = Figure(figsize=(11, 5.2), dpi=100)
    FigureCanvasAgg(fig)
    cpu, score = fig.subplots(2, 1, sharex=True)
    t = [datetime.fromtimestamp(x, UTC) for x in samples.get("ts", []) if x is not None]
    for col, label in (
        ("cpu_percent", "host CPU (% of host)"),
        ("top_proc_cpu_percent", "busiest process (% of one core)"),
    ):
        if col in samples and t:
            ys = [math.nan if v is None else v for v in samples[col]][: len(t)]
            cpu.plot(t, ys, label=label, linewidth=1.2)
    cpu.set_ylabel("CPU %")
    if windows:
        wt = [datetime.fromtimestamp(w["end"], UTC) for w in windows]
        score.plot(
            wt,
            [w["score"] if w["score"] is not None else math.nan for w in windows],
            label="score",
            color="tab:purple",
            linewidth=1.2,
            marker=".",
        )
        score.step(
            wt,
            [w["threshold"] if w["threshold"] is not None else math.nan for w in windows],
            label="threshold",
            color="tab:red",
            linestyle="--",
            where="post",
        )
    score.set_ylabel("score (0-1)")
    start, end = data["span"]
    for ax in (cpu, score):
        if start is not None and end is not None:
            ax.axvspan(
                datetime.fromtimestamp(start, UTC),
                datetime.fromtimestamp(max(end, start + 1), UTC),
                color="tab:red",
                alpha=0.15,
                label="alert",
            )
        for ts, kind in data["actions"]:
            if ts is not None:
                ax.axvline(
                    datetime.fromtimestamp(ts, UTC),
                    color="black" if kind == "throttle" else "grey",
                    linestyle=":",
                    linewidth=1,
                )
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # an empty legend is a UserWarning on stderr
            ax.legend(loc="upper left", fontsize=8)
    score.set_xlabel("time (UTC); dotted lines: throttle actions")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def timeline_svg(doc: Mapping[str, Any], width: int = 1000, height: int = 360) -> str:
    """The same plot drawn by hand as inline SVG, for hosts without matplotlib."""
    data = _series(doc)
    samples, windows = data["samples"], data["windows"]
    times = [x for x in samples.get("ts", []) if x is not None]
    times += [w["end"] for w in windows]
    start, end = data["span"]
    times += [x for x in (start, end) if x is not None]
    if not times:
        return '<p class="note">no history to plot</p>'
    t0, t1 = min(times), max(max(times), min(times) + 1)
    pad, half = 50, (height - 30) // 2

    def x(ts: float) -> float:
        return float(pad + (ts - t0) / (t1 - t0) * (width - 2 * pad))

    def line(
        points: list[tuple[float, float | None]], top: int, lo: float, hi: float, color: str
    ) -> str:
        span = hi - lo or 1.0
        pts = " ".join(
            f"{x(t):.1f},{top + half - 10 - (v - lo) / span * (half - 20):.1f}"
            for t, v in points
            if v is not None
        )
        return f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"/>'

    parts = [
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        'aria-label="timeline">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    if start is not None and end is not None:
        parts.append(
            f'<rect x="{x(start):.1f}" y="0" width="{max(2.0, x(end) - x(start)):.1f}" '
            f'height="{height - 30}" fill="#f4b0b0" opacity="0.5"/>'
        )
    for ts, _ in data["actions"]:
        if ts is not None:
            parts.append(
                f'<line x1="{x(ts):.1f}" x2="{x(ts):.1f}" y1="0" y2="{height - 30}" '
                'stroke="black" stroke-dasharray="2,3"/>'
            )
    ts_s = samples.get("ts", [])
    cpu_max = max([v for v in samples.get("cpu_percent", []) if v is not None] + [100.0])
    for col, color in (("cpu_percent", "#1f77b4"), ("top_proc_cpu_percent", "#ff7f0e")):
        if col in samples:
            pts = [(t, v) for t, v in zip(ts_s, samples[col], strict=False) if t is not None]
            top = max([v for _, v in pts if v is not None] + [cpu_max])
            parts.append(line(pts, 0, 0.0, top, color))
    parts.append(line([(w["end"], w["score"]) for w in windows], half, 0.0, 1.0, "#9467bd"))
    parts.append(line([(w["end"], w["threshold"]) for w in windows], half, 0.0, 1.0, "#d62728"))
    first, last = datetime.fromtimestamp(t0, UTC), datetime.fromtimestamp(t1, UTC)
    label = f"{first:%Y-%m-%d %H:%M} .. {last:%H:%M} UTC"
    parts += [
        f'<text x="{pad}" y="14" font-size="12">CPU % (blue host, orange busiest process)</text>',
        f'<text x="{pad}" y="{half + 14}" font-size="12">'
        "score (purple) and threshold (red), 0-1</text>",
        f'<text x="{pad}" y="{height - 10}" font-size="12">'
        f"{_e(label)}; red band: alert; dotted: throttle</text>",
        "</svg>",
    ]
    return "".join(parts)


# -- the page ---------------------------------------------------------------------------------


def _suspect_html(s: Mapping[str, Any] | None) -> str:
    if not s:
        return "<p>No suspect process was named for this episode.</p>"
    rows = [
        ("pid", _e(s.get("pid"))),
        ("name", f"<code>{_e(s.get('name', '-'))}</code>"),
        (
            "executable",
            f"<code>{_e(s.get('exe') or '-')}</code>"
            + (" <b>(deleted from disk)</b>" if s.get("exe_deleted") else "")
            + (
                f", run by the dynamic loader <code>{_e(s['loader'])}</code>"
                if s.get("loader")
                else ""
            ),
        ),
        ("sha256", f"<code>{_e(s.get('sha256') or s.get('hash_error') or '-')}</code>"),
        ("package", _e(package_words(s.get("package")))),
        ("user", _e(s.get("username") or s.get("user") or "-")),
        ("CPU", _e(cpu_words(s.get("cpu_percent")))),
        ("started", _e(s.get("create_time_utc") or "-")),
        ("working directory", f"<code>{_e(s.get('cwd') or '-')}</code>"),
        ("command line", f"<pre>{_e(shlex.join(s.get('cmdline') or []))}</pre>"),
    ]
    chain = s.get("parents") or []
    rows.append(
        (
            "parent chain",
            "<br>".join(
                f"{_e(p.get('pid'))} <code>{_e(p.get('name'))}</code> ({_e(p.get('username'))}) "
                f"<code>{_e(p.get('exe'))}</code>"
                for p in chain
                if isinstance(p, dict)
            )
            or "-",
        )
    )
    for url in s.get("stratum_urls") or []:
        rows.append(("stratum URL", f'<span class="hot">{_e(url)}</span>'))
    out = [_table([], [(f"<b>{_e(k)}</b>", v) for k, v in rows])]
    conns = s.get("connections") or []
    out.append("<h3>Connections</h3>")
    out.append(
        _table(
            ["proto", "local", "remote", "status", ""],
            [
                [
                    _e(c.get("proto")),
                    _e(c.get("local")),
                    f'<span class="hot">{_e(c.get("remote"))}</span>'
                    if c.get("pool_port")
                    else _e(c.get("remote")),
                    _e(c.get("status")),
                    "known mining pool port" if c.get("pool_port") else "",
                ]
                for c in conns
            ],
        )
        if conns
        else "<p>none recorded</p>"
    )
    listening = s.get("listening") or []
    out.append("<h3>Listening ports</h3>")
    out.append(
        _table(["proto", "local"], [[_e(x.get("proto")), _e(x.get("local"))] for x in listening])
        if listening
        else "<p>none</p>"
    )
    return "".join(out)


def _files_html(items: Sequence[Mapping[str, Any]]) -> str:
    if not items:
        return "<p>none changed recently</p>"
    rows = []
    for it in items:
        body = (
            f"<pre>{_e(it['content'])}</pre>"
            if it.get("content")
            else _e(it.get("link_target") or it.get("error") or "")
        )
        rows.append(
            [
                f"<code>{_e(it.get('path'))}</code>",
                _e(it.get("mtime_utc") or "-"),
                _e(it.get("uid")),
                body,
            ]
        )
    return _table(["path", "changed (UTC)", "uid", "content"], rows)


def _status_class(status: str) -> str:
    return "done" if status == "done" else "todo"


def _changes_html(persistence: dict[str, Any]) -> str:
    """Persistence entries new, changed or removed since the baseline, new ones first."""
    order = {"new": 0, "changed": 1, "removed": 2}
    rows = [
        [
            f'<span class="{"note" if e["status"] == "removed" else "hot"}">'
            f"{_e(e['status'])}</span>",
            _e(e.get("kind")),
            f"<code>{_e(e.get('path'))}</code>",
        ]
        for e in sorted(persistence.get("changes", []), key=lambda e: order.get(e["status"], 3))
    ]
    head = (
        f'<p class="note">{_e(persistence.get("baseline", ""))}; '
        f"{_e(persistence.get('unchanged', 0))} entries unchanged</p>"
    )
    return head + (_table(["status", "kind", "path"], rows) if rows else "<p>none</p>")


def render_html(doc: Mapping[str, Any]) -> str:
    """The whole page; nothing in it refers to the network."""
    ep = doc["episode"]
    png = timeline_png(doc)
    plot = (
        f'<img alt="timeline" width="1100" src="data:image/png;base64,{png}">'
        if png
        else timeline_svg(doc) + '<p class="note">plot drawn without matplotlib (pip install '
        "'minerwatch[plots]' for a finer one)</p>"
    )
    ind_rows = [
        [
            _e(h.get("indicator_id")),
            _e(h.get("reason")),
            _e(h.get("pid") if h.get("pid") is not None else "host-wide"),
            f"<code>{_e(h.get('detail'))}</code>",
            "<br>".join(
                f"{_e(r['title'])}: {_e(r['fact'])} <span class=note>({_e(r['url'])})</span>"
                for r in h.get("sources", [])
            ),
        ]
        for h in doc["indicators"]
    ]
    feat_rows = [
        [
            _e(f.get("feature")),
            _fmt(f.get("value")),
            f"{_fmt(f.get('typical_low'))} &ndash; {_fmt(f.get('typical_high'))}",
            _fmt(f.get("contribution")),
        ]
        for f in doc["features"]
        if isinstance(f, dict)
    ]
    pre = doc["persistence"]["ld_so_preload"] or {}
    pre_html = (
        f'<p class="hot">{_e(pre.get("path"))} is not empty:</p><pre>{_e(pre.get("content"))}</pre>'
        if pre.get("exists") and str(pre.get("content") or "").strip()
        else f"<p>{_e(pre.get('path') or '/etc/ld.so.preload')}: empty or absent</p>"
    )
    checklist = _table(
        ["step", "what", "status", "detail"],
        [
            [
                _e(c["step"]),
                _e(c["what"]),
                f'<span class="{_status_class(c["status"])}">{_e(c["status"])}</span>',
                _e(c["detail"]),
            ]
            for c in doc["checklist"]
        ],
    )
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>Incident report {_e(doc['host'])} {_e(ep['id'])}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Incident report: {_e(doc['host'])}, episode <code>{_e(ep['id'])}</code></h1>",
        _table(
            [],
            [
                [
                    "<b>alert</b>",
                    f"{_e(ep.get('start_utc') or '-')} to {_e(ep.get('end_utc') or '-')} "
                    f"({_e(ep.get('state'))})",
                ],
                [
                    "<b>score</b>",
                    f"{_fmt(ep.get('score'))} above threshold {_fmt(ep.get('threshold'))}",
                ],
                ["<b>evidence file</b>", f"<code>{_e(doc.get('evidence_file') or 'none')}</code>"],
                ["<b>generated</b>", _e(doc.get("generated_at_utc"))],
            ],
        ),
        '<h2 id="timeline">Timeline</h2>',
        plot,
        '<h2 id="suspect">Suspect process</h2>',
        _suspect_html(doc.get("suspect")),
        '<h2 id="indicators">Indicators matched</h2>',
        _table(["indicator", "reason", "pid", "detail", "sources"], ind_rows)
        if ind_rows
        else "<p>none</p>",
        '<h2 id="features">What drove the score</h2>',
        _table(["feature", "value", "usual range", "share of the score"], feat_rows)
        if feat_rows
        else "<p>no explanation</p>",
        '<h2 id="persistence">Persistence</h2>',
        f'<p class="note">{_e(doc["persistence"]["note"])}</p>',
        "<h3>New or changed since learning</h3>",
        _changes_html(doc["persistence"]),
        "<h3>Crontabs</h3>",
        _files_html(doc["persistence"]["crontabs"]),
        "<h3>systemd units</h3>",
        _files_html(doc["persistence"]["systemd_units"]),
        "<h3>Init scripts</h3>",
        _files_html(doc["persistence"].get("init_scripts", [])),
        "<h3>authorized_keys</h3>",
        _files_html(doc["persistence"].get("authorized_keys", [])),
        "<h3>ld.so.preload</h3>",
        pre_html,
        '<h2 id="checklist">Response checklist</h2>',
        checklist,
    ]
    if "remediation" in doc:
        cmds = (
            "\n".join(f"{c['command']}    # {c['why']}" for c in doc["remediation"])
            or "# nothing found"
        )
        parts += [
            '<h2 id="remediation">Remediation, for review</h2>',
            "<p>minerwatch runs none of these; check each before running it.</p>",
            f"<pre>{_e(cmds)}</pre>",
        ]
    if doc["notes"]:
        parts += ["<h2>Notes</h2><ul>", *(f"<li>{_e(n)}</li>" for n in doc["notes"]), "</ul>"]
    parts.append("</body></html>\n")
    return "\n".join(parts)
