"""``minerwatch fleet serve``'s scheduled retraining never learns a miner, end to end.

Six hours of two hosts' node_exporter and process-exporter series are backfilled into a real
Prometheus (``promtool tsdb create-blocks-from openmetrics``), up to the moment the test
starts, and both hosts' first models are trained by ``fleet train`` on the clean first part.
A miner then takes 80 % of every core of each host: on ``web-1`` it started 20 minutes ago and
still runs (``fleet serve`` sees it alerting: a live, open episode); on ``web-2`` it ran for
an hour, two to three hours ago (before the server started: only rescoring the history with
the current model finds it). ``fleet serve`` runs as a command with a one-second retrain
schedule, so both hosts retrain at once from ``--days`` of history, and the server loads the
new models. Those must have left out at least the miner and its margin (fewer windows), still
alert on each miner and nowhere else. The counter-example, a model trained the way the
retraining trains on the same history with nothing left out, does not alert on the miners:
so the checks fail if the exclusion does not happen.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from promtools import (
    PROMETHEUS,
    PROMTOOL,
    Prometheus,
    free_port,
    require,
    started_prometheus,
)

from minerwatch.baseline.batch import score_series
from minerwatch.baseline.exclude import exclusion_margin
from minerwatch.baseline.fitted import HostModel
from minerwatch.baseline.store import load_model, read_key
from minerwatch.baseline.train import train_host
from minerwatch.bench.fleet_backfill import host_openmetrics
from minerwatch.features.io import HostSeries, from_arrays
from minerwatch.features.schema import METRIC_COLUMNS
from minerwatch.service.fleet.promclient import Connection
from minerwatch.service.fleet.train import FleetReader

pytestmark = [pytest.mark.slow, pytest.mark.prometheus]

MINERWATCH = str(Path(sys.executable).with_name("minerwatch"))
SCRAPE = 15.0  # node_exporter's scrape interval in the backfilled history
WINDOW = 60.0  # fleet train's default window and hop
HISTORY = 6 * 3600.0
CORES = 4
LIVE, EARLIER = "web-1", "web-2"
#: The first models learn the history up to this long before now: before either miner.
FIRST_MODEL_END = 3 * 3600.0 + 900.0
#: web-2's miner, as (seconds before now) it started and stopped.
EARLIER_MINER = (3 * 3600.0, 2 * 3600.0)
#: web-1's miner started this long before now and is still running.
LIVE_MINER = 1200.0


def workload(host: str, ts: np.ndarray, mining: np.ndarray, seed: int) -> HostSeries:
    """A web server's telemetry: CPU, traffic and context switches follow one request load;
    where ``mining``, a miner takes 80 % of every core and explains none of it."""
    rng = np.random.default_rng(seed)
    n = len(ts)
    load = np.empty(n)
    x = 0.0
    for i, e in enumerate(rng.normal(0.0, 0.04, n)):  # a slow AR(1) around 0.35
        x = 0.97 * x + e
        load[i] = x
    load = np.clip(0.35 + load + 0.1 * np.sin(2 * np.pi * ts / 86400.0), 0.05, 0.9)
    user = 8.0 + 45.0 * load + rng.normal(0.0, 1.5, n)
    system = 3.0 + 8.0 * load + rng.normal(0.0, 0.4, n)
    iowait = 1.0 + np.abs(rng.normal(0.0, 0.3, n))
    top = (user + system) * CORES * 0.4
    user = np.where(mining, np.minimum(user + 80.0, 97.0 - system - iowait), user)
    top = np.where(mining, 80.0 * CORES, top)
    busy = (user + system) / 100.0
    pps = 3000.0 * load + rng.normal(0.0, 60.0, n) + np.where(mining, 4.0, 0.0)
    cols = {
        "cpu_percent": user + system,
        "cpu_user_percent": user,
        "cpu_system_percent": system,
        "cpu_iowait_percent": iowait,
        "load1": CORES * busy + rng.normal(0.0, 0.2, n),
        "mem_percent": 40.0 + rng.normal(0.0, 0.5, n) + np.where(mining, 3.0, 0.0),
        "disk_read_bps": 2e5 * (1 + load) * rng.lognormal(0.0, 0.2, n),
        "disk_write_bps": 5e5 * (1 + load) * rng.lognormal(0.0, 0.2, n),
        "net_rx_bps": pps * 900.0,
        "net_tx_bps": pps * 0.8 * 1200.0,
        "net_rx_pps": pps,
        "net_tx_pps": pps * 0.8,
        "tcp_established": np.rint(40.0 + 300.0 * load + rng.normal(0.0, 5.0, n)),
        "procs_total": np.rint(300.0 + rng.normal(0.0, 3.0, n)),
        "procs_running": 1.0 + rng.poisson(CORES * busy),
        "ctx_switches_ps": 4000.0 + 30000.0 * load + rng.normal(0.0, 500.0, n),
        "top_proc_cpu_percent": top,
    }
    names = tuple(c for c in METRIC_COLUMNS if c in cols)  # what a fleet maps
    values = np.column_stack([np.maximum(cols[c], 0.0) for c in names])
    return from_arrays(host, ts, values, names)


@contextmanager
def backfilled_prometheus(root: Path, hosts: list[HostSeries]) -> Iterator[Prometheus]:
    """A real Prometheus whose TSDB holds ``hosts`` as node_exporter would have scraped them."""
    require(PROMETHEUS)
    promtool = require(PROMTOOL)
    tsdb = root / "tsdb"
    text = root / "fleet.om"
    for series in hosts:  # a family's samples must be contiguous: one file per host
        with text.open("w") as fh:
            fh.writelines(host_openmetrics(series, CORES, 16.0))
            fh.write("# EOF\n")
        done = subprocess.run(
            [promtool, "tsdb", "create-blocks-from", "openmetrics", str(text), str(tsdb)],
            capture_output=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")
    with started_prometheus(root, tsdb) as prom:
        yield prom


def run(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [MINERWATCH, *args], capture_output=True, text=True, timeout=300, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"minerwatch {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return done


Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(port: int) -> Samples:
    """Every sample of ``fleet serve``'s /metrics: name -> [(labels, value)]."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    (hit,) = [
        v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())
    ]
    return hit


def wait_until(
    what: str, check: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, timeout: float
) -> None:
    """Poll ``check`` while ``proc`` runs; fail with the log's tail if it ends or times out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (OSError, ValueError):  # not listening yet, or no such sample yet
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no {what} (exit {proc.poll()}):\n{log.read_text()[-4000:]}")
        time.sleep(0.3)


def hits(model: HostModel, series: HostSeries, start: float, end: float) -> tuple[int, int, int]:
    """(alerted windows in [start, end), windows there, alerted windows elsewhere), windows
    that end in the alert rule's closing delay after ``end`` not counted as elsewhere."""
    scored = score_series(model, series)
    inside = (scored.window_start >= start) & (scored.window_start < end)
    closing = (scored.window_start >= end) & (
        scored.window_start < end + (model.alert_windows + 1) * model.hop
    )
    elsewhere = ~inside & ~closing
    return int(scored.alert[inside].sum()), int(inside.sum()), int(scored.alert[elsewhere].sum())


def test_scheduled_retraining_leaves_out_a_live_miner_and_an_earlier_one(tmp_path: Path) -> None:
    now = float(np.floor(time.time() / SCRAPE) * SCRAPE)
    ts = np.arange(now - HISTORY, now, SCRAPE)
    # each host's miner as [start, end): web-1's still runs, web-2's stopped two hours ago
    miners = {
        LIVE: (now - LIVE_MINER, now + SCRAPE),
        EARLIER: (now - EARLIER_MINER[0], now - EARLIER_MINER[1]),
    }
    hosts = [
        workload(host, ts, (ts >= a) & (ts < b), seed)
        for seed, (host, (a, b)) in enumerate(sorted(miners.items()), start=1)
    ]
    key = tmp_path / "model.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    models = tmp_path / "models"
    with backfilled_prometheus(tmp_path, hosts) as prom:
        common = ["--prometheus", prom.url, "--selector", '{job="node"}']
        # the first models learn the clean start of the history only
        run("fleet", "train", *common, "--start", f"{now - HISTORY}",
            "--end", f"{now - FIRST_MODEL_END}", "--models", str(models),
            "--model-key", str(key))  # fmt: skip
        first = {h: json.loads((models / h / "meta.json").read_text()) for h in miners}
        port = free_port()
        log = tmp_path / "serve.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                [MINERWATCH, "fleet", "serve", *common, "--models", str(models),
                 "--model-key", str(key), "--port", str(port), "--address", "127.0.0.1",
                 "--interval", "1s", "--retrain-every", "1s", "--days", f"{HISTORY / 86400}"],
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        try:
            # the live miner alerts in the server, the one that stopped before it started not
            seen: list[Samples] = []

            def scraped() -> bool:
                seen.append(scrape(port))
                return True

            wait_until("metrics", scraped, proc, log, 60)
            assert value(seen[-1], "minerwatch_alert_active", host=LIVE) == 1.0
            assert value(seen[-1], "minerwatch_alert_active", host=EARLIER) == 0.0
            # both hosts are due at once: retrained, and the new models loaded by the server
            wait_until(
                "retrained models in use",
                lambda: all(
                    value(scrape(port), "minerwatch_model_trained_timestamp_seconds", host=h)
                    > first[h]["created_at"]
                    for h in miners
                ),
                proc,
                log,
                120,
            )
            after = scrape(port)
            # the open episode stays open across the swap
            assert value(after, "minerwatch_alert_active", host=LIVE) == 1.0
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
        text = log.read_text()
        assert code == 0, text
        assert "Traceback" not in text and "crashed" not in text, text
        reader = FleetReader(Connection(prom.url), now - HISTORY, now, '{job="node"}')
        series = {h: reader.read(h).series for h in miners}
    secret = read_key(key)
    for host, (start, end) in miners.items():
        retrained = load_model(models, host, key=secret)
        assert retrained.meta["created_at"] > first[host]["created_at"]
        data = series[host]
        span = float(data.timestamps[-1] - data.timestamps[0])
        margin = exclusion_margin(span, WINDOW, retrained.alert_windows) // WINDOW
        miner = (min(end, now) - start) // WINDOW
        every = len(score_series(retrained, data).score)
        # at least the miner and the margin before it were left out (after it too, if it ended)
        sides = 1 if end > now else 2
        assert retrained.meta["windows"] <= every - miner - sides * margin + 10, host
        # so the new model still alerts on the miner, and nowhere else
        caught, windows, elsewhere = hits(retrained, data, start, end)
        assert windows >= miner - 1 and caught >= 0.75 * windows, (host, caught, windows)
        assert elsewhere <= 3, (host, elsewhere)
        # what learning the same history with the miner in it gives: the miner is normal
        learnt = train_host(
            data, retrained.window, retrained.hop,
            params={"alert_windows": retrained.alert_windows}, min_windows=1,
        )  # fmt: skip
        assert learnt.meta["windows"] >= every - 2
        caught_learnt, _, _ = hits(learnt, data, start, end)
        assert caught_learnt <= 0.25 * windows, (host, caught_learnt, windows)


def serve_until_retrained(
    tmp_path: Path, common: list[str], models: Path, host: str, created_at: float
) -> tuple[Samples, str]:
    """Run ``fleet serve`` (daily schedule) until ``host``'s model is newer than
    ``created_at``, then stop it; its last scrape and its log, checked for a clean exit."""
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [MINERWATCH, "fleet", "serve", *common, "--models", str(models),
             "--port", str(port), "--address", "127.0.0.1", "--interval", "1s",
             "--retrain-every", "24h", "--days", f"{HISTORY / 86400}"],
            stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        wait_until(
            "the retrained model in use",
            lambda: (
                value(scrape(port), "minerwatch_model_trained_timestamp_seconds", host=host)
                > created_at
            ),
            proc,
            log,
            120,
        )
        last = scrape(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    text = log.read_text()
    assert code == 0 and "Traceback" not in text, text
    return last, text


def test_a_dismissed_alert_is_learnt_by_the_retraining_it_starts(tmp_path: Path) -> None:
    """``fleet dismiss`` before ``fleet serve`` starts: the server retrains the host at once
    (its model is young, not due by age), and the new model learnt the dismissed hour: it no
    longer alerts there (the test above shows that without the dismissal it still does)."""
    now = float(np.floor(time.time() / SCRAPE) * SCRAPE)
    ts = np.arange(now - HISTORY, now, SCRAPE)
    start, end = now - EARLIER_MINER[0], now - EARLIER_MINER[1]
    hosts = [workload(EARLIER, ts, (ts >= start) & (ts < end), 2)]  # a batch job, say
    models = tmp_path / "models"
    with backfilled_prometheus(tmp_path, hosts) as prom:
        common = ["--prometheus", prom.url, "--selector", '{job="node"}']
        run("fleet", "train", *common, "--start", f"{now - HISTORY}",
            "--end", f"{now - FIRST_MODEL_END}", "--models", str(models))  # fmt: skip
        first = json.loads((models / EARLIER / "meta.json").read_text())
        data = FleetReader(Connection(prom.url), now - HISTORY, now, '{job="node"}').read(EARLIER)
        before, windows, _ = hits(load_model(models, EARLIER), data.series, start, end)
        assert windows >= 55 and before >= 0.75 * windows, "the first model must page on it"
        done = run("fleet", "dismiss", "--state-dir", str(models), "--host", EARLIER,
                   "--start", f"{start}", "--end", f"{end}", "--reason", "batch job")  # fmt: skip
        assert done.stdout.startswith(f"dismissed {EARLIER} from ")
        (record,) = json.loads(run("fleet", "dismiss", "--state-dir", str(models), "--list",
                                   "--json").stdout)  # fmt: skip
        assert (record["host"], record["start"], record["end"]) == (EARLIER, start, end)
        assert (models / "fleet-dismissed.json").stat().st_mode & 0o777 == 0o600
        last, text = serve_until_retrained(tmp_path, common, models, EARLIER, first["created_at"])
        assert value(last, "minerwatch_dismissed_episodes", host=EARLIER) == 1.0
        assert f"{EARLIER}: a dismissal changed, retraining it now" in text
    retrained = load_model(models, EARLIER)
    every = len(score_series(retrained, data.series).score)
    assert retrained.meta["windows"] >= every - 5, "the dismissed hour was left out"
    learnt, _, _ = hits(retrained, data.series, start, end)
    assert learnt <= 0.25 * windows, (learnt, windows)


def test_an_open_episode_dismissed_is_learnt_as_far_as_it_has_gone(tmp_path: Path) -> None:
    """A load that started an hour ago and goes on (a service moved to the host for good):
    dismissed while its episode is open, the retraining learns it up to now instead of stopping
    before the episode, so the page ends instead of lasting as long as the load."""
    now = float(np.floor(time.time() / SCRAPE) * SCRAPE)
    ts = np.arange(now - HISTORY, now, SCRAPE)
    start = now - 3600.0
    hosts = [workload(LIVE, ts, ts >= start, 1)]
    models = tmp_path / "models"
    with backfilled_prometheus(tmp_path, hosts) as prom:
        common = ["--prometheus", prom.url, "--selector", '{job="node"}']
        run("fleet", "train", *common, "--start", f"{now - HISTORY}",
            "--end", f"{now - FIRST_MODEL_END}", "--models", str(models))  # fmt: skip
        first = json.loads((models / LIVE / "meta.json").read_text())
        data = FleetReader(Connection(prom.url), now - HISTORY, now, '{job="node"}').read(LIVE)
        before, windows, _ = hits(load_model(models, LIVE), data.series, start, now)
        assert windows >= 55 and before >= 0.75 * windows, "the first model must page on it"
        run("fleet", "dismiss", "--state-dir", str(models), "--host", LIVE,
            "--start", f"{start}", "--end", f"{now}", "--reason", "new service")  # fmt: skip
        serve_until_retrained(tmp_path, common, models, LIVE, first["created_at"])
    retrained = load_model(models, LIVE)
    every = len(score_series(retrained, data.series).score)
    assert retrained.meta["windows"] >= every - 5, "training stopped before the open episode"
    learnt, _, _ = hits(retrained, data.series, start, now)
    assert learnt <= 0.25 * windows, (learnt, windows)
