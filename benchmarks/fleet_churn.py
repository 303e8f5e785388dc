"""``fleet serve`` under host churn: what it holds as hosts come and go.

    python -m minerwatch.bench.fleet_churn --live 50 --replace-every 10 --cycles 300
    python -m minerwatch.bench.fleet_churn ... --no-forget      # series never forgotten (before)
    python -m minerwatch.bench.fleet_churn ... --models-stay    # every host's model stays
    python -m minerwatch.bench.fleet_churn ... --models-stay --no-unload   # ... all loaded (before)
    python -m minerwatch.bench.fleet_churn --live 20 --start-models 600   # a start, then one cycle

A fleet of ``--live`` hosts whose every host is replaced by a new one (a new ``instance``
name, as an autoscaling group or a daily redeploy gives) every ``--replace-every`` cycles:
generation g is ``g007-003`` and so on. The old hosts stop reporting; the operator keeps
``--models`` to the live fleet (the new hosts' models appear, the old ones are removed, as
``load_models`` sees it), so what grows is only what the server itself keeps. With
``--models-stay`` every new host's model is saved in ``--models`` (its model file a hard link
of one trained model's, its ``meta.json`` its own, so each load is a model of its own in
memory) and none is removed, as when nobody prunes ``--models``: the server loads each from
disk, and unloads those of hosts silent for longer than the lookback (``--no-unload``: keeps
them all loaded, as before). Each cycle is
``--interval`` (60 s) later on the clock than the one before; 30 generations stand for a month
of one new name per host a day.

The data are synthetic and say so: each host is the node_exporter and process-exporter of
``minerwatch.bench.fleet_serve`` (39 series), scraped every 15 s, with smooth counters and
pseudo-random gauges computed for the asked range (nothing pre-rendered, so a long run costs
no memory here); a loopback HTTP server answers the cycle's queries as Prometheus would (the
points in the asked range). Every host scores with one model (trained once on a simulated
host's day).

Prints a JSON line every ``--report-every`` cycles (series the server keeps numbered, label
sets it caches, models loaded and unloaded, alert states kept for removed hosts, the state
file's size, median cycle wall and CPU seconds of the last block of cycles, resident memory),
then a summary line.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from minerwatch.bench.fleet_serve import INTERVAL, _series, machine, one_model, serve_answers
from minerwatch.service.fleet.nodeexporter import METRICS

#: Seconds of history the first generation has before the first cycle (more than a lookback).
HISTORY_S = 2400.0


class ChurnAnswers:
    """Answers of a fleet whose generation g of ``live`` hosts reports from ``t0 + g * every``
    (the first one from ``HISTORY_S`` earlier) until generation g + 1 replaces it; ``stay``
    hosts (``stay-000`` ...) report all along; a host in ``silent`` sends nothing in its span."""

    def __init__(
        self,
        live: int,
        every: float,
        t0: float,
        stay: int = 0,
        silent: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        self.live, self.every, self.t0, self.stay = live, every, t0, stay
        self.silent = dict(silent or {})
        #: metric -> the label sets of one host (instance h0000)
        self.shapes = {m: _series(m, 0) for m in METRICS}

    def name(self, generation: int, slot: int) -> str:
        return f"g{generation:03d}-{slot:03d}"

    def generation(self, t: float) -> int:
        return max(0, math.floor((t - self.t0) / self.every))

    def span(self, generation: int) -> tuple[float, float]:
        begin = self.t0 + generation * self.every
        return (begin - HISTORY_S if generation == 0 else begin), begin + self.every

    def reporting(self, start: float, end: float) -> list[tuple[str, int, float, float]]:
        """(host, seed, first, end) of every host reporting in (start, end]."""
        out = [
            (f"stay-{slot:03d}", 1000 + slot, self.t0 - HISTORY_S, math.inf)
            for slot in range(self.stay)
        ]
        for g in range(self.generation(start), self.generation(end) + 1):
            born, gone = self.span(g)
            out.extend((self.name(g, slot), g * 7 + slot, born, gone) for slot in range(self.live))
        return out

    def body(self, metric: str, start: float, end: float) -> bytes:
        parts = []
        counter = metric.endswith("_total")
        for host, seed0, born, gone in self.reporting(start, end):
            lo, hi = max(start, born - INTERVAL), min(end, gone - INTERVAL)
            stamps = np.arange(math.floor(lo / INTERVAL) + 1, math.floor(hi / INTERVAL) + 1)
            stamps = stamps * INTERVAL
            if host in self.silent:
                a, b = self.silent[host]
                stamps = stamps[(stamps < a) | (stamps >= b)]
            if not len(stamps):
                continue
            texts = [f"{t:.3f}" for t in stamps.tolist()]
            for j, labels in enumerate(self.shapes[metric]):
                own = dict(labels)
                own["instance"] = own["instance"].replace("h0000", host)
                seed = (seed0 * 131 + j * 17) % 97 + 1
                if counter:
                    values = 1e5 + seed * 0.02 * (stamps - born)
                elif "Mem" in metric:
                    values = np.full(len(stamps), 8e9 if "Total" in metric else 5e9)
                else:
                    values = 0.5 + ((stamps * seed) % 35.0) / 10.0
                points = ",".join(
                    f'[{t},"{v!r}"]' for t, v in zip(texts, values.tolist(), strict=True)
                )
                parts.append(f'{{"metric":{json.dumps(own)},"values":[{points}]}}')
        head = '{"status":"success","data":{"resultType":"matrix","result":['
        return (head + ",".join(parts) + "]}}").encode()


def link_model(models: Path, template: Path, host: str) -> None:
    """``host``'s model in ``models``: ``template``'s model file (hard-linked: no disk
    per host) under a ``meta.json`` of its own, signed as ``save_model`` signs it."""
    from minerwatch.baseline.store import META, SIGNATURE, host_dirname, sign

    meta = json.loads((template / META).read_text())
    folder = models / host_dirname(host)
    folder.mkdir(mode=0o755)
    os.link(template / meta["model_file"], folder / meta["model_file"])
    meta["host"] = host
    meta.pop(SIGNATURE)
    meta[SIGNATURE] = sign(meta)
    (folder / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def start(live: int, models: int, unload: bool) -> dict[str, object]:
    """A start on a ``--models`` of ``models`` hosts of which ``live`` report: resident
    memory before, after ``load_models`` (each model loaded and checked) and after the first
    cycle, and how long each took."""
    from minerwatch.baseline.store import save_model
    from minerwatch.service.fleet.promclient import Connection, PromClient
    from minerwatch.service.fleet.serve import FleetServer

    t0 = 1_800_000_000.0
    model = one_model()
    answers = ChurnAnswers(live, 1e9, t0)
    http = serve_answers(answers)
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as spare:
        template = save_model(Path(spare), replace(model, host="template"))
        for slot in range(live):
            link_model(Path(tmp), template, answers.name(0, slot))
        for i in range(models - live):
            link_model(Path(tmp), template, f"gone-{i:05d}")
        client = PromClient(Connection(f"http://127.0.0.1:{http.server_address[1]}"))
        server = FleetServer(client, Path(tmp), clock=lambda: t0, unload=unload)
        rss0, w0 = rss_mb(), time.perf_counter()
        server.load_models()
        rss1, w1 = rss_mb(), time.perf_counter()
        server.cycle()
        rss2, w2 = rss_mb(), time.perf_counter()
    http.shutdown()
    return {
        "summary": "start" + ("" if unload else ", models never unloaded (before)"),
        "models": models, "live": live, "models_loaded": len(server.hosts),
        "rss_mb_start_loaded_first_cycle": [round(rss0, 1), round(rss1, 1), round(rss2, 1)],
        "load_s": round(w1 - w0, 2), "first_cycle_s": round(w2 - w1, 2),
        "machine": machine(), "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
    }  # fmt: skip


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    from minerwatch.baseline.store import save_model
    from minerwatch.service.fleet.promclient import Connection, PromClient
    from minerwatch.service.fleet.serve import KEPT_SINCE, FleetServer, HostState

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--live", type=int, default=50, help="hosts reporting at any time")
    p.add_argument("--replace-every", type=int, default=10, help="cycles a host lives")
    p.add_argument("--cycles", type=int, default=300)
    p.add_argument("--interval", type=float, default=60.0, help="seconds between cycles")
    p.add_argument("--report-every", type=int, default=30)
    p.add_argument("--no-forget", action="store_true", help="never forget a series (before)")
    p.add_argument(
        "--models-stay",
        action="store_true",
        help="save each new host's model in --models and remove none (the server loads them)",
    )
    p.add_argument(
        "--no-unload",
        action="store_true",
        help="keep the models of hosts gone loaded (before; with --models-stay)",
    )
    p.add_argument(
        "--days",
        type=float,
        default=14.0,
        help="history a retraining reads (fleet serve --days): a removed host's alert state "
        "is kept that long",
    )
    p.add_argument(
        "--start-models",
        type=int,
        default=0,
        help="measure a start instead: this many models in --models, --live of them reporting",
    )
    args = p.parse_args(argv)
    logging.disable(logging.WARNING)  # random gauges alert: not what is measured
    if args.start_models:
        print(json.dumps(start(args.live, args.start_models, not args.no_unload)))
        return 0
    t0 = 1_800_000_000.0
    model = one_model()
    answers = ChurnAnswers(args.live, args.replace_every * args.interval, t0)
    http = serve_answers(answers)
    client = PromClient(Connection(f"http://127.0.0.1:{http.server_address[1]}"))
    clock = [t0]
    reports = []
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as spare:
        state = Path(tmp) / "state.json"
        template = save_model(Path(spare), replace(model, host="template"))
        server = FleetServer(
            client, Path(tmp), clock=lambda: clock[0], state_file=state,
            history_s=args.days * 86400.0, forget=not args.no_forget,
            unload=not args.no_unload,
        )  # fmt: skip
        current = -1
        walls: list[float] = []
        cpus: list[float] = []
        rss0 = rss_mb()
        for i in range(args.cycles):
            clock[0] = t0 + i * args.interval
            g = answers.generation(clock[0])
            if g != current and args.models_stay:  # new hosts' models appear, none go
                for slot in range(args.live):
                    link_model(Path(tmp), template, answers.name(g, slot))
                if i == 0:
                    server.load_models()  # as fleet serve at start; each cycle looks again
                current = g
            if g != current:  # new hosts' models appear, the old ones' are removed
                for h in [h for h in server.hosts if not h.startswith(f"g{g:03d}-")]:
                    # as fleet serve does when a model leaves --models
                    server.kept_state[h] = {**server.hosts.pop(h).saved(), KEPT_SINCE: clock[0]}
                for slot in range(args.live):
                    name = answers.name(g, slot)
                    server.hosts[name] = HostState.of(replace(model, host=name))
                server.read_end = None
                current = g
            w0, c0 = time.perf_counter(), time.process_time()
            counts = server.cycle()
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
            # (models that stay: the previous generation is scored until it leaves the lookback)
            scored = counts["scored"]
            assert scored >= args.live if args.models_stay else scored == args.live, (i, counts)
            if (i + 1) % args.report_every == 0 or i + 1 == args.cycles:
                regs = server.registries.values()
                row = {
                    "cycle": i + 1,
                    "generations": g + 1,
                    "hosts_seen": (g + 1) * args.live,
                    "series": sum(len(r.labels) for r in regs),
                    "label_sets_cached": sum(len(r.by_labels) for r in regs),
                    "models_loaded": len(server.hosts),
                    "models_unloaded": len(server.dormant),
                    "kept_states": len(server.kept_state),
                    "state_file_kb": round(state.stat().st_size / 1024, 1),
                    "cycle_s_median": round(statistics.median(walls), 3),
                    "cycle_cpu_s_median": round(statistics.median(cpus), 3),
                    "rss_mb": round(rss_mb(), 1),
                }
                print(json.dumps(row), flush=True)
                reports.append(row)
                walls, cpus = [], []
    http.shutdown()
    first, last = reports[0], reports[-1]
    print(
        json.dumps(
            {
                "summary": ("forgetting off (before)" if args.no_forget else "forgetting on")
                + (", every model stays in --models" if args.models_stay else "")
                + (", models never unloaded (before)" if args.no_unload else ""),
                "live": args.live,
                "replace_every_cycles": args.replace_every,
                "cycles": args.cycles,
                "series_first_last": [first["series"], last["series"]],
                "series_per_live_host": round(last["series"] / args.live, 1),
                "models_loaded_first_last": [first["models_loaded"], last["models_loaded"]],
                "cycle_s_first_last": [first["cycle_s_median"], last["cycle_s_median"]],
                "rss_mb_start_first_last": [round(rss0, 1), first["rss_mb"], last["rss_mb"]],
                "machine": machine(),
                "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
