"""The benchmark's responder (minerwatch.bench.dismissals) with the real trainer and scorer."""

from __future__ import annotations

import numpy as np
from synth import host_series

from minerwatch.baseline.batch import score_series
from minerwatch.baseline.train import train_host
from minerwatch.bench.dismissals import with_dismissals
from minerwatch.bench.metrics import Event, alert_episodes
from minerwatch.features.io import from_arrays
from minerwatch.features.schema import METRIC_COLUMNS

T0 = 1.7e9
HOUR = 3600.0


def test_a_dismissed_reindex_does_not_page_again_and_a_miner_still_does():
    train = host_series("db", days=2.0, interval=10.0, seed=4, start=T0)
    test = host_series("db", days=2.0, interval=10.0, seed=5, start=T0 + 2 * 86400.0)
    t = test.timestamps - test.timestamps[0]
    v = test.values.copy()
    col = {c: METRIC_COLUMNS.index(c) for c in ("cpu_percent", "disk_read_bps", "disk_write_bps")}
    events = []
    for at in (6 * HOUR, 30 * HOUR):  # the same index rebuild, twice: CPU with heavy disk
        sel = (t >= at) & (t < at + 40 * 60)
        v[sel, col["cpu_percent"]] = 75.0
        v[sel, col["disk_read_bps"]] += 300e6
        v[sel, col["disk_write_bps"]] += 100e6
        events.append(
            Event("db", "reindex", False, test.timestamps[sel][0], test.timestamps[sel][-1])
        )
    sel = (t >= 40 * HOUR) & (t < 40 * HOUR + 30 * 60)  # then a miner: CPU and no I/O
    v[sel, col["cpu_percent"]] = 97.0
    events.append(
        Event("db", "full_speed", True, test.timestamps[sel][0], test.timestamps[sel][-1])
    )
    test = from_arrays("db", test.timestamps, v, test.columns)

    model = train_host(train)
    scored = score_series(model, test)
    ws, we = np.asarray(scored.window_start), np.asarray(scored.window_end)
    alert = np.asarray(scored.alert, dtype=bool)

    def pages(a, ev):
        ep = alert_episodes(ws, we, a)
        return int(np.sum((ep.start <= ev.end) & (ev.start < ep.end)))

    assert [pages(alert, e) for e in events] == [1, 1, 1], "the baseline must page on all three"

    calls = []

    def fit(series):
        calls.append(series)
        return train_host(series)

    after, retrains = with_dismissals(
        train, test, ws, we, alert, events, fit,
        lambda m, s: np.asarray(score_series(m, s).alert, dtype=bool),
        model.hop, 3,
    )  # fmt: skip
    assert retrains == 1 and len(calls) == 1
    assert [pages(after, e) for e in events] == [1, 0, 1]
    # retrained when the responder dismissed it (half an hour after the page, whether or
    # not it had closed), on training plus the test so far, the rebuild included
    ep = alert_episodes(ws, we, alert)
    dismissed_at = ep.start[0] + 1800.0
    learnt = calls[0].timestamps
    assert dismissed_at - 20.0 <= learnt.max() < dismissed_at
    first = events[0]
    assert np.any((learnt >= first.start) & (learnt <= first.end))
    np.testing.assert_array_equal(after[ws < dismissed_at], alert[ws < dismissed_at])


def test_an_episode_open_when_dismissed_is_learnt_so_far_then_whole_when_it_closes():
    """The replay's timing, with a model that is simply 'what it learnt up to': a 100-minute
    episode dismissed 30 minutes in is learnt so far at once, then whole when it closes."""
    minute = 60.0
    train = host_series("app", days=0.5, interval=minute, seed=1, start=T0)
    test = host_series("app", days=0.5, interval=minute, seed=2, start=T0 + 43200.0)
    ws = test.timestamps.copy()
    we = ws + minute
    t0 = ws[0]
    busy = (ws >= t0 + 100 * minute) & (ws < t0 + 200 * minute)
    miner = Event("app", "full_speed", True, t0 + 400 * minute, t0 + 420 * minute)
    mining = (ws >= miner.start) & (ws <= miner.end)
    learnt = []

    def fit(series):
        learnt.append(float(series.timestamps.max()))
        return learnt[-1]  # the model knows everything up to here

    def alerts_of(learnt_until, series):
        return (busy & (ws > learnt_until)) | mining

    after, retrains = with_dismissals(
        train, test, ws, we, busy | mining, [miner], fit, alerts_of, minute, 3
    )
    assert retrains == 2
    assert learnt == [t0 + 129 * minute, t0 + 199 * minute]  # 30 minutes in, then at the close
    assert after[busy].all(), "the episode's pages are history, not rewritten"
    assert after[mining].all(), "a miner is never dismissed"
