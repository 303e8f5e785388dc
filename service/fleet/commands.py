"""``minerwatch fleet train|score|export``: the commands, on top of the client and the mapping.

The flags are defined in :mod:`minerwatch.service.cli`; this module is imported only when a
fleet command runs. Scores are written in exactly the columns of ``minerwatch score``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from minerwatch.baseline.store import saved_since
from minerwatch.features.atomic import replace_together, stage
from minerwatch.features.errors import InputError
from minerwatch.features.schema import HOST, TIMESTAMP
from minerwatch.service.fleet.nodeexporter import (
    DISCOVERY_METRICS,
    MAPPING,
    HostTelemetry,
    discover_hosts,
    selector_matchers,
    series_selector,
    target_key,
    target_text,
    targets_note,
)
from minerwatch.service.fleet.promclient import (
    Connection,
    PromClient,
    PrometheusUnavailable,
    PrometheusUnreachable,
)
from minerwatch.service.fleet.train import (
    STOP_AFTER_UNREACHABLE,
    FleetReader,
    Outcome,
    summary_table,
    train_fleet,
)
from minerwatch.service.resume import names as _names
from minerwatch.service.resume import resume_hint, say_all_trained, say_skipping
from minerwatch.service.terminate import stopped, stops_deferred
from minerwatch.service.timefmt import utc_iso

DAY = 86400.0
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def connection(args: argparse.Namespace) -> Connection:
    """The server and credentials of the common fleet flags. Every command that reads
    Prometheus builds this first, so a bad URL (:func:`~.promclient.check_url`) or request
    count is exit 2 before any request, in all of them."""
    if args.concurrency < 1:  # -1 means "all cores" to --jobs, nothing to a request count
        raise InputError(
            "--concurrency", None, "a number of requests at once per process (1, 2, ...)",
            str(args.concurrency),
        )  # fmt: skip
    return Connection(
        url=args.prometheus,
        username=args.username,
        password_file=args.password_file,
        bearer_token_file=args.bearer_token_file,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        timeout=args.timeout,
        gzip=args.gzip,
        retries=args.retries,
        extra_headers=tuple(args.headers),
    )


def time_range(args: argparse.Namespace) -> tuple[float, float]:
    """``--start``/``--end``, or ``--days`` before ``--end`` (train only: score and export
    have no sensible span to guess, so they need ``--start``)."""
    end = args.end if args.end is not None else time.time()
    days: float | None = getattr(args, "days", None)
    if args.start is not None:
        start = float(args.start)
    elif days is not None:
        start = end - days * DAY
    else:
        raise InputError(
            "--start", None, "the start of the span to read (Unix seconds or ISO 8601)", "none"
        )
    if not end > start:
        raise InputError("--start/--end", None, "a start before the end", f"{start:.0f}..{end:.0f}")
    return start, end


def _hosts(client: PromClient, args: argparse.Namespace, start: float, end: float) -> list[str]:
    hosts = discover_hosts(client, args.selector, args.host_label, start, end)
    if args.host_label:  # series without the label name no host: said, not silently left out
        inner = selector_matchers(args.selector)
        unnamed = f'{args.host_label}=""'
        match = [series_selector(m, inner, unnamed) for m in DISCOVERY_METRICS]
        targets = sorted({target_key(labels) for labels in client.series(match, start, end)})
        if targets:
            shown = _names([target_text(t) for t in targets], most=5)
            without = f"{len(targets)} node_exporter targets without it: {shown}"
            if not hosts:
                raise InputError(
                    "--host-label", None,
                    f"node_exporter series with a label {args.host_label!r} matching "
                    f"{args.selector or '{}'}", without,
                )  # fmt: skip
            print(
                f"minerwatch: note: --host-label {args.host_label}: left out "
                f"{without} (relabel them, or leave them out with --selector)",
                file=sys.stderr,
            )
    if not hosts:
        raise InputError(
            args.prometheus,
            None,
            f"node_exporter hosts matching {args.selector or '{}'} between "
            f"{start:.0f} and {end:.0f}",
            "none",
        )
    return hosts


def _skip(host: str, exc: Exception, skipped: list[str], in_a_row: int) -> int:
    """Name a host that ``fleet score``/``export`` could not do and note it; how many hosts in a
    row found nothing at all at the URL (:data:`~.train.STOP_AFTER_UNREACHABLE` stops)."""
    skipped.append(host)
    print(f"minerwatch: skipped host {host}: {exc}", file=sys.stderr)
    return in_a_row + 1 if isinstance(exc, PrometheusUnreachable) else 0


def _stopped(url: str, tried: int, total: int, done: str, missing: list[str]) -> int:
    """Say that Prometheus went away in the middle of a run, what was done and what not."""
    print(
        f"minerwatch: error: {url} stopped answering after {tried} of {total} hosts: {done}, "
        f"not done {len(missing)}: {_names(missing)} (exit 1)",
        file=sys.stderr,
    )
    return EXIT_FAILURE


def _say_stopped(
    exc: KeyboardInterrupt,
    bar_shown: bool,
    hosts: list[str],
    tried: list[str],
    done: str,
    then: str = "",
) -> None:
    """Say what a run stopped by Ctrl-C, SIGTERM or SIGHUP did and which hosts it left."""
    left = sorted(set(hosts) - set(tried))
    print(
        ("\n" if bar_shown else "")
        + f"minerwatch: {stopped(exc)} after {len(tried)} of {len(hosts)} hosts: {done}, "
        f"not done {len(left)}: {_names(left)}{then}",
        file=sys.stderr,
    )


def _explain_absent(columns: tuple[str, ...]) -> str:
    needs = {c.name: " + ".join(c.metrics) for c in MAPPING}
    return "; ".join(f"{c} (needs {needs[c]})" for c in columns)


def run_train(args: argparse.Namespace) -> int:
    """``fleet train``: one model per host, a summary table, failures named (exit 2)."""
    from minerwatch.service.progress import Progress

    key = _key(args)
    since = args.skip_trained_since if args.skip_trained_since is not None else time.time()
    resume = resume_hint(since)
    start, end = time_range(args)
    conn = connection(args)
    client = PromClient(conn, concurrency=args.concurrency)
    hosts = _hosts(client, args, start, end)
    if args.skip_trained_since is not None:
        recent = saved_since(Path(args.models), hosts, since, key)
        if len(recent) == len(hosts):
            say_all_trained(len(hosts), since, args.models)
            return EXIT_OK
        if recent:
            say_skipping(recent, since)
        hosts = sorted(set(hosts) - set(recent))
    print(f"training {len(hosts)} hosts from {conn.url} ({start:.0f}..{end:.0f})", file=sys.stderr)
    reader = FleetReader(conn, start, end, args.selector, args.host_label, args.concurrency)
    hop = args.hop or args.window
    bar = Progress("fleet train", lines=10)  # under a service manager too: runs are long

    seen: list[str] = []
    errors = [0]

    def progress(done: int, total: int, host: str, failed: int) -> None:
        seen.append(host)
        errors[0] = failed
        bar(done, total, f"hosts done, last {host}" + (f", {failed} failed" if failed else ""))

    try:
        outcomes = train_fleet(
            reader,
            hosts,
            Path(args.models),
            window=args.window,
            hop=hop,
            n_jobs=args.jobs,
            dask_address=args.dask,
            model_key=key,
            progress=progress,
            params={"max_alarms_per_week": args.alarms_per_week},
        )
    except KeyboardInterrupt as exc:  # the models fitted so far are saved: say which are left
        done = f"trained {len(seen) - errors[0]} (saved in {args.models}), failed {errors[0]}"
        _say_stopped(exc, bar.enabled, hosts, seen, done, f"; {resume}")
        raise
    failed = [o for o in outcomes if o.model is None]
    for o in failed:
        if o.attempts == 0:  # not tried: said once below
            continue
        tries = f" after {o.attempts} attempts" if o.attempts > 1 else ""
        print(f"minerwatch: skipped host {o.host}{tries}: {o.error}", file=sys.stderr)
    trained = [o for o in outcomes if o.model is not None]
    if any(o.attempts == 0 for o in outcomes):  # Prometheus went away: the run stopped
        if trained:
            print(summary_table(trained))
        tried = sum(o.attempts > 0 for o in outcomes)
        print(
            f"minerwatch: error: {conn.url} stopped answering after {tried} of {len(hosts)} "
            f"hosts: trained {len(trained)} (saved in {args.models}), not trained "
            f"{len(failed)}: {_names([o.host for o in failed])}; {resume} (exit 1)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    if not trained:
        raise InputError(conn.url, None, "at least one host with enough data", "none trained")
    print(summary_table(trained))
    for o in trained:
        if o.targets:
            print(f"minerwatch: note: {targets_note(o.host, o.targets)}", file=sys.stderr)
    _say_short(trained, start, end)
    common = set.intersection(*(set(o.absent) for o in trained))
    if common:
        ordered = tuple(c.name for c in MAPPING if c.name in common)
        print(
            f"not collected by this fleet, trained without: {_explain_absent(ordered)}",
            file=sys.stderr,
        )
    if failed:
        print(
            f"minerwatch: trained {len(trained)} hosts, skipped {len(failed)}: "
            f"{_names([o.host for o in failed])} (exit 2)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return EXIT_OK


def _span(seconds: float) -> str:
    """``6 minutes``, ``5.2 hours``, ``14 days``."""
    for unit, size in (("days", DAY), ("hours", 3600.0), ("minutes", 60.0)):
        if seconds >= size or unit == "minutes":
            return f"{seconds / size:.2g} {unit}"
    return ""


def _say_short(trained: list[Outcome], start: float, end: float) -> None:
    """Name the hosts trained on much less history than asked (Prometheus' retention, a host
    added since): the models are fitted on what exists, which the user should know."""
    short = sorted(
        ((o.model.meta.get("train_start", start), o.host) for o in trained if o.model is not None),
        reverse=True,
    )
    short = [(t, h) for t, h in short if t - start > max(0.1 * (end - start), 3600.0)]
    if short:
        held = _names([f"{h} from {utc_iso(t)} ({_span(end - t)})" for t, h in short], most=5)
        print(
            f"minerwatch: note: {len(short)} hosts trained on less history than the "
            f"{_span(end - start)} asked (Prometheus' retention, or hosts added "
            f"since): {held}",
            file=sys.stderr,
        )


def run_score(args: argparse.Namespace) -> int:
    """``fleet score``: the hosts in Prometheus that have a model, scored like ``score``."""
    from minerwatch.baseline.batch import SCORE_COLUMNS, score_series
    from minerwatch.baseline.store import load_model
    from minerwatch.service.progress import Progress
    from minerwatch.service.scorecsv import ScoreSink, describe

    key = _key(args)
    start, end = time_range(args)
    conn = connection(args)
    client = PromClient(conn, concurrency=args.concurrency)
    hosts = _hosts(client, args, start, end)
    reader = FleetReader(conn, start, end, args.selector, args.host_label, args.concurrency)
    models, out = Path(args.models), Path(args.output)
    bar = Progress("fleet score", lines=10)
    skipped: list[str] = []
    stopped: list[str] = []  # not tried: Prometheus went away
    alerts = windows = in_a_row = 0
    with ScoreSink(out, SCORE_COLUMNS) as sink:
        for i, host in enumerate(hosts, start=1):
            if in_a_row >= STOP_AFTER_UNREACHABLE:
                stopped = hosts[i - 1 :]
                break
            bar(i, len(hosts), host)
            try:
                model = load_model(models, host, key=key)
                data = reader.read(host, client)
                res = score_series(model, data.series)
            except (InputError, PrometheusUnavailable) as exc:
                # no usable model, data the model cannot use, or Prometheus failing
                in_a_row = _skip(host, exc, skipped, in_a_row)
                continue
            in_a_row = 0
            if data.targets:
                print(f"minerwatch: note: {targets_note(host, data.targets)}", file=sys.stderr)
            sink.write(res.rows())
            windows += len(res.score)
            alerts += int(res.alert.sum())
        scored = len(hosts) - len(skipped) - len(stopped)
        if stopped:  # what was scored is kept
            if scored:
                sink.commit()
            done = f"scored {scored}" + (
                f" ({windows} windows -> {describe(out)})" if scored else ""
            )
            return _stopped(conn.url, len(hosts) - len(stopped), len(hosts), done,
                            skipped + stopped)  # fmt: skip
        if len(skipped) == len(hosts):
            raise InputError(
                str(models), None, "a usable model for at least one host", "none; nothing written"
            )
        sink.commit()
    summary = f"scored {windows} windows of {len(hosts) - len(skipped)} hosts, {alerts} alerted"
    if skipped:
        print(f"{summary}; skipped {len(skipped)}: {_names(skipped)} (exit 2)", file=sys.stderr)
        return EXIT_USAGE
    print(f"{summary} -> {describe(out)}", file=sys.stderr)
    return EXIT_OK


def telemetry_csv(data: HostTelemetry) -> str:
    """One host's telemetry as a CSV file of the telemetry format; a gap is an empty cell.

    Values are written with Python's shortest round-tripping repr, so reading the file back
    gives exactly the numbers read from Prometheus.
    """
    s = data.series
    lines = [",".join((TIMESTAMP, HOST, *s.columns))]
    host = (
        s.host if "," not in s.host and '"' not in s.host else '"' + s.host.replace('"', '""') + '"'
    )
    for t, row in zip(s.timestamps.tolist(), s.values.tolist(), strict=True):
        cells = ("" if v != v else repr(v) for v in row)
        lines.append(f"{t!r},{host}," + ",".join(cells))
    return "\n".join(lines) + "\n"


def run_export(args: argparse.Namespace) -> int:
    """``fleet export``: ``DIR/<host>.csv`` per host, for offline work and bug reports, and
    ``DIR/<host>.procs.csv`` where process-exporter runs; a host's files are replaced together
    (:func:`land_pair`)."""
    from minerwatch.baseline.store import host_dirname
    from minerwatch.service.progress import Progress

    start, end = time_range(args)
    conn = connection(args)
    client = PromClient(conn, concurrency=args.concurrency)
    hosts = _hosts(client, args, start, end)
    reader = FleetReader(conn, start, end, args.selector, args.host_label, args.concurrency)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    bar = Progress("fleet export", lines=10)
    rows, tables, in_a_row = 0, 0, 0
    skipped: list[str] = []
    exported: list[str] = []
    stale: list[str] = []  # hosts whose table of an earlier export was removed
    try:
        for i, host in enumerate(hosts, start=1):
            if in_a_row >= STOP_AFTER_UNREACHABLE:
                done = f"exported {i - 1 - len(skipped)} ({rows} samples -> {out})"
                return _stopped(conn.url, i - 1, len(hosts), done, skipped + hosts[i - 1 :])
            bar(i, len(hosts), host)
            try:
                data = reader.read(host, client, procs=True)
            except (InputError, PrometheusUnavailable) as exc:
                in_a_row = _skip(host, exc, skipped, in_a_row)
                continue
            in_a_row = 0

            def count(host: str = host, data: HostTelemetry = data) -> None:
                nonlocal rows, tables
                exported.append(host)
                rows += len(data.series.timestamps)
                tables += 1 if data.procs is not None else 0

            name = host_dirname(host)
            if _export_host(data, out / f"{name}.csv", out / f"{name}.procs.csv", count):
                stale.append(host)
            if data.absent:
                note = f"minerwatch: note: host {host}: no {', '.join(data.absent)}"
                print(note, file=sys.stderr)
            if data.targets:
                print(f"minerwatch: note: {targets_note(host, data.targets)}", file=sys.stderr)
    except KeyboardInterrupt as exc:  # the files written are whole: say which hosts are left
        done = f"exported {len(exported)} ({rows} samples -> {out}), failed {len(skipped)}"
        _say_stopped(exc, bar.enabled, hosts, exported + skipped, done, _removed(stale))
        raise
    procs = f" and {_count(tables, 'process table')} (process-exporter groups)" if tables else ""
    print(
        f"exported {rows} samples of {len(hosts) - len(skipped)} hosts{procs} -> {out}"
        + _removed(stale),
        file=sys.stderr,
    )
    return EXIT_USAGE if skipped else EXIT_OK


def _export_host(data: HostTelemetry, samples: Path, table: Path, done: Callable[[], None]) -> bool:
    """Write one host's samples and process table to temp files, then :func:`land_pair`
    them; the temp files are gone whatever happens. True when an earlier table was removed."""
    from minerwatch.features.procs import write_procs_rows

    text = telemetry_csv(data)
    staged = [stage(samples, lambda fh: fh.write(text))]
    try:
        if data.procs is not None:
            procs = data.procs

            def write(fh: TextIO) -> None:
                write_procs_rows(fh, data.series.host, procs)

            staged.append(stage(table, write, mode=0o600))  # exes and users: owner only
        return land_pair(samples, staged[0], table, staged[1] if len(staged) > 1 else None, done)
    finally:
        for tmp in staged:  # moved into place already, unless something failed
            tmp.unlink(missing_ok=True)


def land_pair(
    samples: Path, staged: Path, table: Path, staged_table: Path | None, done: Callable[[], None]
) -> bool:
    """Move a host's staged samples and process table into place together, or, with no table
    now, remove ``table`` left by an earlier export: its rows are of another time range and
    would sit beside the new samples as theirs. ``done`` counts the host once both are in
    place; a stop (Ctrl-C, SIGTERM, SIGHUP) meanwhile is taken after it, never between the
    two files. True when an earlier table was removed (a file of that exact name only)."""
    stale = staged_table is None and os.path.lexists(table) and not table.is_dir()
    moves = [(staged_table, table)] if staged_table is not None else []
    with stops_deferred():
        replace_together([*moves, (staged, samples)], [table] if stale else [])
        done()
    return stale


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}" + ("" if n == 1 else "s")


def _removed(stale: list[str]) -> str:
    """The end of the line that names the tables of an earlier export removed (none: "")."""
    if not stale:
        return ""
    what = f"{_count(len(stale), 'process table')} of an earlier export"
    return f"; removed {what} (no process-exporter data now): {_names(stale)}"


def run_serve(args: argparse.Namespace) -> int:
    """``fleet serve``: score every host each interval and export the agent's metrics."""
    from minerwatch.service.fleet.serve import run_serve as serve

    return serve(args, connection(args))


def _key(args: argparse.Namespace) -> bytes | None:
    """The ``--model-key`` (read before any work, so a bad key file costs nothing)."""
    from minerwatch.baseline.store import read_key

    path = getattr(args, "model_key", None)
    return read_key(path) if path is not None else None


def run(args: argparse.Namespace) -> int:
    """Dispatch ``minerwatch fleet COMMAND``."""
    if args.fleet_command == "dismiss":  # no Prometheus: a file in the state folder
        from minerwatch.service.fleet.dismiss import run_dismiss

        return run_dismiss(args)
    commands = {"train": run_train, "score": run_score, "export": run_export, "serve": run_serve}
    return commands[args.fleet_command](args)
