"""Generate a labelled fleet of hosts in the telemetry format, with and without cryptominers.

Real labelled mining telemetry is scarce, so detectors are developed against hosts whose normal
rhythms (daily traffic, nightly backups, cron jobs, CI builds, admin sessions) are as busy and as
irregular as real ones, and whose mining campaigns range from blatant to well hidden. Every metric
is derived from one per-sample model of work (cores, runnable threads, processes, bytes), so the
columns stay mutually consistent the way a real host's do.

>>> labels = simulate(Path("/tmp/fleet"), hosts=4, test_days=1)  # doctest: +SKIP
>>> sorted(labels)  # doctest: +SKIP
['end', 'events', 'generator', 'hosts', 'parameters', 'schema_version', 'splits', 'start']
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from minerwatch.bench.simprocs import IDENTITY_KINDS, IDENTITY_MIX, NEW_TOOLS, Procs, procs_csv
from minerwatch.features.atomic import atomic_write
from minerwatch.features.errors import InputError
from minerwatch.features.schema import METRIC_COLUMNS, SCHEMA_VERSION, TELEMETRY_COLUMNS

ARCHETYPES: tuple[str, ...] = ("web", "database", "batch", "ci", "cache", "idle")
CAMPAIGN_KINDS: tuple[str, ...] = (
    "full_speed",
    "throttled",
    "single_thread",
    "night_only",
    "busy_hours",
    "after_cron",
    "ramp",
)
BENIGN_KINDS: tuple[str, ...] = (
    "traffic_surge",
    "deploy",
    "compile",
    "gc_storm",
    "reindex",
    "cron",
    "backup",
    "admin_burst",
    "new_tool",
    "package_upgrade",
    "toolchain_upgrade",
)
#: 2026-01-05 00:00:00 UTC, a Monday: a fixed default so runs are reproducible.
DEFAULT_START = 1767571200.0

_PREFIX = {
    "web": "web",
    "database": "db",
    "batch": "batch",
    "ci": "ci",
    "cache": "cache",
    "idle": "idle",
}
_CORES = {
    "web": (4, 8, 16),
    "database": (8, 16, 32, 64),
    "batch": (16, 32, 64),
    "ci": (8, 16, 32),
    "cache": (2, 4, 8),
    "idle": (2, 4),
}
_FLEET_ORDER = (
    "web",
    "database",
    "batch",
    "ci",
    "cache",
    "idle",
    "web",
    "database",
    "batch",
    "ci",
    "cache",
    "web",
)
_FLEET_WEIGHTS = (0.3, 0.15, 0.15, 0.15, 0.15, 0.1)
#: Archetypes whose load follows users, so "busy hours" mean something.
_DIURNAL = ("web", "database", "ci", "cache")

_FORMATS = {
    "cpu_percent": "%.2f",
    "cpu_user_percent": "%.2f",
    "cpu_system_percent": "%.2f",
    "cpu_iowait_percent": "%.2f",
    "load1": "%.2f",
    "mem_percent": "%.2f",
    "disk_read_bps": "%.1f",
    "disk_write_bps": "%.1f",
    "net_rx_bps": "%.1f",
    "net_tx_bps": "%.1f",
    "net_rx_pps": "%.2f",
    "net_tx_pps": "%.2f",
    "tcp_established": "%d",
    "procs_total": "%d",
    "procs_running": "%d",
    "ctx_switches_ps": "%.1f",
    "top_proc_cpu_percent": "%.1f",
    "cpu_cores": "%d",
}

MIN = 60.0
HOUR = 3600.0
DAY = 86400.0


@dataclass(frozen=True)
class HostSpec:
    """What a host is: fixed before any sample is drawn."""

    name: str
    archetype: str
    cores: int
    mem_gb: float
    tz_hours: float  # offset of the host's users from UTC; crons run on the host's UTC clock
    flavour: str  # e.g. mysql/postgres, make/gradle: changes how work maps onto processes


@dataclass
class _Event:
    """One injected event; segments are (start, end) seconds from the timeline start."""

    kind: str
    malicious: bool
    segments: list[tuple[float, float]]
    campaign: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


#: PostgreSQL builds an index in its backend plus at most ``max_parallel_maintenance_workers``
#: parallel worker processes (2 by default), each single-threaded.
PG_MAINTENANCE_PROCS = 3.0


@dataclass
class _Clock:
    """Sample grid of one host: sample k reports the interval ((k-1)*iv, k*iv]."""

    n: int
    interval: float
    start: float
    n_train: int

    @property
    def secs(self) -> np.ndarray:
        return np.arange(self.n) * self.interval

    def local_hour(self, tz: float) -> np.ndarray:
        return ((self.start + self.secs) / HOUR + tz) % 24.0

    def span(self, s: float, e: float) -> tuple[slice, np.ndarray, np.ndarray]:
        """Samples touched by activity in [s, e): rate weight per sample and alive-at-sample."""
        iv = self.interval
        i0 = max(int(np.floor(s / iv)) + 1, 0)
        i1 = min(int(np.ceil(e / iv)) + 1, self.n)
        if i1 <= i0:
            return slice(0, 0), np.zeros(0), np.zeros(0, bool)
        k = np.arange(i0, i1, dtype=float)
        frac = np.clip((np.minimum(k * iv, e) - np.maximum((k - 1) * iv, s)) / iv, 0.0, 1.0)
        alive = (k * iv >= s) & (k * iv < e)
        return slice(i0, i1), frac, alive


class _Load:
    """Per-sample work on one host, summed over everything that runs on it."""

    SUM = (
        "user",
        "system",
        "iowait",
        "threads",
        "running",
        "procs",
        "ctx",
        "rx_bps",
        "tx_bps",
        "rx_pps",
        "tx_pps",
        "tcp",
        "read_bps",
        "write_bps",
        "mem_gb",
    )

    def __init__(self, n: int) -> None:
        for key in self.SUM:
            setattr(self, key, np.zeros(n))
        self.top = np.zeros(n)

    def add(self, sl: slice, **parts: np.ndarray | float) -> None:
        for key, value in parts.items():
            target = getattr(self, key)
            if key == "top":
                np.maximum(target[sl], value, out=target[sl])
            else:
                target[sl] += value


def _ar1(rng: np.random.Generator, n: int, tau: float, interval: float) -> np.ndarray:
    """Unit-variance AR(1) noise with correlation time tau seconds."""
    a = float(np.exp(-interval / max(tau, interval)))
    from scipy.signal import lfilter  # only the simulator needs scipy; keep the CLI light

    x = lfilter([np.sqrt(1 - a * a)], [1.0, -a], rng.standard_normal(n))
    return x


def _bump(hour: np.ndarray, centre: float, width: float) -> np.ndarray:
    d = (hour - centre + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (d / width) ** 2)


def _logu(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


# --------------------------------------------------------------------------- fleet plan


def _plan_hosts(hosts: int, rng: np.random.Generator) -> list[HostSpec]:
    kinds = list(_FLEET_ORDER[:hosts])
    if hosts > len(_FLEET_ORDER):
        kinds += list(rng.choice(ARCHETYPES, hosts - len(kinds), p=_FLEET_WEIGHTS))
    counts: Counter[str] = Counter()
    specs = []
    for arch in kinds:
        counts[arch] += 1
        cores = int(rng.choice(_CORES[arch]))
        mem_gb = float(max(4, cores * int(rng.choice((2, 4, 8)))))
        flavour = {
            "database": ("mysql", "postgres"),
            "ci": ("make", "gradle"),
            "batch": ("processes", "threads"),
            "cache": ("redis", "memcached"),
            "web": ("workers",),
            "idle": ("none",),
        }[arch]
        specs.append(
            HostSpec(
                name=f"{_PREFIX[arch]}-{counts[arch]:02d}",
                archetype=str(arch),
                cores=cores,
                mem_gb=mem_gb,
                tz_hours=float(rng.choice((-5.0, 0.0, 1.0, 1.0, 8.0))),
                flavour=str(rng.choice(flavour)),
            )
        )
    return specs


def _plan_campaigns(specs: list[HostSpec], rng: np.random.Generator) -> dict[str, list[str]]:
    """Which hosts get which campaign kinds; kinds are spread so a fleet covers them all."""
    n = len(specs)
    n_infected = max(1, round(0.6 * n))
    if n >= 2:
        n_infected = min(n_infected, n - 1)
    order = rng.permutation(n)[:n_infected]
    queue = [str(k) for k in rng.permutation(CAMPAIGN_KINDS)]
    plan: dict[str, list[str]] = {}
    for i in order:
        spec = specs[int(i)]
        count = 1 + int(rng.random() < 0.5)
        chosen: list[str] = []
        for _ in range(count):
            for j, kind in enumerate(queue):
                if kind == "single_thread" and spec.cores < 8:
                    continue
                if kind == "busy_hours" and spec.archetype not in _DIURNAL:
                    continue
                if kind in chosen:
                    continue
                chosen.append(queue.pop(j))
                break
            if not queue:
                queue = [str(k) for k in rng.permutation(CAMPAIGN_KINDS)]
        plan[spec.name] = chosen
    return plan


def _plan_identities(
    specs: list[HostSpec], plan: dict[str, list[str]], rng: np.random.Generator
) -> dict[str, list[str]]:
    """How each planned campaign's process looks, in the fleet-wide mix of IDENTITY_MIX."""
    slots = [(s.name, j) for s in specs for j in range(len(plan.get(s.name, [])))]
    counts = np.floor(np.asarray(IDENTITY_MIX) * len(slots)).astype(int)
    rest = np.asarray(IDENTITY_MIX) * len(slots) - counts
    for i in np.argsort(-rest, kind="stable")[: len(slots) - int(counts.sum())]:
        counts[i] += 1
    queue = [k for k, c in zip(IDENTITY_KINDS, counts.tolist(), strict=True) for _ in range(c)]
    queue = [str(k) for k in rng.permutation(queue)] if queue else []
    out: dict[str, list[str]] = {}
    for (host, _), kind in zip(slots, queue, strict=True):
        out.setdefault(host, []).append(kind)
    return out


# --------------------------------------------------------------------------- benign schedule


def _poisson_times(
    rng: np.random.Generator, clock: _Clock, per_day: float, weight: np.ndarray | None = None
) -> list[float]:
    """Start times (seconds) of a Poisson process, optionally shaped by a per-sample weight."""
    total = clock.n * clock.interval
    count = rng.poisson(per_day * total / DAY)
    if count == 0:
        return []
    if weight is None:
        return sorted(float(x) for x in rng.uniform(0, total, count))
    p = weight / weight.sum()
    idx = rng.choice(clock.n, size=count, p=p)
    return sorted(float(x) for x in (idx + rng.random(count)) * clock.interval)


def _schedule(spec: HostSpec, clock: _Clock, rng: np.random.Generator) -> list[_Event]:
    """Crons, backups, builds, deploys, surges... everything normal that comes and goes."""
    total = clock.n * clock.interval
    days = int(np.ceil(total / DAY)) + 1
    lh = clock.local_hour(spec.tz_hours)
    dow = ((clock.start + clock.secs) // DAY + 3 + np.floor(spec.tz_hours / 24)) % 7  # 0 = Mon
    working = ((lh > 8.5) & (lh < 18.5) & (dow < 5)).astype(float) * 0.9 + 0.1
    ev: list[_Event] = []
    # cron.daily on every host at a fixed UTC minute: logrotate, man-db, apt housekeeping
    at = rng.uniform(0.1, 7.0) * HOUR
    for d in range(days):
        s = d * DAY + at + rng.uniform(0, 40)
        ev.append(
            _Event(
                "cron",
                False,
                [(s, s + _logu(rng, 2 * MIN, 9 * MIN))],
                params={"job": "daily", "cores": rng.uniform(0.5, 1.0)},
            )
        )
    arch = spec.archetype
    if arch == "batch":
        period = float(rng.choice((2.0, 3.0, 4.0, 6.0))) * HOUR
        offset = rng.uniform(0, period)
        base_dur = rng.uniform(10, 40) * MIN
        frac = rng.uniform(0.6, 0.95)
        s = offset
        while s < total:
            dur = base_dur * rng.lognormal(0, 0.25)
            ev.append(
                _Event(
                    "cron",
                    False,
                    [(s, s + dur)],
                    params={"job": "batch", "cores": frac * spec.cores * rng.uniform(0.9, 1.05)},
                )
            )
            s += period + rng.uniform(0, 20)
    if arch == "database":
        at = rng.uniform(0.5, 3.5) * HOUR
        size = rng.uniform(30, 90) * MIN
        for d in range(days):
            s = d * DAY + at + rng.uniform(0, 30)
            dur = size * (1 + 0.01 * d) * rng.lognormal(0, 0.1)
            ev.append(_Event("backup", False, [(s, s + dur)]))
        for t in _poisson_times(rng, clock, 0.25):
            ev.append(_Event("reindex", False, [(t, t + _logu(rng, 15 * MIN, 90 * MIN))]))
    if arch == "ci":
        # builds queue on one runner: Poisson arrivals, mostly in working hours
        t_free = 0.0
        for t in _poisson_times(rng, clock, rng.uniform(15, 40), working**1.5):
            s = max(t, t_free + rng.uniform(5, 60))
            dur = _logu(rng, 3 * MIN, 25 * MIN)
            ev.append(_Event("compile", False, [(s, s + dur)], params={"job": "ci"}))
            t_free = s + dur
    if arch in ("batch", "idle"):
        for t in _poisson_times(rng, clock, 0.3, working):
            ev.append(
                _Event(
                    "compile",
                    False,
                    [(t, t + _logu(rng, 8 * MIN, 50 * MIN))],
                    params={"job": "manual"},
                )
            )
    if arch in ("web", "cache", "database"):
        for t in _poisson_times(rng, clock, 0.35, 0.3 + working):
            ev.append(
                _Event(
                    "traffic_surge",
                    False,
                    [(t, t + _logu(rng, 20 * MIN, 3 * HOUR))],
                    params={"factor": rng.uniform(1.4, 2.6)},
                )
            )
    if arch in ("web", "cache", "ci", "batch", "database"):
        rate = 0.15 if arch == "database" else 0.45
        for t in _poisson_times(rng, clock, rate, working**2):
            ev.append(_Event("deploy", False, [(t, t + _logu(rng, 3 * MIN, 15 * MIN))]))
    if arch in ("web", "cache"):
        for t in _poisson_times(rng, clock, 0.4):
            ev.append(
                _Event(
                    "gc_storm",
                    False,
                    [(t, t + _logu(rng, 2 * MIN, 15 * MIN))],
                    params={"threads": int(rng.integers(2, max(3, spec.cores // 2 + 1)))},
                )
            )
    # interactive admin sessions, a couple a day, mostly in working hours
    for t in _poisson_times(rng, clock, rng.uniform(1.5, 3.0), 0.2 + working):
        ev.append(_Event("admin_burst", False, [(t, t + _logu(rng, 1 * MIN, 15 * MIN))]))
    return [e for e in ev if e.segments[0][0] < total]


def _novelty(
    spec: HostSpec, clock: _Clock, benign: list[_Event], rng: np.random.Generator
) -> list[_Event]:
    """Benign novelty: a tool never run before, package upgrades, a compiler upgrade.

    Drawn from the process model's own generator, so the rest of the host stays as it was.
    """
    total = clock.n * clock.interval
    lh = clock.local_hour(spec.tz_hours)
    working = ((lh > 8.5) & (lh < 18.5)).astype(float) * 0.9 + 0.1
    ev: list[_Event] = []
    tools = [int(i) for i in rng.permutation(len(NEW_TOOLS))]
    for t in _poisson_times(rng, clock, 0.12, working):
        if not tools:
            break
        tool = NEW_TOOLS[tools.pop()]
        ev.append(
            _Event(
                "new_tool", False, [(t, t + _logu(rng, 2 * MIN, 10 * MIN))], params={"tool": tool}
            )
        )
    main = {"database": ("postgres", "mysqld"), "cache": ("redis-server", "memcached")}
    service = [n for n in main.get(spec.archetype, ()) if n.startswith(spec.flavour[:5])]
    daemons = ["sshd", "rsyslogd", "node_exporter", "cron", "systemd-journal", *service]
    at = rng.uniform(6.0, 7.0) * HOUR
    for d in range(int(np.ceil(total / DAY))):
        if rng.random() < 0.2:
            s = d * DAY + at + rng.uniform(0, 1800)
            k = int(rng.integers(1, 4))
            restarts = [str(x) for x in rng.choice(daemons, k, replace=False)]
            ev.append(
                _Event(
                    "package_upgrade",
                    False,
                    [(s, s + _logu(rng, 2 * MIN, 8 * MIN))],
                    params={"restarts": restarts},
                )
            )
    for e in benign:  # a configuration run restarts the service it configured
        if e.kind == "deploy" and service:
            e.params["restarts"] = service
    compiles = sorted((e for e in benign if e.kind == "compile"), key=lambda e: e.segments[0][0])
    make = not (spec.archetype == "ci" and spec.flavour == "gradle")
    if compiles and make and rng.random() < 0.8:
        lo = clock.n_train * clock.interval if clock.n > clock.n_train + 60 else 0.0
        s = rng.uniform(lo, max(lo, total - 2 * HOUR))
        up = s + _logu(rng, 2 * MIN, 6 * MIN)
        after = [e for e in compiles if e.segments[0][0] >= up]
        end = after[0].segments[0][1] if after else up
        ev.append(_Event("toolchain_upgrade", False, [(s, end)], params={"upgrade_end": up}))
    return [e for e in ev if e.segments[0][0] < total]


# --------------------------------------------------------------------------- campaigns


def _place_campaign(
    kind: str,
    spec: HostSpec,
    clock: _Clock,
    lo: float,
    hi: float,
    benign: list[_Event],
    rng: np.random.Generator,
) -> _Event | None:
    """A miner of the given kind somewhere in [lo, hi) seconds; None if it cannot fit."""
    c = spec.cores
    if hi - lo < 45 * MIN:
        return None
    p: dict[str, Any] = {"niced": bool(rng.random() < 0.5)}

    def window(dur: float) -> tuple[float, float]:
        dur = min(dur, hi - lo - 60)
        s = rng.uniform(lo, hi - dur)
        return s, s + dur

    if kind == "full_speed":
        p.update(threads=c if c <= 2 or rng.random() < 0.6 else c - 1, duty=rng.uniform(0.97, 1))
        return _Event(kind, True, [window(_logu(rng, 40 * MIN, 10 * HOUR))], params=p)
    if kind == "throttled":
        f = rng.uniform(0.10, 0.35)
        if rng.random() < 0.5:  # fewer threads at full speed, as a thread-count hint does
            threads = max(1, round(f * c))
            p.update(threads=threads, duty=min(1.0, f * c / threads))
        else:  # every core, duty-cycled, as cpulimit does
            p.update(threads=c, duty=f)
        p["capacity"] = round(f, 3)
        return _Event(kind, True, [window(_logu(rng, 2 * HOUR, 24 * HOUR))], params=p)
    if kind == "single_thread":
        p.update(threads=1, duty=rng.uniform(0.95, 1.0))
        return _Event(kind, True, [window(_logu(rng, 3 * HOUR, 36 * HOUR))], params=p)
    if kind in ("night_only", "busy_hours"):
        if kind == "night_only":
            a, b = 23.0 + rng.uniform(-1, 1), 5.0 + rng.uniform(-1, 1.5)
            p.update(threads=int(rng.integers(max(1, c // 2), c + 1)), duty=rng.uniform(0.9, 1))
        else:
            a, b = 9.5 + rng.uniform(-0.5, 1), 17.5 + rng.uniform(-1, 1)
            f = rng.uniform(0.15, 0.4)
            threads = max(1, round(f * c))
            p.update(threads=threads, duty=min(1.0, f * c / threads), capacity=round(f, 3))
        nights = int(rng.integers(1, 4))
        segs = []
        first_day = np.floor((clock.start + lo) / DAY) - 1
        for d in range(int(np.ceil((hi - lo) / DAY)) + 3):
            day0 = (first_day + d) * DAY - spec.tz_hours * HOUR - clock.start
            s = day0 + a * HOUR
            e = day0 + (b + (24 if b < a else 0)) * HOUR
            s, e = s + rng.uniform(0, 600), e + rng.uniform(0, 600)
            if s >= lo and e <= hi:
                segs.append((s, e))
        if not segs:
            return None
        k = int(rng.integers(0, max(1, len(segs) - nights + 1)))
        return _Event(kind, True, segs[k : k + nights], params=p)
    if kind == "after_cron":
        crons = [
            e
            for e in benign
            if e.kind in ("cron", "backup") and lo <= e.segments[0][1] < hi - 45 * MIN
        ]
        if not crons:
            return None
        cron = crons[int(rng.integers(0, len(crons)))]
        s = cron.segments[0][1] + rng.uniform(1, 20)
        e = min(s + _logu(rng, 40 * MIN, 3 * HOUR), hi)
        p.update(
            threads=max(1, round(c * rng.uniform(0.5, 1.0))),
            duty=rng.uniform(0.9, 1),
            after=cron.params.get("job", cron.kind),
        )
        return _Event(kind, True, [(s, e)], params=p)
    if kind == "ramp":
        s, e = window(_logu(rng, 3 * HOUR, 20 * HOUR))
        p.update(
            threads=c,
            duty=1.0,
            start_capacity=round(rng.uniform(0.02, 0.08), 3),
            end_capacity=round(rng.uniform(0.5, 1.0), 3),
            ramp_hours=round(min(rng.uniform(2, 8), (e - s) / HOUR), 2),
        )
        return _Event(kind, True, [(s, e)], params=p)
    raise ValueError(kind)


def _campaigns(
    spec: HostSpec, kinds: list[str], clock: _Clock, benign: list[_Event], rng: np.random.Generator
) -> list[_Event]:
    lo0 = clock.n_train * clock.interval
    hi0 = (clock.n - 1) * clock.interval
    out = []
    parts = max(1, len(kinds))
    width = (hi0 - lo0) / parts
    for j, kind in enumerate(kinds):
        lo, hi = lo0 + j * width, lo0 + (j + 1) * width
        ev = _place_campaign(kind, spec, clock, lo, hi, benign, rng)
        if ev is None and hi - lo >= 45 * MIN:  # e.g. no night or cron in a short test split
            ev = _place_campaign(
                "full_speed" if j % 2 == 0 else "throttled", spec, clock, lo, hi, benign, rng
            )
        if ev is not None:
            ev.campaign = f"{spec.name}/{j + 1}"
            out.append(ev)
    return out


# --------------------------------------------------------------------------- work model


def _base(
    spec: HostSpec,
    clock: _Clock,
    surge: np.ndarray,
    rng: np.random.Generator,
    load: _Load,
    procs: Procs,
) -> np.ndarray:
    """The archetype's own rhythm; returns the demand curve (1 = a normal peak)."""
    n, iv, c = clock.n, clock.interval, spec.cores
    lh = clock.local_hour(spec.tz_hours)
    dow = ((clock.start + clock.secs + spec.tz_hours * HOUR) // DAY + 3) % 7
    weekend = np.where(dow >= 5, rng.uniform(0.55, 0.85), 1.0)
    days = int(np.ceil(n * iv / DAY)) + 2
    day_level = np.interp(clock.secs, (np.arange(days) - 0.5) * DAY, rng.lognormal(0, 0.12, days))
    wiggle = np.exp(0.08 * _ar1(rng, n, 10 * MIN, iv) + 0.04 * rng.standard_normal(n))
    arch = spec.archetype
    sl = slice(0, n)
    if arch in ("web", "cache", "database"):
        evening = rng.uniform(0.5, 1.1)
        curve = 0.5 * _bump(lh, 11.0, 2.5) + evening * _bump(lh, 20.0, 3.0)
        curve = curve / curve.max() if curve.max() > 0 else curve
        floor = rng.uniform(0.08, 0.25)
        demand = (floor + (1 - floor) * curve) * weekend * day_level * wiggle * surge
    else:
        demand = 0.05 * wiggle * day_level
    if arch == "web":
        peak = c * rng.uniform(0.25, 0.55)  # cores at a normal peak
        req = demand * c * rng.uniform(40, 120)  # requests per second
        cpu = demand * peak
        workers = 2 * c + 1
        load.add(
            sl,
            user=0.8 * cpu,
            system=0.2 * cpu,
            threads=cpu * 1.15,
            running=cpu,
            ctx=req * rng.uniform(4, 9),
            rx_pps=req * 6,
            rx_bps=req * 6 * rng.uniform(150, 300),
            tx_pps=req * 9,
            tx_bps=req * 9 * rng.uniform(900, 1300),
            tcp=req * rng.uniform(0.1, 0.4),
            top=np.minimum(100, cpu / workers * 100 * 2.5),
            write_bps=req * rng.uniform(150, 400),
            procs=workers + 20,
            mem_gb=spec.mem_gb * rng.uniform(0.2, 0.35),
        )
        procs.base(sl, cpu)
    elif arch == "cache":
        pps = demand * rng.uniform(8000, 40000) * (c / 4) ** 0.5
        cpu = pps / rng.uniform(40000, 80000) * c**0.3
        single = spec.flavour == "redis"
        load.add(
            sl,
            user=0.45 * cpu,
            system=0.55 * cpu,
            threads=cpu * 1.05,
            running=cpu,
            ctx=pps * rng.uniform(0.3, 0.8),
            rx_pps=pps,
            rx_bps=pps * rng.uniform(90, 180),
            tx_pps=pps * 1.02,
            tx_bps=pps * rng.uniform(250, 700),
            tcp=rng.uniform(200, 1500) * (0.8 + 0.2 * demand),
            top=np.minimum(100.0, cpu * 85) if single else cpu * 80,
            mem_gb=spec.mem_gb * rng.uniform(0.4, 0.6),
            procs=4,
        )
        procs.base(sl, cpu)
    elif arch == "database":
        cpu = demand * c * rng.uniform(0.12, 0.35)
        qps = demand * c * rng.uniform(80, 300)
        top = cpu * 95 if spec.flavour == "mysql" else np.minimum(100.0, cpu * 100 / 3)
        load.add(
            sl,
            user=0.75 * cpu,
            system=0.25 * cpu,
            threads=cpu * 1.2,
            running=cpu,
            iowait=0.02 * cpu,
            ctx=qps * rng.uniform(3, 6),
            rx_pps=qps * 3,
            rx_bps=qps * 3 * rng.uniform(150, 400),
            tx_pps=qps * 4,
            tx_bps=qps * 4 * rng.uniform(500, 1200),
            tcp=rng.uniform(40, 300) + qps * 0.02,
            top=top,
            read_bps=qps * rng.uniform(2000, 8000),
            write_bps=qps * rng.uniform(1500, 5000),
            procs=(15 if spec.flavour == "mysql" else 80) + 20 * demand,
            mem_gb=spec.mem_gb * rng.uniform(0.55, 0.75),
        )
        procs.base(sl, cpu)
    elif arch == "ci":
        load.add(
            sl,
            tcp=3.0,
            rx_bps=400.0,
            tx_bps=300.0,
            rx_pps=3.0,
            tx_pps=3.0,
            mem_gb=spec.mem_gb * 0.08,
            procs=15,
        )
    elif arch == "batch":
        load.add(sl, mem_gb=spec.mem_gb * 0.1, procs=10)
    return demand


def _background(
    spec: HostSpec, clock: _Clock, rng: np.random.Generator, load: _Load, procs: Procs
) -> None:
    """OS daemons, monitoring and logging that every host has, plus slow memory drift."""
    n, iv, c = clock.n, clock.interval, spec.cores
    sl = slice(0, n)
    daemons = rng.uniform(0.01, 0.04) * c**0.5 * np.exp(0.3 * _ar1(rng, n, 5 * MIN, iv))
    drift = _ar1(rng, n, 1.5 * DAY, iv) * rng.uniform(0.02, 0.06)
    leak = (clock.secs / DAY) * rng.uniform(0.0, 0.015)
    load.add(
        sl,
        user=0.6 * daemons,
        system=0.4 * daemons,
        threads=daemons + 0.05,
        running=daemons,
        procs=rng.uniform(110, 160) + 4 * c**0.5,
        ctx=rng.uniform(80, 200) * c**0.6,
        tcp=float(rng.integers(3, 9)),
        rx_bps=rng.uniform(1500, 6000),
        rx_pps=rng.uniform(10, 30),
        tx_bps=rng.uniform(2000, 9000),
        tx_pps=rng.uniform(8, 25),
        write_bps=rng.uniform(20e3, 150e3) * np.exp(0.5 * _ar1(rng, n, 2 * MIN, iv)),
        read_bps=rng.uniform(0, 20e3) * np.exp(_ar1(rng, n, 2 * MIN, iv)),
        top=daemons * 100 * rng.uniform(0.3, 0.6),
        mem_gb=spec.mem_gb * (rng.uniform(0.08, 0.15) + drift + leak),
    )
    procs.background(sl, daemons)


def _apply_event(
    ev: _Event,
    spec: HostSpec,
    clock: _Clock,
    rng: np.random.Generator,
    load: _Load,
    procs: Procs,
) -> None:
    """Add one benign event's work; mining is added later because it competes for CPU."""
    c = spec.cores
    segments = ev.segments
    if ev.kind == "toolchain_upgrade":  # the label runs on to the first build that uses it
        segments = [(ev.segments[0][0], ev.params["upgrade_end"])]
    for s, e in segments:
        sl, fr, alive = clock.span(s, e)
        m = len(fr)
        if m == 0:
            continue
        a = alive.astype(float)
        jit = np.exp(0.15 * rng.standard_normal(m))
        k = ev.kind
        if k == "cron":
            cores = ev.params["cores"] * fr * jit
            if ev.params.get("job") == "batch" and spec.flavour == "threads":
                top = np.minimum(cores, c) * 100 * 0.9 * a
                nproc = 3 * a
            else:
                top = np.minimum(100.0, cores * 100) * a
                nproc = np.ceil(ev.params["cores"]) * a + 2 * a
            load.add(
                sl,
                user=0.85 * cores,
                system=0.15 * cores,
                threads=cores * 1.05,
                running=cores * a,
                iowait=0.05 * cores,
                procs=nproc,
                top=top,
                ctx=cores * rng.uniform(300, 900),
                read_bps=cores * rng.uniform(3e6, 15e6) * jit,
                write_bps=cores * rng.uniform(1e6, 8e6) * jit,
                mem_gb=np.minimum(spec.mem_gb * 0.45, cores * rng.uniform(0.3, 1.0)) * a,
            )
            procs.event(ev, sl, cores, {})
        elif k == "backup":
            gz = np.minimum(1.0, rng.uniform(0.85, 1.0) * jit) * fr
            dump = rng.uniform(0.3, 0.7) * fr * jit
            rd = rng.uniform(60e6, 250e6) * fr * jit
            ship = rd * rng.uniform(0.15, 0.3)  # compressed dump streamed to the backup server
            load.add(
                sl,
                user=gz + 0.6 * dump,
                system=0.1 + 0.4 * dump,
                iowait=rng.uniform(0.3, 1.5) * fr,
                threads=gz + dump + 0.5,
                running=2 * a,
                procs=3 * a,
                top=gz * 100 * a,
                ctx=rng.uniform(2000, 6000) * fr,
                read_bps=rd,
                write_bps=rd * 0.05,
                tx_bps=ship,
                tx_pps=ship / 1400,
                rx_pps=ship / 2800,
                rx_bps=ship / 2800 * 66,
                tcp=1 * a,
            )
            rest = np.full(m, 0.1)
            procs.event(ev, sl, gz + dump + rest, {"gz": gz, "dump": dump, "rest": rest})
        elif k == "reindex":
            cores = rng.uniform(1, max(1.5, c / 4)) * fr * jit
            if spec.flavour == "postgres":  # one process per core: a leader and its workers
                cores = np.minimum(cores, PG_MAINTENANCE_PROCS)
            load.add(
                sl,
                user=0.8 * cores,
                system=0.2 * cores,
                iowait=0.3 * fr,
                threads=cores,
                running=cores * a,
                top=cores * 100 * a,
                read_bps=rng.uniform(30e6, 150e6) * fr * jit,
                write_bps=rng.uniform(20e6, 100e6) * fr * jit,
                ctx=cores * 800,
                mem_gb=spec.mem_gb * 0.05 * a,
            )
            procs.event(ev, sl, cores, {})
        elif k == "compile":
            frac = rng.uniform(0.5, 1.0) if ev.params.get("job") == "ci" else rng.uniform(0.7, 1.0)
            cores = frac * c * fr * np.minimum(1, jit)
            # first minutes fetch dependencies, the rest compiles with many short processes
            fetch = (np.arange(m) * clock.interval < rng.uniform(30, 180)).astype(float)
            dl = rng.uniform(5e6, 40e6) * fr
            gradle = spec.flavour == "gradle"
            top = (
                np.minimum(cores, c) * rng.uniform(35, 70)
                if gradle
                else rng.uniform(95, 100) * np.minimum(1, cores)
            ) * a
            load.add(
                sl,
                user=0.72 * cores,
                system=0.28 * cores,
                iowait=0.03 * cores,
                threads=cores * 1.3,
                running=cores * a * 1.1,
                procs=a * rng.uniform(40, 300) * jit,
                ctx=cores * rng.uniform(2500, 9000),
                top=top,
                write_bps=cores * rng.uniform(1e6, 6e6),
                read_bps=cores * rng.uniform(0.3e6, 3e6),
                rx_bps=fetch * dl,
                rx_pps=fetch * dl / rng.uniform(1100, 1450),
                tx_pps=fetch * dl / rng.uniform(2200, 2900),
                tx_bps=fetch * dl / rng.uniform(2200, 2900) * 66,
                tcp=a * fetch * 20 + a * 2,
                mem_gb=np.minimum(spec.mem_gb * 0.5, cores * rng.uniform(0.3, 0.8)) * a,
            )
            procs.event(ev, sl, cores, {})
        elif k == "deploy":
            cores = rng.uniform(0.8, min(3.0, c)) * fr * jit
            dl = rng.uniform(3e6, 40e6) * fr * jit
            load.add(
                sl,
                user=0.7 * cores,
                system=0.3 * cores,
                threads=cores * 1.2,
                running=cores * a,
                procs=a * rng.uniform(10, 60),
                top=np.minimum(100, cores * 100) * a,
                ctx=cores * 3000,
                write_bps=rng.uniform(10e6, 80e6) * fr * jit,
                read_bps=rng.uniform(1e6, 20e6) * fr * jit,
                rx_bps=dl,
                rx_pps=dl / rng.uniform(1100, 1450),
                tx_pps=dl / rng.uniform(2200, 2900),
                tx_bps=dl / rng.uniform(2200, 2900) * 66,
                tcp=a * rng.uniform(2, 10),
            )
            procs.event(ev, sl, cores, {})
        elif k == "gc_storm":
            th = ev.params["threads"]
            cores = th * rng.uniform(0.7, 0.98) * fr
            load.add(
                sl,
                user=0.8 * cores,
                system=0.2 * cores,
                threads=cores,
                running=th * a,
                top=cores * 100 * a + 30 * a,
                ctx=cores * rng.uniform(200, 800),
                mem_gb=spec.mem_gb * rng.uniform(0.05, 0.15) * a,
            )
            procs.event(ev, sl, cores, {})
        elif k == "admin_burst":
            spikes = (rng.random(m) < 0.4) * rng.uniform(0.2, 1.5, m) * min(c, 2) * fr
            load.add(
                sl,
                user=0.7 * spikes,
                system=0.3 * spikes,
                threads=spikes + 0.2,
                running=spikes * a,
                procs=a * rng.uniform(5, 30),
                tcp=a * rng.integers(1, 3),
                top=np.minimum(100, spikes * 100) * a,
                ctx=spikes * 2000 + 300 * fr,
                read_bps=spikes * rng.uniform(5e6, 60e6),
                rx_bps=a * rng.uniform(500, 8e3),
                rx_pps=a * rng.uniform(5, 40),
                tx_bps=a * rng.uniform(2e3, 6e4),
                tx_pps=a * rng.uniform(5, 60),
            )
            procs.event(ev, sl, spikes, {})
        elif k == "new_tool":
            threads = min(int(ev.params["tool"][2]), c)
            cores = threads * rng.uniform(0.7, 0.98) * fr * np.minimum(1, jit)
            rd = rng.uniform(50e6, 300e6) * fr * jit
            load.add(
                sl,
                user=0.85 * cores,
                system=0.15 * cores,
                iowait=0.2 * fr,
                threads=cores + 0.2,
                running=cores * a,
                procs=a * 2,
                ctx=cores * rng.uniform(500, 2000),
                read_bps=rd,
                write_bps=rd * rng.uniform(0.2, 0.9),
            )
            procs.event(ev, sl, cores, {})
        elif k in ("package_upgrade", "toolchain_upgrade"):
            cores = rng.uniform(0.5, 1.0) * fr * jit
            dl = rng.uniform(2e6, 60e6) * fr * jit
            load.add(
                sl,
                user=0.6 * cores,
                system=0.4 * cores,
                iowait=0.1 * fr,
                threads=cores + 0.3,
                running=cores * a,
                procs=a * rng.uniform(5, 30),
                ctx=cores * 2500,
                write_bps=rng.uniform(5e6, 40e6) * fr * jit,
                read_bps=rng.uniform(2e6, 20e6) * fr * jit,
                rx_bps=dl,
                rx_pps=dl / rng.uniform(1100, 1450),
                tx_pps=dl / rng.uniform(2200, 2900),
                tx_bps=dl / rng.uniform(2200, 2900) * 66,
                tcp=a * 2,
            )
            procs.event(ev, sl, cores, {})


def _surge_curve(events: list[_Event], clock: _Clock, rng: np.random.Generator) -> np.ndarray:
    """Demand multiplier from traffic surges (rise, plateau, fall) and GC pauses."""
    mult = np.ones(clock.n)
    for ev in events:
        s, e = ev.segments[0]
        sl, fr, _ = clock.span(s, e)
        m = len(fr)
        if m == 0:
            continue
        if ev.kind == "traffic_surge":
            x = np.linspace(0, np.pi, m)
            shape = np.minimum(1.0, 3 * np.sin(x)) * fr
            mult[sl] *= 1 + (ev.params["factor"] - 1) * shape
        elif ev.kind == "gc_storm":
            mult[sl] *= 1 - rng.uniform(0.1, 0.35) * fr  # stalled requests: throughput dips
    return mult


def _apply_miner(
    ev: _Event,
    spec: HostSpec,
    clock: _Clock,
    rng: np.random.Generator,
    load: _Load,
    miner: dict[str, np.ndarray],
    procs: Procs,
) -> None:
    """Record the miner's CPU demand; it is reconciled with legitimate work in _finalise."""
    p = ev.params
    c = spec.cores
    for j, (s, e) in enumerate(ev.segments):
        sl, fr, alive = clock.span(s, e)
        m = len(fr)
        if m == 0:
            continue
        a = alive.astype(float)
        procs.campaign(ev, sl, alive, j)
        if ev.kind == "ramp":
            t = np.arange(sl.start, sl.stop) * clock.interval - s
            cap = p["start_capacity"] + (p["end_capacity"] - p["start_capacity"]) * np.clip(
                t / (p["ramp_hours"] * HOUR), 0, 1
            )
            threads = np.maximum(1, np.ceil(cap * c - 1e-9))
            duty = cap * c / threads
        else:
            threads = np.full(m, float(p["threads"]))
            duty = np.full(m, float(p["duty"]))
        # hashing is steady, but pool reconnects and new jobs stall it now and then
        stall = 1 - (rng.random(m) < 0.004) * rng.uniform(0.3, 1.0, m)
        duty = np.clip(
            duty
            * stall
            * np.exp(0.015 * _ar1(rng, m, 5 * MIN, clock.interval) + 0.01 * rng.standard_normal(m)),
            0,
            1,
        )
        miner["want"][sl] += threads * duty * fr
        miner["threads"][sl] += threads * a
        miner["duty"][sl] = duty
        miner["alive"][sl] += a
        # stratum: one long-lived pool connection, job notifications in, shares out
        load.add(
            sl,
            tcp=a * (1 + (rng.random(m) < 0.02)),
            procs=a * (1 + (j == 0)),
            rx_bps=a * rng.uniform(40, 120),
            rx_pps=a * rng.uniform(0.3, 1.0),
            tx_bps=a * rng.uniform(15, 60) * np.minimum(1, threads * duty / 4 + 0.3),
            tx_pps=a * rng.uniform(0.3, 0.9),
            ctx=threads * duty * fr * rng.uniform(20, 60),
            mem_gb=a * (2.4 if spec.mem_gb >= 8 else 0.35),
        )
        if j == 0:  # the dropper fetched the miner binary just before it started
            size = rng.uniform(2e6, 9e6)
            load.add(
                slice(sl.start, sl.start + 1),
                rx_bps=size / clock.interval,
                rx_pps=size / 1400 / clock.interval,
                write_bps=size / clock.interval,
                tx_pps=size / 2800 / clock.interval,
                tx_bps=size / 2800 * 66 / clock.interval,
            )


def _finalise(
    spec: HostSpec,
    clock: _Clock,
    load: _Load,
    miner: dict[str, np.ndarray],
    niced: np.ndarray,
    rng: np.random.Generator,
    procs: Procs,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Turn work into the metrics a collector would read, with contention and sensor noise."""
    n, c, iv = clock.n, float(spec.cores), clock.interval
    cap = c * 0.998
    legit = load.user + load.system
    over = np.maximum(legit / cap, 1.0)
    user, system = load.user / over, load.system / over
    legit = user + system
    want = miner["want"]
    free = np.maximum(cap - legit, 0)
    shared = np.where(legit + want > cap, cap / np.maximum(legit + want, 1e-9), 1.0)
    got = np.where(niced > 0, np.minimum(want, free), want * shared)
    user = np.where(niced > 0, user, user * shared) + 0.985 * got
    system = np.where(niced > 0, system, system * shared) + 0.015 * got
    busy = user + system
    iowait = np.minimum(load.iowait, np.maximum(c - busy, 0))

    def noisy(x: np.ndarray, rel: float) -> np.ndarray:
        return x * np.exp(rel * rng.standard_normal(n))

    user_p = np.clip(noisy(user, 0.04) / c * 100 + rng.normal(0, 0.05, n), 0.01, None)
    sys_p = np.clip(noisy(system, 0.06) / c * 100 + rng.normal(0, 0.03, n), 0.01, None)
    scale = np.maximum((user_p + sys_p) / 100, 1.0)
    user_p, sys_p = user_p / scale, sys_p / scale
    io_p = np.clip(noisy(iowait, 0.2) / c * 100 + np.abs(rng.normal(0, 0.03, n)), 0, None)
    io_p = np.minimum(io_p, 100 - user_p - sys_p)

    # load1: runnable + D-state tasks, sampled every 5 s by the kernel, 1-minute decay
    runnable = load.threads + miner["threads"] * miner["duty"] + load.iowait * 0.8
    inst = rng.poisson(np.maximum(runnable, 0)).astype(float)
    alpha = 1 - np.exp(-iv / 60.0)
    from scipy.signal import lfilter

    load1 = lfilter([alpha], [1, -(1 - alpha)], inst, zi=[inst[0] * (1 - alpha)])[0]

    running = (
        1
        + rng.poisson(np.maximum(load.running, 0))
        + rng.binomial(miner["threads"].astype(int), np.clip(miner["duty"], 0, 1))
    )
    procs_total = np.round(noisy(load.procs, 0.01) + rng.normal(0, 1.5, n))
    procs_total = np.maximum(procs_total, running + 40)

    top_miner = np.where(miner["alive"] > 0, got * 100 * np.exp(0.02 * rng.standard_normal(n)), 0)
    # who used the CPU: the busiest process listed is top_proc_cpu_percent, to the digit written
    top_miner = np.minimum(top_miner, (user_p + sys_p) * c)  # never more than the host used
    rows, tenths = procs.finish((user_p + sys_p) * c, top_miner)
    top = np.clip(tenths / 10.0, 0.1, c * 100)

    mem = noisy(load.mem_gb, 0.002) / spec.mem_gb * 100 + rng.normal(0, 0.03, n)

    ts = clock.start + clock.secs + rng.normal(0, 0.004, n)
    dt = np.diff(ts, prepend=ts[0] - iv)

    def counter(rate: np.ndarray, unit: float = 1.0) -> np.ndarray:
        """Rates read from integer counters over the real interval, as a collector sees them."""
        total = np.round(np.maximum(rate, 0) * dt / unit)
        return total * unit / dt

    rx_pps = noisy(load.rx_pps, 0.05)
    tx_pps = noisy(load.tx_pps, 0.05)
    out = {
        "timestamp": np.round(ts, 3),
        "cpu_percent": user_p + sys_p,
        "cpu_user_percent": user_p,
        "cpu_system_percent": sys_p,
        "cpu_iowait_percent": io_p,
        "load1": load1,
        "mem_percent": np.clip(mem, 0.5, 99.5),
        "disk_read_bps": counter(noisy(load.read_bps, 0.3), 4096),
        "disk_write_bps": counter(noisy(load.write_bps, 0.25), 4096),
        "net_rx_bps": counter(np.clip(noisy(load.rx_bps, 0.05), rx_pps * 60, rx_pps * 1514)),
        "net_tx_bps": counter(np.clip(noisy(load.tx_bps, 0.05), tx_pps * 60, tx_pps * 1514)),
        "net_rx_pps": counter(rx_pps),
        "net_tx_pps": counter(tx_pps),
        "tcp_established": np.maximum(0, rng.poisson(np.maximum(load.tcp, 0))),
        "procs_total": procs_total,
        "procs_running": running.astype(float),
        "ctx_switches_ps": counter(noisy(load.ctx + 50 * c, 0.05)),
        "top_proc_cpu_percent": top,
        "cpu_cores": np.full(n, float(c)),
    }
    return out, rows


# --------------------------------------------------------------------------- one host


def _host(
    spec: HostSpec,
    kinds: list[str],
    looks: list[str],
    clock: _Clock,
    seed: np.random.SeedSequence,
    proc_seed: np.random.SeedSequence,
) -> tuple[dict[str, np.ndarray], np.ndarray, list[_Event], Procs, dict[str, np.ndarray]]:
    """All samples of one host, the mask of samples written, its events and process table."""
    rng = np.random.default_rng(seed)
    prng = np.random.default_rng(proc_seed)
    benign = _schedule(spec, clock, rng)
    novel = _novelty(spec, clock, benign, prng)
    procs = Procs(spec, clock, prng)
    procs.plan(benign + novel)
    load = _Load(clock.n)
    demand_mult = _surge_curve(benign, clock, rng)
    _base(spec, clock, demand_mult, rng, load, procs)
    _background(spec, clock, rng, load, procs)
    for ev in benign:
        _apply_event(ev, spec, clock, rng, load, procs)
    for ev in novel:
        _apply_event(ev, spec, clock, prng, load, procs)
    campaigns = _campaigns(spec, kinds, clock, benign, rng)
    for ev in campaigns:
        j = int(str(ev.campaign).rsplit("/", 1)[1]) - 1
        ev.params["process"] = procs.campaign_identity(ev, looks[j] if j < len(looks) else "new")
    miner = {k: np.zeros(clock.n) for k in ("want", "threads", "duty", "alive")}
    niced = np.zeros(clock.n)
    for ev in campaigns:
        _apply_miner(ev, spec, clock, rng, load, miner, procs)
        if ev.params.get("niced"):
            for s, e in ev.segments:
                niced[clock.span(s, e)[0]] = 1
    cols, rows = _finalise(spec, clock, load, miner, niced, rng, procs)
    # collector hiccups: single lost samples and a couple of longer outages
    keep = rng.random(clock.n) > 0.002
    for _ in range(rng.poisson(1.5 * clock.n * clock.interval / (7 * DAY)) if clock.n > 1 else 0):
        i = int(rng.integers(0, clock.n))
        keep[i : i + int(rng.uniform(2, 20) * MIN / clock.interval) + 1] = False
    return (
        cols,
        keep,
        sorted(benign + novel, key=lambda e: e.segments[0][0]) + campaigns,
        procs,
        rows,
    )


def _labels_for(
    ev: _Event, host: str, clock: _Clock, ts: np.ndarray, keep: np.ndarray
) -> list[dict[str, Any]]:
    """Exact labels: first and last written sample each segment touches, cut at the split."""
    out = []
    for s, e in ev.segments:
        sl, fr, alive = clock.span(s, e)
        idx = np.arange(sl.start, sl.stop)[(fr > 0) | alive]
        for split, part in (
            ("train", idx[idx < clock.n_train]),
            ("test", idx[idx >= clock.n_train]),
        ):
            part = part[keep[part]]
            if len(part) == 0:
                continue
            label: dict[str, Any] = {
                "host": host,
                "kind": ev.kind,
                "malicious": ev.malicious,
                "start": float(ts[part[0]]),
                "end": float(ts[part[-1]]),
                "split": split,
            }
            if ev.campaign:
                label["campaign"] = ev.campaign
            if ev.malicious:
                look = dict(ev.params.get("process", {}))
                if look:
                    label["identity"] = look.pop("identity")
                    label["process"] = look
                label["params"] = {
                    k: (round(v, 3) if isinstance(v, float) else v)
                    for k, v in ev.params.items()
                    if k != "process"
                }
            out.append(label)
    return out


# --------------------------------------------------------------------------- files


def _atomic_write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text, mode=0o644)  # data, not evidence: readable like any dataset


#: Upper estimates per sample of one host, measured on simulated fleets (2026-12-06): bytes
#: written (the host CSV; its process table, the busiest processes of each sample, adds the
#: rest) and bytes of memory while the host is generated (one host at a time).
DISK_PER_SAMPLE = 140
DISK_PER_SAMPLE_PROCS = 1_100
MEMORY_PER_SAMPLE = 10_000


def _size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_room(output: Path, hosts: int, samples: int, procs: bool) -> None:
    """Refuse, before anything is written, a fleet that would fill the output's file system or
    not fit in memory (a year of hosts every second), saying the estimate and what is free."""
    need = hosts * samples * (DISK_PER_SAMPLE_PROCS if procs else DISK_PER_SAMPLE)
    where = output.absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        free = None
    if free is not None and need > free:
        raise InputError(
            str(output),
            None,
            f"room for about {_size(need)} ({hosts} host{'s' * (hosts != 1)} x {samples} samples"
            + (", with process tables; --no-procs writes about an eighth" if procs else "")
            + "): fewer --hosts or days, or a longer --interval",
            f"{_size(free)} free on its file system",
        )
    memory = samples * MEMORY_PER_SAMPLE
    available = _available_memory()
    if available is not None and memory > available:
        raise InputError(
            "--train-days/--test-days/--interval",
            None,
            f"a host that fits in memory (each host's {samples} samples are generated in "
            f"memory, about {_size(memory)}): fewer days or a longer --interval",
            f"{_size(available)} available",
        )


def _clear_previous(output: Path) -> None:
    """Remove the files an earlier ``simulate`` wrote into ``output`` (the hosts its
    ``labels.json`` lists), so a run into the same folder never leaves old hosts beside the
    new ones, where ``train`` and ``evaluate`` would read them. Telemetry of any other origin
    in ``train/`` or ``test/`` is refused (InputError), never deleted."""
    labels_path = output / "labels.json"
    hosts: list[str] = []
    if labels_path.is_file():
        try:
            old = json.loads(labels_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            old = None
        if isinstance(old, dict) and old.get("generator") == "minerwatch simulate":
            hosts = [str(h) for h in old.get("hosts") or {}]
    owned = {f"{h}{suffix}" for h in hosts for suffix in (".csv", ".procs.csv")}
    foreign = [
        f
        for split in ("train", "test")
        if (output / split).is_dir()
        for f in sorted((output / split).iterdir())
        if f.suffix in (".csv", ".parquet") and f.name not in owned
    ]
    if foreign:
        shown = ", ".join(str(f) for f in foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise InputError(
            str(output),
            None,
            "a new or empty folder, or one an earlier 'minerwatch simulate' wrote",
            f"{len(foreign)} telemetry files of another origin ({shown})",
        )
    if hosts:
        labels_path.unlink()
        for split in ("train", "test"):
            for name in owned:
                (output / split / name).unlink(missing_ok=True)


def _csv_text(
    host: str, cols: dict[str, np.ndarray], rows: np.ndarray, rng: np.random.Generator
) -> str:
    """CSV of the given rows, with a few rows sent twice (late, out of order) as shippers do."""
    order = list(rows)
    if len(order) > 20:
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(10, len(order)))
            size = int(rng.integers(1, 5))
            order[at:at] = order[max(0, at - 10 - size) : max(0, at - 10)]
    fmt = "%.3f," + host.replace("%", "%%") + "," + ",".join(_FORMATS[m] for m in METRIC_COLUMNS)
    table = np.column_stack([cols["timestamp"]] + [cols[m] for m in METRIC_COLUMNS])[order]
    lines = [",".join(TELEMETRY_COLUMNS)]
    lines += [fmt % tuple(r) for r in table.tolist()]
    return "\n".join(lines) + "\n"


def simulate(
    output: Path,
    hosts: int = 12,
    train_days: float = 7,
    test_days: float = 3,
    seed: int = 0,
    interval: float = 30.0,
    start: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    procs: bool = True,
) -> dict[str, Any]:
    """Write ``output/train/<host>.csv``, ``output/test/<host>.csv`` and ``output/labels.json``.

    Deterministic for a given seed and parameters. Mining campaigns appear only in the test
    split; benign events (crons, backups, builds, surges...) in both. Returns the labels dict
    that is also written to ``labels.json``. ``progress(done, total)`` is called per host.
    With ``procs`` each file has its process table beside it (``<host>.procs.csv``); the host
    samples are the same either way.
    """
    if hosts < 1:
        raise InputError("--hosts", None, "at least 1 host", str(hosts))
    if not (train_days > 0 and test_days >= 0 and math.isfinite(train_days + test_days)):
        raise InputError(
            "--train-days/--test-days",
            None,
            "train > 0 and test >= 0 finite days",
            f"{train_days}/{test_days}",
        )
    if not 1.0 <= interval <= HOUR:
        raise InputError("--interval", None, "1 to 3600 seconds", str(interval))
    t0 = DEFAULT_START if start is None else float(start)
    n_train = max(1, round(train_days * DAY / interval))
    n_test = round(test_days * DAY / interval)
    _check_room(Path(output), hosts, n_train + n_test, procs)
    clock = _Clock(n=n_train + n_test, interval=interval, start=t0, n_train=n_train)
    root = np.random.SeedSequence(seed)
    fleet_seq, *host_seqs = root.spawn(hosts + 1)
    fleet_rng = np.random.default_rng(fleet_seq)
    specs = _plan_hosts(hosts, fleet_rng)
    plan = _plan_campaigns(specs, fleet_rng)
    looks = _plan_identities(specs, plan, np.random.default_rng(root.spawn(1)[0]))
    output = Path(output)
    _clear_previous(output)
    events: list[dict[str, Any]] = []
    written: list[Path] = []
    try:
        for i, (spec, seq) in enumerate(zip(specs, host_seqs, strict=True)):
            host_seq, file_seq, proc_seq = seq.spawn(3)
            cols, keep, host_events, table, listed = _host(
                spec, plan.get(spec.name, []), looks.get(spec.name, []), clock, host_seq, proc_seq
            )
            file_rng = np.random.default_rng(file_seq)
            idx = np.arange(clock.n)
            stamps = [f"{t:.3f}" for t in cols["timestamp"].tolist()]
            for split, mask in (("train", idx < n_train), ("test", idx >= n_train)):
                rows = idx[mask & keep]
                path = output / split / f"{spec.name}.csv"
                written.append(path)
                _atomic_write(path, _csv_text(spec.name, cols, rows, file_rng))
                if procs:
                    pick = (mask & keep)[listed["sample"]]
                    text = procs_csv(spec.name, table.idents, listed, stamps, pick)
                    written.append(output / split / f"{spec.name}.procs.csv")
                    _atomic_write(written[-1], text)
            for ev in host_events:
                events.extend(_labels_for(ev, spec.name, clock, cols["timestamp"], keep))
            if progress is not None:
                progress(i + 1, hosts)
    except BaseException:
        # stopped half-way (Ctrl-C, SIGTERM, a full disk): without labels.json its hosts are
        # no simulation's, and the same command then refused the folder as "of another origin"
        for path in written:
            path.unlink(missing_ok=True)
        raise
    events.sort(key=lambda e: (e["start"], e["host"], e["kind"]))
    labels: dict[str, Any] = {
        "generator": "minerwatch simulate",
        "schema_version": SCHEMA_VERSION,
        "parameters": {
            "seed": seed,
            "hosts": hosts,
            "train_days": train_days,
            "test_days": test_days,
            "interval": interval,
            "start": t0,
            "procs": procs,
        },
        "start": t0,
        "end": t0 + (clock.n - 1) * interval,
        "splits": {
            "train": {"start": t0, "end": t0 + (n_train - 1) * interval},
            "test": {"start": t0 + n_train * interval, "end": t0 + (clock.n - 1) * interval},
        },
        "hosts": {
            s.name: {
                "archetype": s.archetype,
                "cores": s.cores,
                "mem_gb": s.mem_gb,
                "flavour": s.flavour,
                "users_utc_offset_hours": s.tz_hours,
            }
            for s in specs
        },
        "events": events,
    }
    _atomic_write(output / "labels.json", json.dumps(labels, indent=1) + "\n")
    return labels


# --------------------------------------------------------------------------- CLI


def run(args: argparse.Namespace) -> int:
    """CLI entry: generate, then print a short summary. InputError propagates (exit code 2)."""
    labels = simulate(
        Path(args.output),
        hosts=args.hosts,
        train_days=args.train_days,
        test_days=args.test_days,
        seed=args.seed,
        interval=args.interval,
        start=getattr(args, "start", None),
        procs=not getattr(args, "no_procs", False),
    )
    archetypes = Counter(h["archetype"] for h in labels["hosts"].values())
    kinds = Counter(e["kind"] for e in labels["events"])
    campaigns = {e["campaign"] for e in labels["events"] if e["malicious"]}
    infected = {e["host"] for e in labels["events"] if e["malicious"]}
    t0 = datetime.fromtimestamp(labels["start"], UTC).strftime("%Y-%m-%d %H:%M")
    print(
        f"wrote {len(labels['hosts'])} host{'s' if len(labels['hosts']) != 1 else ''} "
        f"to {args.output} "
        f"({args.train_days:g} train + {args.test_days:g} test days from {t0} UTC, "
        f"every {args.interval:g} s, seed {args.seed})"
    )
    print("archetypes: " + ", ".join(f"{k} {v}" for k, v in sorted(archetypes.items())))
    print(
        f"campaigns: {len(campaigns)} on {len(infected)} hosts; events by kind: "
        + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
    )
    looks = Counter(
        e.get("identity") for e in labels["events"] if e["malicious"] and e.get("identity")
    )
    print(
        "campaign identities (label segments): "
        + ", ".join(f"{k} {looks[k]}" for k in IDENTITY_KINDS if looks[k])
        + (
            "; process tables beside the samples"
            if labels["parameters"]["procs"]
            else "; no process tables"
        )
    )
    return 0
