"""Which package installed a binary, and whether the running binary is still the file it
shipped: the first thing a responder asks of an unknown process.

A tool an administrator installed (``/usr/bin/xz`` from the package ``xz-utils``, as shipped)
is rarely the miner; a binary no package owns, or one whose content differs from what its
package shipped (a replaced ``/usr/bin/top``), is worth a closer look. Read from Debian's dpkg
database: ``<package>.list`` names every path a package installed, ``<package>.md5sums`` their
MD5 (the format of ``dpkg --verify`` and ``debsums``). On merged-``/usr`` systems a package may
list ``/bin/x`` while the kernel resolves ``/usr/bin/x``, so both spellings are tried. RPM
databases are not read (that needs the rpm library or a subprocess): there, and on hosts
without dpkg, ``manager`` is None and nothing is claimed.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: Debian's dpkg database of installed files.
DPKG_INFO = Path("/var/lib/dpkg/info")
#: Folders that are one folder on merged-/usr systems (``/bin`` -> ``/usr/bin``).
_MERGED = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_DELETED = " (deleted)"


def spellings(path: str) -> list[str]:
    """The path and its merged-``/usr`` twin, if it has one.

    >>> spellings("/usr/bin/sleep"), spellings("/bin/sleep"), spellings("/opt/x")
    (['/usr/bin/sleep', '/bin/sleep'], ['/bin/sleep', '/usr/bin/sleep'], ['/opt/x'])
    """
    parts = path.split("/")
    if len(parts) > 3 and parts[1] == "usr" and parts[2] in _MERGED:
        return [path, "/" + "/".join(parts[2:])]
    if len(parts) > 2 and parts[1] in _MERGED:
        return [path, "/usr" + path]
    return [path]


def owners(paths: Iterable[str], info: Path = DPKG_INFO) -> dict[str, str | None] | None:
    """The package that installed each absolute path (None: no package); None instead of a
    mapping when there is no dpkg database to ask."""
    wanted = list(dict.fromkeys(paths))
    if not info.is_dir():
        return None
    spelled: dict[str, list[str]] = {}
    for p in wanted:
        for s in spellings(p):
            spelled.setdefault(s, []).append(p)
    found: dict[str, str | None] = dict.fromkeys(wanted)
    left = set(wanted)
    for listing in sorted(info.glob("*.list")):
        if not left:
            break
        try:
            with listing.open(encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    for path in spelled.get(line.rstrip("\n"), ()):
                        if path in left:
                            found[path] = listing.name[: -len(".list")]
                            left.discard(path)
        except OSError:
            continue
    return found


def shipped_md5(path: str, package: str, info: Path = DPKG_INFO) -> str | None:
    """The MD5 the package recorded for ``path`` (either spelling); None when not recorded."""
    relative = {s.lstrip("/") for s in spellings(path)}
    try:
        with (info / f"{package}.md5sums").open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                digest, _, name = line.rstrip("\n").partition("  ")
                if name in relative and len(digest) == 32:
                    return digest.lower()
    except OSError:
        return None
    return None


def shipped_as(md5: str, info: Path = DPKG_INFO) -> dict[str, str] | None:
    """``{"path", "package"}`` of a file some package shipped with this MD5, else None.

    A binary no package owns with the content of one a package shipped is a copy of it: a
    renamed interpreter (``/tmp/.x/kswapd0`` that is ``python3``, ``perl`` or ``node``)
    running a miner's script. Its hash then identifies the interpreter on every host, not
    the miner (:func:`~minerwatch.service.ioc.extract` leaves it out). One pass over the
    ``*.md5sums`` files (about 12 MB on a server), each searched whole before its lines.
    """
    wanted = md5.lower().encode()
    for sums in sorted(info.glob("*.md5sums")):
        try:
            data = sums.read_bytes()
        except OSError:
            continue
        if wanted not in data:
            continue
        for line in data.splitlines():
            digest, _, name = line.partition(b"  ")
            if digest.lower() == wanted and name:
                path = "/" + name.decode("utf-8", "replace")
                return {"path": path, "package": sums.name[: -len(".md5sums")]}
    return None


def read_digest(path: Path, digest: Any, cap_bytes: int) -> tuple[str | None, int | None, str]:
    """``(hex digest, bytes read, "")`` of a regular file, or ``(None, size or None, why)``.

    What is read is checked on the open file itself, and no more than the size it had when
    opened is read: a scan of ``/tmp`` checks a name, then opens it, and a process swapping
    in a FIFO or a link to ``/dev/zero`` between the two, or appending to the file without
    end, would otherwise hang the hunt, or the agent's IOC check, for good."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return None, None, f"{type(exc).__name__}: {exc}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, None, "not a regular file"
        if st.st_size > cap_bytes:
            return None, st.st_size, f"larger than {cap_bytes}"
        left = st.st_size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break  # truncated meanwhile: the bytes there were
            digest.update(chunk)
            left -= len(chunk)
    except OSError as exc:
        return None, None, f"{type(exc).__name__}: {exc}"
    finally:
        os.close(fd)
    return digest.hexdigest(), st.st_size - left, ""


def _md5(path: Path, cap_bytes: int) -> str | None:
    """As :func:`~minerwatch.service.evidence.hash_file` hashes, in dpkg's digest."""
    return read_digest(path, hashlib.md5(usedforsecurity=False), cap_bytes)[0]


def package_record(
    exe: str,
    running: Path,
    info: Path = DPKG_INFO,
    cap_bytes: int = 256 << 20,
    deleted: bool = False,
) -> dict[str, Any]:
    """``{"manager", "name", "as_shipped", "copy_of"}`` for the executable ``exe`` (as
    ``/proc/PID/exe`` resolves it), whose running content is read through ``running`` (the
    ``exe`` link, so a binary replaced on disk is compared as it runs). ``as_shipped`` is None
    when it cannot be compared: no record, a binary ``deleted`` from disk (a package upgrade
    does that to every program still running; a `` (deleted)`` suffix on ``exe`` says so too)
    or one larger than ``cap_bytes``. ``copy_of``: for a binary no package owns (deleted or
    not), the shipped file it is a byte-for-byte copy of (:func:`shipped_as`), else None."""
    path = exe.removesuffix(_DELETED)
    deleted = deleted or path != exe
    none: dict[str, Any] = {"manager": None, "name": None, "as_shipped": None, "copy_of": None}
    if not path.startswith("/"):
        return none
    found = owners([path], info)
    if found is None:
        return none
    name = found[path]
    as_shipped: bool | None = None
    copy_of: dict[str, str] | None = None
    if name is not None and not deleted:
        recorded = shipped_md5(path, name, info)
        actual = _md5(running, cap_bytes) if recorded is not None else None
        as_shipped = None if actual is None else actual == recorded
    elif name is None:
        actual = _md5(running, cap_bytes)
        copy_of = shipped_as(actual, info) if actual is not None else None
    return {"manager": "dpkg", "name": name, "as_shipped": as_shipped, "copy_of": copy_of}


def package_words(record: Any) -> str:
    """The record in a few words for reports ("-" when the evidence has none).

    >>> package_words({"manager": "dpkg", "name": "coreutils", "as_shipped": True})
    'coreutils (dpkg), as shipped'
    >>> package_words({"manager": "dpkg", "name": None, "as_shipped": None})
    'installed by no dpkg package'
    """
    if not isinstance(record, dict):
        return "-"
    if record.get("manager") != "dpkg":
        return "not known (no dpkg database on the host)"
    name = record.get("name")
    if not isinstance(name, str):
        copy = record.get("copy_of")
        if isinstance(copy, dict) and isinstance(copy.get("path"), str):
            return (
                f"installed by no dpkg package, a copy of {copy['path']} "
                f"({copy.get('package')}): a renamed system program"
            )
        return "installed by no dpkg package"
    shipped = record.get("as_shipped")
    if shipped is True:
        return f"{name} (dpkg), as shipped"
    if shipped is False:
        return f"{name} (dpkg), but the running binary differs from the file it shipped"
    return f"{name} (dpkg), not compared with the file it shipped"
