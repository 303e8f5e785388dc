"""``minerwatch evaluate``: how well the baseline (and the rules it replaces) catch labelled miners.

On a labelled simulation (``--data DIR`` with ``train/``, ``test/`` and ``labels.json``) it trains
or loads one baseline per host, scores the test split, runs the reference detectors on the same
windows and prints, per campaign kind, per identity kind (how the miner's process looks: new,
disguised, inside) and overall, recall within 30 minutes, median and worst delay, false-alarm
episodes per host-day, the share of clean time alerted and which benign kinds alarmed
(definitions in :mod:`minerwatch.bench.metrics`). The new-exe reference needs process tables;
without them it is reported as n/a. ``--output`` writes ``report.md``
and one PNG per host. ``--smd`` / ``--nab`` run the public benchmarks instead
(:mod:`minerwatch.bench.public`).

scikit-learn and matplotlib are imported only inside the functions that need them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from minerwatch.bench import metrics
from minerwatch.bench.reference import NaiveIForest, NewExeRule, cpu_5m, static_rule
from minerwatch.features.atomic import atomic_write
from minerwatch.features.errors import InputError
from minerwatch.features.io import HostSeries
from minerwatch.service.units import format_duration

Progress = Callable[[str], None]
DETECTORS = ("minerwatch", "dismissed", "static_rule", "cpu_5m", "naive_iforest", "new_exe")
DETECTOR_TITLES = {
    "minerwatch": "minerwatch baseline",
    "dismissed": "minerwatch, each false alarm dismissed 30 min after it paged and learnt "
    "(minerwatch dismiss)",
    "static_rule": "static rule: CPU > 85 % for 3 h",
    "cpu_5m": "fast rule: CPU > 80 % for 5 min",
    "naive_iforest": "naive IsolationForest (window means, max training score)",
    "new_exe": "new-exe rule: an exe never seen in training uses >= 50 % of a core",
}
#: Identity kinds in the order the tables show them (how a miner's process looks).
IDENTITY_ORDER = ("new", "disguised", "inside")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _quiet(msg: str) -> None:
    del msg


@dataclass
class HostRun:
    """Everything measured on one host: windows, per-detector alerts, the baseline's score."""

    host: str
    test: HostSeries
    window_start: np.ndarray
    window_end: np.ndarray
    score: np.ndarray
    threshold: float
    alerts: dict[str, np.ndarray]


# --------------------------------------------------------------------------- data


def load_labels(data: Path) -> tuple[list[metrics.Event], dict]:
    """Test-split events and the rest of ``labels.json`` (hosts, seed, ...)."""
    events, _, meta = _read_labels(data)
    return events, meta


def _read_labels(data: Path) -> tuple[list[metrics.Event], list[int], dict]:
    """As :func:`load_labels`, plus each event's position in the file's ``events`` list."""
    path = Path(data) / "labels.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(
            str(path), None, "a labels.json written by 'minerwatch simulate'", "no such file"
        ) from None
    except json.JSONDecodeError as exc:
        raise InputError(str(path), exc.lineno, "valid JSON", exc.msg) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("events"), list):
        raise InputError(str(path), None, "an object with an 'events' list", type(raw).__name__)
    events = []
    index = []
    for i, ev in enumerate(raw["events"]):
        try:
            split = ev.get("split", "test")
            if split not in ("train", "test"):  # a typo would drop the event unsaid
                raise InputError(
                    str(path), None, f"events[{i}] with split 'train' or 'test'", repr(split)
                )
            if split != "test":
                continue
            if not isinstance(ev["malicious"], bool) and ev["malicious"] not in (0, 1):
                # bool("false") is True: a quoted or misspelt flag would flip the event
                raise InputError(
                    str(path),
                    None,
                    f"events[{i}] with malicious true or false",
                    repr(ev["malicious"]),
                )
            campaign = ev.get("campaign")
            identity = ev.get("identity")  # absent in labels written before process tables
            events.append(
                metrics.Event(
                    str(ev["host"]),
                    str(ev["kind"]),
                    bool(ev["malicious"]),
                    float(ev["start"]),
                    float(ev["end"]),
                    None if campaign is None else str(campaign),
                    None if identity is None else str(identity),
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise InputError(
                str(path),
                None,
                f"events[{i}] with host, kind, malicious, start, end",
                repr(ev)[:120],
            ) from None
        index.append(i)
        last = events[-1]
        if not (math.isfinite(last.start) and math.isfinite(last.end) and last.start <= last.end):
            raise InputError(
                str(path),
                None,
                f"events[{i}] with finite times, start <= end",
                f"start {ev['start']!r}, end {ev['end']!r}",
            )
    meta = {k: v for k, v in raw.items() if k != "events"}
    return events, index, meta


#: A hand-written event may start this long before the host's first test sample (labels in
#: whole minutes, samples with a collector's jitter); its delay counts from its start.
START_SLACK = 60.0


def _utc(t: float) -> str:
    return datetime.fromtimestamp(round(t), UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def check_labels(
    path: Path, events: list[metrics.Event], index: list[int], test: dict[str, HostSeries]
) -> None:
    """Refuse test events that the test samples cannot show: on a host without test telemetry
    (a typo in its name), or starting outside that host's test samples (another split, a clock
    in milliseconds, a miner that began before the data). Counted, a campaign of them would be
    a miss no detector could avoid, or a delay from a time with no data, and a benign one a
    false alarm never risked: the figures would be wrong without a word. An event may run on
    past the last sample."""
    spans = {
        h: (float(s.timestamps.min()), float(s.timestamps.max()))
        for h, s in test.items()
        if s.timestamps.size
    }
    for ev, i in zip(events, index, strict=True):
        if ev.host not in spans:
            shown = ", ".join(sorted(spans)[:5]) + (" ..." if len(spans) > 5 else "")
            raise InputError(
                str(path),
                None,
                f"events[{i}] on a host with test telemetry ({shown})",
                f"host {ev.host!r}, which has none in test/",
            )
        first, last = spans[ev.host]
        if not first - START_SLACK <= ev.start <= last:
            raise InputError(
                str(path),
                None,
                f"events[{i}] starting within the test samples of host {ev.host!r}, "
                f"{first:.0f} to {last:.0f} ({_utc(first)} to {_utc(last)}), as Unix seconds "
                "(cut an event that began earlier at the first test sample)",
                f"start {ev.start:.0f}, end {ev.end:.0f}"
                + (f" ({_utc(ev.start)} to {_utc(ev.end)})" if ev.start < 1e11 else ""),
            )


def _model_for(
    host: str,
    train: dict[str, HostSeries],
    models: Path | None,
    window: float,
    hop: float,
    progress: Progress,
) -> Any:
    """The stored model if ``models`` has one (a damaged one raises), else a fresh one, which is
    saved into ``models`` when given so the next run reuses it."""
    from minerwatch.baseline.store import META, host_dirname, load_model, save_model
    from minerwatch.baseline.train import train_host

    if models is not None and (Path(models) / host_dirname(host) / META).is_file():
        stored = load_model(models, host)
        if (stored.window, stored.hop) != (window, hop):  # delays and budgets would differ
            raise InputError(
                str(Path(models) / host_dirname(host)),
                None,
                f"a model with {format_duration(window)} windows and hop {format_duration(hop)} "
                "(--window, --hop)",
                f"one trained with {format_duration(stored.window)} and "
                f"{format_duration(stored.hop)}",
            )
        return stored
    if host not in train:
        raise InputError(host, None, "training telemetry for this host", "none in train/")
    model = train_host(train[host], window=window, hop=hop)
    if models is not None:
        progress(f"{host}: no model in {models}, trained and saved one")
        save_model(models, model)
    return model


def _check_trainable(
    test: dict[str, HostSeries], trained: frozenset[str] | None, models: Path | None
) -> None:
    """Refuse, before any host is trained, a host of the test split with neither training
    telemetry nor a stored model (``trained``: the hosts of train/, None when not known
    before reading it): it would fail only after every other host was trained."""
    from minerwatch.baseline.store import META, host_dirname

    if trained is None:
        return
    lacking = [
        h
        for h in sorted(test)
        if h not in trained
        and not (models is not None and (models / host_dirname(h) / META).is_file())
    ]
    if lacking:
        more = f" and {len(lacking) - 10} more" if len(lacking) > 10 else ""
        raise InputError(
            ", ".join(lacking[:10]) + more,
            None,
            "training telemetry in train/ (or a model in --models) for every host of test/",
            "none for " + ("this host" if len(lacking) == 1 else f"these {len(lacking)} hosts"),
        )


def run_hosts(
    data: Path,
    models: Path | None = None,
    window: float = 60.0,
    hop: float = 60.0,
    seed: int = 0,
    progress: Progress = _stderr,
    events: list[metrics.Event] | None = None,
    check: Callable[[dict[str, HostSeries]], None] | None = None,
) -> list[HostRun]:
    """Train or load each host's baseline, score the test split, run the reference detectors;
    with ``events`` (the labels) also the baseline with a responder's dismissals. ``check``
    sees the test split before any host is trained."""
    from minerwatch.features.io import TelemetryGroups, read_telemetry

    data = Path(data)
    test = read_telemetry([data / "test"])
    if check is not None:
        check(test)
    # With stored models the training split is optional (only the naive forest needs it).
    has_train = (data / "train").is_dir() and any((data / "train").iterdir())
    # The training split, the larger, is read a few hosts at a time (a month of a fleet need
    # not fit in memory); hosts of the test without training data come last.
    parts = TelemetryGroups([data / "train"]) if has_train or models is None else ()
    _check_trainable(test, parts.names if isinstance(parts, TelemetryGroups) else None, models)
    runs: list[HostRun] = []
    for train in itertools.chain(parts, [{}]):
        done = {r.host for r in runs}
        for host in sorted(h for h in test if h not in done and (h in train or not train)):
            progress(f"evaluate {len(runs) + 1}/{len(test)}: {host}")
            runs.append(
                _run_host(host, train, test[host], models, window, hop, seed, progress, events)
            )
    return sorted(runs, key=lambda r: r.host)


def _run_host(
    host: str,
    train: dict[str, HostSeries],
    test: HostSeries,
    models: Path | None,
    window: float,
    hop: float,
    seed: int,
    progress: Progress,
    events: list[metrics.Event] | None,
) -> HostRun:
    from minerwatch.baseline.batch import score_series

    model = _model_for(host, train, models, window, hop, progress)
    scored = score_series(model, test)
    ws = np.asarray(scored.window_start, dtype=float)
    we = np.asarray(scored.window_end, dtype=float)
    alerts = {"minerwatch": np.asarray(scored.alert, dtype=bool)}
    if events is not None and host in train:
        from minerwatch.bench.dismissals import retrained_like

        alerts["dismissed"], retrains = retrained_like(
            model, train[host], test, ws, we, alerts["minerwatch"], events
        )
        if retrains:
            progress(f"{host}: {retrains} false alarm(s) dismissed and learnt")
    if "cpu_percent" in test.columns:
        alerts["static_rule"] = static_rule(test, ws, we)
        alerts["cpu_5m"] = cpu_5m(test, ws, we)
    if host in train:
        w = float(np.median(we - ws)) if ws.size else window
        h = float(np.median(np.diff(ws))) if ws.size > 1 else hop
        naive = NaiveIForest(window=w, hop=h, seed=seed).fit(train[host])
        alerts["naive_iforest"] = naive.alert(test, ws, we)
        if train[host].procs is not None and test.procs is not None:
            rule = NewExeRule().fit(train[host])
            alerts["new_exe"] = rule.alert(test, ws, we)
    return HostRun(
        host, test, ws, we, np.asarray(scored.score, dtype=float), float(scored.threshold), alerts
    )


def measure(runs: list[HostRun], events: list[metrics.Event], grace: float = 0.0) -> dict:
    """Summaries per detector (as :func:`metrics.summarize`) plus per-host figures."""
    out: dict[str, Any] = {"detectors": {}, "hosts": {}}
    for det in DETECTORS:
        outcomes = [
            metrics.host_outcome(
                r.host, r.window_start, r.window_end, r.alerts[det], events, grace=grace
            )
            for r in runs
            if det in r.alerts
        ]
        if not outcomes:
            if det == "new_exe":
                out.setdefault("unavailable", {})[det] = "no process tables"
            continue
        out["detectors"][det] = metrics.summarize(outcomes)
        for o in outcomes:
            s = metrics.summarize([o])
            out["hosts"].setdefault(o.host, {})[det] = {
                "recall_30m": s["overall"]["recall_30m"],
                "false_alarm_episodes": o.false_alarms,
                "clean_alerted_share": s["clean_alerted_share"],
            }
    return out


def evaluate_simulated(
    data: Path,
    models: Path | None = None,
    output: Path | None = None,
    window: float = 60.0,
    hop: float = 60.0,
    grace: float = 0.0,
    seed: int = 0,
    progress: Progress = _stderr,
) -> dict:
    """Run, measure and (with ``output``) write the report; return the figures as a dict."""
    events, index, meta = _read_labels(data)

    def check(test: dict[str, HostSeries]) -> None:
        check_labels(Path(data) / "labels.json", events, index, test)

    runs = run_hosts(data, models, window, hop, seed, progress, events, check)
    result = measure(runs, events, grace)
    result["meta"] = {
        "data": str(data),
        "models": str(models) if models else None,
        "window_s": window,
        "hop_s": hop,
        "grace_s": grace,
        "seed": seed,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "simulation": {k: v for k, v in meta.items() if k != "hosts"},
    }
    if output is not None:
        write_report(Path(output), result, runs, events, progress)
    return result


# --------------------------------------------------------------------------- text


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f} %"


def format_detector(name: str, summary: dict) -> str:
    """One block: a row per campaign kind, the overall row, false alarms, benign kinds."""
    head = (
        f"{'campaign kind':<16}{'n':>4}{'caught<=30m':>13}{'recall':>8}{'any':>7}"
        f"{'median delay':>14}{'worst delay':>13}"
    )
    lines = [f"== {DETECTOR_TITLES.get(name, name)} ==", head]
    rows = [*summary["per_kind"].items(), ("OVERALL", summary["overall"])]
    for kind, s in rows:
        lines.append(
            f"{kind:<16}{s['campaigns']:>4}{s['caught_30m']:>13}"
            f"{_pct(s['recall_30m']):>8}{_pct(s['recall_any']):>7}"
            f"{_dur(s['median_delay_s']):>14}{_dur(s['worst_delay_s']):>13}"
        )
    fa = summary["false_alarms_per_host_day"]
    lines.append(
        f"false-alarm episodes: {summary['false_alarm_episodes']} over "
        f"{summary['host_days']:.1f} host-days = "
        f"{'-' if fa is None else f'{fa:.2f}'} per host-day; clean time alerted: "
        + (
            "-"
            if summary["clean_alerted_share"] is None
            else f"{100 * summary['clean_alerted_share']:.2f} %"
        )
    )
    looks = summary.get("per_identity") or {}
    if looks:
        lines.append(f"{'identity kind':<16}" + head[16:])
        order = [k for k in IDENTITY_ORDER if k in looks] + sorted(set(looks) - set(IDENTITY_ORDER))
        for kind in order:
            s = looks[kind]
            lines.append(
                f"{kind:<16}{s['campaigns']:>4}{s['caught_30m']:>13}"
                f"{_pct(s['recall_30m']):>8}{_pct(s['recall_any']):>7}"
                f"{_dur(s['median_delay_s']):>14}{_dur(s['worst_delay_s']):>13}"
            )
    benign = [
        f"{k} {v['alarmed']}/{v['total']}"
        + (f" ({v['episodes']} episode{'s' * (v['episodes'] != 1)})" if v["alarmed"] else "")
        for k, v in summary["benign_alarmed"].items()
    ]
    lines.append(
        "benign events that alarmed (false-alarm episodes they fall in): "
        + (", ".join(benign) if benign else "none labelled")
    )
    return "\n".join(lines)


def format_comparison(result: dict) -> str:
    """One line per detector with the headline figures."""
    lines = [
        f"{'detector':<16}{'recall<=30m':>12}{'median delay':>14}{'worst delay':>13}"
        f"{'FA/host-day':>13}{'clean alerted':>15}"
    ]
    for det, s in result["detectors"].items():
        fa = s["false_alarms_per_host_day"]
        share = s["clean_alerted_share"]
        lines.append(
            f"{det:<16}{_pct(s['overall']['recall_30m']):>12}"
            f"{_dur(s['overall']['median_delay_s']):>14}"
            f"{_dur(s['overall']['worst_delay_s']):>13}"
            f"{'-' if fa is None else f'{fa:.2f}':>13}"
            f"{'-' if share is None else f'{100 * share:.2f} %':>15}"
        )
    for det, why in result.get("unavailable", {}).items():
        lines.append(f"{det:<16}{'n/a':>12}  ({why})")
    return "\n".join(lines)


def format_text(result: dict) -> str:
    blocks = [format_detector(d, s) for d, s in result["detectors"].items()]
    blocks += [
        f"== {DETECTOR_TITLES.get(d, d)} ==\nn/a: {why}"
        for d, why in result.get("unavailable", {}).items()
    ]
    return "\n\n".join([*blocks, "== summary ==\n" + format_comparison(result)]) + "\n"


# --------------------------------------------------------------------------- report


def _safe_name(host: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in host)


def plot_host(run: HostRun, events: list[metrics.Event]) -> bytes:
    """PNG: CPU and baseline score over the test split, campaigns red, benign events blue."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = float(run.test.timestamps[0]) if run.test.timestamps.size else 0.0

    def hours(t: np.ndarray | float) -> np.ndarray | float:
        return (np.asarray(t, dtype=float) - t0) / 3600.0

    fig, (ax_cpu, ax_score) = plt.subplots(
        2, 1, figsize=(14, 6), sharex=True, constrained_layout=True
    )
    if "cpu_percent" in run.test.columns:
        ax_cpu.plot(
            hours(run.test.timestamps), run.test.column("cpu_percent"), lw=0.4, color="black"
        )
    ax_cpu.set_ylabel("CPU %")
    mid = 0.5 * (run.window_start + run.window_end)
    ax_score.plot(hours(mid), run.score, lw=0.5, color="tab:purple", label="score")
    ax_score.axhline(run.threshold, color="tab:purple", ls="--", lw=0.8, label="threshold")
    finite = run.score[np.isfinite(run.score)]
    top = float(finite.max()) if finite.size else 1.0
    bottom = float(finite.min()) if finite.size else 0.0
    span = max(top - bottom, 1e-9)
    for j, det in enumerate(DETECTORS):
        if det not in run.alerts:
            continue
        a = run.alerts[det]
        y = bottom - span * (0.08 + 0.07 * j)
        ax_score.scatter(
            hours(mid[a]), np.full(int(a.sum()), y), s=2, marker="|", label=f"{det} alert"
        )
    for ev in events:
        if ev.host != run.host:
            continue
        color = "tab:red" if ev.malicious else "tab:blue"
        for ax in (ax_cpu, ax_score):
            ax.axvspan(hours(ev.start), hours(ev.end), color=color, alpha=0.18, lw=0)
        ax_cpu.text(
            hours(ev.start),
            1.01,
            ev.kind,
            transform=ax_cpu.get_xaxis_transform(),
            fontsize=6,
            color=color,
            rotation=45,
            ha="left",
            va="bottom",
        )
    ax_score.set_ylabel("score")
    ax_score.set_xlabel("hours since test start (red: campaigns, blue: benign events)")
    ax_score.legend(loc="upper right", fontsize=6, markerscale=4)
    ax_cpu.set_title(run.host, loc="left", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_report(
    output: Path,
    result: dict,
    runs: list[HostRun],
    events: list[metrics.Event],
    progress: Progress = _stderr,
) -> Path:
    """``output/report.md`` with the tables, ``output/<host>.png`` per host, ``report.json``.

    The plots, the long part, are drawn into a hidden folder beside and moved in with the
    report: a run stopped half-way (Ctrl-C, SIGTERM) left new plots beside an older run's
    report, which then showed one run's tables over another's figures."""
    output.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".report-", dir=output))
    try:
        pngs = []
        for run in runs:
            name = f"{_safe_name(run.host)}.png"
            progress(f"plot {run.host}")
            atomic_write(staging / name, plot_host(run, events))
            pngs.append((run.host, name))
        return _write_tables(output, result, pngs, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_tables(output: Path, result: dict, pngs: list[tuple[str, str]], staging: Path) -> Path:
    """The report's text beside its plots, moved in from ``staging`` just before."""
    meta = result["meta"]
    lines = [
        "# minerwatch evaluation",
        "",
        f"- date: {meta['date']}",
        f"- data: `{meta['data']}` (simulation: `{json.dumps(meta['simulation'])}`)",
        f"- models: {meta['models'] or 'trained for this run'}; window {meta['window_s']:g} s, "
        f"hop {meta['hop_s']:g} s, grace {meta['grace_s']:g} s, reference seed {meta['seed']}",
        "",
        "Definitions: see `benchmarks/metrics.py`. A campaign is caught by the first alert "
        "episode whose first window ends after the campaign began; episodes already running "
        "get no credit.",
        "",
        "```",
        format_text(result).rstrip(),
        "```",
        "",
        "## Per host",
        "",
        "| host | "
        + " | ".join(f"{d} recall<=30m / FA episodes" for d in result["detectors"])
        + " |",
        "|---|" + "---|" * len(result["detectors"]),
    ]
    for host, per in sorted(result["hosts"].items()):
        cells = []
        for det in result["detectors"]:
            h = per.get(det)
            cells.append(
                "-" if h is None else f"{_pct(h['recall_30m'])} / {h['false_alarm_episodes']}"
            )
        lines.append(f"| {host} | " + " | ".join(cells) + " |")
    lines += ["", "## Plots", ""]
    lines += [f"### {host}\n\n![{host}]({name})\n" for host, name in pngs]
    for _, name in pngs:
        os.replace(staging / name, output / name)
    path = output / "report.md"
    atomic_write(path, "\n".join(lines).encode("utf-8"))
    atomic_write(output / "report.json", json.dumps(result, indent=1).encode("utf-8"))
    return path


# --------------------------------------------------------------------------- CLI


def _refuse(flags: dict[str, Any], source: str, other: str) -> None:
    """Flags that would be silently ignored with this source are bad usage."""
    given = [flag for flag, value in flags.items() if value is not None]
    if given:
        raise InputError(", ".join(given), None, f"only with {other}", f"it with {source}")


def run(args: argparse.Namespace) -> int:
    """Execute ``evaluate``; raises InputError on bad input (the CLI maps it to exit code 2)."""
    from minerwatch.bench import public
    from minerwatch.service.cli import check_windows

    progress = _quiet if args.quiet else _stderr
    if args.output is not None:  # an unusable folder is said before the work, not after
        try:
            args.output.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(
                str(args.output), None, "a folder this user can create", exc.strerror or str(exc)
            ) from None
    if args.smd is not None or args.nab is not None:
        unused = {"--models": args.models, "--window": args.window, "--hop": args.hop}
        _refuse({**unused, "--grace": args.grace}, "--smd/--nab", "--data")
        params = None
        if args.alarms_per_week is not None:
            params = {**public.PUBLIC_PARAMS, "max_alarms_per_week": args.alarms_per_week}
        if args.smd is not None:
            result = public.evaluate_smd(args.smd, args.only, args.seed, params, progress)
        else:
            result = public.evaluate_nab(args.nab, args.only, args.seed, params, progress)
        if not result["meta"].get("machines", result["meta"].get("files")):
            what = "SMD machines (train/, test/, test_label/)" if args.smd else "NAB files"
            raise InputError(str(args.smd or args.nab), None, f"at least one of its {what}", "none")
        if args.output is not None:  # made above, before the work
            name = f"{result['meta']['dataset']}.json"
            atomic_write(args.output / name, json.dumps(result, indent=1).encode("utf-8"))
        print(json.dumps(result) if args.json else public.format_point_table(result))
        return 0
    _refuse(
        {"--only": args.only, "--alarms-per-week": args.alarms_per_week}, "--data", "--smd/--nab"
    )
    window = 60.0 if args.window is None else args.window
    hop = window if args.hop is None else args.hop  # as in train
    check_windows(window, hop)
    grace = 0.0 if args.grace is None else args.grace
    result = evaluate_simulated(
        args.data, args.models, args.output, window, hop, grace, args.seed, progress
    )
    print(
        json.dumps(result) if args.json else format_text(result), end="" if not args.json else "\n"
    )
    return 0
