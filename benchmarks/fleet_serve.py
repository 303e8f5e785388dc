"""One ``fleet serve`` scoring cycle for N hosts (default 1,000): seconds and memory per host.

    python -m minerwatch.bench.fleet_serve --hosts 1000 --repeats 3

The data are synthetic and say so: every host is a node_exporter with 2 CPUs (8 modes each),
one disk, ``eth0`` and ``lo``, the netstat and processes collectors, and process-exporter
with three groups, scraped every 15 s; counters grow by random rates. The answers to the
cycle's queries (one per metric for the whole fleet, ``serve.read_fleet``) are rendered
once as Prometheus JSON and served by a small HTTP server on loopback, so the cycle pays
the HTTP transfer, JSON decoding, splitting by host, the node_exporter mapping, features
and scoring, but not Prometheus' own evaluation of the 15 queries (for 1,000 hosts they
read about 5 million raw samples). Every host scores with one model,
trained once on a simulated host's day and rebound to each host name in memory.

Prints one JSON line: hosts, points read, cycle seconds (median of the repeats, after one
warm-up), seconds per host, and the peak RSS growth per host.
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
from dataclasses import replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

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


def answers(hosts: int, end: float, samples: int, seed: int = 0) -> tuple[dict[str, bytes], int]:
    """Each metric's answer to ``metric{...}[range]`` for every host, as Prometheus' JSON;
    and the number of points in all of them."""
    rng = np.random.default_rng(seed)
    ts = end - INTERVAL * np.arange(samples)[::-1]
    stamps = [f"{t:.3f}" for t in ts]
    out: dict[str, bytes] = {}
    points = 0
    for metric in METRICS:
        parts = []
        counter = metric.endswith("_total")
        for h in range(hosts):
            for labels in _series(metric, h):
                if counter:
                    values = 1e5 + np.cumsum(rng.uniform(0.0, 2.0, samples)) * INTERVAL
                elif "Mem" in metric:
                    values = np.full(samples, 8e9 if "Total" in metric else 5e9)
                else:
                    values = rng.uniform(0.5, 4.0, samples)
                pairs = ",".join(
                    f'[{s},"{v!r}"]' for s, v in zip(stamps, values.tolist(), strict=True)
                )
                parts.append(f'{{"metric":{json.dumps(labels)},"values":[{pairs}]}}')
                points += samples
        head = '{"status":"success","data":{"resultType":"matrix","result":['
        out[metric] = (head + ",".join(parts) + "]}}").encode()
    return out, points


def serve_answers(bodies: dict[str, bytes]) -> ThreadingHTTPServer:
    """A loopback server answering ``/api/v1/query`` with the metric's rendered answer."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            form = urllib.parse.parse_qs(
                self.rfile.read(int(self.headers["Content-Length"])).decode()
            )
            metric = form["query"][0].split("{", 1)[0]
            body = bodies.get(
                metric, b'{"status":"success","data":{"resultType":"matrix","result":[]}}'
            )
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
    args = p.parse_args(argv)
    logging.disable(logging.WARNING)  # random counters alert: not what is measured
    end = 1_800_000_000.0
    samples = int((LOOKBACK_S + 2 * 60) / INTERVAL) + 2
    model = one_model()
    bodies, points = answers(args.hosts, end, samples)
    http = serve_answers(bodies)
    client = PromClient(Connection(f"http://127.0.0.1:{http.server_address[1]}"))
    server = FleetServer(client, Path("."), clock=lambda: end)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for h in range(args.hosts):
        server.hosts[f"h{h:04d}"] = HostState.of(replace(model, host=f"h{h:04d}"))
    times = []
    for i in range(args.repeats + 1):  # the first scores the whole lookback: warm-up
        t0 = time.perf_counter()
        counts = server.cycle()
        took = time.perf_counter() - t0
        if i:
            times.append(took)
        assert counts["scored"] == args.hosts, counts
        # the next cycle finds one new window per host (the same data, one slot rewound)
        for state in server.hosts.values():
            state.last_slot = None if state.last_slot is None else state.last_slot - 1
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    http.shutdown()
    median = statistics.median(times)
    print(
        json.dumps(
            {
                "hosts": args.hosts,
                "points_per_cycle": points,
                "queries_per_cycle": len(METRICS),
                "cycle_s_median": round(median, 2),
                "cycle_s_all": [round(t, 2) for t in times],
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
