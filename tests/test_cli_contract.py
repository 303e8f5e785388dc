"""The exit-code contract, through the real ``minerwatch`` command: 0 only when the command did
its whole job, 2 for bad usage or input with a message naming the file or flag and what was
expected, never a traceback; one ``--data-dir`` for every command that reads the agent's files."""

from __future__ import annotations

import csv
import gzip
import json
import os
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import pytest
from entry import ENTRY, run, usage_error
from promtools import free_port
from synth import T0, host_series, write_csv

from minerwatch.features.io import from_arrays
from minerwatch.service.config import AgentConfig


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def with_column(series, name, value):
    """``series`` plus a constant column (as the agent records ``indicator_hits``)."""
    values = np.hstack([series.values, np.full((len(series.timestamps), 1), value)])
    return from_arrays(series.host, series.timestamps, values, (*series.columns, name))


def without_column(series, name):
    keep = [i for i, c in enumerate(series.columns) if c != name]
    cols = tuple(series.columns[i] for i in keep)
    return from_arrays(series.host, series.timestamps, series.values[:, keep], cols)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Two hosts trained by the real command, and a test day for each."""
    d = tmp_path_factory.mktemp("contract")
    write_csv(
        d / "train.csv",
        [host_series("web-1", days=0.5, interval=60, seed=1), host_series("db-1", 0.5, 60, seed=2)],
    )
    start = T0 + 43200
    write_csv(
        d / "test.csv",
        [
            host_series("web-1", days=0.2, interval=60, seed=3, start=start),
            host_series("db-1", days=0.2, interval=60, seed=4, start=start),
        ],
    )
    r = run("train", d / "train.csv", "--models", d / "models")
    assert r.returncode == 0, r.stderr
    return d


def models_copy(fleet, tmp_path):
    import shutil

    shutil.copytree(fleet / "models", tmp_path / "models")
    return tmp_path / "models"


# -- score: exit 2 when it scored nothing, and when it skipped any host ----------------------------


def test_score_without_any_usable_model_exits_2_and_writes_nothing(fleet, tmp_path):
    out = tmp_path / "scores.csv"
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run("score", fleet / "test.csv", "--models", empty, "--output", out)
    usage_error(r, empty / "web-1" / "meta.json", "expected a trained model", "was not written")
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))

    r = run("score", fleet / "test.csv", "--models", tmp_path / "nowhere", "--output", out)
    usage_error(r, "--models", "nowhere", "expected an existing folder")

    tampered = models_copy(fleet, tmp_path)
    for npz in tampered.glob("*/model-*.npz"):
        with npz.open("ab") as fh:
            fh.write(b"x")
    r = run("score", fleet / "test.csv", "--models", tampered, "--output", out)
    usage_error(r, "model-", ".npz", "expected sha256", "skipped host web-1", "skipped host db-1")
    assert not out.exists()


def test_score_refuses_a_world_writable_model_folder(fleet, tmp_path):
    models = models_copy(fleet, tmp_path)
    models.chmod(0o777)
    r = run("score", fleet / "test.csv", "--models", models, "--output", tmp_path / "s.csv")
    usage_error(r, str(models), "not writable by group or others", "drwxrwxrwx")
    assert not (tmp_path / "s.csv").exists()


def test_score_that_skips_some_hosts_writes_the_others_and_exits_2(fleet, tmp_path):
    """As ``train``: exit 0 means every host was done; the CSV holds the hosts that were."""
    models = models_copy(fleet, tmp_path)
    (models / "db-1" / "meta.json").unlink()
    out = tmp_path / "scores.csv"
    r = run("score", fleet / "test.csv", "--models", models, "--output", out)
    usage_error(r, "skipped host db-1", models / "db-1" / "meta.json", "skipped 1: db-1")
    assert {row["host"] for row in rows(out)} == {"web-1"} and len(rows(out)) > 200


def test_score_to_standard_output_streams_the_same_csv(fleet, tmp_path):
    """``--output -`` pipes the rows the file would hold (the summary stays on stderr); a run
    that scores nothing prints nothing there, not even the header."""
    out = tmp_path / "scores.csv"
    assert (
        run("score", fleet / "test.csv", "--models", fleet / "models", "--output", out).returncode
        == 0
    )
    r = run("score", fleet / "test.csv", "--models", fleet / "models", "--output", "-")
    assert r.returncode == 0, r.stderr
    assert r.stdout == out.read_text() and r.stdout.startswith("host,window_start")
    assert "-> standard output" in r.stderr and not (tmp_path / "-").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    r = run("score", fleet / "test.csv", "--models", empty, "--output", "-")
    usage_error(r, "nothing was written to standard output")
    assert r.stdout == ""


def test_train_that_skips_a_host_trains_the_others_and_exits_2(fleet, tmp_path):
    short = tmp_path / "short.csv"
    write_csv(short, [host_series("tiny", days=0.01, interval=60, seed=5)])
    r = run("train", fleet / "test.csv", short, "--models", tmp_path / "m")
    usage_error(r, "skipped host tiny", short, "complete 60s windows", "skipped 1: tiny")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["db-1", "web-1"]


# -- silent degradation ------------------------------------------------------------------------


def test_train_refuses_telemetry_without_cpu_percent(tmp_path):
    data = tmp_path / "no-cpu.csv"
    write_csv(data, [without_column(host_series("web-1", days=1, interval=60), "cpu_percent")])
    r = run("train", data, "--models", tmp_path / "m")
    usage_error(r, data, "'cpu_percent' column", "host 'web-1'")
    assert not (tmp_path / "m" / "web-1").exists()


def test_a_model_with_agent_only_columns_scores_collect_output(tmp_path):
    """``indicator_hits`` (recorded only by the agent) absent from the input is scored as
    unknown, which the model places at the host's usual value: the scores equal those of the
    same samples with no indicator hit, and the command says what it did."""
    agent = with_column(host_series("web-1", days=0.5, interval=60, seed=1), "indicator_hits", 0)
    write_csv(tmp_path / "agent.csv", [agent])
    r = run("train", tmp_path / "agent.csv", "--models", tmp_path / "m")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "m" / "web-1" / "meta.json").read_text())
    assert "indicator_hits" in meta["columns"]

    day = host_series("web-1", days=0.2, interval=60, seed=7, start=T0 + 43200, plateau=(0, 3600))
    write_csv(tmp_path / "collected.csv", [day])  # the columns 'collect' writes
    write_csv(tmp_path / "no-hits.csv", [with_column(day, "indicator_hits", 0.0)])
    r = run("score", tmp_path / "collected.csv", "--models", tmp_path / "m", "--output", "a.csv",
            cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "no 'indicator_hits' column (only the agent records it)" in r.stderr
    r = run("score", tmp_path / "no-hits.csv", "--models", tmp_path / "m", "--output", "b.csv",
            cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0 and "indicator_hits" not in r.stderr, r.stderr
    a, b = rows(tmp_path / "a.csv"), rows(tmp_path / "b.csv")
    assert len(a) > 250 and a == b
    assert any(row["alert"] == "1" for row in a)  # the plateau is still caught


@pytest.mark.slow
def test_a_model_the_agent_trained_scores_what_collect_recorded(tmp_path):
    """The real agent learns (30 s) while the real ``collect`` records the same machine; the
    agent's model, which uses ``indicator_hits``, then scores collect's file."""
    data, out = tmp_path / "agent", tmp_path / "collected.csv"
    agent = subprocess.Popen(
        [*ENTRY, "serve", "--data-dir", data, "--host", "same-host", "--port", str(free_port()),
         "--address", "127.0.0.1", "--interval", "1s", "--window", "3s", "--learn-for", "30s"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    # 36 s: twelve 3-s windows to score (8 asked for below), and about as long as the agent
    # takes to learn and train; the test waits for the later of the two
    collect = subprocess.Popen(
        [*ENTRY, "collect", "--interval", "1s", "--duration", "36s", "--host", "same-host",
         "--output", out],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    meta = data / "models" / "same-host" / "meta.json"
    try:
        deadline = time.monotonic() + 90
        while not meta.exists():
            assert agent.poll() is None and time.monotonic() < deadline, agent.stderr.read()
            time.sleep(0.5)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=30)
    assert collect.wait(timeout=60) == 0, collect.stderr.read()
    assert "indicator_hits" in json.loads(meta.read_text())["columns"]
    r = run("score", out, "--models", data / "models", "--output", tmp_path / "scores.csv")
    assert r.returncode == 0, r.stderr
    assert "no 'indicator_hits' column" in r.stderr
    scored = rows(tmp_path / "scores.csv")
    assert len(scored) >= 8 and all(0 <= float(row["score"]) <= 1 for row in scored)


# -- input files the readers refuse or accept ------------------------------------------------------


def test_gzip_is_refused_by_name_and_a_bom_is_accepted(fleet, tmp_path):
    text = (fleet / "test.csv").read_bytes()
    packed = tmp_path / "test.csv.gz"
    packed.write_bytes(gzip.compress(text))
    usage_error(run("train", packed, "--models", tmp_path / "m"), packed, "gzip")
    usage_error(
        run("score", packed, "--models", fleet / "models", "--output", tmp_path / "s.csv"),
        packed,
        "gzip",
    )
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + text)
    r = run("train", bom, "--models", tmp_path / "m")
    assert r.returncode == 0 and "web-1" in r.stdout, r.stderr
    r = run("score", bom, "--models", fleet / "models", "--output", tmp_path / "s.csv")
    assert r.returncode == 0 and len(rows(tmp_path / "s.csv")) > 500, r.stderr


# -- serve ---------------------------------------------------------------------------------------


def test_serve_on_a_busy_port_names_the_address_and_port(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run("serve", "--data-dir", tmp_path / "d", "--address", "127.0.0.1", "--port", port,
                "--interval", "1s", "--window", "3s", "--learn-for", "30s")  # fmt: skip
    usage_error(r, f"127.0.0.1:{port}", "Address already in use", "--port")
    # who holds it: another agent, or a process squatting the exporter's port
    me = psutil.Process()
    usage_error(r, f"(held by pid {os.getpid()}: {me.exe()}, user {me.username()})")


def test_serve_refuses_a_data_dir_that_is_a_file_and_a_bad_log_level(tmp_path):
    file = tmp_path / "data"
    file.write_text("")
    usage_error(run("serve", "--data-dir", file), file, "a folder", "got a file")
    cfg = tmp_path / "mw.toml"
    cfg.write_text(f'[agent]\ndata_dir = "{file}"\n')
    usage_error(run("serve", "--config", cfg), file, "got a file")
    usage_error(run("serve", "--log-level", "verbose"), "--log-level", "invalid choice", "DEBUG")
    usage_error(
        run("serve", "--interval", "1s", "--window", "1d", "--hop", "1s"),
        "--window / --hop <= 1000",
        "24h / 1s",
    )


# -- evidence | head ---------------------------------------------------------------------------


def test_evidence_show_into_a_closed_pipe_is_quiet(tmp_path):
    """``minerwatch evidence show … | head -1``: the reader leaves early; no 'Broken pipe',
    no traceback, and the exit code a SIGPIPE would give (141)."""
    folder = AgentConfig(data_dir=tmp_path).evidence_dir
    folder.mkdir()
    processes = [{"pid": i, "name": f"proc-{i}", "cmdline": "x" * 200} for i in range(2000)]
    doc = {"format": "minerwatch-evidence", "episode_id": "ep1", "processes": processes}
    (folder / "20270101T000000Z-ep1.json").write_text(json.dumps(doc))  # ~0.5 MB shown
    proc = subprocess.Popen(
        [*ENTRY, "evidence", "show", "ep1", "--data-dir", tmp_path],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout.readline().strip() == b"{"
    proc.stdout.close()  # as head does after its line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 128 + signal.SIGPIPE
    assert "Broken pipe" not in err and "Traceback" not in err and err == "", err
    r = subprocess.run(
        f"{' '.join(ENTRY)} evidence show ep1 --data-dir {tmp_path} | head -1",
        shell=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.stdout == "{\n" and r.stderr == "", r.stderr


# -- one flag for the agent's data folder ----------------------------------------------------------


def test_every_command_finds_the_agents_files_from_data_dir_or_config(tmp_path):
    data = tmp_path / "agent"
    cfg = AgentConfig(data_dir=data)  # where `serve --data-dir agent` writes
    cfg.evidence_dir.mkdir(parents=True)
    doc = {"format": "minerwatch-evidence", "episode_id": "ep7", "score": 0.9, "processes": []}
    (cfg.evidence_dir / "20270101T000000Z-ep7.json").write_text(json.dumps(doc))
    cfg.throttle.state_dir.mkdir()
    journal = {"version": 1, "throttled": [], "exempt": []}
    (cfg.throttle.state_dir / "throttle-journal.json").write_text(json.dumps(journal))
    toml = tmp_path / "mw.toml"
    toml.write_text(f'[agent]\ndata_dir = "{data}"\n')
    for where in (["--data-dir", data], ["--config", toml]):
        r = run("evidence", "list", *where)
        assert r.returncode == 0 and "20270101T000000Z-ep7.json" in r.stdout, r.stderr
        r = run("evidence", "show", "ep7", *where)
        assert r.returncode == 0 and json.loads(r.stdout)["episode_id"] == "ep7", r.stderr
        r = run("throttle", "status", "--json", *where)
        assert r.returncode == 0 and json.loads(r.stdout)["throttled"] == [], r.stderr
        r = run("throttle", "release", *where)
        assert r.returncode == 0 and r.stdout.strip() == "released 0 processes", r.stderr
    # the flag overrides the config file, as for serve
    other = tmp_path / "other"
    other.mkdir()
    r = run("evidence", "list", "--config", toml, "--data-dir", other)
    assert r.returncode == 0 and r.stdout == "" and f"{other / 'evidence'}" in r.stderr
    # a folder the user names must be there
    usage_error(run("evidence", "list", "--data-dir", tmp_path / "typo"), "--data-dir", "typo")
    usage_error(run("throttle", "status", "--data-dir", toml), "--data-dir", "got a file")


@pytest.mark.parametrize(
    ("command", "old"),
    [(["evidence", "list"], "--dir"), (["throttle", "status"], "--state-dir")],
    ids=["evidence", "throttle"],
)
def test_old_folder_flags_are_hidden_and_say_they_are_deprecated(tmp_path, command, old):
    assert old not in run(*command, "--help").stdout
    assert "--data-dir" in run(*command, "--help").stdout
    r = run(*command, old, tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"{old} is deprecated" in r.stderr and "use --data-dir" in r.stderr


# -- durations everywhere --------------------------------------------------------------------------


def test_collect_interval_takes_durations_like_serve(tmp_path):
    out = tmp_path / "me.csv"
    r = run("collect", "--interval", "500ms", "--duration", "2s", "--output", out, "--host", "me")
    assert r.returncode == 0, r.stderr
    assert 3 <= len(rows(out)) <= 5
    usage_error(run("collect", "--interval", "10 s", "--output", out), "--interval", "a duration")
    assert "(default: 10s)" in " ".join(run("collect", "--help").stdout.split())


# -- doing nothing useful is not success -----------------------------------------------------------


def test_bad_inputs_everywhere_exit_2_naming_them(fleet, tmp_path):
    file, empty = tmp_path / "a-file", tmp_path / "empty"
    file.write_text("x\n")
    empty.mkdir()
    (empty / "train").mkdir()
    train, models = fleet / "train.csv", fleet / "models"
    cases = [
        (["train", empty, "--models", tmp_path / "m"], [empty, "csv"]),
        (["train", train, "--models", file], ["--models", "got a file"]),
        (["train", train, "--models", tmp_path / "m", "--jobs", "0"], ["--jobs"]),
        (["train", train, "--models", tmp_path / "m", "--hop", "2m"], ["--hop", "at most"]),
        (["train", train, "--models", tmp_path / "m", "--dask", "no-port"], ["--dask", "no-port"]),
        (["score", train, "--models", models, "--output", empty], ["--output", "folder"]),
        (["score", train, "--models", models, "--output", file / "x.csv"], ["--output", file]),
        (["collect", "--interval", "1m", "--duration", "2s", "--output", tmp_path / "c.csv"],
         ["--duration", "at least --interval"]),
        (["simulate", "--output", file], ["--output", "got a file"]),
        (["evaluate", "--data", file], ["--data", "a-file", "got a file"]),
        (["evaluate", "--data", tmp_path / "nowhere"], ["--data", "nowhere"]),
        (["evaluate", "--smd", empty], [empty, "SMD"]),
        (["evaluate", "--smd", empty, "--window", "30s"], ["--window", "only with --data"]),
        (["evaluate", "--data", empty, "--only", "x"], ["--only", "only with --smd/--nab"]),
        (["config", "check", empty], [empty]),
    ]  # fmt: skip
    quiet = [[*argv, "--quiet"] if argv[0] == "evaluate" else argv for argv, _ in cases]
    with ThreadPoolExecutor(4) as pool:  # independent processes: run them side by side
        results = list(pool.map(lambda argv: run(*argv), quiet))
    for (_, words), r in zip(cases, results, strict=True):
        usage_error(r, *words)
    assert not (tmp_path / "m").exists() and not (tmp_path / "c.csv").exists()


def test_os_errors_name_their_file(tmp_path):
    """An OS error on a path the user gave reads like the other errors: the path first."""
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    r = run("serve", "--data-dir", blocker / "sub", "--port", "0", "--address", "127.0.0.1")
    usage_error(r, f"{blocker / 'sub'}: expected a folder the agent can write", "Not a directory")
    assert "[Errno" not in r.stderr


def test_exit_codes_are_decided_in_one_place():
    from minerwatch.features.errors import InputError
    from minerwatch.service.cli import exit_code

    assert exit_code(InputError("f", 1, "x")) == 2
    assert exit_code(FileExistsError(17, "File exists", "f")) == 2
    assert exit_code(BrokenPipeError()) == 128 + signal.SIGPIPE
    assert exit_code(KeyboardInterrupt()) == 128 + signal.SIGINT
    assert exit_code(RuntimeError()) == 1
