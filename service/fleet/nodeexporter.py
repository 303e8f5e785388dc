"""node_exporter (and process-exporter) metrics -> the telemetry format, one host at a time.

:data:`MAPPING` is the one table from standard metric names to telemetry columns;
``datasets/README.md`` prints it and a test keeps the two equal. The arithmetic follows the
agent's sources so a model means the same thing whichever way its data came: a counter that
goes down is a reset and gives NaN for that interval (:mod:`minerwatch.features.rates`), disks
are whole disks only (:data:`minerwatch.features.sources.disk.DEFAULT_IGNORE`), CPU shares
leave steal out of the denominator (:func:`minerwatch.features.sources.cpu.cpu_shares`).
Samples are read raw, with their scrape timestamps: one row per node_exporter scrape.
Unlike the agent, which sums every interface but ``lo``, virtual interfaces (bridges, veths,
overlays; :data:`VIRTUAL_INTERFACES`) are left out here, so a container's traffic is counted
once, on the physical interface. A column whose metrics the fleet does not collect is
absent (not zero); :class:`HostTelemetry` says which.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from minerwatch.features.errors import InputError
from minerwatch.features.io import HostSeries, from_arrays
from minerwatch.features.procs import TOP_PROCESSES, ProcessRows
from minerwatch.features.schema import METRIC_COLUMNS
from minerwatch.features.sources.disk import DEFAULT_IGNORE as NOT_WHOLE_DISK
from minerwatch.service.fleet.promclient import TIMESTAMP, VALUE, PromClient

if TYPE_CHECKING:
    import pandas as pd

#: Interfaces that carry traffic some physical interface also carries, or none at all.
VIRTUAL_INTERFACES = re.compile(
    r"^(?:lo|veth.*|docker\d*|br-.*|virbr.*|cni.*|flannel.*|cali.*|vxlan.*|tun\d*|tap.*"
    r"|kube-.*|cilium.*|lxc.*|vnet\d+|dummy\d*|genev_sys.*|weave.*|ovs-.*)$"
)

#: node_cpu_seconds_total modes in the host's own CPU time (steal is someone else's).
CPU_USER = ("user", "nice")
CPU_SYSTEM = ("system", "irq", "softirq")
CPU_ACCOUNTED = (*CPU_USER, *CPU_SYSTEM, "idle", "iowait")


@dataclass(frozen=True)
class Column:
    """One telemetry column: the metrics it needs and how it is computed (for the docs)."""

    name: str
    metrics: tuple[str, ...]
    how: str


_CPU_MODES = "`mode`: user+nice, system+irq+softirq, iowait, idle"
_NET = "rate per `device`, summed; not `lo` nor virtual interfaces"

#: The mapping, in telemetry column order. Every column of the format has a row.
MAPPING: tuple[Column, ...] = (
    Column("cpu_percent", ("node_cpu_seconds_total",), f"(user+system) / accounted; {_CPU_MODES}"),
    Column("cpu_user_percent", ("node_cpu_seconds_total",), "(user+nice) / accounted"),
    Column("cpu_system_percent", ("node_cpu_seconds_total",), "(system+irq+softirq) / accounted"),
    Column("cpu_iowait_percent", ("node_cpu_seconds_total",), "iowait / accounted"),
    Column("load1", ("node_load1",), "as is"),
    Column(
        "mem_percent",
        ("node_memory_MemTotal_bytes", "node_memory_MemAvailable_bytes"),
        "100 * (MemTotal - MemAvailable) / MemTotal",
    ),
    Column(
        "disk_read_bps",
        ("node_disk_read_bytes_total",),
        "rate per `device`, summed over whole disks (no partitions, dm-, md, loop)",
    ),
    Column("disk_write_bps", ("node_disk_written_bytes_total",), "as disk_read_bps"),
    Column("net_rx_bps", ("node_network_receive_bytes_total",), _NET),
    Column("net_tx_bps", ("node_network_transmit_bytes_total",), _NET),
    Column("net_rx_pps", ("node_network_receive_packets_total",), _NET),
    Column("net_tx_pps", ("node_network_transmit_packets_total",), _NET),
    Column("tcp_established", ("node_netstat_Tcp_CurrEstab",), "as is (netstat collector)"),
    Column("procs_total", ("node_processes_pids",), "as is (processes collector, off by default)"),
    Column("procs_running", ("node_procs_running",), "as is"),
    Column("ctx_switches_ps", ("node_context_switches_total",), "rate"),
    Column(
        "top_proc_cpu_percent",
        ("namedprocess_namegroup_cpu_seconds_total",),
        "process-exporter: rate per `groupname` summed over `mode`, the largest x 100; "
        "the latest scrape at most one interval old",
    ),
)

#: Metrics scraped from process-exporter, a different target: joined by time, not exactly.
PROCESS_METRICS = ("namedprocess_namegroup_cpu_seconds_total",)
METRICS: tuple[str, ...] = tuple(dict.fromkeys(m for c in MAPPING for m in c.metrics))
#: Series whose presence marks a node_exporter host (every node_exporter exports them).
DISCOVERY_METRICS = ("node_load1", "node_memory_MemTotal_bytes")


@dataclass(frozen=True)
class HostTelemetry:
    """One host's samples and the telemetry columns its metrics could not give; with
    process-exporter data and when asked, its process table (:func:`process_rows`)."""

    series: HostSeries
    absent: tuple[str, ...]
    procs: ProcessRows | None = None


# -- selectors -----------------------------------------------------------------------------------


def selector_matchers(selector: str) -> str:
    """The matchers inside ``{...}`` of a ``--selector`` (empty for none).

    >>> selector_matchers('{job="node"}')
    'job="node"'
    """
    text = selector.strip()
    if not text:
        return ""
    if not (text.startswith("{") and text.endswith("}")) or text.count("{") != 1:
        raise InputError("--selector", None, 'a label selector like {job="node"}', repr(selector))
    return text[1:-1].strip().rstrip(",")


def _quote(text: str) -> str:
    """A PromQL string literal (Go escapes; JSON's are a subset)."""
    return json.dumps(text)


def host_of(instance: str) -> str:
    """The host of an ``instance`` label: without its port (``[::1]:9100`` -> ``::1``).

    >>> host_of("web-1:9100"), host_of("[2001:db8::1]:9100"), host_of("db-2")
    ('web-1', '2001:db8::1', 'db-2')
    """
    if instance.startswith("["):
        return instance[1:].partition("]")[0]
    host, sep, port = instance.rpartition(":")
    return host if sep and port.isdigit() and ":" not in host else instance


def host_matcher(host: str, host_label: str | None) -> str:
    """The matcher that picks ``host``'s series: its label, or ``instance`` with any port."""
    if host_label:
        return f"{host_label}={_quote(host)}"
    escaped = re.escape(host)
    pattern = rf"\[{escaped}\](?::[0-9]+)?" if ":" in host else rf"{escaped}(?::[0-9]+)?"
    return f"instance=~{_quote(pattern)}"


def series_selector(name: str, *matchers: str) -> str:
    """``name{m1,m2}`` without empty matchers."""
    inner = ",".join(m for m in matchers if m)
    return f"{name}{{{inner}}}"


def discover_hosts(
    client: PromClient, selector: str, host_label: str | None, start: float, end: float
) -> list[str]:
    """Hosts with node_exporter data in [start, end] among the series the selector picks."""
    inner = selector_matchers(selector)
    match = [series_selector(m, inner) for m in DISCOVERY_METRICS]
    values = client.label_values(host_label or "instance", match, start, end)
    hosts = values if host_label else [host_of(v) for v in values]
    return sorted(set(hosts))


# -- arithmetic (pure) -------------------------------------------------------------------------


def counter_rates(series: np.ndarray, ts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per-second rate of each sample since the previous sample of the same series.

    The vectorised :func:`minerwatch.features.rates.rate`: rows sorted by (series, time);
    NaN for a series' first sample, a non-positive time step, a non-finite value or a
    decrease (a reset: the interval's increase is unknowable, so no fake spike).

    >>> counter_rates(np.array([0, 0, 0, 1]), np.array([0., 10, 20, 10]),
    ...               np.array([5., 25, 3, 7])).tolist()
    [nan, 2.0, nan, nan]
    """
    out = np.full(len(ts), np.nan)
    if len(ts) < 2:
        return out
    same = series[1:] == series[:-1]
    dt = np.diff(ts)
    dv = np.diff(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = same & (dt > 0) & (dv >= 0) & np.isfinite(dv)
        out[1:] = np.where(ok, dv / np.where(dt > 0, dt, 1.0), np.nan)
    return out


def summed_rates(
    series: np.ndarray, ts: np.ndarray, values: np.ndarray, at: np.ndarray
) -> np.ndarray:
    """Total rate of several counters (one per device) at each time in ``at``.

    As :func:`minerwatch.features.rates.summed_rate`: each series gets its own rate, a series
    that reset or has no earlier sample adds nothing; NaN where no series had an earlier
    sample (the first reading) or none was read at that time.
    """
    rates = counter_rates(series, ts, values)
    primed = np.zeros(len(ts), dtype=bool)
    if len(ts) > 1:
        primed[1:] = series[1:] == series[:-1]
    idx = np.searchsorted(at, ts)
    hit = (idx < len(at)) & (at[np.minimum(idx, len(at) - 1)] == ts)
    total = np.bincount(
        idx[hit], weights=np.where(np.isfinite(rates), rates, 0.0)[hit], minlength=len(at)
    )
    seen = np.bincount(idx[hit], weights=primed[hit].astype(float), minlength=len(at))
    return np.where(seen > 0, total, np.nan)


def cpu_percentages(modes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The four CPU columns from CPU-seconds counters per mode, summed over CPUs, on one time
    axis: the vectorised :func:`minerwatch.features.sources.cpu.cpu_shares`.

    A missing mode counts as zero; NaN where no time passed or any mode went backwards.
    """
    n = len(next(iter(modes.values()))) if modes else 0
    zero = np.zeros(n)
    delta = {m: np.diff(modes.get(m, zero), prepend=np.nan) for m in (*CPU_ACCOUNTED, "steal")}
    total = sum((delta[m] for m in CPU_ACCOUNTED), np.zeros(n))
    user = delta["user"] + delta["nice"]
    system = delta["system"] + delta["irq"] + delta["softirq"]
    with np.errstate(invalid="ignore"):
        bad = ~(total > 0) | np.any([~(delta[m] >= 0) for m in delta], axis=0)

    def share(part: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(bad, np.nan, np.clip(100.0 * part / np.where(bad, 1, total), 0, 100))

    return {
        "cpu_percent": share(user + system),
        "cpu_user_percent": share(user),
        "cpu_system_percent": share(system),
        "cpu_iowait_percent": share(delta["iowait"]),
    }


# -- one host -------------------------------------------------------------------------------------


#: Optional column of precomputed series ids (``fleet serve`` numbers the series of the whole
#: fleet in one pass instead of grouping each host's labels again).
SERIES_ID = "__series"


def _series_ids(frame: pd.DataFrame, exclude: Sequence[str] = ()) -> np.ndarray:
    if SERIES_ID in frame.columns:
        return np.asarray(frame[SERIES_ID].to_numpy(), dtype=np.intp)
    labels = [c for c in frame.columns if c not in (TIMESTAMP, VALUE, *exclude)]
    if not labels:
        return np.zeros(len(frame), dtype=np.intp)
    return np.asarray(frame.groupby(labels, observed=True, sort=False).ngroup(), dtype=np.intp)


def _sorted(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(series id, timestamp, value) sorted by series then time."""
    ids = _series_ids(frame)
    ts = frame[TIMESTAMP].to_numpy(np.float64)
    values = frame[VALUE].to_numpy(np.float64)
    order = np.lexsort((ts, ids))
    return ids[order], ts[order], values[order]


def _gauge(frame: pd.DataFrame, at: np.ndarray) -> np.ndarray:
    """A gauge's value at each time in ``at`` (mean if several series share the time)."""
    ts = frame[TIMESTAMP].to_numpy(np.float64)
    values = frame[VALUE].to_numpy(np.float64)
    idx = np.searchsorted(at, ts)
    hit = (idx < len(at)) & (at[np.minimum(idx, len(at) - 1)] == ts) & np.isfinite(values)
    total = np.bincount(idx[hit], weights=values[hit], minlength=len(at))
    count = np.bincount(idx[hit], minlength=len(at))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _keep_devices(frame: pd.DataFrame, drop: re.Pattern[str]) -> pd.DataFrame:
    if "device" not in frame.columns:
        return frame
    devices = frame["device"]
    if hasattr(devices, "cat"):  # the client's label columns: one match per distinct device
        cats = devices.cat.categories
        dropped = np.array([bool(drop.match(str(d))) for d in cats] + [False], dtype=bool)
        return frame[~dropped[devices.cat.codes.to_numpy()]]
    return frame[~devices.astype(str).map(lambda d: bool(drop.match(d))).to_numpy(dtype=bool)]


def _summed(frame: pd.DataFrame, at: np.ndarray) -> np.ndarray:
    ids, ts, values = _sorted(frame)
    return summed_rates(ids, ts, values, at)


def _cpu(frame: pd.DataFrame, at: np.ndarray) -> dict[str, np.ndarray]:
    """CPU-seconds per mode summed over CPUs at each time in ``at`` (NaN where a mode has no
    sample at that time), then the four shares."""
    modes = frame["mode"].astype(str).to_numpy()
    ts = frame[TIMESTAMP].to_numpy(np.float64)
    values = frame[VALUE].to_numpy(np.float64)
    idx = np.searchsorted(at, ts)
    hit = (idx < len(at)) & (at[np.minimum(idx, len(at) - 1)] == ts) if len(at) else idx < 0
    out: dict[str, np.ndarray] = {}
    for mode in (*CPU_ACCOUNTED, "steal"):
        rows = hit & (modes == mode)
        if not rows.any():
            continue
        total = np.bincount(idx[rows], weights=np.nan_to_num(values[rows]), minlength=len(at))
        seen = np.bincount(idx[rows], minlength=len(at))
        out[mode] = np.where(seen > 0, total, np.nan)
    return cpu_percentages(out)


def _group_rate_arrays(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CPU-seconds per second of each process-exporter group at each of its scrapes: (group
    names, timestamps, rates; user + system summed, NaN where no part had a rate)."""
    modes = frame["mode"].astype(str).to_numpy()
    frame = frame[(modes == "user") | (modes == "system")]
    ids = _series_ids(frame)
    ts = frame[TIMESTAMP].to_numpy(np.float64)
    order = np.lexsort((ts, ids))
    ts = ts[order]
    rates = counter_rates(ids[order], ts, frame[VALUE].to_numpy(np.float64)[order])
    names, codes = np.unique(frame["groupname"].astype(str).to_numpy()[order], return_inverse=True)
    times, t_idx = np.unique(ts, return_inverse=True)
    keys, inv = np.unique(codes * max(len(times), 1) + t_idx, return_inverse=True)
    finite = np.isfinite(rates)
    total = np.bincount(inv, weights=np.where(finite, rates, 0.0), minlength=len(keys))
    seen = np.bincount(inv, weights=finite.astype(float), minlength=len(keys))
    rate = np.where(seen > 0, total, np.nan)
    n = max(len(times), 1)
    return names[keys // n], times[keys % n] if len(times) else np.zeros(0), rate


def _group_rates(frame: pd.DataFrame) -> pd.DataFrame:
    """:func:`_group_rate_arrays` as a frame (columns ``g``, ``timestamp``, ``r``)."""
    import pandas as pd

    names, ts, rate = _group_rate_arrays(frame)
    return pd.DataFrame({"g": names, TIMESTAMP: ts, "r": rate})


def _matched(times: np.ndarray, at: np.ndarray, interval: float) -> np.ndarray:
    """For each row time in ``at``, the index of the latest of ``times`` (sorted) at most
    1.5 intervals older; -1 for none."""
    pos = np.searchsorted(times, at, side="right") - 1
    ok = (pos >= 0) & (at - times[np.maximum(pos, 0)] <= interval * 1.5)
    return np.where(ok, pos, -1)


def process_rows(
    frame: pd.DataFrame, at: np.ndarray, interval: float, top: int = TOP_PROCESSES
) -> ProcessRows:
    """A process table from process-exporter: per host sample, its ``top`` busiest groups.

    Process-exporter counts *groups*, not processes, so each row is a group: ``name`` is the
    group name, ``pid`` 0, ``exe`` and ``user`` empty (unknown), ``cpu_percent`` the group's
    user + system CPU (percent of one core) at the latest scrape at most 1.5 intervals old.
    """
    per = _group_rates(frame)
    per = per[np.isfinite(per["r"].to_numpy(np.float64))]
    times = np.unique(per[TIMESTAMP].to_numpy(np.float64))
    if not len(times) or not len(at):
        return ProcessRows.empty()
    pos = _matched(times, at, interval)
    rows_at = at[pos >= 0]
    scrape = times[pos[pos >= 0]]
    per = per.sort_values([TIMESTAMP, "r"], ascending=[True, False], kind="stable")
    per = per.groupby(TIMESTAMP, sort=False).head(top)
    when = per[TIMESTAMP].to_numpy(np.float64)
    # each row time takes the groups of its matched scrape
    start = np.searchsorted(when, scrape, side="left")
    stop = np.searchsorted(when, scrape, side="right")
    spans = [np.arange(a, b) for a, b in zip(start.tolist(), stop.tolist(), strict=True)]
    take = np.concatenate(spans).astype(np.intp) if spans else np.zeros(0, dtype=np.intp)
    stamps = np.repeat(rows_at, stop - start)
    names = per["g"].to_numpy(dtype=object)[take]
    return ProcessRows.from_lists(
        stamps,
        np.zeros(len(take), dtype=np.int64),
        names,
        [""] * len(take),
        [""] * len(take),
        100.0 * per["r"].to_numpy(np.float64)[take],
    )


def _top_process(frame: pd.DataFrame, at: np.ndarray, interval: float) -> np.ndarray:
    """Largest group's CPU (percent of one core) at the latest process-exporter scrape that
    is at most one interval older than each row."""
    _, ts, rate = _group_rate_arrays(frame)
    if not len(ts):
        return np.full(len(at), np.nan)
    times, inv = np.unique(ts, return_inverse=True)
    busiest = np.full(len(times), np.nan)
    np.fmax.at(busiest, inv, rate)  # the largest group's rate per scrape, NaN ignored
    pos = np.searchsorted(times, at, side="right") - 1
    ok = (pos >= 0) & (at - times[np.maximum(pos, 0)] <= interval * 1.5)
    return np.where(ok, 100.0 * busiest[np.maximum(pos, 0)], np.nan)


def telemetry(
    host: str,
    frames: dict[str, pd.DataFrame],
    source: str = "",
    since: float = -np.inf,
    procs: bool = False,
) -> HostTelemetry:
    """Turn one host's raw samples (metric name -> long frame) into telemetry rows.

    Rows are the times of the node_exporter scrapes at or after ``since``; samples before it
    only serve as the previous reading of counters. With ``procs``, process-exporter data
    also gives a process table (:func:`process_rows`). Pure: no I/O.
    """
    node = [f for name, f in frames.items() if name not in PROCESS_METRICS and len(f)]
    if not node:
        raise InputError(source or host, None, f"node_exporter samples for host {host!r}", "none")
    at = np.unique(np.concatenate([f[TIMESTAMP].to_numpy(np.float64) for f in node]))
    steps = np.diff(at)
    interval = float(np.median(steps)) if steps.size else 60.0
    present = {name for name, f in frames.items() if len(f)}
    out: dict[str, np.ndarray] = {}

    def have(*names: str) -> bool:
        return all(n in present for n in names)

    if have("node_cpu_seconds_total"):
        out.update(_cpu(frames["node_cpu_seconds_total"], at))
    gauges = {
        "load1": "node_load1",
        "tcp_established": "node_netstat_Tcp_CurrEstab",
        "procs_total": "node_processes_pids",
        "procs_running": "node_procs_running",
    }
    for column, metric in gauges.items():
        if have(metric):
            out[column] = _gauge(frames[metric], at)
    if have("node_memory_MemTotal_bytes", "node_memory_MemAvailable_bytes"):
        total = _gauge(frames["node_memory_MemTotal_bytes"], at)
        avail = _gauge(frames["node_memory_MemAvailable_bytes"], at)
        with np.errstate(invalid="ignore", divide="ignore"):
            mem = np.where(total > 0, 100.0 * (total - avail) / total, np.nan)
        out["mem_percent"] = np.clip(mem, 0.0, 100.0)
    counters: dict[str, tuple[str, re.Pattern[str] | None]] = {
        "disk_read_bps": ("node_disk_read_bytes_total", NOT_WHOLE_DISK),
        "disk_write_bps": ("node_disk_written_bytes_total", NOT_WHOLE_DISK),
        "net_rx_bps": ("node_network_receive_bytes_total", VIRTUAL_INTERFACES),
        "net_tx_bps": ("node_network_transmit_bytes_total", VIRTUAL_INTERFACES),
        "net_rx_pps": ("node_network_receive_packets_total", VIRTUAL_INTERFACES),
        "net_tx_pps": ("node_network_transmit_packets_total", VIRTUAL_INTERFACES),
        "ctx_switches_ps": ("node_context_switches_total", None),
    }
    for column, (metric, drop) in counters.items():
        if have(metric):
            frame = frames[metric] if drop is None else _keep_devices(frames[metric], drop)
            out[column] = _summed(frame, at)
    if have("namedprocess_namegroup_cpu_seconds_total"):
        out["top_proc_cpu_percent"] = _top_process(
            frames["namedprocess_namegroup_cpu_seconds_total"], at, interval
        )
    columns = tuple(c for c in METRIC_COLUMNS if c in out)
    absent = tuple(c for c in METRIC_COLUMNS if c not in out)
    values = np.column_stack([out[c] for c in columns]) if columns else np.zeros((len(at), 0))
    # a scrape that gives no column a value (only counters, on their first sample) is no row
    useful = np.isfinite(values).any(axis=1) & (at >= since)
    table = None
    if procs and have("namedprocess_namegroup_cpu_seconds_total"):
        table = process_rows(
            frames["namedprocess_namegroup_cpu_seconds_total"], at[useful], interval
        )
    series = from_arrays(host, at[useful], values[useful], columns, source)
    return HostTelemetry(series, absent, table)


def read_host(
    client: PromClient,
    host: str,
    start: float,
    end: float,
    *,
    selector: str = "",
    host_label: str | None = None,
    budget: int = 200_000,
    on_metric: Callable[[str, int], None] | None = None,
    procs: bool = False,
) -> HostTelemetry:
    """Read one host's metrics from Prometheus and map them to telemetry.

    One ``/series`` request says which metrics exist (and how many series each has); each
    metric is then read in pieces of at most ``budget`` points, so memory per host stays
    bounded whatever its number of CPUs or devices.
    """
    inner = selector_matchers(selector)
    node_inner = ",".join(m for m in (inner, host_matcher(host, host_label)) if m)
    # process-exporter is another target (another job), so only the host picks it
    proc_inner = host_matcher(host, host_label)
    names = "|".join(re.escape(m) for m in METRICS if m not in PROCESS_METRICS)
    match = [
        f"{{__name__=~{_quote(names)},{node_inner}}}",
        series_selector(PROCESS_METRICS[0], proc_inner),
    ]
    counts: dict[str, int] = {}
    for labels in client.series(match, start, end):
        name = labels.get("__name__", "")
        counts[name] = counts.get(name, 0) + 1
    where = f"{client.connection.url} host {host}"
    if not any(counts.get(m) for m in DISCOVERY_METRICS):
        raise InputError(where, None, "node_exporter series in the time range", "none")
    probe = client.samples(series_selector("node_load1", node_inner), start, end, 15.0)
    steps = np.diff(np.unique(probe[TIMESTAMP].to_numpy(np.float64))) if len(probe) else None
    interval = float(np.median(steps)) if steps is not None and steps.size else 15.0
    lead = start - 2 * interval  # one scrape before start: the first row's rates are known
    frames: dict[str, pd.DataFrame] = {}
    for metric in METRICS:
        n = counts.get(metric, 0)
        if not n:
            continue
        if metric == "node_load1":
            frames[metric] = probe
            continue
        sel = series_selector(metric, proc_inner if metric in PROCESS_METRICS else node_inner)
        per_series = max(100, min(client.max_points, budget // n))
        frames[metric] = client.samples(sel, lead, end, interval * per_series / client.max_points)
        if on_metric is not None:
            on_metric(metric, len(frames[metric]))
    for frame in frames.values():
        if "__name__" in frame.columns:
            del frame["__name__"]
    return telemetry(host, frames, source=where, since=start, procs=procs)
