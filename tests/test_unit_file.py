"""The systemd unit keeps least privilege: checked by systemd's own offline security analysis."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from promtools import free_port

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNIT = DEPLOY / "minerwatch.service"
DROPIN = DEPLOY / "minerwatch-throttle.conf"


def directives(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def test_unit_has_the_sandbox_the_agent_needs_and_no_more():
    d = directives(UNIT)
    assert d["NoNewPrivileges"] == ["yes"]
    assert d["ProtectSystem"] == ["strict"]
    assert d["ProtectHome"] == ["read-only"]
    assert d["PrivateTmp"] == ["yes"]
    assert d["ReadWritePaths"] == ["/var/lib/minerwatch"]
    # detect-only by default: reading other users' /proc needs these two, nothing else
    assert set(d["CapabilityBoundingSet"][0].split()) == {"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"}
    assert d["ProtectControlGroups"] == ["yes"]
    assert d["UMask"] == ["0077"]


def test_throttle_dropin_adds_only_what_the_throttle_needs():
    d = directives(DROPIN)
    base = set(directives(UNIT)["CapabilityBoundingSet"][0].split())
    added = set(d["CapabilityBoundingSet"][0].split()) - base
    assert added == {"CAP_KILL", "CAP_DAC_OVERRIDE"}
    assert d["ReadWritePaths"] == ["/sys/fs/cgroup"]
    assert d["ProtectControlGroups"] == ["no"]


def exposure(unit: Path) -> float:
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout + out.stderr)
    assert m, out.stdout + out.stderr
    return float(m.group(1))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_rates_the_unit_ok_with_and_without_the_throttle(tmp_path):
    unit = tmp_path / "minerwatch.service"
    shutil.copy(UNIT, unit)
    # "OK" in systemd's scale is below 4.0; the default unit must stay well inside it
    assert exposure(unit) <= 2.5
    merged = tmp_path / "minerwatch-throttled.service"
    merged.write_text(UNIT.read_text() + "\n" + DROPIN.read_text())
    assert exposure(unit) < exposure(merged) <= 3.0


#: systemd.service(5), "Restart=": which settings restart a main process that exited by
#: itself with a clean exit code (0) or an unclean one (anything else).
RESTARTS_ON = {
    "no": set(),
    "always": {"clean", "unclean"},
    "on-success": {"clean"},
    "on-failure": {"unclean"},
    "on-abnormal": set(),
    "on-watchdog": set(),
    "on-abort": set(),
}


def systemd_restarts(unit: dict[str, list[str]], exit_code: int) -> bool:
    if str(exit_code) in " ".join(unit.get("RestartPreventExitStatus", [])).split():
        return False
    (policy,) = unit.get("Restart", ["no"])
    return ("clean" if exit_code == 0 else "unclean") in RESTARTS_ON[policy]


def test_an_agent_killed_by_someone_else_is_restarted(tmp_path):
    """`kill PID` (SIGTERM) from an intruder ends the real agent with exit 0, as a stop does:
    the unit must restart that too (only `systemctl stop` may leave it down), and still not
    loop on a config error (exit 2)."""
    port = free_port()
    log = tmp_path / "agent.log"
    with log.open("wb") as fh:
        agent = subprocess.Popen(
            [sys.executable, "-m", "minerwatch", "serve", "--data-dir", str(tmp_path / "data"),
             "--port", str(port), "--address", "127.0.0.1", "--log-dir", ""],
            stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            assert agent.poll() is None, log.read_text()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).close()
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        agent.send_signal(signal.SIGTERM)
        rc = agent.wait(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(timeout=10)
    assert rc == 0, log.read_text()
    unit = directives(UNIT)
    assert systemd_restarts(unit, rc), f"Restart={unit.get('Restart')} leaves a killed agent down"
    assert systemd_restarts(unit, 1)  # a crash
    assert not systemd_restarts(unit, 2)  # bad config, or another agent holds the data folder


def install_steps() -> list[str]:
    """The commands of deploy/README.md's "0. Installing the agent", one per line."""
    readme = (DEPLOY / "README.md").read_text()
    section = readme[readme.index("## 0. Installing the agent") :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "no sh block under '0. Installing the agent'"
    return [line for line in block.group(1).splitlines() if line.strip()]


def mover(root: Path) -> Callable[[str], str]:
    """Rewrites the absolute paths of the install and removal steps to lie under ``root``."""

    def moved(text: str) -> str:
        return re.sub(r"(?<![\w./-])/(opt|usr/local|etc|var/lib)/", f"{root}/\\1/", text)

    return moved


def scratch_install(root: Path, moved: Callable[[str], str]) -> list[str]:
    """The install steps to run under ``root``: the virtual environment and its ``pip
    install`` stood in for by this test's own ``minerwatch`` (test_package builds the
    wheel), systemd left out (not running here)."""
    (root / "usr/local/bin").mkdir(parents=True)
    steps = install_steps()
    venv = [s for s in steps if s.startswith("python3 -m venv ")]
    pip = [s for s in steps if re.match(r"\S+/bin/pip install \.", s)]
    assert len(venv) == len(pip) == 1
    prefix = Path(moved(venv[0].split()[-1]))
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "minerwatch").symlink_to(Path(sys.executable).parent / "minerwatch")
    return [moved(s) for s in steps if s not in venv + pip and not s.startswith("systemctl")]


def run_in(root: Path, script: list[str]) -> subprocess.CompletedProcess[str]:
    """``script`` by bash from the checkout, with ``root``'s /usr/local/bin first on PATH."""
    return subprocess.run(
        ["bash", "-euxc", "\n".join(script)],
        cwd=DEPLOY.parent,
        env={"PATH": f"{root}/usr/local/bin:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_documented_install_steps_work_in_a_scratch_root(tmp_path):
    """deploy/README.md's install steps, run as written from a checkout with every absolute
    path moved under a scratch root, leave what the unit runs: its ExecStart binary and its
    config, which `config check` accepts. The virtual environment with its `pip install`
    is stood in for by this test's own `minerwatch` (test_package builds the wheel), and
    systemd is not running here."""
    root = tmp_path / "root"
    moved = mover(root)
    assert install_steps()[-1] == "systemctl daemon-reload && systemctl enable --now minerwatch"
    done = run_in(root, scratch_install(root, moved))
    assert done.returncode == 0, done.stdout + done.stderr
    unit = directives(root / "etc/systemd/system/minerwatch.service")
    (start,) = unit["ExecStart"]
    binary = Path(moved(start.split()[0]))
    assert binary.resolve().is_file()
    config = Path(moved(start.split("--config ")[1]))
    assert config.stat().st_mode & 0o777 == 0o644
    checked = subprocess.run(
        [str(binary), "config", "check", str(config)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0 and checked.stdout.strip() == f"{config}: OK", checked


def test_the_documented_removal_leaves_nothing_the_install_and_the_agent_put_there(tmp_path):
    """deploy/README.md's removal steps, run as written after its install steps in a scratch
    root (systemd and the status commands, which need the running host, left out): nothing
    the install created or the agent writes (its data folder, the textfile) is left."""
    root = tmp_path / "root"
    moved = mover(root)
    install = scratch_install(root, moved)
    textfile = root / "var/lib/prometheus/node-exporter"
    for folder in (root / "var/lib/minerwatch/models", textfile):  # what the agent writes
        folder.mkdir(parents=True)
    (textfile / "minerwatch.prom").write_text("minerwatch_alert_active 0\n")
    (textfile / "node.prom").write_text("other 1\n")  # not the agent's: stays
    dropins = root / "etc/systemd/system/minerwatch.service.d"
    dropins.mkdir(parents=True)
    (dropins / "throttle.conf").write_text("[Service]\n")
    readme = (DEPLOY / "README.md").read_text()
    section = readme[readme.index("## 4. Upgrading and removing the agent") :]
    blocks = re.findall(r"```sh\n(.*?)```", section[: section.index("\n## ")], re.S)
    assert len(blocks) == 2, "an upgrade block and a removal block"
    removal = [line for line in blocks[1].splitlines() if line.strip()]
    assert removal[0] == "systemctl disable --now minerwatch"  # stops first: releases
    held = [line for line in removal if line.startswith("minerwatch ")]
    assert held == ["minerwatch throttle status && minerwatch isolate status"]
    remove = [moved(line) for line in removal if line.startswith("rm ")]
    done = run_in(root, install + remove)
    assert done.returncode == 0, done.stdout + done.stderr
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*") if "minerwatch" in p.name)
    assert left == [], left
    assert (textfile / "node.prom").exists()


def test_a_bad_config_stops_the_unit_instead_of_restarting_it_forever(tmp_path):
    """The unit's commands, run in order as systemd would with a config that has a typo: the
    first to fail must be the main process with exit 2, which RestartPreventExitStatus keeps
    from a restart. (systemd tests that setting against ExecStart's exit only: a failing
    ExecStartPre is restarted as Restart= says, every RestartSec while the config is bad.)"""
    bad = tmp_path / "minerwatch.toml"
    bad.write_text('[agent]\nintervall = "10s"\n')
    unit = directives(UNIT)
    exe = str(Path(sys.executable).parent / "minerwatch")
    for key in ("ExecStartPre", "ExecStart"):
        for line in unit.get(key, []):
            argv = line.replace("/etc/minerwatch/minerwatch.toml", str(bad)).split()
            argv[0] = exe if argv[0] == "/usr/local/bin/minerwatch" else argv[0]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                assert key == "ExecStart", f"{key} fails first: systemd would restart it forever"
                assert done.returncode == 2
                assert f"{bad}:2:" in done.stderr  # file:line, for the journal
                assert not systemd_restarts(unit, done.returncode)
                return
    pytest.fail("the unit started with a bad config")


def test_textfile_mode_makes_its_folder_writable_for_the_unit(tmp_path):
    """The unit's file system is read-only but for the state folder: deploy/README.md's
    textfile mode must give the folder it names to the agent (a drop-in it shows, run here
    in a scratch root), or every write fails with EROFS; the unit's own hint agrees."""
    readme = (DEPLOY / "README.md").read_text()
    section = readme[readme.index("### Textfile mode") : readme.index("## 2. Prometheus")]
    folder = re.search(r"`--textfile (/\S+)`", section)
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert folder and block, "textfile mode names no folder or no drop-in"
    root = tmp_path / "root"
    script = re.sub(r"(?<![\w./-])/etc/", f"{root}/etc/", block.group(1))
    script = "\n".join(s for s in script.splitlines() if not s.startswith("systemctl"))
    done = subprocess.run(["bash", "-euc", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    (dropin,) = (root / "etc/systemd/system/minerwatch.service.d").glob("*.conf")
    assert dropin.read_text().startswith("[Service]\n")
    assert directives(dropin)["ReadWritePaths"] == [folder.group(1)]
    hint = re.search(r"^# ReadWritePaths=-?(\S+)$", UNIT.read_text(), re.M)
    assert hint and hint.group(1) == folder.group(1)


def private_mounts_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


#: Mounts a read-only tmpfs on $1 in the command's own mount namespace (the unit's
#: ProtectSystem=strict outside ReadWritePaths=), then runs the rest: nothing leaks out.
READ_ONLY = 'mount -t tmpfs -o ro minerwatch-test "$1" && shift && exec "$@"'


@pytest.mark.skipif(not private_mounts_work(), reason="needs unshare -m (root)")
@pytest.mark.parametrize(
    ("option", "toml"),
    [
        ("data_dir", '[agent]\ndata_dir = "{ro}"\n'),
        ("evidence_dir", '[agent]\ndata_dir = "{rw}"\nevidence_dir = "{ro}/evidence"\n'),
        ("event_log", '[agent]\ndata_dir = "{rw}"\nevent_log = "{ro}/events.jsonl"\n'),
    ],
    ids=["data_dir", "evidence_dir", "event_log"],
)
def test_a_folder_outside_the_units_writable_paths_stops_the_agent_with_exit_2(
    tmp_path, option, toml
):
    """A config that moves the agent's files out of /var/lib/minerwatch, run under the unit's
    read-only file system: the agent exits 2 naming the option and ReadWritePaths= (the unit
    does not restart it), not an unexpected failure restarted every RestartSec, nor an agent
    that runs and loses its evidence at the first alert."""
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    config = tmp_path / "minerwatch.toml"
    config.write_text(toml.format(ro=ro, rw=rw))
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", READ_ONLY, "sh", str(ro),
         str(Path(sys.executable).parent / "minerwatch"), "serve", "--config", str(config),
         "--port", "0", "--address", "127.0.0.1", "--log-dir", ""],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"expected a folder the agent can write ({option};" in done.stderr
    assert "ReadWritePaths=" in done.stderr
    assert not systemd_restarts(directives(UNIT), done.returncode)
