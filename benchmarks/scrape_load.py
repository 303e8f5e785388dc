"""Scrape load on the real agent: N concurrent clients on ``/metrics`` while it samples.

    python -m minerwatch.bench.scrape_load --clients 50 --seconds 30

Starts ``minerwatch serve`` (1 s interval, loopback, a temporary data dir; ``--url`` targets
a running agent instead), then runs ``--clients`` scrapers spread over a few worker
processes (threads inside each, so no single client process's GIL sets the pace). Each
scraper asks for ``/metrics`` back to back with Prometheus' own ``Accept`` and
``Accept-Encoding`` headers, over a fresh connection per scrape (``--keep-alive`` reuses
one). Prints clients, requests/s, p50/p99/max latency in ms, failures, the agent's CPU, and
how many samples it took and stored while being scraped against the number its interval
promises, with the longest gap between them (the loop must keep its pace under load). The
samples counted are the agent's own: those between its stamps of its latest sample as
scraped just before and just after the load, so neither the load's start-up nor a clock
other than the agent's decides which samples count.
``tests/test_scrape_load.py`` runs :func:`load_with_sampling_check` with the issue's bounds:
50 clients for 30 s, p99 under 100 ms, sampling within one sample.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

#: What Prometheus 2.x sends when it scrapes a target.
PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
    "User-Agent": "minerwatch-scrape-load",
}


@dataclass
class LoadResult:
    """What one load run measured (latencies in milliseconds)."""

    clients: int
    seconds: float
    requests: int
    failures: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    samples_taken: int | None = None
    samples_expected: float | None = None
    agent_cpu_percent: float | None = None  # of one core, during the load
    started_at: float | None = None  # Unix time the load began
    ended_at: float | None = None
    #: The agent's own stamps of its latest sample as scraped just before and just after
    #: the load: the samples it took in between are stored between these two, both included.
    first_sample_ts: float | None = None
    last_sample_ts: float | None = None
    statuses: dict[str, int] | None = None


# -- the clients -------------------------------------------------------------------------------


def _scrape_loop(
    host: str, port: int, path: str, until: float, keep_alive: bool, out: list[float]
) -> None:
    """Scrape until ``until`` (monotonic); append each latency, or -status for a failure."""
    conn: http.client.HTTPConnection | None = None
    while time.monotonic() < until:
        started = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.request("GET", path, headers=PROMETHEUS_HEADERS)
            response = conn.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException):
            status = 0
            if conn is not None:
                conn.close()
                conn = None
        elapsed = time.perf_counter() - started
        if not keep_alive and conn is not None:
            conn.close()
            conn = None
        out.append(elapsed if status == 200 else -float(status))
    if conn is not None:
        conn.close()


def _worker(url: str, threads: int, start_at: float, seconds: float, keep_alive: bool) -> bytes:
    """One client process: ``threads`` scrapers from wall time ``start_at`` for ``seconds``."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    time.sleep(max(0.0, start_at - time.time()))
    until = time.monotonic() + seconds
    results: list[list[float]] = [[] for _ in range(threads)]
    pool = [
        threading.Thread(
            target=_scrape_loop, args=(host, port, parts.path or "/", until, keep_alive, r)
        )
        for r in results
    ]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return np.concatenate([np.asarray(r, dtype=np.float64) for r in results]).tobytes()


def run_load(
    url: str, clients: int, seconds: float, processes: int | None = None, keep_alive: bool = False
) -> LoadResult:
    """``clients`` scrapers on ``url`` for ``seconds``; latency percentiles and throughput."""
    processes = max(1, min(clients, processes or 2 * (os.cpu_count() or 1)))
    shares = [clients // processes + (i < clients % processes) for i in range(processes)]
    start_at = time.time() + 1.0  # every worker process is up before anyone scrapes
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        jobs = [pool.apply_async(_worker, (url, n, start_at, seconds, keep_alive)) for n in shares]
        raw = np.concatenate([np.frombuffer(j.get(timeout=seconds + 60)) for j in jobs])
    ok = raw[raw >= 0] * 1e3
    failed = raw[raw < 0]
    codes, counts = np.unique(failed, return_counts=True)
    statuses = {str(int(-c)): int(n) for c, n in zip(codes, counts, strict=True)}
    pct = np.percentile(ok, [50, 99]) if len(ok) else np.array([np.nan, np.nan])
    return LoadResult(
        clients=clients,
        seconds=seconds,
        requests=len(raw),
        failures=len(failed),
        requests_per_second=round(len(raw) / seconds, 1),
        p50_ms=round(float(pct[0]), 2),
        p99_ms=round(float(pct[1]), 2),
        max_ms=round(float(ok.max()), 2) if len(ok) else float("nan"),
        statuses=statuses,
    )


# -- the agent ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape_values(url: str) -> dict[str, float]:
    """Unlabelled ``minerwatch_*`` samples of one plain-text scrape (empty if none answered)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    found = re.findall(r"^(minerwatch_[a-z_]+) (\S+)$", text, flags=re.M)
    return {name: float(value) for name, value in found}


def minerwatch_command() -> list[str]:
    """The installed entry point next to this interpreter, else ``python -m minerwatch``."""
    script = Path(sys.executable).with_name("minerwatch")
    return [str(script)] if script.exists() else [sys.executable, "-m", "minerwatch"]


@dataclass
class RunningAgent:
    url: str  # its /metrics
    pid: int
    data_dir: Path


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def running_agent(data_dir: Path, interval: float = 1.0, *extra: str) -> Iterator[RunningAgent]:
    """Start ``minerwatch serve`` on a free loopback port until the block ends."""
    port = free_port()
    cmd = [
        *minerwatch_command(), "serve",
        "--data-dir", str(data_dir), "--port", str(port), "--address", "127.0.0.1",
        "--interval", f"{interval:g}s", "--learn-for", "1h", "--log-level", "WARNING", *extra,
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"
    with (data_dir / "agent.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while scrape_values(url).get("minerwatch_samples_total", 0) < 1:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (data_dir / "agent.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"agent did not start ({' '.join(cmd)}):\n{tail}")
            time.sleep(0.2)
        yield RunningAgent(url, proc.pid, data_dir)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def load_with_sampling_check(
    url: str,
    clients: int,
    seconds: float,
    interval: float,
    pid: int | None = None,
    **kwargs: Any,
) -> LoadResult:
    """:func:`run_load`, plus the samples the agent took meanwhile against those expected
    (and the agent's CPU if its ``pid`` is known)."""
    before, t0, started = scrape_values(url), time.monotonic(), time.time()
    cpu0 = cpu_seconds(pid) if pid is not None else 0.0
    result = run_load(url, clients, seconds, **kwargs)
    after, t1 = scrape_values(url), time.monotonic()
    result.started_at, result.ended_at = started, time.time()
    result.first_sample_ts = before.get("minerwatch_last_sample_timestamp_seconds")
    result.last_sample_ts = after.get("minerwatch_last_sample_timestamp_seconds")
    if pid is not None:
        result.agent_cpu_percent = round(100 * (cpu_seconds(pid) - cpu0) / (t1 - t0), 1)
    taken = after["minerwatch_samples_total"] - before["minerwatch_samples_total"]
    result.samples_taken = int(taken)
    result.samples_expected = round((t1 - t0) / interval, 2)
    return result


def stored_samples(history: Path, since: float | None, until: float | None) -> list[float]:
    """Times of the samples the agent stored in ``[since, until]`` (its own clock), sorted."""
    conn = sqlite3.connect(f"file:{history}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT ts FROM samples WHERE ts >= ? AND ts <= ? ORDER BY ts",
            (since or 0.0, until or time.time()),
        ).fetchall()
    finally:
        conn.close()
    return [float(ts) for (ts,) in rows]


def agent_span(result: LoadResult) -> tuple[float | None, float | None]:
    """The agent's stamps of its latest sample before and after the load, widened by a
    microsecond against the round trip through the exposition's decimal text."""
    lo, hi = result.first_sample_ts, result.last_sample_ts
    return (None if lo is None else lo - 1e-6), (None if hi is None else hi + 1e-6)


def sample_gaps(history: Path, since: float | None, until: float | None) -> list[float]:
    """Seconds between consecutive samples the agent stored in ``[since, until]``."""
    return np.diff(stored_samples(history, since, until)).round(3).tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--processes", type=int, default=None, help="client processes")
    parser.add_argument("--keep-alive", action="store_true", help="reuse one connection each")
    parser.add_argument("--url", help="scrape this endpoint instead of starting an agent")
    parser.add_argument("--interval", type=float, default=1.0, help="agent interval, seconds")
    args = parser.parse_args(argv)
    opts = {"processes": args.processes, "keep_alive": args.keep_alive}
    longest_gap = stored = due = None
    if args.url:
        result = load_with_sampling_check(
            args.url, args.clients, args.seconds, args.interval, **opts
        )
    else:
        with tempfile.TemporaryDirectory(prefix="minerwatch-scrape-") as tmp:
            with running_agent(Path(tmp), args.interval) as agent:
                result = load_with_sampling_check(
                    agent.url, args.clients, args.seconds, args.interval, agent.pid, **opts
                )
            # the agent has stopped and flushed: its own record of when it sampled, between
            # its own stamps of the samples it had taken just before and just after the load
            ts = stored_samples(Path(tmp) / "history.db", *agent_span(result))
            longest_gap = max(np.diff(ts).round(3).tolist(), default=None)
            stored = len(ts) - 1 if ts else None  # the first one was taken before the load
            due = result.samples_expected
    report = {
        **asdict(result),
        "samples_stored_during_load": stored,
        "samples_due_during_load": due,
        "longest_gap_between_samples_s": longest_gap,
        "keep_alive": args.keep_alive,
        "command": "python -m minerwatch.bench.scrape_load " + " ".join(sys.argv[1:]),
        "nproc": os.cpu_count(),
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
