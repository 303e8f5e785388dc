"""SIGTERM at the worst moment: while the main loop of ``minerwatch serve`` or ``fleet serve``
is inside its wait between two cycles.

A Python signal handler runs in the main thread between two bytecodes. Both loops used to
wait on a ``threading.Event`` that the handler set; ``Event.set`` takes the lock that
``Event.wait`` holds around its sleep, so a signal landing there deadlocked the process for
good (``fleet serve`` ignored SIGTERM for 30 s in CI, then was killed). The real command runs
here under a trace hook that raises SIGTERM on the second line the loop's ``wait`` executes,
which for an Event is inside that lock: every run hits the moment CI hit once.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from promtools import free_port
from test_fleet_churn import _fake, _train

from minerwatch.baseline.store import save_model

REPO = Path(__file__).resolve().parent.parent

#: ``python -c`` this with the command's arguments: the real entry point, traced
TRACED = textwrap.dedent(
    """
    import runpy, signal, sys

    sent = []

    def wait_line(frame, event, arg):
        if event == "line":
            wait_line.lines += 1
            if wait_line.lines == 2 and not sent:
                sent.append(True)
                signal.raise_signal(signal.SIGTERM)
        return wait_line

    def on_call(frame, event, arg):
        caller = frame.f_back
        if sent or frame.f_code.co_name != "wait" or caller is None:
            return None
        if caller.f_code.co_name not in ("run", "run_serve"):  # the agent's, fleet serve's loop
            return None
        wait_line.lines = 0
        return wait_line

    sys.settrace(on_call)
    sys.argv = ["minerwatch", *sys.argv[1:]]
    runpy.run_module("minerwatch", run_name="__main__")
    """
)


def _run_traced(args: list[str], log: Path, timeout: float = 60.0) -> tuple[int, str]:
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-c", TRACED, *args],
            cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(
            f"still running {timeout:.0f} s after SIGTERM in its wait (deadlocked):\n"
            + log.read_text()
        ) from None
    return code, log.read_text()


def test_the_agent_stops_on_sigterm_landing_inside_its_wait(tmp_path):
    began = time.monotonic()
    code, text = _run_traced(
        ["serve", "--data-dir", str(tmp_path / "data"), "--host", "stop-host",
         "--port", str(free_port()), "--address", "127.0.0.1",
         "--interval", "5s", "--window", "15s", "--learn-for", "150s"],
        tmp_path / "serve.log",
    )  # fmt: skip
    assert code == 0, text
    assert "minerwatch agent for stop-host stopped (SIGTERM)" in text, text
    assert "Traceback" not in text, text
    # it stopped in its first wait, not at the end of it (the interval) or later
    assert time.monotonic() - began < 30.0, text


def test_fleet_serve_stops_on_sigterm_landing_inside_its_wait(tmp_path):
    now = time.time()
    http = _fake(now, 1)
    url = f"http://127.0.0.1:{http.server_address[1]}"
    try:
        save_model(tmp_path / "models", _train(url, "h0000", now))
        began = time.monotonic()
        code, text = _run_traced(
            ["fleet", "serve", "--prometheus", url, "--models", str(tmp_path / "models"),
             "--port", str(free_port()), "--address", "127.0.0.1", "--interval", "20s",
             "--retrain-every", "0"],
            tmp_path / "fleet.log",
        )  # fmt: skip
    finally:
        http.shutdown()
    assert code == 0, text
    assert "cycle: 1 hosts scored" in text and "Traceback" not in text, text
    assert time.monotonic() - began < 30.0, text  # not at the end of the 20-s interval


def test_the_agent_under_nohup_outlives_the_terminal_and_stops_on_sigterm(tmp_path):
    """``nohup minerwatch serve &`` then logging out: the agent took the terminal's SIGHUP as
    a stop although its starter had it ignored (fleet serve's: ``test_fleet_serve_signals.py``)."""
    log = tmp_path / "serve.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            ["nohup", sys.executable, "-m", "minerwatch", "serve",
             "--data-dir", str(tmp_path / "data"), "--host", "nohup-host",
             "--port", str(free_port()), "--address", "127.0.0.1",
             "--interval", "1s", "--window", "15s", "--learn-for", "150s"],
            cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while "metrics on 127.0.0.1" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGHUP)  # the terminal closing
        time.sleep(3.0)  # three sampling intervals: a stop would have ended it by now
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert code == 0, text
    assert "nohup-host stopped (SIGTERM)" in text and "SIGHUP" not in text, text
