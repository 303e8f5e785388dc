"""Network throughput (``/proc/net/dev``) and established TCP connections (``/proc/net/snmp``).

Loopback is excluded (local traffic says nothing about talking to a mining pool). Every other
interface is summed, bridges and veths included: traffic from a container is then counted on
each hop, but consistently, which is all a per-host baseline needs. ``/proc/net`` is the view of
the collector's own network namespace.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import ClassVar

from minerwatch.features.rates import NAN, summed_rate
from minerwatch.features.sources.base import DEFAULT_PROC_ROOT, Clock, ProcSource

#: Index of each counter in the per-interface tuple returned by :func:`parse_net_dev`.
RX_BYTES, RX_PACKETS, TX_BYTES, TX_PACKETS = range(4)


def parse_net_dev(text: str) -> dict[str, tuple[int, int, int, int]]:
    """Parse ``/proc/net/dev`` into ``{iface: (rx_bytes, rx_packets, tx_bytes, tx_packets)}``.

    >>> parse_net_dev("h1\\nh2\\n  eth0: 100 2 0 0 0 0 0 0 300 4 0 0 0 0 0 0\\n")
    {'eth0': (100, 2, 300, 4)}
    """
    out: dict[str, tuple[int, int, int, int]] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        if not sep or "|" in line:
            continue  # the two header lines
        fields = rest.split()
        if len(fields) < 10:
            raise ValueError(f"/proc/net/dev: expected 16 counters, got {line!r}")
        out[name.strip()] = (int(fields[0]), int(fields[1]), int(fields[8]), int(fields[9]))
    return out


def parse_tcp_curr_estab(text: str) -> int:
    """``CurrEstab`` from ``/proc/net/snmp``: TCP connections in ESTABLISHED or CLOSE-WAIT.

    This is the kernel's own counter (RFC 1213 tcpCurrEstab, IPv4 and IPv6 together). It is
    used instead of counting lines of ``/proc/net/tcp*`` because those files walk the whole
    socket hash table and take milliseconds each even on an idle host.

    >>> parse_tcp_curr_estab("Tcp: RtoAlgorithm CurrEstab InSegs\\nTcp: 1 7 3636\\n")
    7
    """
    rows = [line.split() for line in text.splitlines() if line.startswith("Tcp:")]
    if len(rows) < 2 or "CurrEstab" not in rows[0] or len(rows[1]) != len(rows[0]):
        raise ValueError("/proc/net/snmp: no 'Tcp:' header/value lines with CurrEstab")
    return int(rows[1][rows[0].index("CurrEstab")])


class NetworkSource(ProcSource):
    """Byte and packet rates over non-loopback interfaces, and ``tcp_established``.

    The first read primes the counters and returns NaN rates.
    """

    name: ClassVar[str] = "network"
    columns: ClassVar[tuple[str, ...]] = (
        "net_rx_bps",
        "net_tx_bps",
        "net_rx_pps",
        "net_tx_pps",
        "tcp_established",
    )

    def __init__(
        self,
        *,
        proc_root: str | Path = DEFAULT_PROC_ROOT,
        clock: Clock = time.monotonic,
        exclude: Iterable[str] = ("lo",),
    ) -> None:
        super().__init__(proc_root=proc_root, clock=clock)
        self.exclude = frozenset(exclude)
        self._prev: dict[str, tuple[int, int, int, int]] | None = None
        self._prev_t = math.nan

    def read(self) -> dict[str, float]:
        """Read the counters now and return the interval's rates."""
        cur = {
            k: v
            for k, v in parse_net_dev(self._read_text("net", "dev")).items()
            if k not in self.exclude
        }
        now = self.clock()
        prev, dt = self._prev, now - self._prev_t
        self._prev, self._prev_t = cur, now
        out = {"tcp_established": float(parse_tcp_curr_estab(self._read_text("net", "snmp")))}
        for column, index in (
            ("net_rx_bps", RX_BYTES),
            ("net_tx_bps", TX_BYTES),
            ("net_rx_pps", RX_PACKETS),
            ("net_tx_pps", TX_PACKETS),
        ):
            out[column] = (
                NAN if prev is None else summed_rate(_pick(prev, index), _pick(cur, index), dt)
            )
        return out


def _pick(counters: Mapping[str, tuple[int, ...]], index: int) -> dict[str, float]:
    """One counter per interface, for :func:`minerwatch.features.rates.summed_rate`."""
    return {name: float(values[index]) for name, values in counters.items()}
