"""``fleet export`` into a folder that already holds an export: a host's samples and process
table are replaced together or not at all (a failed write leaves the old pair as it was), and
the table of a host that has no process-exporter data now is removed, not left beside samples
of another time range. Through the real command against a real Prometheus holding two hosts,
``web-1`` whose process-exporter starts half-way and ``web-2`` whose runs throughout."""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from entry import run
from promtools import PROMETHEUS, PROMTOOL, require, started_prometheus
from synth import T0, host_series

from minerwatch.bench.fleet_backfill import PROCESS_PORT, host_openmetrics
from minerwatch.service.terminate import Terminated, terminable

pytestmark = [pytest.mark.prometheus]

STEP = 15.0
HOURS = 3.0
#: web-1's process-exporter scrapes begin here (none before: it was installed then)
PROCS_FROM = T0 + 1.5 * 3600
#: A range where web-1 has no process-exporter data, and one where it has
EARLY = (T0 + 60.0, T0 + 1.25 * 3600)
LATE = (PROCS_FROM + 600.0, T0 + HOURS * 3600 - 60.0)
#: Process-exporter groups beside the builder's two: a table of about as many groups as a
#: real host's, so a host's table is larger than its samples (see test_failed_write...)
GROUPS = [f"worker-pool-{i}-of-the-application-server" for i in range(8)]


def openmetrics(host: str, procs_from: float) -> list[str]:
    """The host's node_exporter and process-exporter scrapes, the latter from ``procs_from``."""
    series = host_series(host, days=HOURS / 24, interval=STEP, seed=len(host) + ord(host[-1]))
    lines = []
    for line in host_openmetrics(series, cores=4, mem_gb=8.0):
        if line.startswith("namedprocess_") and float(line.rsplit(" ", 1)[1]) < procs_from:
            continue
        lines.append(line)
    # process-exporter is the last family the builder writes: more of its series follow it
    ts = series.timestamps[series.timestamps >= procs_from]
    rng = np.random.default_rng(7)
    for group in GROUPS:
        total = 1e4 + np.cumsum(rng.random(len(ts)) * STEP * 0.2)
        labels = f'instance="{host}:{PROCESS_PORT}",job="process",groupname="{group}",mode="user"'
        lines.extend(
            f"namedprocess_namegroup_cpu_seconds_total{{{labels}}} {v!r} {t:.3f}\n"
            for t, v in zip(ts.tolist(), total.tolist(), strict=True)
        )
    return lines


@pytest.fixture(scope="module")
def prom(tmp_path_factory):
    require(PROMETHEUS)
    promtool = require(PROMTOOL)
    root = tmp_path_factory.mktemp("pairs")
    text = root / "fleet.om"
    text.write_text(
        "".join(openmetrics("web-1", PROCS_FROM) + openmetrics("web-2", T0)) + "# EOF\n"
    )
    tsdb = root / "tsdb"
    subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(text), str(tsdb)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    with started_prometheus(root, tsdb) as server:
        yield server


def export(
    url: str, span: tuple[float, float], out: Path, limit: int | None = None
) -> subprocess.CompletedProcess[str]:
    """``minerwatch fleet export`` of ``span``; ``limit``: the largest file it may write, in
    bytes (RLIMIT_FSIZE: a longer write fails with EFBIG, as one on a full disk does)."""
    args = ["fleet", "export", "--prometheus", url, "--start", span[0], "--end", span[1],
            "--output", out]  # fmt: skip
    if limit is None:
        return run(*args)

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [str(Path(sys.executable).with_name("minerwatch")), *map(str, args)],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        preexec_fn=small_files,
    )  # fmt: skip


def contents(folder: Path) -> dict[str, str]:
    """Every file in ``folder`` (hidden temp files too) -> sha256 of its bytes ("folder")."""
    return {
        p.name: "folder" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.iterdir()
    }


def test_a_host_without_process_data_now_loses_the_table_of_an_earlier_export(prom, tmp_path):
    out = tmp_path / "export"
    first = export(prom.url, LATE, out)
    assert first.returncode == 0, first.stderr
    assert {"web-1.csv", "web-1.procs.csv", "web-2.csv", "web-2.procs.csv"} <= set(contents(out))
    # process tables name executables and users: owner only; samples as any telemetry file
    assert (out / "web-2.procs.csv").stat().st_mode & 0o777 == 0o600
    assert (out / "web-2.csv").stat().st_mode & 0o777 == 0o644
    (out / "notes.procs.csv.txt").write_text("mine\n")  # not a table of export's: kept
    (out / "db-9.procs.csv").write_text("timestamp,host\n")  # a host not exported now: kept

    again = export(prom.url, EARLY, out)
    assert again.returncode == 0, again.stderr
    assert sorted(contents(out)) == [
        "db-9.procs.csv", "notes.procs.csv.txt", "web-1.csv", "web-2.csv", "web-2.procs.csv"
    ]  # fmt: skip
    last = again.stderr.strip().splitlines()[-1]
    assert last.endswith(
        f"-> {out}; removed 1 process table of an earlier export (no process-exporter data "
        "now): web-1"
    ), again.stderr
    assert "and 1 process table (" in last, last
    assert (out / "notes.procs.csv.txt").read_text() == "mine\n"

    # web-1's samples are of EARLY, and nothing describes them but themselves
    samples = np.loadtxt(out / "web-1.csv", delimiter=",", skiprows=1, usecols=0)
    assert EARLY[0] <= samples.min() and samples.max() <= EARLY[1]
    (out / "db-9.procs.csv").unlink()  # a table without samples, said by train: not the point
    trained = run("train", out, "--models", tmp_path / "models")
    assert trained.returncode == 0, trained.stderr
    assert "not used" not in trained.stderr, trained.stderr
    assert {line.split()[0] for line in trained.stdout.splitlines()[1:]} == {"web-1", "web-2"}


def test_failed_write_of_the_table_leaves_the_old_pair(prom, tmp_path):
    """The table cannot be written (the file system refuses its size, as a full disk
    would): the host's samples are not replaced either, and no temp file is left."""
    out, scratch = tmp_path / "export", tmp_path / "scratch"
    out.mkdir()
    for name in ("web-1.csv", "web-1.procs.csv"):  # an earlier export's pair (any bytes)
        (out / name).write_text(f"{name} of an earlier export\n")
    before = contents(out)
    # the sizes this export's files will have (the same range, written elsewhere)
    assert export(prom.url, LATE, scratch).returncode == 0
    samples, table = (scratch / "web-1.csv").stat().st_size, (scratch / "web-1.procs.csv")
    assert samples < table.stat().st_size  # precondition of the size limit below

    failed = export(prom.url, LATE, out, limit=samples + 1)
    assert contents(out) == before  # both old files byte for byte, nothing beside them
    # as any failed write: exit 1, one line, now naming the file
    assert failed.returncode == 1, failed.stderr
    assert failed.stderr.strip().splitlines()[-1] == (
        "minerwatch: unexpected failure: OSError: [Errno 27] File too large: "
        f"'{out / 'web-1.procs.csv'}'"
    ), failed.stderr


def test_a_table_that_cannot_be_replaced_leaves_the_samples(prom, tmp_path):
    """A folder in the table's place (the move, not the write, fails): exit 2 naming it, and
    the host's samples are the old ones."""
    out = tmp_path / "export"
    (out / "web-1.procs.csv").mkdir(parents=True)
    (out / "web-1.csv").write_text("web-1.csv of an earlier export\n")
    before = contents(out)
    failed = export(prom.url, LATE, out)
    assert contents(out) == before
    assert failed.returncode == 2, failed.stderr
    assert failed.stderr.strip().splitlines()[-1] == (
        f"minerwatch: error: {out / 'web-1.procs.csv'}: Is a directory"
    ), failed.stderr


def test_a_stop_during_the_moves_waits_until_both_are_done(tmp_path, monkeypatch):
    """SIGTERM landing between the two moves is taken right after both, not between them."""
    from minerwatch.features.atomic import stage
    from minerwatch.service.fleet.commands import land_pair

    for name in ("h.csv", "h.procs.csv"):
        (tmp_path / name).write_text("old\n")
    samples = stage(tmp_path / "h.csv", lambda fh: fh.write("new samples\n"))
    table = stage(tmp_path / "h.procs.csv", lambda fh: fh.write("new table\n"))
    real = os.replace

    def replace_then_stop(src: object, dst: object) -> None:
        real(src, dst)  # type: ignore[arg-type]
        os.kill(os.getpid(), signal.SIGTERM)  # a stop after each move

    monkeypatch.setattr(os, "replace", replace_then_stop)
    counted: list[str] = []
    with terminable(), pytest.raises(Terminated):
        land_pair(
            tmp_path / "h.csv",
            samples,
            tmp_path / "h.procs.csv",
            table,
            lambda: counted.append("h"),
        )
    assert (tmp_path / "h.csv").read_text() == "new samples\n"
    assert (tmp_path / "h.procs.csv").read_text() == "new table\n"
    assert counted == ["h"] and not list(tmp_path.glob(".*"))
