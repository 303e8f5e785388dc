import gzip
import subprocess
import sys

import numpy as np
import pytest

from minerwatch.features import io
from minerwatch.features.errors import InputError
from minerwatch.features.io import read_telemetry

HEADER = "timestamp,host,cpu_percent,load1\n"


def write(tmp_path, text, name="t.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_many_hosts_any_order_duplicates_and_inf(tmp_path):
    p = write(tmp_path, HEADER + "20,b,5,1\n10,a,1,0.1\n0,a,inf,0.2\n10,a,9,9\n0,b,3,1\n")
    fleet = read_telemetry([p])
    a = fleet["a"]
    assert list(a.timestamps) == [0, 10]
    assert np.isnan(a.column("cpu_percent")[0])  # inf is a gap, never a value
    assert a.column("cpu_percent")[1] == 1  # first of the duplicates wins
    assert a.duplicates == 1 and a.nonfinite == 1
    assert list(fleet["b"].timestamps) == [0, 20]


def test_folder_of_files_and_empty_cells(tmp_path):
    write(tmp_path, HEADER + "0,a,1,\n", "1.csv")
    write(tmp_path, HEADER + "60,a,2,0.5\n", "2.csv")
    a = read_telemetry([tmp_path])["a"]
    assert len(a.timestamps) == 2 and np.isnan(a.column("load1")[0])


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("", 1, "empty file"),
        ("timestamp,cpu_percent\n1,2\n", 1, "columns host"),
        (HEADER, 2, "only a header"),
        (HEADER + "0,a,1,1\n10,a,abc,1\n", 3, "a number in 'cpu_percent', got 'abc'"),
        (HEADER + "0,a,1,1\nnoon,a,1,1\n", 3, "(Unix seconds)"),
        (HEADER + "0,a,1\n", 2, "4 fields"),
        (HEADER + "0,,1,1\n", 2, "a host name"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, text, line, fragment):
    p = write(tmp_path, text)
    with pytest.raises(InputError) as err:
        read_telemetry([p])
    assert err.value.line == line
    assert f"{p}:{line}" in str(err.value)
    assert fragment in str(err.value)


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="existing file"):
        read_telemetry([tmp_path / "nope.csv"])


def test_parquet_round_trip(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"timestamp": [0.0, 10.0], "host": ["a", "a"], "cpu_percent": [1.0, 2.0]})
    pq.write_table(table, tmp_path / "t.parquet")
    a = read_telemetry([tmp_path / "t.parquet"])["a"]
    assert list(a.column("cpu_percent")) == [1.0, 2.0]


# -- pandas fast path: same results and errors as the exact csv-module path -------------------


def test_utf8_bom_is_accepted(tmp_path):
    p = tmp_path / "bom.csv"
    p.write_text(HEADER + "0,a,1,1\n10,a,2,2\n", encoding="utf-8-sig")
    a = read_telemetry([p])["a"]
    assert a.columns == ("cpu_percent", "load1")
    assert list(a.column("cpu_percent")) == [1.0, 2.0]


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz"])
def test_gzip_file_says_what_was_expected(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(gzip.compress((HEADER + "0,a,1,1\n").encode()))
    with pytest.raises(InputError) as err:
        read_telemetry([p])
    assert str(p) in str(err.value)
    assert "expected a CSV file of UTF-8 text" in str(err.value)
    assert "gzip" in str(err.value)


@pytest.mark.parametrize(
    ("data", "line", "fragment"),
    [
        ((HEADER + "0,caf\xe9,1,1\n").encode("latin-1"), 2, "0xe9, which is not UTF-8"),
        (HEADER.encode() + bytes(range(256)) * 4, 2, "NUL byte"),
        (b"\x89PNG\r\n\x1a\n" + bytes(64), 1, "0x89, which is not UTF-8"),
        ((HEADER + "0,a,1,1\n").encode("utf-16"), None, "UTF-16"),
    ],
)
def test_binary_or_other_encoding_is_an_input_error(tmp_path, data, line, fragment):
    p = tmp_path / "t.csv"
    p.write_bytes(data)
    with pytest.raises(InputError) as err:
        read_telemetry([p])
    assert err.value.line == line
    assert str(p) in str(err.value) and "expected a CSV file of UTF-8 text" in str(err.value)
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        # pandas would drop the extra field of a first row, pad a short row, skip a line of
        # spaces and read True as 1.0: each is still reported where it is.
        (HEADER + "0,a,1,1,9\n10,a,1,1\n", 2, "4 fields, got 5"),
        (HEADER + "0,a,1,1\n10,a,1\n", 3, "4 fields, got 3"),
        (HEADER + "0,a,1,1\n   \n10,a,1,1\n", 3, "4 fields, got 1"),
        (HEADER + "0,a,1,1\nNA\n", 3, "4 fields, got 1"),
        (HEADER + "0,a,1,True\n10,a,1,False\n", 2, "a number in 'load1', got 'True'"),
        (HEADER + "0,a,1,1\n10, ,1,1\n", 3, "a host name"),
        (HEADER + "0,a,1,1\ninf,a,1,1\n", 3, "a finite timestamp, got inf"),
        (HEADER + "0,a,1,1\n,a,1,1\n", 3, "a finite timestamp, got nan"),
        # blank lines count: the line named is the line in the file
        (HEADER + "0,a,1,1\n\n\n10,a,abc,1\n", 5, "got 'abc'"),
        (HEADER + '0,a,1,1\n10,"a",x,1\n', 3, "got 'x'"),
    ],
)
def test_errors_pandas_would_hide(tmp_path, text, line, fragment):
    p = write(tmp_path, text)
    with pytest.raises(InputError) as err:
        read_telemetry([p])
    assert err.value.line == line
    assert f"{p}:{line}" in str(err.value) and fragment in str(err.value)


def _same(a, b):
    assert a.metrics == b.metrics and a.hosts == b.hosts
    assert np.array_equal(a.codes, b.codes)
    for name in a.numeric:
        assert np.array_equal(a.numeric[name], b.numeric[name], equal_nan=True), name


@pytest.mark.parametrize(
    ("text", "fast"),
    [
        (HEADER + "0,a,1,1\n10,b,,2\n20,a,nan,NULL\n30,b,inf,-Infinity\n", True),
        (HEADER + "0,a,1,1\n\n10,a,1,2\n\n\n", True),  # blank lines, trailing ones too
        (HEADER + "0,a,1,1\n\n10,a,1,\n", False),  # and a gap in the last column
        (HEADER.replace("\n", "\r\n") + "0,a,1,1\r\n10,a,2,2\r\n", True),
        (HEADER + "0, a ,1,1\n10,a,0,1\n20,b ,1,0\n", True),  # hosts are stripped
        (HEADER + "0,a,1,1\n10,a,1,\n", True),  # a gap in the last column
        ("host,cpu_percent,timestamp\na,1,0\nb,nan,10\n", True),
        (HEADER + "0,a, 1_0 ,+nan\n10,a,\u0663,nA\n", False),  # Python float() spellings
        (HEADER + '0,"a",1,1\n10,a,"2",2\n', False),  # quoting
        (HEADER + "0,a,1,1\r10,a,2,2\r", True),
        (HEADER.replace("\n", "\r") + "0,a,1,1\r10,a,2,2\r", False),  # old Mac line ends
    ],
)
def test_fast_path_matches_the_exact_path(tmp_path, text, fast):
    p = write(tmp_path, text)
    assert (io._read_csv_fast(p) is not None) == fast
    _same(io._read_csv(p), io._read_csv_exact(p))


def test_large_file_through_parallel_pandas(tmp_path):
    """Over 5 MB pandas splits the file between threads; errors must survive that."""
    rows = [f"{1767571200 + i * 10}.5,host-{i % 3},{i % 97}.25,{i % 13}" for i in range(240_000)]
    p = write(tmp_path, HEADER + "\n".join(rows) + "\n")
    assert p.stat().st_size > 5 * 1024 * 1024
    fleet = read_telemetry([p])
    assert list(fleet) == ["host-0", "host-1", "host-2"]
    assert len(fleet["host-1"].timestamps) == 80_000 and fleet["host-2"].column("load1")[0] == 2
    rows[0] += ",9"
    rows[150_000] = rows[150_000].rsplit(",", 1)[0]
    p.write_text(HEADER + "\n".join(rows) + "\n")
    with pytest.raises(InputError, match=r"t\.csv:2: expected 4 fields, got 5"):
        read_telemetry([p])
    rows[0] = rows[0].removesuffix(",9")
    p.write_text(HEADER + "\n".join(rows) + "\n")
    with pytest.raises(InputError, match=r"t\.csv:150002: expected 4 fields, got 3"):
        read_telemetry([p])


def test_unreadable_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    p = write(tmp_path, HEADER + "0,a,1,1\n", "t.parquet")
    with pytest.raises(InputError, match=r"t\.parquet: expected a Parquet file"):
        read_telemetry([p])


def test_reading_module_does_not_load_pandas():
    """The agent imports features.io (from_arrays): pandas must load only when a file is read."""
    code = (
        "import sys, minerwatch.features.io, minerwatch.service.retrain;"
        "print(sorted(m for m in ('pandas', 'pyarrow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
