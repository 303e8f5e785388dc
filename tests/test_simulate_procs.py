"""`minerwatch simulate` writes process tables that agree with the host samples, realistic
identities per archetype, benign novelty and campaigns that are new, disguised or inside."""

from __future__ import annotations

import csv
import functools
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from minerwatch.bench.simprocs import IDENTITY_KINDS, IDENTITY_MIX, TOP_N
from minerwatch.bench.simulate import BENIGN_KINDS, _plan_campaigns, _plan_hosts, _plan_identities
from minerwatch.features.procs import GC_COLUMN, PROC_TABLE_HEADER, disguise, normalize_exe

MINERWATCH = str(Path(sys.executable).with_name("minerwatch"))
#: Seed 0 with six hosts over 1 + 1.5 days has every identity kind, a web deploy, a compiler
#: upgrade, a new admin tool and package upgrades in its test split.
ARGS = ["--hosts", "6", "--train-days", "1", "--test-days", "1.5", "--seed", "0"]
ARGS += ["--interval", "60"]


def simulate(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [MINERWATCH, "simulate", *ARGS, "--output", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("fleet") / "sim"
    said = simulate(out).stdout
    return out, json.loads((out / "labels.json").read_text()), said


def samples(path: Path) -> dict[str, dict[str, float]]:
    """Host samples by timestamp exactly as written (first row of a re-sent one)."""
    out: dict[str, dict[str, float]] = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            out.setdefault(row["timestamp"], {k: float(v) for k, v in row.items() if k != "host"})
    return out


@functools.cache
def procs(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == PROC_TABLE_HEADER
        return list(reader)


def tables(out: Path, split: str, host: str) -> tuple[dict[str, dict[str, float]], list[dict]]:
    return samples(out / split / f"{host}.csv"), procs(out / split / f"{host}.procs.csv")


def test_tables_add_up_with_the_samples(fleet):
    out, labels, _ = fleet
    builds: dict[str, list[tuple[float, float]]] = {}
    for e in labels["events"]:
        if e["kind"] == "compile":
            builds.setdefault(e["host"], []).append((e["start"], e["end"]))
    for host, info in labels["hosts"].items():
        cores = info["cores"]
        for split in ("train", "test"):
            rows_by_ts, rows = tables(out, split, host)
            assert {r["host"] for r in rows} == {host}
            by_ts: dict[str, list[dict]] = {}
            for r in rows:
                by_ts.setdefault(r["timestamp"], []).append(r)
            # every written sample has its processes, and no row belongs to no sample
            assert set(by_ts) == set(rows_by_ts), (host, split)
            for ts, listed in by_ts.items():
                sample = rows_by_ts[ts]
                cpu = [float(r["cpu_percent"]) for r in listed]
                assert max(cpu) == sample["top_proc_cpu_percent"], (host, ts)
                assert len({r["pid"] for r in listed}) == len(listed)
                total = sample["cpu_percent"] * cores  # percent of one core, summed
                assert sum(cpu) <= 1.1 * total + 1.0, (host, ts, sum(cpu), total)
                building = any(a - 60 <= float(ts) <= b + 60 for a, b in builds.get(host, ()))
                if len(listed) < TOP_N and not building:
                    # what is left is small processes nobody lists (and a build's compiler
                    # processes that ran between two samples: see the test below)
                    assert total - sum(cpu) <= 0.5 * total + 3.0, (host, ts, sum(cpu), total)
            for r in rows:
                assert len(r["name"].encode()) <= 15 and int(r["pid"]) > 0
                assert r["exe"] == "" or r["exe"].startswith("/"), r
            assert {s["cpu_cores"] for s in rows_by_ts.values()} == {cores}


def test_only_jvms_collect_garbage_and_a_gc_storm_is_mostly_collection(tmp_path: Path) -> None:
    """The simulated GC threads' CPU: a JVM's few percent in normal running, most of a GC
    storm's; every other process (a miner inside a JVM included) has none. Seed 1 of the
    same fleet has GC storms on a web and a cache host."""
    out = tmp_path / "sim"
    subprocess.run(
        [
            MINERWATCH,
            "simulate",
            *ARGS[:-4],
            "--seed",
            "1",
            "--interval",
            "60",
            "--output",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    labels = json.loads((out / "labels.json").read_text())
    storms = [e for e in labels["events"] if e["kind"] == "gc_storm"]
    in_storm = out_storm = 0
    for host in labels["hosts"]:
        for split in ("train", "test"):
            for r in procs(out / split / f"{host}.procs.csv"):
                cpu, gc = float(r["cpu_percent"]), float(r[GC_COLUMN] or 0.0)
                assert 0.0 <= gc <= cpu, r
                if r["name"] != "java":
                    assert gc == 0.0, r
                    continue
                t = float(r["timestamp"])
                near = [e for e in storms if e["host"] == host and e["start"] - 120 <= t]
                if any(t < e["end"] + 120 and not e["start"] <= t < e["end"] for e in near):
                    continue  # a storm's edges: a sample partly in it
                storm = any(t < e["end"] for e in near)
                if storm and cpu >= 100.0:
                    in_storm += 1
                    assert gc >= 0.5 * cpu, r
                elif not storm and cpu >= 20.0:
                    out_storm += 1
                    assert gc <= 0.15 * cpu, r
    assert len(storms) == 2 and in_storm > 0 and out_storm > 0


def test_identities_per_archetype(fleet):
    out, labels, _ = fleet
    exes: dict[str, set[str]] = {}
    names: dict[str, set[str]] = {}
    kernel: set[str] = set()
    for host in labels["hosts"]:
        rows = procs(out / "train" / f"{host}.procs.csv")
        exes[host] = {r["exe"] for r in rows}
        names[host] = {r["name"] for r in rows}
        kernel |= {r["exe"] for r in rows if r["name"].startswith(("kworker", "ksoftirqd"))}
    assert kernel == {""}  # kernel threads are listed, and have no executable
    arch = {h: i["archetype"] for h, i in labels["hosts"].items()}
    for host, a in arch.items():
        assert "/usr/local/bin/node_exporter" in exes[host]
        if a == "web":
            assert any(e.startswith("/srv/app/releases/") for e in exes[host])
            assert {"nginx", "gunicorn", "node"} <= names[host]
        if a == "database":
            assert exes[host] & {"/usr/lib/postgresql/14/bin/postgres", "/usr/sbin/mysqld"}
        if a == "ci":
            assert any(e.endswith("/cc1plus") for e in exes[host]) or "java" in names[host]
        if a == "cache":
            assert names[host] & {"redis-server", "memcached"}


def test_campaign_identities_in_labels_and_tables(fleet):
    out, labels, said = fleet
    campaigns = [e for e in labels["events"] if e["malicious"]]
    assert {e["identity"] for e in campaigns} == set(IDENTITY_KINDS)
    assert "campaign identities" in said
    for e in campaigns:
        look = e["process"]
        train_exes = {r["exe"] for r in procs(out / "train" / f"{e['host']}.procs.csv")}
        rows = [
            r
            for r in procs(out / "test" / f"{e['host']}.procs.csv")
            if e["start"] <= float(r["timestamp"]) <= e["end"] and r["exe"] == look["exe"]
        ]
        assert rows, e  # the miner's process is listed while it runs
        assert {(r["name"], r["user"]) for r in rows} == {(look["name"], look["user"])}
        if e["identity"] == "inside":
            assert look["exe"] in train_exes  # no new identity: a familiar process works harder
            assert disguise(look["name"], look["exe"]) == ""
        else:
            assert look["exe"] not in train_exes
        if e["identity"] == "disguised":
            assert disguise(look["name"], look["exe"]), look  # an odd place or a deleted file


def test_benign_novelty_changes_identities_like_real_hosts(fleet):
    out, labels, _ = fleet
    test_ev = [e for e in labels["events"] if e["split"] == "test"]
    assert {"new_tool", "package_upgrade", "toolchain_upgrade"} <= {e["kind"] for e in test_ev}
    moves = 0
    assert {e["kind"] for e in labels["events"] if not e["malicious"]} <= set(BENIGN_KINDS)
    for e in test_ev:
        web = labels["hosts"][e["host"]]["archetype"] == "web"
        if e["kind"] not in ("new_tool", "toolchain_upgrade", "deploy") or (
            e["kind"] == "deploy" and not web
        ):
            continue
        train = procs(out / "train" / f"{e['host']}.procs.csv")
        test = procs(out / "test" / f"{e['host']}.procs.csv")
        during = [r for r in test if e["start"] <= float(r["timestamp"]) <= e["end"]]
        before = {r["exe"] for r in train} | {
            r["exe"] for r in test if float(r["timestamp"]) < e["start"]
        }
        if e["kind"] == "new_tool":  # a program this host never ran, busy, for a few minutes
            new = {r["exe"] for r in during if float(r["cpu_percent"]) >= 50} - before
            assert new and all(x.startswith("/usr/bin/") for x in new), e
        if e["kind"] == "toolchain_upgrade":  # the compiler moves from .../N/ to .../N+1/
            old = {r["exe"] for r in train if r["name"] == "cc1plus"}
            moved = {r["exe"] for r in during if r["name"] == "cc1plus"} - old
            built = any(
                c["kind"] == "compile" and c["host"] == e["host"] and c["end"] == e["end"]
                for c in test_ev
            )  # the label runs to the end of the first build after the upgrade, if any
            assert bool(moved) == built, e
            assert {normalize_exe(x) for x in moved} <= {normalize_exe(x) for x in old}
            moves += len(moved)
        if e["kind"] == "deploy":
            app = {r["exe"] for r in during if r["name"] == "gunicorn"}
            assert app - before, e  # the app runs from a new release folder
            assert len({normalize_exe(x) for x in app | before if "/releases/" in x}) == 1
    assert moves >= 1


def test_package_upgrade_restarts_daemons_under_new_pids(fleet):
    out, labels, _ = fleet
    seen = 0
    for e in labels["events"]:
        if e["kind"] != "package_upgrade" or e["split"] != "test":
            continue
        rows = procs(out / "test" / f"{e['host']}.procs.csv")
        pids: dict[str, set[tuple[str, bool]]] = {}
        for r in rows:
            if r["name"] in ("node_exporter", "sshd", "rsyslogd", "systemd-journal"):
                pids.setdefault(r["exe"], set()).add((r["pid"], float(r["timestamp"]) > e["end"]))
        for seen_pids in pids.values():
            after = {p for p, late in seen_pids if late}
            earlier = {p for p, late in seen_pids if not late}
            if after and earlier and after != earlier:
                seen += 1
    assert seen >= 1  # same executable, new pid


def test_identity_mix_over_a_large_fleet():
    rng = np.random.default_rng(1)
    specs = _plan_hosts(200, rng)
    plan = _plan_campaigns(specs, rng)
    looks = _plan_identities(specs, plan, np.random.default_rng(2))
    n = sum(len(v) for v in plan.values())
    counts = Counter(k for v in looks.values() for k in v)
    assert sum(counts.values()) == n
    for kind, share in zip(IDENTITY_KINDS, IDENTITY_MIX, strict=True):
        assert abs(counts[kind] - share * n) <= 1, (kind, counts)


def test_no_procs_writes_no_tables_and_the_same_samples(fleet, tmp_path):
    out, labels, _ = fleet
    bare = tmp_path / "bare"
    said = simulate(bare, "--no-procs").stdout
    assert "no process tables" in said
    assert not list(bare.rglob("*.procs.*"))
    for path in sorted(out.glob("*/*.csv")):
        if path.name.endswith(".procs.csv"):
            continue
        assert (bare / path.relative_to(out)).read_bytes() == path.read_bytes(), path
    other = json.loads((bare / "labels.json").read_text())
    assert other["parameters"]["procs"] is False and labels["parameters"]["procs"] is True
    assert other["events"] == labels["events"]


def test_a_build_is_many_short_compiler_processes(fleet):
    """A real build forks a compiler per translation unit and a linker per link step, seconds
    each: no ``cc1plus`` or ``ld`` pid is listed for long, while the build keeps the host busy
    (its short ones are not listed)."""
    out, labels, _ = fleet
    builds = [
        e
        for e in labels["events"]
        if e["kind"] == "compile" and e["end"] - e["start"] >= 600 and e["host"] == "ci-01"
    ]
    assert builds
    for split in ("train", "test"):
        host_rows, table = tables(out, split, "ci-01")
        for name, many in (("cc1plus", 100), ("ld", 10)):  # compile and link steps
            listed: dict[str, list[float]] = {}
            for r in table:
                if r["name"] == name:
                    listed.setdefault(r["pid"], []).append(float(r["timestamp"]))
            spans = [max(t) - min(t) for t in listed.values()]
            assert len(spans) > many, name
            assert np.median(spans) <= 60 and max(spans) < 600, name  # samples 60 s apart
        for e in builds:
            if e["split"] != split:
                continue
            inside = [
                (ts, s)
                for ts, s in host_rows.items()
                if e["start"] + 120 <= float(ts) <= e["end"] - 60
            ]
            busy = np.median([s["cpu_percent"] for _, s in inside])
            shown = np.median(
                [
                    sum(float(r["cpu_percent"]) for r in table if r["timestamp"] == ts)
                    for ts, _ in inside
                ]
            )
            cores = labels["hosts"]["ci-01"]["cores"]
            assert busy > 30  # the build keeps the host busy...
            assert shown < 0.9 * busy * cores  # ...and part of it is never listed


def test_a_postgres_reindex_runs_in_single_threaded_processes(tmp_path: Path) -> None:
    """PostgreSQL is one single-threaded process per backend: a reindex is the backend and its
    parallel workers (at most three processes), never one process on many cores."""
    out = tmp_path / "sim"
    args = ["--hosts", "6", "--train-days", "1", "--test-days", "1.5", "--seed", "1"]
    done = subprocess.run(
        [MINERWATCH, "simulate", *args, "--interval", "60", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    labels = json.loads((out / "labels.json").read_text())
    assert labels["hosts"]["db-01"]["flavour"] == "postgres"
    (reindex,) = [e for e in labels["events"] if e["kind"] == "reindex"]
    assert reindex["host"] == "db-01" and reindex["split"] == "train"
    rows = procs(out / "train" / "db-01.procs.csv")
    pg = [r for r in rows if r["name"] == "postgres"]
    assert max(float(r["cpu_percent"]) for r in pg) <= 100.0
    during = Counter(
        r["timestamp"]
        for r in pg
        if reindex["start"] + 120 <= float(r["timestamp"]) <= reindex["end"] - 60
        and float(r["cpu_percent"]) >= 90
    )
    assert during and max(during.values()) <= 3 + 2  # the reindex's, and busy backends
