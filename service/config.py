"""Options of ``minerwatch serve``: defaults < config file (TOML) < command-line flags.

One frozen :class:`AgentConfig` holds them all. Every option is declared once in ``OPTIONS``
(its TOML section and key, its kind, limits, help and flag); the loader, the ``serve`` flags
and their overlay (:func:`add_option_flags`, :func:`config_from_args`), ``config show`` and
the documented ``deploy/minerwatch.toml`` all follow that table. A bad file is reported at the
first bad key with its line, so ``minerwatch config check`` reads like a compiler error. The
config file itself should be writable by root only: it decides which processes the agent may
throttle. Standard library only: every command may import this module.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import math
import os
import re
import socket
import stat
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from minerwatch.baseline.calibrate import ALARMS_PER_WEEK, ALERT_MARGIN, SUSTAIN_WINDOWS
from minerwatch.features.errors import InputError
from minerwatch.service.units import (
    DURATION_HELP,
    SIZE_HELP,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)

DEFAULT_CONFIG_PATH = Path("/etc/minerwatch/minerwatch.toml")
DEFAULT_DATA_DIR = Path("/var/lib/minerwatch")
DEFAULT_STATE_DIR = DEFAULT_DATA_DIR / "throttle"
DEFAULT_PORT = 10091
#: ``::`` listens on IPv6 and IPv4 alike; the exporter falls back to ``0.0.0.0`` on hosts
#: without IPv6.
DEFAULT_ADDRESS = "::"
METHODS = ("auto", "cgroup2", "cgroup1", "sigstop")
#: An unset release level sits this many points below the trigger (but at least at half of it).
RELEASE_GAP = 20.0
DAY = 86400.0
#: Most windows one sample may fall in (window / hop): beyond it, cutting windows costs more
#: memory and time than any detection gains (a 1 h window every 10 s is 360).
MAX_WINDOWS_PER_SAMPLE = 1000
#: Most consecutive windows an alert rule may wait for (alert_windows, sustain_windows): a
#: day of windows at the default 60 s window. An alert that needs a miner to run longer than
#: a day before anyone hears of it has lost its point, and a larger count (a typo,
#: 99999999999999999999) meant the agent could never alert at all.
MAX_ALERT_WINDOWS = 1440
#: Most processes throttled at once: the throttle contains a few busy processes; a thousand
#: capped at once is stopping the host, not a miner (and each one is journalled and audited).
MAX_TARGETS = 1000
#: Longest sampling interval, window, hop and throttle hold: a day. A window longer than a day
#: spans the daily cycle the time-of-day feature learns, and a throttle that waits more than a
#: day of high CPU never acts while a miner runs.
MAX_PERIOD = DAY
#: Longest learning, retraining and history duration (and IOC check period): a year. The
#: defaults are a day or two weeks; beyond a year a value is a typo that means "never" (never
#: leave learning, never retrain) and a history too large to retrain from.
MAX_SPAN = 365 * DAY


@dataclass(frozen=True)
class ExporterConfig:
    """``[exporter]``: where Prometheus scrapes the agent."""

    port: int = DEFAULT_PORT
    address: str = DEFAULT_ADDRESS
    web_config: Path | None = None  # exporter-toolkit style TLS/basic-auth file; None = plain
    textfile_dir: Path | None = None  # also write node_exporter textfile-collector files here


@dataclass(frozen=True)
class ThrottleConfig:
    """``[throttle]``, and the options the auto-throttle controller runs with; off unless
    ``enabled``.

    ``cpu_percent``/``hold`` trigger, ``release_cpu_percent``/``release_hold`` release
    (hysteresis). An unset release level follows the trigger, so lowering the trigger alone
    never makes the pair invalid. ``quota_percent`` is the share of one core a throttled
    process keeps. An unset ``state_dir`` is ``<data_dir>/throttle`` in an
    :class:`AgentConfig`, else :data:`DEFAULT_STATE_DIR`.

    >>> ThrottleConfig().release_cpu_percent, ThrottleConfig(cpu_percent=50).release_cpu_percent
    (70.0, 30.0)
    """

    enabled: bool = False
    cpu_percent: float = 90.0
    hold: float = 30.0
    release_cpu_percent: float | None = None
    release_hold: float = 60.0
    dry_run: bool = False
    only_when_alert: bool = False
    max_targets: int = 3
    min_proc_cpu_percent: float = 5.0
    quota_percent: float = 10.0
    method: str = "auto"
    allow_names: tuple[str, ...] = ()
    allow_users: tuple[str, ...] = ()
    allow_units: tuple[str, ...] = ()
    cgroup_root: Path = Path("/sys/fs/cgroup")
    state_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.release_cpu_percent is None:
            release = max(self.cpu_percent - RELEASE_GAP, self.cpu_percent / 2)
            object.__setattr__(self, "release_cpu_percent", release)


@dataclass(frozen=True)
class RespondConfig:
    """``[respond]``: what the agent does on its own beyond evidence and throttling.

    Network isolation is off unless ``isolate``; IOC files are checked only when ``ioc_dir``
    is set. ``host_root`` is where the host's files (crontabs, units, init scripts,
    ``ld.so.preload``, ``authorized_keys``) are read, so tests can point it at a folder.
    """

    isolate: bool = False
    isolate_dry_run: bool = False
    ioc_dir: Path | None = None
    ioc_every: float = 300.0
    host_root: Path = Path("/")


@dataclass(frozen=True)
class AgentConfig:
    """Everything ``minerwatch serve`` needs; durations in seconds, sizes in bytes.

    ``hop``, ``host``, ``event_log``, ``evidence_dir`` and ``throttle.state_dir`` default to
    values derived from other options (the window, this machine's name, the data directory)
    and are never empty after construction.

    >>> cfg = AgentConfig(window=120.0, data_dir=Path("/srv/mw"))
    >>> cfg.hop, cfg.event_log, cfg.throttle.state_dir, cfg.exporter.port
    (120.0, PosixPath('/srv/mw/events.jsonl'), PosixPath('/srv/mw/throttle'), 10091)
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
    sustain_windows: int = SUSTAIN_WINDOWS
    alert_margin: float = ALERT_MARGIN
    alarms_per_week: float = ALARMS_PER_WEEK
    event_log: Path | None = None
    evidence_dir: Path | None = None
    history_retention: float = 14 * DAY
    history_max_bytes: int = 256 * 1024 * 1024
    model_key: Path | None = None  # HMAC key file: load and save only models signed with it
    auth_log: Path | None = None  # SSH logins: None = the journal, else auth.log or secure
    log_dir: Path | None = Path("/var/log")  # watched for logs shrinking or vanishing
    logrotate_status: Path | None = None  # None = /var/lib/logrotate/status and RHEL's
    exporter: ExporterConfig = field(default_factory=ExporterConfig)
    throttle: ThrottleConfig = field(default_factory=ThrottleConfig)
    respond: RespondConfig = field(default_factory=RespondConfig)

    def __post_init__(self) -> None:
        t = self.throttle
        derived = {
            "hop": self.window if self.hop is None else self.hop,
            "host": self.host or socket.gethostname(),
            "event_log": self.event_log or self.data_dir / "events.jsonl",
            "evidence_dir": self.evidence_dir or self.data_dir / "evidence",
            "throttle": t if t.state_dir else replace(t, state_dir=self.data_dir / "throttle"),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    @property
    def history_path(self) -> Path:
        """The SQLite history file inside the data directory."""
        return self.data_dir / "history.db"


# -- the option table --------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """How one option is spelled, checked, printed and offered as a ``serve`` flag."""

    kind: str  # duration | size | int | float | bool | str | address | path | names | choice
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: value must be > low, else >= low
    empty_ok: bool = False  # "" means "derive the default" (paths, host)
    help: str = ""
    unset: str = ""  # what an option without a fixed default follows, for --help
    flag: str = ""  # the flag when not --KEY ([agent], [exporter]) or --throttle-KEY
    choices: tuple[str, ...] = ()


def _dur(help: str, high: float, low_open: bool = True, unset: str = "") -> Option:
    return Option("duration", 0, high, low_open=low_open, help=help, unset=unset)


def _pct(help: str, flag: str, low_open: bool = True, unset: str = "") -> Option:
    return Option("float", 0, 100, low_open=low_open, help=help, flag=flag, unset=unset)


def _names(what: str) -> Option:
    return Option("names", help=f"never throttle processes {what} (shell patterns)")


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _listen_address(text: str) -> bool:
    """An IP address, or a syntactically valid host name (never looked up here: a name that
    does not resolve is reported by ``serve`` when it binds, naming the address)."""
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    labels = text.rstrip(".").split(".")
    numeric = all(label.isdigit() for label in labels)  # 1.2.3: a broken IPv4 address
    return len(text) <= 253 and not numeric and all(_HOST_LABEL.fullmatch(x) for x in labels)


OPTIONS: dict[str, dict[str, Option]] = {
    "agent": {
        "interval": _dur("time between two samples", MAX_PERIOD),
        "window": _dur("length of one scored window", MAX_PERIOD),
        "hop": _dur("step between windows", MAX_PERIOD, unset="the window"),
        "learn_for": _dur(
            "learning time before the first model, exactly as given; at least window + hop "
            "(2m with the defaults). A short one gives a cautious model (it cannot alert "
            "before about an hour of history), relearnt each time the history doubles",
            MAX_SPAN,
        ),
        "retrain_every": _dur(
            "retraining period, reached as the history doubles (0 = never retrain)",
            MAX_SPAN,
            low_open=False,
        ),
        "retrain_history": _dur("history each retraining learns from", MAX_SPAN),
        "data_dir": Option("path", help="state folder: history, models, journal, evidence"),
        "host": Option(
            "str",
            empty_ok=True,
            help="host name in models, metrics and events",
            unset="this machine's hostname",
        ),
        "alert_windows": Option(
            "int",
            1,
            MAX_ALERT_WINDOWS,
            help="consecutive windows far above the threshold that open an alert",
        ),
        "sustain_windows": Option(
            "int",
            1,
            MAX_ALERT_WINDOWS,
            help="consecutive windows above the threshold that open an alert",
        ),
        "alert_margin": Option(
            "float",
            0,
            help="how far above the threshold (surprise units) a window counts toward "
            "alert_windows; 0: every window above does",
        ),
        "alarms_per_week": Option(
            "float",
            0,
            low_open=True,
            help="false-alarm budget per week the model's threshold is calibrated for",
        ),
        "event_log": Option(
            "path",
            empty_ok=True,
            help="alert events, one JSON line each",
            unset="DATA_DIR/events.jsonl",
        ),
        "evidence_dir": Option(
            "path",
            empty_ok=True,
            help="evidence files written on alerts",
            unset="DATA_DIR/evidence",
        ),
        "history_retention": _dur("how long history.db keeps samples", MAX_SPAN),
        "history_max_bytes": Option("size", 1024 * 1024, help="upper bound on history.db"),
        "model_key": Option(
            "path",
            empty_ok=True,
            help="HMAC key file (owner-only): sign models with it and load only models "
            "signed with it",
            unset="none, models carry a plain sha256 signature",
        ),
        "auth_log": Option(
            "path",
            empty_ok=True,
            help="file whose sshd lines give SSH logins (failed, from new sources)",
            unset="the systemd journal when journald runs, else /var/log/auth.log or "
            "/var/log/secure",
        ),
        "log_dir": Option(
            "path",
            empty_ok=True,
            help='folder whose log files are watched for shrinking or vanishing ("" = none)',
        ),
        "logrotate_status": Option(
            "path",
            empty_ok=True,
            help="logrotate's status file: logs it rotated are not reported as wiped",
            unset="/var/lib/logrotate/status, /var/lib/logrotate/logrotate.status, "
            "/var/lib/logrotate.status",
        ),
    },
    "exporter": {
        "port": Option("int", 0, 65535, help="port of /metrics (0 = any free port)"),
        "address": Option(
            "address",
            help="address to listen on: an IP address (:: = IPv6 and IPv4, falling back "
            "to 0.0.0.0 without IPv6; 127.0.0.1 = this host only) or a host name",
        ),
        "web_config": Option(
            "path", empty_ok=True, help="TLS / basic-auth web config file", unset="plain HTTP"
        ),
        "textfile_dir": Option(
            "path",
            empty_ok=True,
            flag="--textfile",
            help="also write the metrics into this node_exporter textfile-collector folder",
            unset="do not",
        ),
    },
    "throttle": {
        "enabled": Option(
            "bool", flag="--throttle", help="cap the busiest processes while host CPU stays high"
        ),
        "cpu_percent": _pct(
            "host CPU that, held for the hold time, starts throttling", "--throttle-cpu"
        ),
        "hold": _dur("how long host CPU must stay at the trigger", MAX_PERIOD, low_open=False),
        "release_cpu_percent": _pct(
            "host CPU below which throttled processes are released",
            "--throttle-release-cpu",
            low_open=False,
            unset=f"{RELEASE_GAP:g} below the trigger, at least half",
        ),
        "release_hold": _dur(
            "how long host CPU must stay below the release level", MAX_PERIOD, low_open=False
        ),
        "dry_run": Option("bool", help="only log what would be throttled"),
        "only_when_alert": Option("bool", help="throttle only while an alert is active"),
        "max_targets": Option("int", 1, MAX_TARGETS, help="most processes throttled at once"),
        "min_proc_cpu_percent": _pct(
            "processes using less CPU (percent of one core) are never throttled",
            "--throttle-min-proc-cpu",
            low_open=False,
        ),
        "quota_percent": _pct("share of one core a throttled process keeps", "--throttle-quota"),
        "method": Option("choice", choices=METHODS, help="how to throttle"),
        "allow_names": _names("with these names"),
        "allow_users": _names("owned by these users"),
        "allow_units": _names("in these systemd units"),
        "cgroup_root": Option("path", help="where the cgroup file system is mounted"),
        "state_dir": Option(
            "path", empty_ok=True, help="throttle journal and audit log", unset="DATA_DIR/throttle"
        ),
    },
    "respond": {
        "isolate": Option(
            "bool",
            flag="--isolate-on-alert",
            help="on an alert whose suspect an indicator confirms, drop the suspect's outbound "
            "traffic (nftables; released on shutdown, at the next start, by 'isolate release')",
        ),
        "isolate_dry_run": Option(
            "bool",
            flag="--isolate-dry-run",
            help="with isolate on, only log and audit what would be isolated",
        ),
        "ioc_dir": Option(
            "path",
            empty_ok=True,
            flag="--ioc-dir",
            help="check this host against the IOC files in this folder ('ioc extract')",
            unset="none",
        ),
        "ioc_every": Option(
            "duration",
            0,
            MAX_SPAN,
            low_open=True,
            flag="--ioc-every",
            help="time between IOC checks",
        ),
        "host_root": Option(
            "path",
            flag="--host-root",
            help="where the host's crontabs, units, init scripts, ld.so.preload and "
            "authorized_keys are read",
        ),
    },
}

#: The dataclass behind each section (``agent`` is :class:`AgentConfig` itself).
SECTIONS: dict[str, type[Any]] = {
    "agent": AgentConfig,
    "exporter": ExporterConfig,
    "throttle": ThrottleConfig,
    "respond": RespondConfig,
}

Key = tuple[str, str]  # (section, option)


class _Bad(Exception):
    """A value that does not fit its option: (expected, got)."""

    def __init__(self, expected: str, got: str) -> None:
        super().__init__(expected, got)
        self.expected, self.got = expected, got


def _describe(name: str, opt: Option) -> str:
    """The 'expected ...' text for one option (``name``: its key or its flag), limits included."""
    base = {
        "duration": DURATION_HELP,
        "size": SIZE_HELP,
        "int": "an integer",
        "float": "a number",
        "bool": "true or false",
        "str": "a string",
        "address": 'an IP address such as "::", "0.0.0.0", "127.0.0.1" or "::1" (no brackets, '
        'no port), or a host name such as "localhost"',
        "path": "a path (string)",
        "names": "a list of strings",
        "choice": "one of " + ", ".join(f'"{m}"' for m in opt.choices),
    }[opt.kind]
    formats: dict[str, Callable[[Any], str]] = {"duration": format_duration, "size": format_size}
    limit = formats.get(opt.kind, _fmt_num)
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
    expected = _describe(f"{key[0]}.{key[1]}" if strict else _flag(*key), opt)
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
        elif kind in ("str", "address", "path", "choice"):
            if not isinstance(raw, str):
                raise _Bad(expected, got)
            text = raw.strip()
            if not text and not opt.empty_ok or text != raw or "\0" in raw:
                raise _Bad(expected + " (not empty, no surrounding spaces)", got)
            if kind == "choice" and text not in opt.choices:
                raise _Bad(expected, got)
            if kind == "address" and not _listen_address(text):
                raise _Bad(expected, got)
            value = (Path(text) if text else None) if kind == "path" else text
        elif kind == "names":
            if not strict and isinstance(raw, (str, list)) and all(isinstance(x, str) for x in raw):
                items = [raw] if isinstance(raw, str) else raw  # "a, b" or a repeated flag
                raw = [part.strip() for item in items for part in item.split(",") if part.strip()]
            if not isinstance(raw, (list, tuple)) or not all(isinstance(x, str) and x for x in raw):
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


_BOOL_WORDS = {
    "true": True,
    "yes": True,
    "on": True,
    "1": True,
    "false": False,
    "no": False,
    "off": False,
    "0": False,
}


# -- where keys are in the file ----------------------------------------------------------------

# The name starts and ends with a non-space: nested quantifiers over the same spaces would
# backtrack in cubic time on a long line of spaces (a multi-line string may hold one).
_HEADER = re.compile(r"^\s*\[\[?\s*([^\[\]#\s](?:[^\[\]#]*[^\[\]#\s])?)\s*\]\]?\s*(?:#.*)?$")
_KEYLINE = re.compile(
    r"""^\s*((?:"[^"\n]*"|'[^'\n]*'|[A-Za-z0-9_\-]+)"""
    r"""(?:\s*\.\s*(?:"[^"\n]*"|'[^'\n]*'|[A-Za-z0-9_\-]+))*)\s*="""
)
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
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        raise InputError(str(path), None, "valid TOML", "nesting too deep") from None
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\(at line (\d+), column (\d+)\)$", msg)
        if m:
            reason = msg[: m.start()].strip()
            raise InputError(
                str(path), int(m.group(1)), "valid TOML", f"{reason} (column {m.group(2)})"
            ) from None
        raise InputError(
            str(path), None, "valid TOML", msg.replace("(at end of document)", "at the end")
        ) from None


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
        folder = Path(os.path.abspath(path)).parent
        values, origin = _from_document(doc, key_lines(text), str(path), folder)
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


def _from_document(
    doc: Mapping[str, Any], lines: Mapping[tuple[str, ...], int], where: str, base: Path
) -> tuple[dict[Key, Any], dict[Key, tuple[str, int | None]]]:
    """The file's options; a relative path is relative to ``base``, the file's folder (as in
    the web config and Prometheus' own files): systemd starts the agent in ``/``, so
    ``data_dir = "data"`` written next to the file meant ``/data`` there and elsewhere by hand."""
    values: dict[Key, Any] = {}
    origin: dict[Key, tuple[str, int | None]] = {}
    errors: list[InputError] = []
    for section, table in doc.items():
        line = _line_of(lines, section)
        if section not in OPTIONS:
            errors.append(
                InputError(
                    where,
                    line,
                    _one_of("a section", section, OPTIONS),
                    f"[{section}]" if isinstance(table, dict) else section,
                )
            )
            continue
        if not isinstance(table, dict):
            errors.append(InputError(where, line, f"a table [{section}]", toml_value(table)))
            continue
        for key, raw in table.items():
            line = _line_of(lines, section, key)
            opt = OPTIONS[section].get(key)
            if opt is None:
                errors.append(
                    InputError(
                        where,
                        line,
                        _one_of(f"an option of [{section}]", key, OPTIONS[section]),
                        f'"{key}"',
                    )
                )
                continue
            try:
                value = _convert((section, key), opt, raw, strict=True)
                if isinstance(value, Path) and not value.is_absolute():
                    value = base / value
                values[(section, key)] = value
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

    return AgentConfig(
        **part("agent"),
        exporter=ExporterConfig(**part("exporter")),
        throttle=ThrottleConfig(**part("throttle")),
        respond=RespondConfig(**part("respond")),
    )


def _check_relations(cfg: AgentConfig, origin: Mapping[Key, tuple[str, int | None]]) -> None:
    """Checks between options, reported where the user set the first one named; each option
    is named as the user gave it (its flag, else its key)."""

    def name(key: Key) -> str:
        return _flag(*key) if origin.get(key, ("", None))[0] == _flag(*key) else key[1]

    def dur(key: Key, value: float) -> str:
        return f"{name(key)} = {format_duration(value)}"

    t = cfg.throttle
    hop = cfg.hop if cfg.hop is not None else cfg.window
    release = t.release_cpu_percent if t.release_cpu_percent is not None else t.cpu_percent
    interval, window, hop_key = ("agent", "interval"), ("agent", "window"), ("agent", "hop")
    learn, keep, history = (
        ("agent", "learn_for"),
        ("agent", "history_retention"),
        ("agent", "retrain_history"),
    )
    trigger, level = ("throttle", "cpu_percent"), ("throttle", "release_cpu_percent")
    rules: list[tuple[bool, Key, Key, str, str]] = [
        (
            cfg.window >= cfg.interval,
            window,
            interval,
            f"{name(window)} >= {name(interval)} ({format_duration(cfg.interval)})",
            dur(window, cfg.window),
        ),
        (
            cfg.interval <= hop <= cfg.window,
            hop_key,
            window,
            f"{name(interval)} <= {name(hop_key)} <= {name(window)} "
            f"({format_duration(cfg.interval)} .. {format_duration(cfg.window)})",
            dur(hop_key, hop),
        ),
        (
            cfg.window / hop <= MAX_WINDOWS_PER_SAMPLE,
            hop_key,
            window,
            f"{name(window)} / {name(hop_key)} <= {MAX_WINDOWS_PER_SAMPLE} "
            "(windows over each sample)",
            f"{format_duration(cfg.window)} / {format_duration(hop)} = {cfg.window / hop:.0f}",
        ),
        (
            cfg.learn_for >= cfg.window + hop,
            learn,
            window,
            f"{name(learn)} >= {name(window)} + {name(hop_key)} "
            f"({format_duration(cfg.window + hop)}: the first model needs one complete window "
            "on the clock-aligned grid)",
            dur(learn, cfg.learn_for),
        ),
        (
            cfg.history_retention >= cfg.retrain_history,
            keep,
            history,
            f"{name(keep)} >= {name(history)} ({format_duration(cfg.retrain_history)})",
            dur(keep, cfg.history_retention),
        ),
        (
            release <= t.cpu_percent,
            level,
            trigger,
            f"{name(level)} <= {name(trigger)} ({t.cpu_percent:g})",
            f"{name(level)} = {release:g}",
        ),
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


def _section_of(cfg: AgentConfig, section: str) -> Any:
    return cfg if section == "agent" else getattr(cfg, section)


def dump_config(cfg: AgentConfig) -> str:
    """The config as TOML that :func:`load_config` reads back to an equal config."""
    out = []
    for section, options in OPTIONS.items():
        out.append(f"[{section}]")
        obj = _section_of(cfg, section)
        for key, opt in options.items():
            out.append(f"{key} = {_display(opt, getattr(obj, key))}")
        out.append("")
    return "\n".join(out)


def config_fields() -> list[str]:
    """Every option as ``section.key``, in table order (for docs and tests)."""
    return [f"{s}.{k}" for s, opts in OPTIONS.items() for k in opts]


# -- flags ---------------------------------------------------------------------------------------

_METAVARS = {
    "duration": "DURATION",
    "size": "SIZE",
    "int": "N",
    "float": "NUMBER",
    "str": "TEXT",
    "address": "ADDRESS",
    "path": "PATH",
}


def _flag(section: str, key: str) -> str:
    """The ``serve`` flag of an option: ``--KEY``, ``--throttle-KEY``, or the table's own."""
    opt = OPTIONS[section][key]
    if opt.flag:
        return opt.flag
    prefix = "--throttle-" if section == "throttle" else "--"
    flag = prefix + key.replace("_", "-")
    return flag.removesuffix("s") if opt.kind == "names" else flag  # repeated: one name each


def _default_text(section: str, key: str, opt: Option) -> str:
    """The built-in default as ``--help`` shows it (``unset`` where it follows another)."""
    f = next(f for f in fields(SECTIONS[section]) if f.name == key)
    value: Any = (
        f.default_factory()
        if f.default is MISSING and f.default_factory is not MISSING
        else f.default
    )
    if value is None or value == "":
        return opt.unset
    if opt.kind == "bool":
        return "on" if value else "off"
    if opt.kind == "names":
        return ", ".join(value) or "none"
    text = _display(opt, value)
    return text[1:-1] if text.startswith('"') else text


def add_option_flags(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and one flag per option of ``OPTIONS``, in groups by section.

    Every flag defaults to None (= not given), so the config file's value stands unless the
    flag is used; the help shows the built-in default. :func:`config_from_args` reads them.
    """
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"TOML config file, e.g. {DEFAULT_CONFIG_PATH} (default: none)",
    )
    for section, options in OPTIONS.items():
        group = parser.add_argument_group(f"[{section}] options (override the config file)")
        for key, opt in options.items():
            flag, dest = _flag(section, key), f"{section}.{key}"
            text = f"{opt.help} (default: {_default_text(section, key, opt)})"
            if opt.kind == "bool":
                group.add_argument(
                    flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=text
                )
            elif opt.kind == "names":
                group.add_argument(
                    flag,
                    dest=dest,
                    action="append",
                    metavar="NAME",
                    help=f"{text}; repeat for more",
                )
            else:
                group.add_argument(
                    flag,
                    dest=dest,
                    metavar=_METAVARS.get(opt.kind),
                    choices=opt.choices or None,
                    help=text,
                )


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The flags of :func:`add_option_flags` that were given, as ``section.key`` overrides."""
    given = vars(args)
    return {name: given[name] for name in config_fields() if given.get(name) is not None}


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    """The one overlay: defaults < ``--config FILE`` < the option flags that were given."""
    return load_config(args.config, overrides_from_args(args))


def agent_files_config(config: Path | None, data_dir: Path | None) -> AgentConfig:
    """Where the agent keeps its files, found as ``serve`` finds them: defaults < ``config``
    < ``data_dir`` (``--data-dir``), for the commands that read them (``evidence``,
    ``throttle``)."""
    return load_config(config, {"data_dir": None if data_dir is None else str(data_dir)})


def require_folder(path: Path | None, what: str) -> None:
    """Refuse ``path`` when it exists as something other than a folder (a missing one is
    created by the agent, or means "nothing written yet" to the commands that read it)."""
    if path is not None and path.exists() and not path.is_dir():
        raise InputError(str(path), None, f"a folder: {what}", "a file")


def require_private_config(path: Path | None) -> None:
    """Refuse a config file others can write, for ``serve`` and ``config check``: world
    writable, or root's and writable by a group other than root's. It decides what the
    agent, running as root, throttles and isolates, where it writes and which model key it
    trusts, so whoever can edit it can blind the agent (as a model key others can read is
    refused). A user's own file writable by their group (umask 002) is theirs to judge."""
    if path is None:
        return
    try:
        st = path.stat()
    except OSError:
        return  # reading it says what is wrong, at its own place
    mode = st.st_mode
    if mode & 0o002 or (mode & 0o020 and st.st_uid == 0 and st.st_gid != 0):
        raise InputError(
            str(path),
            None,
            "a config file only its owner can write (chmod go-w; the agent runs as root and "
            "the file decides what it throttles, isolates and where it writes)",
            f"mode {stat.filemode(mode)}",
        )


def require_writable_folders(cfg: AgentConfig) -> None:
    """Create (0700) and check writable, before the agent starts, the folders it writes into:
    ``data_dir``, ``evidence_dir``, the folder of ``event_log`` and, with the throttle on, its
    ``state_dir``. Under the unit's read-only file system (``ProtectSystem=strict``) one moved
    outside its ``ReadWritePaths=`` was an unexpected failure (exit 1, restarted every
    ``RestartSec``) or, for evidence and events, a write that failed only when an alert came.
    """
    folders = [("data_dir", cfg.data_dir), ("evidence_dir", cfg.evidence_dir)]
    if cfg.event_log is not None:
        folders.append(("event_log", cfg.event_log.parent))
    if cfg.throttle.enabled:
        folders.append(("throttle.state_dir", cfg.throttle.state_dir))
    for option, folder in folders:
        if folder is None:
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            problem = None if os.access(folder, os.W_OK) else "a read-only or not writable folder"
        except OSError as exc:
            problem = exc.strerror or str(exc)
        if problem is not None:
            raise InputError(
                str(folder),
                None,
                f"a folder the agent can write ({option}; under the systemd unit, inside its "
                "ReadWritePaths=)",
                problem,
            )


# -- minerwatch config check|show ------------------------------------------------------------------


def check_named_files(cfg: AgentConfig) -> None:
    """Read the files the config names that ``serve`` reads at start and refuses (exit 2)
    when bad: the web config (its syntax, certificate, key, CA and bcrypt hashes) and the
    model key. Without this, ``config check`` said OK of a config the agent then refused, and
    the unit (``RestartPreventExitStatus=2``) left it down."""
    from minerwatch.service.webconfig import LiveProtection

    LiveProtection(cfg.exporter.web_config)  # as the exporter loads it at start
    if cfg.model_key is not None:
        from minerwatch.baseline.store import read_key

        read_key(cfg.model_key)


def run(args: argparse.Namespace) -> int:
    """Run ``minerwatch config check FILE`` or ``config show [FILE]``.

    A bad file raises InputError (file, line, what was expected), which the CLI reports and
    turns into exit code 2.
    """
    cfg = load_config(args.file)
    if args.config_command == "check":
        require_private_config(args.file)
        check_named_files(cfg)
        print(f"{args.file}: OK")
    else:
        sys.stdout.write(dump_config(cfg))
    return 0
