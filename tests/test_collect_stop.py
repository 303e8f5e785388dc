"""``minerwatch collect`` stopped before its ``--duration`` (Ctrl-C, SIGTERM, a full disk), and
appending to what an earlier run left: through the real command, on this machine's real
processes, every file left whole, readable by ``train`` and private to its owner."""

from __future__ import annotations

import csv
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
from entry import ENTRY, run, usage_error


def lines(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def whole(out: Path) -> tuple[int, int]:
    """Both files end with a complete line, every row has its header's fields, and every
    process row belongs to a sample row; (samples, process rows)."""
    table = out.with_name(out.stem + ".procs.csv")
    for path in (out, table):
        assert path.read_bytes().endswith(b"\n"), f"{path} ends with a cut-off line"
    samples, procs = lines(out), lines(table)
    assert all(len(r) == len(samples[0]) for r in samples), out.read_text()[-300:]
    assert all(len(r) == len(procs[0]) for r in procs), table.read_text()[-300:]
    stamps = {r[0] for r in samples[1:]}
    assert {r[0] for r in procs[1:]} <= stamps
    return len(samples) - 1, len(procs) - 1


def stop_after_rows(out: Path, signum: int, rows: int = 3) -> subprocess.CompletedProcess[str]:
    """Start an hour-long ``collect``, send ``signum`` once ``rows`` samples are written."""
    proc = subprocess.Popen(
        [*ENTRY, "collect", "--interval", "200ms", "--duration", "1h", "--output", str(out)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as at a terminal: a shell's background job (CI's own run) ignores SIGINT,
        # and a Python started that way keeps ignoring it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        start = len(lines(out)) if out.exists() else 1
        deadline = time.monotonic() + 60  # a loaded machine imports slowly
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and len(lines(out)) >= start + rows:
                break
            time.sleep(0.05)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_ctrl_c_and_sigterm_keep_what_was_recorded_say_so_and_exit_130_and_143(tmp_path):
    out = tmp_path / "web-1.csv"
    r = stop_after_rows(out, signal.SIGINT)
    assert r.returncode == 130, (r.returncode, r.stderr)
    n, _ = whole(out)
    assert n >= 3 and "Traceback" not in r.stderr
    assert f"interrupted after {n} of 18000 samples; wrote {n} samples to {out}" in r.stderr
    for path in (out, tmp_path / "web-1.procs.csv"):  # process names, exes and users
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    r = stop_after_rows(out, signal.SIGTERM)  # kill, systemctl stop, timeout 7d ...
    assert r.returncode == 143, (r.returncode, r.stderr)
    total, _ = whole(out)
    more = total - n
    assert more >= 3 and "Traceback" not in r.stderr
    assert f"terminated (SIGTERM) after {more} of 18000 samples" in r.stderr
    assert sum(row[0] == "timestamp" for row in lines(out)) == 1


def test_a_closed_terminal_stops_it_as_sigterm_does_and_the_same_command_appends(tmp_path):
    """SIGHUP (the terminal of a long recording closed) ended ``collect`` by the signal's
    default, maybe mid-row, and the same command then refused to append after the cut-off
    line; now it stops as on SIGTERM: whole rows, said, exit 129, and appending goes on."""
    out = tmp_path / "web-1.csv"
    r = stop_after_rows(out, signal.SIGHUP)
    assert r.returncode == 129, (r.returncode, r.stderr)
    n, _ = whole(out)
    assert n >= 3 and "Traceback" not in r.stderr
    assert f"terminated (SIGHUP) after {n} of 18000 samples" in r.stderr
    again = run("collect", "--interval", "200ms", "--duration", "400ms", "--output", out)
    assert again.returncode == 0, again.stderr
    assert whole(out)[0] > n


def test_a_run_logged_to_a_file_says_how_far_it_got(tmp_path):
    """stderr not a terminal (nohup, a service manager): a plain line at each tenth of the
    samples, so a week's recording is not silent for a week; no terminal codes."""
    out = tmp_path / "web-1.csv"
    r = run("collect", "--interval", "100ms", "--duration", "2s", "--output", out)
    assert r.returncode == 0, r.stderr
    progress = [line for line in r.stderr.splitlines() if line.startswith("collect: ")]
    rows = len(lines(out)) - 1  # 20 unless a loaded machine let a slot pass
    assert rows >= 10 and r.stderr.splitlines()[-1].startswith(f"wrote {rows} samples to")
    assert [line.split()[1] for line in progress] == [f"{k}/20" for k in range(2, rows + 1, 2)]
    assert all(line.split()[2] == "samples" for line in progress), progress
    assert "\r" not in r.stderr and "\x1b" not in r.stderr


def test_appending_after_a_cut_off_line_is_refused_before_sampling(tmp_path):
    out = tmp_path / "web-1.csv"
    r = run("collect", "--interval", "200ms", "--duration", "400ms", "--output", out)
    assert r.returncode == 0, r.stderr
    table = tmp_path / "web-1.procs.csv"
    cut = table.read_bytes()[:-7]  # a copy stopped half-way, a collector killed mid-row
    table.write_bytes(cut)
    r = run("collect", "--interval", "200ms", "--duration", "400ms", "--output", out)
    last = len(cut.splitlines())
    usage_error(r, f"{table}:{last}: expected a complete last line")
    assert table.read_bytes() == cut and len(lines(out)) == 3


def test_a_second_recording_to_the_same_file_is_refused_naming_the_first(tmp_path):
    """Two ``collect`` runs appending to one file would interleave their rows (a sample's
    process rows away from it, timestamps out of order): the second is refused before it
    samples, naming the process that holds the file, and the first goes on."""
    out = tmp_path / "web-1.csv"
    first = subprocess.Popen(
        [*ENTRY, "collect", "--interval", "200ms", "--duration", "1h", "--output", str(out)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (out.exists() and len(lines(out)) >= 3) and time.monotonic() < deadline:
            assert first.poll() is None, first.communicate()
            time.sleep(0.05)
        r = run("collect", "--interval", "200ms", "--duration", "400ms", "--output", out)
        usage_error(r, f"{out}: expected a file no other `minerwatch collect` is appending to")
        assert f"process {first.pid} holds it" in r.stderr, r.stderr
        grown = len(lines(out))
        deadline = time.monotonic() + 60
        while len(lines(out)) < grown + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        first.terminate()
        first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 143
    samples, _ = whole(out)
    stamps = [float(r[0]) for r in lines(out)[1:]]
    assert samples >= grown + 1 and stamps == sorted(stamps)
    # once it has ended, the file is free again
    r = run("collect", "--interval", "200ms", "--duration", "400ms", "--output", out)
    assert r.returncode == 0, r.stderr


def test_the_recording_leaves_itself_out_of_the_process_table(tmp_path):
    """Sampling every 50 ms keeps ``collect`` busy enough to rank among the busiest
    processes; as the agent does with its history, it leaves itself out (a model trained on
    the recording would otherwise learn the recorder as this host's work)."""
    out = tmp_path / "web-1.csv"
    proc = subprocess.Popen(
        [*ENTRY, "collect", "--interval", "50ms", "--duration", "3s", "--output", str(out)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    samples, rows = whole(out)
    assert samples >= 20 and rows > 0
    table = lines(out.with_name("web-1.procs.csv"))
    pids = {int(r[table[0].index("pid")]) for r in table[1:]}
    assert proc.pid not in pids


#: A 24 KiB tmpfs on the output folder in collect's own mount namespace (gone with it).
ON_TMPFS = 'd=$1; shift; mount -t tmpfs -o size=24k minerwatch-test "$d" && "$@"; c=$?; \
cp -p "$d"/* "$d.copy/"; exit $c'


def private_mounts_work() -> bool:
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(
    shutil.which("unshare") is None or not private_mounts_work(),
    reason="needs unshare -m (root)",
)
def test_a_full_disk_stops_with_both_files_whole_naming_the_file(tmp_path):
    """The disk fills mid-run: exit 1 naming the file and what was kept; both files end at the
    last whole sample, so ``train`` reads them (without the cut, the process table ended in
    half a row, and ``train`` refused the whole recording, naming that line)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    (tmp_path / "disk.copy").mkdir()
    out = disk / "h.csv"
    collect = [*ENTRY, "collect", "--interval", "100ms", "--duration", "1m", "--output", str(out)]
    r = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", ON_TMPFS, "sh", str(disk),
         *collect],  # fmt: skip
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 1, (r.returncode, r.stderr)
    copy = tmp_path / "disk.copy" / "h.csv"
    n, _ = whole(copy)
    assert n >= 3, r.stderr
    assert "Traceback" not in r.stderr and "unexpected failure" not in r.stderr
    assert f"No space left on device: recording stopped after {n} of 600 samples" in r.stderr
    error = r.stderr.splitlines()[-1]  # after the progress lines
    assert error.startswith(f"minerwatch: error: {disk / 'h.'}"), r.stderr  # the file
    r = run("train", copy, "--models", tmp_path / "models", "--window", "1s")
    assert "Traceback" not in r.stderr and "procs.csv:" not in r.stderr, r.stderr
    assert "expected at least 30 complete 1s windows for host" in r.stderr, r.stderr


#: The output folder read-only, then full, in collect's own mount namespace.
UNWRITABLE = 'd=$1; shift; mount -t tmpfs -o size=256k,ro minerwatch-test "$d" && "$@"; \
echo "rc=$?"; mount -o remount,rw "$d" && (cat /dev/zero > "$d/fill") 2>/dev/null; "$@"; \
echo "rc=$?"; ls -A "$d"'


@pytest.mark.skipif(
    shutil.which("unshare") is None or not private_mounts_work(),
    reason="needs unshare -m (root)",
)
def test_a_folder_it_cannot_write_in_is_refused_before_sampling(tmp_path):
    """Read-only, or full from the start: exit 2 naming the file, nothing left behind, and
    said at once (the duration is a week), not as an unexpected failure."""
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "h.csv"
    collect = [*ENTRY, "collect", "--interval", "10s", "--duration", "7d", "--output", str(out)]
    r = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", UNWRITABLE, "sh", str(disk),
         *collect],  # fmt: skip
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.stdout.split() == ["rc=2", "rc=2", "fill"], (r.stdout, r.stderr)
    table = disk / "h.procs.csv"
    for why in ("Read-only file system", "No space left on device"):
        assert f"{table}: expected a file this user can append to, got {why}" in r.stderr
    assert "unexpected failure" not in r.stderr and "collect: " not in r.stderr
    assert "Traceback" not in r.stderr
