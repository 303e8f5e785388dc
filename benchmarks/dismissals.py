"""The baseline with a responder who dismisses each false alarm (``minerwatch dismiss``).

On a host, the agent's retraining leaves alerted time out so that a miner never becomes
normal; legitimate work it has never seen (an index rebuild) therefore pages each time it
comes back until someone says it was benign. This replays that on a labelled simulation: the
responder dismisses a false-alarm episode ``respond_s`` after it paged; the host then retrains,
as the agent does, on its training data plus the test samples seen so far, leaving out alerted
time except the dismissed episodes; the rest of the test is scored by the new model. As in the
agent, an episode still open when dismissed is learnt as far as it has gone, and whole by
another retraining when it closes. Episodes that touch a miner are never dismissed (the labels
say which is which; a responder has the report).

Evaluation code: trains with scikit-learn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from minerwatch.baseline.exclude import exclusion_margin, exclusion_mask, outside_dismissed
from minerwatch.bench import metrics
from minerwatch.features.io import HostSeries

#: The responder reads the page and the report, then dismisses it: half an hour after it paged.
RESPOND_S = 1800.0
#: The agent's cap on the time left out around alerts (as ``service.agent.EXCLUDE_MARGIN_S``).
MARGIN_CAP_S = 3600.0

Train = Callable[[HostSeries], object]
Alerts = Callable[[object, HostSeries], np.ndarray]


def take(series: HostSeries, keep: np.ndarray) -> HostSeries:
    """The samples where ``keep`` holds, with their process rows."""
    procs = None
    if series.procs is not None:
        at = series.procs.sample_index(series.timestamps)
        rows = (at >= 0) & keep[np.maximum(at, 0)]
        procs = series.procs.take(np.flatnonzero(rows))
    return HostSeries(
        series.host,
        series.timestamps[keep],
        series.values[keep],
        series.columns,
        series.source,
        procs=procs,
    )


def join(first: HostSeries, then: HostSeries) -> HostSeries:
    """``then``'s samples after ``first``'s (same columns), process rows too."""
    procs = None
    if first.procs is not None and then.procs is not None:
        procs = type(first.procs).concat([first.procs, then.procs])
    return HostSeries(
        first.host,
        np.concatenate([first.timestamps, then.timestamps]),
        np.concatenate([first.values, then.values]),
        first.columns,
        first.source,
        procs=procs,
    )


def with_dismissals(
    train: HostSeries,
    test: HostSeries,
    ws: np.ndarray,
    we: np.ndarray,
    alert: np.ndarray,
    events: Sequence[metrics.Event],
    fit: Train,
    alerts_of: Alerts,
    hop: float,
    alert_windows: int,
    respond_s: float = RESPOND_S,
) -> tuple[np.ndarray, int]:
    """The host's alerts when each false alarm is dismissed and learnt; and the retrainings."""
    alert = np.asarray(alert, dtype=bool).copy()
    mal = [ev for ev in events if ev.host == test.host and ev.malicious]
    dismissed: list[tuple[float, float]] = []
    pending: list[float] = []  # starts of episodes dismissed while open, learnt again at close
    since = -np.inf
    retrains = 0
    while True:
        ep = metrics.alert_episodes(ws, we, alert)
        actions: list[tuple[float, bool, float, float]] = []  # (when, dismiss?, start, end)
        for s, e in zip(ep.start.tolist(), ep.end.tolist(), strict=True):
            if any(s <= d_start <= e for d_start, _ in dismissed):  # one dismissed, going on
                if e > since and any(s <= p <= e for p in pending):
                    actions.append((e, False, s, e))  # it closed: the agent learns it whole
                continue  # (one the retraining cut short has nothing more to learn)
            # anything else pages anew (also what follows a dismissed episode that a
            # retraining cut short); the responder judges what it has shown by the time
            # they would dismiss it
            if not any(ev.start <= min(e, s + respond_s) and s <= ev.end for ev in mal):
                actions.append((max(since, s + respond_s), True, s, e))
        if not actions:
            return alert, retrains
        now, dismiss, start, end = min(actions)
        if dismiss:
            dismissed.append((start, end))
            if end > now:
                pending.append(start)
        else:
            pending = [p for p in pending if not start <= p <= end]
        # the agent retrains at once, learning an episode still open as far as it has gone
        history = join(train, take(test, test.timestamps < now))
        done = alert & (we <= now)
        alerted = outside_dismissed(zip(ws[done], we[done], strict=True), dismissed)
        span = float(history.timestamps[-1] - history.timestamps[0])
        margin = exclusion_margin(span, hop, alert_windows, cap_s=MARGIN_CAP_S)
        model = fit(take(history, exclusion_mask(history.timestamps, alerted, margin)))
        retrains += 1
        later = ws >= now
        alert[later] = alerts_of(model, test)[later]
        since = now


def retrained_like(
    model: Any,
    train: HostSeries,
    test: HostSeries,
    ws: np.ndarray,
    we: np.ndarray,
    alert: np.ndarray,
    events: Sequence[metrics.Event],
    params: dict[str, Any] | None = None,
    respond_s: float = RESPOND_S,
) -> tuple[np.ndarray, int]:
    """:func:`with_dismissals` for a baseline: each retraining has ``model``'s window and hop
    and ``params`` (those ``model`` was trained with), scored as ``score`` does."""
    from minerwatch.baseline.batch import score_series
    from minerwatch.baseline.train import train_host

    def fit(series: HostSeries) -> Any:
        return train_host(series, window=model.window, hop=model.hop, params=params)

    def alerts_of(m: Any, series: HostSeries) -> np.ndarray:
        return np.asarray(score_series(m, series).alert, dtype=bool)

    return with_dismissals(
        train,
        test,
        ws,
        we,
        alert,
        events,
        fit,
        alerts_of,
        model.hop,
        max(model.alert_windows, model.sustain_windows or 0),
        respond_s=respond_s,
    )
