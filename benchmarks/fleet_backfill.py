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

writes the OpenMetrics text of ``--hosts-per-block`` hosts at a time (read one host at a time,
never the whole fleet) and runs ``promtool tsdb create-blocks-from openmetrics`` on it,
``--jobs`` batches in parallel. promtool re-parses its whole input once per block it cuts;
``--max-block-duration`` (a hidden promtool flag) lets it cut one block per batch in one pass:
25x less CPU on a host-week. The batches' blocks all cover the same days, and Prometheus
merges overlapping blocks (a vertical compaction) a minute after it starts, which a benchmark
must not time: so the backfill then starts Prometheus once on the result and waits until that
merge is done (``--no-settle`` skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from minerwatch.features.io import HostSeries, expand_inputs, read_telemetry
from minerwatch.features.procs import is_procs_file

NODE_PORT, PROCESS_PORT = 9100, 9256
#: Busy share of the simulated CPU reported as steal (must not count).
STEAL = 0.01
#: promtool cuts blocks of the largest range up to this (486 h): a week in one pass.
MAX_BLOCK_DURATION = "1000h"
#: promtool holds its whole input in memory: ~250 MB per host-week at 15 s.
HOSTS_PER_BLOCK = 8


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


def host_files(data: Path, splits: Sequence[str]) -> list[list[Path]]:
    """Telemetry files grouped by name (one simulated host's splits), process tables left out."""
    groups: dict[str, list[Path]] = {}
    for path in expand_inputs([data / s for s in splits]):
        if not is_procs_file(path):
            groups.setdefault(path.name.removesuffix(path.suffix), []).append(path)
    return [groups[name] for name in sorted(groups)]


def create_blocks(
    text: Path, output: Path, promtool: str = "promtool", max_block_duration: str | None = None
) -> None:
    """promtool on one OpenMetrics file; without the flag if this promtool does not know it."""
    base = [promtool, "tsdb", "create-blocks-from", "openmetrics"]
    flags = [f"--max-block-duration={max_block_duration}"] if max_block_duration else []
    for command in ([*base, *flags, str(text), str(output)], [*base, str(text), str(output)]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
        if done.returncode == 0:
            return
        if not flags or "max-block-duration" not in done.stderr:
            break
        print(f"promtool refused {flags[0]}, cutting 2-hour blocks", file=sys.stderr)
    raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr[-2000:]}")


def _backfill_batch(
    batch: int,
    groups: list[list[Path]],
    specs: dict[str, Any],
    output: Path,
    promtool: str,
    max_block_duration: str | None,
    tmp: Path,
) -> list[str]:
    """Hosts of ``groups`` into one OpenMetrics file, then promtool: the hosts written."""
    t0 = time.perf_counter()
    text = tmp / f"batch-{batch}.om"
    hosts: list[str] = []
    with text.open("w") as fh:
        for files in groups:
            for host, series in sorted(read_telemetry(files).items()):
                spec = specs[host]
                fh.writelines(host_openmetrics(series, int(spec["cores"]), float(spec["mem_gb"])))
                hosts.append(host)
                print(f"  {host}: {len(series.timestamps)} rows as text", file=sys.stderr)
        fh.write("# EOF\n")
    if not hosts:  # header-only files (a split with no rows): nothing for promtool
        text.unlink()
        return hosts
    t1 = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        create_blocks(text, output, promtool, max_block_duration)
    finally:
        text.unlink()
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    promtool_cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    print(
        f"file {batch}: {len(hosts)} hosts ({hosts[0]}..{hosts[-1]}): text {t1 - t0:.1f} s, "
        f"promtool {time.perf_counter() - t1:.1f} s ({promtool_cpu:.1f} s CPU)",
        file=sys.stderr,
    )
    return hosts


def backfill(
    data: Path,
    splits: Sequence[str],
    output: Path,
    promtool: str = "promtool",
    *,
    jobs: int = 1,
    hosts_per_block: int = HOSTS_PER_BLOCK,
    max_block_duration: str | None = MAX_BLOCK_DURATION,
) -> list[str]:
    """Write every host of ``data/<split>/`` into TSDB blocks under ``output``; the hosts.

    One block per ``hosts_per_block`` hosts (with ``max_block_duration``), ``jobs`` promtool
    runs at a time. The blocks overlap in time: see :func:`settle`.
    """
    labels = json.loads((data / "labels.json").read_text())
    groups = host_files(data, splits)
    batches = [groups[i : i + hosts_per_block] for i in range(0, len(groups), hosts_per_block)]
    output.mkdir(parents=True, exist_ok=True)
    hosts: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            (i, b, labels["hosts"], output, promtool, max_block_duration, Path(tmp))
            for i, b in enumerate(batches)
        ]
        if jobs <= 1 or len(batches) <= 1:
            for a in args:
                hosts.extend(_backfill_batch(*a))
        else:  # spawn: no fork of a parent that may hold threads
            with ProcessPoolExecutor(
                min(jobs, len(batches)), mp_context=get_context("spawn")
            ) as ex:
                for done in ex.map(_backfill_batch, *zip(*args, strict=True)):
                    hosts.extend(done)
    return sorted(hosts)


def block_ranges(tsdb: Path) -> list[tuple[int, int]]:
    """(minTime, maxTime) of each block Prometheus keeps, in order (not those marked deletable)."""
    out = []
    for meta in tsdb.glob("*/meta.json"):
        if ".tmp" in meta.parent.name:
            continue
        m = json.loads(meta.read_text())
        if not m.get("compaction", {}).get("deletable"):
            out.append((int(m["minTime"]), int(m["maxTime"])))
    return sorted(out)


def overlapping(ranges: Sequence[tuple[int, int]]) -> bool:
    """Whether any two of the sorted ``ranges`` (half-open, as in Prometheus) overlap."""
    return any(b[0] < a[1] for a, b in zip(ranges, ranges[1:], strict=False))


def _metric(url: str, name: str) -> float | None:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def settle(tsdb: Path, timeout: float = 7200.0, poll: float = 5.0) -> int:
    """Start Prometheus on ``tsdb`` and wait until it has merged every overlapping block and
    loaded the result, so a later start does not compact while it is being timed. The blocks.
    """
    from minerwatch.bench.fleet_train import start_prometheus

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_prometheus(tsdb, Path(tmp))
        try:
            deadline = time.monotonic() + timeout
            while True:
                ranges = block_ranges(tsdb)
                if not overlapping(ranges) and _metric(url, "prometheus_tsdb_blocks_loaded") == len(
                    ranges
                ):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{tsdb}: blocks still overlap after {timeout:.0f} s")
                time.sleep(poll)
            merged = _metric(url, "prometheus_tsdb_vertical_compactions_total") or 0.0
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    print(
        f"settled: {len(ranges)} block(s) in {time.perf_counter() - t0:.0f} s "
        f"({merged:.0f} vertical compactions)",
        file=sys.stderr,
    )
    return len(ranges)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, required=True, help="folder from 'minerwatch simulate'"
    )
    parser.add_argument("--splits", nargs="+", default=["train", "test"])
    parser.add_argument("--output", type=Path, required=True, help="Prometheus data folder")
    parser.add_argument(
        "--jobs", type=int, default=min(2, os.cpu_count() or 1), help="promtool runs at a time"
    )
    parser.add_argument(
        "--hosts-per-block",
        type=int,
        default=HOSTS_PER_BLOCK,
        help=f"hosts per OpenMetrics file (default {HOSTS_PER_BLOCK}; ~250 MB RAM per host-week)",
    )
    parser.add_argument(
        "--max-block-duration",
        default=MAX_BLOCK_DURATION,
        help=f"promtool's (default {MAX_BLOCK_DURATION}: one pass); 'none': its 2-hour blocks",
    )
    parser.add_argument(
        "--no-settle", action="store_true", help="do not start Prometheus to merge the blocks"
    )
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    hosts = backfill(
        args.data,
        args.splits,
        args.output,
        shutil.which("promtool") or "promtool",
        jobs=args.jobs,
        hosts_per_block=args.hosts_per_block,
        max_block_duration=None if args.max_block_duration == "none" else args.max_block_duration,
    )
    print(
        f"backfilled {len(hosts)} hosts into {args.output} in {time.perf_counter() - t0:.0f} s",
        file=sys.stderr,
    )
    if not args.no_settle:
        settle(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
