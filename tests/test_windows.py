import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from minerwatch.features.extract import extract, feature_names
from minerwatch.features.schema import METRIC_COLUMNS
from minerwatch.features.windows import make_windows

COLS = ("cpu_percent", "top_proc_cpu_percent")


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    interval=st.sampled_from([1.0, 5.0, 10.0, 30.0, 60.0]),
    window=st.sampled_from([60.0, 120.0, 300.0]),
    hop_div=st.sampled_from([1, 2, 4]),
    seed=st.integers(0, 10_000),
)
def test_window_count_and_order_independence(n, interval, window, hop_div, seed):
    hop = window / hop_div
    if interval > window:
        return
    rng = np.random.default_rng(seed)
    ts = 1000 * window + np.arange(n) * interval
    vals = rng.uniform(0, 100, (n, 2))
    a = make_windows(ts, vals, COLS, window, hop, interval=interval)
    perm = rng.permutation(n)
    b = make_windows(ts[perm], vals[perm], COLS, window, hop, interval=interval)
    np.testing.assert_array_equal(a.slots, b.slots)
    np.testing.assert_allclose(a.means, b.means)
    names_a, fa = extract(a)
    _, fb = extract(b)
    np.testing.assert_allclose(fa, fb)
    # never more windows than the grid slots that samples touch, all well covered
    span_slots = int(np.floor(ts[-1] / hop) - np.floor((ts[0] - window) / hop)) + 1
    assert len(a) <= span_slots
    assert np.all(a.count >= max(1, 0.5 * window / interval))
    # a complete stretch of samples yields every full window inside it
    full = np.arange(np.ceil(ts[0] / hop), np.floor((ts[-1] + interval - window) / hop) + 1)
    assert set(full.astype(int)) <= set(a.slots.tolist())


@settings(max_examples=40, deadline=None)
@given(gap_start=st.integers(10, 100), gap_len=st.integers(3, 50))
def test_gaps_give_no_windows_not_zeros(gap_start, gap_len):
    ts = np.arange(0, 200 * 60, 10.0)
    keep = (ts < gap_start * 60) | (ts >= (gap_start + gap_len) * 60)
    vals = np.full((len(ts), 2), 50.0)
    w = make_windows(ts[keep], vals[keep], COLS, 60.0, 60.0, interval=10.0)
    gap_slots = set(range(gap_start, gap_start + gap_len))
    assert not gap_slots & set(w.slots.tolist())
    assert np.all(w.means == 50.0)  # no window averaged with imaginary zeros


def test_until_drops_incomplete_windows():
    ts = np.arange(0, 125, 10.0)
    w = make_windows(ts, np.ones((len(ts), 2)), COLS, 60.0, 60.0, interval=10.0, until=125.0)
    assert list(w.slots) == [0, 1]


def test_features_are_causal():
    """Appending later samples never changes an earlier window's features (live == batch)."""
    rng = np.random.default_rng(0)
    ts = np.arange(0, 6 * 3600, 10.0)
    vals = rng.uniform(0, 100, (len(ts), len(METRIC_COLUMNS)))
    full = make_windows(ts, vals, METRIC_COLUMNS, interval=10.0)
    cut = len(ts) // 2
    part = make_windows(ts[:cut], vals[:cut], METRIC_COLUMNS, interval=10.0, until=ts[cut - 1] + 10)
    _, f_full = extract(full)
    _, f_part = extract(part)
    np.testing.assert_allclose(f_full[: len(f_part)], f_part)


def test_feature_names_follow_columns():
    names = feature_names(METRIC_COLUMNS)
    assert "cpu_floor_15m" in names and "tod_sin" in names
    assert not any(n.startswith("x_") for n in names)
    extra = feature_names(("cpu_percent", "gpu_util"))
    assert "x_gpu_util" in extra and "top_proc_cpu" not in extra
