"""Options of ``minerwatch serve``: defaults < config file (TOML) < command-line flags.

One frozen :class:`AgentConfig` holds them all. Every option is declared once in ``OPTIONS``
(its TOML section and key, its kind and its limits); the loader, the flag parser, ``config
show`` and the documented ``deploy/minerwatch.toml`` all follow that table. A bad file is
reported at the first bad key with its line, so ``minerwatch config check`` reads like a
compiler error. The config file itself should be writable by root only: it decides which
processes the agent may throttle.
"""

from __future__ import annotations

import argparse
import difflib
import math
import re
import socket
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minerwatch.features.errors import InputError
from minerwatch.service.durations import (
    DURATION_HELP,
    SIZE_HELP,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)

DEFAULT_CONFIG_PATH = Path("/etc/minerwatch/minerwatch.toml")
DEFAULT_DATA_DIR = Path("/var/lib/minerwatch")
THROTTLE_METHODS = ("auto", "cgroup2", "cgroup1", "sigstop")
DAY = 86400.0


@dataclass(frozen=True)
class ExporterConfig:
    """``[exporter]``: where Prometheus scrapes the agent."""

    port: int = 10091
    address: str = "0.0.0.0"
    web_config: Path | None = None  # exporter-toolkit style TLS/basic-auth file; None = plain
    textfile_dir: Path | None = None  # also write node_exporter textfile-collector files here


@dataclass(frozen=True)
class ThrottleOptions:
    """``[throttle]``: the optional auto-throttle (see :func:`AgentConfig.throttle_kwargs`)."""

    enabled: bool = False
    cpu_percent: float = 90.0
    hold: float = 30.0
    release_cpu_percent: float = 70.0
    release_hold: float = 60.0
    dry_run: bool = False
    only_when_alert: bool = False
    max_targets: int = 3
    quota_percent: float = 10.0
    method: str = "auto"
    allow_names: tuple[str, ...] = ()
    allow_users: tuple[str, ...] = ()
    allow_units: tuple[str, ...] = ()


@dataclass(frozen=True)
class AgentConfig:
    """Everything ``minerwatch serve`` needs; durations in seconds, sizes in bytes.

    ``hop``, ``host``, ``event_log`` and ``evidence_dir`` default to values derived from other
    options (the window, this machine's name, the data directory) and are never empty after
    construction.

    >>> cfg = AgentConfig(window=120.0, data_dir=Path("/srv/mw"))
    >>> cfg.hop, cfg.event_log, cfg.exporter.port
    (120.0, PosixPath('/srv/mw/events.jsonl'), 10091)
    """

    interval: float = 10.0
    window: float = 60.0
    hop: float | None = None
    learn_for: float = DAY
    retrain_every: float = DAY
    retrain_history: float = 14 * DAY
    data_dir: Path = DEFAULT_DATA_DIR
    host: str = ""
    alert_windows: int = 3
    event_log: Path | None = None
    evidence_dir: Path | None = None
    history_retention: float = 14 * DAY
    history_max_bytes: int = 256 * 1024 * 1024
    exporter: ExporterConfig = field(default_factory=ExporterConfig)
    throttle: ThrottleOptions = field(default_factory=ThrottleOptions)

    def __post_init__(self) -> None:
        derived = {
            "hop": self.window if self.hop is None else self.hop,
            "host": self.host or socket.gethostname(),
            "event_log": self.event_log or self.data_dir / "events.jsonl",
            "evidence_dir": self.evidence_dir or self.data_dir / "evidence",
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    @property
    def history_path(self) -> Path:
        """The SQLite history file inside the data directory."""
        return self.data_dir / "history.db"

    def throttle_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``minerwatch.service.throttle.ThrottleConfig`` (its names end in _s)."""
        t = self.throttle
        return {
            "enabled": t.enabled,
            "cpu_percent": t.cpu_percent,
            "hold_s": t.hold,
            "release_cpu_percent": t.release_cpu_percent,
            "release_hold_s": t.release_hold,
            "dry_run": t.dry_run,
            "only_when_alert": t.only_when_alert,
            "max_targets": t.max_targets,
            "quota_percent": t.quota_percent,
            "method": t.method,
            "allow_names": t.allow_names,
            "allow_users": t.allow_users,
            "allow_units": t.allow_units,
            "state_dir": self.data_dir / "throttle",
        }


# -- the option table --------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """How one option is spelled, checked and printed."""

    kind: str  # duration | size | int | float | bool | str | path | names | choice
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: value must be > low, else >= low
    empty_ok: bool = False  # "" means "derive the default" (paths, host)
    help: str = ""


_POS_DUR = Option("duration", 0, low_open=True)
_PCT = Option("float", 0, 100, low_open=True)

OPTIONS: dict[str, dict[str, Option]] = {
    "agent": {
        "interval": Option("duration", 0, low_open=True, help="time between two samples"),
        "window": Option("duration", 0, low_open=True, help="length of one scored window"),
        "hop": Option("duration", 0, low_open=True, help="step between windows"),
        "learn_for": Option("duration", 0, low_open=True, help="learning time before scoring"),
        "retrain_every": Option("duration", 0, help="retraining period (0 = never)"),
        "retrain_history": _POS_DUR,
        "data_dir": Option("path"),
        "host": Option("str", empty_ok=True),
        "alert_windows": Option("int", 1),
        "event_log": Option("path", empty_ok=True),
        "evidence_dir": Option("path", empty_ok=True),
        "history_retention": _POS_DUR,
        "history_max_bytes": Option("size", 1024 * 1024),
    },
    "exporter": {
        "port": Option("int", 0, 65535, help="0 = any free port (tests)"),
        "address": Option("str"),
        "web_config": Option("path", empty_ok=True),
        "textfile_dir": Option("path", empty_ok=True),
    },
    "throttle": {
        "enabled": Option("bool"),
        "cpu_percent": _PCT,
        "hold": Option("duration", 0),
        "release_cpu_percent": Option("float", 0, 100),
        "release_hold": Option("duration", 0),
        "dry_run": Option("bool"),
        "only_when_alert": Option("bool"),
        "max_targets": Option("int", 1),
        "quota_percent": _PCT,
        "method": Option("choice"),
        "allow_names": Option("names"),
        "allow_users": Option("names"),
        "allow_units": Option("names"),
    },
}

Key = tuple[str, str]  # (section, option)


class _Bad(Exception):
    """A value that does not fit its option: (expected, got)."""

    def __init__(self, expected: str, got: str) -> None:
        super().__init__(expected, got)
        self.expected, self.got = expected, got


def _describe(key: Key, opt: Option) -> str:
    """The 'expected ...' text for one option, limits included."""
    name = f"{key[0]}.{key[1]}"
    base = {
        "duration": DURATION_HELP,
        "size": SIZE_HELP,
        "int": "an integer",
        "float": "a number",
        "bool": "true or false",
        "str": "a string",
        "path": "a path (string)",
        "names": "a list of strings",
        "choice": "one of " + ", ".join(f'"{m}"' for m in THROTTLE_METHODS),
    }[opt.kind]
    limit = {"duration": format_duration, "size": format_size}.get(opt.kind, _fmt_num)
    sep = ", " if opt.kind in ("duration", "size") else " "
    if opt.low is not None and opt.high is not None:
        if opt.low_open:
            base += f"{sep}above {limit(opt.low)} and at most {limit(opt.high)}"
        else:
            base += f"{sep}from {limit(opt.low)} to {limit(opt.high)}"
    elif opt.low is not None:
        at_least = "at least" if sep == ", " else "of at least"
        base += f"{sep}{'above' if opt.low_open else at_least} {limit(opt.low)}"
    return f"{name} to be {base}"


def _fmt_num(v: Any) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def _convert(key: Key, opt: Option, raw: Any, strict: bool) -> Any:
    """Turn a TOML value (``strict``) or a flag's text into the option's Python value."""
    expected = _describe(key, opt)
    got = toml_value(raw) if _is_toml_scalar_or_list(raw) else repr(raw)
    kind = opt.kind
    value: Any
    try:
        if kind == "duration":
            value = parse_duration(raw)
        elif kind == "size":
            value = parse_size(raw)
        elif kind == "int":
            if isinstance(raw, int) and not isinstance(raw, bool):
                value = raw
            elif not strict and isinstance(raw, str) and re.fullmatch(r"\s*[+-]?\d+\s*", raw):
                value = int(raw)
            else:
                raise _Bad(expected, got)
        elif kind == "float":
            if isinstance(raw, (int, float)) and not isinstance(raw, bool):
                value = float(raw)
            elif not strict and isinstance(raw, str):
                value = float(raw)
            else:
                raise _Bad(expected, got)
            if not math.isfinite(value):
                raise _Bad(expected, got)
        elif kind == "bool":
            if isinstance(raw, bool):
                value = raw
            elif not strict and isinstance(raw, str) and raw.lower() in _BOOL_WORDS:
                value = _BOOL_WORDS[raw.lower()]
            else:
                raise _Bad(expected, got)
        elif kind in ("str", "path", "choice"):
            if not isinstance(raw, str):
                raise _Bad(expected, got)
            text = raw.strip()
            if not text and not opt.empty_ok or text != raw or "\0" in raw:
                raise _Bad(expected + " (not empty, no surrounding spaces)", got)
            if kind == "choice" and text not in THROTTLE_METHODS:
                raise _Bad(expected, got)
            value = (Path(text) if text else None) if kind == "path" else text
        elif kind == "names":
            if not strict and isinstance(raw, str):
                raw = [part.strip() for part in raw.split(",") if part.strip()]
            if not isinstance(raw, (list, tuple)) or not all(
                    isinstance(x, str) and x for x in raw):
                raise _Bad(expected + " (not empty)", got)
            value = tuple(raw)
        else:  # pragma: no cover - the table above only uses the kinds handled here
            raise AssertionError(kind)
    except InputError:
        raise _Bad(expected, got) from None
    except ValueError:
        raise _Bad(expected, got) from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        too_low = opt.low is not None and (value <= opt.low if opt.low_open else value < opt.low)
        if too_low or opt.high is not None and value > opt.high:
            raise _Bad(expected, got)
    return value


_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True,
               "false": False, "no": False, "off": False, "0": False}


# -- where keys are in the file ----------------------------------------------------------------

_HEADER = re.compile(r"^\s*\[\[?\s*([^\[\]#]+?)\s*\]\]?\s*(?:#.*)?$")
_KEYLINE = re.compile(r"""^\s*((?:"[^"\n]*"|'[^'\n]*'|[A-Za-z0-9_\-]+)"""
                      r"""(?:\s*\.\s*(?:"[^"\n]*"|'[^'\n]*'|[A-Za-z0-9_\-]+))*)\s*=""")
_DOTTED_PART = re.compile(r""""([^"\n]*)"|'([^'\n]*)'|([A-Za-z0-9_\-]+)""")


def _dotted(text: str) -> tuple[str, ...]:
    return tuple(a or b or c for a, b, c in _DOTTED_PART.findall(text))


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """First line of every table header and key, by dotted path.

    tomllib reports no positions; this scan is enough for error messages (it does not
    parse multi-line strings, whose inner lines could only add spurious later entries).

    >>> key_lines('a = 1\\n[agent]\\ninterval = "5s"\\n')
    {('a',): 1, ('agent',): 2, ('agent', 'interval'): 3}
    """
    table: tuple[str, ...] = ()
    found: dict[tuple[str, ...], int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            table = _dotted(header.group(1))
            found.setdefault(table, number)
            continue
        key = _KEYLINE.match(line)
        if key:
            found.setdefault(table + _dotted(key.group(1)), number)
    return found


def _line_of(lines: Mapping[tuple[str, ...], int], *path: str) -> int | None:
    """Line of ``path``, else of its nearest enclosing table (e.g. an inline table)."""
    for n in range(len(path), 0, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None


# -- loading -------------------------------------------------------------------------------------


def read_toml(path: Path) -> tuple[dict[str, Any], str]:
    """Parse a TOML file; syntax and encoding errors become InputError with tomllib's line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(str(path), None, "a readable config file", e.strerror or str(e)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputError(str(path), line, "UTF-8 text", f"byte 0x{data[e.start]:02x}") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\(at line (\d+), column (\d+)\)$", msg)
        if m:
            reason = msg[: m.start()].strip()
            raise InputError(str(path), int(m.group(1)), "valid TOML",
                             f"{reason} (column {m.group(2)})") from None
        raise InputError(str(path), None, "valid TOML", msg.replace("(at end of document)",
                                                                    "at the end")) from None


def load_config(path: Path | None, overrides: Mapping[str, Any] | None = None) -> AgentConfig:
    """Build the effective config: defaults, then the file at ``path``, then ``overrides``.

    ``overrides`` maps option names to the flags the user gave: ``"interval"`` (an ``[agent]``
    option), ``"exporter.port"``, ``"throttle.enabled"``; None values are ignored, strings are
    parsed like the file's values. Raises InputError naming the first bad key and its line.
    """
    values: dict[Key, Any] = {}
    origin: dict[Key, tuple[str, int | None]] = {}
    if path is not None:
        doc, text = read_toml(path)
        values, origin = _from_document(doc, key_lines(text), str(path))
    for name, raw in (overrides or {}).items():
        if raw is None:
            continue
        key = _override_key(name)
        flag = _flag(*key)
        try:
            values[key] = _convert(key, OPTIONS[key[0]][key[1]], raw, strict=False)
        except _Bad as bad:
            raise InputError(flag, None, bad.expected, bad.got) from None
        origin[key] = (flag, None)
    cfg = _build(values)
    _check_relations(cfg, origin)
    return cfg


def _from_document(doc: Mapping[str, Any], lines: Mapping[tuple[str, ...], int],
                   where: str) -> tuple[dict[Key, Any], dict[Key, tuple[str, int | None]]]:
    values: dict[Key, Any] = {}
    origin: dict[Key, tuple[str, int | None]] = {}
    errors: list[InputError] = []
    for section, table in doc.items():
        line = _line_of(lines, section)
        if section not in OPTIONS:
            errors.append(InputError(where, line, _one_of("a section", section, OPTIONS),
                                     f"[{section}]" if isinstance(table, dict) else section))
            continue
        if not isinstance(table, dict):
            errors.append(InputError(where, line, f"a table [{section}]", toml_value(table)))
            continue
        for key, raw in table.items():
            line = _line_of(lines, section, key)
            opt = OPTIONS[section].get(key)
            if opt is None:
                errors.append(InputError(
                    where, line, _one_of(f"an option of [{section}]", key, OPTIONS[section]),
                    f'"{key}"'))
                continue
            try:
                values[(section, key)] = _convert((section, key), opt, raw, strict=True)
            except _Bad as bad:
                errors.append(InputError(where, line, bad.expected, bad.got))
            origin[(section, key)] = (where, line)
    if errors:
        raise min(errors, key=lambda e: math.inf if e.line is None else e.line)
    return values, origin


def _one_of(what: str, name: str, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    if close:
        return f'{what} (did you mean "{close[0]}"?)'
    return f"{what}: " + ", ".join(known)


def _override_key(name: str) -> Key:
    section, _, key = name.rpartition(".")
    section = section or next((s for s in ("agent", "exporter") if key in OPTIONS[s]), "agent")
    if section not in OPTIONS or key not in OPTIONS[section]:
        raise InputError("command line", None, "a known option", repr(name))
    return section, key


def _build(values: Mapping[Key, Any]) -> AgentConfig:
    def part(section: str) -> dict[str, Any]:
        return {k: v for (s, k), v in values.items() if s == section}

    return AgentConfig(**part("agent"), exporter=ExporterConfig(**part("exporter")),
                       throttle=ThrottleOptions(**part("throttle")))


def _check_relations(cfg: AgentConfig, origin: Mapping[Key, tuple[str, int | None]]) -> None:
    """Checks between options, reported where the user set the first one named."""
    t = cfg.throttle
    hop = cfg.hop if cfg.hop is not None else cfg.window
    rules: list[tuple[bool, Key, Key, str, str]] = [
        (cfg.window >= cfg.interval, ("agent", "window"), ("agent", "interval"),
         f"window >= interval ({format_duration(cfg.interval)})",
         f"window = {format_duration(cfg.window)}"),
        (cfg.interval <= hop <= cfg.window, ("agent", "hop"), ("agent", "window"),
         f"interval <= hop <= window ({format_duration(cfg.interval)} .. "
         f"{format_duration(cfg.window)})", f"hop = {format_duration(hop)}"),
        (cfg.learn_for >= cfg.window, ("agent", "learn_for"), ("agent", "window"),
         f"learn_for >= window ({format_duration(cfg.window)})",
         f"learn_for = {format_duration(cfg.learn_for)}"),
        (cfg.history_retention >= cfg.retrain_history, ("agent", "history_retention"),
         ("agent", "retrain_history"),
         f"history_retention >= retrain_history ({format_duration(cfg.retrain_history)})",
         f"history_retention = {format_duration(cfg.history_retention)}"),
        (t.release_cpu_percent <= t.cpu_percent, ("throttle", "release_cpu_percent"),
         ("throttle", "cpu_percent"), f"release_cpu_percent <= cpu_percent ({t.cpu_percent:g})",
         f"release_cpu_percent = {t.release_cpu_percent:g}"),
    ]
    for ok, first, second, expected, got in rules:
        if not ok:
            where, line = origin.get(first) or origin.get(second) or ("config", None)
            raise InputError(where, line, expected, got)


# -- printing ------------------------------------------------------------------------------------


def _is_toml_scalar_or_list(v: Any) -> bool:
    if isinstance(v, (list, tuple)):
        return all(_is_toml_scalar_or_list(x) for x in v)
    return isinstance(v, (str, bool, int, float))


def toml_value(v: Any) -> str:
    """A TOML literal for a string, number, bool or list of those.

    >>> toml_value('a "b"\\n'), toml_value(True), toml_value(["x", 1])
    ('"a \\\\"b\\\\"\\\\n"', 'true', '["x", 1]')
    """
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    out = []
    for ch in str(v):
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _display(opt: Option, value: Any) -> str:
    if opt.kind == "duration":
        return toml_value(format_duration(value))
    if opt.kind == "size":
        return toml_value(format_size(value))
    if opt.kind == "path":
        return toml_value("" if value is None else str(value))
    return toml_value(value)


def dump_config(cfg: AgentConfig) -> str:
    """The config as TOML that :func:`load_config` reads back to an equal config."""
    sections = {"agent": cfg, "exporter": cfg.exporter, "throttle": cfg.throttle}
    out = []
    for section, obj in sections.items():
        out.append(f"[{section}]")
        for key, opt in OPTIONS[section].items():
            out.append(f"{key} = {_display(opt, getattr(obj, key))}")
        out.append("")
    return "\n".join(out)


# -- command line --------------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``minerwatch config check FILE`` and ``minerwatch config show [FILE]``."""
    p = subparsers.add_parser("config", help="check or show the agent's configuration")
    sub = p.add_subparsers(dest="config_command", required=True)
    check = sub.add_parser("check", help="validate a config file (exit 0 if OK, 2 if not)")
    check.add_argument("file", type=Path)
    show = sub.add_parser("show", help="print the effective config (defaults < FILE) as TOML")
    show.add_argument("file", type=Path, nargs="?")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``minerwatch config check|show``; returns the exit code."""
    try:
        cfg = load_config(args.file)
    except InputError as e:
        print(str(e), file=sys.stderr)
        return 2
    if args.config_command == "check":
        print(f"{args.file}: OK")
    else:
        sys.stdout.write(dump_config(cfg))
    return 0


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    """Flags of ``minerwatch serve`` for every option; all default to None (= not given)."""
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help=f"TOML config file (e.g. {DEFAULT_CONFIG_PATH})")
    for section, options in OPTIONS.items():
        group = parser.add_argument_group(f"[{section}] options (override the config file)")
        for key, opt in options.items():
            flag = _flag(section, key)
            dest = f"opt__{section}__{key}"
            if opt.kind == "bool":
                group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                                   default=None)
            elif opt.kind == "names":
                group.add_argument(flag.rstrip("s"), dest=dest, action="append", metavar="NAME",
                                   help="repeat for more")
            else:
                group.add_argument(flag, dest=dest, metavar=opt.kind.upper(),
                                   help=opt.help or None)


def _flag(section: str, key: str) -> str:
    if section == "throttle":
        return "--throttle" if key == "enabled" else f"--throttle-{key.replace('_', '-')}"
    return "--" + key.replace("_", "-")


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The flags of :func:`add_serve_options` that the user actually gave, for load_config."""
    out: dict[str, Any] = {}
    for name, value in vars(args).items():
        if name.startswith("opt__") and value is not None:
            _, section, key = name.split("__")
            out[f"{section}.{key}"] = value
    return out


def config_fields() -> list[str]:
    """Every option as ``section.key``, in table order (for docs and tests)."""
    return [f"{s}.{k}" for s, opts in OPTIONS.items() for k in opts]
