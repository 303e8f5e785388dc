"""``minerwatch throttle status|release`` run by hand, with no agent, on what a killed agent
left throttled: the journal is seeded as the agent writes it (write-ahead, then applied with
the agent's own mechanism) on processes this test started, never on anyone else's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from promtools import free_port

from minerwatch.features.proctable import ProcessTable, parse_proc_cgroup
from minerwatch.service.cgroups import Cgroup1Quota, SigStop, Throttled, find_v1_cpu_root
from minerwatch.service.throttle import JOURNAL

SCRIPT = Path(sys.executable).with_name("minerwatch")
V1 = find_v1_cpu_root(Path("/sys/fs/cgroup"))
HAVE_V1 = V1 is not None and os.access(V1, os.W_OK) and os.geteuid() == 0

#: A parent that starts a child (``sleep``) for every line it reads, and prints its pid.
SPAWNER = r"""
import subprocess, sys
for line in sys.stdin:
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    print(child.pid, flush=True)
"""


def stepped_proc_stat(step: int) -> str:
    """``/proc/stat`` as after the wall clock was set ``step`` seconds on: ``btime`` (the
    boot time in wall-clock seconds) moves with every step, the clock ticks do not."""
    return "".join(
        f"btime {int(line.split()[1]) + step}\n" if line.startswith("btime ") else line
        for line in Path("/proc/stat").read_text().splitlines(keepends=True)
    )


def minerwatch(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=60
    )


def cpu_cgroup(pid: int) -> str:
    return parse_proc_cgroup(Path(f"/proc/{pid}/cgroup").read_text())["cpu"]


def seed(state: Path, recs: list[Throttled]) -> None:
    """The journal as the agent leaves it when it is killed."""
    state.mkdir(mode=0o700, exist_ok=True)
    doc = {"version": 1, "throttled": [r.to_json() for r in recs], "exempt": []}
    (state / JOURNAL).write_text(json.dumps(doc))


@pytest.fixture
def spawner() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SPAWNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.skipif(not HAVE_V1, reason="needs a writable cgroup v1 cpu controller (root)")
@pytest.mark.parametrize("parent_exits", [False, True], ids=["parent-alive", "parent-exited"])
def test_release_moves_out_what_the_throttled_process_started(
    tmp_path: Path, spawner: subprocess.Popen[str], parent_exits: bool
) -> None:
    """A process started by a throttled one is born in its throttle group: the release must
    move it out too, else it keeps the 10 % quota for good once the journal forgets the group
    (and the group itself is left behind)."""
    assert V1 is not None and spawner.stdin is not None and spawner.stdout is not None
    mech = Cgroup1Quota(V1, 10.0, group=f"minerwatch-test-{uuid.uuid4().hex[:8]}")
    rec = mech.plan(ProcessTable().lookup(spawner.pid))
    state = tmp_path / "throttle"
    seed(state, [rec])
    child = 0
    try:
        mech.apply(rec)
        spawner.stdin.write("go\n")
        spawner.stdin.flush()
        child = int(spawner.stdout.readline())
        group = Path(rec.cgroup_dir or "")
        assert (
            cpu_cgroup(child) == cpu_cgroup(spawner.pid) == "/" + group.relative_to(V1).as_posix()
        )
        if parent_exits:
            spawner.kill()
            spawner.wait(timeout=10)
        r = minerwatch("throttle", "release", "--data-dir", tmp_path)
        assert r.returncode == 0, r.stderr
        assert cpu_cgroup(child) == "/", "the child kept the throttled process's quota"
        if not parent_exits:
            assert cpu_cgroup(spawner.pid) == "/"
        assert not group.exists() and not group.parent.exists()
        assert json.loads((state / JOURNAL).read_text())["throttled"] == []
    finally:
        if child:
            _kill(child)
        time.sleep(0.1)
        for path in (Path(rec.cgroup_dir or ""), Path(rec.cgroup_dir or "").parent):
            if path.exists():
                for pid in (path / "cgroup.procs").read_text().split():
                    (V1 / "cgroup.procs").write_text(pid)
                path.rmdir()


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_status_and_release_name_each_process_and_leave_a_reused_pid_alone(tmp_path: Path):
    """The journal lists A, which the agent paused, and B's pid, once another process's (the
    one paused exited, and its pid went to B: here B is a job someone else stopped). Status
    tells the two apart, release says what it did to each, and B stays stopped."""
    a = subprocess.Popen(["sleep", "60"])
    b = subprocess.Popen(["sleep", "60"])
    try:
        table = ProcessTable()
        rec_a, rec_b = table.lookup(a.pid), table.lookup(b.pid)
        assert rec_a is not None and rec_b is not None
        since = time.time()
        recs = [
            Throttled(a.pid, rec_a.create_time, "miner-a", "sigstop", since),
            Throttled(b.pid, rec_b.create_time - 3.0, "miner-b", "sigstop", since),
        ]
        state = tmp_path / "throttle"
        seed(state, recs)
        for p in (a, b):
            os.kill(p.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while {_state(a.pid), _state(b.pid)} != {"T"}:
            assert time.monotonic() < deadline
            time.sleep(0.01)

        status = minerwatch("throttle", "status", "--data-dir", tmp_path)
        assert status.returncode == 0, status.stderr
        line_a, line_b = (
            next(x for x in status.stdout.splitlines() if name in x)
            for name in ("miner-a", "miner-b")
        )
        assert "exited" not in line_a and "exited: pid is not that process" in line_b

        r = minerwatch("throttle", "release", "--data-dir", tmp_path)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].startswith(f"released pid {a.pid} (miner-a, sigstop since ")
        assert lines[1].startswith(f"pid {b.pid} (miner-b, sigstop since ")
        assert "had exited" in lines[1] and "dropped from the journal" in lines[1]
        assert lines[2] == "released 1 process"
        assert _state(a.pid) != "T" and _state(b.pid) == "T"  # B was never continued
        assert json.loads((state / JOURNAL).read_text())["throttled"] == []

        again = minerwatch("throttle", "release", "--data-dir", tmp_path)
        assert again.returncode == 0 and again.stdout == "released 0 processes\n"
        one = minerwatch("throttle", "release", str(a.pid), "--data-dir", tmp_path)
        assert one.returncode == 2 and "PID of a throttled process" in one.stderr
    finally:
        for p in (a, b):
            p.kill()
            p.wait(timeout=10)


def _mounts_work() -> bool:
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0 or not _mounts_work(), reason="needs unshare -m (root)")
@pytest.mark.parametrize("step", [2, -3600])
def test_a_clock_step_does_not_leave_a_paused_process_paused(tmp_path: Path, step: int):
    """Setting the wall clock (``date -s``, an NTP step) moves the boot time the kernel shows
    (``btime`` in /proc/stat) by the step, and with it every create time computed from it.
    The release is run where /proc/stat shows the stepped btime (bound over it in a mount
    namespace of its own: what every reader sees after the step). A paused process was taken
    for gone: dropped from the journal and left stopped for good."""
    victim = subprocess.Popen(["sleep", "60"])
    try:
        rec = SigStop().plan(ProcessTable().lookup(victim.pid))  # as the agent records it
        state = tmp_path / "throttle"
        seed(state, [rec])
        SigStop().apply(rec)
        deadline = time.monotonic() + 5
        while _state(victim.pid) != "T":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        (tmp_path / "stat").write_text(stepped_proc_stat(step))
        stepped = (
            'mount --bind "$0" /proc/stat && "$1" throttle status --data-dir "$2" '
            '&& exec "$1" throttle release --data-dir "$2"'
        )
        r = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", stepped,
             str(tmp_path / "stat"), str(SCRIPT), str(tmp_path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "exited" not in r.stdout, r.stdout
        assert f"released pid {victim.pid} " in r.stdout, r.stdout
        assert _state(victim.pid) != "T", "the paused process was left stopped"
    finally:
        victim.kill()
        victim.wait(timeout=10)


def _samples(port: int) -> float:
    """``minerwatch_samples_total`` of the agent on ``port`` (0 until it answers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return 0.0
    line = next((x for x in text.splitlines() if x.startswith("minerwatch_samples_total ")), "")
    return float(line.split()[1]) if line else 0.0


class SteppedStat:
    """A FIFO that serves /proc/stat afresh at every read, its ``btime`` moved by ``step``:
    bound over /proc/stat, it is what a running agent reads after the wall clock was set
    (its CPU figures still move, so it samples and ticks as usual). A thread of the test
    writes it once per open."""

    def __init__(self, path: Path, step: int) -> None:
        self.path, self.step, self.done = path, step, False
        os.mkfifo(path, 0o600)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.done:
            data = stepped_proc_stat(self.step).encode()
            fd = os.open(self.path, os.O_WRONLY)  # until a reader opens it
            try:
                while data and not self.done:
                    data = data[os.write(fd, data) :]
            except BrokenPipeError:
                pass  # the reader wanted its first lines only
            finally:
                os.close(fd)

    def close(self) -> None:
        self.done = True
        os.close(os.open(self.path, os.O_RDONLY | os.O_NONBLOCK))  # wakes the writer
        self.thread.join(timeout=10)


@pytest.mark.skipif(os.geteuid() != 0 or not _mounts_work(), reason="needs unshare -m (root)")
def test_a_clock_step_does_not_end_an_operators_exemption(tmp_path: Path):
    """``throttle release PID`` exempts a process from the agent for as long as it runs. The
    exemption named it by create time: after a clock step (``btime`` bound stepped over
    /proc/stat, as above) the agent's next tick took it for exited and dropped the
    exemption, so the agent could throttle the released process again. The agent runs
    with the throttle on in dry-run mode (it touches no process)."""
    victim = subprocess.Popen(["sleep", "60"])
    agent: subprocess.Popen[bytes] | None = None
    stat: SteppedStat | None = None
    try:
        rec = SigStop().plan(ProcessTable().lookup(victim.pid))
        state = tmp_path / "throttle"
        seed(state, [rec])
        SigStop().apply(rec)
        r = minerwatch("throttle", "release", str(victim.pid), "--data-dir", tmp_path)
        assert r.returncode == 0 and f"released pid {victim.pid} " in r.stdout, r.stderr
        exempt = json.loads((state / JOURNAL).read_text())["exempt"]
        assert [e[0] for e in exempt] == [victim.pid]
        stat = SteppedStat(tmp_path / "stat", -3600)
        port = free_port()
        serve = (
            'mount --bind "$0" /proc/stat && exec "$1" serve --data-dir "$2" --port "$3" '
            "--address 127.0.0.1 --interval 1s --throttle --throttle-dry-run --throttle-cpu 100"
        )
        with (tmp_path / "agent.log").open("wb") as log:
            agent = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", serve,
                 str(tmp_path / "stat"), str(SCRIPT), str(tmp_path), str(port)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while _samples(port) < 4:  # each sample is a throttle tick
            assert agent.poll() is None, (tmp_path / "agent.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "agent.log").read_text()
            time.sleep(0.2)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0, (tmp_path / "agent.log").read_text()
        exempt = json.loads((state / JOURNAL).read_text())["exempt"]
        assert [e[0] for e in exempt] == [victim.pid], "the operator's exemption lapsed"
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait(timeout=10)
        if stat is not None:
            stat.close()
        victim.kill()
        victim.wait(timeout=10)


#: A hand-edited record (the pid written as text), spelt as a human would leave it.
HAND_EDITED = '{ "pid" : "4242",  "create_time": 1.0, "method": "sigstop", "name": "mine" }'


@pytest.mark.parametrize("by", ["release", "serve"])
def test_a_damaged_entry_does_not_keep_the_others_paused(tmp_path: Path, by: str):
    """One record of the journal hand-edited into a wrong shape made every reader refuse the
    whole file: `throttle release` and the agent's start (exit 2) left the process the agent
    had paused stopped for good. Now the valid record is released, the damaged one named
    (file, entry, field) and kept in the file as it was, and the command exits 2."""
    victim = subprocess.Popen(["sleep", "60"])
    try:
        rec = SigStop().plan(ProcessTable().lookup(victim.pid))
        state = tmp_path / "throttle"
        seed(state, [rec])
        journal = state / JOURNAL
        text = journal.read_text().replace('"throttled": [', f'"throttled": [{HAND_EDITED}, ')
        journal.write_text(text)
        SigStop().apply(rec)
        deadline = time.monotonic() + 5
        while _state(victim.pid) != "T":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        said = f"{journal}: throttled[0].pid is a string '4242'"
        if by == "release":
            r = minerwatch("throttle", "release", "--data-dir", tmp_path)
            assert r.returncode == 2, (r.returncode, r.stderr)
            assert f"released pid {victim.pid} " in r.stdout, r.stdout
            assert said in r.stderr and "Traceback" not in r.stderr, r.stderr
        else:
            log = tmp_path / "agent.log"
            with log.open("wb") as out:
                agent = subprocess.Popen(
                    [str(SCRIPT), "serve", "--data-dir", str(tmp_path), "--port", "0",
                     "--address", "127.0.0.1", "--interval", "1s"],
                    stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip
            try:
                deadline = time.monotonic() + 60
                while "serving metrics on" not in log.read_text():
                    assert agent.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.1)
                assert _state(victim.pid) != "T", log.read_text()
                agent.send_signal(signal.SIGTERM)
                assert agent.wait(timeout=30) == 0, log.read_text()
            finally:
                if agent.poll() is None:
                    agent.kill()
                    agent.wait(timeout=10)
            assert said in log.read_text() and "Traceback" not in log.read_text()
        assert _state(victim.pid) != "T", "the valid record was not released"
        after = journal.read_text()
        assert HAND_EDITED in after, after  # kept byte for byte, for a human to put right
        assert json.loads(after)["throttled"] == [json.loads(HAND_EDITED)]
        again = minerwatch("throttle", "status", "--data-dir", tmp_path)
        assert again.returncode == 2 and said in again.stderr, again.stderr
    finally:
        victim.kill()
        victim.wait(timeout=10)
