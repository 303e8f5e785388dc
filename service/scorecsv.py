"""Where ``score`` and ``fleet score`` put their rows: a file written whole, or standard output.

A file is written beside its target and renamed into place only when the command has scored
something, so a failed run never leaves a half-written or header-only CSV behind. ``-`` streams
to standard output for pipelines (``minerwatch score ... --output - | grep ...``); the header is
written with the first rows, so a run that scored nothing prints nothing there either.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from minerwatch.features.errors import InputError

#: The ``--output`` that means standard output.
STDOUT = "-"


def is_stdout(out: Path) -> bool:
    """Whether ``--output`` asked for standard output."""
    return str(out) == STDOUT


def describe(out: Path) -> str:
    """The destination in messages: the file, or ``standard output``."""
    return "standard output" if is_stdout(out) else str(out)


class ScoreSink:
    """Rows of one scoring run; :meth:`commit` makes them the output, leaving it otherwise
    untouched (a file) or without a header (standard output)."""

    def __init__(self, out: Path, header: Sequence[str]) -> None:
        self.out = out
        self._header = list(header)
        self._tmp = out.with_name(f".{out.name}.tmp") if not is_stdout(out) else None
        self._fh: TextIO | None = None
        self._writer: Any = None

    def __enter__(self) -> ScoreSink:
        if self._tmp is None:
            self._fh = sys.stdout
        else:
            try:
                self._fh = self._tmp.open("w", newline="", encoding="utf-8")
            except OSError as exc:  # named as the user gave it, not as the temp file beside it
                raise InputError(
                    str(self.out), None, "a file this user can create", exc.strerror or str(exc)
                ) from None
        self._writer = csv.writer(self._fh)
        return self

    def write(self, rows: Iterable[Sequence[object]]) -> None:
        """Append rows (the header goes first, with the first rows)."""
        if self._header:
            self._writer.writerow(self._header)
            self._header = []
        self._writer.writerows(rows)

    def commit(self) -> None:
        """Make what was written the output (a file is renamed into place)."""
        assert self._fh is not None
        if self._tmp is None:
            self._fh.flush()
            return
        self._fh.close()
        self._tmp.replace(self.out)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._tmp is not None:
            if self._fh is not None:
                self._fh.close()
            self._tmp.unlink(missing_ok=True)
