"""Remote port of every connected TCP socket, by socket inode, from netlink sock_diag.

This is what ``ss`` uses: the kernel dumps only the sockets that exist, where reading
``/proc/net/tcp`` walks the whole hash table and costs milliseconds per read. Together with
a process's socket inodes (its ``/proc/<pid>/fd`` links) it tells which remote ports the
process talks to; mining pools speak stratum over TCP.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, seq, pid
_DIAG_REQ = struct.Struct("=BBBBI48s")  # family, protocol, ext, pad, states, sockid
#: inet_diag_msg: family, state, timer, retrans, sport, dport (big endian), src, dst, ifindex,
#: cookie, expires, rqueue, wqueue, uid, inode
_DIAG_MSG = struct.Struct("=BBBB2s2s16s16sI8sIIIII")


def diag_messages(data: bytes) -> tuple[list[tuple[Any, ...]], bool]:
    """The ``inet_diag_msg`` fields of every socket in one chunk of a netlink sock_diag dump,
    and whether the dump is complete (the one walker of the kernel's messages).

    Raises OSError for a netlink error message, ValueError for a malformed one.
    """
    found: list[tuple[Any, ...]] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            raise ValueError(f"netlink message of length {length}")
        body = offset + _NLMSGHDR.size
        if kind == NLMSG_DONE:
            return found, True
        if kind == NLMSG_ERROR:
            errno = -struct.unpack_from("=i", data, body)[0]
            raise OSError(errno, f"sock_diag: {os.strerror(errno)}")
        if kind == SOCK_DIAG_BY_FAMILY and length >= _NLMSGHDR.size + _DIAG_MSG.size:
            found.append(_DIAG_MSG.unpack_from(data, body))
        offset += (length + 3) & ~3
    return found, False


def diag_dump(
    sock: socket.socket, family: int, protocol: int, states: int, seq: int
) -> Iterator[tuple[Any, ...]]:
    """Ask for a dump of the sockets of ``family``/``protocol`` in ``states`` (a bit mask of
    kernel socket states) and yield each one's ``inet_diag_msg`` fields."""
    req = _DIAG_REQ.pack(family, protocol, 0, 0, states, b"")
    header = _NLMSGHDR.pack(
        _NLMSGHDR.size + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0
    )
    sock.sendto(header + req, (0, 0))
    done = False
    while not done:
        messages, done = diag_messages(sock.recv(1 << 16))
        yield from messages


def parse_inet_diag(data: bytes) -> tuple[dict[int, int], bool]:
    """``{socket inode: remote port}`` from one chunk of a netlink inet_diag dump, and whether
    the dump is complete. Sockets without a remote end (listening) are left out.

    Raises OSError for a netlink error message.
    """
    messages, done = diag_messages(data)
    return dict(_remote_port(fields) for fields in messages if _remote_port(fields)[0]), done


def _remote_port(fields: tuple[Any, ...]) -> tuple[int, int]:
    """(inode, remote port) of one socket; inode 0 (TIME_WAIT, owned by no process) or no
    remote end give (0, 0)."""
    dport, inode = int.from_bytes(fields[5], "big"), fields[14]
    return (inode, dport) if dport and inode else (0, 0)


def tcp_remote_ports_by_inode() -> dict[int, int]:
    """Remote port of every connected TCP socket (IPv4 and IPv6) in this network namespace.

    Raises OSError where netlink is unavailable (old kernel, seccomp); callers fall back.
    """
    ports: dict[int, int] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as sock:
        sock.settimeout(2.0)
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
            for fields in diag_dump(sock, family, socket.IPPROTO_TCP, 0xFFFFFFFF, seq):
                inode, dport = _remote_port(fields)
                if inode:
                    ports[inode] = dport
    return ports
