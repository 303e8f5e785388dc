"""``fleet train`` throughput, Prometheus reading included: host-models per minute per core,
and a Dask ``LocalCluster`` with 2 workers against 1.

    minerwatch simulate --hosts 2 --train-days 7 --test-days 0 --interval 15s --output sim/
    python -m minerwatch.bench.fleet_backfill --data sim/ --splits train --output tsdb/
    python -m minerwatch.bench.fleet_train --data sim/ --tsdb tsdb/ --repeats 3

Starts Debian's Prometheus on the backfilled TSDB (loopback, a free port), then trains
every host of ``sim/`` (``--repeats`` times each, so a small backfilled fleet still gives
enough tasks to time) three ways, each task reading its own host's training split from
Prometheus as ``fleet train`` does (:func:`~minerwatch.service.fleet.train.run_tasks`):
one process in sequence (the next host read while one fits), a Dask LocalCluster of 1
worker process, and one of 2. Prints one JSON line: tasks, seconds per way, host-models per
minute per core (sequential), the Dask speed-up, the median seconds per task (its read and
fit), the wall and client CPU seconds of one host's read, and the machine's load. For each
way it also gives the CPU seconds Prometheus spent and those of this process and its other
descendants (the Dask workers): on a small machine they share the cores, which bounds what a
second worker can add.

With ``--replay DIR`` the Dask ways read Prometheus' answers as recorded in ``DIR``
(:mod:`~minerwatch.bench.replay`: every host read once through a recording proxy after the
sequential way, then Prometheus stopped): the same requests and bytes, answered at almost no
CPU, as if Prometheus ran on another machine. Its figures then name the replay server's CPU
instead of Prometheus'.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def start_prometheus(tsdb: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Prometheus on ``tsdb`` at a free loopback port; (process, URL) once ready."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = workdir / "prometheus.yml"
    config.write_text('{"global": {"scrape_interval": "1m"}, "scrape_configs": []}')
    proc = subprocess.Popen(
        [shutil.which("prometheus") or "/usr/bin/prometheus", f"--config.file={config}",
         f"--storage.tsdb.path={tsdb}", f"--web.listen-address=127.0.0.1:{port}",
         "--storage.tsdb.retention.time=10y", "--log.level=error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("prometheus did not start")


def start_replay(store: Path, upstream: str | None) -> tuple[subprocess.Popen[str], str]:
    """:mod:`~minerwatch.bench.replay` serving ``store`` (recording through ``upstream`` when
    given) at a free loopback port; (process, URL) once it listens."""
    record = ["--record", "--upstream", upstream] if upstream else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "minerwatch.bench.replay", "--store", str(store), *record],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("listening "):
        proc.kill()
        raise SystemExit("the replay server did not start")
    return proc, line.split()[1]


def cpu_seconds(prometheus_pid: int) -> tuple[float, float]:
    """(Prometheus, this process and its other descendants): CPU seconds used so far."""
    import psutil

    def used(p: psutil.Process) -> float:
        try:
            t = p.cpu_times()
            return float(t.user + t.system)
        except psutil.Error:
            return 0.0

    me = psutil.Process()
    prom = used(psutil.Process(prometheus_pid))
    rest = used(me) + sum(used(c) for c in me.children(recursive=True) if c.pid != prometheus_pid)
    return prom, rest


def warm_imports() -> None:
    """Import what a task needs, so a worker's first task does not time the imports."""
    import minerwatch.baseline.train
    import minerwatch.service.fleet.train  # noqa: F401


def timed(tasks: list[str], reader: Any, **engine: Any) -> tuple[float, list[Any]]:
    from minerwatch.service.fleet.train import run_tasks

    t0 = time.perf_counter()
    out = list(run_tasks(tasks, reader, 60.0, 60.0, None, **engine))
    took = time.perf_counter() - t0
    failed = [o for o in out if o.model is None]
    if failed:
        raise SystemExit(f"training failed: {failed[0].host}: {failed[0].error}")
    return took, out


def fleet_reader(url: str, split: dict[str, float], half: float, concurrency: int = 2) -> Any:
    """The reader ``fleet train`` would use for the training split of the simulated fleet."""
    from minerwatch.service.fleet.promclient import Connection
    from minerwatch.service.fleet.train import FleetReader

    start, end = split["start"] - half, split["end"] + half
    return FleetReader(
        Connection(url, timeout=300.0), start, end, '{job="node"}', concurrency=concurrency
    )


def record(
    store: Path, upstream: str, hosts: list[str], split: dict[str, float], half: float
) -> tuple[subprocess.Popen[str], str]:
    """Every host's reads recorded in ``store`` through the replay server; the replay
    server (process, URL) then serving them."""
    recorder, url = start_replay(store, upstream)
    try:
        reader = fleet_reader(url, split, half)
        for i, host in enumerate(hosts, 1):
            reader.read(host)
            print(f"recorded {i}/{len(hosts)}: {host}", file=sys.stderr, flush=True)
    finally:
        recorder.terminate()
        recorder.wait(timeout=30)
    return start_replay(store, None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="folder from 'minerwatch simulate'")
    p.add_argument("--tsdb", type=Path, required=True, help="its backfilled Prometheus TSDB")
    p.add_argument("--repeats", type=int, default=2, help="tasks per host")
    p.add_argument("--no-dask", action="store_true", help="time the sequential way only")
    p.add_argument("--hosts-limit", type=int, help="only the first N hosts (by name)")
    p.add_argument(
        "--concurrency",
        type=int,
        default=2,
        help="requests in flight per task (as fleet train's --concurrency, whose default is 4;"
        " the runs in docs/benchmarks.md used 2 unless they say)",
    )
    p.add_argument(
        "--replay",
        type=Path,
        help="record Prometheus' answers here and give the Dask ways the recording",
    )
    args = p.parse_args(argv)
    labels = json.loads((args.data / "labels.json").read_text())
    half = labels["parameters"]["interval"] / 2
    split = labels["splits"]["train"]
    hosts = sorted(labels["hosts"])[: args.hosts_limit]
    tasks = [h for _ in range(args.repeats) for h in hosts]
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_prometheus(args.tsdb, Path(tmp))
        answers: subprocess.Popen[Any] = proc  # what answers the Dask ways
        try:
            reader = fleet_reader(url, split, half, args.concurrency)
            t0, c0 = time.perf_counter(), time.process_time()
            reader.read(hosts[0])  # warms Prometheus' caches; not part of the timed runs
            read_s, read_cpu_s = time.perf_counter() - t0, time.process_time() - c0
            cpu0 = cpu_seconds(proc.pid)
            seq_s, outcomes = timed(tasks, reader, n_jobs=1, dask_address=None)
            cpu1 = cpu_seconds(proc.pid)
            result: dict[str, Any] = {
                "hosts": len(hosts),
                "tasks": len(tasks),
                "days": labels["parameters"]["train_days"],
                "interval_s": labels["parameters"]["interval"],
                "concurrency": args.concurrency,
                "windows_per_host": statistics.median(o.model.meta["windows"] for o in outcomes),
                "sequential_s": round(seq_s, 1),
                "task_s_median": round(statistics.median(o.seconds for o in outcomes), 2),
                "read_s_one_host": round(read_s, 2),
                "read_cpu_s_one_host": round(read_cpu_s, 2),
                "host_models_per_min_per_core": round(60 * len(tasks) / seq_s, 1),
                "sequential_cpu_s_prometheus_vs_trainer": [
                    round(cpu1[0] - cpu0[0], 1), round(cpu1[1] - cpu0[1], 1)
                ],
            }  # fmt: skip
            if args.replay is not None and not args.no_dask:
                answers, url = record(args.replay, url, hosts, split, half)
                proc.terminate()
                proc.wait(timeout=30)
                reader = fleet_reader(url, split, half, args.concurrency)
                result["dask_answers_from"] = "replay"
            if not args.no_dask:
                from dask.distributed import Client, LocalCluster

                for workers in (1, 2):
                    with LocalCluster(
                        n_workers=workers, threads_per_worker=1, processes=True,
                        dashboard_address=None,
                    ) as cluster:  # fmt: skip
                        address = cluster.scheduler_address
                        with Client(address) as warm:
                            warm.run(warm_imports)  # as the sequential way, imports untimed
                        cpu0 = cpu_seconds(answers.pid)
                        took, _ = timed(tasks, reader, n_jobs=1, dask_address=address)
                        cpu1 = cpu_seconds(answers.pid)
                    result[f"dask_{workers}_workers_s"] = round(took, 1)
                    result[f"dask_{workers}_cpu_s_prometheus_vs_workers"] = [
                        round(cpu1[0] - cpu0[0], 1), round(cpu1[1] - cpu0[1], 1)
                    ]  # fmt: skip
                result["dask_speedup_2_vs_1"] = round(
                    result["dask_1_workers_s"] / result["dask_2_workers_s"], 2
                )
        finally:
            for server in {proc, answers}:
                server.terminate()
                server.wait(timeout=30)
    result["load_before_after"] = [round(load0, 1), round(os.getloadavg()[0], 1)]
    result["nproc"] = os.cpu_count()
    result["date_utc"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
