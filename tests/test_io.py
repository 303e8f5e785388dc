import numpy as np
import pytest

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
