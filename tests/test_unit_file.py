"""The systemd unit keeps least privilege: checked by systemd's own offline security analysis."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

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
