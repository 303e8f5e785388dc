"""The telemetry format: one row per sample, ``timestamp``, ``host``, then numeric metrics.

This is a stable contract (collector, simulator, benchmarks and other tools depend on it);
bump ``SCHEMA_VERSION`` on any incompatible change.
"""

from __future__ import annotations

SCHEMA_VERSION = 2
#: Versions still read as they are: 1 had no process tables (the process features are then
#: absent from a model, or unknown when scoring with a model that has them).
READABLE_VERSIONS = (1, 2)

TIMESTAMP = "timestamp"
HOST = "host"

#: Metric columns the collector writes, in order, with their units.
METRICS: dict[str, str] = {
    "cpu_percent": "busy CPU, percent of the whole host (0-100)",
    "cpu_user_percent": "user + nice CPU, percent of the whole host",
    "cpu_system_percent": "system + irq + softirq CPU, percent of the whole host",
    "cpu_iowait_percent": "CPU idle waiting on I/O, percent of the whole host",
    "load1": "1-minute load average (runnable + uninterruptible tasks)",
    "mem_percent": "memory in use, percent of total",
    "disk_read_bps": "bytes read from block devices per second",
    "disk_write_bps": "bytes written to block devices per second",
    "net_rx_bps": "bytes received per second, all non-loopback interfaces",
    "net_tx_bps": "bytes sent per second, all non-loopback interfaces",
    "net_rx_pps": "packets received per second",
    "net_tx_pps": "packets sent per second",
    "tcp_established": "TCP connections in state ESTABLISHED",
    "procs_total": "number of processes",
    "procs_running": "processes in state running",
    "ctx_switches_ps": "context switches per second",
    "top_proc_cpu_percent": "CPU of the busiest single process, percent of one core (as top)",
    "cpu_cores": "CPUs the kernel runs (100 % of the host = this many cores)",
}

METRIC_COLUMNS: tuple[str, ...] = tuple(METRICS)
TELEMETRY_COLUMNS: tuple[str, ...] = (TIMESTAMP, HOST, *METRIC_COLUMNS)

#: Columns only the on-host agent records beside the metrics (they need the process table
#: and the miner-indicator knowledge base, which a plain telemetry file does not have).
AGENT_METRICS: dict[str, str] = {
    "indicator_hits": "miner indicators matched among the busiest processes (count)",
}
AGENT_COLUMNS: tuple[str, ...] = (*METRIC_COLUMNS, *AGENT_METRICS)

#: Columns that are a percentage of the whole host (or of its memory): at most 100 %.
PERCENT_OF_HOST: tuple[str, ...] = (
    "cpu_percent",
    "cpu_user_percent",
    "cpu_system_percent",
    "cpu_iowait_percent",
    "mem_percent",
)
#: How far above 100 a percentage of the whole host may read (rounding: user + system is
#: rounded on its own, a counter read a little late) before it is impossible.
PERCENT_TOLERANCE = 0.5

#: The values each known column can take, (lowest, highest), both inclusive. Every known column
#: is a rate, a count, a percentage or a load, none of which can be negative; percentages of the
#: whole host cannot exceed 100 (plus :data:`PERCENT_TOLERANCE`). ``top_proc_cpu_percent`` is
#: of one core and reads up to 100 x cores, so it has no upper bound here. A value outside its
#: range is read as missing (a gap), as a non-finite one is; columns not listed (extra columns
#: of other data sets) are read as they are.
VALID_RANGES: dict[str, tuple[float, float]] = {
    name: (0.0, 100.0 + PERCENT_TOLERANCE if name in PERCENT_OF_HOST else float("inf"))
    for name in (*METRIC_COLUMNS, *AGENT_METRICS)
}


def expected_range(name: str) -> str:
    """What :data:`VALID_RANGES` allows in column ``name``, in words (for messages)."""
    low = VALID_RANGES[name][0]
    if name in PERCENT_OF_HOST:
        return f"a percentage from {low:g} to 100"
    return f"a number >= {low:g} ({METRICS.get(name) or AGENT_METRICS[name]})"
