"""One ``fleet serve`` scoring cycle for N hosts (default 1,000): seconds and memory per host.

    python -m minerwatch.bench.fleet_serve --hosts 1000 --repeats 3

The data are synthetic and say so: every host is a node_exporter with 2 CPUs (8 modes each),
one disk, ``eth0`` and ``lo``, the netstat and processes collectors, and process-exporter
with three groups, scraped every 15 s; counters grow by random rates. Every sample of the
fleet is rendered once as Prometheus JSON; a small HTTP server on loopback answers each of
the cycle's queries (one per metric for the whole fleet, ``metric{...}[range]`` at a time)
with the points inside the asked range, so a cycle that reads only what is new gets a
smaller answer, as from Prometheus. A cycle pays the HTTP transfer, JSON decoding, buffering
by host, the node_exporter mapping, features and scoring, and writing the alert state, but
not Prometheus' own evaluation of the 15 queries. Every host scores with one model, trained
once on a simulated host's day and rebound to each host name in memory.

The clock starts at the first cycle (a warm-up: it reads and scores the whole lookback) and
moves on by ``--interval`` (60 s) before each timed cycle, so each brings one new window per
host and ``--interval`` of new points. ``--full`` re-reads the whole lookback every cycle.

Prints one JSON line: hosts, points read per timed cycle, wall and CPU seconds of a cycle
(median of the repeats), seconds per host, and the peak RSS growth per host.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from minerwatch.service.fleet.nodeexporter import METRICS

INTERVAL = 15.0
CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def _series(metric: str, host: int) -> list[dict[str, str]]:
    """The label sets of one metric on one synthetic host."""
    node = {"__name__": metric, "instance": f"h{host:04d}:9100", "job": "node"}
    if metric == "node_cpu_seconds_total":
        return [{**node, "cpu": str(c), "mode": m} for c in range(2) for m in CPU_MODES]
    if metric.startswith("node_disk_"):
        return [{**node, "device": "sda"}]
    if metric.startswith("node_network_"):
        return [{**node, "device": d} for d in ("eth0", "lo")]
    if metric.startswith("namedprocess_"):
        proc = {"__name__": metric, "instance": f"h{host:04d}:9256", "job": "process"}
        return [{**proc, "groupname": g, "mode": m} for g in ("app", "sshd", "cron")
                for m in ("user", "system")]  # fmt: skip
    return [node]


#: Changes a series before it is rendered (tests): (metric, host, labels, values) -> which
#: points exist (mask) and their values.
Edit = Callable[[str, int, dict[str, str], np.ndarray], tuple[np.ndarray, np.ndarray]]


class Answers:
    """Every metric's samples of the whole fleet, pre-rendered point by point as Prometheus
    JSON, so an answer for any time range is cut out of them (no float formatting while the
    cycle waits): ``metric{...}[range]`` at ``time`` gets the points in (time - range, time]."""

    def __init__(
        self, hosts: int, stamps: np.ndarray, seed: int = 0, edit: Edit | None = None
    ) -> None:
        rng = np.random.default_rng(seed)
        n = len(stamps)
        self.stamps = stamps
        texts = np.array([f"{t:.3f}" for t in stamps], dtype=object)
        #: metric -> [(labels JSON, points text, offset of each point and of the end,
        #: the series' own timestamps if it lacks some points)]
        self.series: dict[str, list[tuple[str, str, np.ndarray, np.ndarray | None]]] = {}
        for metric in METRICS:
            counter = metric.endswith("_total")
            out = []
            for h in range(hosts):
                for labels in _series(metric, h):
                    if counter:
                        values = 1e5 + np.cumsum(rng.uniform(0.0, 2.0, n)) * INTERVAL
                    elif "Mem" in metric:
                        values = np.full(n, 8e9 if "Total" in metric else 5e9)
                    else:
                        values = rng.uniform(0.5, 4.0, n)
                    own = None
                    stamp_text = texts
                    if edit is not None:
                        mask, values = edit(metric, h, labels, values)
                        if not mask.all():
                            own, stamp_text, values = stamps[mask], texts[mask], values[mask]
                    points = [
                        f'[{s},"{v!r}"]' for s, v in zip(stamp_text, values.tolist(), strict=True)
                    ]
                    offsets = np.cumsum([0, *(len(x) + 1 for x in points)]).astype(np.int64)
                    out.append((json.dumps(labels), ",".join(points), offsets, own))
            self.series[metric] = out

    def body(self, metric: str, start: float, end: float) -> bytes:
        i, j = np.searchsorted(self.stamps, [start, end], side="right").tolist()
        parts = []
        for labels, text, offsets, own in self.series.get(metric, []):
            a, b = (i, j) if own is None else np.searchsorted(own, [start, end], "right").tolist()
            if b > a:
                points = text[offsets[a] : offsets[b] - 1]
                parts.append(f'{{"metric":{labels},"values":[{points}]}}')
        head = '{"status":"success","data":{"resultType":"matrix","result":['
        return (head + ",".join(parts) + "]}}").encode()


class Bodies(Protocol):
    """What :func:`serve_answers` serves: a query's answer for a metric and a time range."""

    def body(self, metric: str, start: float, end: float) -> bytes: ...


def serve_answers(answers: Bodies) -> ThreadingHTTPServer:
    """A loopback server answering ``/api/v1/query`` of ``metric{...}[Nms]`` at ``time``."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            form = urllib.parse.parse_qs(
                self.rfile.read(int(self.headers["Content-Length"])).decode()
            )
            query = form["query"][0]
            metric = query.split("{", 1)[0]
            span = float(query.rsplit("[", 1)[1].rstrip("]").removesuffix("ms")) / 1000.0
            end = float(form["time"][0])
            body = answers.body(metric, end - span, end)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def one_model() -> Any:
    """A model of every node_exporter column, trained on one simulated host's day."""
    from minerwatch.baseline.train import train_host
    from minerwatch.bench.simulate import simulate
    from minerwatch.features.io import read_telemetry

    with tempfile.TemporaryDirectory() as tmp:
        simulate(
            Path(tmp),
            hosts=1,
            train_days=1.0,
            test_days=0.0,
            seed=5,
            interval=INTERVAL,
            procs=False,
        )
        series = next(iter(read_telemetry([Path(tmp) / "train"]).values()))
    keep = [c for c in series.columns if not c.startswith("proc_") and c != "indicator_hits"]
    idx = [series.columns.index(c) for c in keep]
    series = replace(series, values=series.values[:, idx], columns=tuple(keep), procs=None)
    return train_host(series, 60.0, 60.0)


def machine() -> str:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    load = os.getloadavg()[0]
    return f"{os.cpu_count()} x {model}, load {load:.1f}, Python {sys.version.split()[0]}"


def main(argv: list[str] | None = None) -> int:
    import logging

    from minerwatch.service.fleet.promclient import Connection, PromClient
    from minerwatch.service.fleet.serve import LOOKBACK_S, FleetServer, HostState

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--interval", type=float, default=60.0, help="seconds between cycles")
    p.add_argument(
        "--full", action="store_true", help="read the whole lookback every cycle (as before)"
    )
    args = p.parse_args(argv)
    logging.disable(logging.WARNING)  # random counters alert: not what is measured
    first = 1_800_000_000.0  # the warm-up cycle's time; each later one is --interval later
    last = first + args.repeats * args.interval
    lookback = LOOKBACK_S + 2 * 60
    stamps = np.arange(last, first - lookback - 2 * INTERVAL, -INTERVAL)[::-1]
    model = one_model()
    answers = Answers(args.hosts, stamps)
    http = serve_answers(answers)
    client = PromClient(Connection(f"http://127.0.0.1:{http.server_address[1]}"))
    clock = [first]
    with tempfile.TemporaryDirectory() as tmp:
        server = FleetServer(
            client, Path(tmp), clock=lambda: clock[0], incremental=not args.full,
            state_file=Path(tmp) / "state.json",
        )  # fmt: skip
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for h in range(args.hosts):
            server.hosts[f"h{h:04d}"] = HostState.of(replace(model, host=f"h{h:04d}"))
        times, cpu, points, windows = [], [], [], []
        for i in range(args.repeats + 1):  # the first reads and scores the whole lookback
            clock[0] = first + i * args.interval
            scored = sum(s.windows_total for s in server.hosts.values())
            t0, c0 = time.perf_counter(), time.process_time()
            counts = server.cycle()
            took = time.perf_counter() - t0
            assert counts["scored"] == args.hosts, counts
            if i:
                times.append(took)
                cpu.append(time.process_time() - c0)
                points.append(server.points_read)
                windows.append(sum(s.windows_total for s in server.hosts.values()) - scored)
            else:
                warmup = (took, server.points_read)
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    http.shutdown()
    median = statistics.median(times)
    print(
        json.dumps(
            {
                "hosts": args.hosts,
                "mode": "full lookback" if args.full else "incremental",
                "interval_s": args.interval,
                "warmup_s": round(warmup[0], 2),
                "warmup_points": warmup[1],
                "points_per_cycle": int(statistics.median(points)),
                "windows_per_cycle": int(statistics.median(windows)),
                "queries_per_cycle": len(METRICS),
                "cycle_s_median": round(median, 2),
                "cycle_s_all": [round(t, 2) for t in times],
                "cycle_cpu_s_median": round(statistics.median(cpu), 2),
                "ms_per_host": round(1000 * median / args.hosts, 2),
                "peak_rss_growth_kb_per_host": round((rss1 - rss0) / args.hosts, 1),
                "machine": machine(),
                "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
