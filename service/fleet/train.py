"""Fleet training: one task per host, each reading its own host from Prometheus.

Unlike :func:`minerwatch.baseline.train.train_all`, which reads files in the caller and ships
series to workers, a task here gets only a :class:`FleetReader` (a URL, a selector, a time
range) and the host name: the caller never holds the fleet's data, and a worker holds one
host's. Fitting is :func:`~minerwatch.baseline.train.train_host`; models are saved in the
caller, so the model store has one writer. A host whose data is unusable is reported; one
whose reading failed transiently (Prometheus 5xx or timeouts outlasting the client's
retries) is tried once more before it is reported.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from minerwatch.baseline.fitted import HostModel
from minerwatch.baseline.heap import roomy_heap
from minerwatch.baseline.store import save_model
from minerwatch.baseline.train import dask_client, train_host
from minerwatch.features.errors import InputError
from minerwatch.service.fleet.nodeexporter import HostTelemetry, TargetKey, read_host
from minerwatch.service.fleet.promclient import (
    Connection,
    PromClient,
    PrometheusUnavailable,
    PrometheusUnreachable,
)

#: Hosts in a row whose reading found nothing answering at the URL before a run stops: the
#: server went away, and every further host would only wait through the client's retries.
STOP_AFTER_UNREACHABLE = 2


@dataclass(frozen=True)
class FleetReader:
    """What a worker needs to read one host: plain data, so it pickles to any engine."""

    connection: Connection
    start: float
    end: float
    selector: str = ""
    host_label: str | None = None
    concurrency: int = 2

    def client(self) -> PromClient:
        return PromClient(self.connection, concurrency=self.concurrency)

    def read(
        self, host: str, client: PromClient | None = None, procs: bool = False
    ) -> HostTelemetry:
        return read_host(
            client or self.client(),
            host,
            self.start,
            self.end,
            selector=self.selector,
            host_label=self.host_label,
            procs=procs,
        )


@dataclass
class Outcome:
    """One host's result: a model (with what its data lacked), or the error."""

    host: str
    model: HostModel | None = None
    absent: tuple[str, ...] = ()
    seconds: float = 0.0
    error: str = ""
    transient: bool = False
    #: Nothing answered at the URL (or, with ``attempts`` 0, the host was not tried after that).
    unreachable: bool = False
    attempts: int = 1
    path: str = field(default="")
    #: scrape targets that overlapped in the host's data (:attr:`HostTelemetry.targets`)
    targets: tuple[TargetKey, ...] = ()


@dataclass
class _Read:
    """One host's data, or the error reading it raised; and the seconds the read took."""

    host: str
    data: HostTelemetry | None
    error: Exception | None
    seconds: float


def _read(reader: FleetReader, host: str, client: PromClient | None = None) -> _Read:
    t0 = time.perf_counter()
    try:
        return _Read(host, reader.read(host, client), None, time.perf_counter() - t0)
    except (InputError, ValueError, PrometheusUnavailable, OSError) as exc:
        return _Read(host, None, exc, time.perf_counter() - t0)


def _fit(
    reader: FleetReader, read: _Read, window: float, hop: float, params: dict[str, Any] | None
) -> Outcome:
    """Fit a host read by :func:`_read`; ``seconds`` counts the read and the fit, not waits."""
    t0 = time.perf_counter()
    try:
        if read.error is not None:
            raise read.error
        assert read.data is not None
        model = train_host(read.data.series, window, hop, params)
    except PrometheusUnreachable as exc:
        took = read.seconds + time.perf_counter() - t0
        return Outcome(read.host, error=str(exc), unreachable=True, seconds=took)
    except (InputError, ValueError) as exc:
        return Outcome(read.host, error=str(exc), seconds=read.seconds + time.perf_counter() - t0)
    except (PrometheusUnavailable, OSError) as exc:
        took = read.seconds + time.perf_counter() - t0
        return Outcome(read.host, error=str(exc), transient=True, seconds=took)
    meta = dict(model.meta, absent_columns=list(read.data.absent), source=reader.connection.url)
    model = replace(model, meta=meta)
    took = read.seconds + time.perf_counter() - t0
    return Outcome(read.host, model, read.data.absent, took, targets=read.data.targets)


def train_task(
    reader: FleetReader, host: str, window: float, hop: float, params: dict[str, Any] | None
) -> Outcome:
    """Read and fit one host; errors come back as values so one host never stops the fleet."""
    with roomy_heap():  # in a Dask worker: see baseline/heap.py
        return _fit(reader, _read(reader, host), window, hop, params)


def read_ahead(
    tasks: Sequence[str],
    reader: FleetReader,
    window: float,
    hop: float,
    params: dict[str, Any] | None,
) -> Iterator[Outcome]:
    """:func:`train_task` for each host in order, in this process, reading the next host in
    a thread while this one fits, so the core does not idle while Prometheus answers.

    One read ahead at most: two hosts' data at a time, whatever the fleet. The outcomes are
    those of :func:`train_task`, in task order.
    """
    if not tasks:
        return
    client = reader.client()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleet-read") as pool:
        try:
            ahead = pool.submit(_read, reader, tasks[0], client)
            for i in range(len(tasks)):
                read = ahead.result()
                if i + 1 < len(tasks):
                    ahead = pool.submit(_read, reader, tasks[i + 1], client)
                outcome = _fit(reader, read, window, hop, params)
                del read  # not held while the caller saves the model, nor while a read waits
                yield outcome
        finally:  # stopping: the read in the thread ends at its next query, not its last
            client.cancel()


def run_tasks(
    tasks: Sequence[str],
    reader: FleetReader,
    window: float,
    hop: float,
    params: dict[str, Any] | None,
    n_jobs: int,
    dask_address: str | None,
) -> Generator[Outcome, None, None]:
    """Outcomes as they finish, on joblib processes or a Dask cluster; in one process
    (``n_jobs=1``), in task order with the next host read during each fit (:func:`read_ahead`).

    Workers of a pool each run whole tasks (read, then fit): while one waits on Prometheus
    the others fit, and a task never holds more than its own host.
    """
    if dask_address:
        from dask.distributed import as_completed

        with dask_client(dask_address) as client:
            futures = [
                client.submit(train_task, reader, h, window, hop, params, pure=False) for h in tasks
            ]
            for future in as_completed(futures):
                yield future.result()
        return
    if n_jobs == 1:
        yield from read_ahead(tasks, reader, window, hop, params)
        return
    from joblib import Parallel, delayed

    with warnings.catch_warnings():  # a stopped run cancels the tasks still running: meant
        warnings.filterwarnings("ignore", "[0-9]+ tasks which were still being processed")
        yield from Parallel(n_jobs=n_jobs, return_as="generator_unordered")(
            delayed(train_task)(reader, h, window, hop, params) for h in tasks
        )


def train_fleet(
    reader: FleetReader,
    hosts: Sequence[str],
    models_dir: Path,
    *,
    window: float = 60.0,
    hop: float = 60.0,
    n_jobs: int = 1,
    dask_address: str | None = None,
    params: dict[str, Any] | None = None,
    model_key: bytes | None = None,
    progress: Callable[[int, int, str, int], None] | None = None,
) -> list[Outcome]:
    """Train and store one model per host; every host's :class:`Outcome`, sorted by host.

    Each model is saved as soon as it is fitted; ``progress(done, total, host, failed)`` is
    told of each host as it is done. When :data:`STOP_AFTER_UNREACHABLE` hosts in
    a row found nothing answering at the URL, the run stops: the hosts not done yet come back
    unreachable with ``attempts`` 0 (not tried), the models already saved stay.
    """
    done: dict[str, Outcome] = {}
    pending = list(hosts)
    in_a_row = failed = 0
    for attempt in (1, 2):
        retry: list[str] = []
        tasks = run_tasks(pending, reader, window, hop, params, n_jobs, dask_address)
        with closing(tasks):  # a stop ends the pool and what it was still running
            for outcome in tasks:
                outcome.attempts = attempt
                in_a_row = in_a_row + 1 if outcome.unreachable else 0
                if outcome.transient and attempt == 1:
                    retry.append(outcome.host)
                    continue
                if outcome.model is not None:
                    outcome.path = str(save_model(models_dir, outcome.model, key=model_key))
                done[outcome.host] = outcome
                failed += outcome.model is None
                if progress is not None:
                    progress(len(done), len(hosts), outcome.host, failed)
                if in_a_row >= STOP_AFTER_UNREACHABLE:
                    why = f"not tried: {reader.connection.url} stopped answering"
                    for host in hosts:
                        if host not in done:
                            done[host] = Outcome(host, error=why, unreachable=True, attempts=0)
                    return [done[h] for h in sorted(done)]
        pending = retry
        if not pending:
            break
    return [done[h] for h in sorted(done)]


def summary_table(outcomes: Sequence[Outcome]) -> str:
    """Host, windows, threshold, time, and the telemetry columns the host's metrics lacked."""
    rows = [o for o in outcomes if o.model is not None]
    width = max([4, *(len(o.host) for o in rows)])
    lines = [f"{'host':<{width}}  {'windows':>7}  {'threshold':>9}  {'time':>7}  absent columns"]
    for o in rows:
        assert o.model is not None
        absent = ", ".join(o.absent) or "-"
        lines.append(
            f"{o.host:<{width}}  {o.model.meta['windows']:>7}  {o.model.threshold:>9.4f}  "
            f"{o.seconds:>6.1f}s  {absent}"
        )
    return "\n".join(lines)
