"""The real ``minerwatch serve`` restarted on a data folder an older version or an older
configuration wrote: a model it cannot use (another format, windows shorter than the new
``--interval``) is said in one log line and relearnt at once from the stored history (not
after another learning period, and not a crash), and a model of other windows than the
``--window`` now asked for is replaced at once by one of those windows.

Each case copies a model ``minerwatch train`` made of 20 minutes of a quiet host (3 s
windows, so its next retraining would be 20 minutes away) beside a history of the last
minute, then starts the agent and reads its log, its /metrics and its model folder.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from promtools import free_port
from synth import quiet_host, write_csv

from minerwatch.baseline.store import sign
from minerwatch.features.schema import METRIC_COLUMNS
from minerwatch.service.history import History

MINERWATCH = str(Path(sys.executable).with_name("minerwatch"))
HOST = "upgrade-host"


@pytest.fixture(scope="module")
def old_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model of 3 s windows trained on 20 minutes of a quiet host, by ``minerwatch train``."""
    work = tmp_path_factory.mktemp("old")
    write_csv(work / "quiet.csv", [quiet_host(HOST, time.time() - 1500, 1200, 1.0, seed=5)])
    subprocess.run(
        [MINERWATCH, "train", str(work / "quiet.csv"), "--models", str(work / "models"),
         "--window", "3s", "--hop", "3s"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return work / "models"


def data_folder(tmp_path: Path, models: Path) -> Path:
    """The old model beside a history of the last minute (0.5 s samples)."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    shutil.copytree(models, data / "models")
    recent = quiet_host(HOST, time.time() - 60, 60, 0.5, seed=6)
    with History(data / "history.db", interval_s=0.5) as h:
        for t, row in zip(recent.timestamps, recent.values, strict=True):
            h.add_sample(float(t), dict(zip(METRIC_COLUMNS, row.tolist(), strict=True)))
    return data


def stored_samples(data: Path) -> int:
    conn = sqlite3.connect(f"file:{data / 'history.db'}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
    finally:
        conn.close()


def meta(data: Path) -> dict[str, object]:
    doc: dict[str, object] = json.loads((data / "models" / HOST / "meta.json").read_text())
    return doc


class Agent:
    def __init__(self, data: Path, log: Path, *options: str) -> None:
        self.data, self.log, self.port = data, log, free_port()
        cmd = [
            MINERWATCH, "serve", "--data-dir", str(data), "--host", HOST, "--port", str(self.port),
            "--address", "127.0.0.1", "--log-level", "INFO", *options,
        ]  # fmt: skip
        with log.open("ab") as fh:
            self.proc = subprocess.Popen(
                cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def metrics(self) -> dict[str, str]:
        """minerwatch_* lines of one scrape, by name with labels; empty if not answering."""
        try:
            url = f"http://127.0.0.1:{self.port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as r:
                text = r.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return {}
        pairs = (
            line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("minerwatch_")
        )
        return dict(pairs)

    def wait_for(self, what: str, pred: object, timeout: float = 25.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"agent exited {self.proc.returncode}:\n{self.tail()}"
            m = self.metrics()
            if m and pred(m):  # type: ignore[operator]
                return m
            time.sleep(0.2)
        pytest.fail(f"agent: {what} not reached in {timeout:.0f} s\n{self.tail()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    started: list[Agent] = []
    yield started
    for a in started:
        if a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait(timeout=10)


def version(m: dict[str, str]) -> str | None:
    found = [
        re.search(r'model_version="(\w*)"', k) for k in m if k.startswith("minerwatch_model_info")
    ]
    return found[0].group(1) if found and found[0] else None


def old_format(data: Path) -> None:
    """The model as a version from before whole-model signing wrote it."""
    path = data / "models" / HOST / "meta.json"
    doc = json.loads(path.read_text())
    doc["format_version"] = 1
    del doc["signature"]
    path.write_text(json.dumps(doc))


def resigned_features(data: Path) -> None:
    """The model of a version with another feature set (validly signed)."""
    path = data / "models" / HOST / "meta.json"
    doc = json.loads(path.read_text())
    doc["feature_names"] = [*doc["feature_names"][:-1], "a_feature_of_another_version"]
    doc.pop("signature")
    doc["signature"] = sign(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("change", "options", "why"),
    [
        (old_format, ("--interval", "0.5s", "--window", "3s"), "format 1, unsigned"),
        (resigned_features, ("--interval", "0.5s", "--window", "3s"), "features"),
        # --interval raised above the old model's windows: it could not score a window (the
        # agent exited 2 at its first sample, and a service manager restarted it in a loop)
        (None, ("--interval", "4s", "--window", "4s"), "windows at least --interval (4s)"),
    ],
    ids=["older-format", "other-features", "interval-above-its-windows"],
)
def test_a_model_it_cannot_use_is_relearnt_at_once_from_the_stored_history(
    tmp_path, agents, old_models, change, options, why
):
    data = data_folder(tmp_path, old_models)
    if change is not None:
        change(data)
    before, old = stored_samples(data), str(meta(data)["sha256"])[:12]
    agent = Agent(data, tmp_path / "agent.log", *options, "--learn-for", "30s")
    agents.append(agent)
    # learning for 30 s would not be done before 30 s: the stored minute already covers it
    m = agent.wait_for("a new model", lambda m: version(m) not in (None, old))
    assert m["minerwatch_learning"] == "0.0" and float(m["minerwatch_model_age_seconds"]) < 20
    assert m['minerwatch_errors_total{stage="model"}'] == "1.0"
    assert agent.stop() == 0
    log = agent.log.read_text()
    said = [line for line in log.splitlines() if "cannot be used" in line]
    assert len(said) == 1 and why in said[0], log
    assert (
        f"the stored model for {HOST} cannot be used, relearning from the stored history (100%"
        in said[0]
    )
    assert "Traceback" not in log
    assert stored_samples(data) >= before + 1, "the history was not kept"
    assert meta(data)["window"] == float(options[3][:-1]) and meta(data)["format_version"] == 2


@pytest.mark.parametrize(
    ("options", "differs", "trained"),
    [
        (("--window", "2s"), "3s windows every 3s, asked 2s every 2s", {"window": 2.0, "hop": 2.0}),
        (
            ("--window", "3s", "--alarms-per-week", "2"),
            "alarms_per_week 0.25, asked 2",
            {"window": 3.0, "max_alarms_per_week": 2.0},
        ),
    ],
    ids=["window", "alarm-budget"],
)
def test_a_changed_setting_gets_a_model_of_that_setting_at_once(
    tmp_path, agents, old_models, options, differs, trained
):
    """--window 3s -> 2s, or a larger false-alarm budget: the old model (next retraining 20
    minutes away) scores until a model of the new setting, trained at once from the stored
    history, replaces it; it is not compared with the old one (a larger budget alerts more by
    design, and the old model would be kept)."""
    data = data_folder(tmp_path, old_models)
    old = meta(data)["sha256"]
    agent = Agent(data, tmp_path / "agent.log", "--interval", "0.5s", *options)
    agents.append(agent)
    first = agent.wait_for("the old model", lambda m: version(m) is not None)
    assert version(first) == str(old)[:12]
    agent.wait_for("a model of the new setting", lambda m: version(m) not in (None, str(old)[:12]))
    now = meta(data)
    params = now["params"]
    assert isinstance(params, dict)
    got = {k: now[k] if k in now else params.get(k) for k in trained}
    assert got == trained
    assert agent.stop() == 0
    log = agent.log.read_text()
    assert (
        f"the model for {HOST} was trained otherwise than the configuration asks ({differs}): "
        "scoring with it until a model of those, trained now, replaces it"
    ) in log
    assert "retraining gave no new model" not in log and "Traceback" not in log
