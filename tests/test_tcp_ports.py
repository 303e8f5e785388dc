"""Netlink sock_diag parsing on literal kernel messages, and one real dump."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from minerwatch.features.tcp_ports import (
    _DIAG_MSG,
    _NLMSGHDR,
    NLMSG_DONE,
    NLMSG_ERROR,
    SOCK_DIAG_BY_FAMILY,
    parse_inet_diag,
    tcp_remote_ports_by_inode,
)


def diag_message(dport, inode, state=1):
    """One inet_diag_msg as the kernel lays it out (see linux/inet_diag.h)."""
    body = _DIAG_MSG.pack(
        socket.AF_INET,
        state,
        0,
        0,
        (40000).to_bytes(2, "big"),
        dport.to_bytes(2, "big"),
        bytes(16),
        bytes(16),
        0,
        bytes(8),
        0,
        0,
        0,
        0,
        inode,
    )
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, 2, 1, 0) + body


def test_parse_inet_diag_on_literal_messages():
    data = (
        diag_message(3333, 42)
        + diag_message(0, 43, state=10)  # listening: no remote end
        + diag_message(443, 0, state=6)  # TIME_WAIT: no owner
    )
    assert parse_inet_diag(data) == ({42: 3333}, False)
    done = _NLMSGHDR.pack(20, NLMSG_DONE, 2, 1, 0) + bytes(4)
    assert parse_inet_diag(diag_message(14444, 7) + done) == ({7: 14444}, True)
    error = _NLMSGHDR.pack(36, NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -13) + bytes(16)
    with pytest.raises(PermissionError):
        parse_inet_diag(error)
    with pytest.raises(ValueError, match="length 3"):
        parse_inet_diag(_NLMSGHDR.pack(3, SOCK_DIAG_BY_FAMILY, 0, 1, 0))


def test_a_real_dump_sees_a_local_connection():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    try:
        try:
            ports = tcp_remote_ports_by_inode()
        except OSError as exc:
            pytest.skip(f"no netlink sock_diag here: {exc}")
        inode = os.fstat(client.fileno()).st_ino
        assert ports[inode] == port
    finally:
        conn.close()
        client.close()
        server.close()
