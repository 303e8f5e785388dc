"""``minerwatch fleet dismiss`` as a command: the record it keeps and its usage errors (exit 2).
What ``fleet serve`` does with a dismissal is in test_fleet_retrain.py (a real Prometheus)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest

from minerwatch.service.fleet.dismiss import DISMISSED_FILE, read_dismissed, spans_by_host

T2 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC).timestamp()
T3 = datetime(2026, 12, 1, 3, 10, tzinfo=UTC).timestamp()
MINERWATCH = os.path.join(os.path.dirname(sys.executable), "minerwatch")


def mw(*args):
    return subprocess.run(
        [MINERWATCH, "fleet", "dismiss", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dismiss_list_and_undo_keep_one_private_file(tmp_path):
    (tmp_path / "fleet-serve-state.json").write_text("{}")  # fleet serve's state folder
    r = mw("--state-dir", tmp_path, "--host", "db-2", "--start", "2026-12-01T02:00Z",
           "--end", "2026-12-01T03:10Z", "--reason", "quarterly\nreindex")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "dismissed db-2 from 2026-12-01 02:00:00Z to 2026-12-01 03:10:00Z" in r.stdout
    path = tmp_path / DISMISSED_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    (item,) = read_dismissed(path)
    assert (item["start"], item["end"], item["reason"]) == (
        T2,
        T3,
        "quarterly reindex",
    )
    assert item["by"] and abs(item["at"] - time.time()) < 60
    r = mw("--state-dir", tmp_path, "--host", "db-3", "--start", "100", "--end", "200")
    assert r.returncode == 0, r.stderr
    assert spans_by_host(read_dismissed(path)) == {
        "db-2": [(T2, T3)],
        "db-3": [(100.0, 200.0)],
    }
    again = mw("--state-dir", tmp_path, "--host", "db-3", "--start", "100", "--end", "200")
    assert again.returncode == 0 and "already dismissed; nothing changed" in again.stdout
    listed = mw("--state-dir", tmp_path, "--list")
    assert (
        listed.returncode == 0
        and listed.stdout.count("\n") == 2
        and "quarterly reindex" in listed.stdout
    )
    r = mw("--state-dir", tmp_path, "--host", "db-2", "--start", "2026-12-01T02:00Z", "--undo")
    assert r.returncode == 0 and "undone" in r.stdout
    assert [
        i["host"] for i in json.loads(mw("--state-dir", tmp_path, "--list", "--json").stdout)
    ] == ["db-3"]


def test_the_list_shows_control_characters_instead_of_sending_them_to_the_terminal(tmp_path):
    """A reason (or host name) holding ESC or BEL retitled or recoloured the terminal of
    whoever ran ``--list`` later; each is now shown as its escape, as report and evidence do."""
    (tmp_path / "fleet-serve-state.json").write_text("{}")
    reason = "cleanup \x1b]2;pwned\x07 \x1b[31mred"
    r = mw("--state-dir", tmp_path, "--host", "db-\x1b[2J", "--start", "100", "--end", "200",
           "--reason", reason)  # fmt: skip
    assert r.returncode == 0, r.stderr
    listed = mw("--state-dir", tmp_path, "--list")
    assert listed.returncode == 0, listed.stderr
    assert "\x1b" not in listed.stdout and "\x07" not in listed.stdout, repr(listed.stdout)
    assert "cleanup \\x1b]2;pwned\\x07 \\x1b[31mred" in listed.stdout, listed.stdout
    assert "db-\\x1b[2J" in listed.stdout, listed.stdout
    (item,) = json.loads(mw("--state-dir", tmp_path, "--list", "--json").stdout)
    assert item["reason"] == reason  # kept as given; only its display is escaped


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--host", "h"], "expected --host and --start (or --list)"),
        (
            ["--host", "h", "--start", "200", "--end", "100"],
            "--end: expected a time at or after --start",
        ),
        (["--host", "h", "--start", "100"], "--end: expected a time at or after --start"),
        (["--host", "h", "--start", "1", "--undo"], "expected a dismissal of h from 1"),
        (["--host", "h", "--start", "1", "--end", "2", "--reason", "x" * 501], "at most 500"),
        (["--host", "h", "--start", "yesterday"], "expected Unix seconds or ISO 8601"),
        # written, these broke --list and fleet serve's reading of the file for good (exit 1)
        (["--host", "h", "--start", "nan", "--end", "nan"], "a time in the years 1 to 9999"),
        (["--host", "h", "--start", "1", "--end", "inf"], "a time in the years 1 to 9999"),
        (["--host", "h", "--start", "1e30", "--end", "1e31"], "a time in the years 1 to 9999"),
        # a mistyped year: every alert of the host until then, a miner's too, learnt unseen
        (
            ["--host", "h", "--start", "2026-01-12T02:00Z", "--end", "2999-01-12T03:00Z"],
            "--end: expected the end of an alert that has happened, not a time in the future",
        ),
    ],
)
def test_bad_usage_exits_2(tmp_path, args, expected):
    r = mw("--state-dir", tmp_path, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert expected in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / DISMISSED_FILE).exists()


def test_a_damaged_file_is_named_and_left_alone(tmp_path):
    path = tmp_path / DISMISSED_FILE
    path.write_text('{"format": "minerwatch-fleet-dismissals", "dismissed": [\n{"host": 1}]}')
    r = mw("--state-dir", tmp_path, "--host", "h", "--start", "1", "--end", "2")
    assert r.returncode == 2 and f"{path}: expected dismissed[0] with host" in r.stderr
    path.write_text(
        '{"format": "minerwatch-fleet-dismissals", "dismissed": [\n'
        '{"host": "h", "start": NaN, "end": NaN, "at": 1.0}]}'
    )  # what an --start nan wrote before it was refused
    r = mw("--state-dir", tmp_path, "--list")
    assert r.returncode == 2 and f"{path}: expected dismissed[0] with host" in r.stderr, r.stderr
    path.write_text("{not json")
    r = mw("--state-dir", tmp_path, "--list")
    assert r.returncode == 2 and f"{path}:1: expected JSON" in r.stderr
    assert path.read_text() == "{not json"


def test_fleet_serve_keeps_the_last_good_dismissals_when_the_file_breaks(tmp_path):
    from minerwatch.service.fleet.serve import STATE_FILE, FleetServer

    server = FleetServer(None, tmp_path, state_file=tmp_path / STATE_FILE, retrain_every=60.0)
    server.save_state()  # what makes the folder fleet serve's, for fleet dismiss
    server.read_dismissals()
    assert server.dismissed == {} and server.errors == {}
    assert mw("--state-dir", tmp_path, "--host", "h", "--start", "1", "--end", "2").returncode == 0
    server.read_dismissals()
    assert server.dismissed == {"h": [(1.0, 2.0)]}
    (tmp_path / DISMISSED_FILE).write_text("[]")  # another program's file
    server.read_dismissals()
    assert server.errors == {"state": 1} and server.dismissed == {"h": [(1.0, 2.0)]}
    server.read_dismissals()  # unchanged since: not read (nor counted) again
    assert server.errors == {"state": 1}
    (tmp_path / DISMISSED_FILE).unlink()
    server.read_dismissals()
    assert server.dismissed == {}


@pytest.mark.parametrize("dismissed", [True, False])
def test_fleet_serve_retrains_when_a_dismissed_episode_closes(tmp_path, caplog, dismissed):
    """An episode dismissed while open was learnt as far as it had gone; when it closes,
    ``fleet serve`` retrains the host at once to learn it whole, as the agent does. An
    episode nobody dismissed waits for the schedule. Cycles run against the synthetic
    Prometheus over HTTP; the episode opens under a threshold of 0 and closes when the model
    is swapped for one nothing crosses (the episode carried over, as a reload does)."""
    import logging
    from dataclasses import replace

    import numpy as np

    from minerwatch.bench.fleet_serve import INTERVAL, Answers, one_model, serve_answers
    from minerwatch.service.fleet.promclient import Connection, PromClient
    from minerwatch.service.fleet.serve import STATE_FILE, FleetServer, HostState

    t0 = 1_700_000_000.0  # in the past: fleet dismiss refuses an --end in the future
    http = serve_answers(Answers(1, np.arange(t0 - 2400.0, t0 + 1200.0, INTERVAL), seed=4))
    model = replace(one_model(), host="h0000")
    now = [t0]
    server = FleetServer(
        PromClient(Connection(f"http://127.0.0.1:{http.server_address[1]}")),
        tmp_path,
        clock=lambda: now[0],
        state_file=tmp_path / STATE_FILE,
        retrain_every=86400.0,
    )
    try:
        server.hosts["h0000"] = HostState.of(replace(model, threshold=0.0))
        state = server.hosts["h0000"]
        state.next_retrain = t0 + 86400.0
        assert server.cycle()["scored"] == 1 and state.alert.active
        opened = state.episode_start
        assert opened is not None
        if dismissed:
            done = mw("--state-dir", tmp_path, "--host", "h0000", "--start", opened,
                      "--end", t0, "--reason", "a batch job")  # fmt: skip
            assert done.returncode == 0, done.stderr
        now[0] += 60.0
        server.cycle()  # the dismissal read; the open episode is retrained on at once
        assert state.alert.active
        assert (state.next_retrain == now[0]) is dismissed
        state.next_retrain = t0 + 86400.0  # as if that retraining had run
        server.hosts["h0000"] = state = HostState.of(replace(model, threshold=2.0), state)
        state.next_retrain = t0 + 86400.0
        with caplog.at_level(logging.INFO, logger="minerwatch"):
            for _ in range(10):
                now[0] += 60.0
                server.cycle()
                if not state.alert.active:
                    break
        assert not state.alert.active, "the episode must close"
        closed = "a dismissed episode closed, retraining it now" in caplog.text
        assert closed is dismissed, caplog.text
        assert (state.next_retrain == now[0]) is dismissed
        assert server.due() == (["h0000"] if dismissed else [])
    finally:
        http.shutdown()


def test_fleet_serve_tries_a_failing_retraining_again_less_and_less_often(tmp_path):
    """A host whose retraining keeps failing (here: Prometheus refuses the history query)
    is tried again after an hour, then two, four... at most a day and never later than the
    schedule; each try reads the host's history from Prometheus (it was every hour, for as
    long as it failed). The real retraining, against a real HTTP server that answers 400."""
    import http.server
    import threading
    from dataclasses import replace

    from minerwatch.bench.fleet_serve import one_model
    from minerwatch.service.fleet.promclient import Connection
    from minerwatch.service.fleet.serve import STATE_FILE, FleetServer, HostState

    class Refuse(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            body = b'{"status":"error","errorType":"bad_data","error":"out of bounds"}'
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = answer

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    connection = Connection(f"http://127.0.0.1:{httpd.server_address[1]}")
    t0 = 1_800_000_000.0
    now = [t0]
    server = FleetServer(
        None, tmp_path, clock=lambda: now[0], state_file=tmp_path / STATE_FILE,
        retrain_every=2 * 86400.0,
    )  # fmt: skip
    try:
        server.hosts["h0000"] = state = HostState.of(replace(one_model(), host="h0000"))
        waits = []
        for _ in range(8):
            assert server.retrain_host(connection, "h0000") == "bad_input"
            waits.append(state.next_retrain - now[0])
            now[0] = state.next_retrain
        hour = 3600.0
        assert waits == [hour, 2 * hour, 4 * hour, 8 * hour, 16 * hour, 24 * hour, 24 * hour,
                         24 * hour]  # fmt: skip
        assert server.errors["train"] == 8
        server.retrain_every = 3 * hour  # the schedule comes first
        server.retrain_host(connection, "h0000")
        assert state.next_retrain - now[0] == 3 * hour
    finally:
        httpd.shutdown()
