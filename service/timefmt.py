"""Times as people and flags read them back: ISO 8601 in UTC, to the second."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_iso(ts: float) -> str:
    """``ts`` (Unix seconds) as ``2026-12-06T07:20:31Z``, rounded down to the second, so the
    time a run started, given back to a flag (``--skip-trained-since``), still includes it.

    >>> utc_iso(1767225600.9)
    '2026-01-01T00:00:00Z'
    """
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
