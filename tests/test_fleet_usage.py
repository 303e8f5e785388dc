"""Usage errors of the fleet commands (and ``isolate --ssh-port``), through the real
``minerwatch`` command: exit 2 naming the flag, before any connection to Prometheus (where
a valid URL is needed, a socket that counts who connects) and before anything is written."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from minerwatch.service.fleet.dismiss import DISMISSED_FILE, STATE_FILE

MINERWATCH = os.path.join(os.path.dirname(sys.executable), "minerwatch")


def mw(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MINERWATCH, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def prometheus() -> Iterator[tuple[str, Callable[[], int]]]:
    """A URL that accepts connections and never answers, and how many connected so far."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        seen = [0]

        def connections() -> int:
            while True:
                try:
                    sock.accept()[0].close()
                except BlockingIOError:
                    return seen[0]
                seen[0] += 1

        yield f"http://127.0.0.1:{sock.getsockname()[1]}", connections


def usage_error(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "unexpected failure" not in r.stderr, r.stderr
    for word in words:
        assert word in r.stderr, (word, r.stderr)


def fleet_args(command: str, url: str, tmp: Path) -> list[object]:
    """The least each fleet command that reads Prometheus needs, writing only under ``tmp``."""
    (tmp / "models").mkdir(exist_ok=True)
    extra: dict[str, list[object]] = {
        "train": ["--models", tmp / "trained"],
        "score": ["--models", tmp / "models", "--output", tmp / "s.csv", "--start", 0],
        "export": ["--output", tmp / "exported", "--start", 0],
        "serve": ["--models", tmp / "models"],
    }
    return ["fleet", command, "--prometheus", url, "--timeout", "2s", *extra[command]]


# -- 1. --prometheus -------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "score", "export", "serve"])
@pytest.mark.parametrize("url", ["notaurl", "ftp://x", "http://", "http://prom:99999"])
def test_a_url_that_is_not_http_is_refused_by_every_command_before_any_request(
    tmp_path: Path, command: str, url: str
) -> None:
    r = mw(*fleet_args(command, url, tmp_path))
    usage_error(r, "--prometheus: expected an http:// or https:// base URL", repr(url))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"], "wrote something"


def test_a_url_with_credentials_is_refused_without_echoing_them(tmp_path: Path) -> None:
    r = mw(*fleet_args("export", "http://admin:s3cret@prom:9090", tmp_path))
    usage_error(r, "--prometheus:", "without credentials (use --username, --password-file)")
    assert "s3cret" not in r.stderr


# -- 2. ports --------------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_fleet_serve_refuses_a_port_out_of_range_before_reading_prometheus(
    tmp_path: Path, prometheus: tuple[str, Callable[[], int]], port: str
) -> None:
    url, connections = prometheus
    r = mw(*fleet_args("serve", url, tmp_path), "--port", port)
    usage_error(r, f"--port: expected a port from 0 to 65535 (0 = any free port), got {port}")
    assert connections() == 0


def test_fleet_serve_reads_its_web_config_before_prometheus(
    tmp_path: Path, prometheus: tuple[str, Callable[[], int]]
) -> None:
    url, connections = prometheus
    missing = tmp_path / "web.yml"
    r = mw(*fleet_args("serve", url, tmp_path), "--web-config", missing)
    usage_error(r, f"{missing}: expected a readable UTF-8 web config file")
    assert connections() == 0


def test_fleet_serve_on_a_busy_port_names_it(tmp_path: Path) -> None:
    """/metrics is bound after the first cycle: a port in use is still a usage error."""
    from dataclasses import replace

    import numpy as np

    from minerwatch.baseline.store import save_model
    from minerwatch.bench.fleet_serve import INTERVAL, Answers, one_model, serve_answers

    now = time.time()
    http = serve_answers(Answers(1, np.arange(now - 2400.0, now + 600.0, INTERVAL), seed=4))
    save_model(tmp_path / "models", replace(one_model(), host="h0000"))
    try:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            port = busy.getsockname()[1]
            r = mw(*fleet_args("serve", f"http://127.0.0.1:{http.server_address[1]}", tmp_path),
                   "--address", "127.0.0.1", "--port", port, "--retrain-every", "0")  # fmt: skip
    finally:
        http.shutdown()
    usage_error(r, f"127.0.0.1:{port}: expected an address and port /metrics can listen on")
    usage_error(r, f"Address already in use (held by pid {os.getpid()}: ")


@pytest.mark.parametrize("port", ["70000", "0"])
def test_isolate_host_refuses_an_ssh_port_out_of_range(tmp_path: Path, port: str) -> None:
    """A dry run only prints the ruleset; it must not print one nft would refuse."""
    env = {k: v for k, v in os.environ.items() if k != "SSH_CONNECTION"}
    r = mw("isolate", "--host", "--allow-ssh-from", "10.0.0.0/8", "--ssh-port", port,
           "--dry-run", "--data-dir", tmp_path, env=env)  # fmt: skip
    usage_error(r, f"--ssh-port: expected a TCP port from 1 to 65535, got {port}")
    assert r.stdout == ""
    ok = mw("isolate", "--host", "--allow-ssh-from", "10.0.0.0/8", "--ssh-port", "65535",
            "--dry-run", "--data-dir", tmp_path, env=env)  # fmt: skip
    assert ok.returncode == 0 and "tcp dport 65535 accept" in ok.stdout, ok.stderr


# -- 3. --start, --concurrency, help -----------------------------------------------------------


@pytest.mark.parametrize("command", ["score", "export"])
def test_score_and_export_need_start(
    tmp_path: Path, prometheus: tuple[str, Callable[[], int]], command: str
) -> None:
    url, connections = prometheus
    args = fleet_args(command, url, tmp_path)
    r = mw(*args[: args.index("--start")])
    usage_error(r, "--start")
    assert "a start before the end" not in r.stderr, "--start defaulted to --end"
    assert connections() == 0


@pytest.mark.parametrize("value", ["-1", "0"])
def test_concurrency_is_a_request_count(
    tmp_path: Path, prometheus: tuple[str, Callable[[], int]], value: str
) -> None:
    url, connections = prometheus
    r = mw(*fleet_args("train", url, tmp_path), "--concurrency", value)
    usage_error(r, "--concurrency", "a number of requests at once per process (1, 2, ...)")
    assert "cores" not in r.stderr
    assert connections() == 0


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("score", ["Prometheus base URL, http:// or https://"]),
        ("export", ["(default: none, an empty password)", "(default: in --cert-file)"]),
        ("train", ["(default: --days before --end)", "default: the system's", "(default: none)"]),
        ("serve", ["plain HTTP", "retraining reads", "(0 = any free port)"]),
        ("dismiss", ["required to dismiss; not with --list or --undo", "fleet-serve-state.json"]),
    ],
)
def test_help_shows_what_happens_without_each_flag(command: str, shown: list[str]) -> None:
    r = mw("fleet", command, "--help", env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0
    for text in shown:
        assert text in r.stdout, (text, r.stdout)
    assert "[--start" not in r.stdout or command in ("train", "dismiss")
    assert "before --end" not in r.stdout or command == "train"


# -- 4. fleet dismiss ------------------------------------------------------------------------


def dismiss(folder: Path, *args: object) -> subprocess.CompletedProcess[str]:
    return mw("fleet", "dismiss", "--state-dir", folder, *args)


def test_dismissing_needs_end_but_undo_and_list_do_not(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text("{}")
    r = dismiss(tmp_path, "--host", "h", "--start", "100")
    usage_error(r, "--end: expected a time at or after --start, got none (--end is required")
    assert not (tmp_path / DISMISSED_FILE).exists()
    assert dismiss(tmp_path, "--host", "h", "--start", "100", "--end", "200").returncode == 0
    undone = dismiss(tmp_path, "--host", "h", "--start", "100", "--undo")
    assert undone.returncode == 0 and "undone" in undone.stdout, undone.stderr
    assert dismiss(tmp_path, "--list", "--json").stdout.strip() == "[]"


def test_dismiss_refuses_a_folder_that_is_not_fleet_serves(tmp_path: Path) -> None:
    """A mistyped --state-dir: a record there would change nothing, so none is written."""
    empty = tmp_path / "empty"
    (empty / "some-host").mkdir(parents=True)  # a folder, but no model in it
    r = dismiss(empty, "--host", "h", "--start", "100", "--end", "200")
    usage_error(r, f"{empty}: expected fleet serve's state folder", STATE_FILE)
    assert not (empty / DISMISSED_FILE).exists()
    usage_error(dismiss(tmp_path / "nowhere", "--host", "h", "--start", "1", "--end", "2"))
    listed = dismiss(empty, "--list")  # reading changes nothing: allowed, and says where
    assert listed.returncode == 0 and str(empty) in listed.stdout


@pytest.mark.parametrize("holds", ["state", "model", "dismissals"])
def test_dismiss_writes_into_fleet_serves_folders(tmp_path: Path, holds: str) -> None:
    if holds == "state":
        (tmp_path / STATE_FILE).write_text("{}")
    elif holds == "model":  # a models folder as baseline/store.py lays it out
        (tmp_path / "db-2").mkdir()
        (tmp_path / "db-2" / "meta.json").write_text(json.dumps({"host": "db-2"}))
    else:  # a folder dismissed into before
        (tmp_path / DISMISSED_FILE).write_text(
            json.dumps({"format": "minerwatch-fleet-dismissals", "dismissed": []})
        )
    r = dismiss(tmp_path, "--host", "db-2", "--start", "100", "--end", "200")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / DISMISSED_FILE).read_text())["dismissed"][0]["host"] == "db-2"
