"""Odd but valid telemetry through ``minerwatch train`` and ``score``: the same model and the
same scores as the clean files, or a refusal naming the file (datasets/README.md, file rules)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from entry import run

from minerwatch.features import io


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small simulated fleet with process tables, its models and the clean test's scores."""
    root = tmp_path_factory.mktemp("fleet")
    data = root / "data"
    r = run(
        "simulate", "--hosts", 2, "--train-days", 1, "--test-days", 0.5, "--seed", 1,
        "--output", data,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = run("train", data / "train", "--models", root / "models")
    assert r.returncode == 0, r.stderr
    r = run("score", data / "test", "--models", root / "models", "--output", root / "base.csv")
    assert r.returncode == 0, r.stderr
    return {"data": data, "models": root / "models", "scores": root / "base.csv"}


def _resend(folder: Path) -> None:
    """Add a chunk of each process table again in a second file, as a shipper re-sending it
    (or two overlapping exports of one host) leaves it."""
    for table in sorted(folder.glob("*.procs.csv")):
        lines = table.read_text().splitlines(keepends=True)
        again = folder / table.name.replace(".procs.csv", "-resent.procs.csv")
        again.write_text(lines[0] + "".join(lines[len(lines) // 3 : 2 * len(lines) // 3]))


def test_process_rows_sent_twice_score_as_once(fleet: dict[str, Path], tmp_path: Path) -> None:
    test = tmp_path / "test"
    shutil.copytree(fleet["data"] / "test", test)
    _resend(test)
    out = tmp_path / "scores.csv"
    r = run("score", test, "--models", fleet["models"], "--output", out)
    assert r.returncode == 0, r.stderr
    assert out.read_text() == fleet["scores"].read_text()


def test_process_rows_sent_twice_train_as_once(fleet: dict[str, Path], tmp_path: Path) -> None:
    train = tmp_path / "train"
    shutil.copytree(fleet["data"] / "train", train)
    _resend(train)
    r = run("train", train, "--models", tmp_path / "models")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "scores.csv"
    r = run("score", fleet["data"] / "test", "--models", tmp_path / "models", "--output", out)
    assert r.returncode == 0, r.stderr
    assert out.read_text() == fleet["scores"].read_text()


def test_parquet_with_datetime_timestamps(fleet: dict[str, Path], tmp_path: Path) -> None:
    """pandas writes its datetime64 columns as Parquet timestamps (nanoseconds since the epoch,
    not seconds): read as times, with or without a time zone, samples and process rows alike."""
    pytest.importorskip("pyarrow")
    test = tmp_path / "test"
    test.mkdir()
    for path in sorted((fleet["data"] / "test").glob("*.csv")):
        frame = pd.read_csv(path, keep_default_na=False, na_values={"gc_cpu_percent": [""]})
        seconds = frame["timestamp"].astype(np.float64)
        if path.name.endswith(".procs.csv"):  # milliseconds in a time zone
            ms = (seconds * 1000).round().astype(np.int64)
            frame["timestamp"] = pd.to_datetime(ms, unit="ms", utc=True).dt.tz_convert(
                "Europe/Berlin"
            )
        else:  # naive UTC nanoseconds, as pd.to_datetime(unix_seconds, unit="s") gives
            frame["timestamp"] = pd.to_datetime(seconds, unit="s")
        frame.to_parquet(test / path.name.replace(".csv", ".parquet"), index=False)
    out = tmp_path / "scores.csv"
    r = run("score", test, "--models", fleet["models"], "--output", out)
    assert r.returncode == 0, r.stderr
    assert "none of its" not in r.stderr  # the process rows matched their samples
    got = pd.read_csv(out)
    want = pd.read_csv(fleet["scores"])
    assert got[["host", "window_start", "alert"]].equals(want[["host", "window_start", "alert"]])
    assert np.allclose(got["score"], want["score"], atol=1e-6)


def test_process_table_with_empty_cells_is_read_by_pandas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty ``gc_cpu_percent`` (every process but a JVM's) is no reason for the exact reader,
    which takes minutes on a month of process rows: pandas reads it, the same way."""
    table = tmp_path / "h.procs.csv"
    table.write_text(
        "timestamp,host,pid,name,exe,user,cpu_percent,gc_cpu_percent\n"
        "10.5,h,1,java,/usr/bin/java,app,250.0,20.0\n"
        "10.5,h,,sshd,/usr/sbin/sshd,root,1.5,\n"
        "20.5,h,2,cron,/usr/sbin/cron,root,,\n"
    )
    exact = io.read_procs(table)["h"]

    def refused(path: Path) -> None:
        raise AssertionError(f"{path} went to the exact reader")

    monkeypatch.setattr(io, "read_procs", refused)
    fast = io._read_procs(table)["h"]
    for name in ("timestamps", "pids", "cpu", "gc"):
        assert np.array_equal(getattr(fast, name), getattr(exact, name), equal_nan=True), name
    assert fast.names.tolist() == ["java", "sshd", "cron"]


@pytest.mark.parametrize("suffix", [".procs.csv", ".procs.parquet"])
def test_process_names_are_held_once(tmp_path: Path, suffix: str) -> None:
    """A month of process rows repeats a few dozen names millions of times: each distinct
    name, exe and user is one string object, not one per row (0.5 GB per host otherwise)."""
    frame = pd.DataFrame(
        {
            "timestamp": np.repeat(np.arange(500) * 10.0, 2),
            "host": "h",
            "pid": np.tile([10, 20], 500),
            "name": np.tile(["postgres", "sshd"], 500),
            "exe": np.tile(["/usr/lib/postgresql/14/bin/postgres", "/usr/sbin/sshd"], 500),
            "user": np.tile(["postgres", "root"], 500),
            "cpu_percent": 1.5,
        }
    )
    table = tmp_path / f"h{suffix}"
    if suffix.endswith(".parquet"):
        pytest.importorskip("pyarrow")
        frame.to_parquet(table, index=False)
    else:
        frame.to_csv(table, index=False)
    rows = io._read_procs(table)["h"]
    assert len(rows) == 1000
    for column in (rows.names, rows.exes, rows.users):
        assert len({id(value) for value in column}) == 2


def _on_a_terminal(*args: object) -> tuple[int, str]:
    """``minerwatch ARGS`` with stderr on a terminal, as an operator runs it; (exit, stderr)."""
    import os
    import pty
    import subprocess

    from entry import ENTRY

    main, child = pty.openpty()
    proc = subprocess.Popen(
        [*ENTRY, *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=child,
    )
    os.close(child)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    return proc.wait(timeout=120), b"".join(chunks).decode("utf-8", "replace")


def test_reading_shows_progress_on_a_terminal(fleet: dict[str, Path], tmp_path: Path) -> None:
    """A month of a fleet's files takes minutes to read: on a terminal, train and score say
    which file they read before the per-host bar starts (silent in logs, as every bar)."""
    code, shown = _on_a_terminal(
        "score", fleet["data"] / "test", "--models", fleet["models"], "--output", tmp_path / "s.csv"
    )
    assert code == 0, shown
    assert "read [" in shown and "1/4 db-01.procs.csv" in shown and "4/4" in shown, shown
    code, shown = _on_a_terminal("train", fleet["data"] / "test", "--models", tmp_path / "m")
    assert code == 0, shown
    assert "read [" in shown and "4/4" in shown and "train [" in shown, shown
    r = run("score", fleet["data"] / "test", "--models", fleet["models"], "--output", "-")
    assert "read [" not in r.stderr  # not a terminal


@pytest.mark.parametrize("command", ["collect", "train", "score", "report", "evaluate"])
def test_batch_help_shows_every_default(command: str) -> None:
    """Every optional flag that takes a value says what happens without it."""
    import re

    r = run(command, "--help")
    assert r.returncode == 0, r.stderr
    usage, _, options = r.stdout.partition("options:")
    usage = " ".join(usage.split())
    entries = re.split(r"\n  (?=-)", options)
    for entry in entries[1:]:
        flag = re.match(r"(--[\w-]+) ([A-Z_]+)", entry)
        if flag is None or f"[{flag[1]}" not in usage:
            continue  # a switch, or required
        assert "(default:" in " ".join(entry.split()), (command, entry)


def test_score_says_when_a_process_table_is_missing(fleet: dict[str, Path], tmp_path: Path) -> None:
    """A model that learnt the host's processes, given its samples without their table (left
    behind when copying the files): scored, but not silently as if nothing were missing."""
    test = tmp_path / "test"
    shutil.copytree(fleet["data"] / "test", test)
    (test / "web-01.procs.csv").unlink()
    r = run("score", test, "--models", fleet["models"], "--output", tmp_path / "s.csv")
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if "no process table" in line]
    assert len(notes) == 1 and "host web-01" in notes[0], r.stderr


def test_timestamps_in_milliseconds_are_refused_naming_the_line(
    fleet: dict[str, Path], tmp_path: Path
) -> None:
    """Many exporters write milliseconds; read as seconds the samples are hours apart."""
    rows = [f"{1767571200000 + 10000 * i},web-01,{5 + i % 3}" for i in range(40)]
    data = tmp_path / "web-01.csv"
    data.write_text("timestamp,host,cpu_percent\n" + "\n".join(rows) + "\n")
    for r in (
        run("train", data, "--models", tmp_path / "m"),
        run("score", data, "--models", fleet["models"], "--output", tmp_path / "s.csv"),
    ):
        assert r.returncode == 2, r.stderr
        assert f"{data}:2: expected a timestamp in Unix seconds" in r.stderr, r.stderr
        assert "got 1767571200000: milliseconds" in r.stderr and "Traceback" not in r.stderr


def test_compressed_file_in_a_folder_is_not_skipped_silently(
    fleet: dict[str, Path], tmp_path: Path
) -> None:
    """A rotated ``web-01.csv.gz`` beside ``db-01.csv``: its host is not left out unsaid."""
    import gzip

    train = tmp_path / "train"
    shutil.copytree(fleet["data"] / "train", train)
    samples = train / "web-01.csv"
    (train / "web-01.csv.gz").write_bytes(gzip.compress(samples.read_bytes()))
    samples.unlink()
    r = run("train", train, "--models", tmp_path / "m")
    assert r.returncode == 2, r.stderr
    assert f"{train / 'web-01.csv.gz'}: expected plain .csv or .parquet" in r.stderr, r.stderr
    assert "gunzip" in r.stderr and not (tmp_path / "m").exists()


def test_report_reads_a_scores_file_a_spreadsheet_saved(
    fleet: dict[str, Path], tmp_path: Path
) -> None:
    """Opened and saved as "CSV UTF-8": a byte-order mark and CRLF line ends. The same report;
    a Latin-1 file is refused naming its line, not an unexpected failure."""
    saved = tmp_path / "scores.csv"
    saved.write_bytes(b"\xef\xbb\xbf" + fleet["scores"].read_bytes().replace(b"\n", b"\r\n"))
    reports = []
    for scores in (fleet["scores"], saved):
        out = tmp_path / f"{len(reports)}.md"
        r = run("report", "--scores", scores, "--format", "md", "--output", out)
        assert r.returncode == 0, r.stderr
        reports.append(out.read_text().replace(saved.name, "").replace(fleet["scores"].name, ""))
    assert reports[0] == reports[1]
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"host,window_start,window_end,score,threshold,alert,top_features\n"
                      b"caf\xe9,0,60,0.9,0.5,1,\n")  # fmt: skip
    r = run("report", "--scores", latin, "--format", "md", "--output", tmp_path / "r.md")
    assert r.returncode == 2, r.stderr
    assert f"{latin}:2: expected a scores file of UTF-8 text" in r.stderr, r.stderr
