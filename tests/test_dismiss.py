"""``minerwatch dismiss``: a benign episode is learnt by the agent's next retraining.

Real agent (replayed telemetry, real SQLite history, real training child), the command run as
a subprocess against its data folder, as a responder would.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from synth import host_series
from test_agent import CPU, HOST, INTERVAL, NOW0, WINDOW, burn_until_alerted, read_events, run

from minerwatch.baseline.store import save_model
from minerwatch.baseline.train import train_host
from minerwatch.service.history import History
from minerwatch.service.retrain import read_history

MINERWATCH = os.path.join(os.path.dirname(sys.executable), "minerwatch")


def mw(*args, **kw):
    return subprocess.run(
        [MINERWATCH, *map(str, args)], capture_output=True, text=True, timeout=120, **kw
    )


@pytest.fixture(scope="module")
def trained_models(tmp_path_factory):
    """The model test_agent's replays are scored with: the synthetic host's day before."""
    models = tmp_path_factory.mktemp("models")
    day = host_series(HOST, days=1.0, interval=INTERVAL, seed=0, start=NOW0 - 86400.0)
    save_model(models, train_host(day, WINDOW, WINDOW, params={"alert_windows": 3}))
    return models


def training_input(agent):
    """Start the retraining the agent decided on, wait for its child, return its samples."""
    assert agent.child is not None, "the agent started no retraining"
    agent.child.wait(timeout=120)
    with np.load(agent.data_dir / "train-input.npz", allow_pickle=False) as f:
        return f["timestamps"].copy(), f["values"][:, CPU].copy()


def test_a_dismissed_episode_is_learnt_at_once_and_undo_leaves_it_out_again(
    tmp_path, trained_models
):
    replay, agent, at = burn_until_alerted(tmp_path, trained_models)
    data = agent.cfg.data_dir
    try:
        run(agent, replay, at, 330)  # the burn ends, the episode closes
        assert agent.episode is None
        (closed,) = [e for e in read_events(agent) if e["event"] == "close"]
        assert agent.next_retrain > replay.clock() + 3600, "no retraining due by itself"
        run(agent, replay, 330, 331)
        assert agent.child is None, "nothing dismissed yet, nothing to learn"

        # ESC and BEL in the reason: kept in the record, shown escaped by --list (below)
        reason = "nightly reindex \x1b]2;pwned\x07(ticket 42)"
        r = mw("dismiss", "--data-dir", data, "--reason", reason)
        assert r.returncode == 0, r.stderr
        assert f"dismissed episode {closed['id']} on {HOST}" in r.stdout
        assert "within a minute" in r.stdout

        assert agent.snapshot().dismissed_episodes == 0
        run(agent, replay, 331, 332)  # the next tick notices it and retrains
        assert agent.snapshot().dismissed_episodes == 1
        ts, cpu = training_input(agent)
        assert cpu.max() > 90, "the dismissed burn was left out of training"
        assert np.any((ts >= closed["start"]) & (ts < closed["end"]))
        run(agent, replay, 332, 333)  # the child's answer is read
        assert agent.child is None
        run(agent, replay, 333, 334)
        assert agent.child is None, "one dismissal, one retraining"

        r = mw("dismiss", "--data-dir", data, "--list", "--json")
        assert r.returncode == 0, r.stderr
        (record,) = json.loads(r.stdout)
        assert record["episode"] == closed["id"] and record["reason"] == reason
        assert (record["start"], record["end"]) == (closed["start"], closed["end"])
        assert record["by"]
        shown = mw("dismiss", "--data-dir", data, "--list").stdout
        assert "\x1b" not in shown and "\x07" not in shown, repr(shown)
        assert "nightly reindex \\x1b]2;pwned\\x07(ticket 42)" in shown, shown

        r = mw("report", "--data-dir", data, "--format", "json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["episode"]["dismissed"]["reason"] == reason
        assert any(n.startswith("dismissed as benign at ") for n in doc["notes"])
        (step,) = [c for c in doc["checklist"] if c["step"] == "or dismiss"]
        assert step["status"] == "done"

        r = mw("dismiss", "--data-dir", data)  # again: nothing changes, and it says so
        assert (
            r.returncode == 0 and "already dismissed" in r.stdout and "nothing changed" in r.stdout
        )
        run(agent, replay, 334, 335)
        assert agent.child is None

        r = mw("dismiss", "--data-dir", data, "--undo", closed["id"])
        assert r.returncode == 0, r.stderr
        assert "leaves its windows out again" in r.stdout
        run(agent, replay, 335, 336)
        assert agent.snapshot().dismissed_episodes == 0
        ts, cpu = training_input(agent)
        assert cpu.max() < 90, "an undone dismissal was still learnt"
        assert not np.any((ts >= closed["start"]) & (ts < closed["end"]))
        r = mw("dismiss", "--data-dir", data, "--list")
        assert r.returncode == 0 and r.stdout.startswith("no dismissed episodes")
    finally:
        agent.shutdown()
        if agent.child is not None:
            agent.child.wait(timeout=60)


def test_an_open_episode_dismissed_is_learnt_at_once_as_far_as_it_has_gone(
    tmp_path, trained_models
):
    """A lasting new level would never close its episode: waiting for the close would leave
    the dismissal without effect for as long as the level lasts."""
    replay, agent, at = burn_until_alerted(tmp_path, trained_models)
    try:
        assert agent.episode is not None
        opened = agent.episode["start"]
        r = mw("dismiss", "--data-dir", agent.cfg.data_dir)
        assert r.returncode == 0, r.stderr
        assert "with its windows so far" in r.stdout
        run(agent, replay, at, at + 1)
        assert agent.episode is not None, "the burn goes on"
        ts, cpu = training_input(agent)
        assert cpu.max() > 90, "the open, dismissed episode was left out"
        assert ts.max() >= opened, "training stopped before the open episode"
        so_far = ts.max()
        while agent.episode is not None:  # the burn ends, the episode closes
            run(agent, replay, replay.i + 1, replay.i + 2)
        (closed,) = [e for e in read_events(agent) if e["event"] == "close"]
        run(agent, replay, replay.i + 1, replay.i + 2)
        ts, cpu = training_input(agent)  # and it is learnt again, whole
        assert ts.max() >= closed["end"] - WINDOW > so_far
        assert np.sum(cpu > 90) > np.sum((ts >= opened) & (ts <= so_far))
    finally:
        agent.shutdown()
        if agent.child is not None:
            agent.child.wait(timeout=60)


def test_another_open_episode_holds_the_retraining_back(tmp_path, trained_models):
    """A dismissal of an earlier episode waits while a new one is open: the open one may be a
    miner, and retraining then stops before it."""
    replay, agent, at = burn_until_alerted(tmp_path, trained_models)
    try:
        assert agent.episode is not None
        with sqlite3.connect(agent.cfg.data_dir / "history.db") as conn:
            conn.execute(
                "INSERT INTO dismissed (episode, host, start, end, at, by, reason)"
                " VALUES ('earlier', ?, ?, ?, ?, 'test', '')",
                (HOST, NOW0 - 7200.0, NOW0 - 3600.0, time.time()),  # as the command does
            )
        conn.close()
        run(agent, replay, at, at + 3)
        assert agent.episode is not None and agent.child is None, "retrained while it was open"
        while agent.episode is not None:
            run(agent, replay, replay.i + 1, replay.i + 2)
        run(agent, replay, replay.i + 1, replay.i + 2)
        _, cpu = training_input(agent)
        assert cpu.max() < 90, "the episode nobody dismissed was learnt"
    finally:
        agent.shutdown()
        if agent.child is not None:
            agent.child.wait(timeout=60)


# -- the history as the training child reads it -----------------------------------------------


def history_with_an_alert(path):
    """Two hours of samples at 10 s; windows of 60 s; the 20 minutes from 3600 s alerted."""
    with History(path, retention_s=1e12) as h:
        for t in np.arange(0.0, 7200.0, 10.0):
            h.add_sample(1e9 + t, {"cpu_percent": 95.0 if 3600 <= t < 4800 else 10.0})
        for t in np.arange(0.0, 7200.0, 60.0):
            h.add_window(1e9 + t, 1e9 + t + 60, 0.5, 0.7, bool(3600 <= t < 4800))
    return 1e9 + 3600, 1e9 + 4800


def test_read_history_learns_dismissed_windows_only(tmp_path):
    db = tmp_path / "history.db"
    start, end = history_with_an_alert(db)
    ts, _ = read_history(db, since=0.0, margin_s=600.0)
    assert not np.any((ts >= start - 600) & (ts <= end + 600))
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(
            "INSERT INTO dismissed VALUES ('h-1', 'h', ?, ?, 1.0, 'me', '', NULL)", (start, end)
        )
    ts, values = read_history(db, since=0.0, margin_s=600.0)
    assert len(ts) == 720 and values[:, 0].max() == 95.0
    with conn:
        conn.execute("UPDATE dismissed SET undone_at = 2.0")
    conn.close()
    ts, _ = read_history(db, since=0.0, margin_s=600.0)
    assert len(ts) == 720 - (120 + 2 * 60 + 1)


# -- usage errors: exit 2, naming what was expected ---------------------------------------------


def agent_folder(tmp_path, events=True, history=True):
    data = tmp_path / "data"
    data.mkdir(mode=0o700, parents=True)
    if history:
        history_with_an_alert(data / "history.db")
    if events:
        line = {"id": "h-1000003600", "host": "h", "start": 1e9 + 3600, "end": 1e9 + 4800}
        (data / "events.jsonl").write_text(
            json.dumps({**line, "event": "open"}) + "\n" + json.dumps({**line, "event": "close"})
        )
    return data


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--episode", "nope"], "expected"),
        (["--undo", "h-1000003600"], "a dismissal of episode 'h-1000003600'"),
        (["--list", "--undo", "x"], "--list alone"),
        (["--undo", "x", "--reason", "y"], "--undo ID alone"),
        (["--reason", "x" * 501], "at most 500 characters"),
    ],
)
def test_bad_usage_exits_2_and_says_what_was_expected(tmp_path, args, expected):
    data = agent_folder(tmp_path)
    r = mw("dismiss", "--data-dir", data, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert expected in r.stderr and "Traceback" not in r.stderr
    conn = sqlite3.connect(data / "history.db")
    assert conn.execute("SELECT count(*) FROM dismissed").fetchone() == (0,)
    conn.close()


def test_no_episode_or_no_history_exits_2_naming_the_file(tmp_path):
    data = agent_folder(tmp_path / "a", events=False)
    r = mw("dismiss", "--data-dir", data)
    assert r.returncode == 2 and f"{data / 'events.jsonl'}: expected at least one" in r.stderr
    data = agent_folder(tmp_path / "b", history=False)
    r = mw("dismiss", "--data-dir", data)
    assert r.returncode == 2 and f"{data / 'history.db'}: expected the agent's history" in r.stderr
    assert not (data / "history.db").exists(), "the command created a history"


def test_an_episode_the_history_no_longer_holds_is_not_dismissed(tmp_path):
    """Its windows gone (past the history's retention), the retraining has nothing to learn:
    it said "0 alerted windows ... learns these windows" and exited 0."""
    data = agent_folder(tmp_path)
    conn = sqlite3.connect(data / "history.db")
    with conn:
        conn.execute("DELETE FROM windows")
    conn.close()
    r = mw("dismiss", "--data-dir", data)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert (
        f"{data / 'history.db'}: expected the alerted windows of episode h-1000003600" in r.stderr
    )
    assert "older than the history keeps" in r.stderr and "Traceback" not in r.stderr
    conn = sqlite3.connect(data / "history.db")
    assert conn.execute("SELECT count(*) FROM dismissed").fetchone() == (0,)
    conn.close()


def _waiting_for_the_lock(pid: int) -> bool:
    """Whether the process sleeps in SQLite's busy handler (a nanosleep): a dismiss that
    reached the database and waits for the write lock the test holds."""
    try:
        wchan = Path(f"/proc/{pid}/wchan").read_text()
        call = Path(f"/proc/{pid}/syscall").read_text().split()[0]
    except (OSError, IndexError):
        return False
    return "nanosleep" in wchan or call in {"35", "230", "101", "115"}  # x86_64, aarch64


def test_two_responders_dismissing_at_once_keep_the_first_record(tmp_path):
    """Both read "not dismissed", then both wrote: the second replaced the first's name and
    reason, and both were told they had dismissed it. The test holds the history's write
    lock until both commands wait on it, as an agent's write or a slow disk would."""
    data = agent_folder(tmp_path)
    lock = sqlite3.connect(data / "history.db", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    procs = [
        subprocess.Popen(
            [MINERWATCH, "dismiss", "--data-dir", str(data), "--reason", reason],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for reason in ("alice: reindex", "bob: backup")
    ]
    try:
        deadline = time.monotonic() + 60
        while not all(_waiting_for_the_lock(p.pid) for p in procs):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.monotonic() < deadline, "the commands never waited for the lock"
            time.sleep(0.02)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    said = sorted("already dismissed" in out for out, _ in outs)
    assert said == [False, True], outs
    conn = sqlite3.connect(data / "history.db")
    (reason,) = conn.execute("SELECT reason FROM dismissed").fetchone()
    conn.close()
    assert reason in ("alice: reindex", "bob: backup")
    assert ("already" in outs[0][0]) == (reason == "bob: backup"), (outs, reason)


def test_dismiss_without_an_agent_running_records_the_episode(tmp_path):
    data = agent_folder(tmp_path)
    r = mw("dismiss", "--data-dir", data, "--episode", "h-1000003600", "--json")
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    assert record["windows"] == 20 and record["already"] is False
    ts, values = read_history(data / "history.db", since=0.0, margin_s=600.0)
    assert len(ts) == 720


def test_dismissing_an_episode_with_miner_indicators_says_so(tmp_path):
    """The latest episode is dismissed by default: if a miner's episode opened since the one
    the responder meant, its indicators are named (the dismissal still stands, as asked)."""
    data = agent_folder(tmp_path)
    line = {
        "id": "h-1000003600",
        "host": "h",
        "start": 1e9 + 3600,
        "end": 1e9 + 4800,
        "indicators": [
            {"indicator_id": "stratum_url", "pid": 4242, "detail": "x"},
            {"indicator_id": "unexplained_cpu", "pid": None, "detail": "51"},
        ],
    }
    (data / "events.jsonl").write_text(json.dumps({**line, "event": "open"}) + "\n")  # fmt: skip
    r = mw("dismiss", "--data-dir", data, "--reason", "reindex")
    assert r.returncode == 0, r.stderr
    assert "dismissed episode h-1000003600" in r.stdout
    assert (
        "minerwatch: warning: episode h-1000003600 matched miner indicators "
        "(stratum_url (pid 4242)): dismissed as asked, but check "
        "'minerwatch report --episode h-1000003600'"
    ) in r.stderr, r.stderr
    again = mw("dismiss", "--data-dir", data, "--reason", "reindex")
    assert again.returncode == 0 and "already dismissed" in again.stdout
    plain = agent_folder(tmp_path / "plain")  # no indicator: no warning
    r = mw("dismiss", "--data-dir", plain)
    assert r.returncode == 0 and "matched miner indicators" not in r.stderr, r.stderr


def test_a_dismissal_teaches_a_new_tool_but_never_a_disguised_miner(tmp_path):
    """The training child on a history whose alerted episode was dismissed: the admin's new
    tool in it becomes known, the miner posing as a kernel thread from /tmp does not."""
    from minerwatch.baseline.store import load_model
    from minerwatch.features.procs import identity

    db = tmp_path / "history.db"
    series = host_series("h", days=3 / 24, interval=10.0, seed=3, start=1e9)
    t0 = float(series.timestamps[0])
    start, end = t0 + 3600.0, t0 + 4800.0
    tool = ("pigz", "/usr/bin/pigz", "root", 150.0)
    miner = ("kswapd0", "/tmp/.x/kswapd0", "nobody", 390.0)
    with History(db, retention_s=1e12) as h:
        for t, row in zip(series.timestamps, series.values, strict=True):
            h.add_sample(float(t), dict(zip(series.columns, row.tolist(), strict=True)))
            procs = [(100, "nginx", "/usr/sbin/nginx", "www-data", 20.0, 0.0)]
            if start <= t < end:
                procs += [(200, *tool, 0.0), (300, *miner, 0.0)]
            h.add_procs(float(t), procs)
        for t in np.arange(t0, t0 + 3 * 3600.0 - 60.0, 60.0):
            h.add_window(t, t + 60.0, 0.5, 0.7, bool(start <= t < end))
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(
            "INSERT INTO dismissed VALUES ('h-1', 'h', ?, ?, 1.0, 'me', 'backup', NULL)",
            (start, end),
        )
    conn.close()
    models = tmp_path / "models"
    done = subprocess.run(
        [sys.executable, "-m", "minerwatch.service.retrain", "--input", tmp_path / "in.npz",
         "--history", db, "--margin", "600", "--models", models, "--host", "h"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    model = load_model(models, "h")
    known = set(model.procs.identities)
    assert identity(*tool[:3]) in known, "the dismissed episode's tool was not learnt"
    assert identity(*miner[:3]) not in known, "a dismissal made a disguised miner normal"
    assert any("kswapd0" in f for f in model.meta["flagged_processes"])


def test_a_user_who_cannot_write_the_history_is_told_so(tmp_path):
    if os.geteuid() != 0:
        data = agent_folder(tmp_path)
        (data / "history.db").chmod(0o400)
        r = mw("dismiss", "--data-dir", data)
    else:  # root writes anything: run as nobody, in a folder nobody may read but not write
        outside = Path(tempfile.mkdtemp(prefix="mw-dismiss-"))
        try:
            outside.chmod(0o755)
            data = agent_folder(outside)
            data.chmod(0o755)
            (data / "events.jsonl").chmod(0o644)
            (data / "history.db").chmod(0o644)
            r = subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", MINERWATCH,
                 "dismiss", "--data-dir", str(data)],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
        finally:
            shutil.rmtree(outside)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert f"{data / 'history.db'}: expected write access to the agent's history" in r.stderr


def test_a_data_folder_the_user_cannot_enter_is_a_usage_error(tmp_path):
    """Not a traceback: the folder check of --data-dir itself fails with permission denied."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the command as another user")
    data = agent_folder(tmp_path)  # under pytest's 0700 folder: nobody cannot enter it
    r = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", MINERWATCH,
         "dismiss", "--data-dir", str(data)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert f"expected a folder this user can read, got '{data}'" in r.stderr
