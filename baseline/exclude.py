"""What training must not learn: time the agent alerted on, its surroundings, an open episode.

A miner that keeps running must never become "normal", so retraining leaves that time out.
Numpy only: the agent (fallback input) and the training child both select data with it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def exclusion_mask(
    timestamps: np.ndarray,
    windows: Iterable[tuple[float, float]],
    margin_s: float = 0.0,
    before: float | None = None,
) -> np.ndarray:
    """True for timestamps outside every window widened by ``margin_s`` on both sides
    (and, with ``before``, earlier than it: an episode still open has no end yet).

    >>> exclusion_mask(np.array([0.0, 10.0, 20.0, 30.0]), [(10.0, 15.0)], 5.0).tolist()
    [True, False, False, True]
    """
    ts = np.asarray(timestamps, dtype=float)
    keep = np.ones(ts.shape, dtype=bool)
    for start, end in windows:
        keep &= (ts < start - margin_s) | (ts > end + margin_s)
    if before is not None:
        keep &= ts < before
    return keep


#: The share of the available history the margin around alerts may take, at most.
MARGIN_SHARE = 0.1


def exclusion_margin(
    history_s: float, hop: float, alert_windows: int, cap_s: float = 3600.0
) -> float:
    """Time to leave out on each side of alerted windows, given ``history_s`` of history.

    At least the alert rule's own delay (``alert_windows`` windows before the first alerted
    one were already above the threshold); otherwise a tenth of the history, up to
    ``cap_s``. A fixed hour left a try-out agent with nothing to learn from after any alert
    (every retraining failed for an hour); a share of the history lets one false alert cost
    a bounded part of it, while two weeks of history still get the full hour.

    >>> exclusion_margin(720.0, 60.0, 3), exclusion_margin(7200.0, 60.0, 3)
    (180.0, 720.0)
    >>> exclusion_margin(14 * 86400.0, 60.0, 3)
    3600.0
    """
    return float(min(cap_s, max(alert_windows * hop, MARGIN_SHARE * history_s)))


def outside_dismissed(
    alerted: Iterable[tuple[float, float]], dismissed: Iterable[tuple[float, float]]
) -> list[tuple[float, float]]:
    """The alerted windows retraining must still leave out: those of episodes (runs of
    windows that touch or overlap) that no span a responder dismissed as benign overlaps
    (``minerwatch dismiss``, ``fleet dismiss``); those episodes are learnt instead, whole,
    even where the span given by hand missed their first or last windows.

    Without this, a host's quarterly index rebuild pages every time: each retraining leaves
    its windows out, so the model never sees one.

    >>> outside_dismissed([(0.0, 60.0), (60.0, 120.0), (300.0, 360.0)], [(70.0, 80.0)])
    [(300.0, 360.0)]
    """
    spans = list(dismissed)
    out: list[tuple[float, float]] = []
    run: list[tuple[float, float]] = []

    def flush() -> None:
        hit = any(s < d_end and e > d_start for s, e in run for d_start, d_end in spans)
        if not hit:
            out.extend(run)
        run.clear()

    reach = float("-inf")  # the end of the run so far
    for start, end in sorted(alerted):
        if run and start > reach:
            flush()
        run.append((start, end))
        reach = max(reach, end) if len(run) > 1 else end
    flush()
    return out
