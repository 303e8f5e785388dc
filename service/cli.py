"""The ``minerwatch`` command line: one parser per command, one function decides the exit code.

Exit codes: 0 ok, 2 bad usage or input (with file, line, what was expected), 1 unexpected
failure. Heavy imports happen inside the command that needs them, so ``minerwatch serve``
never loads scikit-learn or pandas.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from minerwatch.features.errors import InputError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def cmd_collect(args: argparse.Namespace) -> int:
    from minerwatch.features.collector import record
    from minerwatch.service.progress import Progress

    bar = Progress("collect")
    total = max(1, int(args.duration // args.interval))
    rows = record(
        Path(args.output),
        args.interval,
        args.duration,
        host=args.host,
        progress=lambda done, _total: bar(min(done, total), total),
    )
    print(f"wrote {rows} samples to {args.output}", file=sys.stderr)
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from minerwatch.baseline.train import fit_summary_table, train_all
    from minerwatch.service.progress import Progress

    failures: list[str] = []

    def on_error(host: str, exc: Exception) -> None:
        failures.append(host)
        print(f"minerwatch: skipped host {host}: {exc}", file=sys.stderr)

    rows = train_all(
        args.inputs,
        Path(args.models),
        window=args.window,
        hop=args.hop or args.window,
        n_jobs=args.jobs,
        dask_address=args.dask,
        progress=Progress("train"),
        on_error=on_error,
    )
    print(fit_summary_table(rows))
    if not rows:
        raise InputError(
            ", ".join(args.inputs),
            None,
            "at least one host with enough data",
            "none could be trained",
        )
    return EXIT_OK if not failures else EXIT_USAGE


SCORE_COLUMNS = (
    "host",
    "window_start",
    "window_end",
    "score",
    "threshold",
    "alert",
    "top_features",
)


def cmd_score(args: argparse.Namespace) -> int:
    from minerwatch.baseline.scoring import score_series
    from minerwatch.baseline.store import ModelError, load_model
    from minerwatch.features.io import read_telemetry
    from minerwatch.service.progress import Progress

    fleet = read_telemetry(args.inputs)
    out = Path(args.output)
    tmp = out.with_name(f".{out.name}.tmp")
    bar = Progress("score")
    skipped, alerts, windows = [], 0, 0
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(SCORE_COLUMNS)
        for i, host in enumerate(sorted(fleet), start=1):
            try:
                model = load_model(Path(args.models), host)
            except ModelError as exc:
                skipped.append(host)
                print(f"minerwatch: skipped host {host}: {exc}", file=sys.stderr)
                continue
            res = score_series(model, fleet[host])
            for j in range(len(res.score)):
                writer.writerow(
                    [
                        host,
                        f"{res.window_start[j]:.0f}",
                        f"{res.window_end[j]:.0f}",
                        f"{res.score[j]:.6f}",
                        f"{res.threshold:.6f}",
                        int(res.alert[j]),
                        res.top_features[j],
                    ]
                )
            windows += len(res.score)
            alerts += int(res.alert.sum())
            bar(i, len(fleet), host)
    tmp.replace(out)
    print(
        f"scored {windows} windows of {len(fleet) - len(skipped)} hosts, {alerts} alerted; "
        f"skipped {len(skipped)} without a usable model -> {out}",
        file=sys.stderr,
    )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minerwatch",
        description="Catch cryptomining and other compute hijacking by learning each host's "
        "normal behaviour.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("collect", help="record this machine's telemetry to a CSV file")
    p.add_argument("--interval", type=_positive, default=10.0, help="seconds between samples")
    p.add_argument("--duration", type=_positive, default=3600.0, help="seconds to record")
    p.add_argument("--output", required=True, help="CSV file to append to")
    p.add_argument("--host", default=None, help="host name to record (default: this hostname)")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("train", help="train one baseline per host found in the inputs")
    p.add_argument("inputs", nargs="+", help="telemetry files or folders of them")
    p.add_argument("--models", required=True, help="model folder (one sub-folder per host)")
    p.add_argument("--window", type=_positive, default=60.0, help="window length, seconds")
    p.add_argument("--hop", type=_positive, default=None, help="window hop (default: window)")
    p.add_argument("--jobs", type=int, default=1, help="parallel processes (joblib; -1 = all)")
    p.add_argument(
        "--dask",
        default=None,
        metavar="ADDRESS",
        help="train on a Dask cluster (scheduler address, or 'local')",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("score", help="score telemetry with stored models, one row per window")
    p.add_argument("inputs", nargs="+", help="telemetry files or folders of them")
    p.add_argument("--models", required=True, help="model folder written by 'train'")
    p.add_argument("--output", required=True, help="CSV file to write")
    p.set_defaults(func=cmd_score)

    for register in _plugins():
        register(sub)
    return parser


def _plugins() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Commands that live next to the code they drive (each module's ``add_parser``)."""
    import importlib

    found = []
    for name in (
        "minerwatch.bench.simulate",
        "minerwatch.bench.evaluate",
        "minerwatch.service.agent",
        "minerwatch.service.config",
        "minerwatch.service.throttle",
        "minerwatch.service.evidence",
    ):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        if hasattr(module, "add_parser"):
            found.append(module.add_parser)
    return found


def exit_code(exc: BaseException) -> int:
    """The one place that maps failures to exit codes."""
    if isinstance(exc, InputError | FileNotFoundError | IsADirectoryError | PermissionError):
        return EXIT_USAGE
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except (InputError, OSError, KeyboardInterrupt) as exc:
        code = exit_code(exc)
        if not isinstance(exc, KeyboardInterrupt):
            print(f"minerwatch: error: {exc}", file=sys.stderr)
        return code
    except Exception as exc:  # the one catch-all: report, never a bare traceback for users
        print(f"minerwatch: unexpected failure: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
