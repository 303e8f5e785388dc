"""Typed input errors that say what, where and what was expected."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class InputError(Exception):
    """Bad user input; the CLI maps it to exit code 2.

    >>> str(InputError("x.csv", 3, "a number in 'cpu_percent'", "'abc'"))
    "x.csv:3: expected a number in 'cpu_percent', got 'abc'"
    """

    path: str
    line: int | None
    expected: str
    got: str | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        msg = f"{where}: expected {self.expected}"
        return f"{msg}, got {self.got}" if self.got is not None else msg
