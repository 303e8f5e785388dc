"""Counter -> rate arithmetic, pure and separate from reading.

Kernel counters (bytes, packets, context switches, CPU seconds) only grow, except when they
reset (device re-created, module reloaded, host rebooted) or wrap. We treat **any decrease as a
reset and return NaN** for that interval rather than guessing a delta: treating the new value as
the increase (Prometheus' choice) turns a re-created interface with a large counter into a huge
one-sample spike, which for an anomaly detector is a false alert. A NaN sample is simply left out
of the window statistics downstream.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

NAN = float("nan")


def rate(prev: float, cur: float, dt: float) -> float:
    """Per-second increase of a counter between two readings ``dt`` seconds apart.

    Returns NaN when the rate is unknowable: ``dt <= 0``, a non-finite input, or a decrease
    (counter reset or wrap). Never returns a negative number.

    >>> rate(100, 150, 10.0)
    5.0
    >>> rate(150, 100, 10.0)
    nan
    >>> rate(100, 150, 0.0)
    nan
    """
    if not (math.isfinite(prev) and math.isfinite(cur) and math.isfinite(dt)) or dt <= 0:
        return NAN
    if cur < prev:
        return NAN
    return (cur - prev) / dt


def summed_rate(prev: Mapping[str, float], cur: Mapping[str, float], dt: float) -> float:
    """Total rate of several counters (one per interface or disk), computed key by key.

    Summing the counters first and taking one rate would turn a vanished device into a large
    negative step and a new one into a spike, so each key gets its own rate. Keys present in
    only one reading (device added or removed) and keys that reset contribute nothing: one
    device re-created should not blank the host total. NaN only when ``dt`` is unusable.

    >>> summed_rate({"eth0": 10, "eth1": 500}, {"eth0": 30, "eth1": 5, "wg0": 9}, 2.0)
    10.0
    """
    if not math.isfinite(dt) or dt <= 0:
        return NAN
    total = 0.0
    for key, value in cur.items():
        before = prev.get(key)
        if before is None:
            continue
        r = rate(before, value, dt)
        if not math.isnan(r):
            total += r
    return total


def share_percent(part: float, whole: float) -> float:
    """``part`` as a percentage of ``whole``, clamped to [0, 100]; NaN when ``whole <= 0``.

    Used for CPU time shares, where rounding in the kernel's tick accounting can make a
    component exceed the total by a tick.
    """
    if not (math.isfinite(part) and math.isfinite(whole)) or whole <= 0:
        return NAN
    return min(100.0, max(0.0, 100.0 * part / whole))
