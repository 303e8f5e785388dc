"""Learning that cannot cry wolf: a baseline from few windows is cautious, not jumpy.

A quiet host (CPU around 1 %, the try-out's case) and a busy one with a daily rhythm are
learnt for 2 minutes up to a day and scored on the hours that follow: no model alerts on the
normal continuation, a model of less than an hour cannot alert at all, and one of a few
hours still catches a miner holding every core. The explanation of CPU degrades to "none" on
too few windows and never leaves the range it took in training.
"""

from __future__ import annotations

import numpy as np
import pytest
from synth import host_series

from minerwatch.baseline.batch import score_series
from minerwatch.baseline.calibrate import WEEK, extrapolation_margin, widen_threshold
from minerwatch.baseline.explain import Explainer, min_windows
from minerwatch.baseline.train import train_host
from minerwatch.features.io import HostSeries, from_arrays
from minerwatch.features.schema import METRIC_COLUMNS

T0 = 1_767_225_600.0 + 3 * 3600.0  # 03:00 UTC, a quiet hour
HOP = 60.0


def quiet_host(hours: float, seed: int = 0, plateau: tuple[float, float] | None = None):
    """A nearly idle host: CPU 0.5-4 %, a busiest process at a few percent of a core; with
    ``plateau`` = (offset s, duration s), a miner holding all four cores."""
    base = host_series("quiet", days=hours / 24, seed=seed, start=T0)
    rng = np.random.default_rng(seed)
    v = base.values.copy()
    n = len(v)
    cpu = np.clip(0.75 + rng.gamma(1.5, 0.6, n), 0, 100)
    top = np.clip(cpu * 2.5 + rng.normal(0, 0.5, n), 0, 400)
    if plateau is not None:
        on = (base.timestamps >= T0 + plateau[0]) & (base.timestamps < T0 + sum(plateau))
        cpu[on], top[on] = 98.0 + rng.normal(0, 0.5, on.sum()), 390.0
    for name, x in (
        ("cpu_percent", cpu),
        ("cpu_user_percent", cpu * 0.7),
        ("cpu_system_percent", cpu * 0.3),
        ("top_proc_cpu_percent", top),
        ("procs_running", np.round(1 + rng.random(n))),
        ("net_rx_pps", np.abs(rng.normal(3, 1, n))),
        ("net_tx_pps", np.abs(rng.normal(3, 1, n))),
    ):
        v[:, METRIC_COLUMNS.index(name)] = x
    return from_arrays("quiet", base.timestamps, v, base.columns)


def head(series: HostSeries, seconds: float) -> HostSeries:
    keep = series.timestamps < series.timestamps[0] + seconds
    return from_arrays(series.host, series.timestamps[keep], series.values[keep], series.columns)


def learn(series: HostSeries, seconds: float):
    return train_host(head(series, seconds), HOP, HOP, min_windows=1)


@pytest.mark.parametrize("minutes", [2, 4, 10, 30, 120, 1440])
@pytest.mark.parametrize("busy", [False, True], ids=["quiet", "busy"])
def test_no_learning_period_cries_wolf_on_the_hours_after_it(minutes, busy):
    series = host_series("busy", days=1.5, seed=4, start=T0) if busy else quiet_host(30.0)
    model = learn(series, minutes * 60.0)
    scored = score_series(model, series)
    after = scored.window_start >= series.timestamps[0] + minutes * 60.0
    assert not scored.alert[after].any(), (
        f"{minutes} min of learning: {int(scored.alert[after].sum())} alerted windows, "
        f"threshold {model.threshold:.4f}, max score {scored.score[after].max():.4f}"
    )


@pytest.mark.parametrize("minutes", [2, 10, 40])
def test_a_model_of_less_than_an_hour_cannot_alert(minutes):
    series = quiet_host(2.0, plateau=(90 * 60.0, 1800.0))  # not even on a miner
    model = learn(series, minutes * 60.0)
    assert model.threshold == 1.0
    scored = score_series(model, series)
    assert not scored.alert.any() and scored.score.max() < 1.0


def test_a_one_window_model_scores_neutrally():
    model = learn(quiet_host(1.0), 90.0)
    assert model.meta["windows"] == 1
    assert np.all(score_series(model, quiet_host(1.0, seed=1)).score == 0.5)


def test_the_unexplained_cpu_of_a_quiet_host_stays_small():
    """The issue's case: 10 windows on a host at 0.75 % CPU read 11.17 "unexplained"."""
    series = quiet_host(1.0)
    model = learn(series, 600.0)
    assert model.explainer is not None and not model.explainer.explains
    scored = score_series(model, series)
    names = list(model.feature_names)
    later = scored.window_start >= series.timestamps[0] + 600.0
    for name in ("cpu_floor_3m_unexplained", "cpu_percent_unexplained"):
        values = model.full(scored.features[later])[:, names.index(name)]
        assert np.abs(values).max() < 4.0, (name, values.max())


def test_learnt_in_hours_a_miner_on_every_core_is_still_caught():
    """Cautious is not mute: three hours of a quiet host, then a miner for 30 minutes."""
    series = quiet_host(5.0, plateau=(4 * 3600.0, 1800.0))
    model = learn(series, 3 * 3600.0)
    assert model.threshold < 0.9
    scored = score_series(model, series)
    start = series.timestamps[0] + 4 * 3600.0
    during = (scored.window_start >= start) & (scored.window_start < start + 1800.0)
    assert scored.alert[during].any(), f"max score {scored.score[during].max():.4f}"
    first = scored.window_end[during & scored.alert].min()
    assert first - start <= 600.0, f"caught after {first - start:.0f} s"
    assert not scored.alert[scored.window_end <= start].any()


def test_the_margin_shrinks_with_the_data_and_vanishes_at_the_budget_period():
    ns = [2, 3, 4, 8, 16, 40, 100, 1440, 5000]
    margins = [extrapolation_margin(n) for n in ns]
    assert extrapolation_margin(1) == np.inf
    assert all(a > b for a, b in zip(margins, margins[1:], strict=False)), margins
    assert extrapolation_margin(int(WEEK / HOP)) == 0.0
    # windows of less than a day count for the share of the day they cover
    spans = [n * HOP for n in (60, 120, 240, 720, 1440, 2880)]
    daily = [extrapolation_margin(int(s / HOP), span=s) for s in spans]
    assert daily[0] > 100 and all(a > b for a, b in zip(daily, daily[1:], strict=False))
    assert daily[-2] == extrapolation_margin(1440) and daily[-1] == extrapolation_margin(2880)
    # a smaller hop means more windows a week, so more margin for as many windows
    assert extrapolation_margin(40, hop=3.0) > extrapolation_margin(40, hop=60.0)
    # the threshold: unchanged without margin, 1 with an infinite one, monotone in between
    scores = np.random.default_rng(0).uniform(0.3, 0.6, 50)
    widened = [widen_threshold(0.6, scores, m) for m in (0.0, 1.0, 4.0, np.inf)]
    assert widened[0] == 0.6 and widened[-1] == 1.0
    assert widened == sorted(widened) and widened[1] > 0.6


def test_the_explanation_needs_enough_windows_and_never_extrapolates():
    rng = np.random.default_rng(1)
    n, inputs = 400, 3
    X = rng.normal(size=(n, inputs))
    cpu = np.expm1(1.5 + X @ np.array([0.5, -0.3, 0.2]) + rng.normal(0, 0.1, n))
    F = np.column_stack([cpu, X])
    targets, cols = np.array([0]), np.arange(1, inputs + 1)
    assert min_windows(inputs) == 45
    few = Explainer.fit(F[:44], targets, cols, ("cpu_unexplained",), resolution=np.array([2.0]))
    assert not few.explains and np.all(few.coef[:, 1:] == 0)
    enough = Explainer.fit(F, targets, cols, ("cpu_unexplained",), resolution=np.array([2.0]))
    assert enough.explains
    assert np.abs(np.median(enough.derive(F))) < 0.5
    # inputs a hundred spreads out: the prediction stays within what training saw
    wild = F[:5].copy()
    wild[:, 1:] = np.array([100.0, -100.0, 100.0])
    pred = enough.predict(wild)
    assert np.all(pred >= enough.pred_low - 1e-12) and np.all(pred <= enough.pred_high + 1e-12)
    # a flat, idle host: one resolution step (2 points at ~1 %) is about one unit, not twenty
    idle = F.copy()
    idle[:, 0] = 1.0
    flat = Explainer.fit(idle, targets, cols, ("cpu_unexplained",), resolution=np.array([2.0]))
    step = idle[:1].copy()
    step[0, 0] = 3.0
    assert 0.5 < float(flat.derive(step)[0, 0]) < 1.5


def test_evidence_of_work_explains_cpu_a_little_past_its_training_maximum():
    """Packets, disk bytes, switches and I/O wait a pure compute loop does not produce: a
    traffic surge a bit bigger than any in training explains its CPU, up to REACH training
    spreads and only through positive slopes; other inputs stay clipped to training."""
    from minerwatch.baseline.explain import REACH

    rng = np.random.default_rng(2)
    n = 600
    X = rng.normal(size=(n, 2))  # packets (evidence), procs_running (not)
    cpu = np.expm1(2.0 + X @ np.array([0.6, 0.3]) + rng.normal(0, 0.05, n))
    F = np.column_stack([cpu, X])
    targets, cols = np.array([0]), np.array([1, 2])
    names = ("cpu_unexplained",)
    plain = Explainer.fit(F, targets, cols, names)
    ev = Explainer.fit(F, targets, cols, names, evidence=np.array([True, False]))
    scale, top = ev.in_scale, ev.in_center + ev.in_high * ev.in_scale  # training maxima
    at_max = np.array([[0.0, top[0], 0.0]])
    surge = at_max.copy()
    surge[0, 1] += 1.0 * scale[0]  # one training spread past the maximum
    slope = float(ev.coef[0, 1])
    assert slope > 0
    assert float(ev.predict(surge)[0, 0] - ev.predict(at_max)[0, 0]) == pytest.approx(slope)
    assert float(plain.predict(surge)[0, 0]) == float(plain.predict(at_max)[0, 0])  # clipped
    far = at_max.copy()
    far[0, 1] += 10 * scale[0]  # ten spreads past: only REACH of them explain
    gain = float(ev.predict(far)[0, 0] - ev.predict(at_max)[0, 0])
    assert gain == pytest.approx(REACH * slope)
    other = np.array([[0.0, 0.0, top[1] + 5 * scale[1]]])  # not evidence: clipped
    base = np.array([[0.0, 0.0, top[1]]])
    assert float(ev.predict(other)[0, 0]) == float(ev.predict(base)[0, 0])
    # stored and read back, and models saved before the reach extrapolate nothing
    arrays = ev.to_arrays()
    np.testing.assert_array_equal(
        Explainer.from_arrays(arrays, names).predict(far), ev.predict(far)
    )
    del arrays["explain_in_reach"]
    old = Explainer.from_arrays(arrays, names)
    assert float(old.predict(far)[0, 0]) == float(old.predict(at_max)[0, 0])


def test_heavy_work_is_evidence_of_work_far_above_its_training_median():
    """A window is heavy work when an input that is evidence of work (disk bytes, packets)
    sits HEAVY_WORK training spreads or more above its training median; other inputs, however
    high, never make it so, nor does an explainer without evidence or without a fit."""
    from minerwatch.baseline.calibrate import HEAVY_WORK

    rng = np.random.default_rng(5)
    n = 600
    X = rng.normal(size=(n, 2))  # disk bytes (evidence), procs_running (not)
    cpu = np.expm1(2.0 + X @ np.array([0.6, 0.3]) + rng.normal(0, 0.05, n))
    F = np.column_stack([cpu, X])
    targets, cols, names = np.array([0]), np.array([1, 2]), ("cpu_unexplained",)
    ev = Explainer.fit(F, targets, cols, names, evidence=np.array([True, False]))
    med, spread = ev.in_center, ev.in_scale
    rows = np.array(
        [
            [0.0, med[0] + (HEAVY_WORK + 0.1) * spread[0], med[1]],  # the disk far above
            [0.0, med[0] + (HEAVY_WORK - 0.1) * spread[0], med[1]],  # just under
            [0.0, med[0], med[1] + 10 * spread[1]],  # the other input far above
        ]
    )
    assert ev.heavy(rows, HEAVY_WORK).tolist() == [True, False, False]
    spreads = ev.work(rows)  # the evidence in spreads, the other input not at all
    np.testing.assert_allclose(spreads[:, 0], [HEAVY_WORK + 0.1, HEAVY_WORK - 0.1, 0.0])
    assert np.isnan(spreads[:, 1]).all()
    assert not ev.heavy(rows, 0.0).any()  # 0: never
    in_training = ev.heavy(F, HEAVY_WORK).mean()
    assert 0.005 < in_training < 0.05  # a normal input's tail, about 2 %
    plain = Explainer.fit(F, targets, cols, names)  # no evidence of work
    assert not plain.heavy(rows, HEAVY_WORK).any()
    few = Explainer.fit(F[:30], targets, cols, names, evidence=np.array([True, False]))
    assert not few.explains and not few.heavy(rows, HEAVY_WORK).any()


def test_heavy_work_in_words_for_the_responder():
    """The episode's counts and its heaviest evidence, and nothing from fields an edited event
    log got wrong."""
    from minerwatch.baseline.explain import heavy_work_words

    disk = {"feature": "disk_bps_log_5m", "spreads": 45.4}
    net = {"feature": "net_pps_log_5m", "spreads": 3.2}
    ep = {"windows": 7, "heavy_windows": 3, "heavy_work": [disk]}
    assert heavy_work_words(ep) == (
        "heavy work in 3 of 7 windows (disk_bps_log_5m 45 spreads above its training median)"
    )
    assert heavy_work_words({**ep, "heavy_work": [disk, net]}).endswith(
        "(disk_bps_log_5m 45 spreads, net_pps_log_5m 3 spreads above their training medians)"
    )
    assert heavy_work_words({**ep, "heavy_work": "x"}) == "heavy work in 3 of 7 windows"
    assert heavy_work_words({**ep, "heavy_work": [{"feature": 1, "spreads": "a"}]}) == (
        "heavy work in 3 of 7 windows"
    )
    for bad in ({**ep, "heavy_windows": 0}, {**ep, "heavy_windows": "3"}, {"windows": 7}, {}):
        assert heavy_work_words(bad) == ""
