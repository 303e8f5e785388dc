"""``fleet serve`` and the signals of a closed terminal: SIGHUP stops it as SIGTERM does (its
default ended it with its last state unsaved and nothing in its log), unless its starter had it
ignored (``nohup minerwatch fleet serve &`` is meant to outlive the terminal; it took SIGHUP as
a stop all the same). The agent's cases are in ``test_stop_signal.py``, which runs agents one
at a time; ``fleet serve`` reads only its own fake Prometheus, so these run in the parallel
pass."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from test_fleet_churn import _fake, _serve, _train

from minerwatch.baseline.store import save_model
from minerwatch.service.fleet.serve import STATE_FILE


def _signalled(tmp_path: Path, under: tuple[str, ...], *signals: signal.Signals) -> tuple[int, str]:
    """Exit code and log of a real ``fleet serve`` started through ``under``, sent ``signals``
    in turn once it has scored, each after two more cycles while it still runs."""
    now = time.time()
    http = _fake(now, 1)
    url = f"http://127.0.0.1:{http.server_address[1]}"
    models, log = tmp_path / "models", tmp_path / "fleet.log"
    try:
        save_model(models, _train(url, "h0000", now))
        proc, _ = _serve(url, models, log, under=under)
        try:
            deadline = time.monotonic() + 60

            def cycles() -> int:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                return log.read_text().count("cycle: 1 hosts scored")

            for signum in signals:
                after = cycles()
                while cycles() < after + 2:  # a cycle a second
                    time.sleep(0.2)
                proc.send_signal(signum)
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        http.shutdown()
    text = log.read_text()
    assert "Traceback" not in text, text
    assert "h0000" in json.loads((models / STATE_FILE).read_text())["hosts"], text
    return code, text


def test_fleet_serve_stops_on_sighup_saving_its_state(tmp_path):
    code, text = _signalled(tmp_path, (), signal.SIGHUP)
    assert code == 0, text
    assert "fleet serve stopped (SIGHUP)" in text, text


def test_fleet_serve_under_nohup_outlives_the_terminal_and_stops_on_sigterm(tmp_path):
    code, text = _signalled(tmp_path, ("nohup",), signal.SIGHUP, signal.SIGTERM)
    assert code == 0, text
    assert "fleet serve stopped (SIGTERM)" in text and "SIGHUP" not in text, text
