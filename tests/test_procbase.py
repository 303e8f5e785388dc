"""The process baseline: identities, disguises, learning while a miner runs, and the commands.

Scenarios are built on the small synthetic host of ``tests/synth.py`` with a process table
whose busiest process carries the host's ``top_proc_cpu_percent``.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from minerwatch.baseline.batch import score_series
from minerwatch.baseline.calibrate import alert_rule
from minerwatch.baseline.procbase import SUSTAIN_S, Carry, ProcessBaseline, Sustained, flag_rows
from minerwatch.baseline.store import load_model, save_model
from minerwatch.baseline.train import train_host
from minerwatch.features.extract import feature_specs
from minerwatch.features.io import HostSeries, read_telemetry
from minerwatch.features.procs import (
    PROC_COLUMNS,
    ProcessRows,
    disguise,
    identity,
    normalize_exe,
    read_procs_csv,
    write_procs_csv,
)
from tests.synth import host_series, write_csv

APP_R1 = "/srv/app/releases/20261201-ab12/venv/bin/python3.11"
APP_R2 = "/srv/app/releases/20261208-cd34/venv/bin/python3.11"
USUAL = (
    ("python3.11", APP_R1, "app"),
    ("nginx", "/usr/sbin/nginx", "www-data"),
    ("postgres", "/usr/lib/postgresql/14/bin/postgres", "postgres"),
    ("kworker/0:1", "", "root"),
)


def with_table(
    series: HostSeries,
    extra: tuple[str, str, str, float] | None = None,
    extra_from: float = 0.0,
    extra_until: float = float("inf"),
    app_exe: str = APP_R1,
    app_from: float = float("inf"),
    extra_churn: bool = False,
) -> HostSeries:
    """``series`` with a process table: the app carries ``top_proc_cpu_percent``; ``extra``
    (name, exe, user, cpu) runs from ``extra_from`` s on; the app moves to ``app_exe`` at
    ``app_from`` s; with ``extra_churn`` a new process of ``extra`` in every sample (a build's
    compiler processes)."""
    ts = series.timestamps
    top = series.column("top_proc_cpu_percent")
    t0 = ts[0]
    rows: list[tuple[float, int, str, str, str, float]] = []
    for i, (t, c) in enumerate(zip(ts.tolist(), top.tolist(), strict=True)):
        exe = app_exe if t - t0 >= app_from else APP_R1
        rows.append((t, 100, "python3.11", exe, "app", c))
        rows.append((t, 200, "nginx", "/usr/sbin/nginx", "www-data", c / 4))
        rows.append((t, 300, *USUAL[2][:2], "postgres", 3.0))
        rows.append((t, 12, "kworker/0:1", "", "root", 1.5))
        if extra is not None and extra_from <= t - t0 < extra_until:
            rows.append((t, 5000 + i if extra_churn else 4242, *extra))
    cols = list(zip(*rows, strict=True))
    return replace(series, procs=ProcessRows.from_lists(*cols))  # type: ignore[arg-type]


def miner_series(offset: float, cpu: float = 390.0, **kw: object) -> HostSeries:
    """Day 4 of the host with a miner's CPU from ``offset`` s (host CPU and top process)."""
    s = host_series(days=0.25, seed=7, start=host_series().timestamps[-1] + 10)
    if kw.get("burn", True):
        t = s.timestamps - s.timestamps[0]
        on = t >= offset
        v = s.values.copy()
        c, top = s.columns.index("cpu_percent"), s.columns.index("top_proc_cpu_percent")
        v[on, c] = np.minimum(100, v[on, c] + cpu / 4)
        v[on, top] = np.maximum(v[on, top], cpu)
        s = replace(s, values=v)
    return s


def test_identities_fold_releases_and_versions_but_not_places() -> None:
    assert normalize_exe(APP_R1) == normalize_exe(APP_R2)
    gcc12 = "/usr/lib/gcc/x86_64-linux-gnu/12/cc1plus"
    assert normalize_exe(gcc12) == normalize_exe(gcc12.replace("/12/", "/13/"))
    assert identity("kworker/0:1", "", "root") == identity("kworker/3:2", "", "root")
    assert identity("app", "/srv/app/bin/app", "app") != identity("app", "/tmp/app", "app")
    assert disguise("kswapd0", "/tmp/.x/kswapd0 (deleted)") == "deleted exe"
    assert disguise("kworker/0:1", "/dev/shm/kw") == "kernel-thread name with an exe"
    assert disguise("kworker/0:1", "") == ""  # a real kernel thread has no exe
    assert disguise("postgres", "/var/tmp/postgres") == "exe in a temporary folder"
    assert disguise("sysupdate", "/opt/xmrig/xmrig") == "a known miner's name"
    assert disguise("nginx", "/usr/sbin/nginx") == ""


def test_judging_new_odd_tool_and_known() -> None:
    rows = with_table(host_series(days=0.2)).procs
    assert rows is not None
    pb = ProcessBaseline.fit(rows)
    assert pb.judge("python3.11", APP_R2, "app")[0] == "known"  # a deploy
    assert pb.judge("nginx", "/opt/nginx/sbin/nginx", "www-data")[0] == "odd"  # familiar name
    assert pb.judge("helper", "/root/.x/helper", "root")[0] == "odd"  # new, hidden
    assert pb.judge("sysupd", "/opt/sysupd/sysupd", "app")[0] == "new"
    assert pb.judge("pigz", "/usr/bin/pigz", "root")[0] == "tool"
    assert pb.judge("nginx", "/usr/sbin/nginx", "root")[0] == "known"  # another user
    assert pb.judge("migrate", APP_R2, "app")[0] == "tool"  # the app's python, another script
    # stored whole, without pickle, and read back equal
    back = ProcessBaseline.from_arrays(pb.to_arrays())
    assert back is not None and back.identities == pb.identities
    np.testing.assert_array_equal(back.usual_cpu, pb.usual_cpu)


def _alerts(model, series: HostSeries) -> tuple[int, str]:
    scored = score_series(model, series)
    return int(scored.alert.sum()), ";".join(scored.top_features)


@pytest.fixture(scope="module")
def trained() -> object:
    return train_host(with_table(host_series()))


def test_new_identity_alerts_within_minutes_and_names_the_feature(trained) -> None:
    miner = ("sysupd", "/opt/sysupd/sysupd", "app", 95.0)  # one core, on a 4-core host
    s = with_table(miner_series(3600, cpu=95.0), extra=miner, extra_from=3600)
    scored = score_series(trained, s)
    first = scored.window_start[scored.alert.astype(bool)].min() - s.timestamps[0]
    assert 3600 <= first <= 3600 + 4 * 60  # alerted within four windows of the start
    # far above the threshold from its first full window: the fast path opens at the second
    surprise = -np.log1p(-scored.score) + np.log1p(-scored.threshold)
    far = int(np.argmax(surprise > trained.fast_margin))
    assert surprise[far : far + 2].min() > trained.fast_margin
    assert int(np.argmax(scored.alert)) == far + 1
    eager = score_series(replace(trained, fast_windows=None), s)
    assert int(np.argmax(eager.alert)) == far + 2  # the third, without it
    # twice the model's own margin: an agent configured with a wider margin keeps it above
    assert trained.fast_margin == 2 * trained.alert_margin == 4.0
    wide = train_host(with_table(host_series()), params={"alert_margin": 3.0})
    assert (wide.alert_margin, wide.fast_margin) == (3.0, 6.0)
    assert "proc_new_cpu" in ";".join(scored.top_features)
    assert trained.procs is not None
    rows = s.procs.between(s.timestamps[0] + 3600, s.timestamps[0] + 3700)
    words = trained.procs.describe(rows)
    assert words[0].startswith("exe /opt/sysupd/sysupd, never seen on this host, 95 %")


def test_benign_novelty_does_not_alert(trained) -> None:
    quiet = miner_series(0, burn=False)
    deploy = with_table(quiet, app_exe=APP_R2, app_from=1800)
    assert _alerts(trained, deploy)[0] == 0
    # a never-seen installed tool: judged on a 15-minute floor, not from the first window
    pigz = ("pigz", "/usr/bin/pigz", "root", 150.0)
    tool = with_table(quiet, extra=pigz, extra_from=1800, extra_until=1800 + 6 * 60)
    assert "proc_new_tool_floor_15m" in score_series(trained, tool).feature_names
    assert _alerts(trained, tool)[0] == 0
    # the same tool left running for an hour is judged once sustained
    long = with_table(quiet, extra=pigz, extra_from=1800, extra_until=1800 + 3600)
    assert _alerts(trained, long)[0] > 0


def test_a_build_of_short_compiler_processes_is_not_one_tool_sustained(trained) -> None:
    quiet = miner_series(0, burn=False)
    cc = ("cc1plus", "/usr/lib/gcc/x86_64-linux-gnu/13/cc1plus", "alice", 180.0)
    # an hour of a never-seen compiler, a new process every sample: never one held it
    build = with_table(quiet, extra=cc, extra_from=1800, extra_until=1800 + 3600, extra_churn=True)
    assert _alerts(trained, build)[0] == 0
    assert build.procs is not None and trained.procs is not None
    cols = trained.procs.columns(build.procs, build.timestamps)
    assert cols[:, PROC_COLUMNS.index("proc_new_tool_cpu_percent")].max() == 0.0
    # the same CPU held by one process for the hour is judged once it held it 15 minutes
    one = with_table(quiet, extra=cc, extra_from=1800, extra_until=1800 + 3600)
    assert one.procs is not None
    tool = trained.procs.columns(one.procs, one.timestamps)[:, 1]
    t = one.timestamps - one.timestamps[0]
    assert tool[(t >= 1800) & (t < 1800 + SUSTAIN_S)].max() == 0.0
    assert np.all(tool[(t >= 1800 + SUSTAIN_S + 10) & (t < 1800 + 3600)] == 180.0)
    assert _alerts(trained, one)[0] > 0


def test_sustained_floors_are_the_same_fed_a_sample_at_a_time() -> None:
    tracker = Sustained(window=60.0)  # a gap of more than 12 s starts a process again
    pigz, xz = (7, "pigz"), (8, "xz")
    first = zip(range(0, 60, 10), (90, 80, 95, 99, 99, 99), strict=True)
    assert [tracker.update(t, [pigz], [c]) for t, c in first] == [[0.0]] * 6  # not yet
    assert tracker.update(60, [pigz], [99.0]) == [80.0]  # its least over (0, 60]
    assert tracker.update(70, [pigz], [99.0]) == [95.0]  # the 80 at 10 s has left
    assert tracker.update(80, [pigz, xz], [97.0, 50.0]) == [97.0, 0.0]  # xz is new
    for t in range(90, 140, 10):
        assert tracker.update(t, [pigz, xz], [98.0, 60.0]) == [97.0, 0.0]
    assert tracker.update(140, [pigz, xz], [98.0, 60.0]) == [98.0, 60.0]
    assert tracker.update(160, [pigz], [98.0]) == [0.0]  # a gap: not seen in between
    assert tracker.update(170, [], []) == []
    assert tracker.update(180, [(7, "gzip")], [99.0]) == [0.0]  # the pid reused by another
    # the agent's way (one sample a call, the tracker kept) gives what batch scoring gives
    quiet = miner_series(0, burn=False)
    s = with_table(quiet, extra=("pigz", "/usr/bin/pigz", "root", 150.0), extra_from=600)
    assert s.procs is not None
    pb = ProcessBaseline.fit(with_table(host_series(days=0.2)).procs)
    whole = pb.columns(s.procs, s.timestamps)
    kept = Carry()
    one_by_one = np.vstack(
        [pb.columns(s.procs.between(t, t + 1e-3), np.array([t]), kept) for t in s.timestamps[:200]]
    )
    np.testing.assert_array_equal(one_by_one, whole[:200])
    assert whole[:200, 1].max() == 150.0
    # a sample whose process table could not be read: unknown, and nothing is forgotten
    held = PROC_COLUMNS.index("proc_sustained_cpu_percent")
    t = s.timestamps[200]
    empty = pb.columns(s.procs.between(t, t), np.array([t]), kept)
    assert np.isnan(empty[0, held]) and empty[0, 1] == 0.0
    t = s.timestamps[201]
    after = pb.columns(s.procs.between(t, t + 1e-3), np.array([t]), kept)
    np.testing.assert_array_equal(after[0], whole[201])


def test_without_a_process_table_the_process_features_are_neutral(trained) -> None:
    quiet = miner_series(0, burn=False)
    with_procs = score_series(trained, with_table(quiet))
    without = score_series(trained, quiet)
    assert without.alert.sum() == 0 and with_procs.alert.sum() == 0
    specs = {s.name: s for s in feature_specs(trained.columns)}
    from_table = [
        j
        for j, name in enumerate(without.feature_names)
        if name in specs and set(specs[name].inputs) & set(PROC_COLUMNS)
    ]
    assert {without.feature_names[j] for j in from_table} >= {"cpu_sustained_15m", "proc_new_cpu"}
    assert np.isnan(without.features[:, from_table]).all()  # unknown: scored at the usual
    # with the table they are known once the processes have been watched for 15 minutes
    watched = with_procs.window_start - quiet.timestamps[0] >= SUSTAIN_S
    assert np.isfinite(with_procs.features[np.ix_(watched, from_table)]).all()
    assert np.isnan(
        with_procs.features[~watched, with_procs.feature_names.index("cpu_sustained_15m")]
    ).all()


def test_a_host_already_mining_when_learnt_does_not_learn_the_miner() -> None:
    miner = ("xmrig", "/tmp/.vx/xmrig", "root", 390.0)
    base = host_series(plateau=(2 * 86400, 3 * 3600))
    learnt = with_table(base, extra=miner, extra_from=2 * 86400)
    # the miner runs only inside the plateau
    rows = learnt.procs
    assert rows is not None
    t = rows.timestamps - base.timestamps[0]
    keep = (rows.pids != 4242) | ((t >= 2 * 86400) & (t < 2 * 86400 + 3 * 3600))
    learnt = replace(learnt, procs=rows.take(keep))
    model = train_host(learnt)
    assert model.procs is not None
    assert identity(*miner[:3]) not in model.procs.identities
    assert model.meta["flagged_processes"] == ["/tmp/.vx/xmrig (a known miner's name)"]
    assert int(model.meta["windows"]) < 3 * 8640 // 6 - 3 * 60  # its windows were left out
    s = with_table(miner_series(600), extra=miner, extra_from=600)
    n, top = _alerts(model, s)
    assert n > 0 and "proc_odd_cpu" in top


def test_flag_rows_marks_disguises_only() -> None:
    rows = ProcessRows.from_lists(
        [1.0, 1.0, 1.0],
        [1, 2, 3],
        ["nginx", "kswapd0", "x"],
        ["/usr/sbin/nginx", "/usr/bin/kswapd0", "/tmp/x (deleted)"],
        ["www-data", "root", "root"],
        [10.0, 300.0, 50.0],
    )
    assert flag_rows(rows).tolist() == [False, True, True]


def test_model_with_process_baseline_round_trips_and_is_signed(trained, tmp_path: Path) -> None:
    save_model(tmp_path, trained)
    back = load_model(tmp_path, trained.host)
    assert back.procs is not None and back.procs.identities == trained.procs.identities
    npz = next(tmp_path.glob("*/model-*.npz"))
    with np.load(npz, allow_pickle=False) as z:
        arrays = dict(z)
    arrays["procs_identities"] = np.array(["xmrig\0/tmp/x\0root"] * len(back.procs.identities))
    meta = json.loads((npz.parent / "meta.json").read_text())

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    npz.write_bytes(buf.getvalue())  # same name, other content: the hash no longer matches
    with pytest.raises(Exception, match="sha256|hash|signature|match"):
        load_model(tmp_path, meta["host"])


def test_process_table_file_round_trip_and_errors(tmp_path: Path) -> None:
    rows = with_table(host_series(days=0.01)).procs
    assert rows is not None
    path = tmp_path / "web-1.procs.csv"
    write_procs_csv(path, "web-1", rows)
    back = read_procs_csv(path)["web-1"]
    assert len(back) == len(rows) and back.names.tolist() == rows.names.tolist()
    bad = tmp_path / "bad.procs.csv"
    bad.write_text("timestamp,host,pid,name,exe,user,cpu_percent\n1,h,1,n,/x,u,lots\n")
    with pytest.raises(Exception, match=r"bad.procs.csv.*2|line 2"):
        read_procs_csv(bad)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "minerwatch", *args], capture_output=True, text=True, timeout=600
    )


_BAD_PROC_ROWS = {
    "negative CPU": ("1,h,7,n,/x,u,-5", "percentage >= 0 in column 'cpu_percent'"),
    "infinite CPU": ("1,h,7,n,/x,u,inf", "percentage >= 0 in column 'cpu_percent'"),
    "fractional pid": ("1,h,7.5,n,/x,u,5", "process id"),
    "negative pid": ("1,h,-7,n,/x,u,5", "process id"),
    "no host": ("1,,7,n,/x,u,5", "host name"),
}


@pytest.mark.parametrize("case", sorted(_BAD_PROC_ROWS))
@pytest.mark.parametrize("suffix", [".procs.csv", ".procs.parquet"])
def test_train_refuses_impossible_process_rows(tmp_path: Path, case: str, suffix: str) -> None:
    """A negative or infinite CPU share would pass for a quiet or a runaway process, a pid
    that is not a whole number or a row without a host for another host's: refused with the
    file, the line (CSV) or row (Parquet) and the column, before anything is trained."""
    data, models = tmp_path / "data", tmp_path / "models"
    data.mkdir()
    write_csv(data / "h.csv", [host_series(days=0.2, host="h")])
    row, expected = _BAD_PROC_ROWS[case]
    good = "1,h,8,n,/x,u,5"
    text = f"timestamp,host,pid,name,exe,user,cpu_percent\n{good}\n{row}\n"
    path = data / f"h{suffix}"
    if suffix == ".procs.csv":
        path.write_text(text)
        where = f"{path}:3"
    else:
        import pandas as pd

        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        frame = frame.replace("", None)
        frame.to_parquet(path)
        where = "row 2"
    run = _cli("train", str(data), "--models", str(models))
    assert run.returncode == 2, run.stderr
    assert str(path) in run.stderr and where in run.stderr and expected in run.stderr
    assert "Traceback" not in run.stderr
    assert not models.exists() or not any(models.rglob("meta.json"))


def test_train_and_score_commands_read_process_tables(tmp_path: Path) -> None:
    data, test, models = tmp_path / "data", tmp_path / "test", tmp_path / "models"
    data.mkdir()
    test.mkdir()
    learnt = with_table(host_series(days=2))
    write_csv(data / "web-1.csv", [learnt])
    assert learnt.procs is not None
    write_procs_csv(data / "web-1.procs.csv", "web-1", learnt.procs)
    assert set(read_telemetry([data])) == {"web-1"}  # the table is not a host of its own
    run = _cli("train", str(data), "--models", str(models))
    assert run.returncode == 0, run.stderr
    meta = json.loads(next(models.glob("*/meta.json")).read_text())
    assert set(PROC_COLUMNS) <= set(meta["columns"])
    miner = ("sysupd", "/opt/sysupd/sysupd", "app", 190.0)
    s = with_table(miner_series(1800, cpu=190.0), extra=miner, extra_from=1800)
    write_csv(test / "web-1.csv", [s])
    assert s.procs is not None
    write_procs_csv(test / "web-1.procs.csv", "web-1", s.procs)
    out = tmp_path / "scores.csv"
    run = _cli("score", str(test), "--models", str(models), "--output", str(out))
    assert run.returncode == 0, run.stderr
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    alerts = [r for r in rows if r["alert"] == "1"]
    assert alerts and float(alerts[0]["window_start"]) - s.timestamps[0] <= 1800 + 4 * 60
    assert any("proc_new_cpu" in r["top_features"] for r in alerts)
    named = [r["processes"] for r in alerts if r["processes"]]
    assert named and "exe /opt/sysupd/sysupd, never seen on this host, 190 %" in named[0]
    assert all(r["processes"] == "" for r in rows if r["alert"] == "0")


def test_surge_and_offhour_need_a_routine_and_a_real_surge() -> None:
    day = 86400.0
    ts, names, cpu = [], [], []
    for d in range(7):  # a nightly job at 02:00-02:59 and a daemon all day
        for h in range(24):
            t = d * day + h * 3600
            ts.append(t)
            names.append("daemon")
            cpu.append(20.0)
            if h == 2:
                ts.append(t)
                names.append("nightly")
                cpu.append(100.0)
            if d == 3 and h == 15:  # a one-off compile in the afternoon
                ts.append(t)
                names.append("cc1")
                cpu.append(100.0)
    n = len(ts)
    rows = ProcessRows.from_lists(
        ts, [1] * n, names, ["/usr/bin/" + x for x in names], ["u"] * n, cpu
    )
    pb = ProcessBaseline.fit(rows)

    def cols(name: str, hour: float, c: float) -> np.ndarray:
        t = 8 * day + hour * 3600
        one = ProcessRows.from_lists([t], [1], [name], ["/usr/bin/" + name], ["u"], [c])
        return pb.columns(one, np.array([t]))[0]

    surge, offhour = PROC_COLUMNS.index("proc_surge_cpu_percent"), 4
    assert cols("nightly", 14, 100.0)[offhour] == 100.0  # a routine job at a new hour
    assert cols("nightly", 4, 100.0)[offhour] == 0.0  # two hours on: drift, not odd
    assert cols("nightly", 5, 100.0)[offhour] == 100.0
    assert cols("daemon", 4, 20.0)[offhour] == 0.0  # busy at every hour: no schedule
    assert cols("cc1", 4, 100.0)[offhour] == 0.0  # one run is no routine
    assert cols("daemon", 4, 60.0)[surge] == 0.0  # within max(4x, +50) of its usual 20
    assert cols("daemon", 4, 170.0)[surge] == 170.0 - 80.0


def test_the_fast_reader_agrees_with_the_exact_one_and_errors_name_the_line(
    tmp_path: Path,
) -> None:
    from minerwatch.features.io import _read_procs

    path = tmp_path / "h.procs.csv"
    rows = ProcessRows.from_lists(
        [1.0, 1.0, 2.0, 2.0],
        [1, 2, 3, 0],
        ['we"ird, name', "kworker/0:1", "x\nnew line", "grp"],
        ["/opt/a b/x", "", "/tmp/x (deleted)", ""],
        ["root", "1001", "app", ""],
        [12.5, 0.0, 99.0, float("nan")],
    )
    write_procs_csv(path, "h", rows)
    fast, exact = _read_procs(path)["h"], read_procs_csv(path)["h"]
    for field in ("names", "exes", "users", "pids"):
        assert getattr(fast, field).tolist() == getattr(exact, field).tolist()
    np.testing.assert_array_equal(fast.cpu, exact.cpu)
    np.testing.assert_array_equal(fast.timestamps, exact.timestamps)
    (tmp_path / "h.csv").write_text("timestamp,host,cpu_percent\n1,h,5\n2,h,6\n")
    with path.open("a") as fh:
        fh.write("3,h,9,n,/x,u,busy\n")
    with pytest.raises(Exception, match=r"h.procs.csv:7.*cpu_percent"):
        read_telemetry([tmp_path])


def test_the_agents_history_keeps_process_rows_for_its_training_child(tmp_path: Path) -> None:
    import io

    from minerwatch.service.history import History
    from minerwatch.service.retrain import procs_from_npz, read_history, read_history_procs

    db = tmp_path / "history.db"
    long_exe = "/opt/" + "x" * 5000
    with History(db, retention_s=1e12, interval_s=10.0) as h:
        for k in range(5):
            t = 1_000.0 + 10 * k
            h.add_sample(t, {"cpu_percent": 5.0})
            h.add_procs(t, [(7, "nginx", "/usr/sbin/nginx", "www-data", 3.5, 0.0)])
            h.add_procs(t, [(9, "bad\udcffname", long_exe, "1001", float("nan"), 1.5)])
    ts, _ = read_history(db, since=0.0)
    arrays = read_history_procs(db, ts[1:])  # a left-out sample leaves out its processes
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as npz:
        rows = procs_from_npz(npz)
    assert rows is not None and len(rows) == 8
    assert set(rows.timestamps.tolist()) == set(ts[1:].tolist())
    assert sorted(set(rows.names.tolist())) == ["bad\ufffdname", "nginx"]
    assert {len(e) for e in rows.exes.tolist()} == {len("/usr/sbin/nginx"), 4096}
    assert arrays["procs_text"].nbytes < 100_000  # texts stored once, not per row
    assert rows.gc is not None
    assert sorted(set(rows.gc.tolist())) == [0.0, 1.5]  # the GC threads' CPU goes along


def test_a_history_from_before_gc_threads_gains_the_column_and_reads_them_as_unknown(
    tmp_path: Path,
) -> None:
    import sqlite3

    from minerwatch.service.history import History
    from minerwatch.service.retrain import read_history, read_history_procs

    db = tmp_path / "history.db"
    with History(db, retention_s=1e12, interval_s=10.0) as h:
        h.add_sample(1_000.0, {"cpu_percent": 5.0})
    conn = sqlite3.connect(db)  # the procs table as an agent of the last release made it
    conn.execute("DROP TABLE procs")
    conn.execute(
        "CREATE TABLE procs (ts REAL NOT NULL, pid INTEGER, name TEXT, exe TEXT, user TEXT,"
        " cpu REAL)"
    )
    conn.execute("INSERT INTO procs VALUES (1000.0, 7, 'java', '/usr/bin/java', 'app', 250.0)")
    conn.commit()
    conn.close()
    ts, _ = read_history(db, since=0.0)
    old = read_history_procs(db, ts)  # the training child reads it as it is
    assert old["procs_cpu"].tolist() == [250.0] and np.isnan(old["procs_gc"]).all()
    with History(db, retention_s=1e12, interval_s=10.0) as h:  # the new agent opens it
        h.add_sample(1_010.0, {"cpu_percent": 5.0})
        h.add_procs(1_010.0, [(7, "java", "/usr/bin/java", "app", 260.0, 240.0)])
    ts, _ = read_history(db, since=0.0)
    both = read_history_procs(db, ts)
    assert both["procs_cpu"].tolist() == [250.0, 260.0]
    assert np.isnan(both["procs_gc"][0]) and both["procs_gc"][1] == 240.0


def with_gc(series: HostSeries, pid: int, share: float, after: float) -> HostSeries:
    """``series`` whose process ``pid`` spends ``share`` of its CPU in garbage-collector
    threads from ``after`` s on (a GC storm's shape)."""
    rows = series.procs
    assert rows is not None
    on = (rows.pids == pid) & (rows.timestamps - series.timestamps[0] >= after)
    gc = np.where(on, share * rows.cpu, 0.0)
    return replace(series, procs=replace(rows, gc=gc))


def test_garbage_collection_is_credited_to_known_processes_only() -> None:
    rows = with_table(host_series(days=0.2)).procs
    assert rows is not None
    pb = ProcessBaseline.fit(rows)
    t = np.array([1.0])
    storm = ProcessRows.from_lists(
        [1.0, 1.0],
        [100, 4242],
        ["python3.11", "sysupd"],
        [APP_R1, "/opt/sysupd/sysupd"],
        ["app", "app"],
        [900.0, 200.0],
        [850.0, 190.0],  # the stranger's threads are named like a collector's: no credit
    )
    cols = dict(zip(PROC_COLUMNS, pb.columns(storm, t)[0].tolist(), strict=True))
    assert cols["proc_gc_cpu_percent"] == 850.0 and cols["proc_new_cpu_percent"] == 200.0
    assert cols["proc_gc_top_cpu_percent"] == 850.0  # the app is the busiest process
    assert cols["proc_surge_cpu_percent"] == 0.0  # 50 % of work: far from a surge
    busier = replace(storm, cpu=np.array([900.0, 1200.0]))  # the stranger now the busiest
    cols = dict(zip(PROC_COLUMNS, pb.columns(busier, t)[0].tolist(), strict=True))
    assert cols["proc_gc_cpu_percent"] == 850.0 and cols["proc_gc_top_cpu_percent"] == 0.0
    plain = replace(storm, gc=None)
    cols = dict(zip(PROC_COLUMNS, pb.columns(plain, t)[0].tolist(), strict=True))
    assert cols["proc_gc_cpu_percent"] == 0.0 and cols["proc_surge_cpu_percent"] > 500.0


def test_a_gc_storm_of_a_known_process_does_not_page_the_same_cpu_as_work_does(trained) -> None:
    """The app at 260 % of a core for five hours: collecting garbage (its collector threads
    run it all), no alert; doing it as work, an alert; a
    never-seen process whose threads carry a collector's name gets no credit."""
    calm = with_table(miner_series(3600, burn=False))
    storm = miner_series(3600, cpu=260.0)  # the same quarter day, the app at 260 % from 1 h
    assert calm.procs is not None and np.array_equal(calm.timestamps, storm.timestamps)
    app = calm.procs.pids == 100
    cpu = calm.procs.cpu.copy()
    cpu[app] = storm.column("top_proc_cpu_percent")[calm.procs.sample_index(storm.timestamps)[app]]
    storm = replace(storm, procs=replace(calm.procs, cpu=cpu))  # only the app's row moves
    assert score_series(trained, storm).alert.any()
    quiet = score_series(trained, with_gc(storm, 100, 1.0, 3600))
    assert not quiet.alert.any()
    stranger = ("javax", "/opt/javax/javax", "app", 260.0)
    s = with_table(miner_series(3600, cpu=260.0), extra=stranger, extra_from=3600)
    assert score_series(trained, with_gc(s, 4242, 1.0, 3600)).alert.any()
    without_cores = replace(
        with_gc(storm, 100, 1.0, 3600),
        values=storm.values[:, [c != "cpu_cores" for c in storm.columns]],
        columns=tuple(c for c in storm.columns if c != "cpu_cores"),
    )
    assert score_series(trained, without_cores).score.mean() > quiet.score.mean()


def test_marginal_evidence_must_last_strong_evidence_does_not_wait(trained) -> None:
    """Windows far above the threshold (here the app at 4x anything it did in training) open
    an alert at the third; windows barely above it (a GC storm, a compile, a miner inside a
    familiar process that stays near its usual peak) only once they last ``sustain_windows``."""
    assert trained.sustain_windows == 8 and trained.alert_margin == 2.0
    surge = with_table(miner_series(3600, cpu=260.0))  # the app itself at 260 %
    scored = score_series(trained, surge)
    surprise = -np.log1p(-scored.score)
    start = int(np.argmax(surprise - -np.log1p(-scored.threshold) > 2.0))
    assert surprise[start : start + 3].min() > -np.log1p(-trained.threshold) + 2.0
    assert int(np.argmax(scored.alert)) <= start + 2  # strong: the third window
    # the surge's first windows when they clear the threshold only just: the rule waits
    near = replace(trained, threshold=float(-np.expm1(-(surprise[start] - 0.5))))
    marginal = score_series(near, surge)
    first_above = int(np.argmax(marginal.score > near.threshold))
    assert first_above == start
    rule = (near.threshold, marginal.slots, 3, 3, 8, 2.0)
    fast = {"fast": 2, "fast_margin": 4.0}
    np.testing.assert_array_equal(marginal.alert, alert_rule(marginal.score, *rule, **fast))
    first_alert = int(np.argmax(marginal.alert))
    assert first_above + 2 < first_alert <= first_above + 7  # after 3 strong or 8 windows
    # the same surge while the host reads and writes its disk far harder than in training
    # (an index rebuild on more cores than ever): heavy work holds the sustain, scores unchanged
    raw = miner_series(3600, cpu=260.0)
    t = raw.timestamps - raw.timestamps[0]
    v = raw.values[t < 7200].copy()
    for col in ("disk_read_bps", "disk_write_bps"):
        v[t[t < 7200] >= 3000, raw.columns.index(col)] *= 50
    busy = with_table(replace(raw, timestamps=raw.timestamps[t < 7200], values=v))
    surge_u = -np.log1p(-score_series(trained, busy).score)
    plateau = score_series(trained, busy).window_start - raw.timestamps[0] >= 4500
    assert np.ptp(surge_u[plateau]) < 3.0  # a plateau just above a threshold below it
    bar_u = surge_u[plateau].min() - 0.3
    bar = replace(trained, threshold=float(-np.expm1(-bar_u)), alert_margin=4.0)
    held, eager = score_series(bar, busy), score_series(replace(bar, heavy_work=0.0), busy)
    np.testing.assert_array_equal(held.score, eager.score)
    assert eager.alert.any() and not held.alert.any()
    # the scores file says which windows the work held (the last column, heavy_work)
    assert held.heavy[plateau].all() and not eager.heavy.any()
    assert [row[-1] for row in held.rows()] == held.heavy.astype(int).tolist()
    # and which evidence made a window heavy: the disk, far above its training median
    f = held.features[np.flatnonzero(plateau)[0]]
    (disk, *_) = bar.heavy_inputs(f)
    assert disk["feature"].startswith("disk_") and disk["spreads"] >= bar.heavy_work
    assert disk["value"] > disk["typical"]
    assert replace(bar, heavy_work=0.0).heavy_inputs(f) == []
    assert bar.heavy_inputs(held.features[np.flatnonzero(~held.heavy)[0]]) == []
    # as older models judged (no sustain): the third window above
    loose = replace(near, sustain_windows=None)
    assert int(np.argmax(score_series(loose, surge).alert)) == first_above + 2
    # scored without a process table nothing can show an unknown process: no waiting either
    bare = score_series(near, miner_series(3600, cpu=260.0))
    np.testing.assert_array_equal(bare.alert, alert_rule(bare.score, near.threshold, bare.slots))
    # a model trained without a process table keeps the rule it always had
    assert train_host(host_series()).sustain_windows is None
