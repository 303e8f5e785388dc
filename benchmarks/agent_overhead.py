"""Overhead of the on-host agent: RSS, CPU share and per-window scoring time.

    python -m minerwatch.bench.agent_overhead --minutes 10

Starts the real ``minerwatch serve`` as a subprocess (10 s interval, a short learning phase so
it scores for most of the run), scrapes its ``/metrics`` like Prometheus would, and every
``--sample-every`` seconds reads the agent's own ``VmRSS`` and ``utime+stime`` from ``/proc``.
Training children are separate processes: their CPU (reaped into the agent's ``cutime``) and
peak RSS are reported apart from the agent's. Then it times one-row scoring of the numpy
forest against scikit-learn's ``IsolationForest.score_samples`` on the same trained forest.
Targets (the issue): RSS <= 60 MB, CPU <= 0.5 % of one core, numpy >= 20x faster.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
TARGET_RSS_MB = 60.0
TARGET_CPU_PCT = 0.5
TARGET_SPEEDUP = 20.0


# -- /proc readers (pure parsing separate from reading) ---------------------------------------


def parse_stat(text: str) -> dict[str, int]:
    """utime, stime, cutime, cstime (clock ticks) and ppid from ``/proc/<pid>/stat`` text.

    The command name (field 2) may hold spaces and parentheses, so fields are counted from
    the last ``)``.

    >>> parse_stat("42 (py (x)) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14")["utime"]
    11
    """
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): field n is rest[n - 3]
    return {
        "ppid": int(rest[1]),
        "utime": int(rest[11]),
        "stime": int(rest[12]),
        "cutime": int(rest[13]),
        "cstime": int(rest[14]),
    }


def parse_vmrss_kb(status: str) -> int | None:
    """VmRSS in kB from ``/proc/<pid>/status`` text (None for a zombie or kernel thread)."""
    m = re.search(r"^VmRSS:\s+(\d+)\s+kB", status, re.MULTILINE)
    return int(m.group(1)) if m else None


def read_proc(pid: int, proc: Path = Path("/proc")) -> tuple[dict[str, int], int | None]:
    stat = (proc / str(pid) / "stat").read_text()
    status = (proc / str(pid) / "status").read_text()
    return parse_stat(stat), parse_vmrss_kb(status)


def children_of(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """Live direct children of ``pid`` (the training processes)."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if parse_stat((entry / "stat").read_text())["ppid"] == pid:
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # vanished or unreadable: not ours to count
    return found


def children_rss_kb(pid: int) -> int:
    """Summed VmRSS of the live children of ``pid``."""
    total = 0
    for child in children_of(pid):
        try:
            total += read_proc(child)[1] or 0
        except OSError:
            continue  # exited meanwhile
    return total


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    """Unlabelled minerwatch_* samples of one scrape (empty if the agent did not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(r"(minerwatch_[a-z_]+) (\S+)", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


# -- the agent run -----------------------------------------------------------------------------


@dataclass
class Sample:
    t: float  # seconds since the agent started
    rss_kb: int
    cpu_ticks: int  # the agent's own utime + stime
    child_ticks: int  # cutime + cstime: reaped training children
    live_children_rss_kb: int
    learning: bool


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    trained_at: float | None = None
    last_metrics: dict[str, float] = field(default_factory=dict)
    child_peak_kb: int = 0
    returncode: int | None = None


def run_agent(args: argparse.Namespace, data_dir: Path) -> Run:
    port = free_port()
    cmd = [
        sys.executable, "-m", "minerwatch", "serve",
        "--data-dir", str(data_dir), "--port", str(port), "--address", "127.0.0.1",
        "--interval", args.interval, "--window", args.window, "--learn-for", args.learn_for,
        "--log-level", "INFO",
    ]  # fmt: skip
    print("agent:", " ".join(cmd), file=sys.stderr)
    log = (data_dir.parent / "agent.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    run = Run()
    started = time.monotonic()
    end = started + args.minutes * 60.0
    try:
        next_at = started + args.sample_every
        while time.monotonic() < end and proc.poll() is None:
            # training children live a few seconds: look for them twice a second
            while time.monotonic() < next_at:
                run.child_peak_kb = max(run.child_peak_kb, children_rss_kb(proc.pid))
                time.sleep(min(0.5, max(0.0, next_at - time.monotonic())))
            next_at += args.sample_every
            metrics = scrape(port)  # one scrape per sample, like Prometheus would do
            if metrics:
                run.last_metrics = metrics
            learning = metrics.get("minerwatch_learning", 1.0) == 1.0
            try:
                stat, rss = read_proc(proc.pid)
            except OSError:
                break
            kids = children_rss_kb(proc.pid)
            run.child_peak_kb = max(run.child_peak_kb, kids)
            t = time.monotonic() - started
            if not learning and run.trained_at is None:
                run.trained_at = t
            run.samples.append(
                Sample(
                    t,
                    rss or 0,
                    stat["utime"] + stat["stime"],
                    stat["cutime"] + stat["cstime"],
                    kids,
                    learning,
                )
            )
            if args.verbose:
                print(
                    f"{t:6.0f}s rss={rss}kB cpu={stat['utime'] + stat['stime']}t "
                    f"children={kids}kB learning={learning}",
                    file=sys.stderr,
                )
    finally:
        proc.terminate()
        try:
            run.returncode = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            run.returncode = proc.wait()
        log.close()
    return run


def cpu_percent(samples: list[Sample]) -> float | None:
    """The agent's own CPU over the samples' span, percent of one core."""
    if len(samples) < 2:
        return None
    ticks = samples[-1].cpu_ticks - samples[0].cpu_ticks
    return 100.0 * ticks / TICKS / (samples[-1].t - samples[0].t)


def summarize_run(run: Run) -> dict[str, Any]:
    s = run.samples
    scoring = [x for x in s if not x.learning]
    rss = [x.rss_kb / 1024 for x in s]
    rss_scoring = [x.rss_kb / 1024 for x in scoring]
    return {
        "samples": len(s),
        "seconds": round(s[-1].t - s[0].t, 1) if s else 0.0,
        "trained_after_s": None if run.trained_at is None else round(run.trained_at, 1),
        "rss_mb_median": round(statistics.median(rss), 1) if rss else None,
        "rss_mb_max": round(max(rss), 1) if rss else None,
        "rss_mb_median_scoring": round(statistics.median(rss_scoring), 1) if scoring else None,
        "rss_mb_max_scoring": round(max(rss_scoring), 1) if scoring else None,
        "cpu_pct_one_core_all": _round(cpu_percent(s)),
        "cpu_pct_one_core_learning": _round(cpu_percent([x for x in s if x.learning])),
        "cpu_pct_one_core_scoring": _round(cpu_percent(scoring)),
        "training_children_cpu_s": round(s[-1].child_ticks / TICKS, 2) if s else None,
        "training_children_rss_mb_max_seen": round(run.child_peak_kb / 1024, 1),
        "windows_scored": run.last_metrics.get("minerwatch_windows_scored_total"),
        "agent_score_duration_s_last": run.last_metrics.get("minerwatch_score_duration_seconds"),
        "agent_sample_duration_s_last": run.last_metrics.get("minerwatch_sample_duration_seconds"),
        "agent_exit_code": run.returncode,
    }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


# -- scoring speed -----------------------------------------------------------------------------


def _median_seconds(fn: Any, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def latest_feature_row(history: Path, model: Any) -> np.ndarray:
    """The agent's last complete window's features, from the agent's own history."""
    from minerwatch.features.pipeline import feature_rows
    from minerwatch.features.schema import AGENT_COLUMNS
    from minerwatch.service.history import History

    with History(history) as h:
        ts, values = h.samples()
    # the process columns are computed live by the agent, not kept in history.db; their values
    # do not change what scoring one row costs, so "no unfamiliar process" (zeros) stands in
    columns = tuple(AGENT_COLUMNS)
    live = tuple(c for c in model.columns if c not in columns)
    values = np.hstack([values, np.zeros((len(ts), len(live)))])
    rows = feature_rows(ts, values, columns + live, model.window, model.hop, inputs=model.columns)
    return np.asarray(rows.matrix[-1:])


def scoring_speed(reps: int, model_dir: Path | None, host: str | None) -> dict[str, Any]:
    """One-row scoring: numpy forest vs scikit-learn on the same trees (imports sklearn here)."""
    from sklearn.ensemble import IsolationForest

    from minerwatch.baseline.forest import export_forest
    from minerwatch.baseline.model import HostBaseline

    rng = np.random.default_rng(0)
    d = 24
    X = rng.normal(size=(2000, d))
    base = HostBaseline(random_state=0, folds=1)  # the agent's forest size (200 trees, 256)
    forest = IsolationForest(
        n_estimators=base.n_estimators, max_samples=base.max_samples, random_state=0
    ).fit(X)
    nf = export_forest(forest)
    row = rng.normal(size=(1, d))
    got, want = nf.score_samples(row), forest.score_samples(row)
    if not np.allclose(got, want, rtol=0, atol=1e-9):
        raise AssertionError(f"numpy forest disagrees with scikit-learn: {got} vs {want}")
    sk_reps = max(50, reps // 10)
    t_np = _median_seconds(lambda: nf.score_samples(row), reps)
    t_sk = _median_seconds(lambda: forest.score_samples(row), sk_reps)
    out: dict[str, Any] = {
        "trees": nf.n_trees,
        "max_samples": nf.max_samples,
        "features": d,
        "numpy_forest_one_row_ms": round(t_np * 1e3, 4),
        "sklearn_score_samples_one_row_ms": round(t_sk * 1e3, 4),
        "speedup": round(t_sk / t_np, 1),
        "reps_numpy": reps,
        "reps_sklearn": sk_reps,
    }
    if model_dir is not None and host is not None:
        from minerwatch.baseline.store import ModelError, load_model

        try:
            model = load_model(model_dir, host)
        except (ModelError, OSError) as exc:
            out["agent_model_error"] = str(exc)
        else:
            f = latest_feature_row(model_dir.parent / "history.db", model)
            out["agent_model_trees"] = model.forest.n_trees
            out["host_model_score_one_row_ms"] = round(
                _median_seconds(lambda: model.score(f), reps) * 1e3, 4
            )
            out["host_model_score_and_contributions_ms"] = round(
                _median_seconds(lambda: (model.score(f), model.contributions(f)), reps) * 1e3, 4
            )
    return out


# -- retraining input --------------------------------------------------------------------------


def vm_hwm_kb() -> int:
    """This process's peak RSS so far (VmHWM), kB."""
    m = re.search(r"^VmHWM:\s+(\d+)\s+kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(m.group(1)) if m else 0


def fill_history(path: Path, days: float, interval: float) -> int:
    """A history.db holding ``days`` of samples (random values), written in one transaction."""
    import sqlite3

    from minerwatch.features.schema import METRIC_COLUMNS
    from minerwatch.service.history import History

    History(path).close()  # the agent's own schema
    n = int(days * 86400 / interval)
    t0 = time.time() - n * interval
    rng = np.random.default_rng(0)
    cols = ", ".join(f'"{c}"' for c in METRIC_COLUMNS)
    marks = ", ".join("?" * (1 + len(METRIC_COLUMNS)))
    with sqlite3.connect(path) as conn:
        for lo in range(0, n, 10000):
            k = min(10000, n - lo)
            block = np.column_stack(
                [t0 + (lo + np.arange(k)) * interval, rng.random((k, len(METRIC_COLUMNS)))]
            )
            conn.executemany(f"INSERT INTO samples (ts, {cols}) VALUES ({marks})", block.tolist())
    return n


def retrain_input_cost(path: Path, days: float) -> dict[str, Any]:
    """Peak RSS of reading ``days`` of history in one process: what the training child does
    (and the agent only when its database is unavailable and it falls back to memory)."""
    from minerwatch.service.history import History

    h = History(path)
    before = vm_hwm_kb()
    t0 = time.perf_counter()
    ts, values = h.samples(since=time.time() - days * 86400)
    rows = len(ts)
    took = time.perf_counter() - t0
    h.close()
    array_mb = round((ts.nbytes + values.nbytes) / 2**20, 1)
    del ts, values
    status = Path("/proc/self/status").read_text()
    return {
        "days": days,
        "rows": rows,
        "array_mb": array_mb,
        "peak_rss_mb_before": round(before / 1024, 1),
        "peak_rss_mb_after": round(vm_hwm_kb() / 1024, 1),
        "rss_mb_after_freeing": round((parse_vmrss_kb(status) or 0) / 1024, 1),
        "seconds": round(took, 2),
    }


def measure_retrain_input(days: float, interval: float) -> dict[str, Any]:
    """Fill a history, then read it back in a fresh process (a clean VmHWM)."""
    with tempfile.TemporaryDirectory(prefix="minerwatch-history-") as tmp:
        path = Path(tmp) / "history.db"
        fill_history(path, days, interval)
        done = subprocess.run(
            [sys.executable, __file__, "--read-history", str(path), "--days", str(days)],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
    return dict(json.loads(done.stdout))


# -- report ------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": sys.version.split()[0],
        "kernel": os.uname().release,
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
    }


def verdicts(agent: dict[str, Any], speed: dict[str, Any]) -> dict[str, bool | None]:
    rss = agent.get("rss_mb_max")
    cpu = agent.get("cpu_pct_one_core_scoring")
    return {
        "rss_max_le_60mb": None if rss is None else rss <= TARGET_RSS_MB,
        "cpu_scoring_le_0.5pct": None if cpu is None else cpu <= TARGET_CPU_PCT,
        "numpy_ge_20x": None if "speedup" not in speed else speed["speedup"] >= TARGET_SPEEDUP,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="agent run time (default 10)")
    p.add_argument("--interval", default="10s")
    p.add_argument("--window", default="20s", help="window (20s: 3m of learning gives 9)")
    p.add_argument("--learn-for", default="3m")
    p.add_argument("--sample-every", type=float, default=10.0, help="seconds between readings")
    p.add_argument("--reps", type=int, default=2000, help="numpy scoring repetitions")
    p.add_argument("--skip-agent", action="store_true", help="only time the scoring")
    p.add_argument("--keep", type=Path, help="keep the agent's data dir and log here")
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    p.add_argument(
        "--history-days",
        type=float,
        default=14.0,
        help="history read for retraining (the default retrain_history)",
    )
    p.add_argument("--read-history", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--days", type=float, default=14.0, help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.read_history is not None:  # the child of measure_retrain_input
        print(json.dumps(retrain_input_cost(args.read_history, args.days)))
        return 0

    result: dict[str, Any] = {"machine": machine(), "command": " ".join(sys.argv)}
    with tempfile.TemporaryDirectory(prefix="minerwatch-overhead-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data_dir = work / "data"
        host = socket.gethostname()
        if not args.skip_agent:
            result["agent"] = summarize_run(run_agent(args, data_dir))
        model_dir = data_dir / "models" if (data_dir / "models").is_dir() else None
        result["scoring"] = scoring_speed(args.reps, model_dir, host)
    if args.history_days > 0:
        seconds = float(args.interval.rstrip("s"))
        result["retrain_input"] = measure_retrain_input(args.history_days, seconds)
    result["targets_met"] = verdicts(result.get("agent", {}), result["scoring"])
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
