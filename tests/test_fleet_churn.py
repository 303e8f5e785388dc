"""``minerwatch fleet serve`` over days: the fleet changes under it. A real ``fleet serve``
reads the benchmark's fake Prometheus (node_exporter-shaped answers, here scraped every
0.5 s, so a model of 2 s windows learns from minutes) and is scraped over HTTP while hosts
appear, models are trained, replaced, damaged and removed in ``--models``, and a host stops
reporting."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from promtools import free_port
from test_fleet_serve import MINERWATCH, _start, poll, scrape, value

from minerwatch.baseline.store import host_dirname, load_model, save_model
from minerwatch.baseline.train import train_host
from minerwatch.bench.fleet_serve import Answers, serve_answers
from minerwatch.service.fleet.promclient import Connection, PromClient
from minerwatch.service.fleet.serve import (
    LOOKBACK_S,
    STATE_FILE,
    Samples,
    SeriesRegistry,
    host_telemetry,
    ingest,
    read_answers,
)

pytestmark = pytest.mark.slow

STEP = 0.5  # seconds between two scrapes of the fake fleet
WINDOW, HOP = 2.0, 1.0


def _fake(now: float, hosts: int, ends: dict[int, float] | None = None):
    """The fake Prometheus around ``now``; host h's samples stop at ``ends[h]``."""
    stamps = np.arange(now - LOOKBACK_S - 300.0, now + 300.0, STEP)

    def edit(metric, host, labels, values):
        end = (ends or {}).get(host)
        return (stamps <= end if end is not None else np.ones(len(stamps), bool)), values

    return serve_answers(Answers(hosts, stamps, seed=7, edit=edit))


def _train(url: str, host: str, now: float):
    """A model of ``host`` from the fake's last 10 minutes, as ``fleet train`` maps them."""
    answers = read_answers(PromClient(Connection(url)), "", now - 600.0, now)
    registries = {m: SeriesRegistry(m, None) for m in answers}
    held = {
        m: ingest(a, registries[m], {host: 0}).get(0, Samples.empty()) for m, a in answers.items()
    }
    return train_host(host_telemetry(host, held, registries).series, WINDOW, HOP)


def _hosts(metrics: dict, name: str) -> set[str]:
    return {labels["host"] for labels, _ in metrics.get(name, []) if "host" in labels}


def _serve(url: str, models: Path, log: Path, *flags: str, under: tuple[str, ...] = ()):
    """A real ``fleet serve`` of ``models`` on a free loopback port, a cycle a second and no
    retraining unless ``flags`` (given last, so they win) say otherwise, started through
    ``under`` (``("nohup",)``); and a scrape of its /metrics that fails the test once it has
    exited."""
    port = free_port()
    proc = _start(
        [*under, MINERWATCH, "fleet", "serve", "--prometheus", url, "--models", str(models),
         "--port", str(port), "--address", "127.0.0.1", "--interval", "1s",
         "--retrain-every", "0", *flags],
        log,
    )  # fmt: skip

    def metrics() -> dict:
        if proc.poll() is not None:
            pytest.fail(f"fleet serve exited {proc.returncode}:\n{log.read_text()}")
        return scrape(port)

    return proc, metrics


def test_serve_follows_models_trained_replaced_damaged_removed_and_hosts_going_silent(tmp_path):
    now = time.time()
    http = _fake(now, 3)
    url = f"http://127.0.0.1:{http.server_address[1]}"
    try:
        base = _train(url, "h0000", now)
        h1 = _train(url, "h0001", now)
    finally:
        http.shutdown()
    models, later = tmp_path / "models", tmp_path / "later"
    save_model(models, base)
    save_model(models, replace(base, host="h0002"))
    save_model(later, h1)  # trained "while serving", moved in below
    # h0002 stops reporting: its last samples are just inside the first read's lookback
    now = time.time()
    http = _fake(now, 3, {2: now - LOOKBACK_S - 2 * 60.0 + 12.0})
    url = f"http://127.0.0.1:{http.server_address[1]}"
    log = tmp_path / "serve.log"
    proc, metrics = _serve(url, models, log)

    def version(m: dict, host: str) -> str:
        (got,) = [lab["model_version"] for lab, _ in m["minerwatch_model_info"]
                  if lab["host"] == host]  # fmt: skip
        return got

    try:
        first = poll(
            metrics,
            lambda m: (
                _hosts(m, "minerwatch_anomaly_score") >= {"h0000", "h0002"}
                and "minerwatch_unmodelled_hosts" in m
            ),
            timeout=20,
        )
        # a host reporting without a model is named (log, a count), without a host label
        assert value(first, "minerwatch_unmodelled_hosts") == 1
        assert "h0001" not in _hosts(first, "minerwatch_model_info")
        text = log.read_text()
        assert "1 host(s) report to Prometheus but have no usable model" in text, text
        assert "h0001" in text

        # its model saved into --models while serving (as fleet train does): scored, no restart
        shutil.copytree(later / host_dirname("h0001"), models / ".tmp-h0001")
        (models / ".tmp-h0001").rename(models / host_dirname("h0001"))
        got = poll(
            metrics,
            lambda m: (
                "h0001" in _hosts(m, "minerwatch_anomaly_score")
                and value(m, "minerwatch_unmodelled_hosts") == 0
            ),
            timeout=20,
        )
        assert "new model for h0001" in log.read_text()
        # labels stay bounded: no process-exporter group (process name) in any label
        labels = [lab for samples in got.values() for lab, _ in samples]
        assert not {v for lab in labels for v in lab.values()} & {"app", "sshd", "cron"}
        assert {k for lab in labels for k in lab} <= {
            "host", "feature", "metric", "stage", "reason", "version", "model_version",
            "schema_version", "implementation", "major", "minor", "patchlevel",
        }  # fmt: skip

        # h0000's model replaced on disk (another training run: atomic renames): reloaded,
        # a model saved again with only its threshold changed too
        assert value(got, "minerwatch_anomaly_threshold", host="h0000") != 0.75
        save_model(models, replace(load_model(models, "h0000"), threshold=0.75))
        poll(
            metrics,
            lambda m: value(m, "minerwatch_anomaly_threshold", host="h0000") == 0.75,
            timeout=20,
        )
        assert "model of h0000 replaced on disk" in log.read_text()

        # a damaged model (a truncated meta.json): refused, logged, counted, the host keeps
        # the model it had and serving goes on
        h1_version = version(got, "h0001")
        meta = models / host_dirname("h0001") / "meta.json"
        meta.write_text(meta.read_text()[:100])
        damaged = poll(
            metrics, lambda m: value(m, "minerwatch_errors_total", stage="model") >= 1, timeout=20
        )
        assert version(damaged, "h0001") == h1_version
        assert "h0001" in _hosts(damaged, "minerwatch_anomaly_score")
        assert "it keeps the model loaded before" in log.read_text()

        # h0000's model removed: it is no longer served and its series leave /metrics
        shutil.rmtree(models / host_dirname("h0000"))
        gone = poll(metrics, lambda m: "h0000" not in _hosts(m, "minerwatch_model_info"), 20)
        assert not any(
            lab.get("host") == "h0000" for samples in gone.values() for lab, _ in samples
        )
        assert "model of h0000 removed" in log.read_text()

        # h0002 stopped reporting: once nothing of it is left in the lookback, its last
        # score, features and telemetry are no longer published (no rule keeps judging a
        # dead host's last values); when it was last seen and scored still is
        silent = poll(
            metrics, lambda m: "h0002" not in _hosts(m, "minerwatch_anomaly_score"), timeout=20
        )
        for name in ("minerwatch_feature_value", "minerwatch_telemetry",
                     "minerwatch_heavy_work"):  # fmt: skip
            assert "h0002" not in _hosts(silent, name), name
        assert value(silent, "minerwatch_last_score_timestamp_seconds", host="h0002") > 0
        assert value(silent, "minerwatch_windows_scored_total", host="h0002") > 0
        assert "h0002" in _hosts(silent, "minerwatch_model_info")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        http.shutdown()
    text = log.read_text()
    assert code == 0 and "Traceback" not in text, text
    # the removed host's alert state is kept in the state file, as for any host without a model
    saved = json.loads((models / STATE_FILE).read_text())["hosts"]
    assert {"h0000", "h0001", "h0002"} <= set(saved)


def test_a_restart_does_not_retrain_hosts_whose_dismissals_their_model_already_learnt(tmp_path):
    """A dismissal recorded before the host's model was trained is in that model: a restarted
    ``fleet serve`` does not retrain the host "because a dismissal changed" (every host ever
    dismissed, from --days of history, at each restart); one recorded after it still is."""
    from test_fleet_serve import _fake_live_prometheus, run

    from minerwatch.bench.fleet_serve import one_model

    synthetic_model = one_model()
    models = tmp_path / "models"
    for host in ("h0000", "h0001"):
        save_model(models, replace(synthetic_model, host=host))
    for host in ("h0000", "h0001"):
        run("fleet", "dismiss", "--state-dir", str(models), "--host", host,
            "--start", "2026-01-12T02:00Z", "--end", "2026-01-12T03:00Z")  # fmt: skip
        if host == "h0000":  # retrained (learnt it) after the dismissal
            time.sleep(0.01)
            save_model(models, replace(synthetic_model, host=host))
    http = _fake_live_prometheus(time.time())
    log = tmp_path / "serve.log"
    url = f"http://127.0.0.1:{http.server_address[1]}"
    proc, metrics = _serve(url, models, log, "--retrain-every", "24h")
    try:
        poll(
            lambda: log.read_text(),
            lambda text: text.count("cycle:") >= 2 and "a dismissal changed, retraining" in text,
            timeout=20,
        )
        got = metrics()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        http.shutdown()
    text = log.read_text()
    assert code == 0 and "Traceback" not in text, text
    # (h0001 sends nothing here: its model is not held, so it is retrained once it reports)
    assert "h0001: a dismissal changed, retraining it as soon as it reports" in text, text
    assert "h0000: a dismissal changed" not in text, text
    assert value(got, "minerwatch_dismissed_episodes", host="h0000") == 1


# -- hosts come and go: what the server holds follows the hosts reporting ------------------------


def _labelled(server, host: str, metric: str) -> list[tuple[tuple[str, str], ...]]:
    """The label set of each sample ``server`` holds of ``host``'s ``metric``."""
    labels = server.registries[metric].labels
    return [tuple(sorted(labels[i].items())) for i in server.buffers[host][metric].sid.tolist()]


def churning_fleet():  # type: ignore[no-untyped-def]
    """The fleet both side-by-side tests serve: 3 hosts replaced by new names every 40
    minutes, 2 that stay (``stay-001`` silent for longer than the lookback, then back), the
    cycles' clock steps (a gap longer than the lookback among them), its answers on a
    loopback HTTP server, and the one model every host scores with."""
    from minerwatch.bench.fleet_churn import ChurnAnswers
    from minerwatch.bench.fleet_serve import one_model

    t0 = 1_800_000_000.0
    steps = [300.0] * 12 + [60.0, 45.0, 2500.0, 60.0] + [300.0] * 14
    fleet = ChurnAnswers(3, 2400.0, t0, stay=2, silent={"stay-001": (t0 + 900.0, t0 + 3600.0)})
    http = serve_answers(fleet)
    return t0, steps, fleet, http, f"http://127.0.0.1:{http.server_address[1]}", one_model()


def test_forgetting_the_series_of_hosts_gone_scores_the_others_bit_for_bit():
    """Two servers on a churning fleet (3 hosts replaced by new names every 40 minutes, 2
    that stay, one of which is silent for longer than the lookback and comes back, a gap of
    cycles longer than the lookback): the one that forgets the series not read in the lookback
    holds the same samples, scores, features and alerts as the one that keeps every series
    ever read, and holds only the series of the hosts in the lookback."""
    from minerwatch.service.fleet.serve import FleetServer, HostState

    t0, steps, fleet, http, url, model = churning_fleet()
    now = [t0]
    servers = [
        FleetServer(
            PromClient(Connection(url)),
            Path("."),
            clock=lambda: now[0],
            forget=forget,
            unload=False,
        )  # fmt: skip
        for forget in (True, False)
    ]
    forgetful, keeping = servers

    def newest(host: str, born: float, gone: float) -> float:
        """The time of the newest sample of ``host`` read by now (-inf: none)."""
        last = min(now[0], gone - 15.0) // 15.0 * 15.0
        if host == "stay-001" and t0 + 900.0 <= last < t0 + 3600.0:
            last = t0 + 885.0
        return last if last >= born else -np.inf

    per_host = sum(len(fleet.shapes[m]) for m in fleet.shapes)
    generation = -1
    fewer = 0
    try:
        for step in (0.0, *steps):
            now[0] += step
            g = fleet.generation(now[0])
            for server in servers:  # the new hosts' models appear, the old ones' go
                if g != generation:
                    for host in [h for h in server.hosts if h.startswith("g")]:
                        del server.hosts[host]
                    names = [fleet.name(g, s) for s in range(3)] + ["stay-000", "stay-001"]
                    for host in names:
                        if host not in server.hosts:
                            server.hosts[host] = HostState.of(replace(model, host=host))
                    server.read_end = None
            generation = g
            counts = forgetful.cycle()
            assert counts == keeping.cycle()
            for host, a in forgetful.hosts.items():
                b = keeping.hosts[host]
                for metric, held in forgetful.buffers[host].items():
                    other = keeping.buffers[host][metric]
                    np.testing.assert_array_equal(held.ts, other.ts, err_msg=f"{host} {metric}")
                    np.testing.assert_array_equal(held.value, other.value)
                    assert _labelled(forgetful, host, metric) == _labelled(keeping, host, metric)
                for name in ("score", "features", "contributions", "telemetry", "sample_ts",
                             "last_slot", "windows_total", "alerts_total", "episode_start",
                             "alerted"):  # fmt: skip
                    np.testing.assert_equal(getattr(a, name), getattr(b, name), err_msg=name)
                assert a.alert == b.alert
            start = now[0] - LOOKBACK_S - 120.0
            inside = [
                h for h, _, born, gone in fleet.reporting(start, now[0])
                if newest(h, born, gone) > start
            ]  # fmt: skip
            assert forgetful.series == per_host * len(inside), (now[0] - t0, inside)
            if now[0] == t0 + 3600.0:  # stay-001 is back
                back = forgetful.hosts["stay-001"].windows_total
            fewer += forgetful.series < keeping.series
    finally:
        http.shutdown()
    hosts_seen = 3 * (generation + 1) + 2
    assert keeping.series == per_host * hosts_seen  # every host ever read, never forgotten
    assert fewer >= len(steps) // 2
    # the churning hosts were scored, and the host that came back after its silence too
    assert forgetful.hosts[fleet.name(generation, 0)].windows_total > 0
    assert forgetful.hosts["stay-001"].windows_total > back


#: Seconds the hosts that leave still have in the lookback when their history is written:
#: what promtool, Prometheus and ``fleet serve`` have to start and read them once (a
#: multiple of the 15 s between samples).
LEAVING_S = 30.0


def _openmetrics(hosts: dict[str, tuple[float, float]]) -> str:
    """node_exporter's and process-exporter's series (those of the benchmark's synthetic
    hosts) of each host, every 15 s from its first time to its last, as OpenMetrics."""
    from minerwatch.bench.fleet_serve import _series
    from minerwatch.service.fleet.nodeexporter import METRICS

    rng = np.random.default_rng(5)
    lines = []
    for metric in METRICS:
        counter = metric.endswith("_total")
        lines.append(f"# TYPE {metric.removesuffix('_total')} {'counter' if counter else 'gauge'}")
        for host, (first, last) in hosts.items():
            stamps = np.arange(first, last + 1.0, 15.0)
            for labels in _series(metric, 0):
                own = {k: v.replace("h0000", host) for k, v in labels.items() if k != "__name__"}
                text = ",".join(f'{k}="{v}"' for k, v in own.items())
                if counter:
                    values = 1e5 + np.cumsum(rng.uniform(0.0, 30.0, len(stamps)))
                elif "Mem" in metric:
                    values = np.full(len(stamps), 8e9 if "Total" in metric else 5e9)
                else:
                    values = rng.uniform(0.5, 4.0, len(stamps))
                lines.extend(
                    f"{metric}{{{text}}} {v!r} {t:.3f}"
                    for t, v in zip(stamps.tolist(), values.tolist(), strict=True)
                )
    return "\n".join(lines) + "\n# EOF\n"


@pytest.mark.prometheus
def test_serve_forgets_the_series_of_hosts_gone_longer_than_the_lookback(tmp_path):
    """A real Prometheus (history written with promtool) holds a host that stays and three
    that stopped reporting (replaced, as autoscaling does: one with a model, two without)
    whose last samples are about to leave the lookback. A real ``fleet serve`` reads them all
    at first (``minerwatch_fleet_series``: 4 hosts' series); once their newest sample is older
    than the lookback it holds only the staying host's series, which it goes on scoring."""
    from promtools import PROMTOOL, require, started_prometheus

    from minerwatch.bench.fleet_serve import _series, one_model
    from minerwatch.service.fleet.nodeexporter import METRICS

    promtool = require(PROMTOOL)
    per_host = sum(len(_series(m, 0)) for m in METRICS)
    models = tmp_path / "models"
    model = one_model()
    for host in ("stay-000", "gone-000"):
        save_model(models, replace(model, host=host))
    now = time.time() // 15.0 * 15.0
    left = now - LOOKBACK_S - 120.0 + LEAVING_S  # the newest sample of the hosts gone
    history = {"stay-000": (now - 2400.0, now + 600.0)}
    history.update({f"gone-00{i}": (now - 2400.0, left) for i in range(3)})
    (tmp_path / "fleet.om").write_text(_openmetrics(history))
    done = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(tmp_path / "fleet.om"),
         str(tmp_path / "tsdb")],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    log = tmp_path / "serve.log"
    with started_prometheus(tmp_path, tmp_path / "tsdb") as prom:
        proc, metrics = _serve(prom.url, models, log)

        try:
            first = poll(metrics, lambda m: "minerwatch_fleet_series" in m, timeout=LEAVING_S)
            assert time.time() < left + LOOKBACK_S + 120.0, "started too late to read them"
            assert value(first, "minerwatch_fleet_series") == 4 * per_host
            assert value(first, "minerwatch_unmodelled_hosts") == 2
            later = poll(
                metrics, lambda m: value(m, "minerwatch_fleet_series") == per_host, timeout=40
            )
            assert time.time() > left + LOOKBACK_S + 120.0  # not before they left the lookback
            assert value(later, "minerwatch_unmodelled_hosts") == 0
            # the host that stays is still scored; the one gone keeps its model, not its score
            assert _hosts(later, "minerwatch_anomaly_score") == {"stay-000"}
            assert "gone-000" in _hosts(later, "minerwatch_model_info")
            # ...and its model is unloaded: only the staying host's is held in memory, while
            # what MinerwatchFleetHostNotScored needs of the one gone is still published
            assert value(first, "minerwatch_fleet_models_loaded") == 2
            assert value(later, "minerwatch_fleet_models_loaded") == 1
            assert value(later, "minerwatch_windows_scored_total", host="gone-000") > 0
            assert value(later, "minerwatch_last_sample_timestamp_seconds", host="gone-000") > 0
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
    text = log.read_text()
    assert code == 0 and "Traceback" not in text, text
    assert "1 host(s) sent nothing for longer than the lookback, their models unloaded" in text


def test_unloading_the_models_of_hosts_gone_scores_as_a_server_that_keeps_them(tmp_path):
    """Hosts replaced by new names whose models stay in --models (every host ever seen has
    one), and a host silent for longer than the lookback that comes back: a server that
    unloads the models of hosts silent for longer than the lookback publishes, cycle after
    cycle, exactly what a server that keeps every model loaded publishes (scores, features,
    alerts, counters, the silent hosts' series), and holds only the models of the hosts in
    the lookback; the host that comes back is loaded again and scored as by the other."""
    from minerwatch.service.fleet.nodeexporter import PROCESS_METRICS
    from minerwatch.service.fleet.serve import FleetServer, coalesce

    t0, steps, fleet, http, url, model = churning_fleet()
    models = tmp_path / "models"
    for host in ("stay-000", "stay-001"):
        save_model(models, replace(model, host=host))
    now = [t0]
    servers = [
        FleetServer(PromClient(Connection(url)), models, clock=lambda: now[0], unload=unload)
        for unload in (True, False)
    ]
    unloading, keeping = servers
    generation = -1
    fewer = away = 0
    try:
        for step in (0.0, *steps):
            now[0] += step
            g = fleet.generation(now[0])
            if g != generation:  # the new hosts' models are trained; the old ones' stay
                for slot in range(3):
                    save_model(models, replace(model, host=fleet.name(g, slot)))
                generation = g
                if step == 0.0:
                    assert unloading.load_models() == keeping.load_models() == 5
                    # checked, not held: no read has shown a host yet
                    assert not unloading.hosts and len(unloading.dormant) == 5
            counts = unloading.cycle()
            assert counts == keeping.cycle()
            assert unloading.snapshot().hosts == keeping.snapshot().hosts, now[0] - t0
            for host, a in unloading.hosts.items():
                b = keeping.hosts[host]
                for name in ("score", "features", "contributions", "telemetry", "sample_ts",
                             "last_slot", "windows_total", "alerts_total", "episode_start",
                             "score_ts"):  # fmt: skip
                    np.testing.assert_equal(getattr(a, name), getattr(b, name), err_msg=name)
                assert coalesce(a.alerted) == coalesce(b.alerted)
                assert a.alert == b.alert
            # held: the models of the hosts with a sample in the lookback, and those only
            inside = {
                h for h, held in keeping.buffers.items()
                if any(len(s.ts) for m, s in held.items() if m not in PROCESS_METRICS)
            }  # fmt: skip
            assert set(unloading.hosts) == inside, now[0] - t0
            assert set(unloading.hosts) | set(unloading.dormant) == set(keeping.hosts)
            assert unloading.snapshot().models_loaded == len(unloading.hosts)
            if now[0] == t0 + 3600.0:  # stay-001 is back
                assert "stay-001" in unloading.hosts
                back = unloading.hosts["stay-001"].windows_total
            fewer += len(unloading.hosts) < len(keeping.hosts)
            away += "stay-001" in unloading.dormant
    finally:
        http.shutdown()
    hosts_seen = 3 * (generation + 1) + 2
    assert len(keeping.hosts) == hosts_seen  # every model ever trained, never unloaded
    assert len(unloading.hosts) <= 8  # the hosts reporting (the last generation left late)
    assert fewer >= len(steps) // 2
    assert away >= 2 and unloading.hosts["stay-001"].windows_total > back
    # a restart takes back the dormant hosts' alert state from the state file too
    keeping.state_file = unloading.state_file = tmp_path / "state.json"
    unloading.save_state()
    saved = json.loads((tmp_path / "state.json").read_text())["hosts"]
    assert set(saved) == set(keeping.hosts)


def test_the_alert_state_of_a_host_without_a_model_is_forgotten_after_the_history(tmp_path):
    """A removed model's alert state is kept in the state file (taken back if the model
    comes again), but not for ever: once the host has had no model for longer than the
    history a retraining reads (``--days``), its entry goes. Hosts replaced by new names each
    day otherwise grew the file, rewritten every cycle, without end."""
    now = time.time()
    http = _fake(now, 2)
    url = f"http://127.0.0.1:{http.server_address[1]}"
    models = tmp_path / "models"
    try:
        base = _train(url, "h0000", now)
        save_model(models, base)
        save_model(models, replace(base, host="h0001"))
        log = tmp_path / "serve.log"
        days = 8.0 / 86400  # a retraining would read 8 s of history
        proc, _ = _serve(url, models, log, "--days", repr(days))
        state = models / STATE_FILE

        def saved() -> dict:
            if proc.poll() is not None:
                pytest.fail(f"fleet serve exited {proc.returncode}:\n{log.read_text()}")
            return json.loads(state.read_text())["hosts"] if state.exists() else {}

        try:
            poll(saved, lambda h: {"h0000", "h0001"} <= set(h), timeout=30)
            shutil.rmtree(models / host_dirname("h0000"))
            kept = poll(saved, lambda h: "kept_since" in h.get("h0000", {}), timeout=30)
            since = kept["h0000"]["kept_since"]
            assert abs(since - time.time()) < 30
            after = poll(saved, lambda h: "h0000" not in h, timeout=60)
            assert time.time() >= since + 8.0
            assert "h0001" in after and "kept_since" not in after["h0001"]
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
    finally:
        http.shutdown()
    text = log.read_text()
    assert code == 0 and "Traceback" not in text, text
    assert "forgot the alert state of 1 host(s) without a model for longer than" in text, text
    assert "h0000" not in json.loads(state.read_text())["hosts"]
