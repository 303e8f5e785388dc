"""deploy/alertmanager/alertmanager.yml through the real chain: a real ``minerwatch serve`` that
alerts, a real Prometheus loading the shipped rules, a real Alertmanager running the shipped
config and a webhook receiver here. The config is used as shipped but for its receivers' URLs
(pointed at the receiver) and its timings (group_wait 1s, group_interval 2s and repeat_interval
1h in place of 30s, 5m and 1h/12h), so an episode is said and resolved within seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from promtools import (
    ALERTMANAGER,
    PROMETHEUS,
    require,
    running_alertmanager,
    running_prometheus,
    scrape_job,
)
from test_agent_e2e import FAST, QUIET, REPO, AgentProcess, episodes, quiet_model

yaml = pytest.importorskip("yaml")  # tests only: the agent itself never needs PyYAML

DEPLOY = REPO / "deploy"
RULES = DEPLOY / "prometheus" / "minerwatch-rules.yml"
CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
#: The burner's name: a copy of python under a name no label or annotation may carry.
BURNER = "burnbox7q3z"
AMTOOL = shutil.which("amtool") or "/usr/bin/amtool"
TIMINGS = {"group_wait": "1s", "group_interval": "2s", "repeat_interval": "1h"}


class Receiver:
    """A webhook receiver on loopback: every POSTed body, raw and decoded, in arrival order."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []
        self.cond = threading.Condition()
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with received.cond:
                    received.raw.append(body)
                    received.cond.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def notifications(self) -> list[dict[str, Any]]:
        with self.cond:
            return [json.loads(body) for body in self.raw]

    def wait_for(self, what: str, pred: Callable[[dict[str, Any]], bool], timeout: float, log):
        """The first notification ``pred`` accepts; fail naming what came, and the logs."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for body in self.raw:
                    if pred(json.loads(body)):
                        return json.loads(body)
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no {what} in {timeout:.0f}s; received {self.raw}\n{log()}")
                self.cond.wait(left)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def fast_config(url: str) -> str:
    """The shipped config with every webhook pointed at ``url`` and the fast timings."""
    config = yaml.safe_load(CONFIG.read_text())
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = url
    routes = [config["route"]]
    while routes:
        route = routes.pop()
        for key in TIMINGS.keys() & route.keys():
            route[key] = TIMINGS[key]
        routes.extend(route.get("routes", []))
    return json.dumps(config)  # JSON is valid YAML


def amtool(*args: str) -> str:
    """Run amtool; fail the test with its output unless it exits 0."""
    done = subprocess.run(
        [require(AMTOOL, "prometheus-alertmanager"), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_amtool_accepts_the_config_and_routes_each_alert_by_severity():
    """Every alert of the shipped rules reaches the receiver its severity label calls for, and
    the docs' inhibition snippet has not drifted from the file."""
    assert "SUCCESS" in amtool("check-config", str(CONFIG))
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    for rule in rules:
        labels = {"alertname": rule["alert"], **rule["labels"]}
        said = amtool("config", "routes", "test", f"--config.file={CONFIG}",
                      *(f"{k}={v}" for k, v in labels.items()))  # fmt: skip
        critical = rule["labels"]["severity"] == "critical"
        assert said.split() == ["minerwatch-critical" if critical else "minerwatch-warning"], (
            labels,
            said,
        )
    # the inhibition deploy/README.md shows is the one shipped
    docs = (DEPLOY / "README.md").read_text()
    shown = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(inhibit_rules:.*?)```", docs, re.S)]
    assert shown and all(
        r in yaml.safe_load(CONFIG.read_text())["inhibit_rules"]
        for b in shown
        for r in b["inhibit_rules"]
    )


@contextmanager
def burning(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """A busy loop on every core, each a copy of python named ``BURNER``; killed on exit."""
    exe = tmp_path / BURNER
    shutil.copy2(os.path.realpath(sys.executable), exe)
    procs = [
        subprocess.Popen([str(exe), "-S", "-c", "while True: pass"], stdout=subprocess.DEVNULL)
        for _ in range(os.cpu_count() or 1)
    ]
    try:
        yield procs
    finally:
        stop(procs)


def named(pid: int, name: str, timeout: float = 5.0) -> bool:
    """Whether the process's name becomes ``name``: Popen can return before the kernel has
    renamed the child in its exec."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}/comm").read_text().strip() != name:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def closing(agent: AgentProcess, episode: str, timeout: float, log) -> dict[str, Any]:
    """The agent's close line of ``episode``, once it is written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in episodes(agent):
            if line["event"] == "close" and line["id"] == episode:
                return line
        time.sleep(0.5)
    pytest.fail(f"episode {episode} still open after {timeout:.0f}s\n{log()}")


def prometheus_sent(url: str) -> float:
    """Alerts Prometheus has sent to Alertmanager (its own prometheus_notifications_sent_total)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("prometheus_notifications_sent_total")
    )


def anomaly(status: str) -> Callable[[dict[str, Any]], bool]:
    return lambda n: n["status"] == status and n["groupLabels"]["alertname"] == "MinerwatchAnomaly"


@pytest.mark.slow
def test_an_episode_reaches_the_receiver_once_and_resolves(tmp_path):
    """The agent's episode pages once, grouped as deploy/README.md says, with the rules'
    annotations and no process data; its end sends a resolved notification."""
    require(PROMETHEUS)
    require(ALERTMANAGER, "prometheus-alertmanager")
    data = quiet_model(tmp_path)
    receiver = Receiver()
    agent = AgentProcess(
        data, tmp_path / "agent.log", ("--host", QUIET, *FAST, "--retrain-every", "0")
    )
    instance = f"127.0.0.1:{agent.port}"
    try:
        with (
            running_alertmanager(tmp_path, fast_config(receiver.url)) as am,
            running_prometheus(
                tmp_path,
                [scrape_job("minerwatch", agent.port)],
                rule_files=[RULES],
                alertmanagers=[am.url.removeprefix("http://")],
                # re-send the firing alert at every evaluation (1 s), its top_features changed:
                # Alertmanager must still say it once
                flags=["--rules.alert.resend-delay=1s"],
            ) as prom,
        ):

            def logs() -> str:
                return f"{agent.tail()}\n{prom.tail()}\n{am.tail()}"

            agent.wait_for("the stored model", lambda m: m.get("minerwatch_learning") == 0.0, 30)
            with burning(tmp_path) as burners:
                assert all(named(p.pid, BURNER) for p in burners)
                firing = receiver.wait_for("firing notification", anomaly("firing"), 90, logs)
                (opened,) = (e for e in episodes(agent) if e["event"] == "open")
            # the episode clears after 3 windows below the threshold: seconds after the burner
            # stops on a quiet host, longer while other work keeps the host's CPU up
            closed = closing(agent, opened["id"], 110, logs)
            # then Prometheus resolves the alert within a second, Alertmanager says so
            resolved = receiver.wait_for("resolved notification", anomaly("resolved"), 20, logs)
            said = receiver.notifications()
            sent = prometheus_sent(prom.url)
    finally:
        agent.kill()
        receiver.close()

    assert firing["receiver"] == "minerwatch-critical"
    assert firing["groupLabels"] == {"alertname": "MinerwatchAnomaly", "instance": instance}
    (alert,) = firing["alerts"]
    assert alert["status"] == "firing"
    assert alert["labels"] == {
        "alertname": "MinerwatchAnomaly",
        "instance": instance,
        "job": "minerwatch",
        "severity": "critical",
        "trigger": "agent",
    }
    notes = alert["annotations"]
    assert set(notes) == {"summary", "description", "top_features", "evidence"}
    assert notes["evidence"] == opened["evidence"]  # the open episode's file, as the agent wrote
    assert Path(notes["evidence"]).is_file()
    top = notes["top_features"].split(", ")  # "cpu_mean 62%, net_tx_mean 25%, ..."
    assert 1 <= len(top) <= 3 and all(re.fullmatch(r"[a-z0-9_]+ [0-9.]+%", f) for f in top), top
    assert instance in notes["summary"] and "minerwatch evidence list" in notes["description"]

    # One page for the episode, though Prometheus re-sent it every second with fresh
    # annotations; then once more when it resolved.
    assert sent >= 3, f"Prometheus sent {sent} alerts: the de-duplication was not exercised"
    pages = [n for n in said if n["groupLabels"]["alertname"] == "MinerwatchAnomaly"]
    assert [n["status"] for n in pages] == ["firing", "resolved"], pages
    (gone,) = resolved["alerts"]
    assert gone["labels"] == alert["labels"] and gone["endsAt"] > gone["startsAt"]
    assert closed["reason"] == "cleared", closed

    # No process name or command line anywhere in what reached the receiver.
    raw = b"".join(receiver.raw)
    assert BURNER.encode() not in raw and b"while True" not in raw
