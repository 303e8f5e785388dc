"""The package owns one name in site-packages, and its entry points answer."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MINERWATCH = Path(sys.executable).with_name("minerwatch")


@pytest.mark.slow
def test_wheel_installs_only_minerwatch(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("minerwatch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    name, version = wheel.name.split("-")[:2]
    assert top == {"minerwatch", f"{name}-{version}.dist-info"}
    for room in ("features", "baseline", "service", "bench"):
        assert f"minerwatch/{room}/__init__.py" in names
    assert "minerwatch/service/data/indicators.json" in names
    assert "minerwatch/features/sources/cpu.py" in names


def test_version_from_the_command_and_python_m():
    from minerwatch import __version__

    for cmd in ([str(MINERWATCH), "--version"], [sys.executable, "-m", "minerwatch", "--version"]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd="/")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"minerwatch {__version__}"
    assert __version__ != "0+unknown"
