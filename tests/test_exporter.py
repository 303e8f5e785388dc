"""The exporter over real HTTP and real files: values, omissions, paths, textfile, linting."""

from __future__ import annotations

import dataclasses
import gzip
import http.client
import inspect
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from promtools import PROMTOOL, free_port, full_snapshot, promtool

from minerwatch.bench.scrape_load import running_agent
from minerwatch.features.schema import METRIC_COLUMNS
from minerwatch.features.sources import SOURCES
from minerwatch.service import httpserver
from minerwatch.service.config import ExporterConfig
from minerwatch.service.evidence import EvidenceWriter
from minerwatch.service.exporter import (
    METRICS,
    TEXTFILE_NAME,
    Exporter,
    ExpositionCache,
    SnapshotCollector,
    write_textfile,
)
from minerwatch.service.httpserver import REQUEST_SLOTS, REQUEST_TIMEOUT_S, accepts_gzip
from minerwatch.service.state import ERROR_STAGES, AgentSnapshot

NOW = 1_700_000_000.0


@pytest.fixture
def exporter():
    exp = Exporter(port=0, address="127.0.0.1", registry=CollectorRegistry(), clock=lambda: NOW)
    exp.start()
    yield exp
    exp.stop()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def scrape(exp: Exporter) -> str:
    status, _, body = get(f"http://127.0.0.1:{exp.port}/metrics")
    assert status == 200
    return body.decode()


def minerwatch_families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text) if f.name.startswith("minerw")}


def test_full_snapshot_exports_every_metric_with_its_values(exporter):
    snap = full_snapshot(NOW)
    exporter.update(snap)
    value = exporter.registry.get_sample_value
    assert value("minerwatch_anomaly_score") == snap.anomaly_score
    assert value("minerwatch_anomaly_threshold") == snap.anomaly_threshold
    assert value("minerwatch_alert_active") == 1.0
    assert value("minerwatch_heavy_work") == 0.0
    assert value("minerwatch_dismissed_episodes") == 2.0
    assert value("minerwatch_alerts_total") == snap.alerts_total
    assert value("minerwatch_feature_value", {"feature": "cpu_mean"}) == 97.5
    assert value("minerwatch_feature_contribution", {"feature": "cpu_std"}) == 0.2
    info = {"schema_version": "1", "model_version": snap.model_version}
    assert value("minerwatch_model_info", info) == 1.0
    assert value("minerwatch_model_age_seconds") == NOW - snap.model_trained_timestamp_seconds
    assert value("minerwatch_model_training_windows") == snap.model_training_windows
    assert value("minerwatch_learning") == 0.0
    assert value("minerwatch_learning_progress_ratio") == 1.0
    assert value("minerwatch_top_process_cpu_ratio") == snap.top_process_cpu_ratio
    for column in METRIC_COLUMNS:
        assert value("minerwatch_telemetry", {"metric": column}) == snap.telemetry[column]
    assert value("minerwatch_source_up", {"source": "processes"}) == 0.0
    assert value("minerwatch_source_up", {"source": "cpu"}) == 1.0
    assert value("minerwatch_errors_total", {"stage": "sample"}) == 2.0
    assert value("minerwatch_indicator_hits", {"indicator": "miner_name"}) == 1.0
    assert value("minerwatch_throttle_actions_total", {"action": "throttle"}) == 1.0
    assert value("minerwatch_isolated_processes") == 1.0
    assert value("minerwatch_ioc_hits", {"ioc": "ioc_0123456789ab"}) == 2.0
    assert value("minerwatch_build_info", {"version": "1.2.3"}) == 1.0

    families = minerwatch_families(scrape(exporter))
    exposed = {s.name for f in families.values() for s in f.samples}
    # the web config's reload gauge is exported only with a web config (test_webconfig.py)
    with_web_config = {"minerwatch_web_config_last_reload_successful"}
    assert exposed == set(METRICS) - with_web_config, "METRICS must list what a snapshot exposes"
    for family in families.values():
        (exposed_name,) = {s.name for s in family.samples}
        assert family.documentation == METRICS[exposed_name]
        assert (family.type == "counter") == exposed_name.endswith("_total"), exposed_name


def test_fresh_agent_exports_no_score_no_model_and_no_nan(exporter):
    exporter.update(AgentSnapshot(feature_values={"cpu_mean": math.nan}))
    text = scrape(exporter)
    assert "NaN" not in text
    names = {s.name for f in minerwatch_families(text).values() for s in f.samples}
    for missing in (
        "minerwatch_anomaly_score",
        "minerwatch_anomaly_threshold",
        "minerwatch_model_info",
        "minerwatch_model_age_seconds",
        "minerwatch_feature_value",
        "minerwatch_last_sample_timestamp_seconds",
        "minerwatch_top_process_cpu_ratio",
    ):
        assert missing not in names
    assert exporter.registry.get_sample_value("minerwatch_learning") == 1.0
    assert exporter.registry.get_sample_value("minerwatch_samples_total") == 0.0


def test_only_metrics_and_a_landing_page_are_served(exporter):
    exporter.update(full_snapshot(NOW))
    base = f"http://127.0.0.1:{exporter.port}"
    for path in ("/metric", "/metrics/x", "/favicon.ico", "/index.html", "/-/healthy"):
        assert get(base + path)[0] == 404, path
    status, headers, body = get(base + "/metrics?name[]=ignored")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert b"minerwatch_anomaly_score 0.83" in body
    status, headers, body = get(base + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'<a href="/metrics">' in body and b"minerwatch_" not in body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
def test_methods_other_than_get_and_head_are_refused(exporter, method):
    for path in ("/metrics", "/"):
        conn = http.client.HTTPConnection("127.0.0.1", exporter.port, timeout=5)
        conn.request(method, path, body=b"x=1" if method in ("POST", "PUT") else None)
        response = conn.getresponse()
        assert response.status == 405, (method, path)
        assert response.getheader("Allow") == "GET, HEAD"
        assert response.getheader("Connection") == "close"
        assert b"minerwatch_" not in response.read()
        conn.close()


def test_a_scrape_only_sends_the_exposition_rendered_once_per_snapshot():
    exp = Exporter(port=0, address="127.0.0.1", registry=CollectorRegistry(), render_max_age=3600)
    exp.start()
    try:
        exp.update(full_snapshot(NOW))
        url = f"http://127.0.0.1:{exp.port}/metrics"
        openmetrics = {"Accept": "application/openmetrics-text;version=1.0.0"}
        plain = [get(url)[2] for _ in range(10)]
        zipped = [get(url, {"Accept-Encoding": "gzip"})[2] for _ in range(10)]
        om = [get(url, {**openmetrics, "Accept-Encoding": "gzip"})[2] for _ in range(10)]
        assert len(set(plain)) == len(set(zipped)) == len(set(om)) == 1, "the same bytes"
        assert gzip.decompress(zipped[0]) == plain[0]
        assert gzip.decompress(om[0]).rstrip().endswith(b"# EOF")
        assert exp._cache.renders == 2, "one render per format (text, OpenMetrics), not per scrape"
        exp.update(dataclasses.replace(full_snapshot(NOW), anomaly_score=0.25))
        assert b"minerwatch_anomaly_score 0.25" in get(url)[2], "a new snapshot is rendered anew"
        assert exp._cache.renders == 3
    finally:
        exp.stop()


def test_a_cached_exposition_is_rendered_again_once_it_is_older_than_its_max_age():
    now, ticks = [NOW], [0.0]
    registry = CollectorRegistry()
    snapshot = AgentSnapshot(model_version="m", model_trained_timestamp_seconds=NOW - 10)
    registry.register(SnapshotCollector(lambda: snapshot, clock=lambda: now[0]))
    cache = ExpositionCache(registry, lambda: snapshot, max_age=1.0, clock=lambda: ticks[0])

    def age() -> bytes:
        body, _ = cache.get(None, compress=False)
        return next(line for line in body.splitlines() if line.startswith(b"minerwatch_model_age"))

    assert age() == b"minerwatch_model_age_seconds 10.0"
    now[0] += 50  # the agent loop is stuck: no new snapshot
    ticks[0] += 0.5
    assert age() == b"minerwatch_model_age_seconds 10.0", "within max_age: the cached bytes"
    ticks[0] += 0.6
    assert age() == b"minerwatch_model_age_seconds 60.0", "older than max_age: rendered again"
    assert cache.renders == 2


def test_connections_beyond_the_limit_get_503_and_are_counted():
    exp = Exporter(port=0, address="127.0.0.1", registry=CollectorRegistry(), max_connections=2)
    exp.start()
    idle = []
    try:
        for _ in range(2):  # two silent connections hold both slots
            idle.append(socket.create_connection(("127.0.0.1", exp.port), timeout=5))
        time.sleep(0.2)
        status, headers, body = get(f"http://127.0.0.1:{exp.port}/metrics")
        assert status == 503 and headers["Retry-After"] == "1"
        assert body == b"Too many connections, try again.\n"
        value = exp.registry.get_sample_value
        assert value("minerwatch_errors_total", {"stage": "exporter"}) >= 1
        idle.pop().close()  # a slot frees up as soon as the server sees the close
        deadline = time.monotonic() + 5
        while get(f"http://127.0.0.1:{exp.port}/metrics")[0] != 200:
            assert time.monotonic() < deadline, "the freed slot was never reused"
            time.sleep(0.05)
    finally:
        for sock in idle:
            sock.close()
        exp.stop()


def test_stalled_requests_cannot_hold_the_request_slots(exporter):
    """Clients that send half a request and stop lose their slot after REQUEST_TIMEOUT_S."""
    stalled = []
    try:
        for _ in range(REQUEST_SLOTS + 2):
            sock = socket.create_connection(("127.0.0.1", exporter.port), timeout=10)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line: unfinished
            stalled.append(sock)
        time.sleep(0.2)
        started = time.monotonic()
        assert get(f"http://127.0.0.1:{exporter.port}/metrics")[0] == 200
        assert time.monotonic() - started < REQUEST_TIMEOUT_S + 2
        for sock in stalled:  # each was closed unanswered, not kept
            assert sock.recv(65536) == b""
    finally:
        for sock in stalled:
            sock.close()


def test_a_silent_connection_is_closed_after_the_timeout(exporter, monkeypatch):
    monkeypatch.setattr(httpserver._Handler, "timeout", 0.5)
    with socket.create_connection(("127.0.0.1", exporter.port), timeout=5) as sock:
        started = time.monotonic()
        assert sock.recv(1) == b""
        assert time.monotonic() - started < 3


def test_accept_encoding_parsing():
    assert accepts_gzip("gzip") and accepts_gzip("deflate, gzip;q=0.5") and accepts_gzip("GZIP")
    assert not accepts_gzip("gzip;q=0") and not accepts_gzip("gzip; q=0.000")
    assert not accepts_gzip("identity") and not accepts_gzip("") and not accepts_gzip(None)


def test_standard_process_and_platform_metrics_are_on_the_endpoint(exporter):
    families = {f.name for f in text_string_to_metric_families(scrape(exporter))}
    assert "python_info" in families
    if Path("/proc/self/stat").exists():
        assert "process_cpu_seconds" in families


def test_global_registry_with_standard_collectors_is_accepted():
    from prometheus_client import REGISTRY

    exp = Exporter(port=0, registry=REGISTRY)
    try:
        exp.update(AgentSnapshot(anomaly_score=0.5))
        assert REGISTRY.get_sample_value("minerwatch_anomaly_score") == 0.5
    finally:
        REGISTRY.unregister(exp._collector)


def test_head_request_gets_headers_only(exporter):
    request = urllib.request.Request(f"http://127.0.0.1:{exporter.port}/metrics", method="HEAD")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200 and response.read() == b""
        assert int(response.headers["Content-Length"]) > 0


def test_gzip_and_openmetrics_negotiation(exporter):
    exporter.update(full_snapshot(NOW))
    url = f"http://127.0.0.1:{exporter.port}/metrics"
    status, headers, body = get(url, {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert b"minerwatch_anomaly_score" in gzip.decompress(body)
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    status, headers, body = get(url, {"Accept": accept})
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_scrapes_never_mix_two_snapshots(exporter):
    """Updates race with scrapes; each scrape must come from one snapshot (threshold = score/2)."""
    stop = threading.Event()

    def churn():
        i = 0
        while not stop.is_set():
            score = (i % 1000) / 1000
            exporter.update(AgentSnapshot(anomaly_score=score, anomaly_threshold=score / 2))
            i += 1

    writer = threading.Thread(target=churn)
    writer.start()
    try:
        seen = set()
        for _ in range(40):
            values = {
                s.name: s.value
                for f in text_string_to_metric_families(scrape(exporter))
                for s in f.samples
            }
            if "minerwatch_anomaly_score" in values:
                score = values["minerwatch_anomaly_score"]
                assert values["minerwatch_anomaly_threshold"] == score / 2
                seen.add(score)
    finally:
        stop.set()
        writer.join()
    assert len(seen) > 1, "the writer should have published several snapshots meanwhile"


def test_snapshot_is_immutable_and_rejects_unsafe_labels():
    source = {"cpu_mean": 1.0}
    snap = AgentSnapshot(feature_values=source)
    source["cpu_mean"] = 2.0
    source["injected"] = 3.0
    assert dict(snap.feature_values) == {"cpu_mean": 1.0}
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.anomaly_score = 0.5  # type: ignore[misc]
    with pytest.raises(TypeError):
        snap.feature_values["x"] = 1.0  # type: ignore[index]
    with pytest.raises(ValueError, match="never process names"):
        AgentSnapshot(indicator_hits={"/tmp/xmrig --donate-level 1": 1})
    with pytest.raises(ValueError, match="pid"):
        AgentSnapshot(errors_total={"pid 4242": 1})
    with pytest.raises(ValueError, match="telemetry column"):
        AgentSnapshot(telemetry={"cpu_mean": 1.0})
    # Ratios outside 0-1 (float rounding in the scorer) are clamped instead of crashing.
    assert AgentSnapshot(anomaly_score=1.0000001).anomaly_score == 1.0
    assert AgentSnapshot(top_process_cpu_ratio=-1e-9).top_process_cpu_ratio == 0.0


def test_port_zero_picks_a_free_port_and_stop_releases_it():
    exp = Exporter(port=0, address="127.0.0.1", registry=CollectorRegistry())
    assert exp.port == 0
    exp.start()
    port = exp.port
    assert port > 0
    with pytest.raises(RuntimeError):
        exp.start()
    exp.stop()
    exp.stop()  # idempotent
    with socket.socket() as sock:  # the port is free again
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


def test_the_exporter_and_the_config_share_one_default_address_and_port():
    params = inspect.signature(Exporter).parameters
    assert params["address"].default == ExporterConfig().address == "::"
    assert params["port"].default == ExporterConfig().port == 10091


def test_default_address_serves_ipv4_and_ipv6():
    exp = Exporter(port=0, registry=CollectorRegistry())
    exp.start()
    try:
        assert get(f"http://127.0.0.1:{exp.port}/metrics")[0] == 200
        if socket.has_ipv6 and exp._server.address_family == socket.AF_INET6:
            assert get(f"http://[::1]:{exp.port}/metrics")[0] == 200
    finally:
        exp.stop()


def test_textfile_is_written_atomically_without_process_metrics(tmp_path):
    exp = Exporter(
        port=0,
        address="127.0.0.1",
        registry=CollectorRegistry(),
        textfile_dir=tmp_path,
        clock=lambda: NOW,
    )
    exp.update(full_snapshot(NOW))
    path = tmp_path / TEXTFILE_NAME
    text = path.read_text()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert names and all(name.startswith("minerwatch_") for name in names)
    assert "minerwatch_anomaly_score 0.83" in text
    assert path.stat().st_mode & 0o777 == 0o644
    exp.update(dataclasses.replace(full_snapshot(NOW), anomaly_score=0.25))
    assert "minerwatch_anomaly_score 0.25" in path.read_text()
    assert sorted(os.listdir(tmp_path)) == [TEXTFILE_NAME], "no temp files left behind"
    if Path(PROMTOOL).exists():
        promtool("check", "metrics", stdin=path.read_bytes())


def test_textfile_failure_is_counted_not_raised(tmp_path):
    missing = tmp_path / "no-such-dir"
    exp = Exporter(port=0, address="127.0.0.1", registry=CollectorRegistry(), textfile_dir=missing)
    exp.update(AgentSnapshot())
    exp.update(AgentSnapshot())
    assert exp.registry.get_sample_value("minerwatch_errors_total", {"stage": "textfile"}) == 2


def test_write_textfile_replaces_and_cleans_up_on_error(tmp_path):
    target = write_textfile(tmp_path, b"a 1\n")
    assert target.read_bytes() == b"a 1\n"
    write_textfile(tmp_path, b"a 2\n")
    assert target.read_bytes() == b"a 2\n"
    with pytest.raises(TypeError):
        write_textfile(tmp_path, object())  # type: ignore[arg-type]  # fails mid-write
    assert os.listdir(tmp_path) == [TEXTFILE_NAME]


def test_model_age_follows_the_clock_between_updates():
    now = [NOW]
    exp = Exporter(port=0, registry=CollectorRegistry(), clock=lambda: now[0])
    exp.update(AgentSnapshot(model_version="m", model_trained_timestamp_seconds=NOW - 10))
    assert exp.registry.get_sample_value("minerwatch_model_age_seconds") == 10
    now[0] += 50  # the agent loop is stuck, yet the age keeps growing
    assert exp.registry.get_sample_value("minerwatch_model_age_seconds") == 60


@pytest.mark.prometheus
def test_promtool_check_metrics_accepts_the_exposition(exporter):
    exporter.update(full_snapshot(NOW))
    _, _, body = get(f"http://127.0.0.1:{exporter.port}/metrics")
    promtool("check", "metrics", stdin=body)


# --- operators' view: series that exist from the start -----------------------------------


def test_every_error_stage_and_source_has_a_zero_series_from_the_start(exporter):
    exporter.update(AgentSnapshot(source_up={"cpu": True, "processes": False}))
    value = exporter.registry.get_sample_value
    for stage in (*ERROR_STAGES, "source_cpu", "source_processes"):
        assert value("minerwatch_errors_total", {"stage": stage}) == 0.0, stage
    exporter.update(AgentSnapshot(errors_total={"train": 2}, source_up={"cpu": True}))
    assert value("minerwatch_errors_total", {"stage": "train"}) == 2.0
    assert value("minerwatch_errors_total", {"stage": "model"}) == 0.0


def test_every_error_stage_counted_in_the_code_is_in_the_one_list():
    """A stage counted somewhere but missing from its list would have no zero series: the
    agent's stages in ERROR_STAGES, fleet serve's (a process of its own) in FLEET_STAGES."""
    from minerwatch.service.fleet.serve import FLEET_STAGES

    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(r'self\._error\(\s*"(\w+)"|errors\[\s*"(\w+)"\s*\]')
    fleet = root / "service" / "fleet" / "serve.py"

    def counted(paths: list[Path]) -> set[str]:
        return {a or b for path in paths for a, b in pattern.findall(path.read_text())}

    agent = counted(
        [
            path
            for folder in ("service", "features", "baseline")
            for path in (root / folder).rglob("*.py")
            if path != fleet
        ]
    )
    assert agent, "the pattern no longer finds where errors are counted"
    assert agent <= set(ERROR_STAGES), f"add {agent - set(ERROR_STAGES)} to ERROR_STAGES"
    served = counted([fleet])
    assert served, "the pattern no longer finds where fleet serve counts errors"
    assert served <= set(FLEET_STAGES), f"add {served - set(FLEET_STAGES)} to FLEET_STAGES"


def test_learning_period_and_start_are_exported(exporter):
    exporter.update(
        AgentSnapshot(learning_period_seconds=7200.0, learning_started_timestamp_seconds=NOW - 60)
    )
    value = exporter.registry.get_sample_value
    assert value("minerwatch_learning_period_seconds") == 7200.0
    assert value("minerwatch_learning_started_timestamp_seconds") == NOW - 60
    exporter.update(AgentSnapshot(learning=False, learning_period_seconds=7200.0))
    assert value("minerwatch_learning_started_timestamp_seconds") is None


def test_heavy_work_is_left_out_until_a_window_is_scored(exporter):
    exporter.update(AgentSnapshot(anomaly_threshold=0.6))
    assert "minerwatch_heavy_work" not in scrape(exporter)
    exporter.update(AgentSnapshot(anomaly_score=0.7, anomaly_threshold=0.6, heavy_work=True))
    assert exporter.registry.get_sample_value("minerwatch_heavy_work") == 1.0


def test_evidence_file_of_the_open_episode_is_one_info_series(exporter, tmp_path):
    writer = EvidenceWriter(tmp_path / "evidence", min_interval_s=0)
    path = writer.write("web-1-1764749700", 0.9, 0.6, {"cpu_percent": 97.0}, [], [], [])
    assert path is not None
    exporter.update(AgentSnapshot(evidence_file=str(path)))
    text = scrape(exporter)
    (line,) = [x for x in text.splitlines() if x.startswith("minerwatch_evidence_info")]
    assert line == f'minerwatch_evidence_info{{file="{path}"}} 1.0'
    exporter.update(AgentSnapshot())
    assert "minerwatch_evidence_info" not in scrape(exporter), "no series once it closes"


@pytest.mark.parametrize(
    "bad",
    [
        "/tmp/xmrig --donate-level 1",
        "/var/lib/minerwatch/evidence/20261203T081500Z-web-1.json\nfake_metric 1",
        "/var/lib/minerwatch/evidence/notes.json",
        "20261203T081500Z-" + "x" * 65 + ".json",
    ],
)
def test_evidence_file_refuses_anything_but_an_evidence_name(bad):
    with pytest.raises(ValueError, match="never process data"):
        AgentSnapshot(evidence_file=bad)


def test_evidence_file_in_an_odd_folder_keeps_only_its_name():
    name = "20261203T081500Z-web-1-1764749700.json"
    assert AgentSnapshot(evidence_file=f"/srv/\udcff/{name}").evidence_file == name
    assert AgentSnapshot(evidence_file=f"/srv/a\tb/{name}").evidence_file == name
    assert AgentSnapshot(evidence_file=f"/srv/données/{name}").evidence_file.startswith("/srv/")


# --- the real agent -------------------------------------------------------------------------


def test_real_agent_exports_zero_series_learning_metrics_and_serves_nothing_else(tmp_path):
    with running_agent(tmp_path, 1.0, "--learn-for", "30m") as agent:
        text = get(agent.url)[2].decode()
        value = {
            (f.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }
        for stage in (*ERROR_STAGES, *(f"source_{name}" for name in SOURCES)):
            assert ("minerwatch_errors", (("stage", stage),)) in value, stage
        for name in SOURCES:
            assert value[("minerwatch_source_up", (("source", name),))] == 1.0, name
        assert value[("minerwatch_learning_period_seconds", ())] == 1800.0
        started = value[("minerwatch_learning_started_timestamp_seconds", ())]
        assert time.time() - 60 < started <= time.time()
        base = agent.url.removesuffix("/metrics")
        assert get(base + "/")[0] == 200 and get(base + "/x")[0] == 404
        conn = http.client.HTTPConnection("127.0.0.1", int(base.rsplit(":", 1)[1]), timeout=5)
        conn.request("POST", "/metrics", body=b"")
        assert conn.getresponse().status == 405
        conn.close()


def other_local_address() -> str | None:
    """A non-loopback IPv4 address of this host, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the outgoing interface
        except OSError:
            return None
        address = str(sock.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_real_agent_binds_where_its_config_file_says_and_nowhere_else(tmp_path):
    port = free_port()
    config = tmp_path / "minerwatch.toml"
    config.write_text(f'[exporter]\nport = {port}\naddress = "127.0.0.1"\n')
    entry = Path(sys.executable).with_name("minerwatch")
    cmd = [str(entry), "serve", "--config", str(config), "--data-dir", str(tmp_path / "d"),
           "--interval", "1s", "--learn-for", "1h"]  # fmt: skip
    with (tmp_path / "agent.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if get(f"http://127.0.0.1:{port}/metrics")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "agent.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "agent.log").read_text()
            time.sleep(0.2)
        elsewhere = other_local_address()
        if elsewhere is not None:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((elsewhere, port), timeout=2).close()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
