"""``nohup minerwatch fleet serve &``: started with SIGHUP ignored, a server outlives the
terminal. Both servers took SIGHUP as a stop whatever their starter said, so logging out ended
a ``nohup``'d ``fleet serve`` (the agent's case is in ``test_stop_signal.py``, which runs
agents one at a time)."""

from __future__ import annotations

import signal
import time

from test_fleet_churn import _fake, _serve, _train

from minerwatch.baseline.store import save_model


def test_fleet_serve_under_nohup_outlives_the_terminal_and_stops_on_sigterm(tmp_path):
    now = time.time()
    http = _fake(now, 1)
    url = f"http://127.0.0.1:{http.server_address[1]}"
    models, log = tmp_path / "models", tmp_path / "fleet.log"
    try:
        save_model(models, _train(url, "h0000", now))
        proc, _ = _serve(url, models, log, under=("nohup",))
        try:
            deadline = time.monotonic() + 30

            def cycles() -> int:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                return log.read_text().count("cycle: 1 hosts scored")

            while cycles() < 1:
                time.sleep(0.2)
            proc.send_signal(signal.SIGHUP)  # the terminal closing
            after = cycles()
            while cycles() < after + 2:  # it goes on scoring, a cycle a second
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        http.shutdown()
    text = log.read_text()
    assert code == 0, text
    assert "fleet serve stopped (SIGTERM)" in text and "SIGHUP" not in text, text
