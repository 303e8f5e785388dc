"""Small number helpers shared by the agent's reporting code."""

from __future__ import annotations

import math
from typing import Any


def finite_or_none(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else None.

    JSON has no NaN or infinity, and a missing metric must not pass for a real one, so
    everything that reports numbers outward (evidence files, indicator inputs) goes through
    this one conversion.

    >>> finite_or_none(3), finite_or_none("2.5"), finite_or_none(float("nan")), finite_or_none(None)
    (3.0, 2.5, None, None)
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
