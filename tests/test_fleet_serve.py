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
            assert value(first, "minerwatch_heavy_work", host=h) in (0.0, 1.0)
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
            "query", "model", "score", "train", "state"
        }  # fmt: skip
        assert value(first, "minerwatch_errors_total", stage="state") == 0
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
    """The Grafana-managed alert's query gives one series per fleet host whose alert episode
    is open, each with its own host label, as ``minerwatch_alert_active`` says."""
    (rule,) = yaml.safe_load(ALERTING.read_text())["groups"][0]["rules"]
    (query,) = [d["model"]["expr"] for d in rule["data"] if d["datasourceUid"] != "__expr__"]

    def fleet_hosts(expr: str) -> list[str]:
        answer = prom.query(expr)
        assert answer["status"] == "success", answer
        rows = answer["data"]["result"]
        return sorted(r["metric"]["host"] for r in rows if r["metric"]["job"] == "minerwatch-fleet")

    assert fleet_hosts("minerwatch_alert_active") == list(HOSTS)  # every host is there
    assert fleet_hosts(query) == fleet_hosts("minerwatch_alert_active == 1")


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
    piped = run(*common, "--output", "-", "--model-key", str(key))  # rows to standard output
    assert piped.stdout.splitlines()[0] == rows[0] and len(piped.stdout.splitlines()) > 10
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    other.chmod(0o600)
    done = run(*common, "--output", str(tmp_path / "x.csv"), "--model-key", str(other),
               check=False)  # fmt: skip
    assert done.returncode == 2 and "skipped host" in done.stderr, done.stderr
    assert not (tmp_path / "x.csv").exists()


# -- incremental reads, the buffered mapping, alert state across restarts ----------------------
# These run against the benchmark's synthetic Prometheus (answers cut to the asked time range).

T0 = 1_800_000_000.0
#: Seconds between cycles: regular, irregular, a gap shorter than the lookback, one longer.
STEPS = (60.0, 60.0, 37.0, 60.0, 400.0, 60.0, 60.0, 2500.0, 60.0, 45.0)


def _edit(metric: str, host: int, labels: dict[str, str], values: np.ndarray):
    """What real fleets do to a series: counter resets, gaps, NaN, series that appear late."""
    n = len(values)
    mask = np.ones(n, dtype=bool)
    values = values.copy()
    if host == 0 and metric == "node_cpu_seconds_total" and labels["cpu"] == "0":
        if labels["mode"] == "user":
            values[n // 2 :] -= values[n // 2] - 5.0  # a reset (reboot)
    if host == 1 and metric == "node_network_receive_bytes_total" and labels["device"] == "eth0":
        mask[n // 3 : n // 3 + 40] = False  # the interface gone for 10 minutes
        mask[n - 150 : n - 120] = False
    if host == 2 and metric.startswith("namedprocess") and labels["groupname"] == "app":
        mask[n // 2 : n // 2 + 20] = False
        mask[-100:-97] = False
    if host == 2 and metric == "node_load1":
        values[::17] = np.nan
    if host == 3 and metric == "node_disk_read_bytes_total":
        mask[: n // 2] = False  # a disk that appears during the run
    if host == 0 and metric == "node_procs_running":
        mask[n - 60 : n - 40] = False  # one metric missing a while: the cut waits for it
    return mask, values


@pytest.fixture(scope="module")
def synthetic_model():
    from minerwatch.bench.fleet_serve import one_model

    return one_model()


@pytest.fixture(scope="module")
def synthetic_prometheus():
    """(URL, answers) of a fleet of 5 hosts from before T0's lookback to after STEPS."""
    from minerwatch.bench.fleet_serve import INTERVAL, Answers, serve_answers

    stamps = np.arange(T0 - 2400.0, T0 + sum(STEPS) + 1.0, INTERVAL)
    answers = Answers(5, stamps, seed=3, edit=_edit)
    http = serve_answers(answers)
    yield f"http://127.0.0.1:{http.server_address[1]}", answers
    http.shutdown()


def _server(url: str, model, clock, incremental: bool, hosts: range) -> FleetServer:
    from dataclasses import replace

    from minerwatch.service.fleet.serve import HostState

    server = FleetServer(
        PromClient(Connection(url)), Path("."), clock=clock, incremental=incremental
    )
    for h in hosts:
        server.hosts[f"h{h:04d}"] = HostState.of(replace(model, host=f"h{h:04d}"))
    return server


def test_incremental_reads_score_exactly_as_full_rereads(synthetic_prometheus, synthetic_model):
    """The same fake Prometheus, one server reading only what is new each cycle and one
    re-reading the whole lookback (as before): the same samples held, the same windows
    scored with the same scores, features and alerts; the incremental reads are smaller."""
    from dataclasses import replace

    from minerwatch.service.fleet.serve import HostState

    url, _ = synthetic_prometheus
    now = [T0]
    fast = _server(url, synthetic_model, lambda: now[0], True, range(4))
    full = _server(url, synthetic_model, lambda: now[0], False, range(4))
    smaller = 0
    for i, step in enumerate((0.0, *STEPS)):
        now[0] += step
        if i == 5:  # a model appears for a host the server never read: a full read again
            for server in (fast, full):
                server.hosts["h0004"] = HostState.of(replace(synthetic_model, host="h0004"))
                server.read_end = None if server is fast else server.read_end
        counts = fast.cycle()
        assert counts == full.cycle(), i
        # h0003's disk appears during the run: it fails (a model column missing) until then
        assert counts["scored"] + counts["failed"] == len(fast.hosts), counts
        if fast.points_read < full.points_read:
            smaller += 1
        for host, a in fast.hosts.items():
            b = full.hosts[host]
            for metric, held in fast.buffers[host].items():
                other = full.buffers[host][metric]
                np.testing.assert_array_equal(held.ts, other.ts, err_msg=f"{host} {metric}")
                np.testing.assert_array_equal(held.value, other.value)
                np.testing.assert_array_equal(held.sid, other.sid)
            for name in ("score", "features", "contributions", "telemetry", "sample_ts",
                         "last_slot", "windows_total", "alerts_total", "episode_start",
                         "alerted"):  # fmt: skip
                np.testing.assert_equal(getattr(a, name), getattr(b, name), err_msg=name)
            assert a.alert == b.alert
    # every host was scored, and only the full reads were as big
    assert all(s.windows_total > 0 for s in fast.hosts.values())
    assert fast.hosts["h0000"].windows_total > 50
    assert smaller >= len(STEPS) - 3  # not smaller: the gap past the lookback, the new host


def test_buffered_mapping_equals_the_training_mapping(synthetic_prometheus, synthetic_model):
    """The array mapping ``fleet serve`` runs on its buffers gives the rows and values that
    the reference frame mapping (``nodeexporter_reference.telemetry``, which ``fleet train``'s
    own mapping equals bit for bit) gives on the same samples read as frames."""
    from nodeexporter_reference import telemetry

    from minerwatch.service.fleet.serve import LOOKBACK_S, host_telemetry

    url, _ = synthetic_prometheus
    for at in (T0, T0 + 1200.0, T0 + sum(STEPS)):
        server = _server(url, synthetic_model, lambda at=at: at, True, range(5))
        server.cycle()
        start = at - LOOKBACK_S - 120.0
        answers = {m: server.client.samples(f"{m}{{}}", start, at, 15.0) for m in METRICS}
        for h in range(5):
            host = f"h{h:04d}"
            frames = {}
            for metric, frame in answers.items():
                mine = frame["instance"].astype(str).str.startswith(f"{host}:")
                if mine.any():
                    frames[metric] = frame[mine.to_numpy()].drop(columns="__name__")
            want = telemetry(host, frames).series
            got = host_telemetry(host, server.buffers[host], server.registries).series
            assert got.columns == want.columns
            np.testing.assert_array_equal(got.timestamps, want.timestamps)
            # the same sums; to the last bit today, but the order of a read's rows is the
            # client's to choose, so allow a rounding difference
            np.testing.assert_allclose(got.values, want.values, rtol=1e-12, err_msg=host)


def test_serve_cycles_read_and_map_without_frames(synthetic_prometheus, synthetic_model, tmp_path):
    """Serve's per-cycle path (read, buffer, map, score; a full read and an incremental one)
    never builds frames and never imports scikit-learn: answers are parsed to arrays as
    ``fleet train`` reads them (pandas may only parse a long run of numbers, see
    ``promclient.parse_numbers``)."""
    from dataclasses import replace

    from minerwatch.baseline.store import save_model

    url, _ = synthetic_prometheus
    for h in range(2):
        save_model(tmp_path, replace(synthetic_model, host=f"h{h:04d}"))
    code = f"""
import sys
from pathlib import Path
from minerwatch.service.fleet import promclient
from minerwatch.service.fleet.promclient import Connection, PromClient
from minerwatch.service.fleet.serve import FleetServer
def refuse(*args, **kwargs):
    raise AssertionError("a frame was built")
promclient.to_frame = promclient._concat = refuse
PromClient.samples = PromClient.query_range = PromClient.query = refuse
now = [{T0!r}]
server = FleetServer(PromClient(Connection({url!r})), Path({str(tmp_path)!r}),
                     clock=lambda: now[0], incremental=True)
assert server.load_models() == 2
for step in (0.0, 60.0, 60.0):
    now[0] += step
    counts = server.cycle()
    assert counts["scored"] == 2 and server.points_read > 0, counts
assert all(s.windows_total > 0 for s in server.hosts.values())
print(sorted({{m.split(".")[0] for m in sys.modules}} & {{"sklearn"}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def _fake_live_prometheus(now: float):
    """The synthetic fleet (one host) around the wall clock, for a real ``fleet serve``."""
    from minerwatch.bench.fleet_serve import INTERVAL, Answers, serve_answers

    stamps = np.arange(now - 2400.0, now + 900.0, INTERVAL)
    return serve_answers(Answers(1, stamps, seed=4))


def _serve_until(args: list[str], log: Path, check) -> tuple[dict, str]:
    """Run ``minerwatch fleet serve`` until ``check(metrics)``, stop it with SIGTERM; the last
    scrape and the log. It must exit 0."""
    port = free_port()
    proc = _start(
        [MINERWATCH, "fleet", "serve", *args, "--port", str(port), "--address", "127.0.0.1",
         "--interval", "1s", "--retrain-every", "0"],
        log,
    )  # fmt: skip
    try:

        def metrics() -> dict:
            if proc.poll() is not None:
                pytest.fail(f"fleet serve exited {proc.returncode}:\n{log.read_text()}")
            return scrape(port)

        got = poll(metrics, lambda m: m.get("minerwatch_alert_active") and check(m))
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    text = log.read_text()
    assert code == 0 and "Traceback" not in text, text
    return got, text


def test_serve_keeps_open_alerts_across_restarts_and_survives_a_corrupt_state_file(
    synthetic_model, tmp_path
):
    """A real ``fleet serve`` opens an alert; restarted, it neither opens it again nor
    forgets it (state file in --state-dir); a corrupt state file (the default one, in the
    model folder) is logged, counted, moved aside and ignored."""
    from dataclasses import replace

    from minerwatch.baseline.store import save_model
    from minerwatch.service.fleet.serve import STATE_FILE

    done = run("fleet", "serve", "--help")
    text = " ".join(done.stdout.split())  # argparse wraps lines
    assert "--state-dir DIR" in text and "(default: the --models folder)" in text, text
    models = tmp_path / "models"
    # every window above the threshold: the alert opens on the first cycle and stays open
    save_model(models, replace(synthetic_model, host="h0000", threshold=0.0))
    http = _fake_live_prometheus(time.time())
    url = f"http://127.0.0.1:{http.server_address[1]}"
    state = tmp_path / "state"
    common = ["--prometheus", url, "--models", str(models)]
    try:
        active = lambda m: value(m, "minerwatch_alert_active", host="h0000") == 1  # noqa: E731
        first, text = _serve_until([*common, "--state-dir", str(state)], tmp_path / "1.log", active)
        assert text.count("alert opened on h0000") == 1, text
        assert value(first, "minerwatch_alerts_total", host="h0000") == 1
        saved = json.loads((state / STATE_FILE).read_text())
        assert saved["hosts"]["h0000"]["active"] is True
        assert saved["hosts"]["h0000"]["alerted"]
        assert not (models / STATE_FILE).exists()  # --state-dir, not the model folder

        # restarted: the open alert is taken back, not fired again
        log = tmp_path / "2.log"
        again, text = _serve_until(  # three cycles: the later ones read only what is new
            [*common, "--state-dir", str(state)], log,
            lambda m: active(m) and log.read_text().count("cycle:") >= 3,
        )  # fmt: skip
        assert "alert opened" not in text, text
        assert "restored" in text and "open alerts: h0000" in text, text
        assert value(again, "minerwatch_alerts_total", host="h0000") == 1
        assert json.loads((state / STATE_FILE).read_text())["hosts"]["h0000"]["active"]

        # a corrupt state file (the default place: the model folder) is said, not fatal
        (models / STATE_FILE).write_text('{"format": 1, "hosts": {"h0000": {"active": ')
        after, text = _serve_until(common, tmp_path / "3.log", active)
        assert value(after, "minerwatch_errors_total", stage="state") == 1
        assert "is unreadable" in text and "ignored" in text and ".corrupt" in text, text
        assert "alert opened on h0000" in text  # nothing was remembered: it opens afresh
        aside = models / (STATE_FILE + ".corrupt")
        assert aside.read_text().startswith('{"format": 1, "hosts"')
        assert json.loads((models / STATE_FILE).read_text())["hosts"]["h0000"]["active"]
    finally:
        http.shutdown()


def test_state_file_round_trip_and_entries_not_as_written(synthetic_model, tmp_path, caplog):
    """What is saved comes back whole (the alert rule's counts and slot included, alerted
    windows as spans, hosts without a model kept); a file whose entries are not as written is
    ignored as a whole, said in the log, counted and moved aside."""
    from dataclasses import replace

    from minerwatch.service.fleet.serve import STATE_FILE, HostState

    path = tmp_path / STATE_FILE

    def server() -> FleetServer:
        s = FleetServer(PromClient(Connection("http://127.0.0.1:9")), tmp_path, state_file=path)
        s.hosts["h0000"] = HostState.of(replace(synthetic_model, host="h0000"))
        return s

    a = server()
    state = a.hosts["h0000"]
    for slot, score in enumerate([0.9, 0.9, 0.9, 0.1, 0.9999], start=100):
        state.alert.update(score, slot)
    state.last_slot, state.alerts_total, state.windows_total = 104, 1, 5
    state.episode_start = 6000.0
    state.alerted = [(6000.0, 6060.0), (6060.0, 6120.0), (6120.0, 6180.0), (6240.0, 6300.0)]
    a.kept_state = {"gone": {"active": True}}
    a.save_state()
    b = server()
    assert b.restore_state() == 1
    got = b.hosts["h0000"]
    assert got.alert == state.alert and got.alert._below == 0 and got.alert._above == 1
    assert got.alert._fast == state.alert._fast == 1  # the fast path's run is kept too
    assert (got.last_slot, got.alerts_total, got.windows_total) == (104, 1, 5)
    assert got.episode_start == 6000.0
    assert got.alerted == [(6000.0, 6180.0), (6240.0, 6300.0)]  # touching windows: one span
    b.save_state()
    gone = json.loads(path.read_text())["hosts"]["gone"]
    # kept as it was, with the time it was first found without a model (for its expiry)
    assert gone["active"] is True and set(gone) == {"active", "kept_since"}

    # a state file written before the strong run was kept: the run above stands for it; one
    # written before the fast path: no fast run
    doc = json.loads(path.read_text())
    assert doc["hosts"]["h0000"]["strong"] == state.alert._strong
    del doc["hosts"]["h0000"]["strong"], doc["hosts"]["h0000"]["fast"]
    path.write_text(json.dumps(doc))
    older = server()
    assert older.restore_state() == 1
    assert older.hosts["h0000"].alert._strong == older.hosts["h0000"].alert._above == 1
    assert older.hosts["h0000"].alert._fast == 0
    b.save_state()

    doc = json.loads(path.read_text())
    doc["hosts"]["h0000"]["active"] = "yes"
    path.write_text(json.dumps(doc))
    c = server()
    with caplog.at_level("WARNING", logger="minerwatch.fleet"):
        assert c.restore_state() == 0
    assert c.errors == {"state": 1} and not c.hosts["h0000"].alert.active
    assert "'active' is not true or false" in caplog.text and "ignored" in caplog.text
    assert not path.exists() and json.loads(path.with_name(STATE_FILE + ".corrupt").read_text())


def test_retraining_keeps_the_false_alarm_budget_the_model_was_trained_for():
    """``fleet train --alarms-per-week 3.5`` models are retrained for 3.5, not the default."""
    from dataclasses import replace

    from minerwatch.baseline.calibrate import ALARMS_PER_WEEK
    from minerwatch.baseline.fitted import alarm_budget as budget_of
    from minerwatch.baseline.train import train_host

    rng = np.random.default_rng(0)
    ts = 1.7e9 + 60.0 * np.arange(600)
    cpu = np.clip(20 + 5 * rng.standard_normal((600, 1)), 0, 100)
    series = from_arrays("web-1", ts, cpu, ("cpu_percent",))
    model = train_host(series, params={"max_alarms_per_week": 3.5})
    assert budget_of(model) == 3.5
    assert budget_of(replace(model, meta={})) == ALARMS_PER_WEEK  # a model that does not say
