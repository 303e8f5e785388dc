"""The agent in-process: real History (SQLite), real model store, real features.

A replaying collector feeds synthetic telemetry (tests/synth.py) on a fake clock, so an hour
of agent life takes a second: learning progress, snapshot fields, gaps, alert episodes and
their event log lines, what retraining is allowed to learn from and when it runs, and the
agent's own CPU kept out of the host's.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import psutil
import pytest
from synth import host_series

from minerwatch.baseline.batch import score_series
from minerwatch.baseline.calibrate import ALERT_MARGIN, HEAVY_WORK, SUSTAIN_WINDOWS
from minerwatch.baseline.exclude import exclusion_margin
from minerwatch.baseline.store import load_model, save_model
from minerwatch.baseline.train import train_host
from minerwatch.features.io import from_arrays
from minerwatch.features.schema import METRIC_COLUMNS
from minerwatch.service.agent import (
    EXCLUDE_MARGIN_S,
    RECOUNT_LEARNT_EVERY,
    Agent,
    OwnCpu,
    without_own,
)
from minerwatch.service.config import AgentConfig
from minerwatch.service.history import History

HOST = "test-host"
INTERVAL = 10.0
WINDOW = 60.0
#: Live replay starts on an hour boundary a few hours ago (history pruning uses real time).
NOW0 = math.floor(time.time() / 3600) * 3600 - 4 * 3600.0
CPU = METRIC_COLUMNS.index("cpu_percent")


class Replay:
    """A collector and clock replaying one synthetic series row by row."""

    def __init__(self, series, skip=()) -> None:
        self.ts = series.timestamps
        self.rows = series.values
        self.columns = series.columns
        self.i = 0
        self.errors = {"cpu": 0, "processes": 0}
        self._ok = {"cpu", "processes"}
        self.top_processes = ()
        self.fail_at: set[int] = set(skip)

    def clock(self) -> float:
        return float(self.ts[self.i])

    def sample(self) -> dict[str, float]:
        if self.i in self.fail_at:
            raise RuntimeError("simulated collector bug")
        return dict(zip(self.columns, self.rows[self.i].tolist(), strict=True))


@pytest.fixture(scope="module")
def trained_models(tmp_path_factory):
    """A model of this synthetic host trained on the day before the replay (one per module)."""
    models = tmp_path_factory.mktemp("models")
    day = host_series(HOST, days=1.0, interval=INTERVAL, seed=0, start=NOW0 - 86400.0)
    save_model(models, train_host(day, WINDOW, WINDOW, params={"alert_windows": 3}))
    return models


def make_agent(tmp_path, replay, models=None, **cfg):
    data = tmp_path / "data"
    if models is not None:
        shutil.copytree(models, data / "models")
    options = {"interval": INTERVAL, "window": WINDOW, "learn_for": 86400.0, **cfg}
    config = AgentConfig(data_dir=data, host=HOST, **options)
    return Agent(config, collector=replay, clock=replay.clock)


def run(agent, replay, start, stop):
    """Tick once per row in [start, stop)."""
    for i in range(start, stop):
        replay.i = i
        agent.tick()


def live(hours=1.5, seed=1, plateau=None):
    return host_series(
        HOST, days=hours / 24, interval=INTERVAL, seed=seed, start=NOW0, plateau=plateau
    )


def windows_table(agent):
    return agent.history.windows()


# -- learning ----------------------------------------------------------------------------------


def test_learning_progress_follows_stored_history(tmp_path):
    replay = Replay(live(hours=0.2))
    agent = make_agent(tmp_path, replay, learn_for=1200.0)
    try:
        assert agent.snapshot().learning_progress_ratio == 0.0
        run(agent, replay, 0, 7)  # samples at 0..60 s: a 60 s span of 1200 s
        snap = agent.snapshot()
        assert snap.learning is True
        assert snap.learning_progress_ratio == pytest.approx(0.05)
        assert snap.anomaly_score is None and snap.anomaly_threshold is None
        assert snap.samples_total == 7 and snap.windows_scored_total == 0
        assert not (agent.data_dir / "train-input.npz").exists()
        assert agent.child is None
    finally:
        agent.shutdown()


def test_a_learnt_history_is_not_recounted_at_every_sample(tmp_path):
    """Once the history covers the learning period, an agent still without a model (its
    training failing) does not read every stored timestamp again at each sample."""
    replay = Replay(live(hours=0.5))
    agent = make_agent(tmp_path, replay, learn_for=120.0)
    try:
        run(agent, replay, 0, 13)  # 120 s of history: learnt, the child training
        if agent.child is not None:
            agent.child.kill()
            agent.child.wait(timeout=60)
            agent.child = None
        agent.model = None
        reads = []
        counted = agent.history.covered_seconds
        agent.history.covered_seconds = lambda gap: reads.append(gap) or counted(gap)
        assert all(agent.learning_progress() == 1.0 for _ in range(50))
        first = len(reads)
        assert first <= 1  # counted when learning ended, or once now
        agent.counters["samples"] += RECOUNT_LEARNT_EVERY  # ten minutes of samples later
        assert agent.learning_progress() == 1.0 and len(reads) == first + 1
    finally:
        agent.shutdown()


def test_short_learning_lasts_what_was_asked_then_trains(tmp_path):
    replay = Replay(live(hours=0.5))
    agent = make_agent(tmp_path, replay, learn_for=120.0)  # the minimum: window + hop
    try:
        run(agent, replay, 0, 12)  # samples at 0..110 s
        assert agent.learning_progress() < 1.0 and agent.child is None
        run(agent, replay, 12, 13)  # 120 s of history: exactly learn_for
        assert agent.learning_progress() == 1.0
        assert agent.child is not None, "the agent did not train after learn_for"
        agent.child.wait(timeout=60)
        npz = agent.data_dir / "train-input.npz"  # the child's record of what it trained on
        assert stat.S_IMODE(npz.stat().st_mode) == 0o600
        with np.load(npz, allow_pickle=False) as f:
            assert len(f["timestamps"]) == 13
            assert set(METRIC_COLUMNS) <= {str(c) for c in f["columns"]}
        run(agent, replay, 13, 14)  # the next tick collects the child's answer
        assert agent.errors == {}
        snap = agent.snapshot()
        assert snap.learning is False and snap.learning_progress_ratio == 1.0
        assert snap.model_training_windows in (1, 2)
        assert agent.model is not None and agent.model.host == HOST
        # so few windows say nothing about the spread: this model cannot alert
        assert agent.model.threshold == 1.0
        run(agent, replay, 14, 30)
        assert agent.snapshot().anomaly_score is not None
        assert agent.snapshot().retrain_failures_total == dict.fromkeys(
            ("too_few_windows", "bad_input", "crashed", "rejected", "unloadable"), 0
        )
    finally:
        agent.shutdown()


def test_a_training_child_that_cannot_start_is_a_failed_retraining_not_the_end(tmp_path):
    """A train.log the agent cannot open (here a folder; a full disk, a missing interpreter)
    used to end ``serve`` with exit 2, which systemd does not restart: the agent now counts a
    failed retraining, goes on sampling and scoring, and tries again after its backoff."""
    replay = Replay(live(hours=0.5))
    agent = make_agent(tmp_path, replay, learn_for=120.0)
    (agent.data_dir / "train.log").mkdir()
    try:
        run(agent, replay, 0, 13)  # 120 s of history: time to train
        assert agent.child is None
        assert agent.retrain_failures["crashed"] == 1 and agent.errors == {"train": 1}
        retry = agent.next_retrain
        assert replay.clock() < retry < math.inf
        run(agent, replay, 13, 15)  # still sampling, no second attempt before the backoff
        assert agent.retrain_failures["crashed"] == 1
        assert agent.snapshot().samples_total == 15
        (agent.data_dir / "train.log").rmdir()
        stop = 15 + int((retry - replay.clock()) // INTERVAL) + 2
        run(agent, replay, 15, stop)
        assert agent.child is not None, "no second attempt after the backoff"
        agent.child.wait(timeout=60)
    finally:
        agent.shutdown()


def test_a_young_model_is_relearnt_as_the_history_doubles(tmp_path):
    replay = Replay(live(hours=1.0))
    agent = make_agent(tmp_path, replay, learn_for=120.0)
    trained = []
    try:
        for i in range(0, 200):
            replay.i = i
            agent.tick()
            if agent.child is not None:
                agent.child.wait(timeout=60)
                trained.append(i)
        windows = agent.snapshot().model_training_windows
    finally:
        agent.shutdown()
    # first at 120 s, then each time the history spans twice what the model learnt from
    assert trained[0] == 12 and len(trained) >= 4, trained
    gaps = np.diff(trained)
    assert np.all(gaps[1:] >= gaps[:-1]), f"retraining did not slow down: {trained}"
    assert windows is not None and windows >= 16


def test_retrain_every_zero_never_retrains(tmp_path, trained_models):
    replay = Replay(live(hours=1.0))
    agent = make_agent(tmp_path, replay, trained_models, retrain_every=0.0)
    try:
        assert agent.next_retrain == math.inf
        run(agent, replay, 0, 300)  # 50 minutes, 0.3 s of real time
        assert agent.child is None and not (agent.data_dir / "train.log").exists()
    finally:
        agent.shutdown()


def test_retrain_every_zero_still_learns_a_first_model_once(tmp_path):
    replay = Replay(live(hours=0.5))
    agent = make_agent(tmp_path, replay, learn_for=120.0, retrain_every=0.0)
    try:
        run(agent, replay, 0, 13)
        assert agent.child is not None
        agent.child.wait(timeout=60)
        run(agent, replay, 13, 150)
        assert agent.model is not None and agent.child is None
        assert agent.next_retrain == math.inf
    finally:
        agent.shutdown()


def test_gappy_history_fails_training_says_why_and_backs_off(tmp_path):
    replay = Replay(live(hours=0.5))
    agent = make_agent(tmp_path, replay, learn_for=120.0)
    try:
        run(agent, replay, 0, 2)
        run(agent, replay, 60, 62)  # a 610 s span, but only 80 s learnt (a gap counts a window)
        assert agent.child is None
        run(agent, replay, 120, 122)  # 150 s learnt, but no window half covered by samples
        assert agent.child is not None
        agent.child.wait(timeout=60)
        run(agent, replay, 122, 123)
        snap = agent.snapshot()
        assert snap.retrain_failures_total["too_few_windows"] == 1
        assert sum(snap.retrain_failures_total.values()) == 1
        assert snap.errors_total == {"train": 1}
        assert agent.model is None and snap.learning is True
        assert agent.next_retrain >= replay.clock() + 60.0
        run(agent, replay, 123, 126)
        assert agent.child is None, "retrained at once instead of backing off"
    finally:
        agent.shutdown()


# -- scoring and the snapshot ----------------------------------------------------------------


def test_snapshot_fields_while_scoring(tmp_path, trained_models):
    replay = Replay(live(hours=0.5))
    agent = make_agent(tmp_path, replay, trained_models)
    try:
        assert agent.snapshot().learning is False  # a stored model is used at once
        run(agent, replay, 0, 60)  # 10 minutes
        snap = agent.snapshot()
        model = load_model(agent.models_dir, HOST)
        assert 0.0 <= snap.anomaly_score <= 1.0
        assert snap.anomaly_threshold == model.threshold
        assert snap.model_version == model.meta["sha256"][:12]
        assert snap.model_training_windows == model.meta["windows"]
        assert snap.samples_total == 60
        assert 8 <= snap.windows_scored_total <= 10  # one per completed minute
        assert set(snap.feature_values) <= set(model.feature_names)
        assert any(name.startswith("cpu") for name in snap.feature_values)
        share = sum(snap.feature_contributions.values())
        assert share == pytest.approx(1.0) or share == 0.0
        assert set(snap.telemetry) == set(METRIC_COLUMNS)
        assert snap.telemetry["cpu_percent"] == pytest.approx(replay.rows[59, CPU])
        top = replay.rows[59, METRIC_COLUMNS.index("top_proc_cpu_percent")]
        assert snap.top_process_cpu_ratio == pytest.approx(min(1.0, top / (100 * os.cpu_count())))
        assert snap.last_sample_timestamp_seconds == replay.ts[59]
        assert snap.alert_active is False and snap.alerts_total == 0
        assert snap.errors_total == {}
        assert snap.source_up == {"cpu": True, "processes": True}
        scored = windows_table(agent)
        assert len(scored) == snap.windows_scored_total
        assert all(end - start == WINDOW and end <= replay.ts[59] for start, end, *_ in scored)
    finally:
        agent.shutdown()


def test_live_features_and_scores_equal_batch(tmp_path, trained_models):
    """The agent's windows, features and scores are what ``minerwatch score`` gives."""
    series = live(hours=0.5)
    replay = Replay(series)
    agent = make_agent(tmp_path, replay, trained_models)
    try:
        run(agent, replay, 0, 90)
        model = agent.model
        seen = from_arrays(HOST, series.timestamps[:90], series.values[:90], series.columns)
        batch = score_series(model, seen)
        live_windows = windows_table(agent)
        starts = batch.window_start.tolist()
        rows = [starts.index(start) for start, *_ in live_windows]
        np.testing.assert_allclose([w[2] for w in live_windows], batch.score[rows])
        last = [agent.last["features"][n] for n in model.feature_names[: model.n_base]]
        np.testing.assert_allclose(last, batch.features[rows[-1]])
    finally:
        agent.shutdown()


def test_collector_failure_is_counted_and_skips_the_sample(tmp_path, trained_models):
    replay = Replay(live(hours=0.2), skip={3})
    agent = make_agent(tmp_path, replay, trained_models)
    try:
        run(agent, replay, 0, 10)
        snap = agent.snapshot()
        assert snap.errors_total == {"sample": 1}
        assert snap.samples_total == 9
        assert agent.history.count() == 9
    finally:
        agent.shutdown()


def test_a_gap_gives_no_windows_and_scoring_resumes(tmp_path, trained_models):
    replay = Replay(live(hours=1.0))
    agent = make_agent(tmp_path, replay, trained_models)
    try:
        run(agent, replay, 0, 60)  # 10 min, then the host is away for 20 min
        before = agent.snapshot().windows_scored_total
        run(agent, replay, 180, 240)
        windows = windows_table(agent)
        gap = (replay.ts[60], replay.ts[180])
        inside = [w for w in windows if w[1] > gap[0] + WINDOW and w[0] < gap[1] - WINDOW]
        assert inside == [], "windows were scored where there was no data"
        after = agent.snapshot().windows_scored_total
        assert 8 <= after - before <= 11
        assert windows[-1][1] > gap[1]
    finally:
        agent.shutdown()


# -- alert episodes ----------------------------------------------------------------------------


BURN = (30 * 60.0, 10 * 60.0)  # minutes 30-40 of the replay: a miner at 97 % CPU


def read_events(agent):
    return [json.loads(line) for line in agent.cfg.event_log.read_text().splitlines()]


def burn_until_alerted(tmp_path, trained_models, responder=None):
    replay = Replay(live(hours=1.0, plateau=BURN))
    agent = make_agent(tmp_path, replay, trained_models)
    agent.responder = responder
    run(agent, replay, 0, 180)  # 30 min of normal load
    assert agent.snapshot().alerts_total == 0, "false alarm before the burn"
    for i in range(180, 240):
        run(agent, replay, i, i + 1)
        if agent.snapshot().alert_active:
            return replay, agent, i + 1
    pytest.fail("the burn did not alert")


def test_an_alert_is_said_when_it_opens(tmp_path, trained_models, caplog):
    caplog.set_level(logging.WARNING, logger="minerwatch.agent")
    replay, agent, _ = burn_until_alerted(tmp_path, trained_models)
    try:
        (event,) = read_events(agent)  # written at once, not when the episode ends
        assert stat.S_IMODE(agent.cfg.event_log.stat().st_mode) == 0o600
        assert event["event"] == "open" and event["host"] == HOST
        assert event["id"] == f"{HOST}-{int(event['start'])}"
        assert event["score"] > event["threshold"] == agent.model.threshold
        assert event["top_features"] and event["time"] == replay.clock()
        (line,) = [r for r in caplog.records if "alert opened" in r.getMessage()]
        assert line.levelno == logging.WARNING
        text = line.getMessage()
        assert HOST in text and f"score {event['score']:.4f}" in text
        assert f"threshold {event['threshold']:.4f}" in text
        assert event["top_features"][0]["feature"] in text
        assert "busiest process: none found" in text and "evidence: not written" in text
    finally:
        agent.shutdown()


def test_alert_episode_opens_and_closes_with_one_line_each(tmp_path, trained_models):
    replay, agent, at = burn_until_alerted(tmp_path, trained_models)
    try:
        run(agent, replay, at, 360)  # the burn ends at 240: 20 min normal again
        assert agent.snapshot().alert_active is False
        opened, closed = read_events(agent)
        assert (opened["event"], closed["event"], closed["reason"]) == ("open", "close", "cleared")
        assert opened["id"] == closed["id"] and opened["start"] == closed["start"]
        burn = (NOW0 + BURN[0], NOW0 + BURN[0] + BURN[1])
        assert burn[0] + 2 * WINDOW <= closed["start"] < closed["end"] <= burn[1] + 600
        assert closed["host"] == HOST
        assert closed["score"] >= opened["score"] > agent.model.threshold
        assert closed["top_features"], "no explanation in the event"
        names = [f["feature"] for f in closed["top_features"]]
        assert any(n.startswith(("cpu", "top_proc")) for n in names), names
        for f in closed["top_features"]:
            assert set(f) == {"feature", "value", "typical_low", "typical_high", "contribution"}
        alerted = [w for w in windows_table(agent) if w[4]]
        assert alerted[0][0] == closed["start"] and alerted[-1][1] == closed["end"]
    finally:
        agent.shutdown()


def test_shutdown_during_an_episode_closes_it(tmp_path, trained_models):
    _, agent, _ = burn_until_alerted(tmp_path, trained_models)
    agent.shutdown()
    opened, closed = read_events(agent)
    assert opened["event"] == "open"
    assert closed["event"] == "close" and closed["reason"] == "shutdown"
    assert closed["start"] < closed["end"] and closed["score"] > 0
    assert stat.S_IMODE(agent.cfg.event_log.stat().st_mode) == 0o600


EVIDENCE = "/tmp/20261203T000000Z-test-host-1.json"


class NamingResponder:
    """Names whatever ``suspects`` says is busiest, like the real responder, without /proc."""

    def __init__(self):
        self.suspect = None
        self.closed = False

    def inspect(self, agent, metrics):
        return 0.0

    def after_tick(self, agent, now, metrics):
        pass

    def on_alert(self, agent, episode, f):
        episode["process"] = self.suspect
        episode["evidence"] = EVIDENCE

    def on_episode_window(self, agent, episode, f):
        if self.suspect is not None and episode.get("process") != self.suspect:
            episode["process"] = self.suspect
            return ["process"]
        return []

    def snapshot_fields(self):
        return {}

    def close(self):
        self.closed = True


def test_a_stronger_suspect_during_an_episode_is_written_at_once(tmp_path, trained_models, caplog):
    caplog.set_level(logging.WARNING, logger="minerwatch.agent")
    responder = NamingResponder()
    responder.suspect = {"pid": 10, "name": "nginx", "cpu_percent": 20.0}
    replay, agent, at = burn_until_alerted(tmp_path, trained_models, responder)
    try:
        run(agent, replay, at, at + 6)  # one more window: nothing new
        assert [e["event"] for e in read_events(agent)] == ["open"]
        responder.suspect = {"pid": 66, "name": 'x\nmrig "evil"', "cpu_percent": 390.0}
        run(agent, replay, at + 6, at + 12)
        opened, updated = read_events(agent)
        assert updated["event"] == "update" and updated["changed"] == ["process"]
        assert opened["process"]["pid"] == 10 and updated["process"]["pid"] == 66
        assert updated["id"] == opened["id"] and updated["evidence"] == EVIDENCE
        (line,) = [r for r in caplog.records if "alert on" in r.getMessage()]
        assert "\n" not in line.getMessage(), "a process name forged a log line"
        assert 'pid 66 "x\\nmrig \\"evil\\""' in line.getMessage()
    finally:
        agent.shutdown()
    assert [e["event"] for e in read_events(agent)][-1] == "close" and responder.closed


def test_retraining_input_leaves_out_alerted_time(tmp_path, trained_models):
    # Two hours of stored history before the replay, as after a restart.
    pre = host_series(HOST, days=2 / 24, interval=INTERVAL, seed=2, start=NOW0 - 7200.0)
    with History((tmp_path / "data").joinpath("history.db")) as h:
        (tmp_path / "data").chmod(0o700)
        for t, row in zip(pre.timestamps, pre.values, strict=True):
            h.add_sample(float(t), dict(zip(pre.columns, row.tolist(), strict=True)))
    replay, agent, at = burn_until_alerted(tmp_path, trained_models)
    try:
        run(agent, replay, at, 359)
        assert not agent.snapshot().alert_active
        alerted = [(w[0], w[1]) for w in windows_table(agent) if w[4]]
        agent.next_retrain = 0.0  # retraining due now
        run(agent, replay, 359, 360)
        assert agent.child is not None
        agent.child.wait(timeout=60)
        with np.load(agent.data_dir / "train-input.npz", allow_pickle=False) as f:
            kept = f["timestamps"]
            cpu = f["values"][:, CPU]
        # three hours of history: a tenth of it on each side, not a whole hour
        margin = exclusion_margin(agent.history.span_seconds(), WINDOW, 3)
        assert 1000 < margin < EXCLUDE_MARGIN_S
        lo = min(s for s, _ in alerted) - margin
        hi = max(e for _, e in alerted) + margin
        assert len(kept) > 0
        assert not np.any((kept >= lo) & (kept <= hi)), "alerted time went into training"
        assert cpu.max() < 90, "burn samples went into training"
        everything, _ = agent.history.samples()
        assert len(kept) == np.sum((everything < lo) | (everything > hi))
    finally:
        agent.shutdown()
        if agent.child is not None:
            agent.child.wait(timeout=30)


def test_retraining_during_an_open_episode_stops_before_it(tmp_path, trained_models):
    replay, agent, at = burn_until_alerted(tmp_path, trained_models)
    try:
        start = agent.episode["start"]
        agent.next_retrain = 0.0
        run(agent, replay, at, at + 1)
        agent.child.wait(timeout=60)
        with np.load(agent.data_dir / "train-input.npz", allow_pickle=False) as f:
            kept = f["timestamps"]
        assert len(kept) > 0
        assert np.all(kept < start - exclusion_margin(agent.history.span_seconds(), WINDOW, 3))
    finally:
        agent.shutdown()
        if agent.child is not None:
            try:
                agent.child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                agent.child.kill()


def test_one_alert_does_not_freeze_a_young_baseline(tmp_path, trained_models):
    """50 minutes of history and one alert: a fixed hour around it left nothing to learn."""
    replay, agent, at = burn_until_alerted(tmp_path, trained_models)
    try:
        run(agent, replay, at, 300)
        assert not agent.snapshot().alert_active
        alerted = [(w[0], w[1]) for w in windows_table(agent) if w[4]]
        everything, _ = agent.history.samples()
        hour = (everything > min(s for s, _ in alerted) - EXCLUDE_MARGIN_S) & (
            everything < max(e for _, e in alerted) + EXCLUDE_MARGIN_S
        )
        assert hour.all(), "the old fixed margin would not have emptied this history"
        agent.next_retrain = 0.0
        run(agent, replay, 300, 301)
        agent.child.wait(timeout=60)
        run(agent, replay, 301, 302)
        snap = agent.snapshot()
        assert sum(snap.retrain_failures_total.values()) == 0, snap.retrain_failures_total
        assert snap.model_training_windows is not None and snap.model_training_windows >= 10
        with np.load(agent.data_dir / "train-input.npz", allow_pickle=False) as f:
            assert f["values"][:, CPU].max() < 90, "burn samples went into training"
    finally:
        agent.shutdown()


# -- the agent's own work ----------------------------------------------------------------------


def test_without_own_takes_the_agent_out_of_the_host():
    me = SimpleNamespace(pid=1, cpu_percent=90.0)
    other = SimpleNamespace(pid=2, cpu_percent=30.0)
    metrics = {
        "cpu_percent": 60.0,
        "cpu_user_percent": 50.0,
        "cpu_system_percent": 10.0,
        "top_proc_cpu_percent": 90.0,
        "net_rx_pps": 5.0,
    }
    out = without_own(metrics, (40.0, 5.0), (me, other), {1})
    assert out == {
        "cpu_percent": 15.0,
        "cpu_user_percent": 10.0,
        "cpu_system_percent": 5.0,
        "top_proc_cpu_percent": 30.0,
        "net_rx_pps": 5.0,
    }
    assert without_own(metrics, (80.0, 0.0), (other, me), {1})["cpu_percent"] == 0.0
    assert without_own(metrics, (0.0, 0.0), (other, me), {1})["top_proc_cpu_percent"] == 90.0
    assert without_own(metrics, (0.0, 0.0), (me,), {1})["top_proc_cpu_percent"] == 0.0


def test_own_cpu_is_measured_over_each_interval():
    now, used = [0.0], [(0.0, 0.0)]
    own = OwnCpu(read=lambda children: used[0], clock=lambda: now[0], ncpu=4)
    assert own.interval_percent() == (0.0, 0.0)  # primes
    now[0], used[0] = 10.0, (2.0, 0.4)  # 2.4 CPU seconds in 10 s on 4 cores
    assert own.interval_percent() == pytest.approx((5.0, 1.0))
    now[0] = 20.0  # no CPU used since
    assert own.interval_percent() == (0.0, 0.0)


def test_the_training_child_is_not_the_host(tmp_path):
    """A child of the agent burning a core is left out of host CPU and is never a suspect."""
    cfg = AgentConfig(
        data_dir=tmp_path / "data", host=HOST, interval=1.0, window=3.0, learn_for=3600.0
    )
    agent = Agent(cfg)  # the real collector of this host, and OwnCpu with it
    raw: list[dict[str, float]] = []
    sample = agent.collector.sample
    agent.collector.sample = lambda: raw.append(sample()) or raw[-1]  # what /proc/stat said
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        agent.child = burner  # what the agent does with its training child
        used = psutil.Process(burner.pid)
        before, t0 = sum(used.cpu_times()[:2]), time.monotonic()
        agent.tick()
        time.sleep(2.0)
        agent.tick()
        after, t1 = sum(used.cpu_times()[:2]), time.monotonic()
        stored = agent.last["metrics"]
        raw_top = agent.collector.top_processes
        assert any(p.pid == burner.pid for p in raw_top), "the burner was not seen at all"
        assert burner.pid not in {p.pid for p in agent.suspects()}
        if raw_top and raw_top[0].pid == burner.pid:
            # the busiest that is not ours (this test process runs the agent: ours too)
            others = [p.cpu_percent for p in raw_top if p.pid not in agent.own_pids()]
            assert stored["top_proc_cpu_percent"] == (others[0] if others else 0.0)
        # the host's own CPU is what /proc/stat said minus what the burner (and we) used
        share = 100.0 / (os.cpu_count() or 1)
        _, values = agent.history.samples()
        assert values[-1, METRIC_COLUMNS.index("cpu_percent")] == pytest.approx(
            stored["cpu_percent"]
        )
        # what the burner used was taken out of what /proc/stat said (measured, as on a
        # shared machine it gets what other work leaves it; half of it at least, as the
        # agent's interval is a little shorter than the one measured here)
        burned = 100.0 * (after - before) / (t1 - t0) / (os.cpu_count() or 1)
        assert burned >= 0.2 * share, f"the burner got {burned:.0f} % of the host: no test"
        assert stored["cpu_percent"] <= raw[-1]["cpu_percent"] - 0.5 * burned
    finally:
        burner.kill()
        burner.wait()
        agent.child = None
        agent.shutdown()


def test_the_agent_carries_per_process_floors_from_sample_to_sample(tmp_path):
    """The agent scores one sample at a time, so it keeps each process's 15-minute floor
    across ticks: its process columns equal batch scoring's of the same table, and after a
    restart the floors are unknown (neutral) until it has watched the window again."""
    from test_procbase import with_table

    from minerwatch.baseline.procbase import SUSTAIN_S
    from minerwatch.features.procs import PROC_COLUMNS
    from minerwatch.features.proctable import ProcessRecord
    from minerwatch.service.agent import ROW_COLUMNS

    models = tmp_path / "models"
    day = host_series(HOST, days=1.0, interval=INTERVAL, seed=0, start=NOW0 - 86400.0)
    model = train_host(with_table(day), WINDOW, WINDOW, params={"alert_windows": 3})
    save_model(models, model)
    pigz = ("pigz", "/usr/bin/pigz", "root", 150.0)  # a tool this host never ran
    series = with_table(live(hours=0.5), extra=pigz)
    table = series.procs
    replay = Replay(series)
    agent = make_agent(tmp_path, replay, models)
    assert agent.model is not None and agent.model.procs is not None

    def records(i: int) -> tuple[ProcessRecord, ...]:
        rows = table.between(series.timestamps[i], series.timestamps[i] + 1e-3)
        return tuple(
            ProcessRecord(int(p), 1, str(n), str(e), str(u), NOW0 - 3600.0, float(c))
            for p, n, e, u, c in zip(
                rows.pids, rows.names, rows.exes, rows.users, rows.cpu, strict=True
            )
        )

    cols = [ROW_COLUMNS.index(c) for c in PROC_COLUMNS]
    seen = []
    for i in range(len(series.timestamps)):
        replay.i = i
        replay.top_processes = records(i)
        agent.tick()
        seen.append(agent.recent[-1][1][cols])
    batch = agent.model.procs.columns(table, series.timestamps)
    np.testing.assert_allclose(np.array(seen), batch, equal_nan=True)
    t = series.timestamps - series.timestamps[0]
    tool = PROC_COLUMNS.index("proc_new_tool_cpu_percent")
    held = PROC_COLUMNS.index("proc_sustained_cpu_percent")
    assert np.all(batch[t < SUSTAIN_S, tool] == 0) and np.all(batch[t >= SUSTAIN_S, tool] == 150)
    assert np.isnan(batch[t < SUSTAIN_S, held]).all() and (batch[t >= SUSTAIN_S, held] > 150).all()
    # restarted: what it carried is gone, so the floors are unknown again, not zero
    again = make_agent(tmp_path, replay)  # the same data folder, its model in it
    assert again.model is not None and again.model.procs is not None
    replay.top_processes = records(replay.i)
    again.tick()
    assert np.isnan(again.recent[-1][1][cols][held]) and again.recent[-1][1][cols][tool] == 0


def test_an_episode_during_heavy_work_says_so(tmp_path, trained_models, caplog):
    """A burn while the disk reads and writes far beyond training (an index rebuild looks like
    this, a miner does not) still alerts on strong evidence; the episode's events, its log
    line and 'minerwatch report' say how many of its windows were heavy work, and which
    evidence made them so."""
    caplog.set_level(logging.WARNING, logger="minerwatch.agent")
    series = live(hours=1.0, plateau=BURN)
    t = series.timestamps - NOW0
    v = series.values.copy()
    during = (t >= BURN[0]) & (t < BURN[0] + BURN[1])
    for col in ("disk_read_bps", "disk_write_bps"):
        v[during, METRIC_COLUMNS.index(col)] += 400e6
    replay = Replay(from_arrays(HOST, series.timestamps, v, series.columns))
    # this host's model, trained without process tables, has the older rule (no sustain, no
    # heavy work); the agent's own models, with process rows, have the rule below
    rule = {"sustain_windows": SUSTAIN_WINDOWS, "alert_margin": ALERT_MARGIN}
    models = tmp_path / "models"
    save_model(models, replace(load_model(trained_models, HOST), heavy_work=HEAVY_WORK, **rule))
    agent = make_agent(tmp_path, replay, models)
    try:
        run(agent, replay, 0, 360)
        assert agent.snapshot().alert_active is False
        alerted = [w for w in windows_table(agent) if w[4]]
    finally:
        agent.shutdown()
    opened, closed = read_events(agent)[:2]
    assert closed["event"] == "close"
    assert opened["windows"] == 1 and closed["windows"] == len(alerted)
    assert 1 <= closed["heavy_windows"] <= closed["windows"]
    (heaviest, *_) = closed["heavy_work"]
    assert heaviest["feature"].startswith("disk_") and heaviest["spreads"] >= agent.model.heavy_work
    text = next(r.getMessage() for r in caplog.records if "alert closed" in r.getMessage())
    assert f"heavy work in {closed['heavy_windows']} of {closed['windows']} windows" in text
    assert heaviest["feature"] in text
    r = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "minerwatch"), "report",
         "--data-dir", str(agent.cfg.data_dir), "--format", "json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["episode"]["heavy_windows"] == closed["heavy_windows"]
    (note,) = [n for n in doc["notes"] if n.startswith("work: heavy work in")]
    assert heaviest["feature"] in note and "a miner's CPU brings no I/O" in note


def test_an_episode_without_heavy_work_says_none(tmp_path, trained_models, caplog):
    caplog.set_level(logging.WARNING, logger="minerwatch.agent")
    replay, agent, at = burn_until_alerted(tmp_path, trained_models)
    try:
        run(agent, replay, at, 360)
        alerted = [w for w in windows_table(agent) if w[4]]
    finally:
        agent.shutdown()
    closed = read_events(agent)[1]
    assert closed["heavy_windows"] == 0 and "heavy_work" not in closed
    assert closed["windows"] == len(alerted)
    text = next(r.getMessage() for r in caplog.records if "alert closed" in r.getMessage())
    assert "no heavy work" in text
