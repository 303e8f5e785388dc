"""What ``train`` and ``fleet train`` say about models already saved, so a run stopped
half-way (a bad file, Ctrl-C, Prometheus going away) is finished by the flag they print."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from minerwatch.service.timefmt import utc_iso


def names(hosts: Sequence[str], most: int = 10) -> str:
    """Hosts for a message line: the first ``most``, then how many more.

    >>> names(["a", "b", "c"], most=2)
    'a, b and 1 more'
    """
    more = f" and {len(hosts) - most} more" if len(hosts) > most else ""
    return ", ".join(hosts[:most]) + more


def resume_hint(since: float) -> str:
    """The flag that leaves out the hosts trained by this run (``since`` is its start)."""
    return f"to train the rest, run the same command with --skip-trained-since {utc_iso(since)}"


def say_skipping(hosts: Sequence[str], since: float) -> None:
    print(
        f"skipping {len(hosts)} hosts with a model saved since {utc_iso(since)}: {names(hosts)}",
        file=sys.stderr,
    )


def say_all_trained(count: int, since: float, models: str) -> None:
    print(
        f"all {count} hosts have a model saved since {utc_iso(since)} in {models}: "
        "nothing to train",
        file=sys.stderr,
    )
