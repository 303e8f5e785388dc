"""A stop that a signal handler can request without a lock.

``threading.Event.set`` takes the event's lock, and a Python signal handler runs in the main
thread between two bytecodes: a SIGTERM landing while the main thread held that lock (inside
``Event.wait``, just before or after it sleeps) deadlocked the process, which then ignored
every later signal until SIGKILL (``fleet serve`` in CI; the agent loops the same way and would
have kept what it throttled). A pipe needs no lock: setting writes a byte, waiting polls it
(a signal interrupts the main thread's poll, which runs the handler and then sees the byte).
"""

from __future__ import annotations

import os
import select
import signal
import weakref
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

#: What stops a long-running command cleanly: SIGTERM (systemd, ``kill``), SIGINT (Ctrl-C) and
#: SIGHUP (a closed terminal, a mistaken reload), whose default would end it without releasing
#: what it holds or saving its state.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class StopFlag:
    """Set once, never cleared; ``wait`` returns at once from then on, in every thread."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        #: Names of the signals that asked for the stop, in order (for the log)
        self.signals: list[str] = []
        weakref.finalize(self, _close, self._read, self._write)

    def set(self) -> None:
        try:
            os.write(self._write, b"\0")
        except BlockingIOError:  # the pipe is full of earlier requests: set already
            pass

    def is_set(self) -> bool:
        return self.wait(0.0)

    def wait(self, timeout: float | None = None) -> bool:
        """True once set; else False after ``timeout`` seconds (None: no limit)."""
        poller = select.poll()  # not select(): an agent may hold fds above 1024
        poller.register(self._read, select.POLLIN)
        ms = None if timeout is None else max(0, int(timeout * 1000.0 + 0.999))
        return bool(poller.poll(ms))

    def stop_on(self, signums: Iterable[signal.Signals] = STOP_SIGNALS) -> None:
        """Set on each of ``signums`` (main thread only, as ``signal.signal``). A signal its
        starter set to be ignored stays ignored: ``nohup minerwatch serve &`` is meant to
        outlive the terminal, and taking SIGHUP as a stop ended it at logout."""

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self.signals.append(signal.Signals(signum).name)  # no lock taken: see the module
            self.set()

        catch(signums, on_signal)


def catch(
    signums: Iterable[signal.Signals], handler: Callable[[int, FrameType | None], None]
) -> dict[signal.Signals, Any]:
    """Handle each of ``signums`` with ``handler`` unless its starter set it to be ignored
    (``nohup``'s SIGHUP, a background job's SIGINT: those stay ignored); the handlers replaced,
    by signal. Main thread only, as ``signal.signal``."""
    previous: dict[signal.Signals, Any] = {}
    for signum in signums:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, handler)
    return previous


def _close(*fds: int) -> None:
    for fd in fds:
        os.close(fd)
