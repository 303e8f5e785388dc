"""Fleet mode when Prometheus misbehaves, through the real ``minerwatch fleet`` commands
against a real Prometheus holding a simulated fleet's recent node_exporter history: answers
cut short (the server stopped while sending), the server's own sample limit, and the server
going away in the middle of ``fleet train``."""

from __future__ import annotations

import csv
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from promtools import PROMETHEUS, PROMTOOL, ProxyHandler, free_port, require, started_prometheus
from test_fleet_e2e import SCRAPES, STEP, T0, _many_series_host

from minerwatch.bench.fleet_backfill import backfill
from minerwatch.bench.simulate import simulate

pytestmark = [pytest.mark.slow, pytest.mark.prometheus]

MINERWATCH = str(Path(sys.executable).with_name("minerwatch"))
HOSTS = 8
INTERVAL = 15.0
HISTORY = 0.1 * 86400.0  # 2.4 hours, ending now: what fleet serve reads is there too


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """(root, tsdb, Prometheus, hosts, start, end): the fleet's last 2.4 hours, backfilled."""
    require(PROMETHEUS)
    promtool = require(PROMTOOL)
    root = tmp_path_factory.mktemp("faults")
    end = float(int(time.time() // INTERVAL) * INTERVAL)
    labels = simulate(
        root / "sim", hosts=HOSTS, train_days=HISTORY / 86400.0, test_days=0.0, seed=11,
        interval=INTERVAL, start=end - HISTORY, procs=False,
    )  # fmt: skip
    backfill(root / "sim", ["train"], root / "tsdb", promtool)
    split = labels["splits"]["train"]
    span = (split["start"] - INTERVAL / 2, split["end"] + INTERVAL / 2)
    with started_prometheus(root, root / "tsdb") as prom:
        yield root, root / "tsdb", prom, sorted(labels["hosts"]), *span


@contextmanager
def prometheus_on_a_copy(tsdb: Path, root: Path, flags: Sequence[str] = ()) -> Iterator[Any]:
    """A Prometheus of the test's own on a copy of ``tsdb`` under ``root``: one it may kill or
    start with a sample limit without touching the module's shared server."""
    copy = root / "tsdb"
    shutil.copytree(tsdb, copy, ignore=shutil.ignore_patterns("lock", "wal", "chunks_head"))
    with started_prometheus(root, copy, flags=flags) as prom:
        yield prom


def mw(*args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MINERWATCH, *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False
    )


def train_args(url: str, start: float, end: float, models: Path) -> list[object]:
    return ["fleet", "train", "--prometheus", url, "--start", start, "--end", end,
            "--models", models]  # fmt: skip


def array_hashes(models: Path) -> dict[str, str]:
    """host -> sha256 of its model's arrays (what training computed, not when)."""
    return {
        m["host"]: m["sha256"]
        for m in (json.loads(p.read_text()) for p in sorted(models.glob("*/meta.json")))
    }


@pytest.fixture(scope="module")
def models(fleet):
    """Models trained straight from the Prometheus, for comparison and for fleet serve."""
    root, _, prom, hosts, start, end = fleet
    folder = root / "models"
    done = mw(*train_args(prom.url, start, end, folder))
    assert done.returncode == 0, done.stderr
    assert sorted(array_hashes(folder)) == hosts
    return folder


class CuttingProxy(http.server.ThreadingHTTPServer):
    """Forwards to Prometheus; while ``cut`` is n > 0, every n-th answer is cut short: its
    headers announce the whole answer, half of it is sent and the connection closed, as when
    Prometheus stops (or a load balancer drops it) in the middle of an answer. A request that
    names host ``broken`` (in a selector, where the name is a regex) is answered 503."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        self.upstream, self.cut, self.answers, self.cuts = upstream, 0, 0, 0
        self.broken = ""
        self.delay = 0.0  # seconds before each answer: a slow server, so a run can be caught
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _CuttingHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _CuttingHandler(ProxyHandler):
    server: CuttingProxy

    def forward(self, body: bytes | None) -> None:
        time.sleep(self.server.delay)
        form = urllib.parse.unquote_plus((body or b"").decode()).replace("\\\\", "\\")
        if self.server.broken and re.escape(self.server.broken) in form:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status, answer = self.upstream_answer(self.server.upstream, body)
        with self.server.lock:
            self.server.answers += 1
            cut = self.server.cut > 0 and self.server.answers % self.server.cut == 0
            self.server.cuts += cut
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        if cut:
            self.wfile.write(answer[: len(answer) // 2])
            self.close_connection = True
            return
        self.wfile.write(answer)


@pytest.fixture
def proxy(fleet) -> Iterator[CuttingProxy]:
    server = CuttingProxy(fleet[2].url)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_train_retries_answers_cut_short_and_says_how_far_it_got(fleet, models, proxy, tmp_path):
    """Every tenth answer cut in the middle: each is asked again, the models are those of
    an unbroken read, and the progress (stderr is not a terminal) is in plain lines."""
    _, _, _, hosts, start, end = fleet
    proxy.cut = 10
    done = mw(*train_args(proxy.url, start, end, tmp_path / "m"), "--concurrency", 1)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "IncompleteRead" not in done.stderr, done.stderr
    assert proxy.cuts > 0
    assert array_hashes(tmp_path / "m") == array_hashes(models)
    lines = re.findall(r"^fleet train: (\d+)/(\d+) hosts done, last (\S+)", done.stderr, re.M)
    assert lines and lines[-1][:2] == (str(HOSTS), str(HOSTS)), done.stderr
    assert len(lines) <= 10  # at each tenth of the fleet, not a line per host of a big one


def test_a_sample_limit_is_met_by_reading_in_halves(fleet, models, tmp_path):
    """Prometheus refuses (422) a query that would load more than --query.max-samples: each
    host is then read in shorter pieces, and trains exactly the model of one read; fleet
    serve's first read of the whole fleet is cut the same way and every host is scored."""
    root, tsdb, _, hosts, start, end = fleet
    # node_cpu_seconds_total holds 2 CPUs x 5 modes x ~577 samples per host: ~5,800
    with prometheus_on_a_copy(tsdb, tmp_path, flags=["--query.max-samples=2000"]) as limited:
        refused = limited.query(
            f'node_cpu_seconds_total{{instance=~"{hosts[0]}:.*"}}[{end - start:.0f}s]'
        )
        assert "too many samples" in refused.get("error", ""), refused
        done = mw(*train_args(limited.url, start, end, tmp_path / "m"))
        assert done.returncode == 0, done.stderr
        assert array_hashes(tmp_path / "m") == array_hashes(models)
        with serving(limited.url, models, tmp_path) as (proc, log, _):
            wait_for(
                proc,
                log,
                "a scored cycle",
                lambda: f"cycle: {HOSTS} hosts scored" in log.read_text(),
            )


@pytest.mark.parametrize("engine", [["--jobs", "1"], ["--dask", "local"]], ids=["one", "dask"])
def test_train_stops_when_prometheus_goes_away_keeping_what_it_trained(fleet, tmp_path, engine):
    """Prometheus killed once the first model is saved: the run does not wait through every
    remaining host's retries (in this process, or on a Dask LocalCluster); it names the hosts
    done and not done, keeps the saved models and exits 1 (an unexpected failure, not the
    user's input)."""
    _, tsdb, _, hosts, start, end = fleet
    models = tmp_path / "m"
    with prometheus_on_a_copy(tsdb, tmp_path) as prom:
        proc = subprocess.Popen(
            [MINERWATCH, *map(str, train_args(prom.url, start, end, models)), *engine,
             "--retries", "1"],  # a server gone stays gone: one retry is enough to say so
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        while proc.poll() is None and not list(models.glob("*/meta.json")):
            time.sleep(0.01)
        prom.proc.kill()
        prom.proc.wait(timeout=10)
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert "Traceback" not in err, err
    m = re.search(
        rf"minerwatch: error: {re.escape(prom.url)} stopped answering after (\d+) of {HOSTS} "
        r"hosts: trained (\d+) \(saved in .*\), not trained (\d+): (.*); to train the rest, "
        r"run the same command with --skip-trained-since \S+ \(exit 1\)$",
        err, re.M,
    )  # fmt: skip
    assert m, err
    assert re.search(rf"^fleet train: \d+/{HOSTS} hosts done, last \S+, 2 failed", err, re.M), err
    tried, trained, missing = int(m[1]), int(m[2]), int(m[3])
    saved = array_hashes(models)
    assert trained == len(saved) >= 1 and trained + missing == HOSTS
    assert tried < HOSTS  # it stopped: the last hosts were not waited for
    assert all(h in out for h in saved)  # the trained hosts' summary table
    named = m[4].split(", ")
    assert set(named) <= set(hosts) - set(saved) and named, m[4]


@contextmanager
def serving(
    url: str, models: Path, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Path, int]]:
    """``minerwatch fleet serve`` every second: (process, log, metrics port); stopped with
    SIGTERM at the end, when it must exit 0 without a traceback."""
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [MINERWATCH, "fleet", "serve", "--prometheus", url, "--models", str(models),
             "--state-dir", str(tmp_path), "--port", str(port), "--address", "127.0.0.1",
             "--interval", "1s", "--retrain-every", "0"],
            stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield proc, log, port
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    text = log.read_text()
    assert code == 0 and "Traceback" not in text, text


def wait_for(
    proc: subprocess.Popen[bytes], log: Path, what: str, check: Callable[[], bool]
) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if check():
                return
        except OSError:  # not listening yet
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no {what} (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def test_serve_keeps_serving_through_answers_cut_short(fleet, models, proxy, tmp_path):
    """A cycle whose answers are cut short is retried; one whose every try is cut is counted
    in minerwatch_errors_total{stage="query"}, and the next cycle scores again: the server
    never exits on it."""
    with serving(proxy.url, models, tmp_path) as (proc, log, port):

        def scored() -> int:
            return log.read_text().count(f"cycle: {HOSTS} hosts scored")

        def query_errors() -> float:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            hit = re.search(r'^minerwatch_errors_total\{stage="query"\} (\S+)$', text, re.M)
            return float(hit[1]) if hit else 0.0

        wait_for(proc, log, "a first scored cycle", lambda: scored() >= 1)
        proxy.cut = 4  # every fourth answer cut: the retries get every query through
        before = scored()
        wait_for(proc, log, "a cycle scored through cut answers", lambda: scored() > before)
        assert proxy.cuts > 0
        proxy.cut = 1  # every answer cut: the cycle fails, counted
        wait_for(proc, log, "a failed cycle counted", lambda: query_errors() >= 1)
        proxy.cut = 0
        before = scored()
        wait_for(proc, log, "a scored cycle after the failure", lambda: scored() > before)
    text = log.read_text()
    assert re.search(
        r"WARNING .*query: .*/api/v1/query: .* failed 5 times; last: IncompleteRead", text
    )


def test_score_skips_a_host_prometheus_keeps_failing_and_writes_the_others(
    fleet, models, proxy, tmp_path
):
    """A host whose every query Prometheus answers 503 (after the client's retries): it is
    named and skipped, the others are scored and written (exit 2), not the whole run lost."""
    _, _, _, hosts, start, end = fleet
    proxy.broken = hosts[1]
    out = tmp_path / "scores.csv"
    done = mw("fleet", "score", "--prometheus", proxy.url, "--start", start, "--end", end,
              "--models", models, "--output", out, "--retries", "2")  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "unexpected failure" not in done.stderr
    assert re.search(rf"^minerwatch: skipped host {hosts[1]}: .* failed 3 times; last: HTTP 503",
                     done.stderr, re.M), done.stderr  # fmt: skip
    assert f"skipped 1: {hosts[1]} (exit 2)" in done.stderr
    with out.open() as fh:
        assert {r["host"] for r in csv.DictReader(fh)} == set(hosts) - {hosts[1]}


def test_export_stops_when_prometheus_goes_away_keeping_what_it_wrote(fleet, tmp_path):
    """Prometheus killed once the first host is written: two hosts in a row find nothing at
    the URL, the run stops (exit 1) naming what was done and what not; the files written
    stay."""
    _, tsdb, _, hosts, start, end = fleet
    out = tmp_path / "export"
    with prometheus_on_a_copy(tsdb, tmp_path) as prom:
        proc = subprocess.Popen(
            [MINERWATCH, "fleet", "export", "--prometheus", prom.url, "--start", str(start),
             "--end", str(end), "--output", str(out), "--retries", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stderr is not None
        # progress lines as they come: a host's line is written as it is begun
        lines = [proc.stderr.readline(), proc.stderr.readline()]
        assert lines[1].startswith(f"fleet export: 2/{HOSTS} "), lines
        prom.proc.kill()
        prom.proc.wait(timeout=10)
        err = "".join(lines) + proc.stderr.read()
        proc.wait(timeout=300)
    assert proc.returncode == 1, err
    assert "Traceback" not in err, err
    m = re.search(
        rf"^minerwatch: error: {re.escape(prom.url)} stopped answering after (\d+) of {HOSTS} "
        r"hosts: exported (\d+) \(\d+ samples -> .*\), not done (\d+): (.*) \(exit 1\)$",
        err, re.M,
    )  # fmt: skip
    assert m, err
    written = sorted(p.name for p in out.glob("*.csv") if not p.name.endswith(".procs.csv"))
    assert int(m[2]) == len(written) >= 1 and int(m[2]) + int(m[3]) == HOSTS
    assert int(m[1]) < HOSTS
    assert hosts[0] + ".csv" in written and hosts[-1] + ".csv" not in written


def test_a_bad_or_unreachable_dask_scheduler_is_named_exit_2(fleet, tmp_path):
    """``--dask`` that is no address, or where no scheduler listens: the flag is named with
    what is wrong (exit 2), as ``train --dask`` does, not an unexpected failure."""
    _, _, prom, _, start, end = fleet
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}
    nobody = f"tcp://127.0.0.1:{free_port()}"
    for address, why in [("bogus", "missing port number"), (nobody, "Timed out trying")]:
        done = subprocess.run(
            [MINERWATCH, *map(str, train_args(prom.url, start, end, tmp_path / "m")),
             "--dask", address],
            capture_output=True, text=True, timeout=120, check=False, env=env,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("minerwatch: error: --dask: expected the address of a reachable "
                               "Dask scheduler, got ") and why in last, done.stderr  # fmt: skip
        assert not (tmp_path / "m").exists()


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """(tsdb, start, end): two hosts of 8 CPUs, 9 NICs and 9 disks, whose metrics fleet mode
    has Prometheus sum (test_fleet_e2e's big hosts)."""
    promtool = require(PROMTOOL)
    root = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(11)
    lines = _many_series_host("big-01", False, rng) + _many_series_host("big-02", False, rng)
    (root / "big.om").write_text("\n".join(lines) + "\n# EOF\n")
    tsdb = root / "tsdb"
    done = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(root / "big.om"), str(tsdb)],
        capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return tsdb, T0 + 60.0, T0 + STEP * (SCRAPES - 1)


def test_sums_over_the_sample_limit_fall_back_to_raw_samples_in_pieces(big, tmp_path):
    """Where Prometheus sums a big host's CPUs and devices, a sum refused for the sample limit
    is read as raw samples instead, in pieces under the limit: the same files are exported."""
    tsdb, start, end = big
    exported = {}
    for limit in ("50000000", "10000"):  # Prometheus' default, and one the sums go over
        root = tmp_path / limit
        root.mkdir()
        with prometheus_on_a_copy(tsdb, root, flags=[f"--query.max-samples={limit}"]) as prom:
            out = root / "export"
            done = mw("fleet", "export", "--prometheus", prom.url, "--start", start,
                      "--end", end, "--output", out)  # fmt: skip
        assert done.returncode == 0, done.stderr
        exported[limit] = {p.name: p.read_text() for p in sorted(out.glob("*.csv"))}
    assert sorted(exported["10000"]) == ["big-01.csv", "big-02.csv"]
    assert exported["10000"] == exported["50000000"]


def test_an_interrupted_train_says_which_hosts_are_saved_and_which_are_left(fleet, proxy, tmp_path):
    """Ctrl-C (SIGINT) once two hosts are done: exit 130, the models fitted so far stay, and
    one line says how many were trained and which hosts were not done. Prometheus answers
    slowly (through the proxy), so the run is still going when the signal comes (on a fast
    machine the whole fleet trained in 1.4 s, before it)."""
    _, _, _, hosts, start, end = fleet
    proxy.delay = 0.1
    models = tmp_path / "m"
    proc = subprocess.Popen(
        [MINERWATCH, *map(str, train_args(proxy.url, start, end, models))],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        # Ctrl-C as at a terminal: a job a shell started in the background (CI's own run)
        # ignores SIGINT, and a Python started that way keeps ignoring it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert proc.stderr is not None
    lines = [proc.stderr.readline() for _ in range(3)]  # "training ...", then hosts 1 and 2
    assert lines[2].startswith(f"fleet train: 2/{HOSTS} hosts done"), lines
    proc.send_signal(signal.SIGINT)
    err = "".join(lines) + proc.stderr.read()
    assert proc.wait(timeout=60) == 130, err
    assert "Traceback" not in err, err
    m = re.search(
        rf"^minerwatch: interrupted after (\d+) of {HOSTS} hosts: trained (\d+) "
        rf"\(saved in {re.escape(str(models))}\), failed 0, not done (\d+): (.*)$",
        err, re.M,
    )  # fmt: skip
    assert m, err
    saved = array_hashes(models)
    assert int(m[1]) == int(m[2]) == len(saved) >= 2 and int(m[3]) == HOSTS - len(saved)
    left, hint = m[4].split("; ")
    assert set(left.split(", ")) == set(hosts) - set(saved)

    # the line says how to finish: the same command trains the hosts left, not the others
    flag = re.fullmatch(r"to train the rest, run the same command with (--skip-trained-since) "
                        r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)", hint)  # fmt: skip
    assert flag, hint
    proxy.delay = 0.0
    rest = mw(*train_args(proxy.url, start, end, models), *flag.groups())
    assert rest.returncode == 0, rest.stderr
    assert f"skipping {len(saved)} hosts with a model saved since {flag[2]}" in rest.stderr
    assert f"training {HOSTS - len(saved)} hosts" in rest.stderr
    finished = array_hashes(models)
    assert sorted(finished) == sorted(hosts)
    assert {h: finished[h] for h in saved} == saved  # the models of the first run untouched
    again = mw(*train_args(proxy.url, start, end, models), *flag.groups())
    assert again.returncode == 0, again.stderr
    assert f"all {HOSTS} hosts have a model saved since {flag[2]}" in again.stderr
    assert array_hashes(models) == finished
