"""``fleet train`` in one process reads the next host while this one fits (``read_ahead``):
the same outcomes as reading and fitting one host after the other, in task order, one read
ahead at most, and a host whose read fails is reported while the others train. Against a
real Prometheus on a backfilled simulated fleet."""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from promtools import PROMETHEUS, PROMTOOL, require, started_prometheus

from minerwatch.baseline.store import save_model
from minerwatch.bench.fleet_backfill import backfill
from minerwatch.bench.simulate import simulate
from minerwatch.service.fleet.nodeexporter import HostTelemetry
from minerwatch.service.fleet.promclient import Connection, PromClient
from minerwatch.service.fleet.train import (
    FleetReader,
    Outcome,
    read_ahead,
    run_tasks,
    train_fleet,
    train_task,
)

pytestmark = [pytest.mark.slow, pytest.mark.prometheus]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """(Prometheus URL, hosts, train start, end): 3 hosts, 6 hours at 15 s, backfilled."""
    require(PROMETHEUS)
    promtool = require(PROMTOOL)
    root = tmp_path_factory.mktemp("fleet-train")
    labels = simulate(
        root / "sim", hosts=3, train_days=0.25, test_days=0.0, seed=5, interval=15.0, procs=False
    )
    backfill(root / "sim", ["train"], root / "tsdb", promtool)
    split, half = labels["splits"]["train"], labels["parameters"]["interval"] / 2
    with started_prometheus(root, root / "tsdb") as prom:
        yield prom.url, sorted(labels["hosts"]), split["start"] - half, split["end"] + half


@dataclass(frozen=True)
class LoggedReader(FleetReader):
    """A FleetReader that notes when each read starts (the reads themselves are real)."""

    log: list[tuple[str, str]] = field(default_factory=list, compare=False)

    def read(
        self, host: str, client: PromClient | None = None, procs: bool = False
    ) -> HostTelemetry:
        self.log.append(("start", host))
        return super().read(host, client, procs)


def reader_for(url: str, start: float, end: float, cls: type[FleetReader] = FleetReader):
    return cls(Connection(url, timeout=60.0), start, end, '{job="node"}')


def stored(outcomes: list[Outcome], folder: Path) -> dict[str, str]:
    """Host -> the sha256 of its saved model's arrays (bit-for-bit identity)."""
    out = {}
    for o in outcomes:
        assert o.model is not None, o.error
        path = save_model(folder, o.model)
        out[o.host] = json.loads((path / "meta.json").read_text())["sha256"]
    return out


def test_read_ahead_gives_the_sequential_outcomes_in_task_order(fleet, tmp_path):
    url, hosts, start, end = fleet
    reader = reader_for(url, start, end)
    tasks = [*hosts, hosts[0]]  # a host twice, as a retry or a repeated benchmark would
    one_by_one = [train_task(reader, h, 60.0, 60.0, None) for h in tasks]
    ahead = list(read_ahead(tasks, reader, 60.0, 60.0, None))
    assert [o.host for o in ahead] == tasks
    assert stored(ahead[:3], tmp_path / "a") == stored(one_by_one[:3], tmp_path / "b")
    for a, b in zip(ahead, one_by_one, strict=True):
        assert a.model is not None and b.model is not None
        assert a.model.threshold == b.model.threshold and a.absent == b.absent
        assert a.model.meta["windows"] == b.model.meta["windows"] > 0
        assert a.seconds > 0


def test_the_next_host_is_read_during_the_fit_and_no_further(fleet):
    url, hosts, start, end = fleet
    reader = reader_for(url, start, end, LoggedReader)
    assert isinstance(reader, LoggedReader)
    tasks = hosts * 2
    started_when_yielded = []
    for i, outcome in enumerate(run_tasks(tasks, reader, 60.0, 60.0, None, 1, None)):
        assert outcome.host == tasks[i] and outcome.model is not None
        started_when_yielded.append(len(reader.log))
        if i + 1 < len(tasks):  # the next read began before this host's outcome came back
            assert ("start", tasks[i + 1]) in reader.log[: i + 2]
    # at most one read ahead: when outcome i comes back, reads 0..i+1 have started, no more
    assert started_when_yielded == [min(i + 2, len(tasks)) for i in range(len(tasks))]


def test_a_host_that_cannot_be_read_is_reported_and_the_others_train(fleet, tmp_path):
    url, hosts, start, end = fleet
    reader = reader_for(url, start, end)
    tasks = [hosts[0], "ghost-01", hosts[1], hosts[2]]
    seen: list[tuple[int, int, str, int]] = []
    out = train_fleet(reader, tasks, tmp_path / "m", progress=lambda *done: seen.append(done))
    # progress in task order, with the failures so far
    assert seen == [(i + 1, 4, h, int(i >= 1)) for i, h in enumerate(tasks)]
    by_host = {o.host: o for o in out}
    ghost = by_host.pop("ghost-01")
    assert ghost.model is None and not ghost.transient and ghost.attempts == 1
    assert "node_exporter series in the time range" in ghost.error
    assert all(o.model is not None and o.path for o in by_host.values())
    assert sorted(by_host) == hosts


class FlakyProxy(http.server.ThreadingHTTPServer):
    """Forwards to Prometheus, but answers 503 to every request that names host ``broken``
    (in a selector, where the host's name is a regex)."""

    def __init__(self, upstream: str, broken: str) -> None:
        self.upstream, self.broken, self.refused = upstream, re.escape(broken), 0
        super().__init__(("127.0.0.1", 0), _ProxyHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: FlakyProxy

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.server.broken in urllib.parse.unquote_plus(body.decode()).replace("\\\\", "\\"):
            self.server.refused += 1
            self.send_response(503)
            self.end_headers()
            return
        request = urllib.request.Request(
            self.server.upstream + self.path, data=body, headers=dict(self.headers)
        )
        with urllib.request.urlopen(request, timeout=60) as r:
            answer, status = r.read(), r.status
        self.send_response(status)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky(fleet) -> Iterator[FlakyProxy]:
    url, hosts, _, _ = fleet
    proxy = FlakyProxy(url, hosts[1])
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    yield proxy
    proxy.shutdown()
    proxy.server_close()


@dataclass(frozen=True)
class QuickRetries(FleetReader):
    """The client's retries as in production, with shorter waits between them."""

    def client(self) -> PromClient:
        return PromClient(self.connection, concurrency=self.concurrency, backoff=0.01)


def test_a_transient_read_failure_is_retried_once_then_reported(fleet, flaky, tmp_path):
    _, hosts, start, end = fleet
    reader = QuickRetries(Connection(flaky.url, timeout=60.0), start, end, '{job="node"}')
    t0 = time.perf_counter()
    out = {o.host: o for o in train_fleet(reader, hosts, tmp_path / "m")}
    assert time.perf_counter() - t0 < 300
    bad = out.pop(hosts[1])
    assert bad.model is None and bad.transient and bad.attempts == 2
    assert "failed 5 times" in bad.error
    assert flaky.refused == 2 * 5  # every attempt of the client, on both tries of the host
    assert all(o.model is not None and o.attempts == 1 for o in out.values())


def test_replayed_answers_train_the_models_prometheus_gives(fleet, tmp_path):
    """``bench.replay`` (the fleet benchmark's stand-in for a Prometheus on another machine):
    models trained from its recording are bit-identical to those read from Prometheus, and a
    request never recorded is refused, not made up."""
    from minerwatch.bench.fleet_train import start_replay

    url, hosts, start, end = fleet
    direct = [train_task(reader_for(url, start, end), h, 60.0, 60.0, None) for h in hosts]
    recorder, rec_url = start_replay(tmp_path / "answers", url)
    try:
        for h in hosts:
            reader_for(rec_url, start, end).read(h)
    finally:
        recorder.terminate()
        recorder.wait(timeout=30)
    assert len(list((tmp_path / "answers").iterdir())) > len(hosts)
    replay, rep_url = start_replay(tmp_path / "answers", None)
    try:
        again = [train_task(reader_for(rep_url, start, end), h, 60.0, 60.0, None) for h in hosts]
        assert stored(again, tmp_path / "b") == stored(direct, tmp_path / "a")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{rep_url}/api/v1/labels?unseen=1", timeout=10)
        assert refused.value.code == 404
        assert b"not recorded: GET /api/v1/labels?unseen=1" in refused.value.read()
    finally:
        replay.terminate()
        replay.wait(timeout=30)


def test_replay_refuses_record_without_upstream(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "minerwatch.bench.replay", "--store", str(tmp_path), "--record"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--record and --upstream go together" in done.stderr
