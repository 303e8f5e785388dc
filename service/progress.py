"""A dependency-free progress line on stderr (only when stderr is a terminal, or forced)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``[#####.....] 5/10 web-3 (2.1s)``; silent when not a TTY so logs stay clean, or, with
    ``lines`` N, a plain line there at each N-th of the work (``fleet train: 5/10 web-3
    (2.1s)``), so a long run under a service manager or cron shows how far it got."""

    def __init__(
        self, label: str, stream: TextIO | None = None, force: bool = False, lines: int = 0
    ) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = force or self.stream.isatty()
        self.lines = lines
        self.t0 = time.monotonic()

    def __call__(self, done: int, total: int, item: str = "") -> None:
        if total <= 0:
            return
        if not self.enabled:
            if self.lines > 0 and (done * self.lines // total > (done - 1) * self.lines // total):
                elapsed = time.monotonic() - self.t0
                self.stream.write(f"{self.label}: {done}/{total} {item} ({elapsed:.1f}s)\n")
                self.stream.flush()
            return
        width = 24
        filled = int(width * done / total)
        bar = "#" * filled + "." * (width - filled)
        elapsed = time.monotonic() - self.t0
        end = "\n" if done >= total else ""
        self.stream.write(
            f"\r{self.label} [{bar}] {done}/{total} {item} ({elapsed:.1f}s)\x1b[K{end}"
        )
        self.stream.flush()
