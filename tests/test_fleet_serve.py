"""``minerwatch fleet serve`` on live data: Debian's node_exporter on two loopback addresses
(two hosts) and process-exporter, scraped every 0.5 s by a real Prometheus, which also
scrapes ``fleet serve`` itself with ``honor_labels`` as docs/fleet.md says."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from promtools import PROMETHEUS, _terminate, free_port, require, running_prometheus
from test_deploy import (
    ALERTING,
    RULES,
    dashboard,
    label_values_query,
    panel_targets,
    substitute,
    yaml,
)

from minerwatch.features.io import from_arrays
from minerwatch.service.fleet.nodeexporter import METRICS
from minerwatch.service.fleet.promclient import Connection, PromClient
from minerwatch.service.fleet.serve import FleetServer, training_samples

pytestmark = [pytest.mark.slow, pytest.mark.prometheus]

MINERWATCH = str(Path(sys.executable).with_name("minerwatch"))
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or "/usr/bin/prometheus-node-exporter"
PROCESS_EXPORTER = (
    shutil.which("prometheus-process-exporter") or "/usr/bin/prometheus-process-exporter"
)
HOSTS = ("127.0.0.1", "127.0.0.2")  # the whole of 127/8 is loopback on Linux
#: Windows short enough that 30 of them (the training minimum) exist after ~16 s of scrapes.
WINDOW = ["--window", "1s", "--hop", "0.5s"]


def _start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _job(name: str, targets: list[str], **extra: object) -> dict[str, object]:
    return {
        "job_name": name,
        "scrape_interval": "500ms",
        "scrape_timeout": "500ms",
        "static_configs": [{"targets": targets}],
        **extra,
    }


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """(Prometheus, fleet serve port, folder) with two node_exporters and process-exporter."""
    require(NODE_EXPORTER)
    require(PROMETHEUS)
    root = tmp_path_factory.mktemp("live")
    procs: list[subprocess.Popen[bytes]] = []
    node_targets = []
    for address in HOSTS:
        port = free_port()
        node_targets.append(f"{address}:{port}")
        procs.append(
            _start(
                [NODE_EXPORTER, f"--web.listen-address={address}:{port}",
                 f"--collector.textfile.directory={root}"],
                root / f"node-{address}.log",
            )
        )  # fmt: skip
    jobs = [_job("node", node_targets)]
    if Path(PROCESS_EXPORTER).exists():
        config = root / "process-exporter.yml"
        config.write_text('{"process_names": [{"name": "{{.Comm}}", "cmdline": [".+"]}]}')
        port = free_port()
        procs.append(
            _start(
                [PROCESS_EXPORTER, f"-web.listen-address=127.0.0.1:{port}",
                 f"-config.path={config}", "-threads=false", "-gather-smaps=false"],
                root / "process-exporter.log",
            )
        )  # fmt: skip
        jobs.append(_job("process", [f"127.0.0.1:{port}"]))
    serve_port = free_port()
    jobs.append(_job("minerwatch-fleet", [f"127.0.0.1:{serve_port}"], honor_labels=True))
    try:
        rules = root / "rules.yml"
        rules.write_text(RULES.read_text())
        with running_prometheus(root, jobs, rule_files=[rules]) as prom:
            # 30 training windows of 1 s at a 0.5 s hop, on both hosts
            prom.wait_for('count(count_over_time(node_load1{job="node"}[1m]) >= 36) == 2', 60)
            yield prom, serve_port, root
    finally:
        for proc in procs:
            _terminate(proc)


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [MINERWATCH, *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check and done.returncode != 0:
        pytest.fail(f"minerwatch {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return done


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of ``fleet serve``'s /metrics: name -> [(labels, value)]."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def value(samples, name: str, **labels: str) -> float:
    (hit,) = [
        v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())
    ]
    return hit


def poll(what, check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = what()
            if check(got):
                return got
        except (urllib.error.URLError, ConnectionError, ValueError, KeyError):
            got = None
        if time.monotonic() > deadline:
            pytest.fail(f"timed out; last: {str(got)[:2000]}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def models(live):
    prom, _, root = live
    key = root / "model.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    folder = root / "models"
    done = run(
        "fleet", "train", "--prometheus", prom.url, "--selector", '{job="node"}',
        "--days", "0.01", "--models", str(folder), *WINDOW, "--model-key", str(key),
    )  # fmt: skip
    assert sorted(line.split()[0] for line in done.stdout.splitlines()[1:]) == list(HOSTS)
    return folder, key


def test_serve_scores_live_hosts_exports_host_labels_and_retrains(live, models, tmp_path):
    prom, port, root = live
    folder, key = models
    created = {h: json.loads((folder / h / "meta.json").read_text())["created_at"] for h in HOSTS}
    log = tmp_path / "serve.log"
    proc = _start(
        [MINERWATCH, "fleet", "serve", "--prometheus", prom.url, "--selector", '{job="node"}',
         "--models", str(folder), "--port", str(port), "--address", "127.0.0.1",
         "--interval", "1s", "--retrain-every", "4s", "--days", "0.01",
         "--model-key", str(key)],
        log,
    )  # fmt: skip
    try:
        first = poll(
            lambda: scrape(port),
            lambda m: all(value(m, "minerwatch_windows_scored_total", host=h) > 0 for h in HOSTS),
        )
        for h in HOSTS:
            score = value(first, "minerwatch_anomaly_score", host=h)
            assert 0.0 <= score <= 1.0
            assert value(first, "minerwatch_anomaly_threshold", host=h) > 0
            assert value(first, "minerwatch_alert_active", host=h) in (0.0, 1.0)
            assert value(first, "minerwatch_telemetry", host=h, metric="cpu_percent") >= 0
            # the window the exported features describe is recent live data
            assert (
                time.time() - value(first, "minerwatch_last_sample_timestamp_seconds", host=h) < 30
            )
        if Path(PROCESS_EXPORTER).exists():  # process-exporter's series, joined by host
            # (its scrape of all of /proc may miss some; the busiest group is then unknown)
            poll(
                lambda: scrape(port),
                lambda m: (
                    value(
                        m, "minerwatch_telemetry", host="127.0.0.1", metric="top_proc_cpu_percent"
                    )
                    >= 0
                ),
                timeout=30,
            )
        # one build info and one error counter per stage for the server, not per host
        assert len(first["minerwatch_build_info"]) == 1
        assert {lab["stage"] for lab, _ in first["minerwatch_errors_total"]} == {
            "query", "model", "score", "train"
        }  # fmt: skip
        # later cycles score the windows completed since (no window twice, none skipped)
        before = value(first, "minerwatch_windows_scored_total", host="127.0.0.1")
        later = poll(
            lambda: scrape(port),
            lambda m: value(m, "minerwatch_windows_scored_total", host="127.0.0.1") >= before + 4,
        )
        assert value(later, "minerwatch_windows_scored_total", host="127.0.0.1") < before + 40
        # retraining on schedule, signed with the key, loaded by the running server
        retrained = poll(
            lambda: scrape(port),
            lambda m: all(
                value(m, "minerwatch_model_trained_timestamp_seconds", host=h) > created[h]
                for h in HOSTS
            ),
            timeout=90,
        )
        for h in HOSTS:
            meta = json.loads((folder / h / "meta.json").read_text())
            assert meta["created_at"] > created[h] and meta["signature"]["hmac_sha256"]
        assert value(retrained, "minerwatch_retrain_failures_total", reason="crashed") == 0
        # Prometheus scraped the server with honor_labels: the host label is kept
        found = prom.wait_for('minerwatch_anomaly_score{job="minerwatch-fleet"}', 30)
        assert sorted(r["metric"]["host"] for r in found) == list(HOSTS)
        prom.wait_for('count_over_time(minerwatch_build_info{job="minerwatch-fleet"}[1m]) >= 3')
        check_dashboard_in_fleet_mode(prom)
        check_rules_evaluate(prom)
        check_grafana_alert_per_host(prom)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text
    assert "retrained 127.0.0.1" in text


#: Dashboard panels fed only by what an agent measures on its host (sampling, processes,
#: responses): empty in fleet mode, and said so in docs/fleet.md.
AGENT_ONLY_PANELS = {"Busiest process CPU", "Indicators and throttling", "Agent health",
                     "Alert episodes"}  # fmt: skip


def check_dashboard_in_fleet_mode(prom) -> None:
    """Every dashboard query, with host_label=host and the fleet job, runs on the real
    Prometheus; every panel but the agent-only ones shows data for a fleet host."""
    dash = dashboard()
    variables = {"$job": "minerwatch-fleet", "$host_label": "host"}
    host_var = next(v for v in dash["templating"]["list"] if v["name"] == "host")
    query, label = label_values_query(substitute(host_var["definition"], variables))
    hosts = sorted(r["metric"][label] for r in prom.query(query)["data"]["result"])
    assert hosts == list(HOSTS)
    variables["$host"] = hosts[0]
    exprs = [(name, t["expr"]) for name, t in panel_targets(dash)]
    exprs += [(a["name"], a["expr"]) for a in dash["annotations"]["list"] if "expr" in a]
    empty = set()
    for name, expr in exprs:
        answer = prom.query(substitute(expr, variables))
        assert answer["status"] == "success", f"{name}: {expr} -> {answer}"
        if not answer["data"]["result"]:
            empty.add(name.split(" / ")[0])
    assert empty <= AGENT_ONLY_PANELS, empty - AGENT_ONLY_PANELS
    (row,) = prom.query(
        substitute(
            'max by ($host_label) (minerwatch_anomaly_score{job="$job", $host_label="$host"})',
            variables,
        )  # fmt: skip
    )["data"]["result"]
    assert row["metric"] == {"host": hosts[0]}  # the overview is per host, not per target


def check_rules_evaluate(prom) -> None:
    """The alert rules, loaded in the same Prometheus, evaluate without error on fleet series
    (a join on (instance, job) alone would match many hosts to one)."""
    deadline = time.monotonic() + 20
    while True:
        rules = [r for g in prom.api("rules")["data"]["groups"] for r in g["rules"]]
        if rules and all(r.get("lastEvaluation", "0001").startswith("20") for r in rules):
            break
        assert time.monotonic() < deadline, rules
        time.sleep(0.3)
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]


def check_grafana_alert_per_host(prom) -> None:
    """The Grafana-managed alert's query gives one margin per fleet host, each its own."""
    (rule,) = yaml.safe_load(ALERTING.read_text())["groups"][0]["rules"]
    (query,) = [d["model"]["expr"] for d in rule["data"] if d["datasourceUid"] != "__expr__"]
    answer = prom.query(query)
    assert answer["status"] == "success", answer
    fleet = [r for r in answer["data"]["result"] if r["metric"]["job"] == "minerwatch-fleet"]
    assert sorted(r["metric"]["host"] for r in fleet) == list(HOSTS)


def test_one_query_per_metric_per_cycle_whatever_the_hosts(live, models):
    prom, _, _ = live
    folder, key = models
    client = PromClient(Connection(prom.url))
    server = FleetServer(client, folder, selector='{job="node"}', key=key.read_bytes())
    assert server.load_models() == 2
    counts = server.cycle()
    assert counts == {"scored": 2, "no_data": 0, "failed": 0}
    assert client.requests == len(METRICS)
    server.cycle()
    assert client.requests == 2 * len(METRICS)
    # a second cycle scored only what completed since the first
    assert all(s.windows_total > 0 for s in server.hosts.values())


def test_serve_refuses_when_no_model_loads(live, models, tmp_path):
    prom, _, _ = live
    folder, _ = models
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    other.chmod(0o600)
    done = run(
        "fleet", "serve", "--prometheus", prom.url, "--models", str(folder),
        "--port", str(free_port()), "--model-key", str(other), check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and str(folder) in done.stderr
    # a query Prometheus refuses would fail every cycle: refused at start, naming it
    done = run(
        "fleet", "serve", "--prometheus", prom.url, "--selector", '{job=~"("}',
        "--models", str(folder), "--port", str(free_port()), "--model-key", str(models[1]),
        check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "bad_data" in done.stderr and "Traceback" not in done.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run("fleet", "serve", "--prometheus", prom.url, "--models", str(empty), check=False)
    assert done.returncode == 2 and "at least one model" in done.stderr, done.stderr


def test_retraining_leaves_out_alerted_windows_and_an_open_episode():
    ts = np.arange(0.0, 36001.0, 60.0)  # 10 h at 60 s
    series = from_arrays("h", ts, np.ones((len(ts), 1)), ("cpu_percent",))
    kept, values, margin = training_samples(series, [(7200.0, 7500.0)], 60.0, 3)
    assert margin == 3600.0  # a tenth of 10 h, at most an hour
    assert len(kept) == len(values)
    assert not ((kept >= 7200.0 - margin) & (kept <= 7500.0 + margin)).any()
    assert kept.min() == 0.0 and kept.max() == ts[-1]
    # an episode still open: nothing from its start minus the margin on
    kept, _, _ = training_samples(series, [], 60.0, 3, episode_start=30000.0)
    assert kept.max() < 30000.0 - 3600.0 + 1 and kept.max() >= 30000.0 - 3600.0 - 60


def test_fleet_score_loads_only_models_signed_with_its_key(live, models, tmp_path):
    prom, _, _ = live
    folder, key = models
    now = time.time()
    common = ["fleet", "score", "--prometheus", prom.url, "--selector", '{job="node"}',
              "--start", f"{now - 20}", "--end", f"{now}", "--models", str(folder)]  # fmt: skip
    out = tmp_path / "scores.csv"
    run(*common, "--output", str(out), "--model-key", str(key))
    rows = out.read_text().splitlines()
    assert rows[0].startswith("host,window_start") and len(rows) > 10
    assert {line.split(",")[0] for line in rows[1:]} == set(HOSTS)
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    other.chmod(0o600)
    done = run(*common, "--output", str(tmp_path / "x.csv"), "--model-key", str(other),
               check=False)  # fmt: skip
    assert done.returncode == 2 and "skipped host" in done.stderr, done.stderr
    assert not (tmp_path / "x.csv").exists()
