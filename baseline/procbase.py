"""The process baseline: which processes this host runs, and what in a sample is new or odd.

Learnt from the same training period as the host model and saved with it; numpy only, so
the agent scores with it. It turns each sample's process rows into a few per-sample columns
(percent of one core) that join the host's samples before the one feature pipeline cuts
windows, so training, batch scoring and the agent compute the same process features:

- ``proc_new_cpu_percent``: CPU of identities this host never ran, from outside the
  package-managed folders;
- ``proc_new_tool_cpu_percent``: CPU of never-seen programs from package-managed folders, or
  of a familiar program run by another user (an administrator's ``rsync`` or ``pigz``, a
  colleague's compile), counted per process once it has held it for 15 minutes
  (:class:`Sustained`: a few minutes of it, or a build's thousands of short compiler
  processes, do not page);
- ``proc_odd_cpu_percent``: CPU of processes disguised on any host (deleted exe, kernel-thread
  name with an exe, exe in ``/tmp``, ``/dev/shm`` or a hidden folder) or a familiar name from
  an exe this host never ran it from;
- ``proc_surge_cpu_percent``: CPU of known identities above many times their usual peak;
- ``proc_offhour_cpu_percent``: CPU of processes with a daily schedule (run on at least half
  the training days, three at least, in at most 12 hours of the day) more than two hours
  from any hour they ran in;
- ``proc_gc_cpu_percent``, ``proc_gc_top_cpu_percent``: CPU the garbage-collector threads of
  known identities ran, in all and in the busiest process (a GC storm is housekeeping, not
  work); not judged themselves, the pipeline takes them out of the host's and the busiest
  process's CPU (:func:`~minerwatch.features.pipeline.without_gc`). A never-seen process gets
  no credit, whatever its threads are called;
- ``proc_sustained_cpu_percent``, ``proc_sustained_top_cpu_percent``: the CPU each process
  held in every sample of the last 15 minutes (its collector's time left out), summed and
  the largest: the host's 15-minute floors by process, which replace the host-wide ones (a
  miner holds its cores in one process, a build in thousands of short ones); unknown (NaN)
  until the samples cover the window.

Identities are normalised (:func:`~minerwatch.features.procs.identity`) so a deploy into a
new release folder or a compiler upgrade stays familiar. A miner running *inside* a familiar
process has no new identity: the CPU-residual features of the host model still judge it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from minerwatch.features.procs import (
    PROC_COLUMNS,
    SUSTAINED_COLUMNS,
    ProcessRows,
    disguise,
    hidden_place,
    identity,
    in_system_dir,
    normalize_exe,
    normalize_name,
)

if TYPE_CHECKING:  # the readers (pandas) stay out of the agent
    from minerwatch.features.io import HostSeries

T = TypeVar("T")
#: A known identity "surges" above max(SURGE_FACTOR x its usual peak, usual + SURGE_MIN).
SURGE_FACTOR = 4.0
SURGE_MIN = 50.0
#: Processes below this CPU (percent of one core) are bookkeeping, not work.
MIN_CPU = 1.0
#: Days of training before "at an hour it never runs" means anything, and the share of them
#: a process must have run on to have a daily routine at all (a weekly job or an occasional
#: compile has none: an odd hour says nothing about it).
OFFHOUR_MIN_DAYS = 3.0
ROUTINE_DAYS = 0.5
#: ... and it must keep a schedule: busy in at most this many hours of the day (a CI
#: compiler runs at any hour; a nightly job has its hour).
SCHEDULED_HOURS = 12
HOUR = 3600.0
DAY = 86400.0
#: A never-seen tool's CPU counts once one process of it has held it this long, listed in
#: every sample: an administrator's copy or a miner runs as one long-lived process, a build
#: as thousands of compiler processes of seconds each (its CPU never sustained by one pid).
SUSTAIN_S = 900.0
_SUSTAINED_AT = [PROC_COLUMNS.index(c) for c in SUSTAINED_COLUMNS]


class Sustained:
    """Per process (pid and name), the least CPU it held in every sample of the last
    :data:`SUSTAIN_S`.

    Fed one sample at a time, in order, by batch scoring and the agent alike (the agent keeps
    one across samples); a process missing from a sample, or last seen more than a fifth of
    the window before, starts again, so a restart, a pause of the agent or a build's stream
    of short compiler processes sums to nothing.
    """

    def __init__(self, window: float = SUSTAIN_S) -> None:
        self.window = window
        # key -> (first seen, last seen, its (time, cpu) minima over the window, ascending)
        self._seen: dict[tuple[int, str], tuple[float, float, deque[tuple[float, float]]]] = {}
        self._first = self._last = -np.inf  # the unbroken run of samples fed so far

    def warm(self) -> bool:
        """True once samples have been fed, without a gap, for the whole window: before, a
        zero would only mean "not watched yet" (an agent that just started)."""
        return self._last - self._first >= self.window

    def update(self, t: float, keys: list[tuple[int, str]], cpu: list[float]) -> list[float]:
        """Each of this sample's processes ``keys`` (pid, name): its floor, 0 until it has
        been listed for the whole window."""
        out: list[float] = []
        seen: dict[tuple[int, str], tuple[float, float, deque[tuple[float, float]]]] = {}
        if t - self._last > self.window / 5:
            self._first = t
        self._last = t
        for key, c in zip(keys, cpu, strict=True):
            since, last, low = self._seen.get(key, (t, t, deque()))
            if last < t - self.window / 5:  # a gap in the samples: not seen in between
                since, low = t, deque()
            while low and low[-1][1] >= c:
                low.pop()
            low.append((t, c))
            while low[0][0] <= t - self.window:
                low.popleft()
            seen[key] = (since, t, low)
            out.append(low[0][1] if since <= t - self.window else 0.0)
        self._seen = seen
        return out


@dataclass
class Carry:
    """What the process columns carry from one call to the next (the agent's, one sample a
    call): never-seen tools' and all processes' sustained CPU."""

    tools: Sustained = field(default_factory=Sustained)
    every: Sustained = field(default_factory=Sustained)


@dataclass(frozen=True)
class ProcessBaseline:
    """Known identities with their usual CPU peak and the hours of day they ran.

    ``pairs`` holds the normalised ``name\\0exe`` pairs seen with an executable (a familiar
    name from an unfamiliar exe is odd).
    """

    identities: tuple[str, ...]
    usual_cpu: np.ndarray
    hours: np.ndarray
    days: np.ndarray
    span_s: float

    @cached_property
    def known(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.identities)}

    @cached_property
    def pairs(self) -> dict[str, int]:
        """``name\0exe`` -> the identity with that pair (any user) that peaks highest."""
        out: dict[str, int] = {}
        for i, k in enumerate(self.identities):
            pair = k.rsplit("\0", 1)[0]
            if pair not in out or self.usual_cpu[i] > self.usual_cpu[out[pair]]:
                out[pair] = i
        return out

    @cached_property
    def exes(self) -> frozenset[str]:
        return frozenset(e for k in self.identities if (e := k.split("\0")[1]))

    @cached_property
    def names(self) -> frozenset[str]:
        return frozenset(k.split("\0", 1)[0] for k in self.identities if k.split("\0")[1])

    # -- learning ----------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        rows: ProcessRows,
        flagged: np.ndarray | None = None,
    ) -> ProcessBaseline:
        """Learn from ``rows`` except the ``flagged`` ones (indicator or disguise matches:
        a host already mining when first learnt must not make its miner normal)."""
        keep = np.ones(len(rows), dtype=bool) if flagged is None else ~np.asarray(flagged)
        # identities numbered once per distinct process, in sorted order (a week of a host is a
        # million rows and a few hundred identities: no per-row strings are copied)
        numbered: dict[str, int] = {}
        first = np.asarray(
            _per_row(rows, lambda *k: numbered.setdefault(identity(*k), len(numbered))),
            dtype=np.int64,
        )
        seen = np.bincount(first[keep], minlength=len(numbered)) > 0
        ids_all = sorted(k for k, i in numbered.items() if seen[i])
        rank = {k: j for j, k in enumerate(ids_all)}
        to_sorted = np.array([rank.get(k, -1) for k in numbered], dtype=np.int64)
        code = to_sorted[first[keep]]
        cpu = np.nan_to_num(rows.cpu[keep], nan=0.0)
        ts = rows.timestamps[keep]
        n = len(ids_all)
        busy_rows = cpu >= MIN_CPU
        hour_bit = np.left_shift(1, ((ts % DAY) // HOUR).astype(np.int64))
        hours_v = np.zeros(n, dtype=np.int64)
        np.bitwise_or.at(hours_v, code[busy_rows], hour_bit[busy_rows])
        day_pairs = np.unique(
            np.column_stack([code, (ts // DAY).astype(np.int64)])[busy_rows], axis=0
        )
        days_v = (
            np.bincount(day_pairs[:, 0], minlength=n) if len(day_pairs) else np.zeros(n, np.int64)
        )
        order = np.lexsort((cpu, code))  # by identity, then CPU: quantiles from sorted runs
        bounds = np.searchsorted(code[order], np.arange(n + 1))
        usual = np.array(
            [
                np.quantile(cpu[order[a:b]], 0.99)
                for a, b in zip(bounds[:-1], bounds[1:], strict=True)
            ],
            dtype=np.float64,
        )
        span = float(rows.timestamps[-1] - rows.timestamps[0]) if len(rows) else 0.0
        return cls(
            identities=tuple(ids_all),
            usual_cpu=usual.reshape(n),
            hours=hours_v,
            days=np.asarray(days_v, dtype=np.int64),
            span_s=span,
        )

    # -- judging -----------------------------------------------------------------------------

    def judge(self, name: str, exe: str, user: str) -> tuple[str, int]:
        """(kind, index of the known identity or -1): kind is ``odd``, ``new``, ``tool`` or
        ``known``. A familiar program run by another user is ``known`` (judged against the
        peak of that program); ``tool`` is a familiar executable under a new name (an
        interpreter running another script) or a never-seen one from a package-managed
        folder."""
        if disguise(name, exe):
            return "odd", -1
        at = self.known.get(identity(name, exe, user), -1)
        if at >= 0:
            return "known", at
        name_n, exe_n = normalize_name(name), normalize_exe(exe)
        at = self.pairs.get(f"{name_n}\0{exe_n}", -1)
        if at >= 0:
            return "known", at
        if exe_n and exe_n in self.exes:
            return "tool", -1  # a familiar executable file under another name
        if exe and name_n in self.names:
            return "odd", -1  # a familiar name from an exe it never ran from here
        if hidden_place(exe):
            return "odd", -1  # new, and hiding
        return ("tool" if in_system_dir(exe) else "new"), -1

    def columns(
        self,
        rows: ProcessRows,
        timestamps: np.ndarray,
        carry: Carry | None = None,
    ) -> np.ndarray:
        """The :data:`PROC_COLUMNS` per host sample (0 for a sample without process rows).

        ``carry`` holds the per-process floors of earlier calls (the agent's, one sample a
        call); without it they start from these samples."""
        ts = np.asarray(timestamps, dtype=np.float64)
        out = np.zeros((len(ts), len(PROC_COLUMNS)))
        if not len(rows) or not len(ts):
            out[:, _SUSTAINED_AT] = np.nan  # nothing read: unknown (a collector that failed)
            return out
        at = rows.sample_index(ts)
        offhour_ok = self.span_s >= OFFHOUR_MIN_DAYS * DAY
        hours = self.hours.astype(np.int64)
        ran = np.array([bin(int(h)).count("1") for h in hours], dtype=np.int64)
        routine = (self.days >= max(OFFHOUR_MIN_DAYS, ROUTINE_DAYS * self.span_s / DAY)) & (
            ran <= SCHEDULED_HOURS
        )
        # two hours either side of one it ran in are not odd: jobs drift and run long
        near = hours.copy()
        for shift in (1, 2):
            near |= ((hours << shift) | (hours >> (24 - shift))) & 0xFFFFFF
            near |= (hours >> shift) | ((hours << (24 - shift)) & 0xFFFFFF)
        kinds = {"odd": 0, "new": 1, "tool": 2, "known": 3}
        judged = _per_row(rows, lambda n, e, u: (kinds[(j := self.judge(n, e, u))[0]], j[1]))
        kind = np.array([j[0] for j in judged], dtype=np.int64)
        k = np.array([j[1] for j in judged], dtype=np.int64)
        cpu = rows.cpu
        ok = (at >= 0) & (np.nan_to_num(cpu, nan=0.0) >= MIN_CPU)
        s = np.where(ok, at, 0)
        c = np.where(ok, cpu, 0.0)
        np.add.at(out[:, 2], s, np.where(kind == 0, c, 0.0))
        np.add.at(out[:, 0], s, np.where(kind == 1, c, 0.0))
        carry = carry or Carry()
        tools = _sustained(carry.tools, ts, s, ok & (kind == 2), rows.pids, rows.names, c)[0]
        out[:, 1] = np.nan_to_num(tools, nan=0.0)  # judged above its training range only
        known = kind == 3
        # a known process's garbage collector at work is housekeeping, not work done for
        # someone else: a GC storm is judged without it (a never-seen process gets no credit)
        gc = np.where(known, np.clip(np.nan_to_num(rows.gc_or_nan(), nan=0.0), 0.0, c), 0.0)
        np.add.at(out[:, 5], s, gc)
        # what processes held for the whole window, each (their collectors' time left out): a
        # miner holds its CPU in one process, a build in thousands of short ones
        out[:, _SUSTAINED_AT[0]], out[:, _SUSTAINED_AT[1]] = _sustained(
            carry.every, ts, s, ok, rows.pids, rows.names, c - gc, read=at[at >= 0]
        )
        # ... and the busiest process's own, for its CPU (the last row of each sample by CPU)
        order = np.lexsort((c, s))
        last = order[np.append(s[order][1:] != s[order][:-1], True)]
        out[s[last], 6] = gc[last]
        kk = np.where(known, k, 0)
        usual = self.usual_cpu[kk] if len(self.usual_cpu) else np.zeros(len(kk))
        over = np.maximum(0.0, c - gc - np.maximum(SURGE_FACTOR * usual, usual + SURGE_MIN))
        np.add.at(out[:, 3], s, np.where(known, over, 0.0))
        if offhour_ok and len(near):
            hour = ((rows.timestamps % DAY) // HOUR).astype(np.int64)
            odd_hour = known & routine[kk] & ((near[kk] >> hour) & 1 == 0)
            np.add.at(out[:, 4], s, np.where(odd_hour, c, 0.0))
        return out

    def describe(self, rows: ProcessRows, top: int = 3) -> list[str]:
        """The processes of some samples that are not familiar, busiest first, in words:
        ``exe /tmp/.x/kswapd0 (deleted), never seen on this host, 392 % of a core``."""
        best: dict[tuple[str, str, str], tuple[float, float]] = {}
        gcs = np.nan_to_num(rows.gc_or_nan(), nan=0.0)
        for n, e, u, c, g in zip(rows.names, rows.exes, rows.users, rows.cpu, gcs, strict=True):
            if np.isfinite(c) and c >= MIN_CPU:
                key = (str(n), str(e), str(u))
                best[key] = max(best.get(key, (0.0, 0.0)), (float(c), float(min(g, c))))
        out: list[tuple[float, str]] = []
        for (name, exe, user), (cpu, gc) in best.items():
            kind, k = self.judge(name, exe, user)
            what = exe or name
            if kind == "known":
                usual = float(self.usual_cpu[k])
                if cpu - gc <= max(SURGE_FACTOR * usual, usual + SURGE_MIN):
                    continue  # as the features judge it: its collector's time is not work
                why = f"usually at most {usual:.0f} % of a core"
                if gc >= MIN_CPU:
                    why += f", {gc:.0f} % collecting garbage"
            elif kind == "odd":
                why = disguise(name, exe) or (
                    "in a hidden folder, never seen on this host"
                    if hidden_place(exe)
                    else f"{name!r} never ran from this exe on this host"
                )
            elif normalize_exe(exe) in self.exes:
                why = f"a familiar executable as {name!r}, new on this host"
            else:
                why = "never seen on this host"
            out.append((cpu, f"exe {what}, {why}, {cpu:.0f} % of a core (user {user or '?'})"))
        return [text for _, text in sorted(out, key=lambda x: -x[0])[:top]]

    # -- storage -----------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Numeric arrays and the identities as a fixed-width unicode array (no pickle)."""
        width = max((len(k) for k in self.identities), default=1)
        return {
            "procs_identities": np.array(self.identities, dtype=f"<U{width}"),
            "procs_usual_cpu": self.usual_cpu.astype(np.float64),
            "procs_hours": self.hours.astype(np.int64),
            "procs_days": self.days.astype(np.int64),
            "procs_scalars": np.array([self.span_s], dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ProcessBaseline | None:
        if "procs_identities" not in arrays:
            return None
        ids = tuple(str(k) for k in np.asarray(arrays["procs_identities"]).reshape(-1).tolist())
        n = len(ids)
        usual = np.asarray(arrays["procs_usual_cpu"], dtype=np.float64)
        hours = np.asarray(arrays["procs_hours"], dtype=np.int64)
        days = np.asarray(arrays["procs_days"], dtype=np.int64)
        scalars = np.asarray(arrays["procs_scalars"], dtype=np.float64)
        if (
            usual.shape != (n,)
            or hours.shape != (n,)
            or days.shape != (n,)
            or scalars.shape != (1,)
        ):
            raise ValueError(f"process baseline arrays do not match {n} identities")
        return cls(ids, usual, hours, days, float(scalars[0]))


def _sustained(
    tracker: Sustained,
    ts: np.ndarray,
    sample: np.ndarray,
    which: np.ndarray,
    pids: np.ndarray,
    names: np.ndarray,
    cpu: np.ndarray,
    read: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per sample, the sum and the largest of the floors of the rows ``which`` (NaN until
    ``tracker`` has watched for its whole window), feeding it every sample in order. With
    ``read`` (the samples that have any process row) the others are unknown and skipped:
    a failed read of the process table says nothing about which processes ran."""
    total, top = np.zeros(len(ts)), np.zeros(len(ts))
    listed = np.ones(len(ts), dtype=bool)
    if read is not None:
        listed[:] = False
        listed[read] = True
    at = np.flatnonzero(which)
    order = at[np.argsort(sample[at], kind="stable")]
    starts = np.searchsorted(sample[order], np.arange(len(ts) + 1))
    for k, t in enumerate(ts.tolist()):
        if not listed[k]:
            total[k] = top[k] = np.nan
            continue
        group = order[starts[k] : starts[k + 1]]
        keys = list(zip(pids[group].tolist(), names[group].tolist(), strict=True))
        floors = tracker.update(t, keys, cpu[group].tolist())
        if not tracker.warm():
            total[k] = top[k] = np.nan
        elif floors:
            total[k], top[k] = sum(floors), max(floors)
    return total, top


def _per_row(rows: ProcessRows, fn: Callable[[str, str, str], T]) -> list[T]:
    """``fn(name, exe, user)`` for every row, computed once per distinct process (a week of a
    host's table has a million rows and a few hundred distinct processes)."""
    seen: dict[tuple[str, str, str], T] = {}
    out = []
    for key in zip(rows.names.tolist(), rows.exes.tolist(), rows.users.tolist(), strict=True):
        if key not in seen:
            seen[key] = fn(*key)
        out.append(seen[key])
    return out


def flag_rows(rows: ProcessRows, indicator: np.ndarray | None = None) -> np.ndarray:
    """Rows that must never be learnt as normal: disguised, or matching a miner indicator."""
    out = np.array(_per_row(rows, lambda n, e, u: bool(disguise(n, e))), dtype=bool)
    if indicator is not None:
        out |= np.asarray(indicator, dtype=bool)
    return out


#: Windows this long after a flagged process's last sample are also left out of training.
#: None needed: the CPU features that look back are floors (rolling minima), which fall as
#: soon as the process stops.
FLAG_TAIL_S = 0.0


def with_process_columns(series: HostSeries, baseline: ProcessBaseline) -> HostSeries:
    """``series`` plus the :data:`PROC_COLUMNS` its process table gives under ``baseline``;
    without a process table they hold no value (NaN: scored at the host's usual, neutral)."""
    keep = [j for j, c in enumerate(series.columns) if c not in PROC_COLUMNS]
    base = series.values[:, keep]
    if series.procs is None:
        extra = np.full((len(series.timestamps), len(PROC_COLUMNS)), np.nan)
    else:
        extra = baseline.columns(series.procs, series.timestamps)
    return replace(
        series,
        values=np.hstack([base, extra]),
        columns=tuple(series.columns[j] for j in keep) + PROC_COLUMNS,
    )


@dataclass(frozen=True)
class Learnt:
    """What learning a host's processes gives training: the baseline, the series with its
    process columns, the times of flagged processes and what they were, in words."""

    baseline: ProcessBaseline
    series: HostSeries
    flagged_times: np.ndarray
    flagged: tuple[str, ...]


def learn_processes(series: HostSeries) -> Learnt:
    """Fit the process baseline on ``series.procs``, leaving flagged processes out of it."""
    rows = series.procs
    assert rows is not None
    flagged = flag_rows(rows)
    baseline = ProcessBaseline.fit(rows, flagged)
    busy = flagged & (np.nan_to_num(rows.cpu) >= MIN_CPU)
    words = sorted(
        {
            f"{rows.exes[i] or rows.names[i]} ({disguise(str(rows.names[i]), str(rows.exes[i]))})"
            for i in np.flatnonzero(busy).tolist()
        }
    )
    return Learnt(
        baseline, with_process_columns(series, baseline), rows.timestamps[busy], tuple(words)
    )


def flagged_windows(starts: np.ndarray, ends: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Windows holding a flagged sample (or within :data:`FLAG_TAIL_S` after one)."""
    if not len(times):
        return np.zeros(len(starts), dtype=bool)
    t = np.sort(times)
    lo = np.searchsorted(t, np.asarray(starts) - FLAG_TAIL_S, side="left")
    hi = np.searchsorted(t, np.asarray(ends), side="right")
    out: np.ndarray = hi > lo
    return out
