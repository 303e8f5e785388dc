"""The agent keeps enough history in memory for every rolling feature: a window's features
from the agent's trimmed buffer equal those from the full series (no live/batch skew)."""

import numpy as np

from minerwatch.features.pipeline import feature_rows
from minerwatch.features.schema import METRIC_COLUMNS
from minerwatch.service.agent import LOOKBACK_S


def test_lookback_covers_the_longest_rolling_feature():
    rng = np.random.default_rng(0)
    ts = np.arange(0, 4 * 3600, 10.0)
    vals = rng.uniform(0, 100, (len(ts), len(METRIC_COLUMNS)))
    now = ts[-1] + 10
    full = feature_rows(ts, vals, METRIC_COLUMNS, 60.0, 60.0)  # as batch scoring cuts it
    keep = ts >= now - LOOKBACK_S - 2 * 60.0
    part = feature_rows(  # as the agent cuts its buffer
        ts[keep], vals[keep], METRIC_COLUMNS, 60.0, 60.0, interval=10.0, until=now
    )
    assert part.windows.slots[-1] == full.windows.slots[-1]
    np.testing.assert_allclose(part.matrix[-1], full.matrix[-1])
