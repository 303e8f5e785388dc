"""The ``minerwatch`` command line: every command and every flag, defined here and only here.

A command's implementation lives next to the code it drives and is imported only when that
command runs (:func:`_lazy`), so ``minerwatch serve`` never loads the evaluation code
(``minerwatch.bench``), scikit-learn or pandas, and ``--help`` loads none of them. The flags
of ``serve`` are generated from the config's option table, so a new option cannot be missed.

Exit codes, decided by :func:`exit_code` alone: 0 ok, 2 bad usage or input (the message names
the file, the line and what was expected), 1 unexpected failure, 130 interrupted (Ctrl-C),
143 and 129 for a batch command (``collect``, ``train``, ``score``, ``simulate``, ``evaluate``,
``fleet train|score|export``) stopped by SIGTERM and SIGHUP, which stop it as Ctrl-C does
(:mod:`minerwatch.service.terminate`), 141 when the reader of the output went away
(``... | head``); never a traceback. A command that could
not do its whole job on good terms (a host skipped by ``train`` or ``score``) exits 2 too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from importlib import metadata
from pathlib import Path
from typing import Any, TypeAlias

from minerwatch.baseline.calibrate import ALARMS_PER_WEEK
from minerwatch.features.errors import InputError
from minerwatch.service.config import (
    DEFAULT_DATA_DIR,
    MAX_WINDOWS_PER_SAMPLE,
    AgentConfig,
    add_option_flags,
    agent_files_config,
    config_from_args,
    require_folder,
    require_private_config,
    require_writable_folders,
)
from minerwatch.service.fleet.headers import duplicate, parse_header
from minerwatch.service.resume import names as _names
from minerwatch.service.terminate import Terminated, stop_code, stopped, terminable
from minerwatch.service.units import DURATION_HELP, format_duration, parse_duration

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
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


def _command(
    sub: Subcommands, name: str, help: str, run: Command, *, terminable: bool = False
) -> argparse.ArgumentParser:
    """One (sub)command: its parser shows defaults, and it always knows what to run.
    ``terminable``: a batch command, stopped by SIGTERM and SIGHUP as by Ctrl-C (see
    :mod:`minerwatch.service.terminate`); the servers handle their signals themselves."""
    parser = sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)
    parser.set_defaults(run=run, terminable=terminable)
    return parser


def _subcommands(parser: argparse.ArgumentParser, dest: str) -> Subcommands:
    return parser.add_subparsers(dest=dest, metavar="COMMAND", required=True)


def _group(sub: Subcommands, name: str, help: str, run: Command, dest: str) -> Subcommands:
    """A command with subcommands (``throttle status``); ``run`` reads which one from ``dest``."""
    return _subcommands(_command(sub, name, help, run), dest)


# -- argument types: a bad value is a usage error (exit 2) naming the flag and the value ---------


def _alarms_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--alarms-per-week",
        type=_positive,
        default=ALARMS_PER_WEEK,
        metavar="N",
        help="false-alarm budget per host the threshold is calibrated for (default: %(default)s,"
        " one in four weeks)",
    )


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _duration(text: str) -> float:
    """Seconds, spelled as ``serve`` and the config file spell them (``10s``, ``1m``, ``2.5``)."""
    try:
        value = parse_duration(text)
    except InputError:
        raise argparse.ArgumentTypeError(f"expected {DURATION_HELP}, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration above 0s, got {text!r}")
    return value


def _duration_or_zero(text: str) -> float:
    """A duration where ``0`` means never (``--retrain-every``)."""
    try:
        return parse_duration(text)
    except InputError:
        raise argparse.ArgumentTypeError(f"expected {DURATION_HELP}, got {text!r}") from None


def _whole(text: str, ok: Callable[[int], bool], expected: str) -> int:
    """A whole-number flag that ``ok`` accepts, else argparse's error "expected ..., got ..."."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _jobs(text: str) -> int:
    return _whole(text, lambda n: n != 0, "a number of processes (1, 2, ...; -1 = all cores)")


def _pid(text: str) -> int:
    return _whole(text, lambda n: n > 0, "a process id (a whole number > 0)")


def _retries(text: str) -> int:
    return _whole(text, lambda n: 0 <= n <= 10, "a number of retries, 0 to 10")


def _requests(text: str) -> int:
    """``--concurrency``: requests in flight per process; unlike ``--jobs`` no "all cores"."""
    return _whole(text, lambda n: n >= 1, "a number of requests at once per process (1, 2, ...)")


def _existing_folder(text: str) -> Path:
    """A folder the command reads: it must be there, and be a folder."""
    path = Path(text)
    try:
        there = path.exists()
    except OSError as exc:  # a folder on the way this user may not enter
        raise argparse.ArgumentTypeError(
            f"expected a folder this user can read, got {text!r} ({exc.strerror or exc})"
        ) from None
    if not there:
        raise argparse.ArgumentTypeError(
            f"expected an existing folder, got no such folder {text!r}"
        )
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a folder, got a file {text!r}")
    return path


def _output_folder(text: str) -> Path:
    """A folder the command writes into (created when missing): it must not be a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a folder, got a file {text!r}")
    return path


def _instant(text: str) -> float:
    """A point in time: Unix seconds, or ISO 8601 (``2026-01-05T00:00Z``; UTC unless it says)."""
    from datetime import UTC, datetime

    from minerwatch.service.timefmt import dateable

    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected Unix seconds or ISO 8601 (2026-01-05T00:00Z), got {text!r}"
            ) from None
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    if not dateable(value):  # nan, inf or 1e30 written into files would break every reader
        raise argparse.ArgumentTypeError(
            f"expected Unix seconds or ISO 8601 of a time in the years 1 to 9999, got {text!r}"
        )
    return value


def _output_file(text: str) -> Path:
    """A file the command writes: not a folder, in a folder that exists.

    Files are written whole and renamed into place, which would replace a device, FIFO or
    socket at that path (as root, ``/dev/full`` became a regular file): refused. A symlink
    is followed, so its target is written and the link stays.
    """
    path = Path(text)
    if path.is_symlink():
        path = path.resolve()
    if path.exists() and not path.is_file() and not path.is_dir():
        raise argparse.ArgumentTypeError(
            f"expected a regular file (it is written whole and renamed into place), got "
            f"{text!r}, a device, FIFO or socket"
        )
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a file name, got the folder {text!r}")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(
            f"expected a file in an existing folder, got {text!r} ({path.parent} is not a folder)"
        )
    return path


def _output_file_or_stdout(text: str) -> Path:
    """:func:`_output_file`, or ``-`` for standard output (scores piped to another tool)."""
    from minerwatch.service.scorecsv import STDOUT

    return Path(text) if text == STDOUT else _output_file(text)


def check_windows(window: float, hop: float) -> None:
    """``--hop`` within ``--window``, and not so small that each sample lands in too many."""
    if hop > window:
        raise InputError(
            "--hop", None, f"at most --window ({format_duration(window)})", format_duration(hop)
        )
    if window / hop > MAX_WINDOWS_PER_SAMPLE:
        raise InputError(
            "--window/--hop",
            None,
            f"at most {MAX_WINDOWS_PER_SAMPLE} windows over each sample",
            f"{format_duration(window)}/{format_duration(hop)} = {window / hop:.0f}",
        )


def _model_key_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--model-key",
        type=Path,
        metavar="FILE",
        help=f"HMAC key file (chmod 600): {what} (default: none, a plain sha256 signature)",
    )


# -- where the agent keeps its files ---------------------------------------------------------------


class _Deprecated(argparse.Action):
    """A flag kept for old scripts: hidden from ``--help``, still works, says what replaces it."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(
            f"minerwatch: note: {option_string} is deprecated and will be removed; use "
            f"--data-dir DIR (the agent's data folder, as given to 'serve --data-dir')",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def _agent_files(parser: argparse.ArgumentParser, legacy: str, dest: str) -> None:
    """``--config`` and ``--data-dir``, for commands that read what the agent wrote; ``legacy``
    is the old flag that named the sub-folder itself (hidden, deprecated)."""
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the agent's config file: its data_dir (and evidence_dir, throttle.state_dir) "
        "say where the files are (default: none)",
    )
    parser.add_argument(
        "--data-dir",
        type=_existing_folder,
        metavar="DIR",
        help=f"the agent's data folder, as given to 'serve --data-dir'; overrides the config's "
        f"(default: the config's, else {DEFAULT_DATA_DIR})",
    )
    parser.add_argument(
        legacy, dest=dest, type=Path, metavar="DIR", action=_Deprecated, help=argparse.SUPPRESS
    )


def _reads_agent_files(module: str, dest: str, folder: Callable[[AgentConfig], Path]) -> Command:
    """Run ``module``'s command with ``args.<dest>`` set to the agent's folder it reads: found
    from ``--data-dir`` or ``--config`` the way ``serve`` finds it, unless the deprecated
    flag named it."""
    run = _lazy(module)

    def command(args: argparse.Namespace) -> int:
        if getattr(args, dest) is None:
            cfg = agent_files_config(args.config, args.data_dir)
            require_folder(cfg.data_dir, "the agent's data folder (--data-dir, data_dir)")
            setattr(args, dest, folder(cfg))
        require_folder(getattr(args, dest), "the folder the agent writes these files into")
        return run(args)

    return command


def _evidence_folder(cfg: AgentConfig) -> Path:
    return cfg.evidence_dir or cfg.data_dir / "evidence"


def _throttle_folder(cfg: AgentConfig) -> Path:
    return cfg.throttle.state_dir or cfg.data_dir / "throttle"


# -- commands implemented here ---------------------------------------------------------------------


def cmd_collect(args: argparse.Namespace) -> int:
    """Record until ``--duration`` is over. Stopped early by Ctrl-C, SIGTERM (``kill``, a
    service manager, ``timeout``) or SIGHUP (its terminal closed) it keeps what it wrote, says
    so and exits 130, 143 or 129; a write that fails (disk full) cuts both files back to the
    last whole sample, exit 1."""
    from minerwatch.features.collector import procs_path_for, record
    from minerwatch.service.progress import Progress

    if args.duration < args.interval:
        raise InputError(
            "--duration",
            None,
            f"at least --interval ({format_duration(args.interval)}), to record one sample",
            format_duration(args.duration),
        )
    # a plain line at each tenth when stderr is a log (nohup, a service manager): a week-long
    # recording says how far it got, the terminal's bar says it all along
    bar = Progress("collect", lines=10)
    # SIGTERM and SIGHUP arrive as KeyboardInterrupt (main: a terminable command), which
    # record() turns into whole rows kept; before the first sample main reports it
    done = record(
        Path(args.output),
        args.interval,
        args.duration,
        host=args.host,
        progress=lambda n, planned: bar(n, planned, "samples"),
    )
    rows = done.rows
    samples = "sample" if rows == 1 else "samples"
    table = procs_path_for(Path(args.output))
    wrote = f"wrote {rows} {samples} to {args.output}, processes to {table}"
    newline = "\n" if bar.enabled and rows < done.planned else ""  # end the progress line
    if done.error is not None:
        print(
            f"{newline}minerwatch: error: {message(done.error)}: recording stopped after "
            f"{rows} of {done.planned} samples; {wrote} (complete rows)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    if done.stop is not None:
        print(
            f"{newline}minerwatch: {stopped(done.stop)} after {rows} of {done.planned} samples; "
            f"{wrote} (complete rows; the same command appends more)",
            file=sys.stderr,
        )
        return stop_code(done.stop)
    print(wrote, file=sys.stderr)
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from minerwatch.baseline.store import list_hosts
    from minerwatch.baseline.train import fit_summary_table, train_all
    from minerwatch.service.progress import Progress
    from minerwatch.service.resume import resume_hint, say_all_trained, say_skipping

    hop = args.hop or args.window
    check_windows(args.window, hop)
    key = _model_key(args)  # a bad key file is refused before any work
    failures: list[str] = []

    def on_error(host: str, exc: Exception) -> None:
        failures.append(host)
        print(f"minerwatch: skipped host {host}: {exc}", file=sys.stderr)

    trained: list[str] = []
    skipped: list[str] = []
    bar = Progress("train")
    since = args.skip_trained_since if args.skip_trained_since is not None else time.time()
    resume = resume_hint(since)

    def progress(done: int, total: int, host: str) -> None:
        trained.append(host)
        bar(done, total, host)

    def on_skip(hosts: list[str]) -> None:
        skipped.extend(hosts)
        say_skipping(hosts, since)

    try:
        rows = train_all(
            args.inputs,
            Path(args.models),
            window=args.window,
            hop=hop,
            n_jobs=args.jobs,
            dask_address=args.dask,
            progress=progress,
            read_progress=Progress("read"),
            scan_progress=Progress("scan"),
            on_error=on_error,
            model_key=key,
            params={"max_alarms_per_week": args.alarms_per_week},
            skip_since=args.skip_trained_since,
            on_skip=on_skip,
        )
    except (InputError, KeyboardInterrupt) as exc:
        # the disk too: Ctrl-C between a model's save and its count left it unsaid
        ok = set(trained) - set(failures)
        kept = len(ok | set(list_hosts(Path(args.models), since)))
        if kept:  # the input is read a few hosts at a time: say what is already saved
            if isinstance(exc, InputError):
                before = "this error"
            elif isinstance(exc, Terminated):
                before = f"it was {stopped(exc)}"
            else:
                before = "this interruption"
            print(
                ("\n" if bar.enabled and isinstance(exc, KeyboardInterrupt) else "")
                + f"minerwatch: the models of {kept} hosts trained before {before} are saved in "
                f"{args.models}; {resume}",
                file=sys.stderr,
            )
        raise
    if not rows and skipped and not failures:
        say_all_trained(len(skipped), since, args.models)
        return EXIT_OK
    if not rows:
        raise InputError(
            ", ".join(args.inputs),
            None,
            "at least one host with enough data",
            "none could be trained",
        )
    print(fit_summary_table(rows))
    if failures:
        print(
            f"minerwatch: trained {len(rows)} hosts, skipped {len(failures)}: "
            f"{', '.join(failures)} (exit 2)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return EXIT_OK


def cmd_score(args: argparse.Namespace) -> int:
    """Score every host; one without a usable model or a complete window is skipped and named.
    Exit 0 only when every host was scored; 2 when any was skipped, and then the CSV holds the
    hosts that were; when none was, nothing is written."""
    from minerwatch.baseline.batch import SCORE_COLUMNS, score_series
    from minerwatch.baseline.store import load_model
    from minerwatch.features.io import TelemetryGroups
    from minerwatch.service.progress import Progress
    from minerwatch.service.scorecsv import ScoreSink, describe, is_stdout

    key = _model_key(args)
    models, out = Path(args.models), Path(args.output)
    if not is_stdout(out):
        _not_among_inputs(out, args.inputs)
    groups = TelemetryGroups(args.inputs, progress=Progress("read"), scan_progress=Progress("scan"))
    bar = Progress("score")
    skipped: list[str] = []
    alerts, windows, seen = 0, 0, 0
    with ScoreSink(out, SCORE_COLUMNS) as sink:
        for host, series in ((h, f[h]) for f in groups for h in sorted(f)):
            seen += 1
            bar(seen, groups.hosts, host)
            try:
                model = load_model(models, host, key=key)
                res = score_series(model, series)
                if not len(res.score):
                    raise InputError(
                        series.source or host,
                        None,
                        f"at least one complete {format_duration(model.window)} window "
                        f"for host {host!r}",
                        f"none in {len(series.timestamps)} samples",
                    )
            except InputError as exc:  # a ModelError too: unusable model, or data
                skipped.append(host)
                print(f"minerwatch: skipped host {host}: {exc}", file=sys.stderr)
                continue
            for column in res.unknown:
                print(
                    f"minerwatch: note: host {host}: no {column!r} column (only the agent "
                    "records it); scored as unknown, which counts as the host's usual value",
                    file=sys.stderr,
                )
            if model.procs is not None and series.procs is None:
                print(
                    f"minerwatch: note: host {host}: no process table in the input (such as "
                    f"{host}.procs.csv beside its samples), though its model learnt the host's "
                    "processes: the process features are scored as unknown and alerts name no "
                    "process",
                    file=sys.stderr,
                )
            sink.write(res.rows())
            windows += len(res.score)
            alerts += int(res.alert.sum())
        if len(skipped) == seen:
            raise InputError(
                str(models),
                None,
                f"a usable model and data for at least one of the {seen} hosts in the "
                f"input ({_names(skipped)})",
                f"none; nothing was written to {describe(out)}"
                if is_stdout(out)
                else f"none; {out} was not written",
            )
        sink.commit()
    scored = seen - len(skipped)
    hosts = "host" if scored == 1 else "hosts"
    summary = f"scored {windows} windows of {scored} {hosts}, {alerts} alerted -> {describe(out)}"
    if skipped:
        print(f"{summary}; skipped {len(skipped)}: {_names(skipped)} (exit 2)", file=sys.stderr)
        return EXIT_USAGE
    print(summary, file=sys.stderr)
    return EXIT_OK


def _not_among_inputs(out: Path, inputs: Sequence[str]) -> None:
    """Refuse an output that is one of the input files, or a telemetry file in an input
    folder: it would overwrite the telemetry, or be read as telemetry by the next run."""
    from minerwatch.features.io import SUFFIXES

    target = out.resolve()
    for item in inputs:
        given = Path(item).resolve()
        inside = given.is_dir() and target.parent == given and target.suffix in SUFFIXES
        if target == given or inside:
            raise InputError(
                str(out),
                None,
                "an output file outside the inputs (a file in an input folder is read as "
                "telemetry by the next run)",
                f"a path among the inputs ({item})",
            )


def _model_key(args: argparse.Namespace) -> bytes | None:
    from minerwatch.baseline.store import read_key

    return read_key(args.model_key) if args.model_key is not None else None


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)  # a bad flag or file is reported before the agent loads
    require_private_config(args.config)
    require_folder(cfg.data_dir, "the agent's data folder (--data-dir, data_dir)")
    require_writable_folders(cfg)
    from minerwatch.service.agent import serve

    try:
        return serve(cfg, args.log_level)
    except OSError as exc:
        from minerwatch.service.httpserver import bind_error

        expected = (
            "an address and port the exporter can listen on (--address, --port, "
            "[exporter] address/port)"
        )
        error = bind_error(cfg.exporter.address, cfg.exporter.port, exc, expected)
        if error is None:
            raise
        raise error from None


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

    p = _command(
        sub,
        "collect",
        "record this machine's telemetry to a CSV file",
        cmd_collect,
        terminable=True,
    )
    p.add_argument(
        "--interval", type=_duration, default="10s", help="time between samples (10s, 1m, ...)"
    )
    p.add_argument("--duration", type=_duration, default="1h", help="time to record (30m, 2h, ...)")
    p.add_argument(
        "--output",
        type=_output_file,
        required=True,
        help="CSV file (NAME.csv) to append to; the process table goes beside it, NAME.procs.csv",
    )
    p.add_argument("--host", help="host name to record (default: this machine's hostname)")

    p = _command(
        sub, "train", "train one baseline per host found in the inputs", cmd_train, terminable=True
    )
    p.add_argument("inputs", nargs="+", help="telemetry files or folders of them")
    p.add_argument(
        "--models",
        type=_output_folder,
        required=True,
        help="model folder (one sub-folder per host)",
    )
    p.add_argument("--window", type=_duration, default="60s", help="window length")
    p.add_argument("--hop", type=_duration, help="window hop (default: the window)")
    p.add_argument(
        "--jobs",
        type=_jobs,
        default=1,
        help="parallel processes (joblib; -1 = all), and hosts read into memory at once",
    )
    _model_key_flag(p, "sign the models with it")
    p.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="train on a Dask cluster: scheduler address, or 'local' (default: no Dask)",
    )
    _alarms_flag(p)
    _skip_trained_flag(p)

    p = _command(
        sub,
        "score",
        "score telemetry with stored models, one row per window",
        cmd_score,
        terminable=True,
    )
    p.add_argument("inputs", nargs="+", help="telemetry files or folders of them")
    p.add_argument(
        "--models", type=_existing_folder, required=True, help="model folder written by 'train'"
    )
    p.add_argument(
        "--output",
        type=_output_file_or_stdout,
        required=True,
        help="CSV file to write, or - for standard output",
    )
    _model_key_flag(p, "load only models signed with it")

    p = _command(
        sub,
        "simulate",
        "write a labelled synthetic fleet (train/test CSV, process tables + labels.json): hosts "
        "with realistic rhythms, benign events and (test split only) mining campaigns",
        _lazy("minerwatch.bench.simulate"),
        terminable=True,
    )
    p.add_argument("--hosts", type=int, default=12, help="number of hosts")
    p.add_argument("--train-days", type=float, default=7.0, help="days of clean training data")
    p.add_argument("--test-days", type=float, default=3.0, help="days of test data with campaigns")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    p.add_argument("--interval", type=_duration, default="30s", help="time between samples")
    p.add_argument(
        "--start",
        type=_instant,
        help="time of the first sample, Unix seconds or ISO 8601 (default: 2026-01-05T00:00Z)",
    )
    p.add_argument(
        "--output",
        type=_output_folder,
        required=True,
        help="folder to write into (what an earlier simulate wrote there is replaced)",
    )
    p.add_argument(
        "--no-procs",
        action="store_true",
        help="write no process tables (<host>.procs.csv), as simulators before schema 2 did",
    )

    p = _command(
        sub,
        "evaluate",
        "measure detection quality on labelled data: a simulation (--data) or a public "
        "benchmark (--smd, --nab), compared with reference detectors",
        _lazy("minerwatch.bench.evaluate"),
        terminable=True,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--data", type=_existing_folder, help="folder written by 'minerwatch simulate'"
    )
    src.add_argument(
        "--smd",
        type=_existing_folder,
        help="a folder in SMD's layout: train/, test/, test_label/, one file per machine, "
        "any number of columns",
    )
    src.add_argument("--nab", type=_existing_folder, help="NAB folder (<category>/*.csv, labels/)")
    p.add_argument(
        "--models",
        type=_output_folder,
        help="--data: load models from here, training and saving the missing ones "
        "(default: none, every host trained afresh and no model kept)",
    )
    p.add_argument(
        "--output",
        type=_output_folder,
        help="write report.md and plots to this folder (default: none, tables on stdout only)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--window", type=_duration, help="--data: window length (default: 60s)")
    p.add_argument("--hop", type=_duration, help="--data: window hop (default: the window)")
    p.add_argument(
        "--grace",
        type=_duration,
        help="--data: alerts this long after a campaign ends are not false alarms (default: 0s)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the reference IsolationForest")
    p.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="--smd/--nab: only these machines or files (default: all)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument(
        "--alarms-per-week",
        type=_positive,
        help="--smd/--nab: false-alarm budget of the threshold (default: 7 per machine-week)",
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

    run = _reads_agent_files("minerwatch.service.throttle", "state_dir", _throttle_folder)
    throttle = _group(
        sub, "throttle", "inspect or release throttled processes", run, "throttle_command"
    )
    p = _command(throttle, "status", "list throttled processes", run)
    p.add_argument("--json", action="store_true", help="print the journal as JSON")
    _agent_files(p, "--state-dir", "state_dir")
    p = _command(
        throttle,
        "release",
        "release throttled processes (all, or one PID); works without a running agent",
        run,
    )
    p.add_argument("pid", nargs="?", type=_pid, help="only this process (default: all)")
    _agent_files(p, "--state-dir", "state_dir")

    run = _reads_agent_files("minerwatch.service.evidence", "dir", _evidence_folder)
    evidence = _group(
        sub, "evidence", "list or show evidence files written on alerts", run, "evidence_command"
    )
    p = _command(evidence, "list", "one line per evidence file, oldest first", run)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _agent_files(p, "--dir", "dir")
    p = _command(evidence, "show", "print one evidence file as JSON", run)
    p.add_argument(
        "name",
        help="file name or episode id, as printed by 'list', or the file's path in the "
        "evidence folder (an alert's 'evidence' annotation)",
    )
    _agent_files(p, "--dir", "dir")
    _fleet_commands(sub)
    _response_commands(sub)
    _report_command(sub)
    _dismiss_command(sub)
    return parser


def _dismiss_command(sub: Subcommands) -> None:
    """``dismiss``: a responder's verdict that an episode was benign, learnt by retraining."""
    p = _command(
        sub,
        "dismiss",
        "mark an alert episode (the latest by default) as benign: the agent retrains and "
        "learns its windows instead of leaving them out, so the same work does not page again",
        _lazy("minerwatch.service.dismiss"),
    )
    _agent_dir_flags(p)
    p.add_argument("--episode", metavar="ID", help="episode id (default: the latest)")
    p.add_argument(
        "--reason", metavar="TEXT", help="why it was benign, kept with the record (default: none)"
    )
    p.add_argument("--undo", metavar="ID", help="take back the dismissal of episode ID instead")
    p.add_argument("--list", action="store_true", help="list the dismissals in force instead")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _report_command(sub: Subcommands) -> None:
    """``report``: one alert episode written up from the agent's events, evidence, history."""
    p = _command(
        sub,
        "report",
        "write the incident report of one alert episode (the latest by default) from the "
        "agent's events, evidence and history",
        _lazy("minerwatch.service.report"),
    )
    _agent_dir_flags(p)
    p.add_argument("--episode", metavar="ID", help="episode id (default: the latest)")
    p.add_argument(
        "--scores",
        type=Path,
        metavar="FILE",
        help="batch or fleet mode: the output of 'score' or 'fleet score' instead of an "
        "agent's data folder (default: none)",
    )
    p.add_argument(
        "--telemetry",
        type=Path,
        nargs="+",
        metavar="PATH",
        help="with --scores: the telemetry files or folders that were scored, for the "
        "timeline and the busiest process (default: none)",
    )
    p.add_argument("--format", choices=("html", "json", "md"), default="html", help="output format")
    p.add_argument(
        "--output",
        type=_output_file_or_stdout,
        metavar="FILE",
        help="file to write, mode 0600, or - for standard output (default: stdout)",
    )
    p.add_argument(
        "--remediation",
        action="store_true",
        help="add the commands a responder would run to clean up, for review "
        "(minerwatch never runs them)",
    )


def _skip_trained_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--skip-trained-since",
        type=_instant,
        metavar="TIME",
        help="leave out hosts whose model in --models was saved at or after TIME (Unix seconds "
        "or ISO 8601): finishes a run stopped half-way, which prints this flag with its own "
        "start (default: train every host)",
    )


def _header(text: str) -> tuple[str, str]:
    """``--header 'NAME: VALUE'``: checked here so a bad one is exit 2 before any request."""
    try:
        return parse_header(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _Headers(argparse.Action):
    """``--header``, repeatable: the (name, value) pairs in order, as a tuple (it travels in
    the frozen, pickled Connection); a name given twice, in any case, is a usage error: which
    value the server would see is not for an HTTP library to decide."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        pairs = (*(getattr(namespace, self.dest, None) or ()), values)
        twice = duplicate(pairs)
        if twice is not None:
            parser.error(
                f"argument {option_string}: expected each header once, got {twice} twice "
                "(several tenants go in one value: 'X-Scope-OrgID: team-a|team-b')"
            )
        setattr(namespace, self.dest, pairs)


def _fleet_flags(p: argparse.ArgumentParser, *, days: bool = False, times: bool = True) -> None:
    """Where Prometheus is, which series are the fleet, and the time range."""
    p.add_argument(
        "--prometheus",
        required=True,
        metavar="URL",
        help="Prometheus base URL, http:// or https://",
    )
    p.add_argument(
        "--selector",
        default="",
        metavar="S",
        help="label selector picking the fleet's node_exporter series, e.g. '{job=\"node\"}' "
        "(default: every node_exporter series)",
    )
    p.add_argument(
        "--host-label",
        metavar="LABEL",
        help="label naming the host (default: the instance label without its port)",
    )
    if times:
        p.add_argument(
            "--start",
            type=_instant,
            required=not days,  # score and export: no span worth guessing
            help="Unix seconds or ISO 8601 (2026-01-05T00:00Z)"
            + (" (default: --days before --end)" if days else ""),
        )
        p.add_argument("--end", type=_instant, help="as --start (default: now)")
    if days:
        p.add_argument(
            "--days",
            type=_positive,
            default=14.0,
            help="days of history before --end to train on"
            if times
            else "days of history up to now that a retraining reads",
        )
    p.add_argument("--username", help="basic auth user, with --password-file (default: none)")
    p.add_argument(
        "--password-file",
        metavar="FILE",
        help="file holding the basic auth password (default: none, an empty password)",
    )
    p.add_argument(
        "--bearer-token-file", metavar="FILE", help="file holding a bearer token (default: none)"
    )
    p.add_argument(
        "--header",
        type=_header,
        action=_Headers,
        default=(),
        dest="headers",
        metavar="'NAME: VALUE'",
        help="HTTP header sent with every request, repeatable: 'X-Scope-OrgID: team-a' names "
        "the tenant of Grafana Mimir or Cortex; not Authorization (use the file flags above) "
        "(default: none)",
    )
    p.add_argument(
        "--ca-file",
        metavar="FILE",
        help="CA certificates to verify https servers (default: the system's)",
    )
    p.add_argument("--cert-file", metavar="FILE", help="client certificate, PEM (default: none)")
    p.add_argument(
        "--key-file",
        metavar="FILE",
        help="client certificate's key, PEM (default: in --cert-file)",
    )
    p.add_argument("--timeout", type=_duration, default="30s", help="per request")
    p.add_argument(
        "--retries",
        type=_retries,
        default=4,
        help="tries again a request that failed for a transient reason (5xx, timeout, refused "
        "or cut-short connection), after 0.5 s, 1 s, 2 s ...",
    )
    p.add_argument(
        "--gzip",
        action="store_true",
        help="ask for gzip answers: 1/4 of the bytes for ~7x Prometheus' CPU (slow links only)",
    )
    p.add_argument("--concurrency", type=_requests, default=4, help="requests at once per process")


def _fleet_commands(sub: Subcommands) -> None:
    """``minerwatch fleet ...``: train and score hosts from the Prometheus that scrapes them."""
    run = _lazy("minerwatch.service.fleet.commands")
    fleet = _group(
        sub,
        "fleet",
        "train, score, export, serve or dismiss every host from node_exporter metrics in "
        "Prometheus",
        run,
        "fleet_command",
    )
    p = _command(
        fleet,
        "train",
        "one model per host, from --days of history (or --start)",
        run,
        terminable=True,
    )
    _fleet_flags(p, days=True)
    p.add_argument("--models", type=_output_folder, required=True, help="model folder")
    p.add_argument("--window", type=_duration, default="60s", help="window length")
    p.add_argument("--hop", type=_duration, help="window hop (default: the window)")
    p.add_argument("--jobs", type=_jobs, default=1, help="parallel processes (joblib; -1 = all)")
    p.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="train on a Dask cluster: scheduler address, or 'local' (default: no Dask)",
    )
    _alarms_flag(p)
    _model_key_flag(p, "sign the models with it")
    _skip_trained_flag(p)
    p = _command(
        fleet,
        "score",
        "score --start..--end with stored models, like 'score'",
        run,
        terminable=True,
    )
    _fleet_flags(p)
    p.add_argument(
        "--models", type=_existing_folder, required=True,
        help="model folder written by 'fleet train' (or 'train')",
    )  # fmt: skip
    p.add_argument(
        "--output",
        type=_output_file_or_stdout,
        required=True,
        help="CSV file to write, or - for standard output",
    )
    _model_key_flag(p, "load only models signed with it")
    p = _command(
        fleet,
        "export",
        "write --start..--end as telemetry CSV files, one per host",
        run,
        terminable=True,
    )
    _fleet_flags(p)
    p.add_argument("--output", type=_output_folder, required=True, help="folder to write into")
    p = _command(
        fleet,
        "serve",
        "score every host each --interval and export the agent's metrics with a host label",
        run,
    )
    _fleet_flags(p, days=True, times=False)
    p.add_argument(
        "--models", type=_existing_folder, required=True,
        help="model folder written by 'fleet train' (or 'train')",
    )  # fmt: skip
    p.add_argument("--port", type=int, default=10092, help="port of /metrics (0 = any free port)")
    p.add_argument("--address", default="::", help="address to listen on (:: = all, dual-stack)")
    p.add_argument("--interval", type=_duration, default="60s", help="time between cycles")
    p.add_argument(
        "--retrain-every",
        type=_duration_or_zero,
        default="24h",
        help="retrain a host's model once it is this old, from --days of history (0 = never)",
    )
    p.add_argument(
        "--web-config",
        type=Path,
        metavar="FILE",
        help="TLS / basic-auth web config (default: none, plain HTTP without authentication)",
    )
    p.add_argument(
        "--state-dir",
        type=_output_folder,
        metavar="DIR",
        help="folder of fleet-serve-state.json, the open alerts and alerted windows kept across "
        "restarts (default: the --models folder)",
    )
    _model_key_flag(p, "load only models signed with it, sign retrained ones")
    _fleet_dismiss(fleet, run)


def _fleet_dismiss(fleet: Subcommands, run: Command) -> None:
    p = _command(
        fleet,
        "dismiss",
        "mark a host's alert (--host, --start..--end) as benign: fleet serve retrains the host "
        "and learns that span instead of leaving it out",
        run,
    )
    p.add_argument(
        "--state-dir",
        type=_existing_folder,
        required=True,
        metavar="DIR",
        help="fleet serve's state folder (its --state-dir, else its --models folder); it must "
        "hold fleet-serve-state.json, fleet-dismissed.json or a model to dismiss into",
    )
    p.add_argument(
        "--host",
        help="the host, as fleet serve's host label names it (required, except with --list)",
    )
    p.add_argument(
        "--start",
        type=_instant,
        help="start of the alert: Unix seconds or ISO 8601 (required, except with --list)",
    )
    p.add_argument(
        "--end",
        type=_instant,
        help="end of the alert, as --start (required to dismiss; not with --list or --undo)",
    )
    p.add_argument("--reason", metavar="TEXT", help="why it was benign (default: none)")
    p.add_argument(
        "--undo", action="store_true", help="take back the dismissal of --host from --start"
    )
    p.add_argument("--list", action="store_true", help="list the dismissals instead")
    p.add_argument("--json", action="store_true", help="with --list: print JSON")


def _isolate_command() -> Command:
    """``isolate``'s journal is ``DATA_DIR/isolate`` (found as ``throttle`` finds its own);
    unlike a folder other commands read, it need not exist before the first isolation."""
    run = _lazy("minerwatch.service.isolate")

    def command(args: argparse.Namespace) -> int:
        cfg = agent_files_config(args.config, args.data_dir)
        require_folder(cfg.data_dir, "the agent's data folder (--data-dir, data_dir)")
        args.state_dir = cfg.data_dir / "isolate"
        require_folder(args.state_dir, "the folder of the isolation journal")
        return run(args)

    return command


def _response_commands(sub: Subcommands) -> None:
    """``isolate``, ``ioc`` and ``hunt``: what a responder runs after an alert."""
    run = _isolate_command()
    p = _command(
        sub,
        "isolate",
        "cut a process (--process) or the host (--host) off the network with nftables; "
        "'isolate release' undoes it, 'isolate status' shows it",
        run,
    )
    target = p.add_mutually_exclusive_group()
    target.add_argument("--process", type=_pid, metavar="PID", help="drop this process's traffic")
    target.add_argument(
        "--host",
        action="store_true",
        help="drop all traffic but loopback, SSH from --allow-ssh-from and exporter scrapes",
    )
    p.add_argument(
        "--allow-ssh-from",
        nargs="+",
        metavar="CIDR",
        help="--host: sources that keep SSH (required with --host)",
    )
    p.add_argument("--ssh-port", type=int, default=22, help="--host: the SSH port kept open")
    p.add_argument(
        "--by",
        choices=("auto", "cgroup", "uid"),
        default="auto",
        help="--process: match its cgroup v2 or its uid (auto: the cgroup when it is its own)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the nftables ruleset, apply none")
    _agent_dir_flags(p)
    actions = p.add_subparsers(dest="isolate_command", metavar="COMMAND")
    q = _command(actions, "status", "list what is isolated and whether the table is loaded", run)
    q.add_argument("--json", action="store_true", help="print JSON")
    _agent_dir_flags(q)
    q = _command(
        actions, "release", "undo isolation (all, or --pid/--host); works without an agent", run
    )
    q.add_argument("--pid", type=_pid, help="only this process's isolation")
    q.add_argument("--host", action="store_true", help="only the host isolation")
    q.add_argument(
        "--all",
        action="store_true",
        help="delete the nftables table even if the journal is unreadable or lost",
    )
    _agent_dir_flags(q)

    ioc = _group(
        sub, "ioc", "indicators of compromise", _lazy("minerwatch.service.ioc"), "ioc_command"
    )
    q = _command(
        ioc,
        "extract",
        "write an IOC file (sha256, paths, pools, pool names, cron lines, units) from an "
        "evidence file",
        _lazy("minerwatch.service.ioc"),
    )
    q.add_argument(
        "evidence",
        type=Path,
        help="evidence file, or a name or episode id from 'minerwatch evidence list' (looked up "
        "in the agent's evidence folder)",
    )
    _agent_dir_flags(q)
    q.add_argument(
        "--output",
        type=_output_file_or_stdout,
        help="IOC file to write, or - for standard output (default: print it to stdout)",
    )
    q = _command(
        sub,
        "hunt",
        "check this host once against an IOC file: exit 1 on a hit, 0 when clean",
        _lazy("minerwatch.service.ioc", "run_hunt"),
    )
    q.add_argument("ioc_file", type=Path, metavar="IOC-FILE", help="file from 'ioc extract'")
    q.add_argument(
        "--scan",
        nargs="*",
        type=Path,
        metavar="DIR",
        help="folders whose executables are hashed (default: /tmp /var/tmp /dev/shm)",
    )
    q.add_argument(
        "--resolve",
        action="store_true",
        help="look the IOC's pool names up and match connections to their addresses today "
        "(a DNS query for a mining pool, which the resolver's monitoring may flag; default: "
        "pool names are matched on command lines only)",
    )
    q.add_argument("--json", action="store_true", help="print the hits as JSON")


def _agent_dir_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", type=Path, metavar="FILE", help="the agent's config file (default: none)"
    )
    p.add_argument(
        "--data-dir",
        type=_existing_folder,
        metavar="DIR",
        help=f"the agent's data folder, as given to 'serve --data-dir'; overrides the config's "
        f"(default: the config's, else {DEFAULT_DATA_DIR})",
    )


# -- running -------------------------------------------------------------------------------------


def exit_code(exc: BaseException) -> int:
    """The one place that maps failures to exit codes."""
    if isinstance(exc, KeyboardInterrupt):  # Ctrl-C, or SIGTERM/SIGHUP (Terminated)
        return stop_code(exc)
    if isinstance(exc, BrokenPipeError):  # the reader went away (``| head``): as SIGPIPE would
        return EXIT_BROKEN_PIPE
    if isinstance(exc, InputError | FileNotFoundError | FileExistsError):
        return EXIT_USAGE
    if isinstance(exc, IsADirectoryError | NotADirectoryError):
        return EXIT_USAGE
    if isinstance(exc, PermissionError):  # e.g. a root-only file read by a user
        return EXIT_USAGE
    return EXIT_FAILURE


def message(exc: BaseException) -> str:
    """What went wrong, for a user: an OS error names its file first, like an InputError."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        where = str(exc.filename)
        if exc.filename2 is not None:
            where += f" -> {exc.filename2}"
        return f"{where}: {exc.strerror}"
    return str(exc)


def _stdout_gone() -> None:
    """The reader closed the pipe: point stdout at /dev/null so exiting flushes nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (embedded, captured): nothing to flush
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code, also for ``--help`` and bad usage (argparse
    prints those and stops with ``SystemExit``)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else EXIT_USAGE
    except Exception as exc:  # a flag's check that failed another way (a folder unreadable)
        return _failed(exc)
    try:
        # a batch command stops on SIGTERM and SIGHUP as on Ctrl-C (service/terminate.py)
        with terminable() if getattr(args, "terminable", False) else nullcontext():
            code = int(args.run(args))
        sys.stdout.flush()  # a closed pipe shows up here, not at exit
        return code
    except KeyboardInterrupt as exc:
        if isinstance(exc, Terminated) and not exc.said:  # in a log, why it ended
            print(f"minerwatch: {stopped(exc)}", file=sys.stderr)
        return exit_code(exc)
    except Exception as exc:  # the one catch-all: a message, never a traceback, for users
        return _failed(exc)


def _failed(exc: Exception) -> int:
    """Say what went wrong in one line (never a traceback) and return the exit code."""
    code = exit_code(exc)
    if code == EXIT_BROKEN_PIPE:
        _stdout_gone()
    elif code == EXIT_USAGE:
        print(f"minerwatch: error: {message(exc)}", file=sys.stderr)
    else:
        print(f"minerwatch: unexpected failure: {type(exc).__name__}: {exc}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
