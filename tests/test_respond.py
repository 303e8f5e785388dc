"""The responder during an alert episode: who is named, and when the evidence is rewritten.

A real :class:`Responder` (knowledge base, evidence writer on a temporary folder, throttle
off) with a stand-in agent whose busiest processes the test chooses: the suspect named at
open, replaced only by a clearly stronger one, new indicators added, the same evidence file
rewritten in place.
"""

from __future__ import annotations

import json
import os
import stat
import time
from types import SimpleNamespace

import pytest
from synth import host_series

from minerwatch.baseline.train import train_host
from minerwatch.features.proctable import ProcessRecord
from minerwatch.service.config import AgentConfig
from minerwatch.service.indicators import IndicatorHit
from minerwatch.service.respond import Responder


@pytest.fixture(scope="module")
def model():
    return train_host(host_series("resp", days=0.5, seed=3), params={"n_estimators": 20})


def proc(pid: int, name: str, cpu: float) -> ProcessRecord:
    return ProcessRecord(pid, 1, name, f"/usr/bin/{name}", "root", time.time() - 60, cpu)


def stand_in(tmp_path, model, top):
    cfg = AgentConfig(data_dir=tmp_path / "data", host="resp")
    agent = SimpleNamespace(
        cfg=cfg, model=model, errors={}, clock=time.time, top=top, suspects=lambda: agent.top
    )
    return agent


def episode_for(model):
    f = model.center[: model.n_base].copy()
    return {
        "id": "resp-1000",
        "start": 1000.0,
        "end": 1060.0,
        "score": 0.99,
        "top_features": model.explain(f),
    }, f


def evidence(episode):
    path = episode["evidence"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    return json.loads(open(path).read())


def test_the_suspect_is_named_at_open_and_replaced_by_a_stronger_one(tmp_path, model):
    agent = stand_in(tmp_path, model, (proc(100, "nginx", 40.0), proc(101, "cron", 1.0)))
    responder = Responder(agent.cfg)
    episode, f = episode_for(model)
    try:
        responder.on_alert(agent, episode, f)
        assert episode["process"]["pid"] == 100 and episode["indicators"] == []
        first = evidence(episode)
        assert [p["pid"] for p in first["processes"]] == [100, 101]
        # the same suspect, or another one barely busier: nothing changes, nothing rewritten
        assert responder.on_episode_window(agent, episode, f) == []
        agent.top = (proc(102, "php-fpm", 50.0), proc(100, "nginx", 40.0))
        assert responder.on_episode_window(agent, episode, f) == []
        # a miner started during the episode: named, and the same file says so
        agent.top = (proc(4242, "kworkerds", 390.0), proc(100, "nginx", 40.0))
        assert responder.on_episode_window(agent, episode, f) == ["process"]
        assert episode["process"]["pid"] == 4242
        assert episode["earlier_processes"][0]["pid"] == 100
        second = evidence(episode)
        assert [p["pid"] for p in second["processes"]] == [4242, 100]
        assert second["written_at"] >= first["written_at"]
        assert len(list((tmp_path / "data" / "evidence").glob("*.json"))) == 1
    finally:
        responder.close()


def test_a_new_indicator_is_added_and_outranks_cpu(tmp_path, model):
    agent = stand_in(tmp_path, model, (proc(100, "nginx", 300.0), proc(7, "xmrig", 20.0)))
    responder = Responder(agent.cfg)
    episode, f = episode_for(model)
    try:
        responder.on_alert(agent, episode, f)
        assert episode["process"]["pid"] == 100
        responder.hits = [IndicatorHit("miner_name", "name", 7, "xmrig")]
        assert responder.on_episode_window(agent, episode, f) == ["indicators", "process"]
        assert episode["process"]["pid"] == 7, "a process with a miner indicator is stronger"
        assert [h["indicator_id"] for h in episode["indicators"]] == ["miner_name"]
        assert evidence(episode)["indicators"][0]["pid"] == 7
        assert responder.on_episode_window(agent, episode, f) == [], "the same hit twice"
    finally:
        responder.close()
