"""``serve --ioc-dir``: the real agent checks the IOC files of a folder against this host.

A process runs a unique copy of ``sleep`` (its hash is nobody else's); ``minerwatch ioc
extract`` turns evidence about it into an IOC file; an agent started with ``--ioc-dir`` then
exports ``minerwatch_ioc_hits{ioc}``, writes an ``ioc_hit`` event line and an evidence file,
re-reads the folder when a file changes and skips a file that is not an IOC file. The
agent is still learning: IOC checks do not wait for a model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from promtools import free_port

from minerwatch.service.evidence import EvidenceWriter
from minerwatch.service.ioc import IocWatcher, ioc_label

SCRIPT = Path(sys.executable).with_name("minerwatch")
REPO = Path(__file__).resolve().parent.parent


def minerwatch(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120
    )


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return str(r.read().decode())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return ""


def ioc_hits(text: str) -> dict[str, float]:
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^minerwatch_ioc_hits\{ioc="([^"]+)"\} (\S+)$', text, re.M)
    }


def wait_for(what: str, pred, agent: subprocess.Popen[bytes], log: Path, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert agent.poll() is None, f"agent exited {agent.returncode}:\n{log.read_text()[-3000:]}"
        got = pred()
        if got:
            return got
        time.sleep(0.3)
    pytest.fail(f"{what} not seen in {timeout:.0f}s:\n{log.read_text()[-3000:]}")


def events(data: Path) -> list[dict]:
    path = data / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def suspect(tmp_path):
    """A running process whose binary is a unique copy under the agent's host root."""
    drop = tmp_path / "root" / "tmp" / ".x"
    drop.mkdir(parents=True)
    exe = drop / "kdevtmpfsi"
    shutil.copy2(shutil.which("sleep") or "/bin/sleep", exe)
    with exe.open("ab") as fh:  # ELF ignores trailing bytes; the hash becomes unique
        fh.write(os.urandom(32))
    proc = subprocess.Popen([str(exe), "300"])
    try:
        yield proc, exe
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_agent_reports_an_ioc_hit_and_rereads_the_folder(tmp_path, suspect):
    proc, exe = suspect
    digest = hashlib.sha256(exe.read_bytes()).hexdigest()
    ev = EvidenceWriter(tmp_path / "ev", min_interval_s=0).write(
        "ep1", 0.9, 0.7, {}, [], [proc.pid], []
    )
    iocs = tmp_path / "iocs"
    iocs.mkdir()
    made = minerwatch("ioc", "extract", ev, "--output", iocs / "a.json")
    assert made.returncode == 0, made.stderr
    ioc = json.loads((iocs / "a.json").read_text())
    assert digest in ioc["sha256"] and str(exe) in ioc["paths"]
    label = ioc_label(ioc["id"])
    (iocs / "broken.json").write_text("{not an IOC")  # skipped, never stops the others

    data = tmp_path / "data"
    port = free_port()
    log = tmp_path / "agent.log"
    cmd = [
        str(SCRIPT), "serve", "--data-dir", str(data), "--host", "ioc-host",
        "--port", str(port), "--address", "127.0.0.1", "--interval", "1s", "--window", "3s",
        "--learn-for", "1h", "--ioc-dir", str(iocs), "--ioc-every", "1s",
        "--host-root", str(tmp_path / "root"),
    ]  # fmt: skip
    with log.open("ab") as fh:
        agent = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
    try:
        hits = wait_for("an IOC hit", lambda: ioc_hits(scrape(port)).get(label), agent, log)
        assert hits >= 2  # the running process (hash and path) and the file on disk
        (line,) = wait_for(
            "the event line",
            lambda: [e for e in events(data) if e["event"] == "ioc_hit"],
            agent,
            log,
        )
        assert line["ioc"] == ioc["id"] and line["host"] == "ioc-host"
        kinds = {(h["kind"], h["pid"]) for h in line["hits"]}
        assert ("sha256", proc.pid) in kinds and ("paths", proc.pid) in kinds
        evidence = Path(line["evidence"])
        assert evidence.parent == data / "evidence" and "ioc-hit-ioc-host" in evidence.name
        assert stat.S_IMODE(evidence.stat().st_mode) == 0o600
        doc = json.loads(evidence.read_text())
        assert doc["ioc"]["id"] == ioc["id"]
        assert [p["pid"] for p in doc["processes"]] == [proc.pid]
        assert doc["processes"][0]["sha256"] == digest
        assert "broken.json" in log.read_text()  # named once, the agent went on

        # A second IOC file appears, one that matches nothing here: re-read, exported as 0.
        other = dict(ioc, id="ioc-elsewhere", sha256=["0" * 64], paths=["/nonexistent/x"])
        (iocs / "b.json").write_text(json.dumps(other))
        seen = wait_for(
            "the new IOC file",
            lambda: (h := ioc_hits(scrape(port))).get("ioc_elsewhere") == 0.0 and h,
            agent,
            log,
        )
        assert seen[label] >= 2
        # The suspect is killed and its binary removed: the next check finds nothing.
        proc.kill()
        proc.wait(timeout=10)
        exe.unlink()
        wait_for("a clean check", lambda: ioc_hits(scrape(port)).get(label) == 0.0, agent, log)
        assert len([e for e in events(data) if e["event"] == "ioc_hit"]) == 1  # said once
    finally:
        agent.send_signal(signal.SIGTERM)
        rc = agent.wait(timeout=20)
    assert rc == 0, log.read_text()[-3000:]
    # the IOC check wrote no alert episode: the report says so instead of using its evidence
    report = minerwatch("report", "--data-dir", data, "--format", "json")
    assert report.returncode == 2 and "alert episode" in report.stderr
    # ... and points the responder at the evidence the IOC hit left
    kept = [p.name for p in (data / "evidence").glob("*-ioc-hit-*.json")]
    assert kept and f"minerwatch evidence show {sorted(kept)[-1]}" in report.stderr, report.stderr


def test_watcher_rereads_a_changed_file_and_bounds_the_count(tmp_path):
    folder = tmp_path / "iocs"
    folder.mkdir()
    clock = [0.0]
    w = IocWatcher(folder, 60.0, scan=(), clock=lambda: clock[0])
    base = {"format": "minerwatch-ioc", "version": 1, "paths": [str(tmp_path / "nothing")]}
    for i in range(40):
        (folder / f"f{i:02d}.json").write_text(json.dumps({**base, "id": f"ioc-{i:02d}"}))
    assert w.due()
    first = w.check()
    assert len(first) == 32 and not w.due()  # at most 32 files: a bounded label set
    assert all(hits == [] for _, _, hits in first.values())
    (tmp_path / "nothing").write_text("")  # now the first IOC's path exists
    clock[0] = 61.0
    assert w.due()
    again = w.check()
    assert [h.kind for h in again["ioc_00"][2]] == ["paths"]
    (folder / "f00.json").write_text(json.dumps({**base, "id": "ioc-renamed", "paths": ["/x"]}))
    names = {ioc.id for _, ioc in w.reload()}
    assert "ioc-renamed" in names and "ioc-00" not in names


def test_what_a_check_could_not_read_is_logged_once_while_it_lasts(tmp_path, caplog):
    """The agent checks every five minutes: the same unreadable part (here an IOC path behind
    a symlink loop) was logged at every check, 288 lines a day. Once while it lasts now; gone
    and back, it is news again."""
    import logging

    folder = tmp_path / "iocs"
    folder.mkdir()
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    watched = str(loop / "xmrig")
    doc = {"format": "minerwatch-ioc", "version": 1, "id": "ioc-x", "paths": [watched]}
    (folder / "x.json").write_text(json.dumps(doc))
    clock = [0.0]
    w = IocWatcher(folder, 60.0, scan=(), clock=lambda: clock[0])

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if watched in r.getMessage()]

    with caplog.at_level(logging.INFO, logger="minerwatch"):
        for _ in range(3):
            assert w.check()["ioc_x"][2] == []
        assert len(said()) == 1 and "could not read" in said()[0], said()
        loop.unlink()
        w.check()
        loop.symlink_to(loop)
        w.check()
        assert len(said()) == 2, said()
