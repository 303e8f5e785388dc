"""``config check`` refuses what ``serve`` would refuse or what makes the agent useless (an
exporter address that is not an IP address, window counts and durations past their bounds),
and the host-signal watcher never reports the agent's own port nor a port twice across a
restart."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from minerwatch.service.hostsignals import (
    HostSignals,
    Port,
    listening_ports_netlink,
    listening_ports_proc,
)

REPO = Path(__file__).resolve().parent.parent
MINERWATCH = Path(sys.executable).parent / "minerwatch"
SHIPPED = REPO / "deploy" / "minerwatch.toml"


def minerwatch(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MINERWATCH), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "mw.toml"
    path.write_text(text)
    return minerwatch("config", "check", path)


def refused(r: subprocess.CompletedProcess[str], *parts: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    for part in parts:
        assert part in r.stderr, (part, r.stderr)


# -- the exporter address ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["::", "0.0.0.0", "127.0.0.1", "::1", "10.1.2.3", "fe80::1", "localhost", "mon-1.example.org"],
)
def test_ip_addresses_and_host_names_are_accepted(tmp_path, address):
    r = check(tmp_path, f'[agent]\nhost = "h"\n\n[exporter]\naddress = "{address}"\n')
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("mw.toml: OK")


@pytest.mark.parametrize(
    "address", ["not an ip", "-bad-", "[::1]", "1.2.3", "256.0.0.1", "::1:", "127.0.0.1:80"]
)
def test_anything_but_an_address_or_a_host_name_is_refused_with_file_and_line(tmp_path, address):
    """``serve --config`` failed with "Name or service not known" where ``config check`` said
    OK. A well-formed host name passes (resolving it is not a config check's business)."""
    r = check(tmp_path, f'[agent]\nhost = "h"\n\n[exporter]\nport = 0\naddress = "{address}"\n')
    refused(
        r,
        f"{tmp_path / 'mw.toml'}:6:",
        "expected exporter.address to be an IP address",
        '"::", "0.0.0.0", "127.0.0.1" or "::1"',
        f'got "{address}"',
    )


def test_serve_address_flag_is_checked_like_the_file(tmp_path):
    r = minerwatch("serve", "--data-dir", tmp_path / "d", "--port", "0", "--address", "not an ip")
    refused(r, "--address: expected --address to be an IP address", 'got "not an ip"')
    assert not (tmp_path / "d").exists()  # refused before the agent started


# -- counts and durations ------------------------------------------------------------------------

TOO_LARGE = [
    ("agent", "sustain_windows", "99999999999999999999", "an integer from 1 to 1440"),
    ("agent", "alert_windows", "1441", "an integer from 1 to 1440"),
    ("throttle", "max_targets", "1001", "an integer from 1 to 1000"),
    ("agent", "interval", '"25h"', "at most 24h"),
    ("agent", "window", '"2d"', "at most 24h"),
    ("agent", "hop", '"86401s"', "at most 24h"),
    ("agent", "learn_for", '"366d"', "at most 365d"),
    ("agent", "retrain_every", '"1000d"', "from 0s to 365d"),
    ("agent", "retrain_history", '"53w"', "at most 365d"),
    ("agent", "history_retention", '"99y"', "at most 365d"),
    ("throttle", "hold", '"2d"', "from 0s to 24h"),
    ("throttle", "release_hold", '"48h"', "from 0s to 24h"),
    ("respond", "ioc_every", '"400d"', "at most 365d"),
]


@pytest.mark.parametrize(("section", "key", "value", "bound"), TOO_LARGE)
def test_counts_and_durations_past_their_bound_are_refused(tmp_path, section, key, value, bound):
    r = check(tmp_path, f"# limits\n[{section}]\n{key} = {value}\n")
    refused(r, f"{tmp_path / 'mw.toml'}:3:", f"expected {section}.{key} to be", bound)


def test_the_bounds_themselves_are_accepted(tmp_path):
    text = """\
[agent]
host = "h"
interval = "24h"
window = "24h"
learn_for = "365d"
retrain_every = "365d"
retrain_history = "365d"
history_retention = "365d"
alert_windows = 1440
sustain_windows = 1440

[throttle]
hold = "24h"
release_hold = "24h"
max_targets = 1000

[respond]
ioc_every = "365d"
"""
    r = check(tmp_path, text)
    assert r.returncode == 0, r.stderr


def test_serve_flags_past_their_bound_are_refused(tmp_path):
    # this host only, any free port, a short timeout: without the bounds the agent started
    serve = ["serve", "--data-dir", tmp_path / "d", "--address", "127.0.0.1", "--port", "0"]
    r = minerwatch(*serve, "--sustain-windows", "99999999999999", timeout=20)
    refused(r, "--sustain-windows", "an integer from 1 to 1440")
    r = minerwatch(*serve, "--learn-for", "400d", timeout=20)
    refused(r, "--learn-for", "at most 365d")
    assert not (tmp_path / "d").exists()


def test_shipped_file_and_config_show_still_pass_check(tmp_path):
    r = minerwatch("config", "check", SHIPPED)
    assert r.returncode == 0, r.stderr
    for args in (["config", "show"], ["config", "show", SHIPPED]):
        shown = minerwatch(*args)
        assert shown.returncode == 0, shown.stderr
        assert check(tmp_path, shown.stdout).returncode == 0


# -- the agent's own port and ports reported before a restart ------------------------------------


class Clock:
    def __init__(self, t: float = 1_764_756_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _listen(port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for s in opened:
        s.close()


def _events(data: Path) -> list[dict]:
    path = data / "events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_own_port_is_never_reported_and_a_restart_reports_nothing_twice(tmp_path, sockets):
    """The kernel's real socket table, narrowed to the sockets this test opens (other tests
    and agents on this machine open and close ports of their own meanwhile)."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (tmp_path / "auth.log").write_text("")
    mine: set[int] = set()

    def read_ports() -> dict[Port, str]:
        try:
            ports = listening_ports_netlink()
        except OSError:
            ports = listening_ports_proc()
        return {k: a for k, a in ports.items() if k[0] == "tcp" and k[1] in mine}

    def watcher(clock: Clock) -> HostSignals:
        return HostSignals(
            data,
            learn_for=60.0,
            event_log=data / "events.jsonl",
            host="h1",
            clock=clock,
            auth_log=tmp_path / "auth.log",
            log_dir=None,
            read_ports=read_ports,
            journal=False,
        )

    def exporter() -> int:
        """A stand-in for the agent's exporter on a random port (``--port 0``)."""
        s = _listen()
        sockets.append(s)
        port = int(s.getsockname()[1])
        mine.add(port)
        return port

    clock = Clock()
    sig = watcher(clock)
    own = exporter()
    sig.own_ports({own})
    sig.tick(clock.t)  # learning: the agent's own port is not part of the host's baseline
    clock.t += 61
    sig.tick(clock.t)
    assert sig.snapshot_fields()["new_listen_ports"] == {"tcp": 0, "udp": 0}

    intruder = _listen()
    sockets.append(intruder)
    other = int(intruder.getsockname()[1])
    mine.add(other)
    clock.t += 10
    sig.tick(clock.t)
    assert sig.snapshot_fields()["new_listen_ports"] == {"tcp": 1, "udp": 0}
    assert [(e["event"], e["port"]) for e in _events(data)] == [("new_listen_port", other)]
    sig.close()
    doc = json.loads((data / "hostsignals.json").read_text())
    assert ["tcp", own] not in doc["listen_ports"]
    assert doc["listen_reported"] == [["tcp", other]]

    # restart: the exporter gets another random port; the intruder is still open
    sockets[0].close()
    clock.t += 10
    again = watcher(clock)
    own2 = exporter()
    again.own_ports({own2})
    for _ in range(3):
        clock.t += 10
        again.tick(clock.t)
    assert again.snapshot_fields()["new_listen_ports"] == {"tcp": 1, "udp": 0}  # still open
    assert len(_events(data)) == 1  # but not reported again
    section = again.evidence_section()
    assert [p["port"] for p in section["new_listen_ports"]] == [other]

    # a port that closes and opens again is new again
    intruder.close()
    clock.t += 10
    again.tick(clock.t)
    assert again.snapshot_fields()["new_listen_ports"] == {"tcp": 0, "udp": 0}
    sockets.append(_listen(other))
    clock.t += 10
    again.tick(clock.t)
    assert [e["port"] for e in _events(data)] == [other, other]
    assert {e["port"] for e in _events(data)}.isdisjoint({own, own2})
    again.close()


def test_a_state_file_without_reported_ports_still_loads(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    state = {"version": 1, "learn_started": 1.0, "listen_ports": [["tcp", 22]]}
    (data / "hostsignals.json").write_text(json.dumps(state))
    sig = HostSignals(
        data, 60.0, None, "h1", Clock(), auth_log=tmp_path / "none", log_dir=None,
        read_ports=lambda: {("tcp", 22): "0.0.0.0"}, journal=False,
    )  # fmt: skip
    assert sig.known_ports == {("tcp", 22)} and sig.reported_ports == set()
    bad = {**state, "listen_reported": [["tcp", "22"]]}
    (data / "hostsignals.json").write_text(json.dumps(bad))
    sig = HostSignals(
        data, 60.0, None, "h1", Clock(), auth_log=tmp_path / "none", log_dir=None,
        read_ports=dict, journal=False,
    )  # fmt: skip
    assert sig.known_ports == set()  # a damaged file is learnt again, not trusted
