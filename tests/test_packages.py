"""Which package shipped a process's binary, and is it still that file: real processes, the
host's own dpkg database, and a database the test writes for a binary it replaces."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minerwatch.service.evidence import EvidenceWriter, HostPaths
from minerwatch.service.packages import (
    DPKG_INFO,
    owners,
    package_record,
    package_words,
    spellings,
)

SLEEP = os.path.realpath(shutil.which("sleep") or "/usr/bin/sleep")


def start(exe: str | Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([str(exe), "60"])
    for _ in range(100):  # until the kernel has swapped in the new image
        if os.path.realpath(f"/proc/{proc.pid}/exe") != os.path.realpath(sys.executable):
            break
        time.sleep(0.01)
    return proc


def record(pid: int, root: Path | None = None) -> dict:
    paths = HostPaths.under(root) if root is not None else HostPaths()
    writer = EvidenceWriter(Path("/nonexistent"), paths=paths)
    return writer.process_record(pid)


@pytest.fixture
def copy(tmp_path):
    exe = tmp_path / "sleep-copy"
    shutil.copy2(SLEEP, exe)
    return exe


def fake_dpkg(root: Path, package: str, path: str, content: bytes) -> None:
    """A dpkg database under ``root`` in which ``package`` installed ``path`` as ``content``."""
    info = root / "var/lib/dpkg/info"
    info.mkdir(parents=True)
    (info / f"{package}.list").write_text(f"/.\n{os.path.dirname(path)}\n{path}\n")
    md5 = hashlib.md5(content, usedforsecurity=False).hexdigest()
    (info / f"{package}.md5sums").write_text(f"{md5}  {path.lstrip('/')}\n")


@pytest.mark.skipif(not (DPKG_INFO / "coreutils.list").exists(), reason="not a dpkg host")
def test_a_packaged_binary_and_a_copy_of_it(copy):
    """``sleep`` as coreutils shipped it (found under either /usr spelling); the same bytes run
    from a temp folder are installed by no package."""
    assert owners(spellings(SLEEP)) == dict.fromkeys(spellings(SLEEP), "coreutils")
    for exe, expected in (
        (SLEEP, {"manager": "dpkg", "name": "coreutils", "as_shipped": True, "copy_of": None}),
        (copy, {"manager": "dpkg", "name": None, "as_shipped": None}),
    ):
        proc = start(exe)
        try:
            rec = record(proc.pid)
        finally:
            proc.kill()
            proc.wait()
        got = dict(rec["package"])
        if exe == copy:  # the same bytes as the shipped sleep: a renamed system program
            shipped = got.pop("copy_of")
            assert shipped["package"] == "coreutils" and shipped["path"] in spellings(SLEEP)
            assert "a copy of" in package_words(rec["package"])
        assert rec["exe"] == str(exe) and got == expected, rec


def test_a_replaced_binary_differs_from_what_its_package_shipped(copy, tmp_path):
    """The package says it shipped other bytes at that path (a ``top`` swapped for a miner):
    as_shipped is False; with the right bytes it is True."""
    for content, shipped in ((b"the package's own build", False), (copy.read_bytes(), True)):
        root = tmp_path / f"root-{shipped}"
        fake_dpkg(root, "procps", str(copy), content)
        proc = start(copy)
        try:
            rec = record(proc.pid, root)
        finally:
            proc.kill()
            proc.wait()
        assert rec["package"] == {
            "manager": "dpkg", "name": "procps", "as_shipped": shipped, "copy_of": None
        }  # fmt: skip


def test_a_deleted_binary_is_not_compared_and_no_database_claims_nothing(copy, tmp_path):
    root = tmp_path / "root"
    fake_dpkg(root, "procps", str(copy), copy.read_bytes())
    proc = start(copy)
    try:
        copy.unlink()  # as a package upgrade leaves every program still running
        rec = record(proc.pid, root)
        assert rec["exe_deleted"] and rec["sha256"]  # still hashed through the link
        assert rec["package"] == {
            "manager": "dpkg", "name": "procps", "as_shipped": None, "copy_of": None
        }  # fmt: skip
        bare = record(proc.pid, tmp_path / "no-dpkg")
        assert bare["package"] == {
            "manager": None, "name": None, "as_shipped": None, "copy_of": None
        }  # fmt: skip
    finally:
        proc.kill()
        proc.wait()


def test_a_deleted_copy_of_a_shipped_file_that_no_package_owns_is_named(copy, tmp_path):
    """A package shipped these bytes elsewhere (``/usr/bin/perl``); the running copy, owned by
    no package and deleted from disk as droppers do, is named a copy of it; other bytes are
    not."""
    root = tmp_path / "root"
    fake_dpkg(root, "perl-base", "/usr/bin/perl", copy.read_bytes())
    proc = start(copy)
    try:
        copy.unlink()
        rec = record(proc.pid, root)
        assert rec["package"] == {
            "manager": "dpkg", "name": None, "as_shipped": None,
            "copy_of": {"path": "/usr/bin/perl", "package": "perl-base"},
        }  # fmt: skip
        other = tmp_path / "other"
        fake_dpkg(other, "perl-base", "/usr/bin/perl", b"another build")
        assert record(proc.pid, other)["package"]["copy_of"] is None
    finally:
        proc.kill()
        proc.wait()


def test_unreadable_or_relative_paths_claim_nothing(tmp_path):
    assert package_record("", tmp_path / "x", tmp_path)["manager"] is None
    assert package_record("[kworker]", tmp_path / "x", tmp_path)["manager"] is None
    assert owners(["/usr/bin/x"], tmp_path / "missing") is None


def test_docstring_examples_hold():
    import doctest

    from minerwatch.service import packages

    assert doctest.testmod(packages).failed == 0
