"""Small synthetic telemetry for core tests (the realistic one is minerwatch.bench.simulate)."""

from __future__ import annotations

import numpy as np

from minerwatch.features.io import HostSeries, from_arrays
from minerwatch.features.schema import METRIC_COLUMNS

T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC


def host_series(
    host: str = "web-1",
    days: float = 3.0,
    interval: float = 10.0,
    seed: int = 0,
    start: float = T0,
    plateau: tuple[float, float] | None = None,
    burst: tuple[float, float] | None = None,
) -> HostSeries:
    """A 4-core host with a daily curve; ``plateau``/``burst`` = (offset s, duration s)."""
    rng = np.random.default_rng(seed)
    n = int(days * 86400 / interval)
    ts = start + np.arange(n) * interval
    hour = (ts % 86400) / 3600
    load = 15 + 12 * np.sin(2 * np.pi * (hour - 8) / 24) + rng.normal(0, 3, n)
    cols = list(METRIC_COLUMNS)
    v = np.zeros((n, len(cols)))

    def put(name: str, x: np.ndarray) -> None:
        v[:, cols.index(name)] = x

    cpu = np.clip(load, 0, 100)
    top = np.clip(cpu * 1.2 + rng.normal(0, 4, n), 0, 400)
    for window, level, top_level in ((plateau, 97.0, 390.0), (burst, 95.0, 120.0)):
        if window is not None:
            sel = (ts >= start + window[0]) & (ts < start + window[0] + window[1])
            cpu[sel] = level + rng.normal(0, 1, sel.sum())
            top[sel] = top_level
    put("cpu_percent", np.clip(cpu, 0, 100))
    put("cpu_user_percent", cpu * 0.8)
    put("cpu_system_percent", cpu * 0.2)
    put("cpu_iowait_percent", np.abs(rng.normal(0.5, 0.3, n)))
    put("load1", cpu / 25)
    put("mem_percent", 40 + rng.normal(0, 1, n))
    put("disk_read_bps", np.abs(rng.normal(2e5, 5e4, n)))
    put("disk_write_bps", np.abs(rng.normal(4e5, 1e5, n)))
    pps = np.abs(load * 80 + rng.normal(0, 60, n))
    put("net_rx_pps", pps)
    put("net_tx_pps", pps * 0.9)
    put("net_rx_bps", pps * 800)
    put("net_tx_bps", pps * 600)
    put("tcp_established", np.round(20 + load))
    put("procs_total", np.round(180 + rng.normal(0, 2, n)))
    put("procs_running", np.round(1 + cpu / 30))
    put("ctx_switches_ps", np.abs(2000 + load * 100 + rng.normal(0, 100, n)))
    put("top_proc_cpu_percent", top)
    put("cpu_cores", np.full(n, 4.0))
    return from_arrays(host, ts, v, tuple(cols), source=f"{host}.csv")


def quiet_host(host: str, start: float, seconds: float, interval: float, seed: int) -> HostSeries:
    """A nearly idle host (about 1 % CPU, gamma-distributed): a model of it alerts on any busy
    core, which the agent tests that start a real ``minerwatch serve`` rely on."""
    base = host_series(host, days=seconds / 86400, interval=interval, seed=seed, start=start)
    cpu = 0.75 + np.random.default_rng(seed).gamma(1.5, 0.6, len(base.values))
    v = base.values.copy()
    cols = list(base.columns)
    for name, x in (
        ("cpu_percent", cpu),
        ("cpu_user_percent", cpu * 0.7),
        ("cpu_system_percent", cpu * 0.3),
        ("top_proc_cpu_percent", cpu * 2.5),
    ):
        v[:, cols.index(name)] = x
    return from_arrays(host, base.timestamps, v, base.columns, source=f"{host}.csv")


def write_csv(path, series_list) -> None:
    """Write series in the telemetry CSV format."""
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "host", *series_list[0].columns])
        for s in series_list:
            for t, row in zip(s.timestamps, s.values, strict=True):
                w.writerow([f"{t:.3f}", s.host, *(f"{x:.6g}" for x in row)])
