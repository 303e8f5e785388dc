"""Training: one host, or a fleet in parallel (joblib locally, Dask when one box is not enough).

Reading telemetry and writing models happen in the calling process (atomic writes, one place
for errors); only the CPU-heavy fitting is shipped to workers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from minerwatch.baseline.calibrate import ALARMS_PER_WEEK
from minerwatch.baseline.fitted import HostModel
from minerwatch.baseline.heap import roomy_heap
from minerwatch.baseline.model import HostBaseline
from minerwatch.baseline.procbase import flagged_windows, learn_processes
from minerwatch.baseline.store import save_model, saved_since
from minerwatch.features.errors import InputError
from minerwatch.features.extract import (
    COMPUTE,
    CONTEXT,
    DAY,
    EXPLAINED,
    EXTRA_PREFIX,
    TIME,
    feature_specs,
)
from minerwatch.features.io import HostSeries, TelemetryGroups
from minerwatch.features.pipeline import feature_rows

MIN_WINDOWS = 30
#: Telemetry columns a host's data must have for ``minerwatch train``: without host CPU the
#: model would have none of its CPU features and could not see a miner at all.
REQUIRED_COLUMNS = ("cpu_percent",)


@dataclass(frozen=True)
class TrainSummary:
    host: str
    windows: int
    threshold: float
    seconds: float
    path: str = ""


def train_host(
    series: HostSeries,
    window: float = 60.0,
    hop: float = 60.0,
    params: dict[str, Any] | None = None,
    min_windows: int = MIN_WINDOWS,
) -> HostModel:
    """Fit one host's baseline on its telemetry and reduce it to a storable :class:`HostModel`.

    With a process table, the host's process baseline is learnt too (part of the model); the
    windows around processes that match an indicator or a disguise are left out, so a host
    already mining when first learnt does not make its miner normal.
    """
    learnt = learn_processes(series) if series.procs is not None else None
    if learnt is not None:
        series = learnt.series
    win, names, F = feature_rows(
        series.timestamps,
        series.values,
        series.columns,
        window,
        hop,
        source=series.source,
        host=series.host,
    )
    slots = win.slots
    if learnt is not None and len(learnt.flagged_times):
        keep = ~flagged_windows(win.starts, win.ends, learnt.flagged_times)
        F, slots = F[keep], slots[keep]
    if len(F) < min_windows:
        raise InputError(
            series.source or series.host,
            None,
            f"at least {min_windows} complete {window:g}s windows for host {series.host!r}",
            f"{len(F)}"
            + (
                f" after leaving out {len(win.slots) - len(F)} with suspect processes"
                f" ({', '.join(learnt.flagged[:3])})"
                if learnt is not None and len(F) < len(win.slots)
                else ""
            ),
        )
    specs = feature_specs(series.columns)
    options = {"random_state": 0, "max_alarms_per_week": ALARMS_PER_WEEK, **(params or {})}
    roles = [s.role for s in specs]
    has_context = CONTEXT in roles
    extra = [j for j, s in enumerate(specs) if s.name.startswith(EXTRA_PREFIX)]
    judged = (COMPUTE, TIME) if has_context else (COMPUTE, TIME, EXPLAINED)
    est = HostBaseline(
        hop=hop,
        resolution=[s.resolution for s in specs],
        # judged as they are (no context to explain them): their sustained excess counts
        excess=[
            1.0 if s.excess or (not has_context and s.role == EXPLAINED) else 0.0 for s in specs
        ],
        explain_targets=[j for j, r in enumerate(roles) if r == EXPLAINED] if has_context else None,
        explain_inputs=[j for j, r in enumerate(roles) if r in (CONTEXT, TIME)],
        explain_evidence=[j for j, s in enumerate(specs) if s.evidence],
        forest_features=[1.0 if r in judged else 0.0 for r in roles],
        periods=[DAY if r == TIME else 0.0 for r in roles],  # judged once a day is seen
        # two or more extra columns are also judged jointly (baseline/lowrank.py)
        lowrank_features=extra if len({specs[j].inputs for j in extra}) >= 2 else None,
        **options,
    ).fit(F, slots=slots)
    meta: dict[str, Any] = {
        "windows": int(len(F)),
        "train_start": float(win.starts[0]),
        "train_end": float(win.ends[-1]),
        "params": {k: v for k, v in est.get_params().items() if k not in ("resolution", "excess")},
    }
    model: HostModel = est.host_model_
    if learnt is None:
        # without process identities nothing can be strong evidence of an unknown process:
        # marginal evidence is all there is and must not wait (docs/benchmarks.md)
        model = replace(
            model, sustain_windows=None, alert_margin=0.0, heavy_work=0.0, fast_windows=None
        )
    else:
        meta["process_identities"] = len(learnt.baseline.identities)
        meta["flagged_processes"] = list(learnt.flagged[:20])
        model = replace(model, procs=learnt.baseline)
    return model.for_host(series.host, series.columns, names, window, hop, meta)


def missing_columns(series: HostSeries, required: Sequence[str]) -> InputError | None:
    """Why ``series`` cannot train a useful model (a required column absent or without a single
    number), naming its file; None when it can."""
    for column in required:
        if column not in series.columns:
            got = f"columns {', '.join(series.columns) or 'none'}"
        elif not np.isfinite(series.column(column)).any():
            got = f"no number in {column!r} in {len(series.timestamps)} samples"
        else:
            continue
        return InputError(
            series.source or series.host,
            None,
            f"a {column!r} column for host {series.host!r} (every CPU feature needs it)",
            got,
        )
    return None


def _fit_one(
    series: HostSeries, window: float, hop: float, params: dict[str, Any] | None
) -> tuple[HostModel, float]:
    t0 = time.perf_counter()
    model = train_host(series, window, hop, params)
    return model, time.perf_counter() - t0


def train_all(
    inputs: Sequence[str | Path],
    models_dir: Path,
    window: float = 60.0,
    hop: float = 60.0,
    n_jobs: int = 1,
    params: dict[str, Any] | None = None,
    dask_address: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    on_error: Callable[[str, Exception], None] | None = None,
    model_key: bytes | None = None,
    required: Sequence[str] = REQUIRED_COLUMNS,
    read_progress: Callable[[int, int, str], None] | None = None,
    scan_progress: Callable[[int, int, str], None] | None = None,
    skip_since: float | None = None,
    on_skip: Callable[[list[str]], None] | None = None,
) -> list[TrainSummary]:
    """Train and store one model per host found in ``inputs`` (HMAC-signed with
    ``model_key`` when given, see :mod:`minerwatch.baseline.store`).

    ``dask_address``: a scheduler address (``tcp://host:8786``) or ``"local"`` for a local
    cluster; otherwise joblib with ``n_jobs`` processes. A host whose data is unusable (too
    few windows, a ``required`` column missing) is reported through ``on_error`` (or raised
    when no handler is given); others go on. ``progress`` is told of each host trained,
    ``scan_progress`` and ``read_progress`` of each file scanned and read. With
    ``skip_since``, hosts whose model was saved since then are left out (their files not
    read) and named to ``on_skip``: a run stopped half-way is finished, not redone.

    The input is read a few hosts at a time (:class:`TelemetryGroups`: as many as train at
    once), and each model is saved as soon as it is trained: a fleet need not fit in memory,
    and a file found bad half-way leaves the models already trained in place.
    """
    if dask_address:
        at_once = DASK_BATCH
    else:
        from joblib import effective_n_jobs

        at_once = effective_n_jobs(n_jobs)

    def skip(hosts: list[str]) -> list[str]:
        if skip_since is None:
            return []
        fresh = saved_since(models_dir, hosts, skip_since, model_key)
        if fresh and on_skip is not None:
            on_skip(fresh)
        return fresh

    groups = TelemetryGroups(
        inputs, least=at_once, progress=read_progress, scan_progress=scan_progress, skip=skip
    )
    results: list[TrainSummary] = []
    done: list[str] = []

    def finish(host: str, outcome: tuple[HostModel, float] | Exception) -> None:
        if isinstance(outcome, Exception):
            if on_error is None:
                raise outcome
            on_error(host, outcome)
        else:
            model, seconds = outcome
            folder = save_model(models_dir, model, key=model_key)
            results.append(
                TrainSummary(host, model.meta["windows"], model.threshold, seconds, str(folder))
            )
        done.append(host)
        if progress is not None:
            progress(len(done), groups.hosts, host)

    def usable(fleet: dict[str, HostSeries]) -> list[str]:
        for host in sorted(fleet):
            if error := missing_columns(fleet[host], required):
                finish(host, error)
        return [h for h in sorted(fleet) if h not in done]

    if dask_address:
        _train_dask(groups, usable, window, hop, params, dask_address, finish)
    else:
        from joblib import Parallel, delayed

        with Parallel(n_jobs=n_jobs, return_as="generator") as parallel:
            for fleet in groups:
                hosts = usable(fleet)
                jobs = parallel(delayed(_safe_fit)(fleet[h], window, hop, params) for h in hosts)
                for host, outcome in zip(hosts, jobs, strict=True):
                    finish(host, outcome)
    return sorted(results, key=lambda r: r.host)


#: Hosts read and sent to a Dask cluster at a time (its workers are not counted beforehand).
DASK_BATCH = 16


def _safe_fit(
    series: HostSeries, window: float, hop: float, params: dict[str, Any] | None
) -> tuple[HostModel, float] | Exception:
    """Return the error instead of raising, so one bad host does not stop the fleet."""
    try:
        with roomy_heap():  # in a Dask worker: see baseline/heap.py
            return _fit_one(series, window, hop, params)
    except (InputError, ValueError) as exc:
        return exc


@contextmanager
def dask_client(address: str) -> Iterator[Any]:
    """A Dask client of the scheduler at ``address``, or of a two-worker ``LocalCluster``
    started here for ``local``; both closed on the way out. An address nothing answers at
    is the user's input (exit 2), not a failure."""
    from dask.distributed import Client, LocalCluster

    cluster = (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        if address == "local"
        else None
    )
    try:
        client = Client(cluster if cluster is not None else address)
    except (OSError, ValueError) as exc:  # unreachable, malformed: the address the user gave
        if cluster is not None:
            cluster.close()
        raise InputError(
            "--dask", None, "the address of a reachable Dask scheduler", str(exc)
        ) from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _train_dask(
    groups: Iterable[dict[str, HostSeries]],
    usable: Callable[[dict[str, HostSeries]], list[str]],
    window: float,
    hop: float,
    params: dict[str, Any] | None,
    address: str,
    finish: Callable[[str, tuple[HostModel, float] | Exception], None],
) -> None:
    from dask.distributed import as_completed

    with dask_client(address) as client:
        for fleet in groups:
            futures = {
                client.submit(_safe_fit, fleet[h], window, hop, params, pure=False): h
                for h in usable(fleet)
            }
            for future in as_completed(futures):
                finish(futures[future], future.result())


def fit_summary_table(rows: Sequence[TrainSummary]) -> str:
    """A plain-text summary table (host, windows, threshold, time)."""
    width = max([4, *(len(r.host) for r in rows)])
    lines = [f"{'host':<{width}}  {'windows':>7}  {'threshold':>9}  {'time':>7}"]
    lines += [
        f"{r.host:<{width}}  {r.windows:>7}  {r.threshold:>9.4f}  {r.seconds:>6.1f}s" for r in rows
    ]
    return "\n".join(lines)
