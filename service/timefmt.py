"""Times as people and flags read them back: ISO 8601 in UTC, to the second."""

from __future__ import annotations

from datetime import UTC, datetime

#: Unix seconds of 0001-01-01 and 9999-12-31T23:59:59Z: the times a date can show.
FIRST_DATE_S, LAST_DATE_S = -62_135_596_800.0, 253_402_300_799.0


def dateable(ts: float) -> bool:
    """Whether a date can show ``ts`` (False for nan, inf and a damaged file's 1e308, which
    would fail, unnamed, wherever the time is shown).

    >>> dateable(0.0), dateable(float("nan")), dateable(1e30)
    (True, False, False)
    """
    return FIRST_DATE_S <= ts <= LAST_DATE_S


def utc_iso(ts: float) -> str:
    """``ts`` (Unix seconds) as ``2026-12-06T07:20:31Z``, rounded down to the second, so the
    time a run started, given back to a flag (``--skip-trained-since``), still includes it.

    >>> utc_iso(1767225600.9)
    '2026-01-01T00:00:00Z'
    """
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
