"""Detection-quality metrics: pure numpy, no I/O, so every figure in a report is checkable by hand.

Two families live here:

* **Campaign metrics** for labelled simulations, on a grid of windows ``[start, end)`` with one
  boolean alert each, against labelled segments ``[start, end]`` (first and last affected
  sample). An *alert episode* is a maximal run of alerted windows: an observed unalerted window
  ends it, and so does a hole in the data (no window at all) longer than ``merge_gap`` seconds
  (default 120 s: two missing one-minute windows are no evidence the alert cleared; the agent's
  alert rule clears after three quiet windows). A campaign is *detected* by the first episode
  whose first alerted window ends after the campaign began (so it saw campaign data) and which
  starts no later than the campaign's end: an episode that was already running before the
  campaign began gets no credit, however long it lasts. The delay is ``end of that first alerted
  window - campaign start``; a campaign counts as caught when the delay is at most 30 minutes.
* **Point metrics** for public benchmarks (SMD, NAB), on one boolean per sample: point-wise
  precision/recall/F1, the same after point adjustment (what papers report), an event-level F1 and
  the best F1 over all thresholds (an upper bound, since it peeks at the test labels).

Undefined ratios (no labels, no predictions) are ``nan`` rather than a made-up 0 or 1; means over
machines use ``nanmean``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

#: A campaign caught later than this (seconds) does not count towards ``recall_30m``.
CAUGHT_WITHIN = 1800.0
#: Holes in the window grid up to this long (seconds) do not split an alert episode.
MERGE_GAP = 120.0


# --------------------------------------------------------------------------- episodes


@dataclass(frozen=True)
class Episodes:
    """Alert episodes: ``start`` of the first window, ``first_end`` (end of the first alerted
    window, when a person would see the alert) and ``end`` of the last window, all in seconds."""

    start: np.ndarray
    first_end: np.ndarray
    end: np.ndarray

    def __len__(self) -> int:
        return int(self.start.size)


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index ranges ``[lo, hi)`` of the runs of True in a 1-d boolean array."""
    m = np.asarray(mask, dtype=bool).ravel()
    padded = np.concatenate(([False], m, [False])).astype(np.int8)
    diff = np.diff(padded)
    return np.flatnonzero(diff == 1), np.flatnonzero(diff == -1)


def alert_episodes(
    window_start: np.ndarray,
    window_end: np.ndarray,
    alert: np.ndarray,
    merge_gap: float = MERGE_GAP,
) -> Episodes:
    """Group alerted windows (sorted by start) into episodes.

    >>> ep = alert_episodes(np.array([0., 60, 120, 180]), np.array([60., 120, 180, 240]),
    ...                     np.array([True, True, False, True]))
    >>> ep.start.tolist(), ep.first_end.tolist(), ep.end.tolist()
    ([0.0, 180.0], [60.0, 240.0], [120.0, 240.0])
    """
    ws = np.asarray(window_start, dtype=float)
    we = np.asarray(window_end, dtype=float)
    a = np.asarray(alert, dtype=bool)
    if not (ws.shape == we.shape == a.shape):
        raise ValueError("window_start, window_end and alert must have the same shape")
    idx = np.flatnonzero(a)
    if idx.size == 0:
        empty = np.empty(0)
        return Episodes(empty, empty.copy(), empty.copy())
    # A new episode begins at an alerted window that does not follow the previous alerted window
    # directly (index gap) or that starts too long after it ended (time gap).
    new = np.ones(idx.size, dtype=bool)
    new[1:] = (np.diff(idx) > 1) | (ws[idx[1:]] > we[idx[:-1]] + merge_gap)
    firsts = idx[new]
    lasts = idx[np.concatenate((np.flatnonzero(new)[1:] - 1, [idx.size - 1]))]
    return Episodes(ws[firsts], we[firsts], we[lasts])


def _touches(
    w_start: np.ndarray, w_end: np.ndarray, e_start: np.ndarray, e_end: np.ndarray
) -> np.ndarray:
    """Matrix ``[i, j]``: half-open window i ``[s, e)`` touches closed event j ``[s, e]``."""
    return (w_start[:, None] <= e_end[None, :]) & (e_start[None, :] < w_end[:, None])


# --------------------------------------------------------------------------- campaigns


@dataclass(frozen=True)
class Event:
    """One labelled segment ``[start, end]`` (first and last affected sample) on one host.

    Malicious segments that share a ``campaign`` id (a miner that only runs at night, say) form
    one campaign: it is detected once, its delay counts from its first segment. ``identity``
    says how the miner's process looks (``new``, ``disguised``, ``inside``; None when the
    labels predate process tables).
    """

    host: str
    kind: str
    malicious: bool
    start: float
    end: float
    campaign: str | None = None
    identity: str | None = None


def detection_delays(
    episodes: Episodes, starts: np.ndarray, ends: np.ndarray, group: np.ndarray | None = None
) -> np.ndarray:
    """Delay (s) until each campaign is detected, ``nan`` if it never is.

    ``starts``/``ends`` are closed segments; ``group`` (one id per segment) joins segments into
    campaigns, and the result has one entry per segment holding its campaign's delay, counted
    from the campaign's first segment. A segment is detected by an episode whose first alerted
    window ends after the segment start (so that window saw campaign data and the alert was not
    already up) and which starts no later than the segment end.

    >>> ep = Episodes(np.array([0., 500]), np.array([60., 560]), np.array([1000., 600]))
    >>> detection_delays(ep, np.array([100.]), np.array([900.])).tolist()
    [460.0]
    """
    s = np.asarray(starts, dtype=float)
    e = np.asarray(ends, dtype=float)
    g = np.arange(s.size) if group is None else np.asarray(group)
    out = np.full(s.size, np.nan)
    if len(episodes) == 0 or s.size == 0:
        return out
    ok = (episodes.first_end[None, :] > s[:, None]) & (episodes.start[None, :] <= e[:, None])
    for gid in np.unique(g):
        rows = g == gid
        hit = ok[rows].any(axis=0)
        if hit.any():
            out[rows] = episodes.first_end[hit].min() - s[rows].min()
    return out


@dataclass
class HostOutcome:
    """Campaign and false-alarm figures for one host and one detector."""

    host: str
    campaign_kinds: list[str]
    delays: np.ndarray
    false_alarms: int
    days: float
    clean_windows: int
    clean_alerted: int
    benign_alarmed: Counter[str] = field(default_factory=Counter)
    benign_total: Counter[str] = field(default_factory=Counter)
    #: per benign kind, the false-alarm episodes that touch at least one of its events (one
    #: episode over two overlapping reindexes is one alarm, two alarmed events)
    benign_episodes: Counter[str] = field(default_factory=Counter)
    campaign_identities: list[str | None] = field(default_factory=list)


def host_outcome(
    host: str,
    window_start: np.ndarray,
    window_end: np.ndarray,
    alert: np.ndarray,
    events: Iterable[Event],
    grace: float = 0.0,
    merge_gap: float = MERGE_GAP,
) -> HostOutcome:
    """Score one host's alerts against its labelled events.

    An episode is a *false alarm* when it touches no malicious segment extended by ``grace``
    seconds after its end (the miner's after-effects). A window is *clean* when it touches no
    such extended segment. A benign event *alarmed* when it overlaps a false-alarm episode;
    ``benign_episodes`` counts the episodes per kind (the pages an operator got).
    ``campaign_kinds`` and ``delays`` hold one entry per campaign, in order of first segment.
    """
    ws = np.asarray(window_start, dtype=float)
    we = np.asarray(window_end, dtype=float)
    a = np.asarray(alert, dtype=bool)
    evs = [ev for ev in events if ev.host == host]
    mal = [ev for ev in evs if ev.malicious]
    ben = [ev for ev in evs if not ev.malicious]
    m_start = np.array([ev.start for ev in mal], dtype=float)
    m_end = np.array([ev.end for ev in mal], dtype=float)
    group = np.array(
        [ev.campaign if ev.campaign is not None else f"#{i}" for i, ev in enumerate(mal)],
        dtype=object,
    )
    ep = alert_episodes(ws, we, a, merge_gap)
    seg_delays = detection_delays(ep, m_start, m_end, group)
    first = [int(np.flatnonzero(group == gid)[0]) for gid in dict.fromkeys(group.tolist())]

    false_ep = ~_touches(ep.start, ep.end, m_start, m_end + grace).any(axis=1)
    clean = ~_touches(ws, we, m_start, m_end + grace).any(axis=1)
    days = float(we.max() - ws.min()) / 86400.0 if ws.size else 0.0

    b_start = np.array([ev.start for ev in ben], dtype=float)
    b_end = np.array([ev.end for ev in ben], dtype=float)
    touch = _touches(ep.start[false_ep], ep.end[false_ep], b_start, b_end)
    hit = touch.any(axis=0)
    kind = np.array([ev.kind for ev in ben], dtype=object)
    pages = Counter({k: int(touch[:, kind == k].any(axis=1).sum()) for k in set(kind.tolist())})
    return HostOutcome(
        host=host,
        campaign_kinds=[mal[i].kind for i in first],
        delays=seg_delays[first],
        false_alarms=int(false_ep.sum()),
        days=days,
        clean_windows=int(clean.sum()),
        clean_alerted=int((clean & a).sum()),
        benign_alarmed=Counter(ev.kind for ev, h in zip(ben, hit, strict=True) if h),
        benign_total=Counter(ev.kind for ev in ben),
        benign_episodes=+pages,
        campaign_identities=[mal[i].identity for i in first],
    )


def _delay_stats(delays: np.ndarray, within: float) -> dict[str, float | int | None]:
    found = delays[np.isfinite(delays)]
    n = int(delays.size)
    return {
        "campaigns": n,
        "detected": int(found.size),
        "caught_30m": int((found <= within).sum()),
        "recall_30m": float((found <= within).sum() / n) if n else None,
        "recall_any": float(found.size / n) if n else None,
        "median_delay_s": float(np.median(found)) if found.size else None,
        "worst_delay_s": float(found.max()) if found.size else None,
    }


def summarize(outcomes: Sequence[HostOutcome], within: float = CAUGHT_WITHIN) -> dict:
    """Aggregate host outcomes: per campaign kind, overall, false alarms and benign kinds.

    Median and worst delay are over the campaigns that were detected at all; ``recall_any``
    and ``recall_30m`` say how many that is. ``per_identity`` does the same per identity kind
    (empty when no label says how the miner looks).
    """
    kinds = sorted({k for o in outcomes for k in o.campaign_kinds})
    all_delays = np.concatenate([o.delays for o in outcomes]) if outcomes else np.empty(0)
    all_kinds = np.array([k for o in outcomes for k in o.campaign_kinds], dtype=object)
    per_kind = {k: _delay_stats(all_delays[all_kinds == k], within) for k in kinds}
    looks = np.array(
        [
            (o.campaign_identities[i] if i < len(o.campaign_identities) else None) or ""
            for o in outcomes
            for i in range(len(o.campaign_kinds))
        ],
        dtype=object,
    )
    per_identity = {
        k: _delay_stats(all_delays[looks == k], within) for k in sorted(set(looks.tolist()) - {""})
    }
    days = sum(o.days for o in outcomes)
    fa = sum(o.false_alarms for o in outcomes)
    clean = sum(o.clean_windows for o in outcomes)
    clean_alerted = sum(o.clean_alerted for o in outcomes)
    alarmed: Counter[str] = Counter()
    total: Counter[str] = Counter()
    pages: Counter[str] = Counter()
    for o in outcomes:
        alarmed.update(o.benign_alarmed)
        total.update(o.benign_total)
        pages.update(o.benign_episodes)
    return {
        "per_kind": per_kind,
        "per_identity": per_identity,
        "overall": _delay_stats(all_delays, within),
        "false_alarm_episodes": fa,
        "host_days": days,
        "false_alarms_per_host_day": fa / days if days > 0 else None,
        "clean_alerted_share": clean_alerted / clean if clean else None,
        "benign_alarmed": {
            k: {"alarmed": alarmed[k], "episodes": pages[k], "total": total[k]}
            for k in sorted(total)
        },
    }


# --------------------------------------------------------------------------- point metrics


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall, F1 with ``nan`` where undefined (no positives at all)."""
    precision = tp / (tp + fp) if tp + fp else (np.nan if tp + fn == 0 else 0.0)
    recall = tp / (tp + fn) if tp + fn else np.nan
    if np.isnan(precision) or np.isnan(recall):
        return float(precision), float(recall), float("nan")
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return float(precision), float(recall), float(f1)


def confusion(pred: np.ndarray, label: np.ndarray) -> tuple[int, int, int]:
    """True positives, false positives, false negatives of two boolean arrays."""
    p = np.asarray(pred, dtype=bool)
    y = np.asarray(label, dtype=bool)
    if p.shape != y.shape:
        raise ValueError(f"pred has shape {p.shape}, label has {y.shape}")
    return int((p & y).sum()), int((p & ~y).sum()), int((~p & y).sum())


def point_prf(pred: np.ndarray, label: np.ndarray) -> tuple[float, float, float]:
    """Point-wise precision, recall and F1 (no adjustment: the honest figure)."""
    return _prf(*confusion(pred, label))


def point_adjust(pred: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Mark every point of a labelled segment as predicted if any point in it is.

    This is the adjustment most SMD papers apply; it lets one lucky point claim a whole segment.

    >>> point_adjust(np.array([0, 1, 0, 0, 0], bool), np.array([1, 1, 1, 0, 1], bool)).tolist()
    [True, True, True, False, False]
    """
    p = np.asarray(pred, dtype=bool).copy()
    y = np.asarray(label, dtype=bool)
    for lo, hi in zip(*_runs(y), strict=True):
        if p[lo:hi].any():
            p[lo:hi] = True
    return p


def event_prf(pred: np.ndarray, label: np.ndarray) -> tuple[float, float, float]:
    """Event-level precision, recall and F1.

    Recall = labelled segments touched by a prediction / segments; precision = predicted runs that
    touch a labelled segment / predicted runs. Long segments weigh no more than short ones.
    """
    p = np.asarray(pred, dtype=bool)
    y = np.asarray(label, dtype=bool)
    if p.shape != y.shape:
        raise ValueError(f"pred has shape {p.shape}, label has {y.shape}")
    csum_p = np.concatenate(([0], np.cumsum(p)))
    csum_y = np.concatenate(([0], np.cumsum(y)))
    y_lo, y_hi = _runs(y)
    p_lo, p_hi = _runs(p)
    hit_segments = int(((csum_p[y_hi] - csum_p[y_lo]) > 0).sum())
    true_runs = int(((csum_y[p_hi] - csum_y[p_lo]) > 0).sum())
    recall = hit_segments / y_lo.size if y_lo.size else np.nan
    if p_lo.size:
        precision = true_runs / p_lo.size
    else:
        precision = np.nan if y_lo.size == 0 else 0.0
    if np.isnan(precision) or np.isnan(recall):
        return float(precision), float(recall), float("nan")
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return float(precision), float(recall), float(f1)


def best_f1(score: np.ndarray, label: np.ndarray) -> tuple[float, float]:
    """Best point-wise F1 over all thresholds ``score >= t`` and the threshold reaching it.

    An *upper bound*: the threshold is chosen with the test labels. NaN scores never alert.
    """
    s = np.asarray(score, dtype=float).ravel()
    y = np.asarray(label, dtype=bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"score has shape {s.shape}, label has {y.shape}")
    pos = int(y.sum())
    finite = np.isfinite(s)
    if pos == 0 or not finite.any():
        return (float("nan") if pos == 0 else 0.0), float("nan")
    s, y = s[finite], y[finite]
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    k = np.arange(1, s.size + 1)
    # Only cut between distinct scores: tied points alert together.
    last_of_tie = np.concatenate((s_sorted[1:] != s_sorted[:-1], [True]))
    f1 = np.where(last_of_tie, 2 * tp / (k + pos), -1.0)
    i = int(np.argmax(f1))
    return float(f1[i]), float(s_sorted[i])


@dataclass(frozen=True)
class PointReport:
    """All point figures for one series (machine or file)."""

    precision: float
    recall: float
    f1: float
    precision_pa: float
    recall_pa: float
    f1_pa: float
    event_precision: float
    event_recall: float
    event_f1: float
    best_f1: float
    tp: int
    fp: int
    fn: int
    tp_pa: int
    fp_pa: int
    fn_pa: int

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            k: (None if isinstance(v, float) and np.isnan(v) else v)
            for k, v in self.__dict__.items()
        }


def point_report(
    pred: np.ndarray, label: np.ndarray, score: np.ndarray | None = None
) -> PointReport:
    """Point-wise, point-adjusted, event-level and (with ``score``) best-threshold figures."""
    tp, fp, fn = confusion(pred, label)
    adj = point_adjust(pred, label)
    tpa, fpa, fna = confusion(adj, label)
    best = best_f1(score, label)[0] if score is not None else float("nan")
    return PointReport(
        *_prf(tp, fp, fn),
        *_prf(tpa, fpa, fna),
        *event_prf(pred, label),
        best,
        tp,
        fp,
        fn,
        tpa,
        fpa,
        fna,
    )


def mean_reports(reports: Sequence[PointReport]) -> dict[str, float | None]:
    """Per-series mean (``nan`` entries skipped) and pooled (summed counts) figures."""
    out: dict[str, float | None] = {}
    names = [
        "precision",
        "recall",
        "f1",
        "precision_pa",
        "recall_pa",
        "f1_pa",
        "event_precision",
        "event_recall",
        "event_f1",
        "best_f1",
    ]
    for name in names:
        vals = np.array([getattr(r, name) for r in reports], dtype=float)
        out[name] = float(np.nanmean(vals)) if np.isfinite(vals).any() else None
    tp, fp, fn = (sum(getattr(r, n) for r in reports) for n in ("tp", "fp", "fn"))
    tpa, fpa, fna = (sum(getattr(r, n) for r in reports) for n in ("tp_pa", "fp_pa", "fn_pa"))
    for prefix, (p, r, f) in (("pooled_", _prf(tp, fp, fn)), ("pooled_pa_", _prf(tpa, fpa, fna))):
        out[prefix + "precision"], out[prefix + "recall"], out[prefix + "f1"] = (
            None if np.isnan(x) else x for x in (p, r, f)
        )
    return out
