"""deploy/: rules checked by promtool, and every dashboard query run against a real Prometheus.

Grafana cannot be installed here, so the dashboard and the Grafana alert rule are checked the
way Grafana would use them: each PromQL expression, with template variables substituted, is
evaluated by a real Prometheus that scrapes a real Exporter.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from promtools import full_snapshot, promtool, running_prometheus, scrape_job

from minerwatch.service.exporter import METRICS, Exporter

yaml = pytest.importorskip("yaml")  # tests only: the agent itself never needs PyYAML

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
RULES = DEPLOY / "prometheus" / "minerwatch-rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "minerwatch.json"
PROVISIONING = DEPLOY / "grafana" / "provisioning"
ALERTING = PROVISIONING / "alerting" / "minerwatch-alerts.yml"
DATASOURCES = PROVISIONING / "datasources" / "prometheus.yml"

#: What Grafana would put in place of its built-in variables, for a 1 s scrape interval.
BUILTINS = {
    "$__rate_interval": "5s",
    "$__interval": "2s",
    "$__range": "1m",
}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panel_targets(dash: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for panel in dash["panels"]:
        for inner in [panel, *panel.get("panels", [])]:  # collapsed rows nest their panels
            for target in inner.get("targets", []):
                found.append((f"{inner['title']} / {target['refId']}", target))
    return found


def substitute(expr: str, variables: dict[str, str]) -> str:
    for name, value in {**BUILTINS, **variables}.items():
        expr = expr.replace("${" + name.lstrip("$") + "}", value).replace(name, value)
    left = re.findall(r"\$\{?\w+", expr)
    assert not left, f"unknown template variables {left} in {expr!r}"
    return expr


def label_values_query(definition: str) -> tuple[str, str]:
    """``label_values(selector, label)`` -> an equivalent PromQL query and the label name."""
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", definition.strip())
    assert match, f"unsupported variable query {definition!r}"
    return f"group by ({match[2]}) ({match[1]})", match[2]


# --- static checks ---------------------------------------------------------------------------


@pytest.mark.prometheus
def test_promtool_checks_and_unit_tests_the_alert_rules():
    assert "SUCCESS" in promtool("check", "rules", str(RULES))
    out = promtool("test", "rules", "minerwatch-rules.test.yml", cwd=RULES.parent)
    assert "SUCCESS" in out
    promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))


def test_rule_tests_cover_firing_and_silence_for_every_alert():
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    tests = yaml.safe_load((RULES.parent / "minerwatch-rules.test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    for alert in alerts:
        expected = [case["exp_alerts"] for case in cases if case["alertname"] == alert]
        assert any(expected), f"{alert}: no firing case"
        assert any(not e for e in expected), f"{alert}: no not-firing case"
    for rule in (r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]):
        assert "minerwatch evidence list" in rule["annotations"]["description"]


def test_fleet_rules_watch_the_job_the_fleet_docs_scrape():
    """The fleet server's rules select the scrape job docs/fleet.md configures for it: a rename
    on one side only would leave them watching nothing, and nothing would ever fire."""
    docs = (DEPLOY.parent / "docs" / "fleet.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", docs, flags=re.S)]
    jobs = {
        job["job_name"]
        for block in blocks
        if isinstance(block, dict)
        for job in block.get("scrape_configs", [])
        if job.get("honor_labels")
    }
    assert jobs == {"minerwatch-fleet"}
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    fleet = {r["alert"]: r["expr"] for r in rules if r["alert"].startswith("MinerwatchFleet")}
    assert set(fleet) == {"MinerwatchFleetDown", "MinerwatchFleetStalled",
                          "MinerwatchFleetHostNotScored"}  # fmt: skip
    for name, expr in fleet.items():
        assert set(re.findall(r'job="([^"]*)"', expr)) == jobs, name
    table = (DEPLOY / "README.md").read_text()
    for name in fleet:
        assert f"| {name} |" in table, f"{name} missing from deploy/README.md's alert table"


def test_dashboard_is_well_formed():
    dash = dashboard()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    defined = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "job", "host"} <= defined
    cells: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}  # fmt: skip
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    targets = panel_targets(dash)
    assert len(targets) >= 10
    used = {m for _, t in targets for m in re.findall(r"minerwatch_\w+", t["expr"])}
    assert used <= set(METRICS), f"dashboard uses unknown metrics {used - set(METRICS)}"


def test_grafana_provisioning_files_agree():
    datasource = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]
    alerting = yaml.safe_load(ALERTING.read_text())
    assert alerting["apiVersion"] == 1
    (rule,) = alerting["groups"][0]["rules"]
    refs = {d["refId"] for d in rule["data"]}
    assert rule["condition"] in refs
    queries = [d for d in rule["data"] if d["datasourceUid"] != "__expr__"]
    assert queries and all(d["datasourceUid"] == datasource["uid"] for d in queries)
    for step in rule["data"]:
        assert step["model"].get("expression", "A") in refs
    assert rule["annotations"]["__dashboardUid__"] == dashboard()["uid"]
    panel_ids = {str(p["id"]) for p in dashboard()["panels"]}
    assert rule["annotations"]["__panelId__"] in panel_ids
    assert "minerwatch evidence list" in rule["annotations"]["description"]
    # it waits no longer than the Prometheus rules' agent trigger (the agent's rule has waited)
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    (agent,) = [r for r in rules if r.get("labels", {}).get("trigger") == "agent"]
    assert rule["for"] == agent.get("for", "0s") == "0s"
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "minerwatch.yml").read_text())
    assert provider["providers"][0]["type"] == "file"


def test_deploy_readme_lists_every_metric():
    readme = (DEPLOY / "README.md").read_text()
    listed = set(re.findall(r"^\| `(minerwatch_\w+)", readme, flags=re.M))
    assert listed == set(METRICS)


# --- against a real Prometheus ---------------------------------------------------------------


@pytest.mark.prometheus
@pytest.mark.slow
def test_every_dashboard_and_alert_query_runs_on_real_prometheus(tmp_path):
    snapshot = full_snapshot(time.time())
    exporter = Exporter(port=0, address="127.0.0.1", registry=CollectorRegistry())
    exporter.start()
    try:
        exporter.update(snapshot)
        rules = tmp_path / "rules.yml"
        rules.write_text(RULES.read_text())
        job = scrape_job("minerwatch", exporter.port)
        with running_prometheus(tmp_path, [job], rule_files=[rules]) as prom:
            # The core end-to-end fact: the score the agent published is what Prometheus has.
            (sample,) = prom.wait_for('minerwatch_anomaly_score{job="minerwatch"}')
            assert float(sample["value"][1]) == snapshot.anomaly_score
            # Enough samples for rate()/increase()/changes() over the substituted ranges.
            prom.wait_for("count_over_time(minerwatch_build_info[1m]) >= 3")
            check_dashboard(prom)
            check_grafana_alert(prom, snapshot)
            check_rules_evaluate(prom, snapshot)
            # And the exposition is lint-clean by Prometheus' own rules.
            promtool("check", "metrics", stdin=exporter._render(None)[0])
    finally:
        exporter.stop()


def check_dashboard(prom) -> None:
    dash = dashboard()
    variables: dict[str, str] = {}
    for var in dash["templating"]["list"]:
        if var["type"] == "custom":  # a fixed choice (host_label): its default
            variables["$" + var["name"]] = var["current"]["value"]
            continue
        if var["type"] != "query":
            continue
        query, label = label_values_query(substitute(var["definition"], variables))
        answer = prom.query(query)
        assert answer["status"] == "success", (var["name"], answer)
        values = sorted(r["metric"][label] for r in answer["data"]["result"])
        assert values, f"variable ${var['name']} has no values"
        variables["$" + var["name"]] = values[0]
    assert variables["$job"] == "minerwatch"
    assert variables["$host"].startswith("127.0.0.1:")
    exprs = [(name, t["expr"]) for name, t in panel_targets(dash)]
    exprs += [(a["name"], a["expr"]) for a in dash["annotations"]["list"] if "expr" in a]
    empty = []
    for name, expr in exprs:
        answer = prom.query(substitute(expr, variables))
        assert answer["status"] == "success", f"{name}: {expr} -> {answer}"
        if not answer["data"]["result"]:
            empty.append(name)
    # Every metric has data in the full snapshot, so every panel must show something.
    # (The alert-episodes annotation only has points where the alert counter moved.)
    assert empty == ["Alert episodes"], f"queries without data: {empty}"


def check_grafana_alert(prom, snapshot) -> None:
    (rule,) = yaml.safe_load(ALERTING.read_text())["groups"][0]["rules"]
    (query,) = [d["model"]["expr"] for d in rule["data"] if d["datasourceUid"] != "__expr__"]
    answer = prom.query(query)
    assert answer["status"] == "success", answer
    (series,) = answer["data"]["result"]
    # the episode is open in the full snapshot, so the Grafana rule fires, as the Prometheus
    # rule's agent trigger (not only while the score is above the threshold: a window's dip
    # inside an open episode resolved it and fired it again)
    assert snapshot.alert_active == 1 and float(series["value"][1]) == 1.0
    assert "minerwatch_anomaly_score" not in query


def check_rules_evaluate(prom, snapshot) -> None:
    deadline = time.monotonic() + 10
    while True:
        groups = prom.api("rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        never = "0001-01-01T00:00:00Z"  # Prometheus' zero time: not evaluated yet
        if rules and all(r.get("lastEvaluation", never) != never for r in rules):
            break
        assert time.monotonic() < deadline, f"rules never evaluated: {rules}"
        time.sleep(0.2)
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    states = {(r["name"], r["labels"].get("trigger")): r["state"] for r in rules}
    # alert_active is 1: the agent's alert fires at once (its rule has already waited); the
    # score is above threshold: the fallback is pending, and so are the miner_name indicator
    # and the failed "processes" source.
    assert states[("MinerwatchAnomaly", "agent")] == "firing"
    assert states[("MinerwatchAnomaly", "score")] == "pending"
    assert states[("MinerwatchIndicatorHits", None)] == "pending"
    assert states[("MinerwatchSourceDown", None)] == "pending"
    for quiet in ("MinerwatchAgentDown", "MinerwatchLearningStuck", "MinerwatchErrors",
                  "MinerwatchWebConfigReloadFailed"):  # fmt: skip
        assert states[(quiet, None)] == "inactive", quiet
    # no fleet server is scraped here: its rules select only its own job
    for quiet in ("MinerwatchFleetDown", "MinerwatchFleetStalled", "MinerwatchFleetHostNotScored"):
        assert states[(quiet, None)] == "inactive", quiet
    # one host with IOC hits is not "several hosts"
    assert states[("MinerwatchIocOnSeveralHosts", None)] == "inactive"
    # The annotations' queries ran on the real Prometheus: what drove the score, and where
    # the evidence is.
    alerts = {
        (a["labels"]["alertname"], a["labels"].get("trigger")): a["annotations"]
        for a in prom.api("alerts")["data"]["alerts"]
    }
    for key in (("MinerwatchAnomaly", "agent"), ("MinerwatchAnomaly", "score")):
        assert alerts[key]["top_features"] == "cpu_mean 70%, cpu_std 20%, net_tx_mean 10%"
        assert alerts[key]["evidence"] == snapshot.evidence_file
    assert alerts[("MinerwatchIndicatorHits", None)]["evidence"] == snapshot.evidence_file


def color_of(value: float, steps: list[dict[str, Any]]) -> str:
    """Grafana's absolute thresholds: the color of the last step whose value is reached."""
    color = steps[0]["color"]
    for step in steps[1:]:
        if value >= step["value"]:
            color = step["color"]
    return color


@pytest.mark.prometheus
def test_fleet_bars_color_each_host_by_its_own_threshold(tmp_path):
    """Thresholds are calibrated per host (0.72 on one, 0.80 on another) and a normal window
    scores about 0.5: the fleet's bars, as Prometheus answers their query, are red for a host
    above its threshold and green for a normal one, never the other way round."""
    (panel,) = [p for p in dashboard()["panels"] if p["id"] == 2]
    (target,) = panel["targets"]
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    base = full_snapshot(time.time())
    hosts = {
        "above": dataclasses.replace(base, anomaly_score=0.75, anomaly_threshold=0.72),
        "normal": dataclasses.replace(base, anomaly_score=0.55, anomaly_threshold=0.80),
    }
    exporters = {name: Exporter(port=0, address="127.0.0.1", registry=CollectorRegistry())
                 for name in hosts}  # fmt: skip
    try:
        for name, exporter in exporters.items():
            exporter.start()
            exporter.update(hosts[name])
        port = {name: f"127.0.0.1:{e.port}" for name, e in exporters.items()}
        job = scrape_job("minerwatch", 0)
        job["static_configs"] = [{"targets": list(port.values())}]
        with running_prometheus(tmp_path, [job]) as prom:
            prom.wait_for('count(minerwatch_anomaly_threshold{job="minerwatch"}) == 2')
            expr = substitute(target["expr"], {"$job": "minerwatch", "$host_label": "instance"})
            answer = prom.query(expr)
            assert answer["status"] == "success", answer
            colors = {
                r["metric"]["instance"]: color_of(float(r["value"][1]), steps)
                for r in answer["data"]["result"]
            }
    finally:
        for exporter in exporters.values():
            exporter.stop()
    assert colors == {port["above"]: "red", port["normal"]: "green"}
