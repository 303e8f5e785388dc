"""Evidence files: a real miner-like process from /tmp talking to a local fake pool, plus the
bounds (size, rate, count), persistence sections, error recording and the CLI."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from minerwatch.features.errors import InputError
from minerwatch.features.proctable import ProcessTable
from minerwatch.service import evidence
from minerwatch.service.cli import build_parser
from minerwatch.service.evidence import EvidenceWriter, HostPaths, fit_to_size, list_evidence, show
from minerwatch.service.indicators import indicator_counts, load_knowledge_base, scan

DAY = 86400.0

MINER_SCRIPT = r"""
import json, socket, sys
port = int(sys.argv[1])
s = socket.create_connection(("127.0.0.1", port), timeout=10)
req = {"id": 1, "method": "mining.subscribe", "params": ["kx/1.0"]}
s.sendall((json.dumps(req) + "\n").encode())
reply = s.makefile().readline()
print("subscribed" if "result" in reply else "bad reply", flush=True)
sys.stdin.readline()
"""


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def kb():
    return load_knowledge_base()


@pytest.fixture
def fake_pool(kb):
    """A TCP listener on 127.0.0.1 at the first free pool port from the knowledge base."""
    for port in sorted(kb.pool_ports):
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            srv.bind(("127.0.0.1", port))
        except OSError:
            srv.close()
            continue
        srv.listen(1)
        srv.settimeout(15)
        yield srv, port
        srv.close()
        return
    pytest.skip("every pool port from the knowledge base is busy")


@pytest.fixture
def miner(fake_pool):
    """A copy of the interpreter under /tmp, connected to the fake pool, speaking stratum."""
    srv, port = fake_pool
    d = Path(tempfile.mkdtemp(prefix="mw-ev-", dir="/tmp"))
    exe = d / "kx"
    shutil.copy2(os.path.realpath(sys.executable), exe)
    child = subprocess.Popen(
        [str(exe), "-c", MINER_SCRIPT, str(port), f"stratum+tcp://127.0.0.1:{port}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    conn = None
    try:
        conn, _ = srv.accept()
        line = conn.makefile().readline()
        assert json.loads(line)["method"] == "mining.subscribe"
        conn.sendall(b'{"id": 1, "result": [["mining.notify", "ab"], "00", 4], "error": null}\n')
        assert child.stdout.readline() == "subscribed\n"
        yield child, exe, port
    finally:
        child.kill()
        child.wait()
        if conn is not None:
            conn.close()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def empty_host(tmp_path):
    """Host paths with nothing in them, so tests do not depend on this machine's crontabs."""
    root = tmp_path / "host"
    root.mkdir()
    return HostPaths(
        crontab=root / "crontab",
        cron_dirs=(root / "cron.d", root / "spool"),
        systemd_dirs=(root / "systemd",),
        home_roots=(root / "home",),
        ld_so_preload=root / "ld.so.preload",
    )


def test_miner_from_tmp_on_pool_port_is_flagged_and_hashed(kb, miner, tmp_path, empty_host):
    child, exe, port = miner
    table = ProcessTable()  # as the responder reads the collector's busiest processes
    (facts,) = table.describe([table.lookup(child.pid)], cmdline=True, ports=True)
    assert port in facts.remote_ports
    hits = scan([facts], kb, None, None, empty_host.ld_so_preload)
    by_id = {h.indicator_id: h for h in hits if h.pid == child.pid}
    assert set(by_id) == {"exe_in_tmp", "pool_port", "stratum_url"}
    assert by_id["pool_port"].detail == str(port) and by_id["exe_in_tmp"].detail == "/tmp"
    assert indicator_counts(hits)["pool_port"] == 1

    ev_dir = tmp_path / "evidence"
    writer = EvidenceWriter(ev_dir, paths=empty_host)
    path = writer.write("ep-1", 0.97, 0.71, {"cpu_percent": 99.0}, [], [child.pid], hits)
    assert path is not None and path.parent == ev_dir
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(ev_dir.stat().st_mode) == 0o700

    doc = json.loads(path.read_text())
    proc = doc["processes"][0]
    assert proc["pid"] == child.pid and proc["name"] == "kx"
    assert proc["exe"] == str(exe) and proc["exe_deleted"] is False
    assert proc["sha256"] == hashlib.sha256(exe.read_bytes()).hexdigest()
    assert proc["size"] == exe.stat().st_size
    assert proc["cmdline"][-1] == f"stratum+tcp://127.0.0.1:{port}"
    assert proc["username"] == psutil.Process().username()
    assert proc["cwd"] == os.getcwd()
    assert proc["parents"][0]["pid"] == os.getpid()
    assert proc["parents"][-1]["pid"] == 1 or len(proc["parents"]) == 32
    assert {"proto": "tcp", "remote": f"127.0.0.1:{port}", "status": "ESTABLISHED"}.items() <= (
        proc["connections"][0].items()
    )
    listening = {(e["local"], e.get("pid")) for e in doc["listening"]}
    assert (f"127.0.0.1:{port}", os.getpid()) in listening
    recorded = {(i["indicator_id"], i["pid"]) for i in doc["indicators"]}
    assert ("pool_port", child.pid) in recorded and ("exe_in_tmp", child.pid) in recorded
    assert doc["score"] == 0.97 and doc["threshold"] == 0.71 and doc["truncated"] == []

    # The miner deletes itself; the hash still comes from /proc/<pid>/exe.
    digest = proc["sha256"]
    exe.unlink()
    writer.min_interval_s = 0
    again = json.loads(writer.write("ep-2", 0.9, 0.7, {}, [], [child.pid], []).read_text())
    assert again["processes"][0]["exe_deleted"] is True
    assert again["processes"][0]["sha256"] == digest

    listed = list_evidence(ev_dir)
    assert [e["episode_id"] for e in listed] == ["ep-1", "ep-2"]
    assert listed[0]["top_process"] == "kx" and listed[0]["top_pid"] == child.pid
    assert show(ev_dir, "ep-1")["processes"][0]["sha256"] == digest


def test_one_file_per_episode_and_rate_limit(tmp_path, empty_host):
    clock = FakeClock(1_800_000_000.0)
    w = EvidenceWriter(tmp_path / "ev", min_interval_s=300, clock=clock, paths=empty_host)
    args = (0.9, 0.7, {}, [], [], [])
    first = w.write("a", *args)
    assert first is not None and first.name == "20270115T080000Z-a.json"
    clock.now += 100
    assert w.write("b", *args) is None  # too soon after 'a'
    clock.now += 250
    assert w.write("a", *args) is None  # same episode, never twice
    assert w.write("b", *args) is not None
    clock.now += 1000
    fresh = EvidenceWriter(tmp_path / "ev", min_interval_s=300, clock=clock, paths=empty_host)
    assert fresh.write("a", *args) is None  # already on disk from an earlier run
    assert len(list_evidence(tmp_path / "ev")) == 2


def test_keeps_only_max_files_newest(tmp_path, empty_host):
    clock = FakeClock(1_800_000_000.0)
    w = EvidenceWriter(tmp_path, max_files=3, min_interval_s=0, clock=clock, paths=empty_host)
    for i in range(5):
        clock.now += 60
        assert w.write(f"ep{i}", 0.9, 0.7, {}, [], [], []) is not None
    assert [e["episode_id"] for e in list_evidence(tmp_path)] == ["ep2", "ep3", "ep4"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_persistence_sections_only_recent_files(tmp_path, empty_host):
    now = 1_800_000_000.0
    recent, old = now - 2 * DAY, now - 30 * DAY
    hp = empty_host
    hp.crontab.write_text("17 * * * * root cd / && run-parts --report /etc/cron.hourly\n")
    os.utime(hp.crontab, (old, old))
    (hp.cron_dirs[1] / "crontabs").mkdir(parents=True)
    spool = hp.cron_dirs[1] / "crontabs" / "root"
    spool.write_text("* * * * * /tmp/.x/kx -o stratum+tcp://p:3333\n")
    os.utime(spool, (recent, recent))
    unit_dir = hp.systemd_dirs[0] / "multi-user.target.wants"
    unit_dir.mkdir(parents=True)
    unit = hp.systemd_dirs[0] / "kx.service"
    unit.write_text("[Service]\nExecStart=/tmp/.x/kx\n")
    os.utime(unit, (recent, recent))
    link = unit_dir / "kx.service"
    link.symlink_to(unit)
    os.utime(link, (recent, recent), follow_symlinks=False)
    user_units = hp.home_roots[0] / "alice/.config/systemd/user"
    user_units.mkdir(parents=True)
    (user_units / "old.service").write_text("[Service]\n")
    os.utime(user_units / "old.service", (old, old))
    (user_units / "new.timer").write_text("[Timer]\n")
    os.utime(user_units / "new.timer", (recent, recent))
    hp.ld_so_preload.write_text("/usr/local/lib/libhide.so\n")

    w = EvidenceWriter(tmp_path / "ev", clock=FakeClock(now), paths=hp, recent_days=7)
    doc = json.loads(w.write("ep", 0.9, 0.7, {}, [], [], []).read_text())
    crons = {e["path"]: e for e in doc["crontabs"]}
    assert list(crons) == [str(spool)]
    assert "stratum+tcp://p:3333" in crons[str(spool)]["content"]
    units = {e["path"]: e for e in doc["systemd_units"]}
    assert set(units) == {str(unit), str(link), str(user_units / "new.timer")}
    assert units[str(link)]["link_target"] == str(unit)
    assert "ExecStart=/tmp/.x/kx" in units[str(unit)]["content"]
    assert doc["ld_so_preload"] == {
        "path": str(hp.ld_so_preload),
        "exists": True,
        "content": "/usr/local/lib/libhide.so\n",
        "entries": [
            {
                "path": "/usr/local/lib/libhide.so",
                "error": "FileNotFoundError: [Errno 2] No such file or directory: "
                "'/usr/local/lib/libhide.so'",
            }
        ],
    }


def test_file_stays_under_max_bytes_and_names_what_was_cut(tmp_path, empty_host):
    now = 1_800_000_000.0
    hp = empty_host
    hp.cron_dirs[0].mkdir()
    for i in range(40):
        f = hp.cron_dirs[0] / f"job{i:02d}"
        f.write_text(f"* * * * * root /bin/true {'x' * 3000}\n")
        os.utime(f, (now, now))
    w = EvidenceWriter(tmp_path / "ev", max_bytes_per_file=8192, clock=FakeClock(now), paths=hp)
    path = w.write("big", 0.91, 0.7, {"cpu_percent": 99.0}, [], [os.getpid()], [])
    assert path.stat().st_size <= 8192
    doc = json.loads(path.read_text())
    assert "crontabs" in doc["truncated"]
    assert doc["score"] == 0.91 and doc["episode_id"] == "big"
    assert doc["features"] == {"cpu_percent": 99.0}


def test_fit_to_size_cuts_in_order():
    doc = {
        "episode_id": "e",
        "processes": [{"pid": 1, "cmdline": ["y" * 500]}],
        "crontabs": [{"path": f"/c{i}", "content": "z" * 500} for i in range(20)],
    }
    data = fit_to_size(doc, 2000)
    assert len(data) <= 2000
    out = json.loads(data)
    assert out["truncated"] == ["crontabs"] and out["processes"] == doc["processes"]
    with pytest.raises(ValueError, match="header"):
        fit_to_size({"episode_id": "e" * 5000}, 4096)


def test_errors_are_recorded_not_raised(tmp_path, empty_host):
    def denied(**_kw):
        raise psutil.AccessDenied(pid=None)

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    empty_host.ld_so_preload.mkdir()  # unreadable as a file
    w = EvidenceWriter(
        tmp_path / "ev", paths=empty_host, users=denied, net_connections=denied, min_interval_s=0
    )
    doc = json.loads(
        w.write("e", float("nan"), 0.7, {"x": float("inf")}, [], [gone.pid], []).read_text()
    )
    assert doc["processes"] == [{"pid": gone.pid, "error": doc["processes"][0]["error"]}]
    assert "NoSuchProcess" in doc["processes"][0]["error"]
    assert [e.split(":")[0] for e in doc["errors"]] == ["listening", "logged_in"]
    assert (
        doc["ld_so_preload"]["exists"] is None
        and "IsADirectoryError" in (doc["ld_so_preload"]["error"])
    )
    assert doc["score"] is None and doc["features"] == {"x": None}


def test_hostile_episode_id_stays_in_dir(tmp_path, empty_host):
    w = EvidenceWriter(tmp_path / "ev", paths=empty_host)
    path = w.write("../../etc/passwd", 0.9, 0.7, {}, [], [], [])
    assert list((tmp_path / "ev").iterdir()) == [path]
    assert path.name.endswith("Z-_.._etc_passwd.json")
    assert show(tmp_path / "ev", "_.._etc_passwd")["episode_id"] == "_.._etc_passwd"


def run_cli(argv):
    """``minerwatch evidence ...`` as the real parser builds it, output captured."""
    args = build_parser().parse_args(argv)
    out = io.StringIO()
    code = evidence.run(args, out=out)
    return code, out.getvalue()


def test_cli_list_and_show(tmp_path, empty_host):
    ev = tmp_path / "ev"
    w = EvidenceWriter(ev, paths=empty_host)
    path = w.write("ep9", 0.875, 0.7, {}, [], [os.getpid()], [])
    code, text = run_cli(["evidence", "list", "--dir", str(ev)])
    assert code == 0 and path.name in text and "0.875" in text
    assert f"{psutil.Process().name()} (pid {os.getpid()})" in text
    code, text = run_cli(["evidence", "list", "--dir", str(ev), "--json"])
    assert json.loads(text)[0]["episode_id"] == "ep9"
    for name in (path.name, path.stem, "ep9"):
        code, text = run_cli(["evidence", "show", name, "--dir", str(ev)])
        assert code == 0 and json.loads(text)["episode_id"] == "ep9"
    for bad in ("../ev/" + path.name, ".hidden", "nope"):
        with pytest.raises(InputError):
            run_cli(["evidence", "show", bad, "--dir", str(ev)])


def test_show_takes_the_path_an_alert_annotation_gives(tmp_path, empty_host):
    """The alert's ``evidence`` annotation is the file's full path: pasted as it is, it shows
    the file; a path outside the evidence folder is still refused (exit 2, named)."""
    data = tmp_path / "data"
    path = EvidenceWriter(data / "evidence", paths=empty_host).write(
        "web1-7", 0.9, 0.7, {}, [], [], []
    )
    assert path is not None
    mw = str(Path(sys.executable).with_name("minerwatch"))
    r = subprocess.run([mw, "evidence", "show", str(path), "--data-dir", str(data)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["episode_id"] == "web1-7"
    elsewhere = tmp_path / path.name
    shutil.copy(path, elsewhere)
    r = subprocess.run([mw, "evidence", "show", str(elsewhere), "--data-dir", str(data)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and str(elsewhere) in r.stderr and "Traceback" not in r.stderr


def test_cli_list_escapes_control_characters(tmp_path, capsys):
    doc = {"format": "minerwatch-evidence", "episode_id": "e", "written_at_utc": "t", "score": 1.0}
    doc["processes"] = [{"pid": 7, "name": "evil\x1b]2;pwned\x07"}]
    (tmp_path / "20270101T000000Z-e.json").write_text(json.dumps(doc))
    (tmp_path / "20270101T000001Z-junk.json").write_text("{not json")
    code, text = run_cli(["evidence", "list", "--dir", str(tmp_path)])
    assert "\x1b" not in text and "\x07" not in text and "evil\\x1b]2;pwned\\x07" in text
    # the damaged file is named on stderr, not listed, and the listing exits 2
    assert code == 2 and "junk" not in text
    assert "junk" in capsys.readouterr().err
