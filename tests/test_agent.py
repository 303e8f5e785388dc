"""The agent in-process: real History (SQLite), real model store, real features.

A replaying collector feeds synthetic telemetry (tests/synth.py) on a fake clock, so an hour
of agent life takes a second: learning progress, snapshot fields, gaps, alert episodes and
their event log line, and what retraining is allowed to learn from.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import subprocess
import time

import numpy as np
import pytest
from synth import host_series

from minerwatch.baseline.batch import score_series
from minerwatch.baseline.store import load_model, save_model
from minerwatch.baseline.train import train_host
from minerwatch.features.io import from_arrays
from minerwatch.features.schema import METRIC_COLUMNS
from minerwatch.service.agent import EXCLUDE_MARGIN_S, Agent
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


def test_short_learning_waits_for_enough_windows_then_trains(tmp_path):
    replay = Replay(live(hours=0.5))
    agent = make_agent(tmp_path, replay, learn_for=120.0)  # two windows: too few to train
    try:
        run(agent, replay, 0, 13)
        assert agent.learning_progress() < 1.0 and agent.child is None
        run(agent, replay, 13, 61)  # 600 s: MIN_AGENT_WINDOWS + 2 windows of 60 s
        assert agent.learning_progress() == 1.0
        assert agent.child is not None, "the agent did not start the training child"
        agent.child.wait(timeout=60)
        npz = agent.data_dir / "train-input.npz"  # the child's record of what it trained on
        assert stat.S_IMODE(npz.stat().st_mode) == 0o600
        with np.load(npz, allow_pickle=False) as f:
            assert len(f["timestamps"]) == 61
            assert set(METRIC_COLUMNS) <= {str(c) for c in f["columns"]}
        run(agent, replay, 61, 62)  # the next tick collects the child's answer
        assert agent.errors == {}
        snap = agent.snapshot()
        assert snap.learning is False and snap.learning_progress_ratio == 1.0
        assert snap.model_training_windows is not None and snap.model_training_windows >= 8
        assert agent.model is not None and agent.model.host == HOST
        run(agent, replay, 62, 70)
        assert agent.snapshot().anomaly_score is not None
    finally:
        agent.shutdown()


def test_gappy_history_fails_training_and_backs_off(tmp_path):
    replay = Replay(live(hours=0.5))
    agent = make_agent(tmp_path, replay, learn_for=120.0)
    try:
        run(agent, replay, 0, 6)
        run(agent, replay, 60, 62)  # a 600 s span but only two windows' worth of samples
        assert agent.child is not None
        agent.child.wait(timeout=60)
        run(agent, replay, 62, 63)
        assert agent.errors.get("train") == 1
        assert agent.snapshot().errors_total == {"train": 1}
        assert agent.model is None and agent.snapshot().learning is True
        assert agent.next_retrain >= replay.clock() + 60.0
        run(agent, replay, 63, 66)
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


def burn_until_cleared(tmp_path, trained_models):
    replay = Replay(live(hours=1.0, plateau=BURN))
    agent = make_agent(tmp_path, replay, trained_models)
    run(agent, replay, 0, 180)  # 30 min of normal load
    assert agent.snapshot().alerts_total == 0, "false alarm before the burn"
    run(agent, replay, 180, 240)
    snap = agent.snapshot()
    assert snap.alert_active and snap.alerts_total == 1
    assert snap.anomaly_score > snap.anomaly_threshold
    assert not agent.cfg.event_log.exists(), "the episode was logged before it ended"
    return replay, agent


def read_events(agent):
    return [json.loads(line) for line in agent.cfg.event_log.read_text().splitlines()]


def test_alert_episode_ends_with_one_event_line(tmp_path, trained_models):
    replay, agent = burn_until_cleared(tmp_path, trained_models)
    try:
        run(agent, replay, 240, 360)  # 20 min normal again (5 min means need to cool down)
        assert agent.snapshot().alert_active is False
        (event,) = read_events(agent)
        assert stat.S_IMODE(agent.cfg.event_log.stat().st_mode) == 0o600
        burn = (NOW0 + BURN[0], NOW0 + BURN[0] + BURN[1])
        assert burn[0] + 2 * WINDOW <= event["start"] < event["end"] <= burn[1] + 600
        assert event["host"] == HOST
        assert event["score"] > agent.model.threshold
        assert event["top_features"], "no explanation in the event"
        names = [f["feature"] for f in event["top_features"]]
        assert any(n.startswith(("cpu", "top_proc")) for n in names), names
        for f in event["top_features"]:
            assert set(f) == {"feature", "value", "typical_low", "typical_high", "contribution"}
        alerted = [w for w in windows_table(agent) if w[4]]
        assert alerted[0][0] == event["start"] and alerted[-1][1] == event["end"]
    finally:
        agent.shutdown()


def test_shutdown_during_an_episode_writes_the_event(tmp_path, trained_models):
    _, agent = burn_until_cleared(tmp_path, trained_models)
    agent.shutdown()
    (event,) = read_events(agent)
    assert event["start"] < event["end"] and event["score"] > 0
    assert stat.S_IMODE(agent.cfg.event_log.stat().st_mode) == 0o600


def test_retraining_input_leaves_out_alerted_time(tmp_path, trained_models):
    # Two hours of stored history before the replay, as after a restart.
    pre = host_series(HOST, days=2 / 24, interval=INTERVAL, seed=2, start=NOW0 - 7200.0)
    with History((tmp_path / "data").joinpath("history.db")) as h:
        (tmp_path / "data").chmod(0o700)
        for t, row in zip(pre.timestamps, pre.values, strict=True):
            h.add_sample(float(t), dict(zip(pre.columns, row.tolist(), strict=True)))
    replay, agent = burn_until_cleared(tmp_path, trained_models)
    try:
        run(agent, replay, 240, 359)
        assert not agent.snapshot().alert_active
        alerted = [(w[0], w[1]) for w in windows_table(agent) if w[4]]
        agent.next_retrain = 0.0  # retraining due now
        run(agent, replay, 359, 360)
        assert agent.child is not None
        agent.child.wait(timeout=60)
        with np.load(agent.data_dir / "train-input.npz", allow_pickle=False) as f:
            kept = f["timestamps"]
            cpu = f["values"][:, CPU]
        lo = min(s for s, _ in alerted) - EXCLUDE_MARGIN_S
        hi = max(e for _, e in alerted) + EXCLUDE_MARGIN_S
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
    replay, agent = burn_until_cleared(tmp_path, trained_models)
    try:
        start = agent.episode["start"]
        agent.next_retrain = 0.0
        run(agent, replay, 240, 241)
        agent.child.wait(timeout=60)
        with np.load(agent.data_dir / "train-input.npz", allow_pickle=False) as f:
            kept = f["timestamps"]
        assert np.all(kept < start - EXCLUDE_MARGIN_S)
    finally:
        agent.shutdown()
        if agent.child is not None:
            try:
                agent.child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                agent.child.kill()
