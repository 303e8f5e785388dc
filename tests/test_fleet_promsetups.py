"""Fleet mode against Prometheus setups real fleets have, with a real Prometheus scraping a
real node_exporter: one exporter scraped by two jobs at once (the second with only some
collectors, node_exporter's ``collect[]``), one scraped under a relabelled name with a
``host`` label, and a ``--days`` longer than what Prometheus holds."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from promtools import PROMETHEUS, _terminate, free_port, require, running_prometheus

pytestmark = [pytest.mark.prometheus]

MINERWATCH = str(Path(sys.executable).with_name("minerwatch"))
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or "/usr/bin/prometheus-node-exporter"
WINDOW = ["--window", "1s", "--hop", "0.5s"]


def _job(name: str, target: str, **extra: object) -> dict[str, object]:
    return {
        "job_name": name,
        "scrape_interval": "500ms",
        "scrape_timeout": "500ms",
        "static_configs": [{"targets": [target]}],
        **extra,
    }


@pytest.fixture(scope="module")
def prom(tmp_path_factory):
    """(Prometheus, start, exporter's instance) once ~20 s of scrapes are held: job "node"
    (every collector), job "node-mem" (meminfo and loadavg only), both of 127.0.0.1, and
    job "relabelled" of the same exporter as instance "db-2" with a label host "db-2.lan"."""
    require(NODE_EXPORTER)
    require(PROMETHEUS)
    root = tmp_path_factory.mktemp("setups")
    port = free_port()
    with (root / "node.log").open("wb") as log:
        exporter = subprocess.Popen(
            [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    instance = f"127.0.0.1:{port}"
    jobs = [
        _job("node", instance),
        _job("node-mem", instance, params={"collect[]": ["meminfo", "loadavg"]}),
        _job(
            "relabelled", instance,
            relabel_configs=[
                {"target_label": "instance", "replacement": "db-2"},
                {"target_label": "host", "replacement": "db-2.lan"},
            ],
        ),
    ]  # fmt: skip
    try:
        with running_prometheus(root, jobs) as server:
            start = time.time()
            server.wait_for('count(count_over_time(node_load1{job="node"}[1m]) >= 36) == 1', 60)
            server.wait_for('count(count_over_time(node_load1{job="node-mem"}[1m]) >= 36)', 20)
            yield server, start, instance
    finally:
        _terminate(exporter)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [MINERWATCH, *args], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"minerwatch {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return done


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_two_jobs_on_one_exporter_give_one_jobs_rows_and_a_note(prom, tmp_path):
    server, start, instance = prom
    span = ["--start", f"{start:.3f}", "--end", f"{time.time() - 2:.3f}"]
    both = run(
        "fleet", "export", "--prometheus", server.url, *span, "--output", str(tmp_path / "a")
    )
    one = run(
        "fleet", "export", "--prometheus", server.url, "--selector", '{job="node"}', *span,
        "--output", str(tmp_path / "n"),
    )  # fmt: skip
    assert "scrape targets" not in one.stderr
    mixed, reference = rows(tmp_path / "a/127.0.0.1.csv"), rows(tmp_path / "n/127.0.0.1.csv")
    assert len(reference) > 30 and all(r["cpu_percent"] for r in reference[1:])
    # the rows and values of job="node" alone: not node-mem's scrapes interleaved, whose
    # rows have no CPU counters and so left every CPU share beside them empty
    assert mixed == reference
    note = f'{{instance="{instance}",job="node"}}, {{instance="{instance}",job="node-mem"}}'
    assert f"host 127.0.0.1: node_exporter series from 2 scrape targets at once, {note}" in (
        both.stderr
    )
    assert "--selector '{job=\"node\"}'" in both.stderr


def test_serve_reads_one_job_of_two_and_says_so(prom, tmp_path):
    server, _, _ = prom
    key = tmp_path / "model.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    models = tmp_path / "models"
    run(
        "fleet", "train", "--prometheus", server.url, "--selector", '{job="node"}',
        "--days", "0.01", "--models", str(models), *WINDOW, "--model-key", str(key),
    )  # fmt: skip
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as fh:
        serve = subprocess.Popen(
            [MINERWATCH, "fleet", "serve", "--prometheus", server.url, "--models", str(models),
             "--model-key", str(key), "--port", str(port), "--address", "127.0.0.1",
             "--interval", "1s", "--retrain-every", "0"],
            stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        text = ""
        while "minerwatch_windows_scored_total" not in text and time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                continue
    finally:
        _terminate(serve)
    said = log.read_text()
    lines = {
        line.split(" ")[0]: line.split(" ")[-1] for line in text.splitlines() if line[:1] != "#"
    }
    cpu = lines.get('minerwatch_telemetry{host="127.0.0.1",metric="cpu_percent"}')
    assert cpu is not None and cpu != "NaN", f"{text[-3000:]}\n{said[-2000:]}"
    assert float(lines['minerwatch_windows_scored_total{host="127.0.0.1"}']) > 0
    assert "host 127.0.0.1: node_exporter series from 2 scrape targets at once" in said


def test_host_label_missing_on_some_series_is_said(prom, tmp_path):
    server, start, instance = prom
    span = ["--start", f"{start:.3f}", "--end", f"{time.time() - 2:.3f}"]
    done = run(
        "fleet", "export", "--prometheus", server.url, "--host-label", "host", *span,
        "--output", str(tmp_path / "h"),
    )  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == ["db-2.lan.csv"]
    assert (
        f"--host-label host: left out 2 node_exporter targets without it: "
        f'{{instance="{instance}",job="node"}}, {{instance="{instance}",job="node-mem"}}'
    ) in done.stderr
    wrong = subprocess.run(
        [MINERWATCH, "fleet", "export", "--prometheus", server.url, "--host-label", "nodename",
         *span, "--output", str(tmp_path / "x")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert wrong.returncode == 2
    assert "--host-label: expected node_exporter series with a label 'nodename'" in wrong.stderr
    assert "got 3 node_exporter targets without it" in wrong.stderr
    assert "Traceback" not in wrong.stderr


def test_serve_names_the_targets_without_the_host_label(prom, tmp_path):
    """fleet serve scores what carries --host-label and names, once, the targets that do not
    (as the batch commands above); silently unscored before."""
    server, _, instance = prom
    models = tmp_path / "models"
    label = ["--prometheus", server.url, "--host-label", "host"]
    run("fleet", "train", *label, "--days", "0.01", "--models", str(models), *WINDOW)
    log = tmp_path / "serve.log"
    with log.open("wb") as fh:
        serve = subprocess.Popen(
            [MINERWATCH, "fleet", "serve", *label, "--models", str(models), "--port", "0",
             "--address", "127.0.0.1", "--interval", "1s", "--retrain-every", "0"],
            stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while log.read_text().count("scored") < 1 and time.monotonic() < deadline:
            assert serve.poll() is None, log.read_text()
            time.sleep(0.5)
        time.sleep(2.5)  # two more cycles: the warning is not repeated
    finally:
        _terminate(serve)
    said = log.read_text()
    warning = (
        f"--host-label host: 2 node_exporter target(s) without it are not scored: "
        f'{{instance="{instance}",job="node"}}, {{instance="{instance}",job="node-mem"}}'
    )
    assert said.count(warning) == 1, said[-3000:]


def test_train_on_less_history_than_asked_says_so(prom, tmp_path):
    server, _, _ = prom
    done = run(
        "fleet", "train", "--prometheus", server.url, "--selector", '{job="relabelled"}',
        "--days", "14", "--models", str(tmp_path / "m"), *WINDOW,
    )  # fmt: skip
    assert done.stdout.splitlines()[1].split()[0] == "db-2"
    assert "1 hosts trained on less history than the 14 days asked" in done.stderr
    assert "db-2 from " in done.stderr
