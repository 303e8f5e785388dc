"""SIGTERM and SIGHUP stop a batch command as Ctrl-C does.

Ctrl-C raises :class:`KeyboardInterrupt` in the main thread, and every batch command already
stops cleanly on it: ``train`` names the models saved and the flag that finishes the run, a
scored CSV is never left half-written, worker pools are shut down. SIGTERM (``kill``,
``timeout``, a service manager) and SIGHUP (the terminal closed) ended the same commands by
the signal's default: nothing said, and the workers of a ``--jobs`` pool, which ``kill PID``
does not reach (unlike Ctrl-C, sent to the terminal's whole process group), orphaned and
holding their CPU and the command's output pipes. :func:`terminable` raises
:class:`Terminated`, a :class:`KeyboardInterrupt`, instead: every Ctrl-C path runs as is.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import FrameType

from minerwatch.service.stopflag import catch

#: What stops a batch command as Ctrl-C does (SIGINT is Python's own KeyboardInterrupt).
TERMINATING = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """A stop asked by ``signum``: handled wherever Ctrl-C is, exit ``128 + signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        #: Whether a command already said that it stopped (else :func:`main` says so).
        self.said = False

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def stopped(exc: KeyboardInterrupt) -> str:
    """How a command says what stopped it: ``interrupted`` (Ctrl-C) or ``terminated (SIGTERM)``;
    an exception it names is marked as said, so :func:`main` does not say it again."""
    if isinstance(exc, Terminated):
        exc.said = True
        return f"terminated ({exc.name})"
    return "interrupted"


def stop_code(exc: KeyboardInterrupt) -> int:
    """130 for Ctrl-C, 128 + N for signal N, as a shell reports a process the signal ended."""
    return 128 + (exc.signum if isinstance(exc, Terminated) else signal.SIGINT)


@contextmanager
def terminable(signums: Iterable[signal.Signals] = TERMINATING) -> Iterator[None]:
    """Raise :class:`Terminated` on ``signums`` while in the block (main thread only).

    A signal its starter set to be ignored stays ignored: ``nohup`` (SIGHUP) is meant to
    outlive the terminal, and a command taking it as a stop would end when the user logs out.
    """

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise Terminated(signum)

    previous = catch(signums, on_signal)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
