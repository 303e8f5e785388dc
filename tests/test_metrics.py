"""Detection metrics: hand-computed examples, an oracle, an always-alert detector, properties."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minerwatch.bench import metrics
from minerwatch.bench.metrics import (
    Event,
    alert_episodes,
    best_f1,
    detection_delays,
    event_prf,
    host_outcome,
    mean_reports,
    point_adjust,
    point_prf,
    point_report,
    summarize,
)

DAY = 86400.0


def grid(days: float = 2.0, step: float = 60.0):
    start = np.arange(0.0, days * DAY, step)
    return start, start + step


CAMPAIGNS = [
    Event("h1", "full_speed", True, 20_000.0, 30_000.0),
    Event("h1", "night_only", True, 100_030.0, 104_000.0),  # starts mid-window
    Event("h1", "gc_storm", False, 60_000.0, 61_000.0),
    Event("h1", "deploy", False, 150_000.0, 150_500.0),
    Event("h2", "full_speed", True, 5_000.0, 9_000.0),  # another host: ignored for h1
]


def overlapping(ws, we, events, malicious=True):
    out = np.zeros(ws.size, bool)
    for ev in events:
        if ev.malicious == malicious:
            out |= (ws <= ev.end) & (ev.start < we)  # events are closed [start, end]
    return out


def test_doctests():
    assert doctest.testmod(metrics).failed == 0


def test_episodes_split_on_unalerted_window_and_on_time_gap():
    ws = np.array([0.0, 60, 120, 300, 360, 420])
    we = ws + 60
    ep = alert_episodes(ws, we, np.array([1, 1, 0, 1, 1, 1], bool))
    assert ep.start.tolist() == [0, 300]
    assert ep.first_end.tolist() == [60, 360]
    assert ep.end.tolist() == [120, 480]
    # A hole in the grid (no window 180-300) splits an otherwise continuous run ...
    ws2 = np.array([0.0, 60, 300, 360])
    ep2 = alert_episodes(ws2, ws2 + 60, np.ones(4, bool))
    assert ep2.start.tolist() == [0, 300]
    # ... unless merge_gap bridges it.
    assert alert_episodes(ws2, ws2 + 60, np.ones(4, bool), merge_gap=180).start.tolist() == [0]
    assert len(alert_episodes(ws, we, np.zeros(6, bool))) == 0


def test_delay_hand_computed():
    ws, we = grid(1, 60.0)
    alert = (ws >= 20_400) & (ws < 21_000)  # first alerted window ends at 20_460
    ep = alert_episodes(ws, we, alert)
    d = detection_delays(ep, np.array([20_000.0]), np.array([30_000.0]))
    assert d.tolist() == [460.0]
    # An episode that begins after the campaign ended detects nothing.
    assert np.isnan(detection_delays(ep, np.array([10_000.0]), np.array([20_000.0]))).all()


def test_perfect_oracle_recall_one_and_no_false_alarms():
    ws, we = grid()
    alert = overlapping(ws, we, [e for e in CAMPAIGNS if e.host == "h1"])
    out = host_outcome("h1", ws, we, alert, CAMPAIGNS)
    assert out.campaign_kinds == ["full_speed", "night_only"]
    assert np.all(out.delays <= 60.0)
    # Windows 19_980-20_040 and 100_020-100_080 hold the campaign starts: delays 40 s and 50 s.
    assert out.delays.tolist() == [40.0, 50.0]
    assert out.false_alarms == 0 and out.clean_alerted == 0
    s = summarize([out])
    assert s["overall"]["recall_30m"] == 1.0
    assert s["false_alarms_per_host_day"] == 0.0
    assert s["clean_alerted_share"] == 0.0
    assert s["benign_alarmed"] == {
        "deploy": {"alarmed": 0, "episodes": 0, "total": 1},
        "gc_storm": {"alarmed": 0, "episodes": 0, "total": 1},
    }


def test_always_alert_gets_no_credit():
    ws, we = grid()
    out = host_outcome("h1", ws, we, np.ones(ws.size, bool), CAMPAIGNS)
    assert np.isnan(out.delays).all()
    s = summarize([out])
    assert s["overall"]["recall_30m"] == 0.0 and s["overall"]["detected"] == 0
    assert s["clean_alerted_share"] == 1.0
    # One endless episode overlaps the campaigns, so it is not counted as a false alarm ...
    assert out.false_alarms == 0


def test_flickering_alert_is_credited_but_counts_false_alarms():
    ws, we = grid()
    alert = np.arange(ws.size) % 2 == 0  # every other window
    out = host_outcome("h1", ws, we, alert, CAMPAIGNS)
    assert np.all(out.delays <= 120.0)
    clean = ~overlapping(ws, we, CAMPAIGNS[:2])
    assert out.clean_windows == clean.sum()
    assert out.clean_alerted == (clean & alert).sum()
    assert out.false_alarms == pytest.approx(out.clean_alerted, abs=2)
    assert out.benign_alarmed == {"gc_storm": 1, "deploy": 1}
    s = summarize([out])
    assert s["false_alarms_per_host_day"] == pytest.approx(out.false_alarms / 2.0)


def test_benign_kinds_count_events_and_the_episodes_that_paged():
    """One false alarm over two overlapping reindexes is two alarmed events and one page; a
    second alarm on a third reindex is a second page."""
    ws, we = grid(1)
    events = [
        Event("h", "reindex", False, 10_000.0, 13_000.0),
        Event("h", "reindex", False, 12_000.0, 15_000.0),
        Event("h", "reindex", False, 40_000.0, 42_000.0),
        Event("h", "backup", False, 60_000.0, 62_000.0),
    ]
    alert = ((ws >= 12_300) & (ws < 12_900)) | ((ws >= 41_000) & (ws < 41_300))
    out = host_outcome("h", ws, we, alert, events)
    assert out.false_alarms == 2
    assert out.benign_alarmed == {"reindex": 3}
    assert out.benign_episodes == {"reindex": 2}
    s = summarize([out, host_outcome("h", ws, we, alert & (ws < 20_000), events)])
    assert s["benign_alarmed"] == {
        "backup": {"alarmed": 0, "episodes": 0, "total": 2},
        "reindex": {"alarmed": 5, "episodes": 3, "total": 6},
    }


def test_episode_already_running_then_new_one_counts():
    ws, we = grid(1)
    camp = [Event("h", "ramp", True, 20_000.0, 30_000.0)]
    alert = ((ws >= 19_000) & (ws < 21_000)) | ((ws >= 25_000) & (ws < 26_000))
    out = host_outcome("h", ws, we, alert, camp)
    # The second episode's first window is 25_020-25_080.
    assert out.delays.tolist() == [25_080.0 - 20_000.0]
    s = summarize([out])
    assert s["overall"]["recall_30m"] == 0.0 and s["overall"]["recall_any"] == 1.0
    assert s["per_kind"]["ramp"]["worst_delay_s"] == 5080.0


def test_multi_segment_campaign_counts_once_from_first_segment():
    ws, we = grid(2)
    nights = [
        Event("h", "night_only", True, s, s + 3600.0, campaign="h/1") for s in (10_000.0, 96_400.0)
    ]
    alert = (ws >= 96_600) & (ws < 97_000)  # missed the first night, caught the second
    out = host_outcome("h", ws, we, alert, nights)
    assert out.campaign_kinds == ["night_only"]
    assert out.delays.tolist() == [96_660.0 - 10_000.0]
    assert out.false_alarms == 0
    # An alert between the nights touches no segment: a false alarm, not a detection.
    gap = (ws >= 50_000) & (ws < 50_120)
    out = host_outcome("h", ws, we, gap, nights)
    assert np.isnan(out.delays).all() and out.false_alarms == 1


def test_grace_period_absorbs_tail_alarm():
    ws, we = grid(1)
    camp = [Event("h", "ramp", True, 20_000.0, 30_000.0)]
    tail = (ws >= 30_600) & (ws < 31_000)
    assert host_outcome("h", ws, we, tail, camp).false_alarms == 1
    assert host_outcome("h", ws, we, tail, camp, grace=900).false_alarms == 0


def test_summarize_pools_kinds_across_hosts():
    ws, we = grid()
    hosts = []
    for h in ("h1", "h2"):
        mine = [e for e in CAMPAIGNS if e.host == h and e.kind != "night_only"]
        alert = overlapping(ws, we, mine)
        hosts.append(host_outcome(h, ws, we, alert, CAMPAIGNS))
    s = summarize(hosts)
    assert s["per_kind"]["full_speed"]["campaigns"] == 2
    assert s["per_kind"]["full_speed"]["recall_30m"] == 1.0
    assert s["per_kind"]["night_only"]["recall_30m"] == 0.0
    assert s["overall"]["recall_30m"] == pytest.approx(2 / 3)
    assert s["host_days"] == pytest.approx(4.0)


# --------------------------------------------------------------------------- point metrics


def test_point_prf_hand_computed():
    y = np.array([0, 1, 1, 1, 0, 0, 1, 1, 0, 0], bool)
    p = np.array([0, 0, 1, 0, 1, 0, 0, 0, 0, 0], bool)
    prec, rec, f1 = point_prf(p, y)
    assert (prec, rec) == (0.5, 0.2)
    assert f1 == pytest.approx(2 * 0.5 * 0.2 / 0.7)


def test_point_adjust_inflates_single_hit_to_whole_segment():
    y = np.zeros(100, bool)
    y[10:40] = True
    y[60:70] = True
    p = np.zeros(100, bool)
    p[25] = True
    adj = point_adjust(p, y)
    assert adj[10:40].all() and not adj[60:70].any() and adj.sum() == 30
    r = point_report(p, y)
    assert r.recall == pytest.approx(1 / 40)
    assert r.recall_pa == pytest.approx(30 / 40)
    assert r.precision_pa == 1.0
    assert r.f1_pa > 10 * r.f1
    assert (r.event_precision, r.event_recall, r.event_f1) == (1.0, 0.5, pytest.approx(2 / 3))


def test_event_prf_counts_runs():
    y = np.array([0, 1, 1, 0, 0, 0, 1, 0, 0, 0], bool)
    p = np.array([1, 1, 0, 0, 1, 0, 0, 0, 1, 1], bool)
    # predicted runs: [0:2] hits seg 1; [4:5] and [8:10] miss. segments: 1 of 2 hit.
    assert event_prf(p, y) == (pytest.approx(1 / 3), 0.5, pytest.approx(0.4))


def test_undefined_ratios_are_nan():
    y = np.zeros(5, bool)
    p = np.zeros(5, bool)
    prec, rec, f1 = point_prf(p, y)
    assert np.isnan(prec) and np.isnan(rec) and np.isnan(f1)
    p[0] = True
    assert point_prf(p, y)[0] == 0.0 and np.isnan(point_prf(p, y)[2])
    y[1] = True
    assert point_prf(np.zeros(5, bool), y) == (0.0, 0.0, 0.0)


def test_best_f1_hand_computed_and_ties():
    score = np.array([0.9, 0.8, 0.8, 0.1, 0.5])
    y = np.array([1, 1, 0, 0, 0], bool)
    f1, thr = best_f1(score, y)
    # t=0.9: P1 R.5 F .667; t=0.8: P 2/3 R1 F .8; t=0.5: P .5 F .667
    assert f1 == pytest.approx(0.8) and thr == 0.8
    assert best_f1(np.ones(5), y) == (pytest.approx(2 * 2 / 7), 1.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.floats(0, 1)), min_size=1, max_size=60))
def test_properties(rows):
    p = np.array([r[0] for r in rows])
    y = np.array([r[1] for r in rows])
    s = np.array([r[2] for r in rows])
    adj = point_adjust(p, y)
    assert np.all(adj >= p)  # adjustment only adds predictions ...
    assert np.array_equal(adj & ~y, p & ~y)  # ... and only inside labelled segments
    r = point_report(p, y, s)
    if y.any():
        assert r.recall_pa >= r.recall
        # best-threshold F1 is at least the F1 of any threshold on the same score
        for t in np.unique(s):
            f = point_prf(s >= t, y)[2]
            assert r.best_f1 >= f - 1e-12


def test_mean_reports_skips_nan_and_pools():
    y1 = np.array([0, 1, 1, 0], bool)
    p1 = np.array([0, 1, 0, 0], bool)
    y2 = np.zeros(4, bool)
    p2 = np.array([1, 0, 0, 0], bool)
    m = mean_reports([point_report(p1, y1), point_report(p2, y2)])
    assert m["f1"] == pytest.approx(2 / 3)  # the file without labels has no F1
    assert m["pooled_precision"] == 0.5 and m["pooled_recall"] == 0.5
