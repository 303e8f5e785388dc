"""The real ``minerwatch`` command, run as a user runs it (stdin closed, output captured):
every command is tested through this entry point, not only through its function."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: The console script the package installs beside this Python, else ``python -m minerwatch``.
SCRIPT = Path(sys.executable).with_name("minerwatch")
ENTRY = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "minerwatch"]


def run(
    *args: object, cwd: str | Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``minerwatch ARGS...``; its exit code, stdout and stderr."""
    return subprocess.run(
        [*ENTRY, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def usage_error(r: subprocess.CompletedProcess[str], *words: object) -> None:
    """Exit 2, a message naming what was wrong, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    for word in words:
        assert str(word) in r.stderr, (word, r.stderr)
