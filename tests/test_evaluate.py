"""`minerwatch evaluate`: reference detectors, the simulated-fleet run, SMD/NAB loaders and CLI."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minerwatch.bench import evaluate, public
from minerwatch.bench.evaluate import HostRun, load_labels, measure
from minerwatch.bench.reference import (
    NaiveIForest,
    PcaReconstruction,
    cpu_5m,
    static_rule,
    sustained,
    window_grid,
    window_means,
)
from minerwatch.bench.simulate import simulate
from minerwatch.features.errors import InputError
from minerwatch.features.io import HostSeries
from minerwatch.features.schema import METRIC_COLUMNS

HOUR = 3600.0
MINERWATCH = str(Path(sys.executable).with_name("minerwatch"))


def cpu_series(cpu: np.ndarray, step: float = 30.0) -> HostSeries:
    n = cpu.size
    values = np.full((n, len(METRIC_COLUMNS)), 1.0)
    values[:, METRIC_COLUMNS.index("cpu_percent")] = cpu
    return HostSeries("h", np.arange(n) * step, values, METRIC_COLUMNS)


# --------------------------------------------------------------------------- reference detectors


def test_sustained_hand_computed():
    ts = np.arange(12) * 30.0
    above = np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0], bool)
    # ten samples above from t=30: the 10th (t=300) completes 300 s
    assert np.flatnonzero(sustained(ts, above, 300.0)).tolist() == [10]
    # a hole in the data breaks the run
    ts_gap = ts.copy()
    ts_gap[6:] += 600
    assert not sustained(ts_gap, above, 300.0).any()


def test_static_rule_needs_three_hours():
    cpu = np.full(int(10 * HOUR / 30), 20.0)
    cpu[int(1 * HOUR / 30) : int(3.5 * HOUR / 30)] = 95.0  # 2.5 h: never fires
    cpu[int(5 * HOUR / 30) : int(9 * HOUR / 30)] = 95.0  # 4 h: fires from 8 h on
    s = cpu_series(cpu)
    ws, we = window_grid(s.timestamps, 60.0, 60.0)
    a = static_rule(s, ws, we)
    fired = ws[a]
    assert fired.min() == pytest.approx(8 * HOUR - 60, abs=60)
    assert fired.max() < 9 * HOUR
    # the 5-minute rule fires on both plateaus, five minutes in
    b = cpu_5m(s, ws, we)
    assert ws[b].min() == pytest.approx(1 * HOUR + 300 - 60, abs=60)
    assert b[(ws > 5 * HOUR + 600) & (ws < 8 * HOUR)].all()


def test_window_means_and_grid():
    ts = np.array([0.0, 30, 60, 90, 300, 330])
    vals = np.array([[1.0], [3.0], [np.nan], [5.0], [7.0], [9.0]])
    s = HostSeries("h", ts, vals, ("x",))
    ws, we = window_grid(ts, 60.0, 60.0)
    assert ws.tolist() == [0, 60, 300]  # windows without samples are dropped
    assert window_means(s, ws, we)[:, 0].tolist() == [2.0, 5.0, 8.0]


def test_naive_iforest_threshold_is_max_training_score():
    rng = np.random.default_rng(1)
    train = HostSeries("h", np.arange(600) * 60.0, rng.normal(size=(600, 3)), ("a", "b", "c"))
    test_vals = rng.normal(size=(100, 3))
    test_vals[50] = 12.0
    test = HostSeries("h", (600 + np.arange(100)) * 60.0, test_vals, ("a", "b", "c"))
    det = NaiveIForest(seed=0).fit(train)
    ws, we = window_grid(train.timestamps, 60.0, 60.0)
    assert not det.alert(train, ws, we).any()
    tws, twe = window_grid(test.timestamps, 60.0, 60.0)
    assert det.alert(test, tws, twe)[50]


def test_pca_reference_flags_a_broken_relation_that_no_single_column_shows():
    rng = np.random.default_rng(2)
    n = 800
    common = rng.normal(size=n)
    train_vals = np.column_stack([common, common, common]) + 0.05 * rng.normal(size=(n, 3))
    train = HostSeries("h", np.arange(n) * 60.0, train_vals, ("a", "b", "c"))
    test_vals = train_vals[:100].copy()
    # c leaves a and b; every column stays well inside its own training range
    test_vals[40] = (1.0, 1.0, -1.0)
    test = HostSeries("h", (n + np.arange(100)) * 60.0, test_vals, ("a", "b", "c"))
    det = PcaReconstruction().fit(train)
    assert det.components_.shape == (3, 1)  # one common factor keeps 90 % of the variance
    ws, we = window_grid(train.timestamps, 60.0, 60.0)
    assert not det.alert(train, ws, we).any()  # threshold = highest training error
    tws, twe = window_grid(test.timestamps, 60.0, 60.0)
    fired = det.alert(test, tws, twe)
    assert fired[40] and fired.sum() == 1
    # one column: no subspace to leave, the error is the squared z-score
    one = PcaReconstruction().fit(HostSeries("h", train.timestamps, train_vals[:, :1], ("a",)))
    z = (test_vals[:5, 0] - train_vals[:, 0].mean()) / train_vals[:, 0].std()
    got = one.score(
        HostSeries("h", test.timestamps[:5], test_vals[:5, :1], ("a",)), tws[:5], twe[:5]
    )
    assert np.allclose(got, z**2)


# --------------------------------------------------------------------------- simulated fleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    out = tmp_path_factory.mktemp("fleet")
    simulate(out, hosts=3, train_days=1.0, test_days=1.0, seed=12)
    return out


@pytest.fixture(scope="module")
def evaluated(fleet, tmp_path_factory):
    report = tmp_path_factory.mktemp("report")
    events, _ = load_labels(fleet)
    runs = evaluate.run_hosts(fleet, progress=lambda m: None, events=events)
    return runs, report


def oracle_runs(runs, events, mode):
    out = []
    for r in runs:
        mine = [e for e in events if e.host == r.host and e.malicious]
        hit = np.zeros(r.window_start.size, bool)
        for e in mine:
            hit |= (r.window_start <= e.end) & (e.start < r.window_end)
        alert = hit if mode == "oracle" else np.ones_like(hit)
        out.append(
            HostRun(
                r.host,
                r.test,
                r.window_start,
                r.window_end,
                r.score,
                r.threshold,
                {"minerwatch": alert},
            )
        )
    return out


def test_oracle_and_always_alert_on_simulated_fleet(fleet, evaluated):
    runs, _ = evaluated
    events, _ = load_labels(fleet)
    n_campaigns = len({e.campaign for e in events if e.malicious})
    assert n_campaigns == 4  # seed 12: after_cron, full_speed, two throttled
    perfect = measure(oracle_runs(runs, events, "oracle"), events)["detectors"]["minerwatch"]
    assert perfect["overall"]["campaigns"] == n_campaigns
    assert perfect["overall"]["recall_30m"] == 1.0
    assert perfect["false_alarm_episodes"] == 0
    assert perfect["clean_alerted_share"] == 0.0
    always = measure(oracle_runs(runs, events, "always"), events)["detectors"]["minerwatch"]
    assert always["overall"]["detected"] == 0
    assert always["clean_alerted_share"] == 1.0
    assert (
        all(v["alarmed"] == 0 for v in always["benign_alarmed"].values())
        or always["false_alarm_episodes"] > 0
    )


def test_real_run_measures_every_detector(fleet, evaluated):
    runs, report = evaluated
    events, _ = load_labels(fleet)
    res = measure(runs, events)
    assert set(res["detectors"]) == set(evaluate.DETECTORS)
    for s in res["detectors"].values():
        assert 0.0 <= s["overall"]["recall_any"] <= 1.0
        assert 0.0 <= s["clean_alerted_share"] <= 1.0
        assert s["host_days"] == pytest.approx(3 * 1.0, rel=0.05)
    text = evaluate.format_text(res)
    for kind in res["detectors"]["minerwatch"]["per_kind"]:
        assert kind in text
    assert "OVERALL" in text and "per host-day" in text


def test_report_writes_markdown_and_pngs(fleet, evaluated):
    runs, report = evaluated
    events, meta = load_labels(fleet)
    res = measure(runs, events)
    res["meta"] = {
        "data": str(fleet),
        "models": None,
        "window_s": 60.0,
        "hop_s": 60.0,
        "grace_s": 0.0,
        "seed": 0,
        "date": "today",
        "simulation": {"seed": 11},
    }
    path = evaluate.write_report(report, res, runs[:1], events, progress=lambda m: None)
    md = path.read_text()
    png = report / f"{runs[0].host}.png"
    assert f"]({png.name})" in md and "recall" in md
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert json.loads((report / "report.json").read_text())["detectors"]


def test_cli_json_and_models_reuse(fleet, tmp_path, capsys):
    from minerwatch.service.cli import main

    models = tmp_path / "models"
    cmd = ["evaluate", "--data", str(fleet), "--models", str(models), "--json", "--quiet"]
    assert main(cmd) == 0
    first = json.loads(capsys.readouterr().out)
    assert len(list(models.iterdir())) == 3  # trained and saved
    for host in ("batch-01", "db-01", "web-01"):
        (fleet / "train" / f"{host}.csv").rename(tmp_path / f"{host}.csv")
    try:  # without training data the second run must load the stored models
        assert main(cmd) == 0
    finally:
        for host in ("batch-01", "db-01", "web-01"):
            (tmp_path / f"{host}.csv").rename(fleet / "train" / f"{host}.csv")
    second = json.loads(capsys.readouterr().out)
    assert second["detectors"]["minerwatch"] == first["detectors"]["minerwatch"]
    assert main(["evaluate", "--data", str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert main(["evaluate", "--smd", str(tmp_path / "nowhere"), "--quiet"]) == 2
    overall = first["detectors"]["minerwatch"]["overall"]
    assert overall["campaigns"] == 4


def test_cli_smd_json(tmp_path, capsys):
    from minerwatch.service.cli import main

    write_smd(tmp_path, "machine-9-1", np.random.default_rng(5))
    assert main(["evaluate", "--smd", str(tmp_path), "--json", "--quiet"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {"f1", "f1_pa", "event_f1"} <= set(res["mean"]) and "machine-9-1" in res


def test_load_labels_errors(tmp_path):
    with pytest.raises(InputError, match="labels.json"):
        load_labels(tmp_path)
    (tmp_path / "labels.json").write_text('{"events": [{"host": "a"}]}')
    with pytest.raises(InputError, match=r"events\[0\]"):
        load_labels(tmp_path)
    (tmp_path / "labels.json").write_text('{"events": [\n oops')
    with pytest.raises(InputError) as exc:
        load_labels(tmp_path)
    assert exc.value.line == 2


def test_evaluate_refuses_labels_that_end_before_they_start(fleet, tmp_path):
    """A hand-edited labels.json with an event ending before it starts (or at NaN) would count
    as a campaign no detector can catch: refused by the real command before any training."""
    import shutil

    data = tmp_path / "sim"
    shutil.copytree(fleet, data)
    raw = json.loads((data / "labels.json").read_text())
    i = next(k for k, ev in enumerate(raw["events"]) if ev.get("split", "test") == "test")
    raw["events"][i]["end"] = raw["events"][i]["start"] - 60
    (data / "labels.json").write_text(json.dumps(raw))
    done = subprocess.run(
        [MINERWATCH, "evaluate", "--data", str(data), "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "labels.json" in done.stderr and f"events[{i}]" in done.stderr
    assert "start <= end" in done.stderr and "Traceback" not in done.stderr


def test_a_test_host_without_training_data_is_refused_before_any_training(fleet, tmp_path):
    """A host in test/ with no file in train/ (and no stored model) was named only after every
    other host had been trained: now before, and nothing is trained or saved."""
    import shutil

    data = tmp_path / "sim"
    shutil.copytree(fleet, data)
    lost = sorted((data / "train").glob("*.csv"))[0]
    host = lost.name.removesuffix(".csv")
    for f in (data / "train").glob(f"{host}.*"):
        f.unlink()
    models = tmp_path / "models"
    done = subprocess.run(
        [MINERWATCH, "evaluate", "--data", str(data), "--models", str(models),
         "--output", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert (
        f"{host}: expected training telemetry in train/ (or a model in --models) for every "
        "host of test/, got none for this host"
    ) in done.stderr, done.stderr
    assert not list(models.glob("*/meta.json")), "hosts were trained before the error"


# --------------------------------------------------------------------------- public data


def write_smd(root, machine, rng, anomaly=(200, 230)):
    for part in ("train", "test", "test_label"):
        (root / part).mkdir(parents=True, exist_ok=True)
    base = rng.uniform(0.2, 0.3, size=(400, 38))
    test = rng.uniform(0.2, 0.3, size=(400, 38))
    test[anomaly[0] : anomaly[1], :6] = 0.95
    label = np.zeros(400, int)
    label[anomaly[0] : anomaly[1]] = 1
    for part, arr, fmt in (
        ("train", base, "%.6f"),
        ("test", test, "%.6f"),
        ("test_label", label[:, None], "%d"),
    ):
        with gzip.open(root / part / f"{machine}.txt.gz", "wt") as fh:
            np.savetxt(fh, arr, fmt=fmt, delimiter=",")


def test_smd_fixture_end_to_end(tmp_path):
    rng = np.random.default_rng(3)
    write_smd(tmp_path, "machine-9-1", rng)
    write_smd(tmp_path, "machine-9-2", rng, anomaly=(50, 60))
    (tmp_path / "train" / "machine-9-3.txt.gz").write_bytes(b"")  # no test: skipped
    assert public.smd_machines(tmp_path) == ["machine-9-1", "machine-9-2"]
    case = public.load_smd(tmp_path, "machine-9-1")
    assert case.train.columns[0] == "cpu_r" and case.train.values.shape == (400, 38)
    assert case.test.timestamps[0] == 400 * 60.0 and case.label.sum() == 30
    res = public.evaluate_smd(tmp_path, progress=lambda m: None)
    assert set(public.series_names(res)) == {"machine-9-1", "machine-9-2"}
    for key in ("f1", "f1_pa", "event_f1"):
        assert 0.0 <= res["mean"][key] <= 1.0
    assert res["mean"]["f1_pa"] >= res["mean"]["f1"]
    assert res["mean"]["event_recall"] == 1.0  # a 0.95 plateau on six metrics is not subtle
    assert {"naive_iforest", "pca"} <= set(res["reference"])
    # the six-metric plateau is far off the training subspace: the PCA reference sees it
    assert res["reference"]["pca"]["machine-9-2"]["tp"] > 0
    assert "== pca (smd) ==" in public.format_point_table(res)
    assert "machine-9-1" in public.format_point_table(res)


def test_smd_bad_file(tmp_path):
    write_smd(tmp_path, "m", np.random.default_rng(0))
    with gzip.open(tmp_path / "test" / "m.txt.gz", "wt") as fh:
        fh.write("1,2,3\n")
    with pytest.raises(InputError, match="38 columns"):
        public.load_smd(tmp_path, "m")


def test_nab_fixture_probation_and_labels(tmp_path):
    cat = tmp_path / "realX"
    cat.mkdir()
    n = 1000
    t = np.datetime64("2024-01-01T00:00") + np.arange(n) * np.timedelta64(5, "m")
    v = 10 + np.sin(np.arange(n) / 20)
    v[800:820] = 60
    rows = [f"{str(ti).replace('T', ' ')}:00,{vi}" for ti, vi in zip(t, v, strict=True)]
    (cat / "s.csv").write_text("timestamp,value\n" + "\n".join(rows) + "\n")
    win = [[str(t[790]).replace("T", " ") + ":00.000000", str(t[830]).replace("T", " ") + ":00"]]
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "combined_windows.json").write_text(json.dumps({"realX/s.csv": win}))
    case = public.load_nab(tmp_path, "realX/s.csv", public.nab_windows(tmp_path))
    assert case.train.values.shape == (150, 1)  # 15 % probation
    assert case.label.sum() == 41 and case.label[790 - 150]
    res = public.evaluate_nab(tmp_path, progress=lambda m: None)
    row = res["realX/s.csv"]
    # 850 scored points; every figure is a valid ratio and the counts add up
    assert row["tp"] + row["fn"] == 41 and row["tp_pa"] + row["fn_pa"] == 41
    assert row["best_f1"] is not None and 0.0 < row["best_f1"] <= 1.0
    assert res["meta"]["files"] == 1 and "naive_iforest" in res["reference"]
    (cat / "bad.csv").write_text("timestamp,value\n2024-01-01 00:00:00,x\n")
    with pytest.raises(InputError, match="bad.csv:2"):
        public.load_nab(tmp_path, "realX/bad.csv", {"realX/bad.csv": []})


def test_points_from_windows():
    ts = np.array([0.0, 60, 120, 180, 240])
    ws = np.array([0.0, 120])
    out = public.points_from_windows(ts, ws, ws + 60, np.array([True, True]), False)
    assert out.tolist() == [True, False, True, False, False]


def test_importing_evaluate_stays_light():
    """The CLI imports this module to register the command: no sklearn/matplotlib at import."""
    code = (
        "import sys, minerwatch.bench.evaluate, minerwatch.bench.public, minerwatch.bench.metrics;"
        "print(sorted(m for m in ('sklearn', 'matplotlib', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- process identities


def test_new_exe_rule_hand_computed():
    from minerwatch.bench.reference import NewExeRule
    from minerwatch.features.procs import ProcessRows

    def series(rows: list[tuple[float, str, float]]) -> HostSeries:
        s = cpu_series(np.full(10, 10.0), step=60.0)
        ts, exes, cpu = zip(*rows, strict=True) if rows else ((), (), ())
        s.procs = ProcessRows.from_lists(ts, range(len(ts)), exes, exes, ["u"] * len(ts), cpu)
        return s

    train = series([(0.0, "/usr/bin/java", 300.0), (60.0, "", 5.0)])
    rule = NewExeRule().fit(train)
    test = series(
        [
            (60.0, "/usr/bin/java", 390.0),  # known: never alerts, however busy
            (120.0, "/tmp/.x/kswapd0", 49.9),  # new but below half a core
            (180.0, "", 99.0),  # unreadable exe: never alerts
            (240.0, "/tmp/.x/kswapd0", 50.0),  # new and at half a core: alerts
            (300.0, "/srv/app/releases/2/venv/bin/python3", 80.0),  # a deploy: alerts too
        ]
    )
    assert rule.fires(test).tolist() == [False, False, False, True, True]
    ws, we = window_grid(test.timestamps, 60.0, 60.0)
    assert ws[rule.alert(test, ws, we)].tolist() == [240.0, 300.0]
    with pytest.raises(ValueError, match="no process table"):
        NewExeRule().fit(cpu_series(np.ones(3)))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The same small fleet twice, through the real command: with and without process tables."""
    root = tmp_path_factory.mktemp("small")
    sim = [MINERWATCH, "simulate", "--hosts", "2", "--train-days", "0.5", "--test-days", "1"]
    sim += ["--seed", "4", "--interval", "60"]
    for name, extra in (("procs", []), ("bare", ["--no-procs"])):
        done = subprocess.run(
            [*sim, "--output", str(root / name), *extra], capture_output=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
    return root / "procs", root / "bare"


def run_evaluate(data: Path, *extra: str) -> str:
    done = subprocess.run(
        [MINERWATCH, "evaluate", "--data", str(data), "--quiet", *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_cli_reports_identity_kinds_and_new_exe_rule(small):
    data, _ = small
    out = run_evaluate(data)
    labels = json.loads((data / "labels.json").read_text())
    looks = {e["identity"] for e in labels["events"] if e["malicious"]}
    assert looks and looks <= {"new", "disguised", "inside"}
    blocks = out.split("== ")
    assert len(blocks) == len(evaluate.DETECTORS) + 2  # leading "", one per detector, summary
    for block in blocks[1:-1]:  # every detector gets its table per identity kind
        assert "identity kind" in block
        for look in looks:
            assert any(line.startswith(look + " ") for line in block.splitlines()), look
    assert "new-exe rule" in out and "\nnew_exe " in out
    assert "n/a" not in out


def test_without_process_tables_the_new_exe_rule_is_na(small):
    _, data = small
    assert not list(data.rglob("*.procs.csv"))
    res = json.loads(run_evaluate(data, "--json"))
    assert "new_exe" not in res["detectors"]
    assert res["unavailable"] == {"new_exe": "no process tables"}
    assert {"minerwatch", "dismissed", "static_rule", "cpu_5m", "naive_iforest"} == set(
        res["detectors"]
    )
    text = evaluate.format_text(res)
    assert "new_exe" in text and "n/a" in text


def test_labels_without_identities_still_load(fleet, tmp_path):
    raw = json.loads((fleet / "labels.json").read_text())
    for ev in raw["events"]:  # as written before process tables
        ev.pop("identity", None)
        ev.pop("process", None)
    (tmp_path / "labels.json").write_text(json.dumps(raw))
    old, _ = load_labels(tmp_path)
    new, _ = load_labels(fleet)
    assert [e.identity for e in old if e.malicious] == [None] * sum(e.malicious for e in old)
    assert {e.identity for e in new if e.malicious} <= {"new", "disguised", "inside"}
    assert [(e.host, e.kind, e.start) for e in old] == [(e.host, e.kind, e.start) for e in new]
    ws = np.arange(0, 10) * 60.0 + raw["splits"]["test"]["start"]
    run = HostRun(old[0].host, cpu_series(np.ones(3)), ws, ws + 60, ws * 0, 1.0, {})
    run.alerts["minerwatch"] = np.zeros(ws.size, bool)
    summary = measure([run], old)["detectors"]["minerwatch"]
    assert summary["per_identity"] == {}
    assert "identity kind" not in evaluate.format_detector("minerwatch", summary)
    summary = measure([run], new)["detectors"]["minerwatch"]
    assert set(summary["per_identity"]) == {
        e.identity for e in new if e.malicious and e.host == run.host
    }


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"host": "db-1"}, "which has none in test/"),  # a typo in the host name
        ({"start_ms": True}, "starting within the test samples"),  # milliseconds
        ({"start": -86400.0}, "cut an event that began earlier"),  # a day before the data
        ({"malicious": "false"}, "malicious true or false, got 'false'"),  # bool("false")
        ({"split": "Test"}, "split 'train' or 'test', got 'Test'"),  # would be dropped
    ],
)
def test_hand_written_labels_that_would_skew_the_figures_are_refused(small, tmp_path, change, said):
    """A user's own labels.json: a campaign on a host without test telemetry, or starting
    outside its test samples, was counted as a miss (or dropped) and a quoted 'false' read as
    malicious, all with exit 0 and wrong figures. Now exit 2 naming the event, before training."""
    import shutil

    data = tmp_path / "own"
    shutil.copytree(small[1], data)
    raw = json.loads((data / "labels.json").read_text())
    i = next(k for k, ev in enumerate(raw["events"]) if ev["malicious"] and ev["split"] == "test")
    ev = raw["events"][i]
    if change.pop("start_ms", False):
        ev["start"], ev["end"] = ev["start"] * 1000, ev["end"] * 1000
    if "start" in change:
        change["start"] += raw["splits"]["test"]["start"]
    ev.update(change)
    (data / "labels.json").write_text(json.dumps(raw))
    done = subprocess.run(
        [MINERWATCH, "evaluate", "--data", str(data)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert f"labels.json: expected events[{i}]" in done.stderr and said in done.stderr
    assert "Traceback" not in done.stderr and "evaluate 1/" not in done.stderr  # before training
    assert done.stdout == ""


def test_labels_may_run_past_the_data_and_start_on_a_whole_minute(small, tmp_path):
    import shutil

    data = tmp_path / "own"
    shutil.copytree(small[1], data)
    raw = json.loads((data / "labels.json").read_text())
    host = raw["events"][0]["host"]
    t0 = raw["splits"]["test"]["start"]
    raw["events"] = [
        {"host": host, "kind": "miner", "malicious": True, "start": t0 - 30, "end": t0 + 9e9}
    ]
    (data / "labels.json").write_text(json.dumps(raw))
    res = json.loads(run_evaluate(data, "--json"))
    assert res["detectors"]["minerwatch"]["overall"]["campaigns"] == 1
