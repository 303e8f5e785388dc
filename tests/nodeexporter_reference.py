"""The frame-based node_exporter mapping, kept as the reference the package's array mapping
(:func:`minerwatch.service.fleet.nodeexporter.map_points`, what ``fleet train``/``export``/``serve``
run) must equal bit for bit.

It was the package's first mapping: pandas frames in long form (a column per label,
``timestamp``, ``value``), one metric at a time, written for clarity rather than speed. It has
its own copies of the per-group and busiest-group arithmetic, so a change to the package's
helpers shows up as a difference here; it shares only the pure functions the agent's own
tests pin (:func:`counter_rates`, :func:`cpu_percentages`) and the mapping's tables.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from minerwatch.features.errors import InputError
from minerwatch.features.io import from_arrays
from minerwatch.features.procs import TOP_PROCESSES, ProcessRows
from minerwatch.features.schema import METRIC_COLUMNS
from minerwatch.service.fleet.nodeexporter import (
    _COUNTERS,
    _GAUGES,
    CPU_ACCOUNTED,
    PROCESS_METRICS,
    HostTelemetry,
    counter_rates,
    cpu_percentages,
)
from minerwatch.service.fleet.promclient import TIMESTAMP, VALUE


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


def _series_ids(frame: pd.DataFrame) -> np.ndarray:
    """A number per series: per distinct combination of the frame's label columns."""
    labels = [c for c in frame.columns if c not in (TIMESTAMP, VALUE)]
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
    return _gauge_at(frame[TIMESTAMP].to_numpy(np.float64), frame[VALUE].to_numpy(np.float64), at)


def _gauge_at(ts: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """:func:`_gauge` of arrays."""
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
    parts = {m: (ts[modes == m], values[modes == m]) for m in (*CPU_ACCOUNTED, "steal")}
    return _cpu_at(parts, at)


def _cpu_at(
    parts: dict[str, tuple[np.ndarray, np.ndarray]], at: np.ndarray
) -> dict[str, np.ndarray]:
    """:func:`_cpu` of arrays: (timestamps, values) of every CPU's series, per mode."""
    out: dict[str, np.ndarray] = {}
    for mode in (*CPU_ACCOUNTED, "steal"):
        ts, values = parts.get(mode, (np.zeros(0), np.zeros(0)))
        idx = np.searchsorted(at, ts)
        rows = (idx < len(at)) & (at[np.minimum(idx, len(at) - 1)] == ts) if len(at) else idx < 0
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
    groups, times, rate = _group_totals(codes, ts, rates)
    return names[groups], times, rate


def _group_totals(
    codes: np.ndarray, ts: np.ndarray, rates: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rates of every series summed per (group, time), in that order: (group codes, times,
    rates); ``codes`` is the group of each point. (A copy of the package's.)"""
    times, t_idx = np.unique(ts, return_inverse=True)
    keys, inv = np.unique(codes * max(len(times), 1) + t_idx, return_inverse=True)
    finite = np.isfinite(rates)
    total = np.bincount(inv, weights=np.where(finite, rates, 0.0), minlength=len(keys))
    seen = np.bincount(inv, weights=finite.astype(float), minlength=len(keys))
    rate = np.where(seen > 0, total, np.nan)
    n = max(len(times), 1)
    return keys // n, times[keys % n] if len(times) else np.zeros(0), rate


def _group_rates(frame: pd.DataFrame) -> pd.DataFrame:
    """:func:`_group_rate_arrays` as a frame (columns ``g``, ``timestamp``, ``r``)."""
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
    return _process_table(_group_rates(frame), at, interval, top)


def _process_table(per: pd.DataFrame, at: np.ndarray, interval: float, top: int) -> ProcessRows:
    """:func:`process_rows` from the groups' rates (:func:`_group_rates`)."""
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
    is at most 1.5 intervals older than each row."""
    _, ts, rate = _group_rate_arrays(frame)
    return _top_of(ts, rate, at, interval)


def _top_of(ts: np.ndarray, rate: np.ndarray, at: np.ndarray, interval: float) -> np.ndarray:
    """:func:`_top_process` from the groups' rates (:func:`_group_rate_arrays`). (A copy of
    the package's.)"""
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
    for column, metric in _GAUGES.items():
        if have(metric):
            out[column] = _gauge(frames[metric], at)
    if have("node_memory_MemTotal_bytes", "node_memory_MemAvailable_bytes"):
        total = _gauge(frames["node_memory_MemTotal_bytes"], at)
        avail = _gauge(frames["node_memory_MemAvailable_bytes"], at)
        with np.errstate(invalid="ignore", divide="ignore"):
            mem = np.where(total > 0, 100.0 * (total - avail) / total, np.nan)
        out["mem_percent"] = np.clip(mem, 0.0, 100.0)
    for column, (metric, drop) in _COUNTERS.items():
        if have(metric):
            frame = frames[metric] if drop is None else _keep_devices(frames[metric], drop)
            out[column] = _summed(frame, at)
    if have("namedprocess_namegroup_cpu_seconds_total"):
        out["top_proc_cpu_percent"] = _top_process(
            frames["namedprocess_namegroup_cpu_seconds_total"], at, interval
        )
    columns = tuple(c for c in METRIC_COLUMNS if c in out)
    absent = tuple(c for c in METRIC_COLUMNS if c not in out and c != "cpu_cores")  # not read
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
