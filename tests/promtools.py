"""Run a real Prometheus on loopback for tests, and query its HTTP API.

Usage::

    with running_prometheus(tmp_path, [scrape_job("minerwatch", port)]) as prom:
        prom.wait_for("minerwatch_anomaly_score")
        result = prom.query("minerwatch_anomaly_score")

The server gets a free port and its own storage dir, and is always terminated (killed if
it ignores SIGTERM), even when the test body fails.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from minerwatch.features.schema import METRIC_COLUMNS
from minerwatch.service.state import AgentSnapshot

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"


def require(binary: str, package: str = "prometheus") -> str:
    """Skip the calling test when a Prometheus binary is not installed (CI installs it)."""
    if not Path(binary).exists():
        pytest.skip(f"{binary} not installed (apt-get install {package})")
    return binary


def free_port() -> int:
    """A port free right now on 127.0.0.1 (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape_job(job: str, port: int, **extra: Any) -> dict[str, Any]:
    """A scrape config for one target on loopback, scraped every second."""
    return {
        "job_name": job,
        "scrape_interval": "1s",
        "scrape_timeout": "1s",
        "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
        **extra,
    }


class Prometheus:
    """A started Prometheus; ``url`` is its base URL."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log

    def api(self, endpoint: str, **params: str) -> dict[str, Any]:
        """GET ``/api/v1/<endpoint>``; returns the decoded JSON (errors included)."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{endpoint}?{query}", timeout=5) as r:
                return dict(json.load(r))
        except urllib.error.HTTPError as err:  # 400/422 bodies carry the PromQL error
            return dict(json.load(err))

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)

    def wait_for(self, expr: str, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Poll until ``expr`` returns a non-empty result; fail with the log tail if not."""
        deadline = time.monotonic() + timeout
        while True:
            answer = self.query(expr)
            if answer.get("status") == "success" and answer["data"]["result"]:
                return list(answer["data"]["result"])
            if time.monotonic() > deadline:
                pytest.fail(f"no result for {expr!r} after {timeout}s: {answer}\n{self.tail()}")
            time.sleep(0.2)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def _write_config(
    path: Path,
    scrape_configs: Sequence[dict[str, Any]],
    rule_files: Sequence[Path],
    alertmanagers: Sequence[str] = (),
) -> None:
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": list(scrape_configs),
    }
    if alertmanagers:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": alertmanagers}]}]}
    path.write_text(json.dumps(config, indent=2))  # JSON is valid YAML


@contextmanager
def running_prometheus(
    tmp_path: Path,
    scrape_configs: Sequence[dict[str, Any]],
    rule_files: Sequence[Path] = (),
    startup_timeout: float = 20.0,
    tsdb: Path | None = None,
    retention: str = "1h",
    flags: Sequence[str] = (),
    alertmanagers: Sequence[str] = (),
) -> Iterator[Prometheus]:
    """Start Prometheus with the given scrape configs (on ``tsdb``, default a fresh one),
    sending alerts to ``alertmanagers`` (``host:port``), and yield once ``/-/ready`` answers."""
    binary = require(PROMETHEUS)
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    config = workdir / "prometheus.yml"
    _write_config(config, scrape_configs, rule_files, alertmanagers)

    def command(port: int) -> list[str]:
        return [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tsdb or workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.retention.time={retention}",
            "--log.level=warn",
            *_fast_discovery_flag(binary),
            *flags,
        ]

    with _ready("prometheus", command, workdir / "prometheus.log", startup_timeout) as prom:
        yield prom


@contextmanager
def started_prometheus(root: Path, tsdb: Path, flags: Sequence[str] = ()) -> Iterator[Prometheus]:
    """Prometheus on a backfilled ``tsdb``, scraping nothing (backfilled history is months
    "old": long retention); ``flags`` are added to its command line."""
    with running_prometheus(
        root, (), tsdb=tsdb, retention="10y", startup_timeout=60.0, flags=flags
    ) as prom:
        yield prom


@functools.cache
def _fast_discovery_flag(binary: str) -> tuple[str, ...]:
    """Prometheus applies new targets every 5 s; newer releases can be told to do it sooner."""
    flag = "--scrape.discovery-reload-interval"
    done = subprocess.run([binary, "--help"], capture_output=True, timeout=30, check=False)
    return (f"{flag}=100ms",) if flag.encode() in done.stdout + done.stderr else ()


@contextmanager
def running_alertmanager(
    tmp_path: Path, config_text: str, startup_timeout: float = 20.0
) -> Iterator[Prometheus]:
    """Start Alertmanager on loopback with ``config_text``, clustering off and its own storage;
    yield once ``/-/ready`` answers (``url`` and ``tail()`` as for Prometheus)."""
    binary = require(ALERTMANAGER, "prometheus-alertmanager")
    workdir = tmp_path / "alertmanager"
    workdir.mkdir()
    config = workdir / "alertmanager.yml"
    config.write_text(config_text)

    def command(port: int) -> list[str]:
        return [
            binary,
            f"--config.file={config}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # no gossip: one instance, no port to clash
            "--log.level=warn",
        ]

    with _ready("alertmanager", command, workdir / "alertmanager.log", startup_timeout) as am:
        yield am


@contextmanager
def _ready(
    what: str, command: Callable[[int], list[str]], log: Path, startup_timeout: float
) -> Iterator[Prometheus]:
    """``command(port)`` on a free loopback port, yielded once ``/-/ready`` answers; stopped
    on the way out. free_port() can race with another process, so a start is tried thrice."""
    for _attempt in range(3):
        port = free_port()
        with log.open("wb") as log_fh:
            proc = subprocess.Popen(
                command(port), stdout=log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        server = Prometheus(proc, f"http://127.0.0.1:{port}", log)
        try:
            if _wait_ready(server, startup_timeout):
                yield server
                return
        finally:
            _terminate(proc)
    pytest.fail(f"{what} did not become ready:\n{server.tail()}")


def _wait_ready(prom: Prometheus, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if prom.proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=1) as r:
                if r.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    return False


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def promtool(*args: str, stdin: bytes | None = None, cwd: Path | None = None) -> str:
    """Run promtool; fail the test with its output unless it exits 0."""
    binary = require(PROMTOOL)
    done = subprocess.run(
        [binary, *args], input=stdin, capture_output=True, cwd=cwd, timeout=60, check=False
    )
    output = (done.stdout + done.stderr).decode(errors="replace")
    if done.returncode != 0:
        pytest.fail(f"promtool {' '.join(args)} exited {done.returncode}:\n{output}")
    return output


def full_snapshot(now: float) -> AgentSnapshot:
    """An agent snapshot with every field set, so every metric (and panel) has data."""
    return AgentSnapshot(
        anomaly_score=0.83,
        anomaly_threshold=0.61,
        alert_active=True,
        heavy_work=False,
        alerts_total=3,
        feature_values={"cpu_mean": 97.5, "cpu_std": 1.5, "net_tx_mean": 1200.0},
        feature_contributions={"cpu_mean": 0.7, "cpu_std": 0.2, "net_tx_mean": 0.1},
        model_version="a1b2c3d4",
        model_schema_version=1,
        model_trained_timestamp_seconds=now - 7200.0,
        model_training_windows=4032,
        learning=False,
        learning_progress_ratio=1.0,
        learning_period_seconds=86400.0,
        learning_started_timestamp_seconds=now - 3 * 86400.0,
        top_process_cpu_ratio=0.48,
        telemetry={name: float(i + 1) for i, name in enumerate(METRIC_COLUMNS)},
        last_sample_timestamp_seconds=now - 1.0,
        last_score_timestamp_seconds=now - 2.0,
        sample_duration_seconds=0.012,
        score_duration_seconds=0.003,
        source_up={"cpu": True, "network": True, "processes": False},
        indicator_hits={"miner_name": 1, "pool_port": 0},
        evidence_file="/var/lib/minerwatch/evidence/20261203T081500Z-web-1-1764749700.json",
        samples_total=5000,
        windows_scored_total=800,
        errors_total={"sample": 2, "score": 0},
        retrain_failures_total={"too_few_windows": 1, "rejected": 0},
        dismissed_episodes=2,
        throttled_processes=1,
        throttle_actions_total={"throttle": 1, "release": 0},
        isolated_processes=1,
        ioc_hits={"ioc_0123456789ab": 2},
        new_listen_ports={"tcp": 1, "udp": 0},
        ssh_failed_logins_per_minute=4.0,
        ssh_failed_logins_total=37,
        ssh_new_source_logins_total=1,
        log_truncations_total={"shrunk": 1, "vanished": 0},
        version="1.2.3",
    )


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    """A test proxy in front of a real Prometheus: GET and POST go to :meth:`forward` with
    the request body, nothing is logged; :meth:`upstream_answer` passes a request on."""

    protocol_version = "HTTP/1.1"

    def forward(self, body: bytes | None) -> None:
        raise NotImplementedError

    def upstream_answer(self, upstream: str, body: bytes | None) -> tuple[int, bytes]:
        """Status and body of ``upstream``'s answer to this request (its error answers too)."""
        wanted = ("content-type", "accept")
        headers = {k: v for k, v in self.headers.items() if k.lower() in wanted}
        request = urllib.request.Request(
            upstream + self.path, data=body, headers=headers, method=self.command
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def do_POST(self) -> None:
        self.forward(self.rfile.read(int(self.headers.get("Content-Length", 0))))

    def do_GET(self) -> None:
        self.forward(None)

    def log_message(self, *args: object) -> None:
        pass
