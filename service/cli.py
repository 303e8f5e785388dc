"""The ``minerwatch`` command line: every command and every flag, defined here and only here.

A command's implementation lives next to the code it drives and is imported only when that
command runs (:func:`_lazy`), so ``minerwatch serve`` never loads the evaluation code
(``minerwatch.bench``), scikit-learn or pandas, and ``--help`` loads none of them. The flags
of ``serve`` are generated from the config's option table, so a new option cannot be missed.

Exit codes, decided by :func:`exit_code` alone: 0 ok, 2 bad usage or input (the message names
the file, the line and what was expected), 1 unexpected failure; never a traceback.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import TypeAlias

from minerwatch.features.errors import InputError
from minerwatch.service.config import AgentConfig, add_option_flags, config_from_args

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

Command: TypeAlias = Callable[[argparse.Namespace], int]
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every flag's default, except where there is none to show (None, a switch that
    is off) or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        if text is None or action.default is None or action.default is False or "(default:" in text:
            return text
        return super()._get_help_string(action)


def _lazy(module: str, function: str = "run") -> Command:
    """The command ``module.function(args)``, imported only when it runs."""

    def command(args: argparse.Namespace) -> int:
        implementation: Command = getattr(importlib.import_module(module), function)
        return int(implementation(args))

    return command


def _command(sub: Subcommands, name: str, help: str, run: Command) -> argparse.ArgumentParser:
    """One (sub)command: its parser shows defaults, and it always knows what to run."""
    parser = sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)
    parser.set_defaults(run=run)
    return parser


def _subcommands(parser: argparse.ArgumentParser, dest: str) -> Subcommands:
    return parser.add_subparsers(dest=dest, metavar="COMMAND", required=True)


def _group(sub: Subcommands, name: str, help: str, run: Command, dest: str) -> Subcommands:
    """A command with subcommands (``throttle status``); ``run`` reads which one from ``dest``."""
    return _subcommands(_command(sub, name, help, run), dest)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _agent_files(
    parser: argparse.ArgumentParser, flag: str, what: str, default: Path | None
) -> None:
    """``--config`` and a folder flag, for commands that read what the agent wrote."""
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the agent's config file, to find the folder (default: none, built-in defaults)",
    )
    parser.add_argument(
        flag, type=Path, metavar="DIR", help=f"{what} (default: the config's, else {default})"
    )


# -- commands implemented here ---------------------------------------------------------------------


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
    from minerwatch.baseline.batch import score_series
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


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)  # a bad flag or file is reported before the agent loads
    from minerwatch.service.agent import serve

    return serve(cfg, args.log_level)


# -- the parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Every command and flag of ``minerwatch``; imports no command's implementation."""
    parser = argparse.ArgumentParser(
        prog="minerwatch",
        description="Catch cryptomining and other compute hijacking by learning each host's "
        "normal behaviour.",
        formatter_class=HelpFormatter,
    )
    version = metadata.version("minerwatch")  # the installed distribution's
    parser.add_argument("--version", action="version", version=f"%(prog)s {version}")
    sub = _subcommands(parser, "command")
    defaults = AgentConfig()  # where the agent writes, unless a config file says otherwise

    p = _command(sub, "collect", "record this machine's telemetry to a CSV file", cmd_collect)
    p.add_argument("--interval", type=_positive, default=10.0, help="seconds between samples")
    p.add_argument("--duration", type=_positive, default=3600.0, help="seconds to record")
    p.add_argument("--output", required=True, help="CSV file to append to")
    p.add_argument("--host", help="host name to record (default: this machine's hostname)")

    p = _command(sub, "train", "train one baseline per host found in the inputs", cmd_train)
    p.add_argument("inputs", nargs="+", help="telemetry files or folders of them")
    p.add_argument("--models", required=True, help="model folder (one sub-folder per host)")
    p.add_argument("--window", type=_positive, default=60.0, help="window length, seconds")
    p.add_argument("--hop", type=_positive, help="window hop, seconds (default: the window)")
    p.add_argument("--jobs", type=int, default=1, help="parallel processes (joblib; -1 = all)")
    p.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="train on a Dask cluster: scheduler address, or 'local' (default: no Dask)",
    )

    p = _command(sub, "score", "score telemetry with stored models, one row per window", cmd_score)
    p.add_argument("inputs", nargs="+", help="telemetry files or folders of them")
    p.add_argument("--models", required=True, help="model folder written by 'train'")
    p.add_argument("--output", required=True, help="CSV file to write")

    p = _command(
        sub,
        "simulate",
        "write a labelled synthetic fleet (train/test CSV + labels.json): hosts with realistic "
        "rhythms, benign events and (test split only) mining campaigns",
        _lazy("minerwatch.bench.simulate"),
    )
    p.add_argument("--hosts", type=int, default=12, help="number of hosts")
    p.add_argument("--train-days", type=float, default=7.0, help="days of clean training data")
    p.add_argument("--test-days", type=float, default=3.0, help="days of test data with campaigns")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    p.add_argument(
        "--start", type=float, help="Unix time of the first sample (default: 2026-01-05T00:00Z)"
    )
    p.add_argument("--output", type=Path, required=True, help="folder to write into")

    p = _command(
        sub,
        "evaluate",
        "measure detection quality on labelled data: a simulation (--data) or a public "
        "benchmark (--smd, --nab), compared with reference detectors",
        _lazy("minerwatch.bench.evaluate"),
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="folder written by 'minerwatch simulate'")
    src.add_argument("--smd", type=Path, help="Server Machine Dataset folder (train/, test/, ...)")
    src.add_argument("--nab", type=Path, help="NAB folder (<category>/*.csv, labels/)")
    p.add_argument("--models", type=Path, help="load models from here (train missing ones)")
    p.add_argument("--output", type=Path, help="write report.md and plots to this folder")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--window", type=float, default=60.0, help="window length, s (--data)")
    p.add_argument("--hop", type=float, default=60.0, help="window hop, s (--data)")
    p.add_argument(
        "--grace",
        type=float,
        default=0.0,
        help="alerts this long after a campaign ends are not false alarms, s",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the reference IsolationForest")
    p.add_argument("--only", nargs="+", metavar="NAME", help="only these SMD machines or NAB files")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument(
        "--alarms-per-week",
        type=float,
        help="false-alarm budget of the threshold for --smd/--nab (default: 7 per machine-week)",
    )

    p = _command(
        sub,
        "serve",
        "run the on-host agent (learn, score, export, respond); flags override --config",
        cmd_serve,
    )
    add_option_flags(p)
    p.add_argument(
        "--log-level", type=str.upper, choices=LOG_LEVELS, default="INFO", help="log verbosity"
    )

    run = _lazy("minerwatch.service.config")
    config = _group(sub, "config", "check or show the agent's configuration", run, "config_command")
    p = _command(config, "check", "validate a config file (exit 0 if OK, 2 if not)", run)
    p.add_argument("file", type=Path, help="TOML config file")
    p = _command(config, "show", "print the effective config (defaults < FILE) as TOML", run)
    p.add_argument("file", type=Path, nargs="?", help="TOML config file (default: none)")

    run = _lazy("minerwatch.service.throttle")
    throttle = _group(
        sub, "throttle", "inspect or release throttled processes", run, "throttle_command"
    )
    p = _command(throttle, "status", "list throttled processes", run)
    p.add_argument("--json", action="store_true", help="print the journal as JSON")
    _agent_files(p, "--state-dir", "throttle journal folder", defaults.throttle.state_dir)
    p = _command(
        throttle,
        "release",
        "release throttled processes (all, or one PID); works without a running agent",
        run,
    )
    p.add_argument("pid", nargs="?", type=int, help="only this process (default: all)")
    _agent_files(p, "--state-dir", "throttle journal folder", defaults.throttle.state_dir)

    run = _lazy("minerwatch.service.evidence")
    evidence = _group(
        sub, "evidence", "list or show evidence files written on alerts", run, "evidence_command"
    )
    p = _command(evidence, "list", "one line per evidence file, oldest first", run)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _agent_files(p, "--dir", "evidence folder", defaults.evidence_dir)
    p = _command(evidence, "show", "print one evidence file as JSON", run)
    p.add_argument("name", help="file name or episode id, as printed by 'list'")
    _agent_files(p, "--dir", "evidence folder", defaults.evidence_dir)
    return parser


# -- running -------------------------------------------------------------------------------------


def exit_code(exc: BaseException) -> int:
    """The one place that maps failures to exit codes."""
    if isinstance(exc, InputError | FileNotFoundError | IsADirectoryError | NotADirectoryError):
        return EXIT_USAGE
    if isinstance(exc, PermissionError):  # e.g. a root-only file read by a user
        return EXIT_USAGE
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (bad usage exits 2 from argparse itself)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt as exc:
        return exit_code(exc)
    except Exception as exc:  # the one catch-all: a message, never a traceback, for users
        code = exit_code(exc)
        if code == EXIT_USAGE:
            print(f"minerwatch: error: {exc}", file=sys.stderr)
        else:
            print(f"minerwatch: unexpected failure: {type(exc).__name__}: {exc}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
