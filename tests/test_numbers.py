"""The one finite-number conversion used wherever numbers leave the agent."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

import minerwatch.features.numbers
from minerwatch.features.numbers import finite_or_none


def test_docstring_examples_hold():
    assert doctest.testmod(minerwatch.features.numbers).failed == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1.0),
        (np.float64(2.5), 2.5),
        ("7", 7.0),
        (math.nan, None),
        (-math.inf, None),
        ("soon", None),
        (None, None),
        (object(), None),
    ],
)
def test_finite_or_none(value, expected):
    assert finite_or_none(value) == expected
