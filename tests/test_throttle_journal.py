"""The throttle journal read whole and checked (a wrong shape is bad input, exit 2, through
the real ``minerwatch`` entry point), and the agent's own descendants never throttled (real
processes: this test stands in for the agent; only processes it started are ever touched)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from entry import run

from minerwatch.features.proctable import ProcessTable
from minerwatch.service.targets import select_targets
from minerwatch.service.throttle import JOURNAL, Throttle, ThrottleConfig

#: A busy loop that ends by itself, so nothing outlives a killed test run for long.
BURN = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end: pass\n"
#: A busy child that first starts a busy child of its own and prints that one's pid.
BURN_WITH_CHILD = (
    "import subprocess, sys\n"
    f"g = subprocess.Popen([sys.executable, '-c', {BURN!r}])\n"
    "print(g.pid, flush=True)\n" + BURN
)
#: Starts a busy process in its own session, prints its pid and exits: the busy process is
#: then nobody's child here (reparented to init or a subreaper above this test).
LAUNCH_ORPHAN = (
    "import subprocess, sys\n"
    f"p = subprocess.Popen([sys.executable, '-c', {BURN!r}], start_new_session=True,\n"
    "    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "print(p.pid, flush=True)\n"
)


# --------------------------------------------------------------------------- 1: journal shape

#: Journals that are not a throttle journal at all: nothing in them can be trusted.
MALFORMED = {
    "array": [],
    "throttled_a_string": {"throttled": "abc"},
    "object_without_throttled": {},
    "exempt_a_string": {"throttled": [], "exempt": "x"},
    "unknown_version": {"version": 99, "throttled": []},
}
#: A journal with one entry of a wrong shape (hand-edited): that entry is named and kept.
DAMAGED_ENTRY = {
    "record_without_create_time": {"throttled": [{"pid": 1}]},
    "exempt_pid_not_a_number": {"throttled": [], "exempt": [["x", 1]]},
    "record_a_number": {"throttled": [7]},
    "exempt_not_pairs": {"throttled": [], "exempt": [[1, 2, 3]]},
    "pid_negative": {"throttled": [{"pid": -1, "create_time": 1.0, "method": "sigstop"}]},
    "pid_a_boolean": {"throttled": [{"pid": True, "create_time": 1.0, "method": "sigstop"}]},
    "create_time_a_string": {
        "throttled": [{"pid": 4242, "create_time": "yesterday", "method": "sigstop"}]
    },
    "unknown_method": {"throttled": [{"pid": 4242, "create_time": 1.0, "method": "nice"}]},
    "cgroup_record_without_dirs": {
        "throttled": [{"pid": 4242, "create_time": 1.0, "method": "cgroup2"}]
    },
    "name_an_object": {
        "throttled": [{"pid": 4242, "create_time": 1.0, "method": "sigstop", "name": {}}]
    },
}
COMMANDS = pytest.mark.parametrize(
    "command",
    [["status"], ["status", "--json"], ["release"], ["release", "4242"]],
    ids=["status", "status-json", "release-all", "release-pid"],
)


@pytest.fixture(params=sorted(MALFORMED), ids=sorted(MALFORMED))
def bad_journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A data folder whose throttle journal is valid JSON of the wrong shape."""
    journal = tmp_path / "throttle" / JOURNAL
    journal.parent.mkdir()
    journal.write_text(json.dumps(MALFORMED[request.param]))
    yield tmp_path, journal


def assert_bad_journal(r: subprocess.CompletedProcess[str], journal: Path) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    assert "unexpected failure" not in r.stderr
    assert str(journal) in r.stderr, r.stderr
    assert "expected a throttle journal: an object with a 'throttled' list" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@COMMANDS
def test_wrong_shape_journal_is_bad_input(bad_journal: tuple[Path, Path], command: list[str]):
    data_dir, journal = bad_journal
    before = journal.read_bytes()
    r = run("throttle", command[0], "--data-dir", data_dir, *command[1:])
    assert_bad_journal(r, journal)
    assert journal.read_bytes() == before, "a journal we cannot read is kept for a human"


@pytest.mark.parametrize("name", sorted(DAMAGED_ENTRY))
@COMMANDS
def test_a_damaged_entry_is_named_and_kept(tmp_path: Path, name: str, command: list[str]):
    journal = tmp_path / "throttle" / JOURNAL
    journal.parent.mkdir()
    journal.write_text(json.dumps(DAMAGED_ENTRY[name], indent=3))
    before = journal.read_bytes()
    r = run("throttle", command[0], "--data-dir", tmp_path, *command[1:])
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "unexpected failure" not in r.stderr
    key = "exempt" if name.startswith("exempt") else "throttled"
    assert f"{journal}: {key}[0]" in r.stderr, r.stderr
    assert "left in the journal as it is" in r.stderr, r.stderr
    assert journal.read_bytes() == before, "a damaged entry is kept for a human"


def test_message_says_what_was_found_and_a_corrected_journal_reads(tmp_path: Path):
    journal = tmp_path / "throttle" / JOURNAL
    journal.parent.mkdir()
    for content, found in [
        ([], "an array"),
        ({"throttled": [{"pid": 1}]}, "throttled[0] has no 'create_time'"),
        ({"throttled": [], "exempt": [["x", 1]]}, "exempt[0][0] is a string 'x'"),
        ({"throttled": "abc"}, "'throttled' is a string 'abc'"),
    ]:
        journal.write_text(json.dumps(content))
        r = run("throttle", "status", "--data-dir", tmp_path)
        assert r.returncode == 2 and str(journal) in r.stderr, r.stderr
        assert found in r.stderr, r.stderr
    # Put right by hand, the same journal reads again (every field a record may have).
    journal.write_text(
        json.dumps(
            {
                "version": 1,
                "throttled": [
                    {"pid": 4242, "create_time": 1.0, "name": "x", "method": "sigstop", "since": 2},
                    {
                        "pid": 4243,
                        "create_time": 1,
                        "method": "cgroup2",
                        "cgroup_dir": str(tmp_path / "cg" / "g" / "4243-100"),
                        "original_dir": str(tmp_path / "cg"),
                    },
                ],
                "exempt": [[4244, 3.5]],
            }
        )
    )
    r = run("throttle", "status", "--data-dir", tmp_path)  # a table with a header row
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and lines[0].split()[:3] == ["PID", "NAME", "METHOD"], r.stdout
    assert [line.split()[0] for line in lines[1:]] == ["4242", "4243"]
    r = run("throttle", "status", "--data-dir", tmp_path, "--json")
    assert r.returncode == 0, r.stderr
    state = json.loads(r.stdout)
    assert [t["pid"] for t in state["throttled"]] == [4242, 4243]
    assert state["exempt"] == [[4244, 3.5]]


def test_serve_with_a_wrong_shape_journal_exits_2(tmp_path: Path):
    """Exit 2, not 1: the shipped unit's RestartPreventExitStatus=2 stops a restart loop."""
    journal = tmp_path / "throttle" / JOURNAL
    journal.parent.mkdir()
    journal.write_text("[]")
    r = run(
        "serve", "--data-dir", tmp_path, "--port", "0", "--no-throttle", "--address", "127.0.0.1"
    )
    assert_bad_journal(r, journal)
    assert journal.read_text() == "[]"


# --------------------------------------------------------------------------- 2: descendants


def stop_and_kill(pid: int, create_time: float) -> None:
    """SIGCONT then SIGKILL one process this test started, only if the pid is still it."""
    try:
        if psutil.Process(pid).create_time() != create_time:
            return
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGKILL)
    except (psutil.NoSuchProcess, ProcessLookupError):
        pass


def busy(pid: int, seconds: float = 0.3, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = psutil.Process(pid).cpu_times()
        if t.user + t.system >= seconds:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def family() -> Iterator[dict[str, int]]:
    """A busy child of this process with a busy grandchild, and an unrelated busy process."""
    started: list[tuple[int, float]] = []
    child = subprocess.Popen(
        [sys.executable, "-c", BURN_WITH_CHILD], stdout=subprocess.PIPE, text=True
    )
    try:
        started.append((child.pid, psutil.Process(child.pid).create_time()))
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        started.append((grandchild, psutil.Process(grandchild).create_time()))
        launcher = subprocess.run(
            [sys.executable, "-c", LAUNCH_ORPHAN], capture_output=True, text=True, timeout=30
        )
        unrelated = int(launcher.stdout)
        started.append((unrelated, psutil.Process(unrelated).create_time()))
        pids = {"child": child.pid, "grandchild": grandchild, "unrelated": unrelated}
        assert psutil.Process(unrelated).ppid() != os.getpid()
        assert psutil.Process(grandchild).ppid() == child.pid
        assert all(busy(pid) for pid in pids.values())
        yield pids
    finally:
        for pid, created in started:
            stop_and_kill(pid, created)
        child.wait(timeout=10)


class Selection:
    allow_names: tuple[str, ...] = ()
    allow_users: tuple[str, ...] = ()
    allow_units: tuple[str, ...] = ()
    max_targets = 1_000_000
    min_proc_cpu_percent = 1.0


def test_selection_never_picks_the_agents_descendants(family: dict[str, int]):
    """Over the whole live table (a pure choice, nothing is touched)."""
    table = ProcessTable(lifetime_cpu_for_unseen=True).read()
    picked = {p.pid for p in select_targets(table, Selection(), {os.getpid()})}
    assert family["unrelated"] in picked
    assert family["child"] not in picked
    assert family["grandchild"] not in picked


def test_throttle_leaves_the_agents_training_child_running(tmp_path: Path, family):
    """The controller, really SIGSTOPping, over a table of only this test's processes."""
    ours = {os.getpid(), *family.values()}
    table = ProcessTable(lifetime_cpu_for_unseen=True)
    cfg = ThrottleConfig(
        enabled=True,
        hold=0.0,
        release_hold=0.0,
        max_targets=3,
        min_proc_cpu_percent=1.0,
        method="sigstop",
        state_dir=tmp_path / "state",
        cgroup_root=tmp_path / "no-cgroups",
    )
    with Throttle(
        cfg,
        agent_pids={os.getpid()},
        proc_reader=lambda: [p for p in table.read() if p.pid in ours],
    ) as throttle:
        actions = throttle.update(99.0, alert_active=True)
        assert [(a.action, a.pid) for a in actions] == [("throttle", family["unrelated"])]
        # a signal is delivered when the target next runs: on a loaded machine, not at once
        deadline = time.monotonic() + 10
        while psutil.Process(family["unrelated"]).status() != psutil.STATUS_STOPPED:
            assert time.monotonic() < deadline, "the unrelated process was never stopped"
            time.sleep(0.01)
        for who in ("child", "grandchild"):
            assert psutil.Process(family[who]).status() != psutil.STATUS_STOPPED
    assert psutil.Process(family["unrelated"]).status() != psutil.STATUS_STOPPED
