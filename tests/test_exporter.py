"""The exporter over real HTTP and real files: values, omissions, paths, textfile, linting."""

from __future__ import annotations

import dataclasses
import gzip
import inspect
import math
import os
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from promtools import PROMTOOL, full_snapshot, promtool

from minerwatch.features.schema import METRIC_COLUMNS
from minerwatch.service.config import ExporterConfig
from minerwatch.service.exporter import METRICS, TEXTFILE_NAME, Exporter, write_textfile
from minerwatch.service.state import AgentSnapshot

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
    assert value("minerwatch_build_info", {"version": "1.2.3"}) == 1.0

    families = minerwatch_families(scrape(exporter))
    exposed = {s.name for f in families.values() for s in f.samples}
    assert exposed == set(METRICS), "METRICS must list exactly what a full snapshot exposes"
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


def test_only_metrics_path_is_served(exporter):
    exporter.update(full_snapshot(NOW))
    base = f"http://127.0.0.1:{exporter.port}"
    for path in ("/", "/metric", "/metrics/x", "/favicon.ico"):
        assert get(base + path)[0] == 404, path
    status, headers, body = get(base + "/metrics?name[]=ignored")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert b"minerwatch_anomaly_score 0.83" in body


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
