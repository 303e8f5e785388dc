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
