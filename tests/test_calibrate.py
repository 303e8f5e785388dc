"""The vectorised episode count against the alert rule it stands for."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minerwatch.baseline.calibrate import alert_rule, calibrate_threshold, count_episodes, episodes


def reference_count(scores, threshold, slots, k, clear):
    return len(episodes(alert_rule(scores, threshold, slots, k, clear), slots))


def reference_calibration(scores, slots, hop, budget, k, clear):
    """``calibrate_threshold`` as it was, counting with the streaming rule."""
    finite = scores[np.isfinite(scores)]
    span = (len(scores) if slots is None else float(np.ptp(slots)) + 1.0) * hop
    allowed = int(np.floor(budget * span / (7 * 86400.0)))
    candidates = np.unique(np.quantile(finite, np.linspace(0.5, 1.0, 201)))
    candidates = np.append(candidates, np.nextafter(finite.max(), np.inf))
    lo, hi = 0, len(candidates) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if reference_count(scores, float(candidates[mid]), slots, k, clear) <= allowed:
            hi = mid
        else:
            lo = mid + 1
    return float(candidates[lo])


def series(seed, n, gaps, repeats):
    """Bursty scores with NaNs, and slots with gaps (some long) and repeated or backward steps."""
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0, 1, n)
    bursts = rng.uniform(0, 1, n) < 0.05
    near = np.convolve(bursts, np.ones(4), "same")[:n] > 0 if n else bursts
    scores = np.where(near, scores + 0.5, scores)
    scores[rng.uniform(0, 1, n) < 0.02] = np.nan
    step = np.ones(n, dtype=np.int64)
    if gaps:
        step = np.where(rng.uniform(0, 1, n) < 0.1, rng.integers(2, 8, n), step)
        step[rng.uniform(0, 1, n) < 0.01] = 10_000
    if repeats:
        step[rng.uniform(0, 1, n) < 0.03] = rng.choice([0, -1])
    return scores, np.cumsum(step) + 100


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(0, 400),
    k=st.integers(-1, 6),
    clear=st.integers(-1, 6),
    threshold=st.floats(0.0, 1.6),
    gaps=st.booleans(),
    repeats=st.booleans(),
    with_slots=st.booleans(),
)
def test_count_matches_the_alert_rule(seed, n, k, clear, threshold, gaps, repeats, with_slots):
    scores, slots = series(seed, n, gaps, repeats)
    slots = slots if with_slots else None
    expected = reference_count(scores, threshold, slots, k, clear)
    assert count_episodes(scores, threshold, slots, k, clear) == expected


@pytest.mark.parametrize("seed", range(6))
def test_calibration_is_unchanged(seed):
    scores, slots = series(seed, 3000, gaps=seed % 2 == 0, repeats=seed == 4)
    for budget in (0.0, 1.0, 20.0):
        for k, clear in ((3, 3), (1, 5), (4, 1)):
            args = (scores, slots, 60.0, budget, k, clear)
            assert calibrate_threshold(*args) == reference_calibration(*args)
            assert calibrate_threshold(scores, None, 60.0, budget, k, clear) == (
                reference_calibration(scores, None, 60.0, budget, k, clear)
            )


def test_count_checks_its_inputs():
    with pytest.raises(ValueError, match="slots"):
        count_episodes(np.zeros(3), 0.5, np.arange(4), 3, 3)
