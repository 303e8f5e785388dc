"""The persistence baseline: the real agent hashes the host's persistence entries when it
finishes learning, and ``minerwatch report`` marks each entry new, changed or removed since.

The host's files live in a folder the test makes (``--host-root``): a crontab, an init
script, a systemd unit, ``ld.so.preload`` and root's ``authorized_keys``.
"""

from __future__ import annotations

import hashlib
import json
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from promtools import free_port

from minerwatch.service.evidence import EvidenceWriter, HostPaths

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).with_name("minerwatch")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly0000000000000000000 admin@x\n"
ROGUE = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQRogueKeyForTests0000000000 miner@pool\n"


def make_root(root: Path) -> dict[str, Path]:
    files = {
        "crontab": root / "etc/crontab",
        "init": root / "etc/init.d/backup",
        "unit": root / "etc/systemd/system/web.service",
        "preload": root / "etc/ld.so.preload",
        "keys": root / "root/.ssh/authorized_keys",
    }
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    files["crontab"].write_text("0 3 * * * root /usr/local/bin/backup\n")
    files["init"].write_text("#!/bin/sh\nexec /usr/local/bin/backup\n")
    files["unit"].write_text("[Service]\nExecStart=/usr/sbin/nginx\n")
    files["preload"].write_text("")
    files["keys"].write_text(KEY)
    return files


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_baseline_at_end_of_learning_then_report_marks_changes(tmp_path):
    root = tmp_path / "host"
    files = make_root(root)
    data = tmp_path / "data"
    log = tmp_path / "agent.log"
    cmd = [
        str(SCRIPT), "serve", "--data-dir", str(data), "--host", "pb-host",
        "--port", str(free_port()), "--address", "127.0.0.1", "--interval", "1s",
        "--window", "3s", "--learn-for", "10s", "--retrain-every", "0",
        "--host-root", str(root),
    ]  # fmt: skip
    baseline = data / "persistence-baseline.json"
    with log.open("ab") as fh:
        agent = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
    try:
        time.sleep(5)  # half the learning period (the agent starts in a second or two)
        assert not baseline.exists(), "a snapshot before the end of learning"
        deadline = time.monotonic() + 150
        while not baseline.exists():
            assert agent.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"no baseline:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        assert (data / "models" / "pb-host" / "meta.json").is_file()  # learning had ended
    finally:
        agent.send_signal(signal.SIGTERM)
        rc = agent.wait(timeout=30)
    assert rc == 0, log.read_text()[-3000:]
    assert stat.S_IMODE(baseline.stat().st_mode) == 0o600
    doc = json.loads(baseline.read_text())
    entries = doc["entries"]
    expected = {
        "crontab": "cron",
        "init": "init",
        "unit": "systemd",
        "preload": "ld_so_preload",
        "keys": "authorized_keys",
    }
    for name, kind in expected.items():
        assert entries[str(files[name])] == {"kind": kind, "sha256": sha(files[name])}, name
    assert all(p.startswith(str(root)) for p in entries)  # nothing from the real host

    # The miner moves in (a cron file, a second key) and an init script goes; the evidence
    # of an episode is written from the same root, as the agent writes it.
    (root / "etc/cron.d").mkdir()
    (root / "etc/cron.d/kx").write_text("*/5 * * * * nobody /tmp/.x/kx\n")
    files["keys"].write_text(KEY + ROGUE)
    files["init"].unlink()
    writer = EvidenceWriter(data / "evidence", min_interval_s=0, paths=HostPaths.under(root))
    evidence = writer.write("pb-host-1767229200", 0.9, 0.6, {}, [], [], [])
    assert evidence is not None
    ev = json.loads(evidence.read_text())
    assert ROGUE.strip() in ev["authorized_keys"][0]["content"]
    assert [e["path"] for e in ev["persistence"]] == sorted(
        str(p) for p in (root / "etc/cron.d/kx", files["crontab"], files["preload"],
                         files["unit"], files["keys"])
    )  # fmt: skip

    out = subprocess.run(
        [str(SCRIPT), "report", "--data-dir", str(data), "--format", "json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    persistence = json.loads(out.stdout)["persistence"]
    marks = {e["path"]: e["status"] for e in persistence["changes"]}
    assert marks == {
        str(root / "etc/cron.d/kx"): "new",
        str(files["keys"]): "changed",
        str(files["init"]): "removed",
    }
    assert persistence["unchanged"] == 3  # crontab, unit, ld.so.preload
    assert persistence["authorized_keys"][0]["path"] == str(files["keys"])
    md = subprocess.run(
        [str(SCRIPT), "report", "--data-dir", str(data), "--format", "md"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert md.returncode == 0, md.stderr
    assert f"- **new** cron ` {root / 'etc/cron.d/kx'} `" in md.stdout
    assert "Since learning: marked against the baseline of" in md.stdout
