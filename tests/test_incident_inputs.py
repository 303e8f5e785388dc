"""Damaged inputs of the incident commands (``report``, ``dismiss``, ``evidence list``,
``ioc extract``, ``hunt``): each is named with what was expected, and none passes for data.

Every test runs the real ``minerwatch`` command in a subprocess on files written in the
agent's own formats (:class:`EvidenceWriter`, the event lines and history that
``test_report.build_data_dir`` lays out as the agent does).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from test_report import EPISODE, build_data_dir

from minerwatch.service.evidence import EvidenceWriter, HostPaths

MINERWATCH = os.path.join(os.path.dirname(sys.executable), "minerwatch")


def mw(*args: object) -> subprocess.CompletedProcess[str]:
    # warnings shown as a user's Python shows them, whatever the test runner set
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.run(
        [MINERWATCH, *map(str, args)], capture_output=True, text=True, timeout=120, env=env
    )


def evidence_file(folder: Path, episode: str, host_root: Path) -> Path:
    """An evidence file as the agent writes it, for an alert that named no process."""
    host_root.mkdir(exist_ok=True)
    writer = EvidenceWriter(folder, min_interval_s=0, paths=HostPaths.under(host_root))
    path = writer.write(episode, 0.93, 0.71, {"cpu_percent": 97.0}, [], [], [])
    assert path is not None
    return path


def clean(r: subprocess.CompletedProcess[str]) -> None:
    """Nothing a user should never see: a traceback or a Python warning."""
    assert "Traceback" not in r.stderr and "Warning:" not in r.stderr, r.stderr


# -- 1. a corrupt evidence file is never an episode ---------------------------------------------


def test_report_skips_a_corrupt_evidence_file_and_names_it(tmp_path):
    data = build_data_dir(tmp_path)
    (data / "events.jsonl").unlink()  # the episode is known from its evidence alone
    bad = data / "evidence" / "2026-bad.json"
    bad.write_text('{"format": "minerwatch-evidence",\n "episode_id": oops}\n')
    newest = (data / "evidence").stat().st_mtime + 60
    os.utime(bad, (newest, newest))  # the latest file: it would be the default episode
    r = mw("report", "--data-dir", data, "--format", "json")
    assert r.returncode == 0, r.stderr
    clean(r)
    doc = json.loads(r.stdout)
    assert doc["episode"]["id"] == EPISODE and doc["episode"]["start_utc"] is not None
    assert f"warning: {bad}:2: expected an evidence JSON file, got Expecting value" in r.stderr


def test_report_with_only_corrupt_evidence_exits_2_naming_it(tmp_path):
    data = tmp_path / "data"
    (data / "evidence").mkdir(parents=True)
    bad = data / "evidence" / "2026-bad.json"
    bad.write_text("{not json\n")
    r = mw("report", "--data-dir", data)
    assert r.returncode == 2, (r.stdout, r.stderr)
    clean(r)
    assert r.stdout == ""
    assert f"{bad}:1: expected an evidence JSON file" in r.stderr
    assert "expected at least one alert episode" in r.stderr and "none usable" in r.stderr


# -- 2. no Python warning from the plot -------------------------------------------------------


def test_html_report_with_nothing_to_plot_prints_no_warning(tmp_path):
    pytest.importorskip("matplotlib")
    data = tmp_path / "data"
    evidence = data / "evidence"
    evidence.mkdir(parents=True)
    # no history, no event lines, no time in the evidence: no line, span or label to plot
    (evidence / "20260101T000000Z-e1.json").write_text(
        json.dumps({"format": "minerwatch-evidence", "version": 1, "episode_id": "e1"})
    )
    r = mw("report", "--data-dir", data)
    assert r.returncode == 0, r.stderr
    assert 'src="data:image/png;base64,' in r.stdout
    clean(r)


# -- 3. damaged lines of the event journal are named ------------------------------------------


def test_a_journal_of_damaged_lines_is_named_by_report_and_dismiss(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    journal = data / "events.jsonl"
    journal.write_text("{not json\n")
    for command in ("report", "dismiss"):
        r = mw(command, "--data-dir", data)
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        clean(r)
        assert f"warning: {journal}:1: skipped, expected a JSON event line" in r.stderr
        assert "expected at least one alert episode" in r.stderr


def test_damaged_lines_are_warned_once_with_a_count_and_good_lines_kept(tmp_path):
    data = build_data_dir(tmp_path)  # its line 3 was cut by a crash
    journal = data / "events.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    lines.insert(4, "[1, 2]\n")  # valid JSON, not an event: line 5
    lines.insert(5, "\x00\x00\x00\n")  # a block of zeros after a power cut: line 6
    journal.write_text("".join(lines) + '{"id": "web1-cut", "st')  # killed mid-write
    r = mw("report", "--data-dir", data, "--format", "json")
    assert r.returncode == 0, r.stderr
    clean(r)
    assert json.loads(r.stdout)["episode"]["id"] == EPISODE  # the good lines still count
    warnings = [x for x in r.stderr.splitlines() if x.startswith("minerwatch: warning:")]
    assert len(warnings) == 1, r.stderr
    assert f"{journal}:3: skipped" in warnings[0] and "3 damaged lines" in warnings[0]
    assert "line 5, 6" in warnings[0]
    assert f"note: {journal}:{len(lines) + 1}: skipped the last line, cut short" in r.stderr


def test_dismiss_names_a_damaged_journal_line_and_still_dismisses(tmp_path):
    data = build_data_dir(tmp_path)  # its line 3 was cut by a crash
    r = mw("dismiss", "--data-dir", data, "--episode", EPISODE, "--reason", "backup")
    assert r.returncode == 0, r.stderr
    clean(r)
    assert f"warning: {data / 'events.jsonl'}:3: skipped, expected a JSON event line" in r.stderr
    conn = sqlite3.connect(data / "history.db")
    try:
        assert conn.execute("SELECT episode FROM dismissed").fetchall() == [(EPISODE,)]
    finally:
        conn.close()


def test_an_event_line_with_a_time_no_date_can_show_is_not_an_unexpected_failure(tmp_path):
    """A damaged line's end of 1e308: report and dismiss failed with exit 1 (OverflowError)."""
    data = build_data_dir(tmp_path)
    journal = data / "events.jsonl"
    lines = journal.read_text().splitlines()
    last = json.loads(lines[-1])
    journal.write_text("\n".join([*lines[:-1], json.dumps({**last, "end": 1e308})]) + "\n")
    r = mw("report", "--data-dir", data, "--format", "md")
    assert r.returncode == 0, r.stderr
    clean(r)
    assert f"episode ` {EPISODE} `" in r.stdout and " to - (closed)" in r.stdout, r.stdout
    r = mw("dismiss", "--data-dir", data, "--episode", EPISODE)
    assert r.returncode == 2, (r.stdout, r.stderr)
    clean(r)
    assert f"{journal}: expected event lines with the start and end of episode" in r.stderr


# -- 4. ioc extract and hunt agree on an empty IOC ---------------------------------------------


def test_ioc_extract_without_indicators_exits_2_and_writes_nothing(tmp_path):
    ev = evidence_file(tmp_path / "ev", "web1-1", tmp_path / "host")
    out = tmp_path / "ioc.json"
    r = mw("ioc", "extract", ev, "--output", out)
    assert r.returncode == 2, (r.stdout, r.stderr)
    clean(r)
    assert f"{ev}: expected evidence naming at least one indicator" in r.stderr
    assert not out.exists() and r.stdout == ""
    r = mw("ioc", "extract", ev)
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)


# -- 5. hunt --scan checks its folders before scanning -----------------------------------------


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_hunt_refuses_a_scan_folder_it_cannot_read(tmp_path, kind):
    ioc = tmp_path / "ioc.json"
    doc = {"format": "minerwatch-ioc", "version": 1, "id": "ioc-t", "sha256": ["ab" * 32]}
    ioc.write_text(json.dumps(doc))
    target = tmp_path / "nonexistent_dir"
    if kind == "file":
        target.write_text("not a folder")
    r = mw("hunt", ioc, "--scan", tmp_path, target)
    assert r.returncode == 2, (r.stdout, r.stderr)
    clean(r)
    assert f"{target}: expected a --scan folder this user can read" in r.stderr
    assert "clean" not in r.stdout and r.stdout == ""


# -- 6. evidence list: errors on stderr, exit 2 -------------------------------------------------


def test_evidence_list_reports_a_corrupt_file_on_stderr_and_exits_2(tmp_path):
    data = tmp_path / "data"
    good = evidence_file(data / "evidence", "web1-1", tmp_path / "host")
    bad = data / "evidence" / "20260101T000001Z-junk.json"
    bad.write_text("{not json")
    r = mw("evidence", "list", "--data-dir", data)
    assert r.returncode == 2, (r.stdout, r.stderr)
    clean(r)
    assert good.name in r.stdout and "junk" not in r.stdout and "error" not in r.stdout
    assert f"minerwatch: error: {bad}:1: expected an evidence JSON file" in r.stderr
    r = mw("evidence", "list", "--data-dir", data, "--json")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert [e["name"] for e in json.loads(r.stdout)] == [good.name]
    assert str(bad) in r.stderr
