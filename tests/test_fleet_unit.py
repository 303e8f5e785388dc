"""deploy/minerwatch-fleet.service: fleet mode as a systemd service, with no privilege.

systemd does not run here, so the unit is checked the ways that do not need it: systemd's own
offline analysis (``verify``, ``security``), and its two command lines run as written (the
binary, the Prometheus URL and the state folder moved to this test's), as an unprivileged
user (``nobody``, HOME the state folder), against a real Prometheus holding two hosts' last
hours: the pre-start trains every host without a model and then none, the server scores
both hosts and exits 0 on SIGTERM. And ``fleet dismiss`` run by
root into the service user's folder leaves files that user can read and lock."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from entry import ENTRY, run
from promtools import PROMETHEUS, PROMTOOL, free_port, require, started_prometheus
from test_unit_file import directives, exposure

from minerwatch.bench.fleet_backfill import backfill
from minerwatch.bench.simulate import simulate

pytestmark = pytest.mark.prometheus

UNIT = Path(__file__).resolve().parent.parent / "deploy" / "minerwatch-fleet.service"
STATE = "/var/lib/minerwatch-fleet"
PLACEHOLDER = "http://prometheus:9090"
INTERVAL = 15.0
HISTORY = 3 * 3600.0


def test_the_unit_runs_unprivileged_in_a_tight_sandbox():
    d = directives(UNIT)
    assert d["User"] == ["minerwatch-fleet"] and d["Group"] == ["minerwatch-fleet"]
    assert d["CapabilityBoundingSet"] == [""] and d["AmbientCapabilities"] == [""]
    assert d["NoNewPrivileges"] == ["yes"] and d["ProtectSystem"] == ["strict"]
    assert d["StateDirectory"] == ["minerwatch-fleet"] and d["UMask"] == ["0077"]
    # exit 2 at start is also "no Prometheus answers yet" (a boot): it must be restarted
    assert d["Restart"] == ["always"] and "RestartPreventExitStatus" not in d
    # a pre-start that fails (a host with too little history) must not keep the server down
    (pre,) = d["ExecStartPre"]
    assert pre.startswith("-/usr/local/bin/minerwatch fleet train ")
    # every credential the comments tell to pass as %d/NAME is one LoadCredential= hands over
    text = UNIT.read_text()
    named = set(re.findall(r"%d/([\w.-]+)", text))
    loaded = set(re.findall(r"^#?LoadCredential=([\w.-]+):", text, re.M))
    assert named and named == loaded


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_accepts_the_unit_and_rates_its_exposure_low(tmp_path):
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/minerwatch", ENTRY[0]))
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert exposure(unit) <= 1.5  # the agent's unit, which must read every /proc: 2.4


@pytest.fixture(scope="module")
def prom_url(tmp_path_factory) -> Iterator[str]:
    """A real Prometheus holding two simulated hosts' last three hours (node_exporter names,
    ``job="node"`` as the unit's selector says)."""
    require(PROMETHEUS)
    promtool = require(PROMTOOL)
    root = tmp_path_factory.mktemp("fleet-unit")
    end = float(int(time.time() // INTERVAL) * INTERVAL)
    simulate(
        root / "sim", hosts=2, train_days=HISTORY / 86400.0, test_days=0.0, seed=23,
        interval=INTERVAL, start=end - HISTORY, procs=False,
    )  # fmt: skip
    backfill(root / "sim", ["train"], root / "tsdb", promtool)
    with started_prometheus(root, root / "tsdb") as prom:
        yield prom.url


#: The unit's User=, as far as this test can be it: as root, the commands run as ``nobody``
#: (no capability, no file of root's writable, HOME the state folder as useradd makes it).
AS_USER = (
    ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
)


def command(key: str, url: str, state: Path) -> list[str]:
    """The unit's ``key=`` command line as systemd splits it, moved to this test."""
    (line,) = directives(UNIT)[key]
    argv = shlex.split(line.lstrip("-").replace(PLACEHOLDER, url).replace(STATE, str(state)))
    assert argv[0] == "/usr/local/bin/minerwatch"
    return [*AS_USER, *ENTRY, *argv[1:]]


def scored_hosts(port: int) -> set[str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return set()
    found = re.findall(r'^minerwatch_windows_scored_total\{[^}]*host="([^"]+)"[^}]*\} ([0-9.e+]+)',
                       text, re.M)  # fmt: skip
    return {host for host, n in found if float(n) > 0}


def test_the_units_command_lines_train_then_serve_the_fleet(prom_url, shared_tmp):
    """Run as the unit runs them, its user's: whatever they write outside the state folder
    (a cache in HOME elsewhere, a file next to the package) fails here as under the unit."""
    state = shared_tmp / "state"
    state.mkdir(mode=0o700)  # StateDirectory= makes it, the user's; nothing inside yet
    if AS_USER:
        os.chown(state, 65534, 65534)
    env = {**os.environ, "HOME": str(state)}
    pre = command("ExecStartPre", prom_url, state)
    first = subprocess.run(pre, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr
    models = state / "models"
    assert not AS_USER or models.stat().st_uid == 65534  # written by the unit's user
    assert len([p for p in models.iterdir() if (p / "meta.json").exists()]) == 2, first.stderr
    stamps = {p.name: (p / "meta.json").stat().st_mtime_ns for p in models.iterdir()}
    again = subprocess.run(pre, capture_output=True, text=True, timeout=300, env=env)  # restart
    assert again.returncode == 0 and "nothing to train" in again.stderr, again.stderr
    assert {p.name: (p / "meta.json").stat().st_mtime_ns for p in models.iterdir()} == stamps

    port = free_port()
    serve = [*command("ExecStart", prom_url, state), "--port", str(port), "--address", "127.0.0.1"]
    log = shared_tmp / "serve.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            serve, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    try:
        deadline = time.monotonic() + 90
        while len(scored_hosts(port)) < 2:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)  # systemctl stop
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert (state / "fleet-serve-state.json").exists(), log.read_text()


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder another user can reach (pytest's own are under a 0700 folder of root's)."""
    folder = Path(tempfile.mkdtemp(prefix="minerwatch-fleet-unit-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="root writing into another user's folder")
def test_a_dismissal_root_records_is_the_service_users_to_read_and_lock(shared_tmp):
    """systemd makes the state folder the service user's (0700); an operator runs ``fleet
    dismiss`` as root. The record must be that user's, or fleet serve cannot read it and the
    dismissal never takes effect; so must the lock, or the user's own next dismiss fails."""
    state = shared_tmp / "state"
    state.mkdir(mode=0o700)
    (state / "fleet-serve-state.json").write_text("{}\n")
    os.chown(state, 65534, 65534)  # nobody: the service's user
    span = ["--start", "2026-12-01T10:00Z", "--end", "2026-12-01T11:00Z"]
    root = run("fleet", "dismiss", "--state-dir", state, "--host", "web-1", *span)
    assert root.returncode == 0, root.stderr
    for name in ("fleet-dismissed.json", "fleet-dismissed.json.lock"):
        st = (state / name).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534, 0o600), name

    as_user = [*AS_USER, *ENTRY]
    env = {**os.environ, "HOME": str(shared_tmp)}
    listed = subprocess.run(
        [*as_user, "fleet", "dismiss", "--state-dir", str(state), "--list", "--json"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert [d["host"] for d in json.loads(listed.stdout)] == ["web-1"]
    more = subprocess.run(
        [*as_user, "fleet", "dismiss", "--state-dir", str(state), "--host", "web-2", *span],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert more.returncode == 0, more.stderr
