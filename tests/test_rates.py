import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minerwatch.features.rates import rate, share_percent, summed_rate

counters = st.floats(min_value=0, max_value=2.0**64, allow_nan=False)
dts = st.floats(min_value=-10, max_value=1e6, allow_nan=False, allow_infinity=False)


def test_rate_of_an_increase_is_the_per_second_delta():
    assert rate(100, 150, 10.0) == 5.0
    assert rate(0, 0, 1.0) == 0.0
    assert rate(7, 7, 0.5) == 0.0


@pytest.mark.parametrize("prev,cur", [(150, 100), (2**64 - 1, 3), (1, 0)])
def test_decrease_is_a_reset_and_gives_nan(prev, cur):
    assert math.isnan(rate(prev, cur, 10.0))


@pytest.mark.parametrize("dt", [0.0, -1.0, math.inf, math.nan])
def test_unusable_interval_gives_nan(dt):
    assert math.isnan(rate(1, 2, dt))


@pytest.mark.parametrize("prev,cur", [(math.nan, 1), (1, math.nan), (math.inf, 1), (1, math.inf)])
def test_non_finite_counters_give_nan(prev, cur):
    assert math.isnan(rate(prev, cur, 1.0))


@given(counters, counters, dts)
def test_rate_is_never_negative(prev, cur, dt):
    r = rate(prev, cur, dt)
    assert math.isnan(r) or r >= 0
    if dt > 0 and cur >= prev:
        assert r == pytest.approx((cur - prev) / dt)


def test_summed_rate_is_per_key_and_ignores_resets_and_new_keys():
    prev = {"eth0": 10.0, "eth1": 500.0, "gone0": 9.0}
    cur = {"eth0": 30.0, "eth1": 5.0, "wg0": 1e12}
    # eth0: 20 over 2 s; eth1 reset -> nothing; wg0 new -> nothing; gone0 removed -> nothing
    assert summed_rate(prev, cur, 2.0) == 10.0


def test_summed_rate_of_no_devices_is_zero_but_bad_dt_is_nan():
    assert summed_rate({}, {}, 1.0) == 0.0
    assert math.isnan(summed_rate({"a": 1.0}, {"a": 2.0}, 0.0))


@given(
    st.dictionaries(st.sampled_from("abcdef"), counters),
    st.dictionaries(st.sampled_from("abcdef"), counters),
    dts,
)
def test_summed_rate_is_never_negative_and_bounded_by_growth(prev, cur, dt):
    r = summed_rate(prev, cur, dt)
    if dt <= 0:
        assert math.isnan(r)
        return
    assert r >= 0
    growth = sum(max(0.0, v - prev[k]) for k, v in cur.items() if k in prev)
    assert r == pytest.approx(growth / dt)


def test_share_percent_clamps_and_rejects_empty_total():
    assert share_percent(25, 100) == 25.0
    assert share_percent(101, 100) == 100.0
    assert share_percent(-1, 100) == 0.0
    assert math.isnan(share_percent(1, 0))


@given(st.floats(allow_nan=False), st.floats(allow_nan=False))
def test_share_percent_is_within_0_100_or_nan(part, whole):
    p = share_percent(part, whole)
    assert math.isnan(p) or 0.0 <= p <= 100.0
