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
from typing import Any

from minerwatch.service.stopflag import STOP_SIGNALS, catch

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


@contextmanager
def stops_deferred(signums: Iterable[signal.Signals] = STOP_SIGNALS) -> Iterator[None]:
    """Hold ``signums`` (Ctrl-C, SIGTERM, SIGHUP) while in the block; one that came meanwhile
    is taken as the block ends (its handler raises there), never half-way through it.

    For steps that must happen together or not at all (a host's two files moved into place,
    and counting them as done). The signals are blocked in this thread; the kernel then gives
    a ``kill PID`` to another thread (numpy's BLAS pool), whose C-level catch still makes the
    main thread run the Python handler at once: so the handlers are also swapped for one
    that notes the signal, raised again once the block ends. Main thread only. A stop
    received before, not yet handled, is raised on entering, before the block runs.
    """
    signums = tuple(signums)
    noted: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        noted.append(signum)

    held = signal.pthread_sigmask(signal.SIG_BLOCK, ())  # the mask as it is
    previous: dict[signal.Signals, Any] = {}
    try:  # blocking also runs a handler due: the mask is restored if that raises
        signal.pthread_sigmask(signal.SIG_BLOCK, signums)
        previous = catch(signums, note)  # one its starter ignored stays ignored
        yield
    finally:
        try:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        finally:  # one pending in this thread is handled here, by its own handler
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        if noted:  # one another thread took, noted meanwhile
            signal.raise_signal(noted[0])
