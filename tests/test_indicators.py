"""Indicator knowledge base and checks on literal process records, and a bad file (records
read from live processes are checked in test_evidence.py)."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import subprocess
import sys
import time
from dataclasses import replace

import pytest
from promtools import free_port
from test_ioc_watch import SCRIPT, scrape, wait_for

from minerwatch.features.errors import InputError
from minerwatch.features.proctable import ProcessRecord
from minerwatch.service.indicators import (
    INDICATOR_IDS,
    REASON_CODES,
    IndicatorHit,
    default_kb_path,
    indicator_counts,
    kernel_thread_base,
    load_knowledge_base,
    parse_knowledge_base,
    preload_entries,
    scan,
    unexplained_cpu_gap,
)

LABEL = re.compile(r"[a-z][a-z0-9_]{0,63}")


@pytest.fixture(scope="module")
def kb():
    return load_knowledge_base()


@pytest.fixture
def no_preload(tmp_path):
    return tmp_path / "absent.preload"


def facts(**kw) -> ProcessRecord:
    base = dict(
        pid=4242,
        ppid=1,
        name="nginx",
        exe="/usr/sbin/nginx",
        exe_deleted=False,
        cmdline=("nginx: worker process",),
        username="www-data",
        create_time=1_700_000_000.0,
        cpu_percent=3.0,
        remote_ports=(443,),
    )
    base.update(kw)
    return ProcessRecord(**base)


def ids(hits):
    return sorted(h.indicator_id for h in hits)


# --- knowledge base ----------------------------------------------------------------------


def test_shipped_kb_names_a_public_source_for_every_indicator(kb):
    raw = json.loads(default_kb_path().read_text())
    assert set(raw["indicators"]) == set(INDICATOR_IDS)
    for iid in INDICATOR_IDS:
        assert kb.indicator_sources[iid], iid
        for ref in kb.indicator_sources[iid]:
            assert kb.sources[ref]["url"].startswith("https://")
    assert {3333, 4444, 5555, 7777, 14433, 14444, 45700} <= kb.pool_ports
    assert {"xmrig", "minerd", "cpuminer"} <= kb.miner_names
    assert kb.tmp_dirs == ("/tmp", "/var/tmp", "/dev/shm")
    assert "attack.mitre.org/techniques/T1496" in kb.sources["mitre_t1496"]["url"]


def test_bad_json_names_file_and_line(tmp_path):
    bad = tmp_path / "kb.json"
    bad.write_text('{\n  "format": "minerwatch-indicators",\n  "version": 1,,\n}\n')
    with pytest.raises(InputError) as err:
        load_knowledge_base(bad)
    assert err.value.path == str(bad) and err.value.line == 3


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="readable indicator knowledge base"):
        load_knowledge_base(tmp_path / "nope.json")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r["indicators"].pop("pool_port"), "indicators.pool_port as a JSON object"),
        (lambda r: r["indicators"]["pool_port"].update(ports=[3333, 70000]), "1-65535"),
        (lambda r: r["indicators"]["pool_port"].update(ports=["3333"]), "1-65535"),
        (lambda r: r["indicators"]["miner_name"].update(sources=["blog"]), "'blog'"),
        (lambda r: r["indicators"]["miner_name"].update(sources=[]), "non-empty list"),
        (lambda r: r["indicators"].update(extra={}), "extra"),
        (lambda r: r["sources"]["xmrig"].update(url="http://x"), "https://"),
        (lambda r: r["indicators"]["exe_in_tmp"].update(dirs=["tmp/"]), "absolute paths"),
        (lambda r: r["indicators"]["unexplained_cpu"].update(min_ratio=0.5), ">= 1"),
        (lambda r: r.update(version=2), "version = 1"),
    ],
)
def test_invalid_kb_is_rejected_with_the_key(mutate, message):
    raw = json.loads(default_kb_path().read_text())
    broken = copy.deepcopy(raw)
    mutate(broken)
    with pytest.raises(InputError, match=re.escape(message)):
        parse_knowledge_base(broken, "kb.json")
    parse_knowledge_base(raw, "kb.json")  # the untouched copy stays valid


# --- pure checks -------------------------------------------------------------------------


def test_benign_process_has_no_hits(kb, no_preload):
    assert scan([facts()], kb, 20.0, 18.0, no_preload) == []


@pytest.mark.parametrize(
    ("kw", "reason", "detail"),
    [
        ({"name": "xmrig"}, "process_name", "xmrig"),
        ({"name": "x", "exe": "/opt/m/MINERD"}, "exe_name", "minerd"),
        (
            {"name": "x", "exe": "/opt/m/a", "cmdline": ("./cpuminer", "-a")},
            "argv0_name",
            "cpuminer",
        ),
    ],
)
def test_miner_name(kb, no_preload, kw, reason, detail):
    (hit,) = scan([facts(**kw)], kb, None, None, no_preload)
    assert hit == IndicatorHit("miner_name", reason, 4242, detail)


def test_miner_name_is_exact_not_substring(kb, no_preload):
    assert scan([facts(name="xmrigger", exe="/usr/bin/xmrigger")], kb, None, None, no_preload) == []


def test_pool_port_reports_lowest_matching_port(kb, no_preload):
    (hit,) = scan([facts(remote_ports=(443, 14444, 3333))], kb, None, None, no_preload)
    assert hit == IndicatorHit("pool_port", "remote_port", 4242, "3333")
    assert scan([facts(remote_ports=(22, 443, 8080))], kb, None, None, no_preload) == []


def test_stratum_url_matches_any_case_and_never_keeps_the_command_line(kb, no_preload):
    secret_cmd = ("/usr/bin/app", "-o", "STRATUM+SSL://wallet42SECRET:pw@pool.example:443")
    (hit,) = scan([facts(cmdline=secret_cmd)], kb, None, None, no_preload)
    assert (hit.indicator_id, hit.reason, hit.detail) == (
        "stratum_url",
        "cmdline_scheme",
        "stratum+ssl://",
    )
    assert "SECRET" not in json.dumps(hit.as_dict())


@pytest.mark.parametrize(
    ("exe", "expected"),
    [
        ("/tmp/.x/kx", "/tmp"),
        ("/var/tmp/kx", "/var/tmp"),
        ("/dev/shm/kx", "/dev/shm"),
        ("/tmpfs/kx", None),
        ("/usr/tmp/kx", None),
        ("", None),
    ],
)
def test_exe_in_tmp_is_a_directory_prefix(kb, no_preload, exe, expected):
    hits = scan([facts(exe=exe)], kb, None, None, no_preload)
    got = [h.detail for h in hits if h.indicator_id == "exe_in_tmp"]
    assert got == ([expected] if expected else [])


def test_exe_deleted(kb, no_preload):
    (hit,) = scan([facts(exe_deleted=True)], kb, None, None, no_preload)
    assert hit == IndicatorHit("exe_deleted", "exe_unlinked", 4242)


def test_an_in_memory_executable_is_not_a_deleted_one(kb, no_preload):
    """runc and sandboxes run from memfd_create files, which always read as deleted."""
    memfd = facts(exe="/memfd:sealed-91173221a7ea", exe_deleted=True)
    assert scan([memfd], kb, None, None, no_preload) == []


@pytest.mark.parametrize(
    ("kw", "reason", "detail"),
    [
        ({"name": "kx", "cmdline": ("[kworker/0:1]",)}, "bracketed_argv0_with_exe", "kworker"),
        ({"name": "kx", "cmdline": ("[anything]",)}, "bracketed_argv0_with_exe", "anything"),
        ({"name": "kworker/0:1", "cmdline": ()}, "kernel_thread_name_with_exe", "kworker"),
        ({"name": "kswapd0", "cmdline": ("kswapd0",)}, "kernel_thread_name_with_exe", "kswapd0"),
        ({"name": "x", "cmdline": ("migration/3",)}, "kernel_thread_name_with_exe", "migration"),
    ],
)
def test_fake_kernel_thread_needs_a_real_exe(kb, no_preload, kw, reason, detail):
    (hit,) = scan([facts(**kw)], kb, None, None, no_preload)
    assert hit == IndicatorHit("fake_kernel_thread", reason, 4242, detail)
    # The genuine article: kernel threads have no executable and no command line.
    real = facts(**{**kw, "exe": "", "cmdline": ()})
    assert scan([real], kb, None, None, no_preload) == []


def test_kernel_thread_lookalikes_are_not_flagged(kb, no_preload):
    for name in ("kworkerd", "rcu", "systemd-journald", "[", "[]"):
        assert scan([facts(name=name, cmdline=(name,))], kb, None, None, no_preload) == []


def test_kernel_thread_base():
    assert kernel_thread_base("[kworker/u8:2-events_unbound]") == "kworker"
    assert kernel_thread_base("jbd2/sda1-8") == "jbd2"
    assert kernel_thread_base("ksoftirqd/0") == "ksoftirqd"


@pytest.mark.parametrize(
    ("text", "hit"),
    [
        ("", False),
        ("\n  \n", False),
        ("# nothing here\n", False),
        ("/usr/local/lib/libprocesshider.so\n", True),
        ("  /lib/x.so # comment\n", True),
    ],
)
def test_ld_so_preload_non_empty(kb, tmp_path, text, hit):
    preload = tmp_path / "ld.so.preload"
    preload.write_text(text)
    hits = scan([], kb, None, None, preload)
    assert hits == ([IndicatorHit("ld_so_preload", "non_empty", None)] if hit else [])


def test_ld_so_preload_missing_is_no_hit(kb, no_preload):
    assert scan([], kb, None, None, no_preload) == []


def test_preload_entries():
    assert preload_entries("a.so b.so\n#c.so\n d.so#e.so\n") == ["a.so", "b.so", "d.so"]


@pytest.mark.parametrize(
    ("host", "visible", "gap"),
    [
        (90.0, 10.0, 80.0),  # rootkit-hidden miner: host busy, ps shows little
        (30.0, 2.0, 28.0),
        (90.0, 60.0, None),  # 30 points apart but visible explains most of it
        (25.0, 0.0, None),  # gap not above 25 points
        (100.0, 50.0, None),  # ratio exactly 2 is not above it
        (10.0, 12.0, None),  # sampling jitter the other way
    ],
)
def test_unexplained_cpu_gap(host, visible, gap):
    assert unexplained_cpu_gap(host, visible) == gap


def test_unexplained_cpu_hit_uses_kb_thresholds(kb, no_preload):
    (hit,) = scan([], kb, 95.0, 5.0, no_preload)
    assert hit == IndicatorHit("unexplained_cpu", "host_above_visible", None, "90.0")
    strict = replace(kb, min_gap_percent=95.0)
    assert scan([], strict, 95.0, 5.0, no_preload) == []
    assert scan([], kb, 95.0, None, no_preload) == []


def test_every_hit_uses_bounded_label_values(kb, tmp_path):
    preload = tmp_path / "p"
    preload.write_text("/x.so\n")
    evil = facts(
        name="xmrig",
        exe="/dev/shm/xmrig",
        exe_deleted=True,
        cmdline=("[kworker/0:0]", "-o", "stratum+tcp://p:3333"),
        remote_ports=(3333,),
    )
    hits = scan([evil], kb, 99.0, 1.0, preload)
    assert ids(hits) == sorted(INDICATOR_IDS)
    for h in hits:
        assert h.reason in REASON_CODES[h.indicator_id]
        assert LABEL.fullmatch(h.indicator_id) and LABEL.fullmatch(h.reason)
    assert set(REASON_CODES) == set(INDICATOR_IDS)


def test_indicator_counts_has_every_id():
    zero = indicator_counts([])
    assert list(zero) == list(INDICATOR_IDS) and set(zero.values()) == {0}
    counts = indicator_counts(
        [
            IndicatorHit("pool_port", "remote_port", 1, "3333"),
            IndicatorHit("pool_port", "remote_port", 2, "4444"),
            IndicatorHit("exe_in_tmp", "exe_dir", 2, "/tmp"),
        ]
    )
    assert counts["pool_port"] == 2 and counts["exe_in_tmp"] == 1 and sum(counts.values()) == 3
    with pytest.raises(ValueError, match="bogus"):
        indicator_counts([IndicatorHit("bogus", "x", None)])


def test_agent_modules_import_no_heavy_libraries():
    code = (
        "import sys, minerwatch.service.indicators, minerwatch.service.evidence,"
        " minerwatch.service.respond, minerwatch.features.proctable;"
        "bad = [m for m in ('sklearn', 'pandas', 'scipy') if m in sys.modules];"
        "sys.exit(', '.join(bad) or None)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_agent_ignores_a_library_a_package_preloads_but_not_one_beside_it(tmp_path):
    """The real agent, its host root holding ``etc/ld.so.preload`` and a dpkg database: a
    library the database says a package shipped unchanged (snoopy's logger, an allocator)
    is how that host is, so ``minerwatch_indicator_hits{indicator="ld_so_preload"}`` stays 0
    (it was 1 on every sample of such a host, in every episode's evidence); a library no
    package shipped, added beside it, makes it 1."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    info = root / "var/lib/dpkg/info"
    info.mkdir(parents=True)
    logger, hider = tmp_path / "libsnoopy.so", tmp_path / "libhide.so"
    logger.write_bytes(b"\x7fELF logger")
    hider.write_bytes(b"\x7fELF hider")
    (info / "snoopy.list").write_text(f"{tmp_path}\n{logger}\n")
    digest = hashlib.md5(logger.read_bytes()).hexdigest()
    (info / "snoopy.md5sums").write_text(f"{digest}  {str(logger).lstrip('/')}\n")
    preload = root / "etc/ld.so.preload"
    preload.write_text(f"{logger}\n")
    port, log = free_port(), tmp_path / "agent.log"
    cmd = [
        str(SCRIPT), "serve", "--data-dir", str(tmp_path / "data"), "--host", "h",
        "--port", str(port), "--address", "127.0.0.1", "--interval", "1s", "--window", "3s",
        "--learn-for", "1h", "--host-root", str(root),
    ]  # fmt: skip
    pattern = re.compile(r'^minerwatch_indicator_hits\{indicator="ld_so_preload"\} (\S+)$', re.M)

    def preload_hits() -> str | None:
        found = pattern.search(scrape(port))
        return found.group(1) if found else None

    with log.open("ab") as fh:
        agent = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    try:
        assert wait_for("a sample", preload_hits, agent, log) == "0.0"
        time.sleep(2.5)  # a few samples more, each reading the file
        assert preload_hits() == "0.0", log.read_text()[-2000:]
        preload.write_text(f"{logger}\n{hider}\n")
        wait_for("the foreign library", lambda: preload_hits() == "1.0", agent, log)
    finally:
        agent.terminate()
        agent.wait(timeout=60)
