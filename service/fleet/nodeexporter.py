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

:func:`read_host` lets Prometheus apply the mapping's own filters (and, where that is
cheaper and provably the same, its sums: :func:`read_summed`) and maps the answers as numpy
arrays (:func:`telemetry_series`); ``fleet serve`` maps the samples it buffers with the same
:func:`map_points`. One mapping, numpy only (``tests/nodeexporter_reference.py`` keeps the
first, pandas one, which it must equal bit for bit).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from minerwatch.features.errors import InputError
from minerwatch.features.io import HostSeries, from_arrays
from minerwatch.features.procs import TOP_PROCESSES, ProcessRows
from minerwatch.features.schema import METRIC_COLUMNS
from minerwatch.features.sources.disk import DEFAULT_IGNORE as NOT_WHOLE_DISK
from minerwatch.service.fleet.promclient import (
    PromClient,
    PrometheusError,
    RawSeries,
    merge_series,
    too_many_samples,
)

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
        "the latest scrape at most 1.5 intervals old",
    ),
    Column(
        "cpu_cores",
        (),
        "not read: it only scales the garbage collectors' CPU of agent process tables, "
        "which fleet mode has none of",
    ),
)

#: Metrics scraped from process-exporter, a different target: joined by time, not exactly.
PROCESS_METRICS = ("namedprocess_namegroup_cpu_seconds_total",)
METRICS: tuple[str, ...] = tuple(dict.fromkeys(m for c in MAPPING for m in c.metrics))
#: Columns fleet mode never fills (so never reports as missing).
_NOT_READ = frozenset(c.name for c in MAPPING if not c.metrics)
#: Series whose presence marks a node_exporter host (every node_exporter exports them).
DISCOVERY_METRICS = ("node_load1", "node_memory_MemTotal_bytes")


@dataclass(frozen=True)
class HostTelemetry:
    """One host's samples and the telemetry columns its metrics could not give; with
    process-exporter data and when asked, its process table (:func:`process_rows`)."""

    series: HostSeries
    absent: tuple[str, ...]
    procs: ProcessRows | None = None
    #: Scrape targets whose series overlapped in time (:func:`one_target_at_a_time`), the one
    #: read where they overlap first; empty for one target.
    targets: tuple[TargetKey, ...] = ()


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


# -- scrape targets ----------------------------------------------------------------------------

#: Labels node_exporter itself puts on the mapping's metrics; all others name the scrape
#: target (``job``, ``instance``, what relabelling or an HA replica adds).
OWN_LABELS = frozenset({"__name__", "cpu", "mode", "device"})
TargetKey = tuple[tuple[str, str], ...]


def target_key(labels: Mapping[str, str]) -> TargetKey:
    """The target of a series: its labels but node_exporter's own (:data:`OWN_LABELS`)."""
    return tuple(sorted((k, v) for k, v in labels.items() if k not in OWN_LABELS and v != ""))


def target_text(key: TargetKey) -> str:
    """``{instance="web-1:9100",job="node"}``"""
    return "{" + ",".join(f"{k}={_quote(v)}" for k, v in key) + "}"


def targets_note(host: str, targets: Sequence[TargetKey]) -> str:
    """What a command says of a host scraped by several targets at once: which one it read
    and the ``--selector`` that picks it."""
    first = dict(targets[0])
    names = sorted({k for key in targets for k, _ in key})
    apart = [n for n in names if len({dict(key).get(n, "") for key in targets}) > 1]
    pick = "{" + ",".join(f"{n}={_quote(first.get(n, ''))}" for n in apart) + "}"
    return (
        f"host {host}: node_exporter series from {len(targets)} scrape targets at once, "
        + ", ".join(target_text(k) for k in targets)
        + f"; where they overlap only {target_text(targets[0])} is read (most metrics, then "
        f"shortest scrape interval); pick one yourself with --selector '{pick}'"
    )


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


# -- process-exporter groups -------------------------------------------------------------------


def _group_totals(
    codes: np.ndarray, ts: np.ndarray, rates: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rates of every series summed per (group, time), in that order: (group codes, times,
    rates); ``codes`` is the group of each point."""
    times, t_idx = np.unique(ts, return_inverse=True)
    keys, inv = np.unique(codes * max(len(times), 1) + t_idx, return_inverse=True)
    finite = np.isfinite(rates)
    total = np.bincount(inv, weights=np.where(finite, rates, 0.0), minlength=len(keys))
    seen = np.bincount(inv, weights=finite.astype(float), minlength=len(keys))
    rate = np.where(seen > 0, total, np.nan)
    n = max(len(times), 1)
    return keys // n, times[keys % n] if len(times) else np.zeros(0), rate


def _matched(times: np.ndarray, at: np.ndarray, interval: float) -> np.ndarray:
    """For each row time in ``at``, the index of the latest of ``times`` (sorted) at most
    1.5 intervals older; -1 for none."""
    pos = np.searchsorted(times, at, side="right") - 1
    ok = (pos >= 0) & (at - times[np.maximum(pos, 0)] <= interval * 1.5)
    return np.where(ok, pos, -1)


def process_rows(
    groups: Sequence[str] | np.ndarray,
    rates: tuple[np.ndarray, np.ndarray, np.ndarray],
    at: np.ndarray,
    interval: float,
    top: int = TOP_PROCESSES,
) -> ProcessRows:
    """A process table from process-exporter: per host sample, its ``top`` busiest groups.

    Process-exporter counts *groups*, not processes, so each row is a group: ``name`` is the
    group name, ``pid`` 0, ``exe`` and ``user`` empty (unknown), ``cpu_percent`` the group's
    user + system CPU (percent of one core) at the latest scrape at most 1.5 intervals old.
    ``rates`` are the groups' (codes into ``groups``, times, rates) (:func:`_group_totals`);
    groups with equal rates keep that order.
    """
    codes, ts, rate = rates
    finite = np.isfinite(rate)
    codes, ts, rate = codes[finite], ts[finite], rate[finite]
    times = np.unique(ts)
    if not len(times) or not len(at):
        return ProcessRows.empty()
    pos = _matched(times, at, interval)
    rows_at = at[pos >= 0]
    scrape = times[pos[pos >= 0]]
    order = np.lexsort((-rate, ts))  # by time, busiest first; stable
    codes, ts, rate = codes[order], ts[order], rate[order]
    busiest = np.arange(len(ts)) - np.searchsorted(ts, ts, side="left") < top
    codes, when, rate = codes[busiest], ts[busiest], rate[busiest]
    # each row time takes the groups of its matched scrape
    start = np.searchsorted(when, scrape, side="left")
    count = np.searchsorted(when, scrape, side="right") - start
    offsets = np.cumsum(count) - count
    take = np.repeat(start - offsets, count) + np.arange(int(count.sum()))
    names = np.asarray(groups, dtype=object)[codes[take]]
    return ProcessRows.from_lists(
        np.repeat(rows_at, count),
        np.zeros(len(take), dtype=np.int64),
        names,
        [""] * len(take),
        [""] * len(take),
        100.0 * rate[take],
    )


def _top_of(ts: np.ndarray, rate: np.ndarray, at: np.ndarray, interval: float) -> np.ndarray:
    """Largest group's CPU (percent of one core) at the latest process-exporter scrape at
    most 1.5 intervals older than each row, from the groups' times and rates."""
    if not len(ts):
        return np.full(len(at), np.nan)
    times, inv = np.unique(ts, return_inverse=True)
    busiest = np.full(len(times), np.nan)
    np.fmax.at(busiest, inv, rate)  # the largest group's rate per scrape, NaN ignored
    pos = np.searchsorted(times, at, side="right") - 1
    ok = (pos >= 0) & (at - times[np.maximum(pos, 0)] <= interval * 1.5)
    return np.where(ok, 100.0 * busiest[np.maximum(pos, 0)], np.nan)


# -- the array mapping: what read_host reads and fleet serve buffers ------------------------------


#: Modes of ``node_cpu_seconds_total`` the CPU columns add up, in :func:`map_points`' order.
CPU_MODES = (*CPU_ACCOUNTED, "steal")
#: process-exporter's modes the process columns add up.
PROCESS_MODES = ("user", "system")

_GAUGES = {
    "load1": "node_load1",
    "tcp_established": "node_netstat_Tcp_CurrEstab",
    "procs_total": "node_processes_pids",
    "procs_running": "node_procs_running",
}
_COUNTERS: dict[str, tuple[str, re.Pattern[str] | None]] = {
    "disk_read_bps": ("node_disk_read_bytes_total", NOT_WHOLE_DISK),
    "disk_write_bps": ("node_disk_written_bytes_total", NOT_WHOLE_DISK),
    "net_rx_bps": ("node_network_receive_bytes_total", VIRTUAL_INTERFACES),
    "net_tx_bps": ("node_network_transmit_bytes_total", VIRTUAL_INTERFACES),
    "net_rx_pps": ("node_network_receive_packets_total", VIRTUAL_INTERFACES),
    "net_tx_pps": ("node_network_transmit_packets_total", VIRTUAL_INTERFACES),
    "ctx_switches_ps": ("node_context_switches_total", None),
}
#: Per counter metric with a ``device`` label, the devices the mapping leaves out.
DEVICE_FILTERS: dict[str, re.Pattern[str]] = {
    m: drop for m, drop in _COUNTERS.values() if drop is not None
}


@dataclass(slots=True)
class Points:
    """One metric's samples of one host as flat arrays, what :func:`map_points` maps.

    Per point: its series id (``ids``), time and value; the points of a series together and
    in time order, series in the order their sums run. Per series id, what the mapping needs
    of its labels (None where unused): ``keep``, whether its device counts
    (:data:`DEVICE_FILTERS`); ``mode``, its CPU mode as an index in :data:`CPU_MODES` (-1 for
    none); ``group``, its process group as an index in ``groups`` (-1 for a mode not in
    :data:`PROCESS_MODES`).
    """

    ids: np.ndarray
    ts: np.ndarray
    values: np.ndarray
    keep: np.ndarray | None = None
    mode: np.ndarray | None = None
    group: np.ndarray | None = None
    groups: Sequence[str] | np.ndarray = ()
    #: per series id, its scrape target as an index in ``target_keys`` (:func:`target_key`)
    target: np.ndarray | None = None
    target_keys: Sequence[TargetKey] = ()

    @classmethod
    def of(cls, metric: str, series: Sequence[RawSeries]) -> Points:
        """The points of ``series`` (in the order given) and what their labels say."""
        lengths = np.array([len(s.timestamps) for s in series], dtype=np.intp)
        ids = np.repeat(np.arange(len(series), dtype=np.intp), lengths)
        if not len(series):
            return cls(ids, np.zeros(0), np.zeros(0))
        ts = np.concatenate([np.asarray(s.timestamps, np.float64) for s in series])
        values = np.concatenate([np.asarray(s.values, np.float64) for s in series])
        labels = [s.labels for s in series]
        keep = mode = group = None
        groups: Sequence[str] | np.ndarray = ()
        drop = DEVICE_FILTERS.get(metric)
        if drop is not None:
            keep = np.array([not drop.match(lab.get("device", "")) for lab in labels], bool)
        if metric == "node_cpu_seconds_total":
            modes = [lab.get("mode", "") for lab in labels]
            mode = np.array([CPU_MODES.index(m) if m in CPU_MODES else -1 for m in modes], np.intp)
        if metric in PROCESS_METRICS:
            counted = np.array([lab.get("mode", "") in PROCESS_MODES for lab in labels], bool)
            names = [lab.get("groupname", "") for lab, c in zip(labels, counted, strict=True) if c]
            groups, code = np.unique(np.array(names, dtype=str), return_inverse=True)
            group = np.full(len(labels), -1, dtype=np.intp)
            group[counted] = np.asarray(code, dtype=np.intp).reshape(-1)
        codes: dict[TargetKey, int] = {}
        target = np.array([codes.setdefault(target_key(lab), len(codes)) for lab in labels])
        return cls(ids, ts, values, keep, mode, group, groups, target.astype(np.intp), [*codes])


_NO_POINTS = Points(np.zeros(0, np.intp), np.zeros(0), np.zeros(0))


def _at_rows(at: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each time's row in ``at`` (sorted) and whether it is one."""
    idx = np.searchsorted(at, ts)
    hit = (idx < len(at)) & (at[np.minimum(idx, len(at) - 1)] == ts) if len(at) else idx < 0
    return idx, hit


def _per_row(
    col: np.ndarray, idx: np.ndarray, weights: np.ndarray, columns: int, rows: int
) -> np.ndarray:
    """Sums of ``weights`` per (column, row): one ``bincount`` for several columns, each
    bin adding its samples in the same order as a ``bincount`` of that column alone."""
    return np.bincount(col * rows + idx, weights=weights, minlength=columns * rows).reshape(
        columns, rows
    )


def _gauges_of(parts: Sequence[Points], at: np.ndarray) -> np.ndarray:
    """Each gauge's value at each time in ``at`` (mean of the finite values of the series
    sharing the time, NaN for none); one row per part."""
    n = len(at)
    col = np.repeat(np.arange(len(parts)), [len(p.ts) for p in parts])
    ts = np.concatenate([p.ts for p in parts])
    value = np.concatenate([p.values for p in parts])
    idx, hit = _at_rows(at, ts)
    hit &= np.isfinite(value)
    total = _per_row(col[hit], idx[hit], value[hit], len(parts), n)
    count = _per_row(col[hit], idx[hit], np.ones(int(hit.sum())), len(parts), n)
    with np.errstate(invalid="ignore", divide="ignore"):
        out: np.ndarray = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out


def _counters_of(parts: Sequence[Points], at: np.ndarray) -> np.ndarray:
    """Each counter's rate summed over its kept series at each time in ``at``; one row per
    part. As :func:`minerwatch.features.rates.summed_rate`: each series gets its own rate, a
    series that reset or has no earlier sample adds nothing; NaN where no series had an
    earlier sample (the first reading) or none was read at that time."""
    n = len(at)
    keep = [p.keep[p.ids] if p.keep is not None else np.ones(len(p.ids), bool) for p in parts]
    col = np.repeat(np.arange(len(parts)), [int(k.sum()) for k in keep])
    # series ids made distinct across parts, so a part's first sample has no previous one
    series = np.concatenate([p.ids[k] for p, k in zip(parts, keep, strict=True)]) * len(parts) + col
    ts = np.concatenate([p.ts[k] for p, k in zip(parts, keep, strict=True)])
    value = np.concatenate([p.values[k] for p, k in zip(parts, keep, strict=True)])
    rates = counter_rates(series, ts, value)
    primed = np.zeros(len(ts), dtype=bool)
    if len(ts) > 1:
        primed[1:] = series[1:] == series[:-1]
    idx, hit = _at_rows(at, ts)
    weights = np.where(np.isfinite(rates), rates, 0.0)
    total = _per_row(col[hit], idx[hit], weights[hit], len(parts), n)
    seen = _per_row(col[hit], idx[hit], primed[hit].astype(float), len(parts), n)
    out: np.ndarray = np.where(seen > 0, total, np.nan)
    return out


def _cpu_of(p: Points, at: np.ndarray) -> dict[str, np.ndarray]:
    """CPU-seconds per mode summed over CPUs at each time in ``at`` (NaN where a mode has no
    sample at that time, a NaN sample counts as 0), then the four shares."""
    n = len(at)
    idx, hit = _at_rows(at, p.ts)
    modes = p.mode[p.ids] if p.mode is not None else np.full(len(p.ids), -1, np.intp)
    rows = hit & (modes >= 0)
    value = p.values if np.isfinite(p.values).all() else np.nan_to_num(p.values)
    total = _per_row(modes[rows], idx[rows], value[rows], len(CPU_MODES), n)
    seen = _per_row(modes[rows], idx[rows], np.ones(int(rows.sum())), len(CPU_MODES), n)
    present = np.bincount(modes[rows], minlength=len(CPU_MODES)) > 0
    out = {
        mode: np.where(seen[i] > 0, total[i], np.nan)
        for i, mode in enumerate(CPU_MODES)
        if present[i]
    }
    return cpu_percentages(out)


def _group_rates_of(p: Points) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CPU-seconds per second of each process-exporter group at each of its scrapes: (group
    codes, indices in ``p.groups``; timestamps; rates, user + system summed, NaN where no
    part had a rate)."""
    codes = p.group[p.ids] if p.group is not None else np.full(len(p.ids), -1, np.intp)
    rows = codes >= 0
    ts = p.ts[rows]
    rates = counter_rates(p.ids[rows], ts, p.values[rows])
    return _group_totals(codes[rows], ts, rates)


def _scrape_times(node: Sequence[Points]) -> np.ndarray:
    """The sorted distinct times of all points: ``np.unique`` of them all, which is a sort
    of a host-week's ~1.2 million; when every series holds the same times (one scrape gives
    every series a sample, the common case) those times are the answer, checked for less."""
    first = node[0]
    times = first.ts[: int(np.searchsorted(first.ids, 1))]  # its first series (ids ascend)
    n = len(times)
    if n > 1 and bool((times[1:] > times[:-1]).all()):
        for p in node:
            lengths = np.bincount(p.ids)
            if not (lengths == n).all() or not (p.ts.reshape(-1, n) == times).all():
                break
        else:
            return times.copy()
    return np.unique(np.concatenate([p.ts for p in node]))


def one_target_at_a_time(
    node: Mapping[str, Points],
) -> tuple[dict[str, Points], tuple[TargetKey, ...]]:
    """A host's node_exporter points with those of one scrape target at a time, and the
    targets whose times overlapped (the one kept where they do first; empty when none did).

    A node_exporter scraped by two jobs (a second job at another interval or with only some
    collectors, a migration's old and new job, an HA pair behind one store) gives every
    metric once per target. Mapped together, the rows are both targets' scrapes interleaved:
    CPU shares over the few milliseconds between two jobs' scrapes, and a row of a job without
    the CPU collector leaves every share beside it NaN. So where targets report at the same
    time only one is kept, ranked by the metrics it has, then by the shortest scrape interval,
    then by labels; another target's points count only farther than 1.5 intervals from every
    point kept of a better one (a job renamed, one after the other, keeps both in turn).
    """
    single: set[TargetKey] = set()
    for p in node.values():
        if p.target is None or not len(p.ids):
            continue
        codes = p.target[p.ids]
        first = int(codes[0])
        if not (codes == first).all():
            break
        single.add(p.target_keys[first])
    else:
        if len(single) <= 1:
            return dict(node), ()
    keys = sorted({k for p in node.values() for k in p.target_keys})
    number = {k: i for i, k in enumerate(keys)}
    owner: dict[str, np.ndarray] = {}
    for name, p in node.items():
        local = np.array([number[k] for k in p.target_keys], dtype=np.intp)
        ids = p.ids if p.target is None else p.target[p.ids]
        owner[name] = local[ids] if len(local) else np.zeros(len(p.ids), np.intp)
    times, metrics, interval = [], [], []
    for t in range(len(keys)):
        mine = [p.ts[owner[name] == t] for name, p in node.items()]
        ts = np.unique(np.concatenate(mine))
        times.append(ts)
        metrics.append(sum(bool(len(m)) for m in mine))
        interval.append(round(float(np.median(np.diff(ts))), 3) if len(ts) > 1 else np.inf)
    rank = sorted(range(len(keys)), key=lambda t: (-metrics[t], interval[t], keys[t]))
    kept: list[np.ndarray] = [np.zeros(0)] * len(keys)
    dropped = False
    overlapped: list[int] = []
    for t in rank:
        ts, ok = times[t], np.ones(len(times[t]), bool)
        for better in overlapped:
            near = kept[better]
            if not len(near) or not len(ts):
                continue
            pos = np.clip(np.searchsorted(near, ts), 1, len(near)) - 1
            gap = np.minimum(
                abs(ts - near[pos]), abs(near[np.minimum(pos + 1, len(near) - 1)] - ts)
            )
            ok &= gap > 1.5 * min(interval[better], 3600.0)
        kept[t] = ts[ok]
        dropped |= not ok.all()
        if len(kept[t]):
            overlapped.append(t)
    if not dropped:
        return dict(node), ()
    out = {}
    for name, p in node.items():
        mask = np.zeros(len(p.ts), bool)
        for t in range(len(keys)):
            mine = owner[name] == t
            mask[mine] = np.isin(p.ts[mine], kept[t])
        out[name] = replace(p, ids=p.ids[mask], ts=p.ts[mask], values=p.values[mask])
    shown = [t for t in rank if len(times[t])]
    return out, tuple(keys[t] for t in shown)


def map_points(
    host: str,
    points: Mapping[str, Points],
    source: str = "",
    since: float = -np.inf,
    procs: bool = False,
    present: Collection[str] = (),
) -> HostTelemetry:
    """Turn one host's raw samples (metric name -> its :class:`Points`) into telemetry rows,
    with numpy only: a few ``bincount`` for all the columns.

    Rows are the times of the node_exporter scrapes at or after ``since``; samples before it
    only serve as the previous reading of counters. With ``procs``, process-exporter data
    also gives a process table (:func:`process_rows`). Pure: no I/O.

    ``present`` names metrics that exist although no points are given (filters upstream
    left none, as the mapping's own would): their columns are NaN, not absent.
    """
    node_points = {n: p for n, p in points.items() if n not in PROCESS_METRICS and len(p.ts)}
    node_points, targets = one_target_at_a_time(node_points)
    if targets:
        points = {**points, **node_points}
    node = list(node_points.values())
    if not node:
        raise InputError(source or host, None, f"node_exporter samples for host {host!r}", "none")
    at = _scrape_times(node)
    steps = np.diff(at)
    interval = float(np.median(steps)) if steps.size else 60.0
    have = {name for name, p in points.items() if len(p.ts)}.union(present)
    get = points.get
    out: dict[str, np.ndarray] = {}
    if "node_cpu_seconds_total" in have:
        cpu = _cpu_of(get("node_cpu_seconds_total", _NO_POINTS), at)
        if all(len(v) == len(at) for v in cpu.values()):
            out.update(cpu)
    gauges = {c: m for c, m in _GAUGES.items() if m in have}
    memory = "node_memory_MemTotal_bytes" in have and "node_memory_MemAvailable_bytes" in have
    if memory:
        gauges["mem_total"] = "node_memory_MemTotal_bytes"
        gauges["mem_avail"] = "node_memory_MemAvailable_bytes"
    if gauges:
        parts = [get(m, _NO_POINTS) for m in gauges.values()]
        out.update(zip(gauges, _gauges_of(parts, at), strict=True))
    if memory:
        total, avail = out.pop("mem_total"), out.pop("mem_avail")
        with np.errstate(invalid="ignore", divide="ignore"):
            mem = np.where(total > 0, 100.0 * (total - avail) / total, np.nan)
        out["mem_percent"] = np.clip(mem, 0.0, 100.0)
    counters = {c: m for c, (m, _) in _COUNTERS.items() if m in have}
    if counters:
        parts = [get(m, _NO_POINTS) for m in counters.values()]
        out.update(zip(counters, _counters_of(parts, at), strict=True))
    proc = PROCESS_METRICS[0]
    top = None
    if proc in have:
        top = _group_rates_of(get(proc, _NO_POINTS))
        out["top_proc_cpu_percent"] = _top_of(top[1], top[2], at, interval)
    columns = tuple(c for c in METRIC_COLUMNS if c in out)
    absent = tuple(c for c in METRIC_COLUMNS if c not in out and c not in _NOT_READ)
    values = np.column_stack([out[c] for c in columns]) if columns else np.zeros((len(at), 0))
    # a scrape that gives no column a value (only counters, on their first sample) is no row
    useful = np.isfinite(values).any(axis=1) & (at >= since)
    table = None
    if procs and top is not None:
        table = process_rows(get(proc, _NO_POINTS).groups, top, at[useful], interval)
    series = from_arrays(host, at[useful], values[useful], columns, source)
    return HostTelemetry(series, absent, table, targets)


def telemetry_series(
    host: str,
    metrics: Mapping[str, Sequence[RawSeries]],
    source: str = "",
    since: float = -np.inf,
    procs: bool = False,
    present: Collection[str] = (),
) -> HostTelemetry:
    """:func:`map_points` of :class:`~minerwatch.service.fleet.promclient.RawSeries` (metric
    name -> its series, in the order the client returns them: by labels, the order the sums
    run in).

    ``present`` names metrics that exist although no series is given (the server-side filters
    of :func:`read_host` left none, as the mapping's own would): their columns are NaN, not
    absent, as the unfiltered series would give them.
    """
    points = {name: Points.of(name, list(series)) for name, series in metrics.items()}
    return map_points(host, points, source, since, procs, present)


# -- reading: what Prometheus can filter and sum -----------------------------------------------


def promql_regex(pattern: re.Pattern[str]) -> str:
    """A ``^(...)$`` Python pattern as a PromQL matcher regex (PromQL anchors both ends).

    >>> promql_regex(re.compile(r"^(?:lo|veth.*)$"))
    '(?:lo|veth.*)'
    """
    text = pattern.pattern
    if not (text.startswith("^") and text.endswith("$")):
        raise ValueError(f"not an anchored pattern: {text!r}")
    return text[1:-1]


@dataclass(frozen=True)
class ReadPlan:
    """What Prometheus does for the mapping before answering, for one metric.

    ``label`` with ``allow`` (a set of values) or ``drop`` (a pattern) filters series exactly
    as the mapping does; ``without`` is the label the mapping sums over, which Prometheus
    may then sum (:func:`read_summed`): counters only where the sum's rate is provably the
    sum of the rates (``counter``), CPU seconds always (the mapping sums the counters
    themselves). ``apart`` are labels the sums keep (CPU ``mode``).
    """

    label: str = ""
    allow: tuple[str, ...] = ()
    drop: re.Pattern[str] | None = None
    without: str = ""
    apart: tuple[str, ...] = ()
    counter: bool = False

    def matchers(self) -> tuple[str, ...]:
        if self.allow:
            return (f"{self.label}=~{_quote('|'.join(re.escape(a) for a in self.allow))}",)
        if self.drop is not None:
            return (f"{self.label}!~{_quote(promql_regex(self.drop))}",)
        return ()

    def keeps(self, labels: Mapping[str, str]) -> bool:
        """Whether the mapping uses a series with these labels (the matchers, in Python)."""
        value = labels.get(self.label, "")
        if self.allow:
            return value in self.allow
        if self.drop is not None:
            return not self.drop.match(value)
        return True


_DEVICES_DISK = ReadPlan("device", drop=NOT_WHOLE_DISK, without="device", counter=True)
_DEVICES_NET = ReadPlan("device", drop=VIRTUAL_INTERFACES, without="device", counter=True)
#: Per metric, the filters and sums Prometheus applies (metrics not named: read as they are).
READ_PLANS: dict[str, ReadPlan] = {
    "node_cpu_seconds_total": ReadPlan(
        "mode", allow=(*CPU_ACCOUNTED, "steal"), without="cpu", apart=("mode",)
    ),
    "node_disk_read_bytes_total": _DEVICES_DISK,
    "node_disk_written_bytes_total": _DEVICES_DISK,
    **{m: _DEVICES_NET for m, drop in _COUNTERS.values() if drop is VIRTUAL_INTERFACES},
    "namedprocess_namegroup_cpu_seconds_total": ReadPlan("mode", allow=("user", "system")),
}

#: Label marking the parts of a :func:`read_summed` answer.
_PART = "minerwatch_part"


def _without(labels: Mapping[str, str], names: Collection[str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in labels.items() if k not in names))


#: Prometheus CPU per week of one output series of a summing ``query_range`` and per
#: summed group (its count of new samples), in raw series read instead (each ~0.03 s of
#: Prometheus and client CPU per week; measured on Prometheus 2.42, docs/benchmarks.md).
SUM_COST, GROUP_COST = 2, 5


def read_summed(
    client: PromClient,
    selector: str,
    label_sets: Sequence[Mapping[str, str]],
    plan: ReadPlan,
    start: float,
    end: float,
    interval: float,
) -> list[RawSeries] | None:
    """The series of ``selector`` summed by Prometheus over ``plan.without``, one point per
    scrape at the scrape's own timestamp; None when that would cost more than reading the
    raw series (:data:`SUM_COST`) or would not be exactly the sums of the raw samples (the
    caller then reads raw samples).

    One series per group of summed series (the first by labels) is read raw: its timestamps
    are the scrape times. One ``query_range`` with a step of the scrape interval, evaluated
    half an interval after each scrape, gives the sums and the number of new samples in each
    step; the sums are those of the scrapes only if, in every step, there is either no new
    sample or one of each series of the group (all series of one target are scraped at the
    same instant), and the reference series' one. For counters the sum's rate is the sum of
    the rates (the mapping's) only if no series resets and none is NaN: resets are checked
    (one ``resets()`` query); node_exporter never exports NaN counters. (``timestamp()``
    would give the scrape times directly, but Prometheus 2.42 evaluates it ~50x slower.)
    """
    if not plan.without:
        return None
    sums = {_without(labels, ("__name__", plan.without)) for labels in label_sets}
    apart = ("__name__", plan.without, *plan.apart)
    groups: dict[tuple[tuple[str, str], ...], list[Mapping[str, str]]] = {}
    for labels in label_sets:
        groups.setdefault(_without(labels, apart), []).append(labels)
    if len(label_sets) <= SUM_COST * len(sums) + GROUP_COST * len(groups):
        return None
    step = round(interval, 3)
    if step < 0.001:
        return None
    times: dict[tuple[tuple[str, str], ...], np.ndarray] = {}
    for key, members in groups.items():
        ref = min(members, key=lambda labels: sorted(labels.items()))
        exact = series_selector("", *(f"{k}={_quote(v)}" for k, v in sorted(ref.items())))
        got = client.samples_series(exact, start, end, interval)
        times[key] = got[0].timestamps if got else np.zeros(0)
    ref_times = next(iter(times.values()))
    if not len(ref_times):
        return None
    phase = float(ref_times[0])
    first = phase + step / 2 + (math.floor((start - phase - step / 2) / step) + 1) * step
    last = max(first, phase + step / 2 + math.ceil((end - phase - step / 2) / step) * step)
    by = ",".join((plan.without, *plan.apart))
    new = f"sum without ({by}) (count_over_time({selector}[{round(step * 1000)}ms]))"
    expr = (
        f'label_replace(sum without ({plan.without}) ({selector}), "{_PART}", "sum", "", "")'
        f' or label_replace({new}, "{_PART}", "new", "", "")'
    )
    answer = client.query_range_series(expr, first, last, step)
    sum_parts = [s for s in answer if s.labels.get(_PART) == "sum"]
    new_parts = {_without(s.labels, (_PART,)): s for s in answer if s.labels.get(_PART) == "new"}
    fresh: dict[tuple[tuple[str, str], ...], tuple[np.ndarray, np.ndarray]] = {}
    for key, members in groups.items():
        counts, scrape = new_parts.get(key), times[key]
        if counts is None or not np.all(counts.values == len(members)):
            return None  # some step has a new sample of some series only, or two of one
        # each step with new samples holds exactly one scrape of the reference series
        pos = np.searchsorted(scrape, counts.timestamps, side="right") - 1
        when = scrape[np.maximum(pos, 0)]
        inside = (scrape > first - step) & (scrape <= last)
        if not (np.all(pos >= 0) and np.all(when > counts.timestamps - step)):
            return None
        if len(np.unique(when)) != len(when) or len(when) != int(inside.sum()):
            return None
        fresh[key] = (counts.timestamps, when)
    out: list[RawSeries] = []
    for s in sum_parts:
        labels = {k: v for k, v in s.labels.items() if k != _PART}
        steps, when = fresh[_without(labels, plan.apart)]
        rows = np.searchsorted(steps, s.timestamps)
        rows = np.minimum(rows, len(steps) - 1)
        hit = steps[rows] == s.timestamps  # a step without new samples repeats the last
        at, values = when[rows[hit]], s.values[hit]
        keep = (at >= start) & (at <= end)
        if keep.any():
            out.append(RawSeries(labels, at[keep], values[keep]))
    if plan.counter:
        span = math.ceil((end - start) * 1000) + 1
        if client.query_series(f"resets({selector}[{span}ms]) > 0", end):
            return None
    return merge_series([out])


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
    summed: bool = True,
) -> HostTelemetry:
    """Read one host's metrics from Prometheus and map them to telemetry.

    One ``/series`` request says which metrics exist, with their label sets. Each metric is
    then read with the mapping's filters applied by Prometheus (:data:`READ_PLANS`: CPU
    modes, whole disks, physical interfaces, process-exporter's user and system), summed by
    Prometheus where the mapping sums and that gives fewer series (:func:`read_summed`;
    not with ``summed=False``, nor when the server refuses the sums for its sample limit),
    else as raw samples in pieces of at most ``budget`` points,
    so memory per host stays bounded whatever its number of CPUs or devices. Answers are
    parsed to arrays and mapped with numpy (:func:`telemetry_series`).
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
    label_sets: dict[str, list[dict[str, str]]] = {}
    for labels in client.series(match, start, end):
        label_sets.setdefault(labels.get("__name__", ""), []).append(labels)
    where = f"{client.connection.url} host {host}"
    if not any(label_sets.get(m) for m in DISCOVERY_METRICS):
        raise InputError(where, None, "node_exporter series in the time range", "none")
    probe = client.samples_series(series_selector("node_load1", node_inner), start, end, 15.0)
    scrapes = np.unique(np.concatenate([s.timestamps for s in probe])) if probe else np.zeros(0)
    steps = np.diff(scrapes)
    interval = float(np.median(steps)) if steps.size else 15.0
    lead = start - 2 * interval  # one scrape before start: the first row's rates are known
    metrics = {"node_load1": probe}
    present: set[str] = set()
    for metric in METRICS:
        sets = label_sets.get(metric, [])
        if not sets or metric == "node_load1":
            continue
        plan = READ_PLANS.get(metric, ReadPlan())
        kept = [labels for labels in sets if plan.keeps(labels)]
        if not kept:  # it exists, but the mapping uses none of its series
            present.add(metric)
            continue
        inner_m = proc_inner if metric in PROCESS_METRICS else node_inner
        sel = series_selector(metric, inner_m, *plan.matchers())
        got = None
        if summed and metric not in PROCESS_METRICS:
            try:
                got = read_summed(client, sel, kept, plan, lead, end, interval)
            except PrometheusError as exc:  # over the server's sample limit: the raw samples,
                if not too_many_samples(exc):  # in pieces it accepts
                    raise
        if got is None:
            per_series = max(100, min(client.max_points, budget // len(kept)))
            got = client.samples_series(sel, lead, end, interval * per_series / client.max_points)
        metrics[metric] = got
        if on_metric is not None:
            on_metric(metric, sum(len(s.timestamps) for s in got))
    return telemetry_series(host, metrics, source=where, since=start, procs=procs, present=present)
