"""Units of config values and flags: durations ("30s", "1h30m", "14d") and sizes ("256MiB").

Pure functions, standard library only, so the agent, the config loader and any CLI flag can share
one spelling of time and size.
"""

from __future__ import annotations

import math
import re

from minerwatch.features.errors import InputError

_DURATION_UNITS: dict[str, float] = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h|d|w)")
_NUMBER = re.compile(r"[+-]?(\d+(?:\.\d*)?|\.\d+)([eE][+-]?\d+)?")

_SIZE_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([A-Za-z]*)")

#: Bounds that keep every accepted value printable and re-readable by ``config show``: more than
#: a century is a typo, and below a millisecond no timer in the agent can honour it.
MAX_DURATION_S = 100 * 365 * 86400.0
MIN_DURATION_S = 0.001
MAX_SIZE_BYTES = 2**53  # exact in a float, which JSON/TOML readers may use

DURATION_HELP = 'a duration such as "30s", "10m", "24h", "14d", "1h30m" or a number of seconds'
SIZE_HELP = 'a size such as "256MiB", "1GiB", "500MB" or a number of bytes'


def parse_duration(text: str | float, where: str = "<duration>", line: int | None = None) -> float:
    """Seconds in ``text``; plain numbers are seconds, units may be combined largest first.

    >>> parse_duration("1h30m"), parse_duration("14d"), parse_duration("2.5"), parse_duration(10)
    (5400.0, 1209600.0, 2.5, 10.0)

    Raises :class:`InputError` (naming ``where``/``line``) for anything else, including
    negative, infinite or NaN values, so a typo never becomes a zero-second interval.
    """
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise InputError(where, line, DURATION_HELP, _show(text))
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        s = text.strip()
        if _NUMBER.fullmatch(s):
            value = float(s)
        else:
            value = _parse_units(s, where, line, text)
    if not math.isfinite(value) or value < 0:
        raise InputError(where, line, DURATION_HELP + " (finite, not negative)", _show(text))
    if value > MAX_DURATION_S or 0 < value < MIN_DURATION_S:
        raise InputError(where, line, DURATION_HELP + " (0, or from 1ms to 100 years)", _show(text))
    return value


def _parse_units(s: str, where: str, line: int | None, original: str) -> float:
    """Sum "1h30m" style parts, insisting on units in strictly decreasing order."""
    pos = 0
    total = 0.0
    last_scale = math.inf
    for m in _DURATION_PART.finditer(s):
        scale = _DURATION_UNITS[m.group(2)]
        if m.start() != pos or scale >= last_scale:
            raise InputError(where, line, DURATION_HELP, _show(original))
        total += float(m.group(1)) * scale
        last_scale = scale
        pos = m.end()
    if pos == 0 or pos != len(s):
        raise InputError(where, line, DURATION_HELP, _show(original))
    return total


def format_duration(seconds: float) -> str:
    """Shortest exact spelling that :func:`parse_duration` reads back to the same value.

    >>> format_duration(5400), format_duration(86400), format_duration(1209600)
    ('1h30m', '24h', '14d')
    >>> format_duration(0.25), format_duration(0)
    ('250ms', '0s')
    """
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format duration {seconds!r}")
    ms = round(seconds * 1000)
    if ms / 1000 != seconds:  # not a whole number of milliseconds: keep full precision
        return f"{seconds!r}s"
    if ms == 0:
        return "0s"
    parts = []
    for unit, scale in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if unit == "d" and ms < 2 * scale:
            continue  # "24h" reads better than "1d"
        n, ms = divmod(ms, scale)
        if n:
            parts.append(f"{n}{unit}")
    if ms:
        parts.append(f"{ms}ms")
    return "".join(parts)


def parse_size(text: str | int, where: str = "<size>", line: int | None = None) -> int:
    """Bytes in ``text``: binary (KiB, MiB, GiB, TiB), decimal (KB, MB, GB, TB) or plain bytes.

    >>> parse_size("256MiB"), parse_size("1GiB"), parse_size("1.5KB"), parse_size(4096)
    (268435456, 1073741824, 1500, 4096)
    """
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise InputError(where, line, SIZE_HELP, _show(text))
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE.fullmatch(text.strip())
        unit = m.group(2).lower() if m else ""
        if m is None or unit not in _SIZE_UNITS and unit != "":
            raise InputError(where, line, SIZE_HELP, _show(text))
        value = round(float(m.group(1)) * _SIZE_UNITS.get(unit, 1))
    if value < 0 or value > MAX_SIZE_BYTES:
        raise InputError(where, line, SIZE_HELP + " (from 0 to 8 PiB)", _show(text))
    return value


def format_size(n: int) -> str:
    """Largest exact binary unit, so the printed config reads like the documented one.

    >>> format_size(268435456), format_size(1536), format_size(1000)
    ('256MiB', '1536B', '1000B')
    """
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        scale = _SIZE_UNITS[unit.lower()]
        if n and n % scale == 0:
            return f"{n // scale}{unit}"
    return f"{n}B"


def _show(value: object) -> str:
    """How a bad value is quoted in error messages."""
    return f'"{value}"' if isinstance(value, str) else repr(value)
