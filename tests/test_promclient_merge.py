"""``merge_series``: its one-piece fast path (an answer as Prometheus sends it: label sets
unique, every series strictly increasing in time) gives the series the general join gives,
and pieces that overlap, repeat a label set or come out of time order still join correctly."""

from __future__ import annotations

import json
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from minerwatch.service.fleet.promclient import RawSeries, merge_series, parse_series

Key = tuple[tuple[str, str], ...]


def reference(pieces: list[list[RawSeries]], start: float, end: float) -> list[RawSeries]:
    """The join written point by point: per label set (first seen first) every point in piece
    order, sorted by time (stable: of equal timestamps the first piece's wins), in range,
    each timestamp once; the label sets sorted by their values name by name."""
    points: dict[Key, list[tuple[float, float]]] = {}
    for piece in pieces:
        for s in piece:
            key = tuple(sorted(s.labels.items()))
            points.setdefault(key, []).extend(
                zip(s.timestamps.tolist(), s.values.tolist(), strict=True)
            )
    names = sorted({n for key in points for n, _ in key})
    out = []
    for key, pts in points.items():
        kept: list[tuple[float, float]] = []
        for t, v in sorted((p for p in pts if start <= p[0] <= end), key=lambda p: p[0]):
            if not kept or kept[-1][0] != t:
                kept.append((t, v))
        if kept:
            labels = dict(key)
            sort_key = tuple(labels.get(n, "") for n in names)
            ts, vs = (np.array([p[i] for p in kept], dtype=np.float64) for i in (0, 1))
            out.append((sort_key, RawSeries(labels, ts, vs)))
    out.sort(key=lambda pair: pair[0])
    return [s for _, s in out]


def same(got: list[RawSeries], want: list[RawSeries]) -> None:
    """Equal label sets (their order of names too) and arrays equal bit for bit."""
    assert [list(s.labels.items()) for s in got] == [list(s.labels.items()) for s in want]
    assert [s.timestamps.tobytes() for s in got] == [s.timestamps.tobytes() for s in want]
    assert [s.values.tobytes() for s in got] == [s.values.tobytes() for s in want]


def answer(series: list[tuple[dict[str, str], list[tuple[float, float]]]]) -> bytes:
    """A matrix answer in Prometheus' compact JSON."""
    result = [
        {"metric": labels, "values": [[t, repr(v)] for t, v in pts]} for labels, pts in series
    ]
    body = {"status": "success", "data": {"resultType": "matrix", "result": result}}
    return json.dumps(body, separators=(",", ":")).encode()


def one_piece() -> list[RawSeries]:
    """An answer of three hosts' CPU series, labels in Prometheus' order (sorted by name) or
    not, as read by the parser."""
    series = []
    for host in ("h2", "h10", "h1"):
        for cpu in ("1", "0"):
            labels = {"__name__": "node_cpu_seconds_total", "cpu": cpu, "instance": host}
            if host == "h1":  # names out of order: the join gives them in order
                labels = dict(reversed(labels.items()))
            series.append((labels, [(1000.0 + 15 * i, 7.5 * i + 0.1) for i in range(8)]))
    return parse_series(answer(series))


def test_one_piece_takes_the_fast_path_and_gives_what_the_general_join_gives():
    piece = one_piece()
    for start, end in ((-math.inf, math.inf), (1000.0, 1105.0), (1010.0, 1090.0)):
        fast = merge_series([piece], start, end)
        # the same series split into two pieces by label set: the general join
        general = merge_series([piece[::2], piece[1::2]], start, end)
        same(fast, general)
        same(fast, reference([piece], start, end))
    fast = merge_series([piece])
    got = [(s.labels["cpu"], s.labels["instance"]) for s in fast]  # by name: cpu, then instance
    assert got == [("0", "h1"), ("0", "h10"), ("0", "h2"), ("1", "h1"), ("1", "h10"), ("1", "h2")]
    # wholly in range and labels in order: the parsed series themselves, not copies
    assert sum(any(s is p for p in piece) for s in fast) == 4
    assert all(list(s.labels) == sorted(s.labels) for s in fast)
    assert [len(s.timestamps) for s in merge_series([piece], 1010.0, 1090.0)] == [6] * 6
    assert merge_series([piece], 2000.0, 3000.0) == []


def test_pieces_that_overlap_repeat_or_come_out_of_order_take_the_general_join():
    a = {"instance": "h1", "job": "node"}
    b = {"instance": "h2", "job": "node"}
    cases = [
        # a label set twice in one piece, overlapping in time: the first point wins
        [[RawSeries(a, np.array([0.0, 15.0, 30.0]), np.array([1.0, 2.0, 3.0])),
          RawSeries(b, np.array([0.0]), np.array([9.0])),
          RawSeries(a, np.array([15.0, 45.0]), np.array([20.0, 4.0]))]],
        # a series out of time order, another with a timestamp twice
        [[RawSeries(b, np.array([30.0, 0.0, 15.0]), np.array([3.0, 1.0, 2.0])),
          RawSeries(a, np.array([0.0, 15.0, 15.0]), np.array([1.0, 2.0, 5.0]))]],
        # two pieces sharing an edge point, the later piece first
        [[RawSeries(a, np.array([30.0, 45.0]), np.array([3.0, 4.0]))],
         [RawSeries(a, np.array([0.0, 15.0, 30.0]), np.array([1.0, 2.0, 7.0]))]],
        # NaN and -0.0 == 0.0 timestamps
        [[RawSeries(a, np.array([-0.0, 0.0, math.nan]), np.array([1.0, 2.0, 3.0])),
          RawSeries(b, np.array([math.nan]), np.array([4.0]))]],
    ]  # fmt: skip
    for pieces in cases:
        for start, end in ((-math.inf, math.inf), (10.0, 40.0)):
            same(merge_series(pieces, start, end), reference(pieces, start, end))
    got = merge_series(cases[0])
    assert got[0].timestamps.tolist() == [0.0, 15.0, 30.0, 45.0]
    assert got[0].values.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert merge_series(cases[1])[1].values.tolist() == [1.0, 2.0, 3.0]
    assert merge_series(cases[1])[0].values.tolist() == [1.0, 2.0]
    assert merge_series(cases[2])[0].values.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert np.signbit(merge_series(cases[3])[0].timestamps).tolist() == [True]


labels_st = st.dictionaries(
    st.sampled_from(["a", "b", "instance"]), st.sampled_from(["x", "y", "z"]), min_size=1
)
times_st = st.lists(st.sampled_from([0.0, -0.0, 15.0, 30.0, 30.5, 45.0, math.nan]), max_size=5)
series_st = st.builds(
    lambda labels, ts: RawSeries(labels, np.array(ts, dtype=np.float64),
                                 np.arange(len(ts), dtype=np.float64) + 0.25),
    labels_st, times_st,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(st.lists(series_st, max_size=6), min_size=1, max_size=3),
    bounds=st.sampled_from([(-math.inf, math.inf), (0.0, 30.0), (15.0, 15.0), (31.0, 44.0)]),
)
def test_merge_series_is_the_point_by_point_join(pieces, bounds):
    same(merge_series(pieces, *bounds), reference(pieces, *bounds))


@settings(max_examples=200, deadline=None)
@given(
    keys=st.lists(labels_st, max_size=8, unique_by=lambda d: tuple(sorted(d.items()))),
    bounds=st.sampled_from([(-math.inf, math.inf), (0.0, 30.0), (31.0, 44.0)]),
)
def test_one_piece_answers_of_rising_series_join_as_the_reference(keys, bounds):
    """The fast path's own ground: unique label sets, strictly rising times of any length."""
    piece = [
        RawSeries(labels, 15.0 * np.arange(i % 4, dtype=np.float64), np.full(i % 4, float(i)))
        for i, labels in enumerate(keys)
    ]
    same(merge_series([piece], *bounds), reference([piece], *bounds))
