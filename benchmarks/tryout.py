"""The README's try-out, measured: does a short-learning agent cry wolf?

    python -m minerwatch.bench.tryout --minutes 10 --output docs/benchmarks/tryout.json

Runs the real ``minerwatch serve --learn-for 2m --interval 10s`` (a fresh data folder, a
free port on 127.0.0.1) until its first model is loaded, then for ``--minutes`` more, and
counts its alert episodes: ``open`` lines in its event log and ``minerwatch_alerts_total``
scraped over HTTP (they must agree). Two runs, one after the other: the machine as it is
("quiet"), and with a steady low load running through both phases ("steady":
``stress-ng --cpu 1 --cpu-load 20``, one worker at 20 % of a core; a Python loop doing the
same when stress-ng is missing). The target is zero episodes in both: a model from two
minutes must be cautious, not jumpy. Every scrape is kept (score, threshold, host CPU as the
agent saw it, training windows), so a run that alerts says what the host was doing.
Exit code 0 when both runs had zero episodes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SCRAPE_EVERY_S = 5.0
#: What each scrape keeps in the report (the full exposition is larger and says no more).
KEPT = (
    "t", "loadavg1", "cpu_percent", "minerwatch_learning", "minerwatch_anomaly_score",
    "minerwatch_anomaly_threshold", "minerwatch_alert_active", "minerwatch_alerts_total",
    "minerwatch_model_training_windows", "minerwatch_windows_scored_total",
)  # fmt: skip
_SAMPLE = re.compile(r"^(minerwatch_[a-z_]+)(\{[^}]*\})? (\S+)$")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse_metrics(text: str) -> dict[str, float]:
    """Unlabelled minerwatch_* samples, plus ``cpu_percent`` and retrain failures by reason.

    >>> parse_metrics('minerwatch_alerts_total 2\\nminerwatch_telemetry{metric="cpu_percent"} 3')
    {'minerwatch_alerts_total': 2.0, 'cpu_percent': 3.0}
    """
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2), float(m.group(3))
        if labels is None:
            out[name] = value
        elif name == "minerwatch_telemetry" and 'metric="cpu_percent"' in labels:
            out["cpu_percent"] = value
        elif name == "minerwatch_retrain_failures_total":
            reason = labels.split('"')[1]
            out[f"retrain_failures_{reason}"] = value
    return out


def agent_command() -> list[str]:
    """The installed ``minerwatch`` next to this interpreter, else ``python -m minerwatch``."""
    script = Path(sys.executable).with_name("minerwatch")
    return [str(script)] if script.exists() else [sys.executable, "-m", "minerwatch"]


def start_load(percent: int) -> subprocess.Popen[bytes]:
    """One worker holding ``percent`` of a core, in its own process group."""
    if shutil.which("stress-ng"):
        cmd = ["stress-ng", "--cpu", "1", "--cpu-load", str(percent), "--quiet"]
    else:
        loop = (
            "import time\n"
            "while True:\n"
            f"    t = time.monotonic() + {percent / 1000}\n"
            "    while time.monotonic() < t: pass\n"
            f"    time.sleep({(100 - percent) / 1000})\n"
        )
        cmd = [sys.executable, "-c", loop]
    return subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@dataclass
class Run:
    """One try-out: its settings, every scrape and what the event log said."""

    name: str
    load: str
    command: list[str]
    started_utc: str = ""
    learned_after_s: float | None = None
    scored_for_s: float = 0.0
    episodes_events: int = 0
    episodes_metric: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    scrapes: list[dict[str, float]] = field(default_factory=list)
    exit_code: int | None = None
    log_tail: str = ""

    def summary(self) -> dict[str, Any]:
        scored = [s for s in self.scrapes if s.get("minerwatch_learning") == 0.0]
        cpu = [s["cpu_percent"] for s in self.scrapes if "cpu_percent" in s]
        learning = [s["cpu_percent"] for s in self.scrapes if "cpu_percent" in s and
                    s.get("minerwatch_learning") == 1.0]  # fmt: skip
        scores = [s["minerwatch_anomaly_score"] for s in scored if "minerwatch_anomaly_score" in s]
        thresholds = [s["minerwatch_anomaly_threshold"] for s in scored
                      if "minerwatch_anomaly_threshold" in s]  # fmt: skip
        windows = sorted({int(s["minerwatch_model_training_windows"]) for s in scored
                          if "minerwatch_model_training_windows" in s})  # fmt: skip
        last = self.scrapes[-1] if self.scrapes else {}
        failures = {k.removeprefix("retrain_failures_"): v for k, v in last.items()
                    if k.startswith("retrain_failures_") and v}  # fmt: skip

        def stats(xs: list[float]) -> dict[str, float] | None:
            if not xs:
                return None
            xs = sorted(xs)
            return {"mean": round(sum(xs) / len(xs), 2), "p50": round(xs[len(xs) // 2], 2),
                    "max": round(xs[-1], 2)}  # fmt: skip

        return {
            "run": self.name,
            "load": self.load,
            "learned_after_s": self.learned_after_s,
            "scored_for_s": round(self.scored_for_s),
            "episodes (event log)": self.episodes_events,
            "episodes (alerts_total)": self.episodes_metric,
            "host_cpu_learning": stats(learning),
            "host_cpu_all": stats(cpu),
            "max_score": round(max(scores), 4) if scores else None,
            "thresholds": [round(min(thresholds), 4), round(max(thresholds), 4)]
            if thresholds
            else None,
            "models_windows": windows,
            "windows_scored": last.get("minerwatch_windows_scored_total"),
            "retrain_failures": failures,
            "exit_code": self.exit_code,
        }


def scrape(port: int) -> dict[str, float] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return parse_metrics(r.read().decode())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def run_one(
    name: str,
    load: int,
    learn_for: str,
    interval: str,
    minutes: float,
    work: Path,
    window: str | None = None,
) -> Run:
    data = work / name
    port = free_port()
    cmd = [
        *agent_command(), "serve", "--learn-for", learn_for, "--interval", interval,
        "--port", str(port), "--address", "127.0.0.1", "--data-dir", str(data),
        "--host", f"tryout-{name}", *(["--window", window] if window else []),
    ]  # fmt: skip
    run = Run(name, f"stress-ng --cpu 1 --cpu-load {load}" if load else "none", cmd)
    run.started_utc = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    burner = start_load(load) if load else None
    log_path = work / f"{name}.log"
    t0 = time.monotonic()
    learned: float | None = None
    with log_path.open("wb") as log:
        agent = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=work
        )
        try:
            while agent.poll() is None:
                m = scrape(port)
                now = time.monotonic()
                if m:
                    m["t"] = round(now - t0, 1)
                    m["loadavg1"] = float(Path("/proc/loadavg").read_text().split()[0])
                    failed = {k: v for k, v in m.items() if k.startswith("retrain_failures_")}
                    run.scrapes.append({k: m[k] for k in KEPT if k in m} | failed)
                    if learned is None and m.get("minerwatch_learning") == 0.0:
                        learned = now
                        run.learned_after_s = round(now - t0, 1)
                        print(f"[{name}] first model after {now - t0:.0f} s", flush=True)
                if learned is not None and now - learned >= minutes * 60:
                    break
                if learned is None and now - t0 > 3600:
                    print(f"[{name}] no model after an hour", flush=True)
                    break
                time.sleep(SCRAPE_EVERY_S)
            run.scored_for_s = time.monotonic() - learned if learned is not None else 0.0
        finally:
            if agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
                try:
                    run.exit_code = agent.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    agent.kill()
                    run.exit_code = agent.wait()
            else:
                run.exit_code = agent.returncode
            if burner is not None:
                stop_group(burner)
    run.episodes_metric = int(max((s.get("minerwatch_alerts_total", 0) for s in run.scrapes),
                                  default=0))  # fmt: skip
    events = data / "events.jsonl"
    if events.exists():
        run.events = [json.loads(line) for line in events.read_text().splitlines()]
    run.episodes_events = sum(e.get("event") == "open" for e in run.events)
    run.log_tail = log_path.read_text(errors="replace")[-4000:]
    return run


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minerwatch.bench.tryout", description=__doc__)
    p.add_argument("--learn-for", default="2m", help="the agent's --learn-for (default: 2m)")
    p.add_argument("--interval", default="10s", help="the agent's --interval (default: 10s)")
    p.add_argument("--minutes", type=float, default=10.0,
                   help="minutes to keep scoring after the first model (default: 10)")  # fmt: skip
    p.add_argument("--load-percent", type=int, default=20,
                   help="the steady run's load, percent of one core (default: 20)")  # fmt: skip
    p.add_argument("--window", help="the agent's --window (default: the agent's own, 1m)")
    p.add_argument("--runs", default="quiet,steady", help="which runs (default: quiet,steady)")
    p.add_argument("--output", type=Path, help="write every scrape and the summary here (JSON)")
    args = p.parse_args(argv)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="minerwatch-tryout-") as tmp:
        for name in args.runs.split(","):
            load = args.load_percent if name == "steady" else 0
            print(
                f"[{name}] starting: learn {args.learn_for}, then {args.minutes:g} min", flush=True
            )
            run = run_one(
                name, load, args.learn_for, args.interval, args.minutes, Path(tmp), args.window
            )
            print(json.dumps(run.summary()), flush=True)
            runs.append(run)
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": machine(),
        "summary": [r.summary() for r in runs],
        "runs": [asdict(r) for r in runs],
    }
    if args.output is not None:
        args.output.write_text(json.dumps(report, indent=1) + "\n")
    for r in runs:
        for e in r.events:
            if e.get("event") == "open":
                proc = e.get("process") or {}
                print(f"[{r.name}] episode at {e['start']:.0f}: score {e['score']:.4f} > "
                      f"{e['threshold']:.4f}, busiest {proc.get('name')!r} "
                      f"{proc.get('cpu_percent')}%, top {e.get('top_features')}")  # fmt: skip
    return 0 if all(r.episodes_events == 0 and r.episodes_metric == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
