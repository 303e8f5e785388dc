"""Backfill a simulated fleet into a Prometheus TSDB, as node_exporter and process-exporter
would have scraped it, so fleet mode can be tested and measured on days of history.

Telemetry rates become counters with node_exporter's names and semantics: each counter grows
by ``rate * (t_k - t_{k-1})`` between consecutive written rows, so the rate Prometheus data
gives back over that interval is the row's rate (the simulator reads its rates over the
interval since the previous row, as a collector does). Each counter also gets a priming
sample one interval before the first row, so the first row's rate survives. What the
mapping must ignore is there too: partitions and device-mapper twins of the disk, ``lo`` and
container interfaces with heavy traffic, and CPU steal.

    python -m minerwatch.bench.fleet_backfill --data fleet/ --splits train test --output tsdb/

runs ``promtool tsdb create-blocks-from openmetrics`` on one file per host.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from minerwatch.features.io import HostSeries, read_telemetry

NODE_PORT, PROCESS_PORT = 9100, 9256
#: Busy share of the simulated CPU reported as steal (must not count).
STEAL = 0.01


def _num(x: float) -> str:
    return repr(float(x))


def _family(
    name: str, kind: str, series: Sequence[tuple[str, np.ndarray]], ts: np.ndarray
) -> Iterator[str]:
    """One metric family: ``# TYPE`` then every series' samples in time order."""
    family = name.removesuffix("_total") if kind == "counter" else name
    yield f"# TYPE {family} {kind}\n"
    stamps = [f"{t:.3f}" for t in ts]
    for labels, values in series:
        for stamp, value in zip(stamps, values.tolist(), strict=True):
            if value == value:  # NaN cells are simply not scraped
                yield f"{name}{{{labels}}} {_num(value)} {stamp}\n"


def host_openmetrics(series: HostSeries, cores: int, mem_gb: float) -> Iterator[str]:
    """The OpenMetrics text of one host (node_exporter and process-exporter targets)."""
    host = series.host
    ts = series.timestamps
    dt = np.diff(ts)
    interval = float(np.median(dt)) if dt.size else 30.0
    prime = np.concatenate([[ts[0] - interval], ts])
    step = np.concatenate([[interval], dt])  # seconds each row's rate covers

    def col(name: str) -> np.ndarray:
        return np.nan_to_num(series.column(name), nan=0.0)

    def counter(rate: np.ndarray, base: float = 1e6) -> np.ndarray:
        return base + np.concatenate([[0.0], np.cumsum(np.maximum(rate, 0.0) * step)])

    node = f'instance="{host}:{NODE_PORT}",job="node"'
    proc = f'instance="{host}:{PROCESS_PORT}",job="process"'
    ncpu = max(1, min(cores, 2))
    user, system, iowait = (
        col("cpu_user_percent"),
        col("cpu_system_percent"),
        col("cpu_iowait_percent"),
    )
    idle = np.maximum(100.0 - user - system - iowait, 0.0)
    modes = {"user": user, "system": system, "iowait": iowait, "idle": idle}
    cpu = []
    for c in range(ncpu):
        for mode, pct in modes.items():
            cpu.append((f'{node},cpu="{c}",mode="{mode}"', counter(pct / 100 * cores / ncpu)))
        cpu.append((f'{node},cpu="{c}",mode="steal"', counter(np.full(len(ts), STEAL * cores))))
    yield from _family("node_cpu_seconds_total", "counter", cpu, prime)
    gauges = {
        "node_load1": "load1",
        "node_netstat_Tcp_CurrEstab": "tcp_established",
        "node_processes_pids": "procs_total",
        "node_procs_running": "procs_running",
    }
    for metric, column in gauges.items():
        yield from _family(metric, "gauge", [(node, series.column(column))], ts)
    mem_total = mem_gb * 2**30
    yield from _family(
        "node_memory_MemTotal_bytes", "gauge", [(node, np.full(len(ts), mem_total))], ts
    )
    avail = mem_total * (1 - series.column("mem_percent") / 100)
    yield from _family("node_memory_MemAvailable_bytes", "gauge", [(node, avail)], ts)
    for metric, column in (
        ("node_disk_read_bytes_total", "disk_read_bps"),
        ("node_disk_written_bytes_total", "disk_write_bps"),
    ):
        total = counter(col(column))
        # the partition and the LVM volume on it see the same bytes: they must not count
        devices = [(f'{node},device="{d}"', total) for d in ("sda", "sda1", "dm-0")]
        yield from _family(metric, "counter", devices, prime)
    for metric, column in (
        ("node_network_receive_bytes_total", "net_rx_bps"),
        ("node_network_transmit_bytes_total", "net_tx_bps"),
        ("node_network_receive_packets_total", "net_rx_pps"),
        ("node_network_transmit_packets_total", "net_tx_pps"),
    ):
        rate = col(column)
        devices = [
            (f'{node},device="eth0"', counter(rate * 0.75)),
            (f'{node},device="ens5"', counter(rate * 0.25)),
            (f'{node},device="lo"', counter(rate * 3 + 1e5)),
            (f'{node},device="veth1a2b3c"', counter(rate * 0.5)),
            (f'{node},device="docker0"', counter(rate * 0.5)),
        ]
        yield from _family(metric, "counter", devices, prime)
    yield from _family(
        "node_context_switches_total",
        "counter",
        [(node, counter(col("ctx_switches_ps")))],
        prime,
    )
    top = col("top_proc_cpu_percent") / 100
    groups = [
        (f'{proc},groupname="busiest",mode="user"', counter(top * 0.9)),
        (f'{proc},groupname="busiest",mode="system"', counter(top * 0.1)),
        (f'{proc},groupname="sshd",mode="user"', counter(top * 0.3)),
    ]
    yield from _family("namedprocess_namegroup_cpu_seconds_total", "counter", groups, prime)


def backfill(
    data: Path, splits: Sequence[str], output: Path, promtool: str = "promtool"
) -> list[str]:
    """Write every host of ``data/<split>/`` into TSDB blocks under ``output``; the hosts."""
    labels = json.loads((data / "labels.json").read_text())
    fleet = read_telemetry([data / s for s in splits])
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for host, series in sorted(fleet.items()):
            spec = labels["hosts"][host]
            text = Path(tmp) / f"{host}.om"
            with text.open("w") as fh:
                fh.writelines(host_openmetrics(series, int(spec["cores"]), float(spec["mem_gb"])))
                fh.write("# EOF\n")
            subprocess.run(
                [promtool, "tsdb", "create-blocks-from", "openmetrics", str(text), str(output)],
                check=True,
                capture_output=True,
                timeout=600,
            )
    return sorted(fleet)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, required=True, help="folder from 'minerwatch simulate'"
    )
    parser.add_argument("--splits", nargs="+", default=["train", "test"])
    parser.add_argument("--output", type=Path, required=True, help="Prometheus data folder")
    args = parser.parse_args(argv)
    hosts = backfill(args.data, args.splits, args.output, shutil.which("promtool") or "promtool")
    print(f"backfilled {len(hosts)} hosts into {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
