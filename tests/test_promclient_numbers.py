"""The client's number parsing gives the bits Python's ``float`` (and so ``json``) gives.

``parse_series`` reads a ``values`` array with ``np.fromstring`` or, for large answers, with
pandas' C reader; both must agree with ``float`` on every number, or hand it back (None) so
``float`` reads it. Checked on literal tricky numbers, on every way Prometheus and Go print a
float64, and on random text made of number characters.
"""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minerwatch.service.fleet.promclient import (
    _CANARIES,
    CSV_FROM,
    _csv_exact,
    parse_numbers,
    parse_series,
)

#: Both converters: numpy's for small answers, pandas' from CSV_FROM numbers on.
WAYS = {"fromstring": 10**12, "pandas": 0}

TRICKY = [
    "NaN", "+Inf", "-Inf", "0", "-0", "1", "-1", "0.1", "0.30000000000000004",
    "1767571200", "1767571200.123", "1767571199.999", "1e-300", "1e+300", "4.9e-324",
    "5e-324", "2.2250738585072011e-308", "2.2250738585072014e-308", "1.7976931348623157e+308",
    "1.7976931348623159e+308", "9007199254740993", "18446744073709551615",
    "1.700000000000000177635684", "123456789012345678901234567890.123456789e-10",
    "0.000000000000000000000000000000000000000000000000000000000000000000000000000001",
    "8.98846567431158e+307", "1e23", "8.589973e9", "2.5e-05", "-3.4028235677973366e+38",
    "0." + "0" * 299 + "1",  # 1e-300 as Go's FormatFloat(f, 'f', -1, 64) prints it
    "1" + "0" * 300,  # 1e300 likewise
]  # fmt: skip


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def float_bits(texts: list[str]) -> bytes:
    return b"".join(bits(float(t)) for t in texts)


@pytest.mark.parametrize("way", WAYS)
def test_tricky_numbers_parse_to_the_bits_of_float(way):
    got = parse_numbers("\n".join(TRICKY).encode(), len(TRICKY), csv_from=WAYS[way])
    if way == "pandas" and not _csv_exact():
        pytest.skip(f"pandas {pd.__version__} is not exact: numpy parses instead")
    assert got is not None, "plain numbers must take the fast path"
    assert got.tobytes() == float_bits(TRICKY)
    assert np.signbit(got[TRICKY.index("-0")])


def test_pandas_from_3_1_is_exact_and_used():
    """pandas 3.1 parses with fast_float (correctly rounded); older ones must not be used."""
    version = re.match(r"(\d+)\.(\d+)", pd.__version__)
    assert version is not None
    assert _csv_exact() == ((int(version[1]), int(version[2])) >= (3, 1))
    assert "1.700000000000000177635684" in _CANARIES  # pandas 2.2's default misreads it


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("text", ["1e", "e5", "-", "1.2.3", "--1", "1-2", "1e5e", "nan1", "."])
def test_what_float_refuses_is_handed_back(way, text):
    with pytest.raises(ValueError):
        float(text)
    for body in (text, f"1\n{text}", f"{text}\n2"):
        assert parse_numbers(body.encode(), body.count("\n") + 1, csv_from=WAYS[way]) is None


@pytest.mark.parametrize("way", WAYS)
def test_an_empty_line_is_no_number(way):
    assert parse_numbers(b"1\n\n2", 3, csv_from=WAYS[way]) is None
    assert parse_numbers(b"1\n2\n", 3, csv_from=WAYS[way]) is None
    assert parse_numbers(b"", 0, csv_from=WAYS[way]) is not None


def go_formats(x: float) -> list[str]:
    """How Prometheus/Go may print ``x``: shortest digits in 'f', 'e' and 'g' form, %.17g."""
    if np.isnan(x):
        return ["NaN"]
    if np.isinf(x):
        return ["+Inf" if x > 0 else "-Inf"]
    return [
        np.format_float_positional(x, unique=True, trim="-"),
        np.format_float_scientific(x, unique=True, trim="-"),
        repr(x),
        f"{x:.17g}",
    ]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=50))
def test_every_printed_float64_reads_back_exactly(xs):
    texts = [t for x in xs for t in go_formats(x)]
    for way, csv_from in WAYS.items():
        got = parse_numbers("\n".join(texts).encode(), len(texts), csv_from=csv_from)
        if way == "pandas" and not _csv_exact():
            continue
        assert got is not None
        assert got.tobytes() == float_bits(texts)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.text("0123456789eE+-.naNIf", min_size=1, max_size=8), min_size=1, max_size=6))
def test_random_number_text_is_exact_or_handed_back(tokens):
    for csv_from in WAYS.values():
        got = parse_numbers("\n".join(tokens).encode(), len(tokens), csv_from=csv_from)
        if got is not None:
            assert got.tobytes() == float_bits(tokens)


def answer(points: list[tuple[str, str]], metric: dict[str, str] | None = None) -> bytes:
    """A compact matrix answer, as Prometheus writes it (timestamps bare, values quoted)."""
    values = ",".join(f'[{t},"{v}"]' for t, v in points)
    metric_json = json.dumps(metric or {"__name__": "m"}, separators=(",", ":"))
    return (
        '{"status":"success","data":{"resultType":"matrix","result":'
        f'[{{"metric":{metric_json},"values":[{values}]}}]}}}}'
    ).encode()


def reference(payload: bytes) -> list[tuple[bytes, bytes]]:
    """What ``json`` and ``float`` make of each series: (timestamp bits, value bits)."""
    result = json.loads(payload)["data"]["result"]
    return [
        (
            b"".join(bits(float(t)) for t, _ in item["values"]),
            b"".join(bits(float(v)) for _, v in item["values"]),
        )
        for item in result
    ]


@pytest.mark.parametrize("repeat", [1, CSV_FROM])  # below and above the switch to pandas
def test_parse_series_gives_the_bits_of_json(repeat):
    stamps = [f"{1767571200 + 15 * i}.{i % 1000:03d}".rstrip("0").rstrip(".") for i in range(50)]
    points = [(stamps[i % 50], TRICKY[i % len(TRICKY)]) for i in range(max(50, repeat))]
    payload = answer(points)
    series = parse_series(payload)
    got = [(s.timestamps.tobytes(), s.values.tobytes()) for s in series]
    assert got == reference(payload)


def test_parse_series_hands_odd_spellings_to_float():
    """``float`` reads "1_0" and " 2" (json keeps them as strings); the fast path must not
    read them its own way."""
    payload = answer([("1", "1_0"), ("2", " 2"), ("3", "nan"), ("4", "-NaN")])
    series = parse_series(payload)
    assert [(s.timestamps.tobytes(), s.values.tobytes()) for s in series] == reference(payload)
    assert series[0].values[:2].tolist() == [10.0, 2.0]
