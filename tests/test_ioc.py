"""IOC files: extraction and matching on literals, then the real ``minerwatch ioc extract`` and
``minerwatch hunt`` against a running process whose binary is a unique copy under /tmp."""

from __future__ import annotations

import csv
import doctest
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from minerwatch.service import ioc as ioc_module
from minerwatch.service.evidence import EvidenceWriter, HostPaths
from minerwatch.service.ioc import HostSnapshot, Ioc, ProcessSeen, extract, find_hits, ioc_id

SCRIPT = Path(sys.executable).with_name("minerwatch")
H1, H2 = "a" * 64, "b" * 64


def minerwatch(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120
    )


def unique_binary(exe: Path, program: str = "sleep") -> str:
    """A copy of ``program`` at ``exe`` with 32 random bytes after it (ELF ignores trailing
    bytes): a binary whose sha256, returned, is nobody else's."""
    shutil.copy2(shutil.which(program) or f"/bin/{program}", exe)
    with exe.open("ab") as fh:
        fh.write(os.urandom(32))
    return hashlib.sha256(exe.read_bytes()).hexdigest()


def assert_running_and_deleted(hunt: subprocess.CompletedProcess[str], pid: int) -> None:
    """``hunt --json`` hit the process ``pid`` by hash and path, its binary gone from disk."""
    assert hunt.returncode == 1, (hunt.stdout, hunt.stderr)
    hits = json.loads(hunt.stdout)["hits"]
    mine = [h for h in hits if h["pid"] == pid]
    assert {h["kind"] for h in mine} == {"sha256", "paths"}, hits
    assert all("(deleted from disk)" in h["where"] for h in mine), mine


EVIDENCE = {
    "format": "minerwatch-evidence",
    "hostname": "web-1",
    "episode_id": "ep1",
    "indicators": [{"indicator_id": "pool_port", "reason": "r", "pid": 42, "detail": "3333"}],
    "processes": [
        {"pid": 7, "exe": "/usr/bin/python3", "sha256": H2, "connections": []},
        {
            "pid": 42,
            "exe": "/tmp/.x/kworkerds",
            "exe_deleted": False,
            "sha256": H1,
            "connections": [
                {"remote": "203.0.113.9:3333", "local": "10.0.0.5:40000"},
                {"remote": "", "local": "0.0.0.0:8080"},
            ],
        },
    ],
    "crontabs": [
        {
            "path": "/var/spool/cron/crontabs/www-data",
            "content": "# m h dom mon dow\n*/5 * * * * /tmp/.x/kworkerds -o pool\n"
            "0 1 * * * backup\n",
        },
        {"path": "/etc/cron.d/other", "content": "* * * * * root run-parts x\n"},
    ],
    "ld_so_preload": {"path": "/etc/ld.so.preload", "exists": True, "content": "/usr/lib/x.so\n"},
    "systemd_units": [
        {"path": "/etc/systemd/system/kw.service", "content": "ExecStart=/tmp/.x/kworkerds\n"},
        {"path": "/etc/systemd/system/nginx.service", "content": "ExecStart=/usr/sbin/nginx\n"},
    ],
}


def test_extract_keeps_the_suspect_only():
    ioc = extract(EVIDENCE, "e.json")
    assert ioc.sha256 == (H1,)  # the python3 of the system is not the suspect
    assert ioc.pools == ("203.0.113.9:3333",)
    assert ioc.cron_lines == ("*/5 * * * * /tmp/.x/kworkerds -o pool",)
    assert ioc.units == ("kw.service",)
    assert set(ioc.paths) == {
        "/tmp/.x/kworkerds",
        "/var/spool/cron/crontabs/www-data",
        "/etc/systemd/system/kw.service",
        "/usr/lib/x.so",  # named in ld.so.preload
    }
    assert ioc.source["suspect_pids"] == [42] and ioc.source["hostname"] == "web-1"
    assert (
        ioc.id
        == extract(EVIDENCE).id
        == ioc_id(
            {k: list(getattr(ioc, k)) for k in ("sha256", "paths", "pools", "cron_lines", "units")}
        )
    )


def test_extract_without_indicators_takes_the_top_process_but_never_a_system_binary():
    doc = {**EVIDENCE, "indicators": [], "ld_so_preload": {"exists": False}}
    assert extract(doc).empty()  # the top process is /usr/bin/python3
    doc["processes"] = [{**EVIDENCE["processes"][0], "exe_deleted": True}]
    assert extract(doc).sha256 == (H2,)  # unless its binary was deleted from disk


def test_extract_asks_the_package_record_what_is_on_every_host():
    def suspect(exe: str, **package: object) -> dict[str, object]:
        record = {"manager": "dpkg", "name": None, "as_shipped": None, "copy_of": None}
        return {**EVIDENCE, "ld_so_preload": {"exists": False}, "crontabs": [],
                "systemd_units": [], "processes": [{**EVIDENCE["processes"][1], "exe": exe,
                "connections": [], "package": {**record, **package}}]}  # fmt: skip

    mine = extract(suspect("/usr/local/bin/kdevtmpfsi"))  # no package's, under /usr
    assert (mine.sha256, mine.paths) == ((H1,), ("/usr/local/bin/kdevtmpfsi",))
    python = extract(suspect("/usr/local/bin/python3.12"))  # a container image's python
    assert python.empty() and "an interpreter no package owns" in python.source["left_out"][0]
    shipped = extract(suspect("/opt/vendor/agent", name="vendor-agent", as_shipped=True))
    assert shipped.empty()  # a package's file as shipped: on every host that installed it
    assert "shipped unchanged by the package vendor-agent" in shipped.source["left_out"][0]
    changed = extract(suspect("/usr/sbin/cron", name="cron", as_shipped=False))
    assert (changed.sha256, changed.paths) == ((H1,), ())  # replaced: its hash is the miner's
    bare = dict(suspect("/usr/local/bin/x"), processes=[{**EVIDENCE["processes"][1],
                "exe": "/usr/local/bin/x", "connections": []}])  # fmt: skip
    assert extract(bare).empty()  # no package record (no dpkg): the system's folders


def test_find_hits_on_literals():
    ioc = Ioc(
        "ioc-1",
        sha256=(H1,),
        paths=("/tmp/.x/kworkerds",),
        pools=("203.0.113.9:3333",),
        cron_lines=("*/5 * * * * /tmp/.x/kworkerds",),
        units=("kw.service",),
    )
    clean = HostSnapshot(
        processes=[ProcessSeen(1, "init", "/sbin/init", H2)],
        files={"/tmp/other": H2},
        connections=[(5, "203.0.113.9:443")],
        cron_lines=[("/etc/crontab", "0 * * * * root true")],
        unit_files=["/etc/systemd/system/nginx.service"],
    )
    assert find_hits(ioc, clean) == []
    dirty = HostSnapshot(
        processes=[ProcessSeen(9, "kx", "/var/tmp/kx", H1)],
        files={"/tmp/.x/kworkerds": None, "/dev/shm/y": H1},
        connections=[(9, "203.0.113.9:3333")],
        cron_lines=[("/etc/cron.d/x", "  */5 * * * * /tmp/.x/kworkerds  ")],
        unit_files=["/etc/systemd/system/kw.service"],
    )
    kinds = sorted(h.kind for h in find_hits(ioc, dirty))
    assert kinds == ["cron_lines", "paths", "pools", "sha256", "sha256", "units"]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("{", ["bad.json:1: expected an IOC file"]),
        ("", ["bad.json: expected an IOC file", "got an empty file"]),
        (
            '{"format": "minerwatch-ioc",\n "version": 1,\n "id": "x",\n "sha256": ["ab"',
            ["bad.json:4:"],
        ),
        ('{"format": "minerwatch-evidence"}', ["'minerwatch ioc extract' turns it into an IOC"]),
        ('{"format": "other"}', ["bad.json", "minerwatch-ioc"]),
        ('{"format": "minerwatch-ioc", "version": 1, "id": "x", "sha256": ["zz"]}', ["sha256"]),
        ('{"format": "minerwatch-ioc", "version": 1, "id": "x", "paths": "p"}', ["'paths'"]),
        ('{"format": "minerwatch-ioc", "version": 1, "id": "x"}', ["at least one indicator"]),
    ],
)
def test_hunt_refuses_a_bad_ioc_file(tmp_path, content, words):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    r = minerwatch("hunt", bad)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in r.stderr


def test_extract_refuses_what_is_not_evidence(tmp_path):
    bad = tmp_path / "not-evidence.json"
    bad.write_text('{"format": "something-else"}')
    r = minerwatch("ioc", "extract", bad)
    assert (
        r.returncode == 2 and "not-evidence.json" in r.stderr and "minerwatch-evidence" in r.stderr
    )
    missing = minerwatch("ioc", "extract", tmp_path / "nope.json")
    assert missing.returncode == 2 and "nope.json" in missing.stderr


def test_extract_then_hunt_a_running_copy(tmp_path):
    """A process runs a binary copied to /tmp (made unique: its hash is nobody else's)."""
    drop = Path(tempfile.mkdtemp(prefix="mw-ioc-", dir="/tmp"))
    exe = drop / "kworkerds"
    digest = unique_binary(exe)
    proc = subprocess.Popen([str(exe), "300"])
    try:
        ev = EvidenceWriter(tmp_path / "data" / "evidence", min_interval_s=0).write(
            "ep1", 0.9, 0.7, {}, [], [proc.pid], []
        )
        assert ev is not None
        ioc_file = tmp_path / "ioc.json"
        r = minerwatch("ioc", "extract", ev, "--output", ioc_file)
        assert r.returncode == 0, r.stderr
        doc = json.loads(ioc_file.read_text())
        assert doc["format"] == "minerwatch-ioc" and doc["sha256"] == [digest]
        assert stat.S_IMODE(ioc_file.stat().st_mode) == 0o600  # cron lines, paths: private
        assert str(exe) in doc["paths"]
        printed = minerwatch("ioc", "extract", ev)
        assert json.loads(printed.stdout)["id"] == doc["id"]
        # by the name 'evidence list' prints, or the episode id, in the agent's data folder
        for name in (ev.name, "ep1"):
            found = minerwatch("ioc", "extract", name, "--data-dir", tmp_path / "data")
            assert found.returncode == 0, found.stderr
            assert json.loads(found.stdout)["sha256"] == [digest]
        unknown = minerwatch("ioc", "extract", "ep2", "--data-dir", tmp_path / "data")
        assert unknown.returncode == 2 and "ep2" in unknown.stderr, unknown.stderr
        assert "an existing evidence file" in unknown.stderr

        hit = minerwatch("hunt", ioc_file, "--scan")
        assert hit.returncode == 1, (hit.stdout, hit.stderr)
        assert f"pid {proc.pid}" in hit.stdout and digest in hit.stdout
    finally:
        proc.kill()
        proc.wait(timeout=10)
    # stopped, but its binary is still on disk: a hit by path (and by hash in a scanned dir)
    still = minerwatch("hunt", ioc_file, "--json", "--scan", drop)
    assert still.returncode == 1, still.stderr
    kinds = {h["kind"] for h in json.loads(still.stdout)["hits"]}
    assert kinds == {"paths", "sha256"}
    shutil.rmtree(drop)
    # in a PID namespace of its own, where it can read every process (the machine the tests
    # run on may hold processes even root may not trace: hunt would say so and exit 2)
    clean = subprocess.run(
        [*own_pid_namespace(), str(SCRIPT), "hunt", str(ioc_file), "--scan", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert clean.returncode == 0, (clean.stdout, clean.stderr)
    assert "clean" in clean.stdout and clean.stderr == ""


def own_pid_namespace() -> list[str]:
    """The command prefix that runs a command alone in a new PID namespace and /proc."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux)")
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    cmd = ["unshare", *user, "--pid", "--fork", "--mount-proc", "--mount"]
    if subprocess.run([*cmd, "true"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("unshare --pid does not work here")
    return cmd


def test_hunt_never_says_clean_when_it_could_not_read_the_host(tmp_path):
    """Run as another user, hunt cannot read root's executables: the miner, running as root
    from a folder that user may not enter, is no hit, and "clean" would be a lie."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run hunt as another user")
    drop = Path(tempfile.mkdtemp(prefix="mw-ioc-", dir="/tmp"))  # 0700: nobody may enter
    shared = Path(tempfile.mkdtemp(prefix="mw-ioc-shared-", dir="/tmp"))
    shared.chmod(0o755)
    exe = drop / "kworkerds"
    unique_binary(exe)
    miner = subprocess.Popen([str(exe), "300"])
    try:
        ev = EvidenceWriter(tmp_path / "evidence", min_interval_s=0).write(
            "ep1", 0.9, 0.7, {}, [], [miner.pid], []
        )
        assert ev is not None
        ioc_file = shared / "ioc.json"
        assert minerwatch("ioc", "extract", ev, "--output", ioc_file).returncode == 0
        ioc_file.chmod(0o644)
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(SCRIPT)]
        for extra in ([], ["--json"]):
            r = subprocess.run(
                [*nobody, "hunt", str(ioc_file), "--scan", str(shared), *extra],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert r.returncode == 2, (r.stdout, r.stderr)
            assert "Traceback" not in r.stderr and "clean:" not in r.stdout
            assert "could not check the executables of" in r.stderr, r.stderr
            assert "permission denied (run as root)" in r.stderr
            assert f"could not check {drop}: " not in r.stderr  # not scanned, not claimed
            assert f"minerwatch: error: {ioc_file}: expected to check the whole host" in r.stderr
        assert any("permission denied" in e for e in json.loads(r.stdout)["errors"])
        # root reads it all: the hit, and what it could not read said beside it
        hit = minerwatch("hunt", ioc_file, "--scan", shared)
        assert hit.returncode == 1 and f"pid {miner.pid} (kworkerds)" in hit.stdout, hit
    finally:
        miner.kill()
        miner.wait(timeout=10)
        shutil.rmtree(drop)
        shutil.rmtree(shared)


def test_hunt_hashes_a_binary_without_its_execute_bit(tmp_path):
    """A miner dropped 0644 (run through the dynamic loader, which needs no execute bit, or
    waiting to be) is still the binary of the IOC: the scan hashes ELF files, not only
    executable ones."""
    drop = tmp_path / "shm"
    drop.mkdir()
    exe = drop / ".x"
    digest = unique_binary(exe)
    exe.chmod(0o644)
    (drop / "notes.txt").write_text("not a binary\n")
    ioc_file = tmp_path / "ioc.json"
    doc = {"format": "minerwatch-ioc", "version": 1, "id": "ioc-noexec", "sha256": [digest]}
    ioc_file.write_text(json.dumps(doc))
    r = minerwatch("hunt", ioc_file, "--json", "--scan", drop)
    assert r.returncode == 1, (r.stdout, r.stderr)
    hits = json.loads(r.stdout)["hits"]
    assert [(h["kind"], h["where"]) for h in hits] == [("sha256", f"file {exe}")]


def test_extract_keeps_a_binary_no_package_owns_in_a_system_folder(tmp_path):
    """A miner installed as /usr/local/lib/.../kdevtmpfsi: no package owns it, so its hash
    and path are the miner's, though it lies under /usr (it was left out: nothing to hunt)."""
    if not Path("/var/lib/dpkg/info").is_dir():
        pytest.skip("no dpkg database")
    try:
        drop = Path(tempfile.mkdtemp(prefix="mw-ioc-", dir="/usr/local/lib"))
    except OSError:
        pytest.skip("cannot write under /usr/local/lib")
    exe = drop / "kdevtmpfsi"
    digest = unique_binary(exe)
    miner = subprocess.Popen([str(exe), "300"])
    try:
        ev = EvidenceWriter(tmp_path / "evidence", min_interval_s=0).write(
            "ep1", 0.9, 0.7, {}, [], [miner.pid], []
        )
        assert ev is not None
        r = minerwatch("ioc", "extract", ev)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert (doc["sha256"], doc["paths"]) == ([digest], [str(exe)])
    finally:
        miner.kill()
        miner.wait(timeout=10)
        shutil.rmtree(drop)


def test_extract_by_name_in_a_folder_the_user_cannot_read_says_so():
    """Not "no such file": the evidence is there, this user may not read the folder."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run as another user")
    data = Path(tempfile.mkdtemp(prefix="mw-ioc-data-", dir="/tmp"))
    try:
        data.chmod(0o755)
        ev = EvidenceWriter(data / "evidence", min_interval_s=0).write(
            "ep1", 0.9, 0.7, {}, [], [os.getpid()], []
        )
        assert ev is not None and stat.S_IMODE(ev.parent.stat().st_mode) == 0o700
        r = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(SCRIPT),
             "ioc", "extract", "ep1", "--data-dir", str(data)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert (
            f"{data / 'evidence'}: expected an evidence folder this user can read (run as root)"
            ", got permission denied"
        ) in r.stderr, r.stderr
    finally:
        shutil.rmtree(data)


def test_hunt_names_a_running_binary_deleted_from_disk(tmp_path):
    """A miner deletes its binary once started: the hunt still finds it by hash and path,
    and says the file is gone (a responder looking for it on disk would find nothing)."""
    drop = Path(tempfile.mkdtemp(prefix="mw-ioc-", dir="/tmp"))
    exe = drop / "kdevtmpfsi"
    digest = unique_binary(exe)
    ioc_file = tmp_path / "ioc.json"
    doc = {"format": "minerwatch-ioc", "version": 1, "id": "ioc-del", "sha256": [digest],
           "paths": [str(exe)]}  # fmt: skip
    ioc_file.write_text(json.dumps(doc))
    miner = subprocess.Popen([str(exe), "300"])  # returns once the exec succeeded
    try:
        exe.unlink()
        assert_running_and_deleted(
            minerwatch("hunt", ioc_file, "--json", "--scan", drop), miner.pid
        )
    finally:
        miner.kill()
        miner.wait(timeout=10)
        shutil.rmtree(drop)


@pytest.mark.skipif(not Path("/var/lib/dpkg/info/coreutils.md5sums").exists(), reason="no dpkg")
def test_a_renamed_system_program_gives_its_path_not_its_hash(tmp_path):
    """The miner runs as an unmodified copy of a shipped program (here ``sleep``; in the wild a
    renamed ``python3`` or ``perl`` running its script): the hash would name that program on
    every host, so the IOC keeps the path only and says why; the hunt then finds the copy and
    leaves the system's own ``sleep`` alone."""
    drop = Path(tempfile.mkdtemp(prefix="mw-ioc-", dir="/tmp"))
    exe = drop / "kswapd0"
    system = os.path.realpath(shutil.which("sleep") or "/bin/sleep")
    shutil.copy2(system, exe)
    miner, bystander = subprocess.Popen([str(exe), "300"]), subprocess.Popen([system, "300"])
    try:
        ev = EvidenceWriter(tmp_path / "evidence", min_interval_s=0).write(
            "ep1", 0.9, 0.7, {}, [], [miner.pid], []
        )
        assert ev is not None
        ioc_file = tmp_path / "ioc.json"
        r = minerwatch("ioc", "extract", ev, "--output", ioc_file)
        assert r.returncode == 0, r.stderr
        doc = json.loads(ioc_file.read_text())
        assert doc["sha256"] == [] and doc["paths"] == [str(exe)]
        assert f"left out the sha256 of {exe}: a copy of " in r.stderr, r.stderr
        assert "(coreutils)" in r.stderr and doc["source"]["left_out"]
        hunt = minerwatch("hunt", ioc_file, "--json", "--scan", drop)
        assert hunt.returncode == 1, hunt.stderr
        hits = json.loads(hunt.stdout)["hits"]
        assert {h["kind"] for h in hits} == {"paths"}
        assert {h["value"] for h in hits} == {str(exe)}
        assert any(f"pid {miner.pid} " in h["where"] for h in hits), hits
        assert not any(f"pid {bystander.pid} " in h["where"] for h in hits), hits
    finally:
        for p in (miner, bystander):
            p.kill()
            p.wait(timeout=10)
        shutil.rmtree(drop)


LOADER = Path("/lib64/ld-linux-x86-64.so.2")


@pytest.mark.skipif(not LOADER.exists(), reason="needs glibc's x86-64 dynamic loader")
def test_a_binary_run_through_the_dynamic_loader_is_named_hashed_and_hunted(tmp_path):
    """``ld-linux-x86-64.so.2 /tmp/.x/kx`` (a way to run a binary from a noexec mount, or
    without its execute bit): the kernel names the loader as the executable. The process
    table, the evidence, ``ioc extract`` and ``hunt`` named and hashed the loader (a system
    file on every host; the report's remediation then offered to delete it); now the program
    the loader runs, read through its mapping even once deleted from disk."""
    drop = Path(tempfile.mkdtemp(prefix="mw-ld-", dir="/tmp")) / ".x"
    drop.mkdir()
    exe = drop / "kx"
    digest = unique_binary(exe, "yes")  # busy: among the top processes
    exe.chmod(0o644)  # not even executable: the loader maps it all the same
    proc = subprocess.Popen([str(LOADER), str(exe)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while str(exe) not in Path(f"/proc/{proc.pid}/maps").read_text():
            assert time.monotonic() < deadline, "the loader never mapped the program"
            time.sleep(0.05)
        out = tmp_path / "host.csv"
        r = minerwatch("collect", "--interval", "200ms", "--duration", "400ms", "--output", out)
        assert r.returncode == 0, r.stderr
        ev = EvidenceWriter(tmp_path / "data" / "evidence", min_interval_s=0).write(
            "ep1", 0.9, 0.7, {}, [], [proc.pid], []
        )
        assert ev is not None
        (rec,) = [p for p in json.loads(ev.read_text())["processes"] if p["pid"] == proc.pid]
        assert rec["exe"] == str(exe) and rec["sha256"] == digest
        assert Path(rec["loader"]).name == LOADER.name
        ioc_file = tmp_path / "ioc.json"
        r = minerwatch("ioc", "extract", ev, "--output", ioc_file)
        assert r.returncode == 0, r.stderr
        doc = json.loads(ioc_file.read_text())
        assert doc["sha256"] == [digest] and str(exe) in doc["paths"]
        shutil.rmtree(drop.parent)  # gone from disk: only the running process holds it
        hunt = minerwatch("hunt", ioc_file, "--json", "--scan", tmp_path)
        assert_running_and_deleted(hunt, proc.pid)
    finally:
        proc.kill()
        proc.wait(timeout=10)
        shutil.rmtree(drop.parent, ignore_errors=True)
    # the process table collect wrote names the program too (a model learns it, the
    # disguise indicators see a binary under a hidden /tmp folder)
    with out.with_name("host.procs.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["pid"] == str(proc.pid)]
    assert rows and {r["exe"] for r in rows} == {str(exe)}, rows


def test_extract_leaves_out_the_suspects_loopback_connections(tmp_path):
    """A miner that reaches its pool through a local proxy or tunnel (127.0.0.1:3333): that
    address on another host is that host's own service, so a hunt would hit whatever listens
    there. It is left out, and said; the real pool address stays."""
    doc = json.loads(json.dumps(EVIDENCE))
    doc["processes"][1]["connections"] += [
        {"remote": "127.0.0.1:3333", "local": "127.0.0.1:40001"},
        {"remote": "[::1]:4444", "local": "[::1]:40002"},
        {"remote": "[::ffff:127.0.0.1]:5555", "local": "[::ffff:127.0.0.1]:40003"},
    ]
    ev = tmp_path / "evidence.json"
    ev.write_text(json.dumps(doc))
    r = minerwatch("ioc", "extract", ev)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pools"] == ["203.0.113.9:3333"]
    for remote in ("127.0.0.1:3333", "[::1]:4444", "[::ffff:127.0.0.1]:5555"):
        assert f"the address {remote}: this host's own" in r.stderr, r.stderr


def shipped_library() -> str:
    """A library libc6 shipped, as it lies on this host (a regular file, unchanged)."""
    sums = Path("/var/lib/dpkg/info/libc6:amd64.md5sums")
    if not sums.is_file():
        pytest.skip("no dpkg record of libc6")
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        lib = Path("/" + name)
        if name.endswith(".so.6") and lib.is_file() and not lib.is_symlink():
            if hashlib.md5(lib.read_bytes()).hexdigest() == digest:
                return str(lib)
    pytest.skip("no libc6 library as shipped")


def test_extract_leaves_a_packages_preloaded_library_out(tmp_path):
    """``ld.so.preload`` may hold a package's library on purpose (snoopy's logger, an
    allocator): it is on every host that installed the package, so the IOC names only the
    rootkit's library beside it, by path and hash (it held every path listed there)."""
    shipped = shipped_library()
    try:
        drop = Path(tempfile.mkdtemp(prefix="mw-ioc-", dir="/usr/local/lib"))
    except OSError:
        pytest.skip("cannot write under /usr/local/lib")
    try:
        hider = drop / "libhide.so"
        digest = unique_binary(hider)
        preload = tmp_path / "ld.so.preload"
        preload.write_text(f"{shipped}  # the logger\n{hider}\n")
        ev = EvidenceWriter(
            tmp_path / "evidence", min_interval_s=0, paths=HostPaths(ld_so_preload=preload)
        ).write("ep1", 0.9, 0.7, {}, [], [], [])
        assert ev is not None
        r = minerwatch("ioc", "extract", ev)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert (doc["paths"], doc["sha256"]) == ([str(hider)], [digest])
        assert any(f"{shipped}: shipped unchanged by the package libc6" in note
                   for note in doc["source"]["left_out"]), doc["source"]  # fmt: skip
    finally:
        shutil.rmtree(drop)


def test_a_pool_named_by_name_is_extracted_and_hunted_by_name(tmp_path):
    """A miner given its pool by name (``-o pool.example.org:3333``) connects to whatever
    address the name resolves to there and then: the IOC keeps the name beside the address,
    and the hunt finds the name on another miner's command line (it found nothing: the IOC
    held only today's address of the first host's connection)."""
    pool = "pool.example.org:3333"
    args = ["-o", pool, "--url=stratum+tcp://198.51.100.7:4444", "-o", "127.0.0.1:3334"]
    miner = subprocess.Popen(["sh", "-c", "sleep 300", "kx", *args])
    try:
        ev = EvidenceWriter(tmp_path / "evidence", min_interval_s=0).write(
            "ep1", 0.9, 0.7, {}, [], [miner.pid], []
        )
        assert ev is not None
        r = minerwatch("ioc", "extract", ev, "--output", tmp_path / "ioc.json")
        assert r.returncode == 0, r.stderr
        doc = json.loads((tmp_path / "ioc.json").read_text())
        assert (doc["pool_hosts"], doc["pools"]) == ([pool], ["198.51.100.7:4444"])
        assert "the pool 127.0.0.1:3334 on the command line: this host's own" in r.stderr
        hunt = minerwatch("hunt", tmp_path / "ioc.json", "--json")
        assert hunt.returncode == 1, (hunt.stdout, hunt.stderr)
        hits = json.loads(hunt.stdout)["hits"]
        assert {"kind": "pool_hosts", "value": pool, "pid": miner.pid,
                "where": f"pid {miner.pid} (sh) names it on its command line"} in hits  # fmt: skip
        assert "matched on command lines only; --resolve" in hunt.stderr
    finally:
        miner.kill()
        miner.wait(timeout=10)


def test_hunt_matches_a_pool_name_whole_not_inside_another(tmp_path):
    """The pool ``pool.example.org:3333`` is named by ``-o POOL.example.org:3333`` and a
    stratum URL, but not by ``mypool.example.org:3333`` or port ``33330``: other hosts'
    pools, which a substring match took for it (a hunt's hit leads a responder to isolate)."""
    pool = "pool.example.org:3333"
    naming = [["-o", "POOL.example.org:3333"], ["--url=stratum+tcp://w@pool.example.org:3333/x"]]
    others = [["-o", "mypool.example.org:3333"], ["-o", "pool.example.org:33330"]]
    procs = [subprocess.Popen(["sh", "-c", "sleep 300", "kx", *a]) for a in naming + others]
    try:
        ioc_file = tmp_path / "ioc.json"
        ioc_file.write_text(json.dumps({"format": "minerwatch-ioc", "version": 1,
                                        "id": "ioc-named", "pool_hosts": [pool]}))  # fmt: skip
        r = minerwatch("hunt", ioc_file, "--json")
        assert r.returncode == 1, (r.stdout, r.stderr)
        hit = {h["pid"] for h in json.loads(r.stdout)["hits"] if h["kind"] == "pool_hosts"}
        assert hit == {p.pid for p in procs[: len(naming)]}, (hit, [p.pid for p in procs])
        assert doctest.testmod(ioc_module).failed == 0
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=10)


def test_hunt_resolve_matches_connections_to_a_pools_address_today(tmp_path):
    """``--resolve`` looks the pool's name up and matches connections to its addresses (a
    miner configured by file names no pool on its command line); without it, a note says
    the connection was not matched."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    client = subprocess.Popen(
        [sys.executable, "-c", f"import socket,time; s=socket.create_connection(('127.0.0.1',"
         f" {port})); print('up', flush=True); time.sleep(300)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert client.stdout is not None and client.stdout.readline() == "up\n"
        ioc_file = tmp_path / "ioc.json"
        pool = f"localhost:{port}"
        ioc_file.write_text(json.dumps({"format": "minerwatch-ioc", "version": 1,
                                        "id": "ioc-named", "pool_hosts": [pool]}))  # fmt: skip
        plain = minerwatch("hunt", ioc_file, "--json")
        assert plain.returncode != 1 and json.loads(plain.stdout)["hits"] == [], plain
        r = minerwatch("hunt", ioc_file, "--json", "--resolve")
        assert r.returncode == 1, (r.stdout, r.stderr)
        hits = json.loads(r.stdout)["hits"]
        assert {"kind": "pool_hosts", "value": pool, "pid": client.pid,
                "where": f"connection of pid {client.pid} to 127.0.0.1:{port}"} in hits  # fmt: skip
    finally:
        client.kill()
        client.wait(timeout=10)
        server.close()


def test_hunt_for_pools_alone_needs_no_root(tmp_path):
    """Every user may read every socket's remote address (``/proc/net/tcp``), so an IOC of
    pools alone is checked whole without root: another user's connection to the pool is
    found, and without one the host is clean (it said "could not check the executables of
    80 processes", exit 2: executables the IOC does not ask about)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run as another user")
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))  # root's connection to the "pool"
    folder = Path(tempfile.mkdtemp(prefix="mw-ioc-", dir="/tmp"))
    try:
        folder.chmod(0o755)

        def hunt(pool: str) -> subprocess.CompletedProcess[str]:
            ioc_file = folder / f"{pool.replace(':', '-')}.json"
            ioc_file.write_text(json.dumps({"format": "minerwatch-ioc", "version": 1,
                                            "id": "ioc-pools", "pools": [pool]}))  # fmt: skip
            ioc_file.chmod(0o644)
            return subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(SCRIPT),
                 "hunt", str(ioc_file), "--json"],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip

        found = hunt(f"127.0.0.1:{port}")
        assert found.returncode == 1, (found.stdout, found.stderr)
        assert [h["kind"] for h in json.loads(found.stdout)["hits"]] == ["pools"]
        clean = hunt("203.0.113.250:3333")
        assert clean.returncode == 0, (clean.stdout, clean.stderr)
        assert json.loads(clean.stdout) == {"ioc": "ioc-pools", "hits": [], "errors": []}
    finally:
        client.close()
        server.close()
        shutil.rmtree(folder)


def test_hashing_never_hangs_on_what_a_file_was_swapped_for(tmp_path):
    """A scan checks a name in /tmp, then opens it to hash it; a process that swaps in a
    FIFO, a link to /dev/zero or a file it appends to without end between the two hung the
    hunt (and the agent's IOC check, which stopped scoring) for good: reading /dev/zero or a
    FIFO never ends. The hash refuses what is not a regular file and reads no more than the
    size the file had when opened."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code = (
        "import json, sys; from pathlib import Path; "
        "from minerwatch.service.evidence import hash_file; "
        "print(json.dumps([hash_file(Path(p), 1 << 30) for p in sys.argv[1:]]))"
    )
    r = subprocess.run([sys.executable, "-c", code, "/dev/zero", str(fifo)],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [{"sha256": None, "hash_error": "not a regular file"}] * 2
