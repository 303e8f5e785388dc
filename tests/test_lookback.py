"""The agent keeps enough history in memory for every rolling feature: a window's features
from the agent's trimmed buffer equal those from the full series (no live/batch skew)."""

import numpy as np

from minerwatch.features.extract import extract
from minerwatch.features.schema import METRIC_COLUMNS
from minerwatch.features.windows import make_windows
from minerwatch.service.agent import LOOKBACK_S


def test_lookback_covers_the_longest_rolling_feature():
    rng = np.random.default_rng(0)
    ts = np.arange(0, 4 * 3600, 10.0)
    vals = rng.uniform(0, 100, (len(ts), len(METRIC_COLUMNS)))
    now = ts[-1] + 10
    full = make_windows(ts, vals, METRIC_COLUMNS, interval=10.0, until=now)
    keep = ts >= now - LOOKBACK_S - 2 * 60.0
    part = make_windows(ts[keep], vals[keep], METRIC_COLUMNS, interval=10.0, until=now)
    _, f_full = extract(full)
    _, f_part = extract(part)
    np.testing.assert_allclose(f_part[-1], f_full[-1])
